//! Invalidation: local epochs, the entity index (what families an entity was seen in),
//! applying an invalidation to L1, Redis and the bus, retrying what Redis missed, and
//! listening to other instances.
//!
//! It does not decide what a write invalidates ([`crate::write`] plans that) and it does
//! not read or store entries ([`crate::proxy`] does, under the fences taken here).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use moka::sync::Cache;
use prometheus_client::metrics::histogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::clock::Clock;
use crate::epoch::{Epochs, Fence, GLOBAL, UNKNOWN_ACK};
use crate::l1::L1;
use crate::l2::L2;

/// A message on the invalidation bus.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BusMessage {
    /// Instance that applied it (its own messages are skipped).
    pub origin: String,
    /// Epoch names bumped.
    pub names: Vec<String>,
    /// Entity written, if any.
    pub entity: Option<String>,
    /// When it was applied at the origin, ms since the epoch.
    pub at_ms: u64,
}

/// Counters of the invalidation machinery.
#[derive(Debug, Default)]
pub struct InvalidationStats {
    /// Invalidations applied by this instance.
    pub applied: AtomicU64,
    /// Writes whose entity's families were unknown, so whole groups were invalidated.
    pub fallbacks: AtomicU64,
    /// Redis invalidations that failed and were queued.
    pub queued: AtomicU64,
    /// Queued invalidations later applied to Redis.
    pub retried: AtomicU64,
    /// Messages applied from other instances.
    pub received: AtomicU64,
    /// Sum of write-to-applied latency of received messages, ms (with `received`: a mean).
    pub received_latency_ms: AtomicU64,
    /// Worst write-to-applied latency seen, ms.
    pub received_latency_max_ms: AtomicU64,
    /// Times the bus subscription (re)started and L1 was flushed.
    pub resubscribes: AtomicU64,
    /// Fills not stored because an entity they list was written during the fill.
    pub fenced_fills: AtomicU64,
    /// Entries a write fetched again and put in place (refresh on write).
    pub refreshed: AtomicU64,
    /// L1 entries found invalidated but kept: every bump since their fetch began came
    /// from a write of this instance the MES had acknowledged before it (re-validation).
    pub revalidated: AtomicU64,
    /// Entries a write fetched again but did not store (another write moved them, or
    /// the answer was not storable).
    pub refresh_dropped: AtomicU64,
}

/// Switches for the randomized consistency test: each one, turned off, must produce
/// violations. Never turned off in production.
#[derive(Debug)]
pub struct TestSwitches {
    /// Fences on fills (epoch checks at store time, entity-write checks).
    pub fencing: AtomicBool,
    /// The previous-status lookup (entity index) and its fallback.
    pub previous_lookup: AtomicBool,
    /// Families closed to L2 while their Redis bump is in flight (else a read in that gap
    /// refills L1 from the pre-write L2 entry).
    pub close_l2_while_bumping: AtomicBool,
    /// When set, every `apply` stops between the local bump and the Redis bump until the
    /// gate is released: the gap made wide enough for a test to read in it.
    pub bump_gate: Mutex<Option<Arc<Gate>>>,
    /// When set, every write stops after it planned its invalidation (marked its entity,
    /// looked up its families) and before it applies it, until the gate is released.
    pub plan_gate: Mutex<Option<Arc<Gate>>>,
}

impl TestSwitches {
    /// Waits at `gate` when a test set it.
    pub async fn pass_gate(&self, gate: &Mutex<Option<Arc<Gate>>>) {
        let gate = gate.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(gate) = gate {
            gate.reached.notify_one();
            gate.release.notified().await;
        }
    }
}

/// A point where a test holds the gateway (see [`TestSwitches::bump_gate`]).
#[derive(Debug, Default)]
pub struct Gate {
    /// Notified when a task reached the gate.
    pub reached: Notify,
    /// Notify to let it go on.
    pub release: Notify,
}

impl Default for TestSwitches {
    fn default() -> Self {
        Self {
            fencing: AtomicBool::new(true),
            previous_lookup: AtomicBool::new(true),
            close_l2_while_bumping: AtomicBool::new(true),
            bump_gate: Mutex::new(None),
            plan_gate: Mutex::new(None),
        }
    }
}

/// The invalidation state of one instance. Cheap to clone.
#[derive(Clone)]
pub struct Invalidator {
    inner: Arc<Inner>,
}

struct Inner {
    epochs: Epochs,
    l1: L1,
    l2: Option<L2>,
    clock: Clock,
    origin: String,
    /// entity → families it was seen in, for as long as entries listing it may live.
    index: Cache<String, Arc<Vec<String>>>,
    /// entity → write sequence of its last write (to fence fills that listed it).
    writes: Cache<String, u64>,
    seq: AtomicU64,
    /// Writes of this instance the MES acknowledged, numbered (refresh on write).
    acked: AtomicU64,
    // A std Mutex: inserts and drains only, never held across `.await`.
    pending: Mutex<HashSet<String>>,
    /// Names whose Redis bump is on its way (count per name, for concurrent writes). L2 is
    /// not read for them meanwhile: a read in that gap would find the pre-write entry still
    /// valid in Redis and put it back into the freshly invalidated L1.
    // A std Mutex: counts only, never held across `.await`.
    inflight: Mutex<std::collections::HashMap<String, usize>>,
    wake_retry: Notify,
    stats: InvalidationStats,
    switches: TestSwitches,
}

impl Invalidator {
    /// A new invalidator; `index_ttl` bounds how long entity memberships are remembered
    /// (at least as long as any entry lives), `fill_ttl` how long write marks are kept
    /// (at least as long as a fill can take).
    pub fn new(
        l1: L1,
        l2: Option<L2>,
        clock: Clock,
        index_ttl: Duration,
        fill_ttl: Duration,
    ) -> Self {
        let origin = format!("{}-{:x}", std::process::id(), clock.now_ms() ^ rand_salt());
        Self {
            inner: Arc::new(Inner {
                epochs: Epochs::default(),
                l1,
                l2,
                clock,
                origin,
                index: Cache::builder()
                    .max_capacity(1_000_000)
                    .time_to_live(index_ttl)
                    .build(),
                writes: Cache::builder()
                    .max_capacity(1_000_000)
                    .time_to_live(fill_ttl)
                    .build(),
                seq: AtomicU64::new(1),
                acked: AtomicU64::new(0),
                pending: Mutex::default(),
                inflight: Mutex::default(),
                wake_retry: Notify::new(),
                stats: InvalidationStats::default(),
                switches: TestSwitches::default(),
            }),
        }
    }

    /// Takes a fence over epoch names.
    pub fn fence(&self, names: &[String]) -> Fence {
        self.inner.epochs.fence(names)
    }

    /// How many local epoch counters exist (pruned as fences let go of them).
    pub fn epoch_counters(&self) -> usize {
        self.inner.epochs.len()
    }

    /// The write sequence now; a fill remembers it to detect writes during the fill.
    pub fn write_seq(&self) -> u64 {
        self.inner.seq.load(Ordering::Acquire)
    }

    /// Whether any of `entities` was written after `seq` (the fill must not be stored).
    pub fn written_since(&self, entities: &[String], seq: u64) -> bool {
        self.written_since_except(entities, seq, None)
    }

    /// [`Invalidator::written_since`], leaving out one write: `own` is the entity and
    /// sequence number of the write whose refresh is being stored (its own mark does not
    /// count against it; a later write to the same entity does).
    pub fn written_since_except(
        &self,
        entities: &[String],
        seq: u64,
        own: Option<(&str, u64)>,
    ) -> bool {
        if !self.fencing() {
            return false;
        }
        let hit = entities.iter().any(|e| {
            let mark = self.inner.writes.get(e);
            mark.is_some_and(|w| w >= seq && own != Some((e.as_str(), w)))
        });
        if hit {
            self.inner
                .stats
                .fenced_fills
                .fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    /// Whether any of the names waits for its Redis invalidation (L2 must not be used).
    pub fn pending_any(&self, names: &[String]) -> bool {
        {
            let f = self.lock_inflight();
            if !f.is_empty() && names.iter().any(|n| f.contains_key(n)) {
                return true;
            }
        }
        let p = self.lock_pending();
        !p.is_empty() && names.iter().any(|n| p.contains(n))
    }

    fn lock_inflight(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, usize>> {
        self.inner
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn mark_inflight(&self, names: &[String], on: bool) {
        let mut f = self.lock_inflight();
        for n in names {
            if on {
                *f.entry(n.clone()).or_default() += 1;
            } else if let Some(c) = f.get_mut(n) {
                *c -= 1;
                if *c == 0 {
                    f.remove(n);
                }
            }
        }
    }

    /// Records memberships seen in a stored body, locally (the caller does Redis).
    pub fn remember_local(&self, members: &[(String, Vec<String>)]) {
        for (entity, families) in members {
            // One read-merge-write per key at a time (moka's key lock): two fills that
            // list the same order must not overwrite each other's families, or a later
            // write would miss the order's previous status.
            self.inner
                .index
                .entry_by_ref(entity)
                .and_upsert_with(|known| {
                    let mut merged: Vec<String> = known
                        .map(|e| e.into_value().as_ref().clone())
                        .unwrap_or_default();
                    for f in families {
                        if !merged.contains(f) {
                            merged.push(f.clone());
                        }
                    }
                    Arc::new(merged)
                });
        }
    }

    /// The families `entity` is known to belong to, here and in Redis.
    pub async fn known(&self, entity: &str) -> Vec<String> {
        if !self.inner.switches.previous_lookup.load(Ordering::Relaxed) {
            return Vec::new();
        }
        let mut out: Vec<String> = self
            .inner
            .index
            .get(entity)
            .map(|v| v.as_ref().clone())
            .unwrap_or_default();
        if let Some(l2) = &self.inner.l2 {
            match l2.known(entity).await {
                Ok(shared) => out.extend(
                    shared
                        .into_iter()
                        .filter(|f| !out.contains(f))
                        .collect::<Vec<_>>(),
                ),
                Err(e) => debug!(error = %e, tier = "shared", "entity lookup failed"),
            }
        }
        out
    }

    /// Whether unknown previous families fall back to whole groups (off only in tests).
    pub fn previous_lookup(&self) -> bool {
        self.inner.switches.previous_lookup.load(Ordering::Relaxed)
    }

    /// Whether fills are fenced (off only in tests).
    pub fn fencing(&self) -> bool {
        self.inner.switches.fencing.load(Ordering::Relaxed)
    }

    /// Moves local epochs only (a reload dropping one instance's entries of a route).
    pub fn bump_local(&self, names: &[String]) {
        self.inner.epochs.bump(names);
    }

    /// Counts one entry of a refresh on write, stored or not.
    pub fn count_refresh(&self, stored: bool) {
        let c = if stored {
            &self.inner.stats.refreshed
        } else {
            &self.inner.stats.refresh_dropped
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an L1 entry kept on re-validation.
    pub fn count_revalidated(&self) {
        self.inner.stats.revalidated.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a previous-status fallback.
    pub fn count_fallback(&self) {
        self.inner.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    /// Applies an invalidation: write mark and L1 epochs at once, then Redis epochs and
    /// the bus in one script; when Redis fails, the names are queued for retry and L2 is
    /// not used for them meanwhile. Returns when L1 is invalidated and Redis either has
    /// it or has it queued.
    pub async fn apply(&self, names: Vec<String>, entity: Option<String>) {
        if let Some(e) = &entity {
            self.mark_written(e);
        }
        self.apply_acked(names, entity, UNKNOWN_ACK, || {}).await;
    }

    /// Marks `entity` written, numbered in the write sequence: fills that started before
    /// and list it are not stored. A write marks its entity *before* it looks up the
    /// families the entity was seen in, and a fill records what it lists *before* it
    /// checks the marks: so either the fill sees the mark, or the write sees the families.
    pub fn mark_written(&self, entity: &str) -> u64 {
        let seq = self.inner.seq.fetch_add(1, Ordering::AcqRel);
        mark_written(&self.inner.writes, entity, seq);
        seq
    }

    /// Numbers a write the MES just acknowledged (before its invalidation is planned).
    pub fn note_acked(&self) -> u64 {
        self.inner.acked.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The number of the latest acknowledged write: a fetch that starts now sees every
    /// write numbered up to it.
    pub fn acked(&self) -> u64 {
        self.inner.acked.load(Ordering::Acquire)
    }

    /// [`Invalidator::apply`] for this instance's write numbered `ack` by
    /// [`Invalidator::note_acked`] (the local bumps remember it), whose entity the caller
    /// marked with [`Invalidator::mark_written`]. `after_local` runs right after the local
    /// epochs moved, before the Redis part (refresh on write puts its entries in L1 there).
    pub async fn apply_acked(
        &self,
        names: Vec<String>,
        entity: Option<String>,
        ack: u64,
        after_local: impl FnOnce(),
    ) {
        let inner = &self.inner;
        let Some(l2) = &inner.l2 else {
            inner.epochs.bump_acked(&names, ack);
            after_local();
            inner.stats.applied.fetch_add(1, Ordering::Relaxed);
            return;
        };
        // Closed to L2 before L1 moves, reopened once Redis moved (or the names are queued).
        let close = inner
            .switches
            .close_l2_while_bumping
            .load(Ordering::Relaxed);
        if close {
            self.mark_inflight(&names, true);
        }
        inner.epochs.bump_acked(&names, ack);
        after_local();
        inner.stats.applied.fetch_add(1, Ordering::Relaxed);
        inner.switches.pass_gate(&inner.switches.bump_gate).await;
        let msg = self.message(&names, entity);
        let result = l2.invalidate(&names, &msg).await;
        if result.is_err() {
            self.lock_pending().extend(names.iter().cloned());
        }
        if close {
            self.mark_inflight(&names, false);
        }
        if let Err(e) = result {
            warn!(error = %e, kind = e.as_str(), tier = "shared", "invalidation queued for retry");
            inner.stats.queued.fetch_add(1, Ordering::Relaxed);
            inner.wake_retry.notify_one();
        }
    }

    fn message(&self, names: &[String], entity: Option<String>) -> String {
        let m = BusMessage {
            origin: self.inner.origin.clone(),
            names: names.to_vec(),
            entity,
            at_ms: self.inner.clock.now_ms(),
        };
        serde_json::to_string(&m).unwrap_or_default()
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.inner.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Everything: bump the global epoch (all entries, all in-flight fills).
    pub async fn purge_all(&self) {
        self.apply(vec![GLOBAL.to_owned()], None).await;
    }

    /// Counters.
    pub fn stats(&self) -> &InvalidationStats {
        &self.inner.stats
    }

    /// Test switches.
    pub fn switches(&self) -> &TestSwitches {
        &self.inner.switches
    }

    /// Starts the retry loop and the bus listener (when Redis is configured).
    /// Bus latencies are observed into `bus_latency`.
    pub fn start_background(&self, bus_latency: Histogram) {
        let Some(l2) = self.inner.l2.clone() else {
            return;
        };
        tokio::spawn(self.clone().retry_loop(l2.clone()));
        tokio::spawn(self.clone().listen(l2, bus_latency));
    }

    async fn retry_loop(self, l2: L2) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.lock_pending().is_empty() {
                backoff = Duration::from_millis(100);
                self.inner.wake_retry.notified().await;
                continue;
            }
            tokio::time::sleep(backoff).await;
            let names: Vec<String> = self.lock_pending().iter().cloned().collect();
            let msg = self.message(&names, None);
            match l2.invalidate(&names, &msg).await {
                Ok(()) => {
                    let mut p = self.lock_pending();
                    for n in &names {
                        p.remove(n);
                    }
                    self.inner.stats.retried.fetch_add(1, Ordering::Relaxed);
                    info!(count = names.len(), "queued invalidations applied to redis");
                }
                Err(e) => {
                    debug!(error = %e, "retry of queued invalidations failed");
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Follows the bus. Every (re)subscription flushes L1 and bumps the global epoch:
    /// messages may have been missed while the subscription was down.
    async fn listen(self, l2: L2, bus_latency: Histogram) {
        let channel = l2.channel();
        let mut first = true;
        loop {
            match l2.subscribe(&channel).await {
                Ok(mut stream) => {
                    if !first {
                        self.flush_after_gap();
                    }
                    first = false;
                    while let Some(msg) = stream.next().await {
                        if let Some(ms) = self.on_message(&msg) {
                            bus_latency.observe(ms as f64 / 1000.0);
                        }
                    }
                    warn!("invalidation bus subscription dropped");
                }
                Err(e) => debug!(error = %e, "invalidation bus subscribe failed"),
            }
            // While the bus is down, L1 keeps serving within its short TTLs; the flush
            // comes when the subscription is back (messages may have been missed).
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn flush_after_gap(&self) {
        self.inner.epochs.bump(&[GLOBAL.to_owned()]);
        self.inner.l1.clear();
        self.inner
            .stats
            .resubscribes
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Applies another instance's invalidation; returns its write-to-applied latency.
    fn on_message(&self, payload: &[u8]) -> Option<u64> {
        let Ok(m) = serde_json::from_slice::<BusMessage>(payload) else {
            warn!("unreadable message on the invalidation bus");
            return None;
        };
        if m.origin == self.inner.origin {
            return None;
        }
        if let Some(e) = &m.entity {
            self.mark_written(e);
        }
        self.inner.epochs.bump(&m.names);
        let lat = self.inner.clock.now_ms().saturating_sub(m.at_ms);
        let s = &self.inner.stats;
        s.received.fetch_add(1, Ordering::Relaxed);
        s.received_latency_ms.fetch_add(lat, Ordering::Relaxed);
        s.received_latency_max_ms.fetch_max(lat, Ordering::Relaxed);
        Some(lat)
    }
}

/// Raises an entity's write mark to `seq`, never lowers it (two writes of one entity
/// may record their marks in either order).
fn mark_written(writes: &Cache<String, u64>, entity: &str, seq: u64) {
    writes
        .entry_by_ref(entity)
        .and_upsert_with(|old| old.map_or(seq, |o| o.into_value().max(seq)));
}

fn rand_salt() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_fills_listing_one_order_lose_none_of_its_families() {
        let inv = Invalidator::new(
            L1::new(1 << 20),
            None,
            Clock::default(),
            Duration::from_secs(60),
            Duration::from_secs(60),
        );
        std::thread::scope(|s| {
            for t in 0..8 {
                let inv = &inv;
                s.spawn(move || {
                    for i in 0..200 {
                        let family = format!("status:T{t}-{i}");
                        inv.remember_local(&[("order:1".to_owned(), vec![family])]);
                    }
                });
            }
        });
        let known = inv.inner.index.get("order:1").unwrap();
        assert_eq!(known.len(), 8 * 200, "every family any fill saw is kept");
    }

    #[test]
    fn a_write_mark_never_goes_back() {
        let writes: Cache<String, u64> = Cache::new(10);
        mark_written(&writes, "order:1", 7);
        mark_written(&writes, "order:1", 5);
        assert_eq!(writes.get("order:1"), Some(7));
        mark_written(&writes, "order:1", 9);
        assert_eq!(writes.get("order:1"), Some(9));
    }
}
