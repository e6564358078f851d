//! Invalidation: local epochs, the entity index (what families an entity was seen in),
//! applying an invalidation to L1, Redis and the bus, retrying what Redis missed, and
//! listening to other instances.
//!
//! It does not decide what a write invalidates ([`crate::write`] plans that) and it does
//! not read or store entries ([`crate::proxy`] does, under the fences taken here).

use std::collections::{HashMap, HashSet};
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
use crate::epoch::{Epochs, Fence, GLOBAL, UNKNOWN_ACK, push_unique};
use crate::l1::L1;
use crate::l2::{L2, SharedStore};

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
    /// Messages from other instances that this instance passed on with families only it
    /// knew the written entity in.
    pub forwarded: AtomicU64,
    /// Times the bus subscription (re)started and L1 was flushed.
    pub resubscribes: AtomicU64,
    /// Fills not stored because an entity they list was written during the fill.
    pub fenced_fills: AtomicU64,
    /// Entries a write fetched again and put in place (refresh on write).
    pub refreshed: AtomicU64,
    /// Refreshed entries also stored in Redis, in the invalidation's own step.
    pub refreshed_shared: AtomicU64,
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
    /// When set, every write stops right after it looked up the families its entity was
    /// seen in (its plan), until the gate is released.
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
    /// entity → the highest write sequence and acknowledgement number of its finished
    /// writes (to fence fills that listed it; see [`Invalidator::admits`]).
    writes: Cache<String, (u64, u64)>,
    /// entity → this instance's writes of it between their mark and their local bump.
    // A std Mutex: short scans, never held across `.await`. It also orders a fill's
    // check against a write's finish (see `admits` and `finish`).
    open_writes: Mutex<HashMap<String, Vec<OpenWrite>>>,
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
                open_writes: Mutex::default(),
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

    /// Whether a fill (or a refresh) may be stored: it began at write sequence `seq`, after
    /// the writes numbered up to `acked` were in the MES, lists `entities`, and its own
    /// families are `families`. A write of a listed entity that it may not have seen (marked
    /// since `seq`, acknowledged after `acked`) keeps it out when that write has finished
    /// (its invalidation may have missed these families: it looked the entity up before the
    /// fill recorded what it lists). A write still in progress is handed the families
    /// instead, and its bump ends the entry: nothing is lost, the fill is stored.
    pub fn admits(&self, entities: &[String], seq: u64, acked: u64, families: &[String]) -> bool {
        if !self.fencing() || entities.is_empty() {
            return true;
        }
        let conflicts = |(s, a): (u64, u64)| s >= seq && a > acked;
        let mut admitted = true;
        {
            let mut open = self.lock_open_writes();
            for e in entities {
                if self.inner.writes.get(e).is_some_and(conflicts) {
                    admitted = false;
                    break;
                }
                let Some(writes) = open.get_mut(e) else {
                    continue;
                };
                for w in writes.iter_mut().filter(|w| conflicts((w.seq, w.ack))) {
                    admitted &= !families.is_empty();
                    for f in families {
                        push_unique(&mut w.handed, f.clone());
                    }
                }
            }
        }
        if !admitted {
            self.inner
                .stats
                .fenced_fills
                .fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }

    fn lock_open_writes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<OpenWrite>>> {
        self.inner
            .open_writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a write of `entity` numbered `ack` (see [`Invalidator::note_acked`]): from here
    /// until its bump, fills that list the entity hand it their families. A write marks its
    /// entity *before* it looks up the families the entity was seen in, and a fill records
    /// what it lists *before* [`Invalidator::admits`]: so either the fill finds the write,
    /// or the write finds the families.
    pub fn begin_write(&self, entity: &str, ack: u64) -> WriteMark {
        let seq = self.inner.seq.fetch_add(1, Ordering::AcqRel);
        let open = OpenWrite {
            seq,
            ack,
            handed: Vec::new(),
        };
        self.lock_open_writes()
            .entry(entity.to_owned())
            .or_default()
            .push(open);
        WriteMark {
            entity: entity.to_owned(),
            seq,
            ack,
            finished: false,
            inv: self.clone(),
        }
    }

    /// Closes a write (right before its bump): later fills that missed it are kept out;
    /// returns the families fills handed it.
    fn finish(&self, mark: &mut WriteMark) -> Vec<String> {
        mark.finished = true;
        let mut open = self.lock_open_writes();
        let mut handed = Vec::new();
        if let Some(writes) = open.get_mut(&mark.entity) {
            if let Some(i) = writes.iter().position(|w| w.seq == mark.seq) {
                handed = writes.swap_remove(i).handed;
            }
            if writes.is_empty() {
                open.remove(&mark.entity);
            }
        }
        mark_written(&self.inner.writes, &mark.entity, mark.seq, mark.ack);
        handed
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
        let mark = entity.map(|e| self.begin_write(&e, UNKNOWN_ACK));
        self.apply_acked(names, mark, UNKNOWN_ACK, |_| Vec::new())
            .await;
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
    /// [`Invalidator::note_acked`] (the local bumps remember it), opened with
    /// [`Invalidator::begin_write`] when it has an entity (the families fills handed it
    /// are bumped too). `after_local` runs right after the local epochs moved, with the
    /// names moved, before the Redis part (refresh on write puts its entries in L1 there);
    /// what it returns is stored in Redis in the same step as the Redis moves.
    pub async fn apply_acked(
        &self,
        mut names: Vec<String>,
        mut mark: Option<WriteMark>,
        ack: u64,
        after_local: impl FnOnce(&[String]) -> Vec<SharedStore>,
    ) {
        let inner = &self.inner;
        if let Some(m) = &mut mark {
            for f in self.finish(m) {
                push_unique(&mut names, f);
            }
        }
        let entity = mark.map(|m| m.entity.clone());
        let Some(l2) = &inner.l2 else {
            inner.epochs.bump_acked(&names, ack);
            after_local(&names);
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
        let stores = after_local(&names);
        inner.stats.applied.fetch_add(1, Ordering::Relaxed);
        inner.switches.pass_gate(&inner.switches.bump_gate).await;
        let msg = self.message(&names, entity);
        let result = l2.invalidate(&names, &msg, &stores).await;
        if let Ok(stored) = result {
            let stored = stored as u64;
            inner
                .stats
                .refreshed_shared
                .fetch_add(stored, Ordering::Relaxed);
        }
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
            match l2.invalidate(&names, &msg, &[]).await {
                Ok(_) => {
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
        let mut names = m.names;
        if let Some(e) = &m.entity {
            {
                // Under the lock fills check marks under (see `admits`): a fill that
                // checked before this mark recorded what it lists before, and the
                // lookup below finds it.
                let _ordered = self.lock_open_writes();
                let seq = self.inner.seq.fetch_add(1, Ordering::AcqRel);
                mark_written(&self.inner.writes, e, seq, UNKNOWN_ACK);
            }
            // The families this instance saw the entity in: the writing instance looked
            // it up in Redis, which may not have had what this instance's fills recorded
            // yet (it records them there too, right after). Those are ended here and, by
            // a message of this instance, in Redis and everywhere else.
            let extra: Vec<String> = self
                .inner
                .index
                .get(e)
                .map(|known| {
                    known
                        .iter()
                        .filter(|f| !names.contains(f))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            if !extra.is_empty() {
                names.extend(extra.iter().cloned());
                self.inner.stats.forwarded.fetch_add(1, Ordering::Relaxed);
                let inv = self.clone();
                tokio::spawn(async move { inv.apply(extra, None).await });
            }
        }
        self.inner.epochs.bump(&names);
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
fn mark_written(writes: &Cache<String, (u64, u64)>, entity: &str, seq: u64, ack: u64) {
    writes.entry_by_ref(entity).and_upsert_with(|old| {
        old.map_or((seq, ack), |o| {
            let (s, a) = o.into_value();
            (s.max(seq), a.max(ack))
        })
    });
}

/// A write of this instance between its mark and its local bump.
#[derive(Debug)]
struct OpenWrite {
    seq: u64,
    ack: u64,
    /// Families of fills that listed the entity while the write was open.
    handed: Vec<String>,
}

/// An open write (see [`Invalidator::begin_write`]); pass it to
/// [`Invalidator::apply_acked`]. Dropped unapplied, it closes the write as if applied
/// (later fills that missed it are kept out), so none stays open.
#[must_use]
pub struct WriteMark {
    entity: String,
    seq: u64,
    ack: u64,
    finished: bool,
    inv: Invalidator,
}

impl Drop for WriteMark {
    fn drop(&mut self) {
        if !self.finished {
            let inv = self.inv.clone();
            inv.finish(self);
        }
    }
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
        let writes: Cache<String, (u64, u64)> = Cache::new(10);
        mark_written(&writes, "order:1", 7, 3);
        mark_written(&writes, "order:1", 5, 4);
        assert_eq!(writes.get("order:1"), Some((7, 4)));
        mark_written(&writes, "order:1", 9, 1);
        assert_eq!(writes.get("order:1"), Some((9, 4)));
    }

    fn invalidator() -> Invalidator {
        Invalidator::new(
            L1::new(1 << 20),
            None,
            Clock::default(),
            Duration::from_secs(60),
            Duration::from_secs(60),
        )
    }

    #[tokio::test]
    async fn a_bus_message_also_ends_the_families_this_instance_saw_its_entity_in() {
        let inv = invalidator();
        inv.remember_local(&[("order:1".to_owned(), vec!["status:A".to_owned()])]);
        let a = inv.fence(&crate::epoch::names_for("status:A"));
        let c = inv.fence(&crate::epoch::names_for("status:C"));
        let msg = BusMessage {
            origin: "another instance".into(),
            names: vec!["status:B".into()],
            entity: Some("order:1".into()),
            at_ms: 0,
        };
        assert!(inv.on_message(&serde_json::to_vec(&msg).unwrap()).is_some());
        assert!(!a.is_valid(), "status:A, known here only, is ended too");
        assert!(c.is_valid(), "nothing else");
        assert_eq!(
            inv.stats().forwarded.load(Ordering::Relaxed),
            1,
            "passed on"
        );
    }

    #[tokio::test]
    async fn a_fill_hands_its_families_to_a_write_in_progress_and_a_finished_one_fences_it() {
        let inv = invalidator();
        let listed = ["order:1".to_owned()];
        let a = ["status:A".to_owned()];
        // A fill began (nothing acknowledged yet), then a write of order:1 opened.
        let (seq, acked) = (inv.write_seq(), inv.acked());
        let ack = inv.note_acked();
        let mark = inv.begin_write("order:1", ack);
        assert!(inv.admits(&listed, seq, acked, &a), "handed over, stored");
        assert!(
            !inv.admits(&listed, seq, acked, &[]),
            "nothing to hand over: kept out"
        );
        let fence = inv.fence(&crate::epoch::names_for("status:A"));
        // The write's plan did not know status:A; its bump covers it anyway.
        inv.apply_acked(vec!["status:B".to_owned()], Some(mark), ack, |_| Vec::new())
            .await;
        assert!(!fence.is_valid(), "the handed family was bumped");
        // Finished: a fill from before it is kept out, one from after is stored.
        assert!(!inv.admits(&listed, seq, acked, &a));
        assert!(inv.admits(&listed, inv.write_seq(), inv.acked(), &a));
        // A fill that began after the write was acknowledged saw it.
        let acked = inv.acked();
        let ack = inv.note_acked();
        let seq = inv.write_seq();
        let mark = inv.begin_write("order:1", ack);
        assert!(inv.admits(&listed, seq, ack, &[]), "acknowledged before");
        assert!(!inv.admits(&listed, seq, acked, &[]));
        drop(mark);
        assert!(inv.lock_open_writes().is_empty(), "dropped marks close");
    }
}
