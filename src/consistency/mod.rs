//! Consistency: keeping every cached answer true after the writes this gateway forwards,
//! on every instance. It owns the write clock, the invalidation names, the entity index,
//! the write marks, the outbox to Redis and the bus; it does not read or store entries
//! (the read path does, under the fences taken here) and it does not decide what a write
//! makes wrong (the write path plans that).
//!
//! # The promises, their mechanism, and the test that guards each
//!
//! One clock ([`clock`]): a *tick* is taken when the MES acknowledges a write this
//! instance forwarded, or when a foreign invalidation (bus, purge, reload) arrives. Every
//! name ([`names`]) keeps the tick of its last bump; a fill records the tick current when
//! it began; an entry is valid while every name it depends on was last bumped at or
//! before that tick.
//!
//! 1. **Read-your-writes on one instance.** A write's names are bumped locally with its
//!    tick before its answer leaves ([`Invalidator::apply_acked`]).
//!    *Across the tiers:* its names are closed to the shared tier from before the local
//!    bump until the Redis bump lands (1a), and an entry taken from the shared tier counts
//!    as begun before every write not yet bumped locally, the *watermark* (1b): Redis may
//!    still hold the pre-write answer. Tests: `status_change_is_visible_on_the_same_
//!    instance_right_after_the_200`, (1a) `a_read_between_the_local_and_the_redis_bump_
//!    refills_nothing_stale`, (1b) `a_shared_tier_hit_taken_during_a_writes_refresh_ends_
//!    at_its_bump`.
//! 2. **No stale resurrection.** A fill that began before a bump of one of its names is
//!    not stored, locally (the fence) or in Redis (epochs checked and stored in one
//!    script); a request that arrives after a bump never joins a fetch that began before
//!    it (the single-flight key carries [`Fence::tag`]). Tests:
//!    `a_fill_that_raced_an_invalidation_is_never_stored`.
//!    (2a) *A fill racing a write's plan*: a write marks its entity ([`entities`]) before
//!    it looks up where the entity was seen, and a fill records what it lists before it
//!    checks the marks, so one sees the other; an open write is handed the fill's families,
//!    a finished one it may not have seen keeps the fill out. Tests: `a_fill_that_ends_
//!    while_a_write_plans_hands_its_family_to_the_write`, `a_fill_that_ends_after_a_write_
//!    that_missed_its_family_is_kept_out`.
//!    (2b) *What already shows a write outlives its bump*: a fill that began after a
//!    write's tick is not ended by it (the write's bump waits for its refresh), and a
//!    refreshed entry is stored only if nothing with a later tick moved its names. Tests:
//!    `an_entry_fetched_after_a_write_was_acknowledged_outlives_its_bump`, `refresh_on_
//!    write_drops_what_another_invalidation_overtook`, `refresh_on_write_survives_a_
//!    write_the_mes_had_before_its_fetch`, `refresh_on_write_keeps_out_of_redis_what_
//!    another_instance_moved`.
//!    (2c) *What is derived from a write's answer* (the detail it `represents`, an
//!    unfiltered page patched in place) counts as begun at the write's tick, or before
//!    any other write acknowledged earlier and not yet bumped, if older
//!    ([`Invalidator::watermark_besides`]), and is not derived from an answer the status
//!    index already holds a newer state of. Tests: `the_cached_detail_becomes_the_
//!    writes_answer_with_no_mes_request`, `unfiltered_pages_are_patched_from_the_writes_
//!    answer_with_no_mes_request` (their races are not provoked by a test).
//! 3. **Other instances converge.** The Redis bump and the bus message are one script; a
//!    message takes a tick on arrival and bumps its names; a resubscription flushes L1
//!    (messages may have been missed); families only this instance saw the entity in are
//!    ended here and passed on ([`bus`]). Tests: `other_instances_converge_over_the_bus`,
//!    `a_family_only_this_instance_knew_is_passed_on_to_the_others`, the convergence
//!    figures of `tests/consistency.rs`.
//!    (3a) *An instance that cannot hear the bus knows it*: every instance publishes a
//!    heartbeat every `redis.heartbeat` and hears its own come back; silence for
//!    `redis.bus_deadline`, or a dropped subscription, makes it *cut off*: everything in
//!    L1 ends (the global name), L2 is not read, what it fetches is kept in L1 only
//!    `redis.cut_off_ttl`, until it hears the bus again and resynchronizes as after a
//!    resubscription ([`bus`]). Tests: `a_write_on_one_instance_is_not_stale_on_another_
//!    while_redis_hangs` (SIGSTOP), `..._while_redis_is_dead` (SIGKILL).
//!    (3b) *A Redis that restarted or lost data is not trusted*: every entry, epoch and
//!    membership key carries a generation, renewed when Redis's `run_id` or the marker
//!    changed ([`crate::l2::L2::heartbeat`]); every script checks it; a new one flushes L1.
//!    Test: `redis_back_from_an_older_snapshot_serves_nothing_a_later_write_ended`.
//! 4. **No lost invalidation.** The write runs detached from its client; a Redis bump that
//!    fails is queued and retried, its names closed to the shared tier until it lands
//!    ([`outbox`]). Tests: `a_client_that_disconnects_mid_patch_still_gets_its_write_
//!    invalidated`, `redis_unreachable_during_a_write_never_serves_stale_before_or_after`.
//! 5. **The previous status.** The families an entity was seen in are recorded before the
//!    entry listing it is visible, here and in Redis; a write records its entity in the
//!    families it rendered; nothing known falls back to whole groups. Tests:
//!    `unknown_previous_status_invalidates_every_status_family`, `a_write_records_its_
//!    entity_in_the_new_status_for_the_next_write`, the randomized `tests/consistency.rs`
//!    (violations, a few per run, with the lookup switched off).
//! 6. **Caches degrade** (the tiers' business, not this module's): `redis_outage_
//!    degrades_to_l1_and_mes_then_recovers`, `stale_if_error_serves_a_marked_stale_entry_
//!    within_the_window`.

pub mod bus;
pub mod clock;
pub mod entities;
pub mod hooks;
pub mod names;
pub mod outbox;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;
use tracing::{debug, warn};

pub use clock::{Check, Fence};
pub use entities::WriteMark;
pub use hooks::{Gate, Hooks, Point, TestSwitches};
pub use names::Name;

use crate::clock::Clock;
use crate::l1::L1;
use crate::l2::{L2, SharedStore};
use clock::{Names, WriteClock};
use entities::Entities;
use names::push_unique;
use outbox::Outbox;

/// Counters of the consistency machinery.
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
    /// Times the bus subscription (re)started, or was heard again after a cut-off, or
    /// Redis began a new generation, and L1 was flushed.
    pub resubscribes: AtomicU64,
    /// Times this instance counted itself cut off from the bus (episodes).
    pub cut_offs: AtomicU64,
    /// Fills not stored because an entity they list was written during the fill.
    pub fenced_fills: AtomicU64,
    /// Entries a write fetched again and put in place (refresh on write).
    pub refreshed: AtomicU64,
    /// Refreshed entries also stored in Redis, in the invalidation's own step.
    pub refreshed_shared: AtomicU64,
    /// Refreshed entries taken from the write's own answer (`represents`), not fetched.
    pub refreshed_from_answer: AtomicU64,
    /// L1 entries whose names were bumped only by writes their fetch already showed,
    /// kept (promise 2b).
    pub revalidated: AtomicU64,
    /// Entries a write fetched again but did not store (another write moved them, or
    /// the answer was not storable).
    pub refresh_dropped: AtomicU64,
}

/// The consistency state of one instance. Cheap to clone.
#[derive(Clone)]
pub struct Invalidator {
    inner: Arc<Inner>,
}

struct Inner {
    clock: WriteClock,
    names: Names,
    entities: Entities,
    outbox: Outbox,
    l1: L1,
    l2: Option<L2>,
    wall: Clock,
    origin: String,
    stats: InvalidationStats,
    // A std Mutex: cloned out at each hook point, never held across `.await`.
    hooks: Mutex<Arc<dyn Hooks>>,
    // Set when a test first asks for the switches (they are then the hooks).
    switches: Mutex<Option<Arc<TestSwitches>>>,
    /// Whether the bus subscription is up (the listener says so).
    subscribed: tokio::sync::watch::Sender<bool>,
    /// Whether this instance may be missing invalidations (promise 3a): from the start
    /// until the first subscription, and while the bus is silent or down.
    cut_off: AtomicBool,
    /// `redis.cut_off_ttl`, ms (set when the bus is started).
    cut_off_ttl_ms: AtomicU64,
    /// `redis.bus_deadline`, ms (set when the bus is started).
    bus_deadline_ms: AtomicU64,
    /// L2 is not read before this instant (`bus::mono_ms`): after a cut-off, and while
    /// another instance has invalidations queued for Redis.
    l2_hold_until_ms: AtomicU64,
    // A std Mutex: set once at build, cloned out per message, never held across `.await`.
    sink: Mutex<Option<Arc<dyn bus::DeltaSink>>>,
}

impl Invalidator {
    /// A new invalidator; `index_ttl` bounds how long entity memberships are remembered
    /// (at least as long as any entry lives), `fill_ttl` how long write marks are kept
    /// (at least as long as a fill can take).
    pub fn new(
        l1: L1,
        l2: Option<L2>,
        wall: Clock,
        index_ttl: Duration,
        fill_ttl: Duration,
    ) -> Self {
        let origin = format!("{}-{:x}", std::process::id(), wall.now_ms() ^ rand_salt());
        let shared = l2.is_some();
        Self {
            inner: Arc::new(Inner {
                clock: WriteClock::default(),
                names: Names::default(),
                entities: Entities::new(index_ttl, fill_ttl),
                outbox: Outbox::default(),
                l1,
                l2,
                wall,
                origin,
                stats: InvalidationStats::default(),
                hooks: Mutex::new(Arc::new(hooks::NoHooks)),
                switches: Mutex::default(),
                subscribed: tokio::sync::watch::Sender::new(false),
                cut_off: AtomicBool::new(shared),
                cut_off_ttl_ms: AtomicU64::new(0),
                bus_deadline_ms: AtomicU64::new(0),
                l2_hold_until_ms: AtomicU64::new(0),
                sink: Mutex::default(),
            }),
        }
    }

    fn hooks(&self) -> Arc<dyn Hooks> {
        self.inner
            .hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A fence for a fill that begins now.
    pub fn fence(&self, names: &[Name]) -> Fence {
        self.inner.names.fence(names, self.inner.clock.now())
    }

    /// The tick an entry taken from the shared tier counts as begun at (promise 1b): read
    /// it before the lookup, then fence with [`Invalidator::fence_at`].
    pub fn watermark(&self) -> u64 {
        self.inner.outbox.watermark(&self.inner.clock)
    }

    /// The tick an answer of the write acknowledged at `tick` counts as begun at: `tick`,
    /// or before the oldest other write acknowledged and not yet bumped locally, if older
    /// (its state may be newer than this answer, and its bump must end what is derived
    /// from this one).
    pub fn watermark_besides(&self, tick: u64) -> u64 {
        self.inner
            .outbox
            .oldest_unsettled_besides(tick)
            .map_or(tick, |t| (t - 1).min(tick))
    }

    /// A fence for an answer that counts as begun at tick `began`.
    pub fn fence_at(&self, names: &[Name], began: u64) -> Fence {
        self.inner.names.fence(names, began)
    }

    /// How many name cells exist (pruned as fences let go of them).
    pub fn epoch_counters(&self) -> usize {
        self.inner.names.len()
    }

    /// Whether any of the names waits for its Redis bump: L2 must not be used (1a, 4).
    pub fn closed_any(&self, names: &[Name]) -> bool {
        self.inner.outbox.closed_any(names)
    }

    /// Whether an answer whose fill began at `began`, listing `entities`, with its own
    /// `families`, may be stored (promise 2a); counts the ones kept out.
    pub fn admits(&self, entities: &[String], began: u64, families: &[&str]) -> bool {
        let admitted = self.inner.entities.admits(entities, began, families);
        if !admitted {
            self.inner
                .stats
                .fenced_fills
                .fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }

    /// Records memberships seen in an answer, locally (the caller does Redis).
    pub fn remember_local(&self, members: &[(String, Vec<String>)]) {
        self.inner.entities.remember(members);
    }

    /// The families `entity` is known to belong to, here and in Redis (promise 5).
    pub async fn known(&self, entity: &str) -> Vec<String> {
        if !self.hooks().previous_lookup() {
            return Vec::new();
        }
        let mut out = self.inner.entities.seen_in(entity);
        if let Some(l2) = &self.inner.l2 {
            match l2.known(entity).await {
                Ok(shared) => {
                    for f in shared {
                        push_unique(&mut out, f);
                    }
                }
                Err(e) => debug!(error = %e, tier = "shared", "entity lookup failed"),
            }
        }
        out
    }

    /// Whether unknown previous families fall back to whole groups (off only in tests).
    pub fn previous_lookup(&self) -> bool {
        self.hooks().previous_lookup()
    }

    /// Waits at a hook point (a test may hold the write there).
    pub async fn reached(&self, point: Point) {
        self.hooks().reached(point).await;
    }

    /// Takes the tick of a write the MES just acknowledged, before its invalidation is
    /// planned: every fetch that starts from here on sees it.
    pub fn acknowledge(&self) -> u64 {
        self.inner.outbox.acknowledge(&self.inner.clock)
    }

    /// Opens a write of `entity` acknowledged at `tick` (promise 2a).
    pub fn begin_write(&self, entity: &str, tick: u64) -> WriteMark {
        self.inner.entities.open(entity, tick)
    }

    /// Moves local names only, with a tick of their own (a reload dropping one instance's
    /// entries of a route).
    pub fn bump_local(&self, names: &[Name]) {
        self.inner.names.bump(names, self.inner.clock.tick());
    }

    /// Applies an invalidation that is not a write of this instance (a purge): a tick,
    /// the local bump, then Redis and the bus as for a write.
    pub async fn apply(&self, names: Vec<Name>, entity: Option<String>) {
        let tick = self.acknowledge();
        let mark = entity.map(|e| self.begin_write(&e, tick));
        self.apply_acked(names, mark, tick, None, |_| Vec::new())
            .await;
    }

    /// Tells the other instances a status index's delta again, with nothing to bump: its
    /// first message may have been lost with Redis (see `index::service::shared`).
    pub async fn publish_delta(&self, delta: bus::Delta) -> Result<(), crate::l2::L2Error> {
        let Some(l2) = &self.inner.l2 else {
            return Ok(());
        };
        let msg = bus::message(
            &self.inner.origin,
            &[],
            None,
            Some(delta),
            self.inner.wall.now_ms(),
        );
        l2.invalidate(&[], &msg, &[]).await.map(drop)
    }

    /// Everything: bump the global name (all entries, all fills in flight).
    pub async fn purge_all(&self) {
        self.apply(vec![Name::Global], None).await;
    }

    /// Applies the invalidation of the write acknowledged at `tick` (promises 1 and 4):
    /// the write closed (the families fills handed it are bumped too), the names closed
    /// to L2, bumped locally, then Redis and the bus in one script; when Redis fails the
    /// names are queued for retry and stay closed. `after_local` runs right after the
    /// local bump, with the names moved (refresh on write puts its entries in L1 there);
    /// what it returns is stored in Redis in the same script. Returns when L1 is
    /// invalidated and Redis either has it or has it queued.
    pub async fn apply_acked(
        &self,
        mut names: Vec<Name>,
        mut mark: Option<WriteMark>,
        tick: u64,
        delta: Option<bus::Delta>,
        after_local: impl FnOnce(&[Name]) -> Vec<SharedStore>,
    ) {
        let inner = &self.inner;
        if let Some(m) = &mut mark {
            for f in inner.entities.finish(m) {
                push_unique(&mut names, f);
            }
        }
        let entity = mark.as_ref().map(|m| m.entity().to_owned());
        let hooks = self.hooks();
        let close = inner.l2.is_some() && hooks.close_l2_while_bumping();
        if close {
            inner.outbox.close(&names, true);
        }
        inner.names.bump(&names, tick);
        let stores = after_local(&names);
        inner.outbox.settle(tick);
        inner.stats.applied.fetch_add(1, Ordering::Relaxed);
        let Some(l2) = &inner.l2 else {
            return;
        };
        hooks.reached(Point::BumpGap).await;
        let msg = bus::message(&inner.origin, &names, entity, delta, inner.wall.now_ms());
        let result = l2.invalidate(&names, &msg, &stores).await;
        match &result {
            Ok(stored) => {
                let stored = *stored as u64;
                inner
                    .stats
                    .refreshed_shared
                    .fetch_add(stored, Ordering::Relaxed);
            }
            Err(_) => inner.outbox.queue(&names),
        }
        if close {
            inner.outbox.close(&names, false);
        }
        if let Err(e) = result {
            warn!(error = %e, kind = e.as_str(), tier = "shared", "invalidation queued for retry");
            inner.stats.queued.fetch_add(1, Ordering::Relaxed);
        }
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

    /// Counts one refreshed entry taken from the write's answer instead of the MES.
    pub fn count_refresh_from_answer(&self) {
        let s = &self.inner.stats;
        s.refreshed_from_answer.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an L1 entry kept though its names moved (promise 2b).
    pub fn count_revalidated(&self) {
        self.inner.stats.revalidated.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a previous-status fallback.
    pub fn count_fallback(&self) {
        self.inner.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    /// Counters.
    pub fn stats(&self) -> &InvalidationStats {
        &self.inner.stats
    }

    /// The test switches; the first call installs them as the hooks.
    pub fn switches(&self) -> Arc<TestSwitches> {
        let mut installed = self
            .inner
            .switches
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let switches = installed.get_or_insert_with(Default::default).clone();
        *self.inner.hooks.lock().unwrap_or_else(|e| e.into_inner()) = switches.clone();
        switches
    }

    /// Sends the bus's deltas (and its gaps) to `sink` (the status indexes).
    pub fn set_sink(&self, sink: Arc<dyn bus::DeltaSink>) {
        *self.inner.sink.lock().unwrap_or_else(|e| e.into_inner()) = Some(sink);
    }

    pub(crate) fn sink(&self) -> Option<Arc<dyn bus::DeltaSink>> {
        self.inner
            .sink
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the bus subscription is up now.
    pub fn bus_subscribed(&self) -> bool {
        *self.inner.subscribed.borrow()
    }

    /// Waits, at most `within`, for the bus subscription to be up; whether it is. (Until
    /// it is, this instance does not hear of other instances' writes.)
    pub async fn wait_subscribed(&self, within: Duration) -> bool {
        let mut rx = self.inner.subscribed.subscribe();
        tokio::time::timeout(within, rx.wait_for(|up| *up))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Whether no write is open (tests).
    pub fn no_open_writes(&self) -> bool {
        self.inner.entities.none_open()
    }

    /// Starts the retry loop, the bus listener, the heartbeats and the generation
    /// watch (when Redis is configured). Bus latencies are observed into `bus_latency`.
    pub fn start_background(&self, bus_latency: Histogram, timing: bus::BusTiming) {
        let Some(l2) = self.inner.l2.clone() else {
            return;
        };
        let ttl = timing.cut_off_ttl.as_millis() as u64;
        self.inner.cut_off_ttl_ms.store(ttl, Ordering::Relaxed);
        let deadline = timing.deadline.as_millis() as u64;
        self.inner
            .bus_deadline_ms
            .store(deadline, Ordering::Relaxed);
        let inv = self.clone();
        let retry_l2 = l2.clone();
        tokio::spawn(async move {
            let inner = &inv.inner;
            let message = |names: &[Name]| {
                bus::message(&inner.origin, names, None, None, inner.wall.now_ms())
            };
            inner
                .outbox
                .retry_loop(retry_l2, message, &inner.stats.retried)
                .await;
        });
        tokio::spawn(l2.clone().follow_master(timing.heartbeat));
        tokio::spawn(bus::beat(self.clone(), l2.clone(), timing.heartbeat));
        tokio::spawn(bus::follow_generation(self.clone(), l2.clone()));
        tokio::spawn(bus::listen(self.clone(), l2, bus_latency, timing));
    }
}

fn rand_salt() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}
