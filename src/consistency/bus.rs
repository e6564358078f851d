//! The invalidation bus: what one instance tells the others after a write, and what it
//! does with what they tell it (promise 3 in [`super`]), and whether it can still hear
//! them (promise 3a: cut off).
//!
//! Publishing is part of the Redis bump script ([`crate::l2::L2::invalidate`]); this module
//! spells the message, follows the subscription, publishes this instance's heartbeats
//! and follows Redis's generation ([`crate::l2::L2::generation`]).
//!
//! *Cut off*: a subscription can be silently dead (Redis stopped, hung, or a network
//! that drops packets without resetting the connection). Every instance publishes a
//! heartbeat every `redis.heartbeat`, and hears its own come back: an instance that
//! hears nothing on the bus for `redis.bus_deadline`, or whose subscription dropped,
//! counts itself cut off. It then ends everything in L1, stops reading L2 (which it can
//! no longer vouch for: writes may be queued elsewhere, and Redis may come back from an
//! old snapshot), and keeps what it fetches in L1 only `redis.cut_off_ttl`. It is back
//! (resynchronized, as after a resubscription) when it hears the bus again; L2 stays
//! unread for `redis.bus_deadline` more, and as long as another instance's heartbeats
//! say it has invalidations queued for Redis (a write it acknowledged while Redis was
//! out of reach is not in Redis until its retry lands).

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use prometheus_client::metrics::histogram::Histogram;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

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
    /// A heartbeat: it invalidates nothing, it proves the bus works (every instance,
    /// its origin included, counts it as heard).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub heartbeat: bool,
    /// On a heartbeat: the origin has invalidations queued for Redis (it could not reach
    /// it), so what Redis holds may be stale; other instances do not read it meanwhile.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
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
        heartbeat: false,
        pending: false,
    };
    serde_json::to_string(&m).unwrap_or_default()
}

/// The JSON of a heartbeat from `origin` (an empty invalidation to older instances);
/// `pending`: it has invalidations queued for Redis.
pub fn heartbeat_message(origin: &str, pending: bool) -> String {
    let m = BusMessage {
        origin: origin.to_owned(),
        names: Vec::new(),
        entity: None,
        at_ms: 0,
        delta: None,
        heartbeat: true,
        pending,
    };
    serde_json::to_string(&m).unwrap_or_default()
}

/// The bus's timing, from `[redis]`.
#[derive(Debug, Clone, Copy)]
pub struct BusTiming {
    /// Interval of this instance's heartbeats.
    pub heartbeat: Duration,
    /// Silence after which the instance counts itself cut off.
    pub deadline: Duration,
    /// Longest L1 freshness of an entry stored while cut off.
    pub cut_off_ttl: Duration,
}

/// Why an instance counts itself cut off from the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutOff {
    /// Nothing heard, not even its own heartbeat, for `redis.bus_deadline`.
    Silent,
    /// The subscription's connection dropped.
    Dropped,
}

impl CutOff {
    /// Stable lowercase name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Silent => "silent",
            Self::Dropped => "dropped",
        }
    }
}

/// Follows the bus. Every (re)subscription but the first flushes L1 and bumps the global
/// name: messages may have been missed while the subscription was down. A subscription
/// that stays silent for `timing.deadline` cuts the instance off until it is heard again.
pub async fn listen(inv: Invalidator, l2: L2, bus_latency: Histogram, timing: BusTiming) {
    let channel = l2.channel();
    let mut first = true;
    let mut master = l2.watch_master();
    loop {
        master.borrow_and_update();
        match connect(&l2, &channel).await {
            Ok(mut stream) => {
                inv.heard_again(first);
                first = false;
                inv.inner.subscribed.send_replace(true);
                // A failover followed: the subscription is on the old master, made again.
                tokio::select! {
                    () = follow(&inv, &mut stream, timing.deadline, &bus_latency) => {}
                    _ = master.changed() => {}
                }
                inv.inner.subscribed.send_replace(false);
                inv.cut_off(CutOff::Dropped);
            }
            Err(e) if first => warn!(error = %e, "invalidation bus not reachable yet"),
            Err(e) => debug!(error = %e, "invalidation bus subscribe failed"),
        }
        // While the bus is down this instance is cut off; the flush comes when the
        // subscription is back (messages may have been missed).
        tokio::time::sleep(timing.heartbeat.max(Duration::from_millis(50))).await;
    }
}

type Messages = std::pin::Pin<Box<dyn futures_util::Stream<Item = Vec<u8>> + Send>>;

/// Subscribes, then checks Redis's generation: once this answers, the instance hears
/// every later message, and a Redis that restarted has a new generation in force.
async fn connect(l2: &L2, channel: &str) -> Result<Messages, crate::l2::L2Error> {
    let stream = l2.subscribe(channel).await?;
    l2.heartbeat("").await?;
    Ok(stream)
}

/// Applies what the subscription brings until it ends; silence past `deadline` cuts the
/// instance off, the next message brings it back.
async fn follow(inv: &Invalidator, stream: &mut Messages, deadline: Duration, lat: &Histogram) {
    loop {
        match tokio::time::timeout(deadline, stream.next()).await {
            Ok(Some(msg)) => {
                if inv.is_cut_off() {
                    inv.heard_again(false);
                }
                if let Some(ms) = on_message(inv, &msg) {
                    lat.observe(ms as f64 / 1000.0);
                }
            }
            Ok(None) => return,
            Err(_) => inv.cut_off(CutOff::Silent),
        }
    }
}

/// Publishes this instance's heartbeat every `every`, which also checks Redis's
/// generation (a restart or a data loss starts a new one).
pub async fn beat(inv: Invalidator, l2: L2, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        // Sent on the connection the retries use: a heartbeat that says nothing is
        // pending follows the retry that emptied the queue.
        let pending = inv.inner.outbox.has_pending();
        let msg = heartbeat_message(&inv.inner.origin, pending);
        if let Err(e) = l2.heartbeat(&msg).await {
            debug!(error = %e, kind = e.as_str(), tier = "shared", "heartbeat failed");
        }
    }
}

/// Follows Redis's generation: when it changes (not when it is first known), nothing
/// this instance took from Redis before can be trusted, in L1 either.
pub async fn follow_generation(inv: Invalidator, l2: L2) {
    let mut rx = l2.watch_generation();
    let mut held = rx.borrow_and_update().clone();
    while rx.changed().await.is_ok() {
        let now = rx.borrow_and_update().clone();
        if held.is_some() && now != held {
            warn!(
                generation = now.as_deref().unwrap_or("-"),
                "redis restarted or lost data: a new generation, nothing it held before is used"
            );
            flush_after_gap(&inv);
        }
        held = now;
    }
}

impl Invalidator {
    /// Whether this instance counts itself cut off from the bus now.
    pub fn is_cut_off(&self) -> bool {
        self.inner.cut_off.load(Ordering::Acquire)
    }

    /// Whether L2 may be read now: not while cut off, nor for `redis.bus_deadline` after
    /// being cut off or after another instance said it has invalidations queued for
    /// Redis (a write acknowledged elsewhere may not be in Redis yet).
    pub fn l2_vouched(&self) -> bool {
        !self.is_cut_off() && mono_ms() >= self.inner.l2_hold_until_ms.load(Ordering::Acquire)
    }

    /// Keeps L2 unread for `redis.bus_deadline` from now.
    fn hold_l2(&self) {
        let deadline = self.inner.bus_deadline_ms.load(Ordering::Relaxed);
        let until = mono_ms() + deadline;
        self.inner
            .l2_hold_until_ms
            .fetch_max(until, Ordering::AcqRel);
    }

    /// While cut off, the longest an entry stored now may stay fresh in L1, ms (`0`:
    /// store nothing); `None` when the bus is heard.
    pub fn cut_off_limit_ms(&self) -> Option<u64> {
        self.is_cut_off()
            .then(|| self.inner.cut_off_ttl_ms.load(Ordering::Relaxed))
    }

    /// Enters the cut-off state (once per episode): everything in L1 ends, the indexes
    /// are told deltas may be missed.
    fn cut_off(&self, why: CutOff) {
        if self.inner.cut_off.swap(true, Ordering::AcqRel) {
            return;
        }
        self.bump_local(&[Name::Global]);
        self.inner.l1.clear();
        self.inner.stats.cut_offs.fetch_add(1, Ordering::Relaxed);
        warn!(
            why = why.as_str(),
            "cut off from the invalidation bus: L1 flushed, L2 not read, new L1 entries kept briefly"
        );
        if let Some(sink) = self.sink() {
            sink.paused();
        }
    }

    /// Leaves the cut-off state: resynchronized as after a resubscription (global name
    /// bumped, L1 flushed, indexes told), quietly at the first subscription.
    fn heard_again(&self, first: bool) {
        if !self.inner.cut_off.swap(false, Ordering::AcqRel) || first {
            return;
        }
        // Writes queued elsewhere while Redis was out of reach land in a moment (their
        // instances retry when they hear the bus again, and say so in their heartbeats).
        self.hold_l2();
        flush_after_gap(self);
        self.inner.outbox.wake();
        info!("invalidation bus heard again: resynchronized");
        if let Some(sink) = self.sink() {
            sink.resumed();
        }
    }
}

/// Milliseconds on a monotonic clock (since its first use in this process).
fn mono_ms() -> u64 {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
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
    if m.heartbeat {
        if m.pending && m.origin != inner.origin {
            inv.hold_l2();
        }
        return None;
    }
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

    #[test]
    fn a_heartbeat_invalidates_nothing_and_is_not_counted() {
        let inv = Invalidator::new(
            L1::new(1 << 20),
            None,
            Clock::default(),
            Duration::from_secs(60),
            Duration::from_secs(60),
        );
        let f = inv.fence(&Name::all_for(&["status:A".into()]));
        let hb = heartbeat_message("another instance", false);
        assert_eq!(on_message(&inv, hb.as_bytes()), None);
        assert!(f.is_valid());
        assert_eq!(inv.stats().received.load(Ordering::Relaxed), 0);
        let old: BusMessage = serde_json::from_str(&hb).unwrap();
        assert!(
            old.names.is_empty(),
            "an older instance reads an empty invalidation"
        );
    }

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
            heartbeat: false,
            pending: false,
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
