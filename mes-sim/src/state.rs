//! State shared by every connection of one simulator: the order book behind a lock, the
//! runtime-tunable settings, and the per-route-kind request counters.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use super::store::Store;
use super::{SimConfig, SimStats};

/// What a request is counted as in [`SimStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    List,
    Detail,
    Counts,
    StatusChange,
    Create,
    Price,
    Other,
}

/// Lock-free counters, one per [`Kind`], so counting never contends with the order book.
#[derive(Debug, Default)]
struct Counters([AtomicU64; 7]);

impl Counters {
    fn bump(&self, kind: Kind) {
        self.0[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self, kind: Kind) -> u64 {
        self.0[kind as usize].load(Ordering::Relaxed)
    }

    fn snapshot(&self) -> SimStats {
        SimStats {
            list: self.get(Kind::List),
            detail: self.get(Kind::Detail),
            counts: self.get(Kind::Counts),
            status_change: self.get(Kind::StatusChange),
            create: self.get(Kind::Create),
            price: self.get(Kind::Price),
            other: self.get(Kind::Other),
        }
    }

    fn reset(&self) {
        for c in &self.0 {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// Everything a request handler needs; one per simulator, behind an `Arc`.
#[derive(Debug)]
pub(super) struct Shared {
    store: RwLock<Store>,
    counters: Counters,
    mvcc: AtomicBool,
    list_base_ns: AtomicU64,
    list_per_row_ns: AtomicU64,
    /// Latency of `GET /api/orders/{id}`.
    pub(super) detail_latency: Duration,
    /// Latency of `GET /api/orders/status-counts`.
    pub(super) counts_latency: Duration,
    /// Latency of PATCH and POST on orders, before the write applies.
    pub(super) write_latency: Duration,
    /// Latency of `POST /api/price-calculations`, ns (tunable at runtime).
    price_latency_ns: AtomicU64,
    /// Price calculations begun, by their inputs (`model_hash|material|quantity`): what a
    /// cache in front must keep to one per key. A std Mutex: never held across `.await`.
    price_runs: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    /// Generates the order book and takes the settings from `config`.
    pub(super) fn new(config: &SimConfig) -> Self {
        Self {
            store: RwLock::new(Store::new(config.orders, config.seed)),
            counters: Counters::default(),
            mvcc: AtomicBool::new(config.mvcc),
            list_base_ns: AtomicU64::new(nanos(config.list_base)),
            list_per_row_ns: AtomicU64::new(nanos(config.list_per_row)),
            detail_latency: config.detail_latency,
            counts_latency: config.counts_latency,
            write_latency: config.write_latency,
            price_latency_ns: AtomicU64::new(nanos(config.price_latency)),
            price_runs: Mutex::default(),
        }
    }

    /// Read access; a poisoned lock is still used (every mutation leaves the store consistent
    /// before anything that could panic).
    pub(super) fn read(&self) -> RwLockReadGuard<'_, Store> {
        self.store.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Write access, same poisoning policy as [`Shared::read`].
    pub(super) fn write(&self) -> RwLockWriteGuard<'_, Store> {
        self.store.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one request.
    pub(super) fn count(&self, kind: Kind) {
        self.counters.bump(kind);
    }

    /// Current counters.
    pub(super) fn stats(&self) -> SimStats {
        self.counters.snapshot()
    }

    /// Zeroes the counters.
    pub(super) fn reset_stats(&self) {
        self.counters.reset();
        self.price_runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Latency of a price calculation.
    pub(super) fn price_latency(&self) -> Duration {
        Duration::from_nanos(self.price_latency_ns.load(Ordering::Relaxed))
    }

    /// Changes the latency of a price calculation.
    pub(super) fn set_price_latency(&self, d: Duration) {
        self.price_latency_ns.store(nanos(d), Ordering::Relaxed);
    }

    /// Counts one price calculation begun for `key`.
    pub(super) fn count_price_run(&self, key: String) {
        let mut runs = self
            .price_runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *runs.entry(key).or_default() += 1;
    }

    /// Price calculations begun, by key.
    pub(super) fn price_runs(&self) -> BTreeMap<String, u64> {
        self.price_runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether reads answer from the snapshot taken on arrival.
    pub(super) fn mvcc(&self) -> bool {
        self.mvcc.load(Ordering::Relaxed)
    }

    /// Switches the read model.
    pub(super) fn set_mvcc(&self, on: bool) {
        self.mvcc.store(on, Ordering::Relaxed);
    }

    /// Changes the list latency model.
    pub(super) fn set_list_latency(&self, base: Duration, per_row: Duration) {
        self.list_base_ns.store(nanos(base), Ordering::Relaxed);
        self.list_per_row_ns
            .store(nanos(per_row), Ordering::Relaxed);
    }

    /// `list_base + list_per_row * rows`: the MES slows down as history grows.
    pub(super) fn list_latency(&self, rows: usize) -> Duration {
        let base = self.list_base_ns.load(Ordering::Relaxed);
        let per_row = self.list_per_row_ns.load(Ordering::Relaxed);
        let total = per_row.saturating_mul(rows as u64).saturating_add(base);
        Duration::from_nanos(total)
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_latency_grows_with_rows_and_saturates() {
        let shared = Shared::new(&SimConfig {
            orders: 0,
            ..SimConfig::instant()
        });
        assert_eq!(shared.list_latency(1000), Duration::ZERO);
        shared.set_list_latency(Duration::from_millis(20), Duration::from_micros(20));
        assert_eq!(shared.list_latency(0), Duration::from_millis(20));
        assert_eq!(shared.list_latency(5000), Duration::from_millis(120));
        shared.set_list_latency(Duration::MAX, Duration::MAX);
        assert_eq!(shared.list_latency(2), Duration::from_nanos(u64::MAX));
    }

    #[test]
    fn counters_snapshot_and_reset() {
        let shared = Shared::new(&SimConfig {
            orders: 0,
            ..SimConfig::instant()
        });
        shared.count(Kind::List);
        shared.count(Kind::List);
        shared.count(Kind::Other);
        let s = shared.stats();
        assert_eq!((s.list, s.other, s.detail), (2, 1, 0));
        shared.reset_stats();
        assert_eq!(shared.stats(), SimStats::default());
    }
}
