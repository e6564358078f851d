//! The gap between an invalidation's local bump and Redis: writes acknowledged but not
//! yet bumped locally (the watermark shared-tier entries are judged by), names closed to
//! the shared tier while their Redis bump is on its way or queued, and the retries.
//!
//! It does not bump anything locally ([`super::clock`]) and it does not decide what a
//! write invalidates ([`crate::write`]); see promises 1 and 4 in [`super`].

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{debug, info};

use super::clock::WriteClock;
use super::names::Name;
use crate::l2::L2;

/// The outbox of one instance.
#[derive(Default)]
pub struct Outbox {
    /// Ticks of writes acknowledged by the MES and not yet bumped locally.
    // A std Mutex: inserts, removes and a first(), never held across `.await`. Taking a
    // tick and recording it happen under it together, so no watermark passes a write
    // between the two.
    unsettled: Mutex<BTreeSet<u64>>,
    /// Names whose Redis bump is on its way (count per name, for concurrent writes).
    // A std Mutex: counts only, never held across `.await`.
    closed: Mutex<HashMap<Name, usize>>,
    /// Names whose Redis bump failed and waits for a retry.
    // A std Mutex: inserts and drains only, never held across `.await`.
    pending: Mutex<HashSet<Name>>,
    wake_retry: Notify,
    /// Cuts a retry's backoff short: the bus is heard again, so Redis is back, and other
    /// instances may read L2 until the queued bumps land.
    retry_now: Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Outbox {
    /// Takes the tick of a write the MES just acknowledged; unsettled until
    /// [`Outbox::settle`].
    pub fn acknowledge(&self, clock: &WriteClock) -> u64 {
        let mut unsettled = lock(&self.unsettled);
        let tick = clock.tick();
        unsettled.insert(tick);
        tick
    }

    /// The write acknowledged at `tick` is bumped locally (and its names closed to L2 if
    /// it has a Redis part).
    pub fn settle(&self, tick: u64) {
        lock(&self.unsettled).remove(&tick);
    }

    /// The tick an entry taken from the shared tier counts as begun at: before every
    /// write of this instance not yet bumped locally. (Redis may hold the pre-write
    /// answer until that write's Redis bump, and the write's tick was taken before the
    /// lookup: judged by the lookup's own tick it would outlive the write's bump.)
    pub fn watermark(&self, clock: &WriteClock) -> u64 {
        let unsettled = lock(&self.unsettled);
        match unsettled.first() {
            Some(t) => t - 1,
            None => clock.now(),
        }
    }

    /// The oldest write acknowledged and not yet bumped locally, other than `tick`.
    pub fn oldest_unsettled_besides(&self, tick: u64) -> Option<u64> {
        lock(&self.unsettled).iter().copied().find(|&t| t != tick)
    }

    /// Closes or reopens `names` to the shared tier around their Redis bump.
    pub fn close(&self, names: &[Name], on: bool) {
        let mut closed = lock(&self.closed);
        for n in names {
            if on {
                *closed.entry(n.clone()).or_default() += 1;
            } else if let Some(c) = closed.get_mut(n) {
                *c -= 1;
                if *c == 0 {
                    closed.remove(n);
                }
            }
        }
    }

    /// Whether any of `names` waits for its Redis bump: L2 must not be used for it.
    pub fn closed_any(&self, names: &[Name]) -> bool {
        {
            let c = lock(&self.closed);
            if !c.is_empty() && names.iter().any(|n| c.contains_key(n)) {
                return true;
            }
        }
        let p = lock(&self.pending);
        !p.is_empty() && names.iter().any(|n| p.contains(n))
    }

    /// Queues `names` for a Redis retry (they stay closed to L2 until it succeeds).
    pub fn queue(&self, names: &[Name]) {
        lock(&self.pending).extend(names.iter().cloned());
        self.wake_retry.notify_one();
    }

    /// Whether invalidations wait for a Redis retry.
    pub fn has_pending(&self) -> bool {
        !lock(&self.pending).is_empty()
    }

    /// Retries what is queued now, whatever the backoff had grown to.
    pub fn wake(&self) {
        self.retry_now.notify_one();
    }

    /// Retries queued bumps with backoff until each lands; `message` spells the bus
    /// message for a set of names; `retried` counts the retries that landed.
    pub async fn retry_loop(
        &self,
        l2: L2,
        message: impl Fn(&[Name]) -> String,
        retried: &AtomicU64,
    ) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if lock(&self.pending).is_empty() {
                backoff = Duration::from_millis(100);
                self.wake_retry.notified().await;
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.retry_now.notified() => backoff = Duration::from_millis(100),
            }
            let names: Vec<Name> = lock(&self.pending).iter().cloned().collect();
            match l2.invalidate(&names, &message(&names), &[]).await {
                Ok(_) => {
                    let mut p = lock(&self.pending);
                    for n in &names {
                        p.remove(n);
                    }
                    retried.fetch_add(1, Ordering::Relaxed);
                    info!(count = names.len(), "queued invalidations applied to redis");
                }
                Err(e) => {
                    debug!(error = %e, "retry of queued invalidations failed");
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}
