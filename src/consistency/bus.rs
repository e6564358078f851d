//! The invalidation bus: what one instance tells the others after a write, and what it
//! does with what they tell it (promise 3 in [`super`]).
//!
//! Publishing is part of the Redis bump script ([`crate::l2::L2::invalidate`]); this module
//! spells the message and follows the subscription.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use prometheus_client::metrics::histogram::Histogram;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::Invalidator;
use super::names::{Name, spelled};
use crate::l2::L2;

/// A message on the invalidation bus.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BusMessage {
    /// Instance that applied it (its own messages are skipped).
    pub origin: String,
    /// Names bumped, as spelled on the wire.
    pub names: Vec<String>,
    /// Entity written, if any.
    pub entity: Option<String>,
    /// When it was applied at the origin, ms since the epoch.
    pub at_ms: u64,
    /// The status index the write's answer updates, and the answer (the entity's new
    /// state): other instances apply it to their mirrors under the version rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<Delta>,
}

/// A write's answer for other instances' status indexes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Delta {
    /// The indexed route's name.
    pub index: String,
    /// The answer's JSON, as the MES sent it.
    pub row: String,
    /// Whether the answer is a new entity's (a `201`).
    #[serde(default)]
    pub created: bool,
}

/// Where the deltas on the bus go (the status indexes), and who is told when the bus
/// goes down and comes back (deltas may have been missed).
pub trait DeltaSink: Send + Sync {
    /// Another instance's write answer for `index` (`created`: a new entity's).
    fn delta(&self, index: &str, row: &[u8], created: bool);
    /// The subscription dropped: deltas may be missed from now on.
    fn paused(&self);
    /// The subscription is back after a gap.
    fn resumed(&self);
}

/// The JSON of a message from `origin`.
pub fn message(
    origin: &str,
    names: &[Name],
    entity: Option<String>,
    delta: Option<Delta>,
    at_ms: u64,
) -> String {
    let m = BusMessage {
        origin: origin.to_owned(),
        names: spelled(names),
        entity,
        at_ms,
        delta,
    };
    serde_json::to_string(&m).unwrap_or_default()
}

/// Follows the bus. Every (re)subscription but the first flushes L1 and bumps the global
/// name: messages may have been missed while the subscription was down.
pub async fn listen(inv: Invalidator, l2: L2, bus_latency: Histogram) {
    let channel = l2.channel();
    let mut first = true;
    loop {
        match l2.subscribe(&channel).await {
            Ok(mut stream) => {
                if !first {
                    flush_after_gap(&inv);
                    if let Some(sink) = inv.sink() {
                        sink.resumed();
                    }
                }
                first = false;
                inv.inner.subscribed.send_replace(true);
                while let Some(msg) = stream.next().await {
                    if let Some(ms) = on_message(&inv, &msg) {
                        bus_latency.observe(ms as f64 / 1000.0);
                    }
                }
                inv.inner.subscribed.send_replace(false);
                if let Some(sink) = inv.sink() {
                    sink.paused();
                }
                warn!("invalidation bus subscription dropped");
            }
            Err(e) => debug!(error = %e, "invalidation bus subscribe failed"),
        }
        // While the bus is down, L1 keeps serving within its short TTLs; the flush comes
        // when the subscription is back (messages may have been missed).
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn flush_after_gap(inv: &Invalidator) {
    inv.bump_local(&[Name::Global]);
    inv.inner.l1.clear();
    inv.inner.stats.resubscribes.fetch_add(1, Ordering::Relaxed);
}

/// Applies another instance's invalidation; returns its write-to-applied latency.
pub fn on_message(inv: &Invalidator, payload: &[u8]) -> Option<u64> {
    let inner = &inv.inner;
    let Ok(m) = serde_json::from_slice::<BusMessage>(payload) else {
        warn!("unreadable message on the invalidation bus");
        return None;
    };
    if m.origin == inner.origin {
        return None;
    }
    let mut names: Vec<Name> = m.names.iter().map(|n| Name::parse(n)).collect();
    // The message arrives after the Redis bump (one script): a fetch that begins from
    // this tick on sees the write.
    let tick = inner.clock.tick();
    if let Some(e) = &m.entity {
        inner.entities.mark_foreign(e, tick);
        // The families this instance saw the entity in: the writing instance looked it up
        // in Redis, which may not have had what this instance's fills recorded yet (they
        // record it there too, right after). Those are ended here and, by a message of
        // this instance, in Redis and everywhere else.
        let extra: Vec<Name> = inner
            .entities
            .seen_in(e)
            .iter()
            .map(|f| Name::family(f))
            .filter(|f| !names.contains(f))
            .collect();
        if !extra.is_empty() {
            names.extend(extra.iter().cloned());
            inner.stats.forwarded.fetch_add(1, Ordering::Relaxed);
            let inv = inv.clone();
            tokio::spawn(async move { inv.apply(extra, None).await });
        }
    }
    inner.names.bump(&names, tick);
    if let (Some(d), Some(sink)) = (&m.delta, inv.sink()) {
        sink.delta(&d.index, d.row.as_bytes(), d.created);
    }
    let lat = inner.wall.now_ms().saturating_sub(m.at_ms);
    let s = &inner.stats;
    s.received.fetch_add(1, Ordering::Relaxed);
    s.received_latency_ms.fetch_add(lat, Ordering::Relaxed);
    s.received_latency_max_ms.fetch_max(lat, Ordering::Relaxed);
    Some(lat)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::l1::L1;

    #[tokio::test]
    async fn a_bus_message_also_ends_the_families_this_instance_saw_its_entity_in() {
        let inv = Invalidator::new(
            L1::new(1 << 20),
            None,
            Clock::default(),
            Duration::from_secs(60),
            Duration::from_secs(60),
        );
        inv.remember_local(&[("order:1".to_owned(), vec!["status:A".to_owned()])]);
        let a = inv.fence(&Name::all_for(&["status:A".into()]));
        let c = inv.fence(&Name::all_for(&["status:C".into()]));
        let msg = BusMessage {
            origin: "another instance".into(),
            names: vec!["status:B".into()],
            entity: Some("order:1".into()),
            at_ms: 0,
            delta: None,
        };
        assert!(on_message(&inv, &serde_json::to_vec(&msg).unwrap()).is_some());
        assert!(!a.is_valid(), "status:A, known here only, is ended too");
        assert!(c.is_valid(), "nothing else");
        assert_eq!(
            inv.stats().forwarded.load(Ordering::Relaxed),
            1,
            "passed on"
        );
    }
}
