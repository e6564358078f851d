//! The in-process tier: a moka cache bounded in bytes, with per-entry lifetimes.
//!
//! It stores and evicts; freshness is decided by the caller against our own clock
//! (moka's clock cannot be paused), moka only drops entries once they are past any use.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::notification::RemovalCause;
use moka::sync::Cache;

use crate::consistency::clock::{Check, Fence};
use crate::entry::Entry;

/// An entry in the local tier.
#[derive(Debug, Clone)]
pub struct L1Entry {
    /// The answer (shared with responses and the other tier).
    pub entry: Arc<Entry>,
    /// Fresh until this instant, ms since the epoch.
    pub fresh_until_ms: u64,
    /// How long moka keeps it after insertion: freshness plus the stale-if-error window.
    pub keep_for: Duration,
    /// Its names and the tick its fill began at.
    pub fence: Fence,
    /// The headers of a GET hit from this tier, built once at store time (entry headers
    /// plus `Cache-Status`, `X-Cache` and `Via`); a hit only adds `Age`.
    pub hit_headers: http::HeaderMap,
}

impl L1Entry {
    /// Whether it may be served as a hit at `now_ms`: fresh and not invalidated.
    pub fn is_fresh(&self, now_ms: u64) -> bool {
        now_ms < self.fresh_until_ms && self.fence.is_valid()
    }

    /// What its fence says at `now_ms` (`None` past freshness): kept entries (promise 2b
    /// in [`crate::consistency`]) are served, and put back with [`L1Entry::rebased`] so
    /// they are counted once.
    #[inline]
    pub fn check(&self, now_ms: u64) -> Option<Check> {
        (now_ms < self.fresh_until_ms).then(|| self.fence.check())
    }

    /// The same entry, its fence having seen the bumps it outlived.
    pub fn rebased(&self) -> L1Entry {
        L1Entry {
            fence: self.fence.rebased(),
            ..self.clone()
        }
    }
}

/// Evictions by cause, for metrics.
#[derive(Debug, Default)]
pub struct Evictions {
    /// Past `keep_for`.
    pub expired: AtomicU64,
    /// Pushed out by the byte bound.
    pub size: AtomicU64,
    /// Removed on purpose (invalidation, purge).
    pub explicit: AtomicU64,
    /// Overwritten by a newer fill.
    pub replaced: AtomicU64,
}

struct KeepFor;

impl Expiry<Arc<str>, Arc<L1Entry>> for KeepFor {
    fn expire_after_create(&self, _: &Arc<str>, v: &Arc<L1Entry>, _: Instant) -> Option<Duration> {
        Some(v.keep_for)
    }

    fn expire_after_update(
        &self,
        _: &Arc<str>,
        v: &Arc<L1Entry>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.keep_for)
    }
}

/// The local tier. Cheap to clone.
#[derive(Clone)]
pub struct L1 {
    // Values are `Arc`ed: a hit clones one pointer, not the fence and the header map.
    // foldhash, seeded per process, instead of std's SipHash: the key is hashed on every
    // hit (~340 of ~18,800 instructions with SipHash), and a per-process random seed keeps
    // keys built from clients' query strings from being aimed at one bucket.
    cache: Cache<Arc<str>, Arc<L1Entry>, foldhash::fast::RandomState>,
    evictions: Arc<Evictions>,
}

impl L1 {
    /// A tier holding at most about `max_bytes` of bodies and headers.
    pub fn new(max_bytes: u64) -> Self {
        let evictions = Arc::new(Evictions::default());
        let counters = evictions.clone();
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &Arc<str>, v: &Arc<L1Entry>| {
                (k.len() + v.entry.weight()).min(u32::MAX as usize) as u32
            })
            .expire_after(KeepFor)
            .eviction_listener(move |_, _, cause| count_eviction(&counters, cause))
            .build_with_hasher(foldhash::fast::RandomState::default());
        Self { cache, evictions }
    }

    /// Looks a key up, fresh or not; the caller decides what a stale entry is good for.
    /// Synchronous (no await on the hit path); moka's maintenance runs in bounded steps.
    pub fn get(&self, key: &str) -> Option<Arc<L1Entry>> {
        self.cache.get(key)
    }

    /// Stores an entry, replacing any older one.
    pub fn insert(&self, key: Arc<str>, value: L1Entry) {
        self.cache.insert(key, Arc::new(value));
    }

    /// Puts `new` in place of `old` unless the key holds something else by now (a newer
    /// fill wins over a re-validated entry).
    pub fn replace(&self, key: &str, old: &Arc<L1Entry>, new: Arc<L1Entry>) {
        self.cache
            .entry(Arc::from(key))
            .and_compute_with(|current| match current {
                Some(c) if Arc::ptr_eq(c.value(), old) => moka::ops::compute::Op::Put(new),
                _ => moka::ops::compute::Op::Nop,
            });
    }

    /// Drops one key.
    pub fn remove(&self, key: &str) {
        self.cache.invalidate(key);
    }

    /// Drops everything (e.g. when invalidation messages may have been missed).
    pub fn clear(&self) {
        self.cache.invalidate_all();
    }

    /// Approximate bytes held (after pending maintenance).
    pub fn weighted_size(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }

    /// Number of entries (after pending maintenance).
    pub fn entry_count(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    /// Eviction counters.
    pub fn evictions(&self) -> &Evictions {
        &self.evictions
    }
}

fn count_eviction(c: &Evictions, cause: RemovalCause) {
    let counter = match cause {
        RemovalCause::Expired => &c.expired,
        RemovalCause::Size => &c.size,
        RemovalCause::Explicit => &c.explicit,
        RemovalCause::Replaced => &c.replaced,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};

    fn entry(body_len: usize) -> L1Entry {
        L1Entry {
            entry: Arc::new(Entry {
                status: StatusCode::OK,
                headers: HeaderMap::new(),
                body: Bytes::from(vec![b'x'; body_len]),
                stored_at_ms: 0,
                ttl_ms: 1_000,
                epochs: Vec::new(),
            }),
            fresh_until_ms: 1_000,
            keep_for: Duration::from_secs(60),
            fence: Fence::default(),
            hit_headers: HeaderMap::new(),
        }
    }

    #[tokio::test]
    async fn replace_leaves_an_entry_put_in_meanwhile() {
        let l1 = L1::new(1 << 20);
        l1.insert("a".into(), entry(1));
        let judged = l1.get("a").unwrap();
        let kept = Arc::new(entry(2));
        l1.replace("a", &judged, kept.clone());
        assert!(Arc::ptr_eq(&l1.get("a").unwrap(), &kept), "replaced");
        // A newer fill landed after the entry was judged: it stays.
        let newer = entry(3);
        l1.insert("a".into(), newer);
        l1.replace("a", &kept, Arc::new(entry(4)));
        assert_eq!(l1.get("a").unwrap().entry.body.len(), 3);
        // A key dropped meanwhile is not brought back.
        l1.remove("a");
        l1.replace("a", &kept, Arc::new(entry(5)));
        assert!(l1.get("a").is_none());
    }

    #[tokio::test]
    async fn stores_and_returns_shared_bodies() {
        let l1 = L1::new(1 << 20);
        let e = entry(100);
        l1.insert("a".into(), e.clone());
        let got = l1.get("a").unwrap();
        assert!(Arc::ptr_eq(&got.entry, &e.entry), "no copy of the entry");
        assert!(got.is_fresh(999));
        assert!(!got.is_fresh(1_000));
    }

    #[tokio::test]
    async fn byte_bound_evicts_and_counts() {
        let l1 = L1::new(10_000);
        for i in 0..50 {
            l1.insert(format!("k{i}").into(), entry(1_000));
        }
        assert!(l1.weighted_size() <= 10_000);
        assert!(l1.evictions().size.load(Ordering::Relaxed) > 0);
    }

    #[tokio::test]
    async fn clear_and_remove_drop_entries() {
        let l1 = L1::new(1 << 20);
        l1.insert("a".into(), entry(1));
        l1.insert("b".into(), entry(1));
        l1.remove("a");
        assert!(l1.get("a").is_none());
        l1.clear();
        assert!(l1.get("b").is_none());
    }
}
