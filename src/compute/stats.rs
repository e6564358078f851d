//! The counters of the compute path, copied into the metrics at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};

/// What the compute path did, since start.
#[derive(Debug, Default)]
pub struct ComputeStats {
    started: AtomicU64,
    joined_local: AtomicU64,
    joined_remote: AtomicU64,
    hits: AtomicU64,
    takeovers: AtomicU64,
    bypassed: AtomicU64,
    saved_ms: AtomicU64,
}

impl ComputeStats {
    pub(super) fn count_started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count_joined_local(&self) {
        self.joined_local.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count_joined_remote(&self) {
        self.joined_remote.fetch_add(1, Ordering::Relaxed);
    }

    /// A request served from the local tier, which spared a computation of `ms`.
    pub(super) fn count_hit(&self, ms: u64) {
        self.hits.fetch_add(1, Ordering::Relaxed);
        self.add_saved(ms);
    }

    /// A flight that found the result in Redis.
    pub(super) fn count_stored_hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count_takeover(&self) {
        self.takeovers.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count_bypass(&self) {
        self.bypassed.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn add_saved(&self, ms: u64) {
        self.saved_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// The counters by metric label: `started` (computations this instance asked the
    /// MES for), `joined_local` (requests that waited on this instance's flight),
    /// `joined_remote` (flights that waited on another instance's computation), `hit`
    /// (served from the local tier, or flights that found the result in Redis),
    /// `takeover` (leases taken after another holder's ran out or was released without
    /// a result), `bypass` (forwarded untouched: no key, or credentials).
    pub fn counts(&self) -> [(&'static str, u64); 6] {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("started", g(&self.started)),
            ("joined_local", g(&self.joined_local)),
            ("joined_remote", g(&self.joined_remote)),
            ("hit", g(&self.hits)),
            ("takeover", g(&self.takeovers)),
            ("bypass", g(&self.bypassed)),
        ]
    }

    /// The sum of the computation times that requests answered without computing
    /// (hits and joins) were spared, ms.
    pub fn saved_ms(&self) -> u64 {
        self.saved_ms.load(Ordering::Relaxed)
    }
}
