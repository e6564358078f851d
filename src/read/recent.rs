//! Refresh on write: the cached entries a write is about to make wrong, by epoch name.
//!
//! A write whose rule has `refresh` set does not just drop what it makes wrong: before it
//! is answered, it fetches those of this instance's entries again (the MES has the write
//! by then), applies the invalidation, and puts the fetched entries in place, so readers
//! go from the old answer to the new one without waiting for the MES. Until the write is
//! answered, the old entries are still served: the write is not acknowledged yet, so a read
//! may see either state. An entry fetched that way is stored only if every bump of its
//! epochs since its fetch started came from a write of this instance that the MES had
//! acknowledged before the fetch started (so the fetch saw it): the write itself, and
//! overlapping writes acknowledged earlier (promise 2b in [`crate::consistency`]). A bus
//! message, a purge or a later write makes it unusable: it is dropped, and the next read
//! asks the MES.
//!
//! This module only remembers which keys were filled under which epoch names, so a write
//! can find them; the fetching and storing are the read path's (see `proxy.rs`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use http::HeaderMap;

use crate::config::CachePolicy;
use crate::consistency::Name;
use crate::key::CacheKey;

/// At most this many keys are remembered per epoch name (the most recently filled):
/// a family's first pages, not every page anyone ever opened.
const PER_NAME: usize = 16;

/// The index is pruned of keys L1 no longer holds when it has doubled since the last
/// prune, and never below this many names.
const PRUNE_FLOOR: usize = 4096;

/// One cached key, as its fill asked for it.
#[derive(Debug)]
pub struct Target {
    /// The key (and the path and query sent to the MES).
    pub key: CacheKey,
    /// The route's cache policy when it was filled.
    pub policy: Arc<CachePolicy>,
    /// Its names, in fence order.
    pub names: Vec<Name>,
    /// The headers the fill sent to the MES.
    pub headers: HeaderMap,
    /// The route label, for the upstream metrics.
    pub route: Arc<String>,
    /// When its fill got a storable answer (gateway clock, ms): a key that is read but
    /// whose fills keep losing to writes (every fill of a slow query overlapped by a
    /// write) is never in L1, yet is exactly what a refresh can keep there.
    pub filled_ms: u64,
}

/// Keys by the epoch names they were filled under.
#[derive(Default)]
pub struct RecentFills {
    inner: Mutex<Index>,
}

#[derive(Default)]
struct Index {
    by_name: HashMap<Name, VecDeque<Arc<Target>>>,
    prune_at: usize,
}

impl RecentFills {
    /// Remembers a key whose fill just got a storable answer. `live` says whether a key
    /// is still worth refreshing (used when the index is pruned).
    pub fn register(&self, target: Target, live: impl Fn(&Target) -> bool) {
        let target = Arc::new(target);
        let mut index = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if index.by_name.len() >= index.prune_at.max(PRUNE_FLOOR) {
            for keys in index.by_name.values_mut() {
                keys.retain(|t| live(t));
            }
            index.by_name.retain(|_, keys| !keys.is_empty());
            index.prune_at = index.by_name.len() * 2;
        }
        for name in target.names.iter().filter(|n| **n != Name::Global) {
            let keys = index.by_name.entry(name.clone()).or_default();
            keys.retain(|t| t.key.key != target.key.key);
            keys.push_back(target.clone());
            if keys.len() > PER_NAME {
                keys.pop_front();
            }
        }
    }

    /// The keys filled under any of `names`, each once, that `live` keeps.
    pub fn targets(&self, names: &[Name], live: impl Fn(&Target) -> bool) -> Vec<Arc<Target>> {
        let index = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<Arc<Target>> = Vec::new();
        for keys in names.iter().filter_map(|n| index.by_name.get(n)) {
            for t in keys {
                if !out.iter().any(|o| o.key.key == t.key.key) && live(t) {
                    out.push(t.clone());
                }
            }
        }
        out
    }

    /// Forgets every key (a reload: the keys' policies may have changed).
    pub fn clear(&self) {
        let mut index = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        index.by_name.clear();
        index.prune_at = 0;
    }

    /// How many epoch names have keys remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_name
            .len()
    }

    /// Whether no key is remembered.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(key: &str, family: &str) -> Target {
        let config: crate::config::Config =
            "upstream = \"http://127.0.0.1:9\"\n[[route]]\nname = \"l\"\npath = \"/o\"\n[route.cache]\n"
                .parse()
                .unwrap();
        Target {
            key: CacheKey::from_parts(key.to_owned(), 0..key.len()),
            policy: config.routes.routes()[0].cache.clone().unwrap(),
            names: Name::all_for(&[family.to_owned()]),
            headers: HeaderMap::new(),
            route: Arc::new("r".to_owned()),
            filled_ms: 0,
        }
    }

    fn keys(ts: &[Arc<Target>]) -> Vec<&str> {
        ts.iter().map(|t| t.key.key.as_str()).collect()
    }

    #[test]
    fn targets_are_found_by_family_or_group_once_each_while_cached() {
        let idx = RecentFills::default();
        idx.register(target("/a?p=1", "status:A"), |_: &Target| true);
        idx.register(target("/a?p=2", "status:A"), |_: &Target| true);
        idx.register(target("/b?p=1", "status:B"), |_: &Target| true);
        idx.register(target("/a?p=1", "status:A"), |_: &Target| true);
        let all = |_: &Target| true;
        assert_eq!(
            keys(&idx.targets(&[Name::family("status:A")], all)),
            ["/a?p=2", "/a?p=1"]
        );
        let both = idx.targets(
            &[
                Name::family("status:A"),
                Name::family("status:B"),
                Name::group("status"),
            ],
            all,
        );
        assert_eq!(keys(&both), ["/a?p=2", "/a?p=1", "/b?p=1"]);
        assert!(
            idx.targets(&[Name::Global], all).is_empty(),
            "not by the global epoch"
        );
        let gone = idx.targets(&[Name::family("status:A")], |t: &Target| {
            t.key.key != "/a?p=2"
        });
        assert_eq!(
            keys(&gone),
            ["/a?p=1"],
            "what L1 dropped is not fetched again"
        );
    }

    #[test]
    fn the_index_keeps_the_newest_keys_per_name_and_prunes_what_l1_dropped() {
        let idx = RecentFills::default();
        for i in 0..PER_NAME + 5 {
            idx.register(target(&format!("/a?p={i}"), "status:A"), |_: &Target| true);
        }
        let found = idx.targets(&[Name::family("status:A")], |_: &Target| true);
        assert_eq!(found.len(), PER_NAME);
        assert_eq!(found[0].key.key, "/a?p=5");
        for i in 0..2 * PRUNE_FLOOR {
            idx.register(
                target(&format!("/o/{i}"), &format!("order:{i}")),
                |t: &Target| !t.key.key.starts_with("/o/"),
            );
        }
        assert!(idx.len() <= PRUNE_FLOOR + 3, "{} names", idx.len());
        idx.clear();
        assert!(idx.is_empty());
    }
}
