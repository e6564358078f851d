//! Local epochs: one counter per family, per group (`status:*`) and one global (`*`).
//!
//! An entry remembers the epochs of its families when its fetch started (its [`Fence`]);
//! bumping any of them makes it invalid in O(1), with no scan of keys. This module holds the
//! counters; who bumps them and when is [`crate::invalidate`]'s business.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::family::group_of;

/// The epoch name that every entry carries: bumping it invalidates everything.
pub const GLOBAL: &str = "*";

/// The epoch names an entry of `family` depends on: the family, its group, the global one.
pub fn names_for(family: &str) -> Vec<String> {
    let group = group_of(family);
    let mut names = vec![family.to_owned()];
    if group != family {
        names.push(format!("{group}:*"));
    }
    names.push(GLOBAL.to_owned());
    names
}

/// Adds `name` to `names` unless it is there (epoch name lists are short).
pub fn push_unique(names: &mut Vec<String>, name: String) {
    if !names.contains(&name) {
        names.push(name);
    }
}

/// The epoch names of a set of families, without duplicates, in a stable order.
pub fn names_for_all(families: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for f in families {
        for n in names_for(f) {
            push_unique(&mut out, n);
        }
    }
    if out.is_empty() {
        out.push(GLOBAL.to_owned());
    }
    out
}

/// The local epoch counters. Cheap to clone.
///
/// There is one counter per family ever fenced or bumped (one per order whose detail was
/// cached, among others), so the map is pruned: a counter that no fence holds any more (no
/// L1 entry, no fill in flight) is dropped when the map has doubled since the last prune.
/// That is safe because only fences compare values, and a fence holds its counter: a
/// family fenced again later starts a fresh counter that every new fence and bump share.
#[derive(Clone, Default)]
pub struct Epochs {
    // A std Mutex: get-or-create only, never held across `.await`. Reads on the hit path
    // go through the `Arc<Cell>` cells a fence holds, not through this map.
    cells: Arc<Mutex<Cells>>,
}

#[derive(Default)]
struct Cells {
    map: HashMap<String, Arc<Cell>>,
    /// Prune when the map grows past this many counters.
    prune_at: usize,
}

/// The write acknowledgement number recorded for bumps that are not a write of this
/// instance acknowledged by the MES at a known point (bus messages, purges, reloads).
pub const UNKNOWN_ACK: u64 = u64::MAX;

/// The acknowledgement number of an entry fetched at no known point of this instance's
/// writes (found in the shared tier, or stored unfenced): it settles no bump. Writes are
/// numbered from 1.
pub const NO_ACK: u64 = 0;

/// Bumps remembered per epoch (with the acknowledgement number of the write that made
/// each), for [`Fence::settled_before`].
const BUMP_LOG: usize = 32;

/// One epoch: its value (what the hit path reads) and its latest bumps.
#[derive(Debug, Default)]
struct Cell {
    value: AtomicU64,
    /// `(value after the bump, acknowledgement number of the write)`, oldest first.
    log: Mutex<VecDeque<(u64, u64)>>,
}

impl Cell {
    fn bump(&self, ack: u64) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let v = self.value.fetch_add(1, Ordering::AcqRel) + 1;
        if log.len() == BUMP_LOG {
            log.pop_front();
        }
        log.push_back((v, ack));
    }

    fn load(&self) -> u64 {
        self.value.load(Ordering::Acquire)
    }
}

/// The map is never pruned below this many counters (a prune is a scan of the map).
const PRUNE_FLOOR: usize = 4096;

/// The epochs an entry was filled under. Valid while none of them moved.
#[derive(Debug, Clone, Default)]
pub struct Fence {
    cells: Vec<(Arc<Cell>, u64)>,
}

impl Fence {
    /// Whether no epoch moved since the fence was taken (a few atomic loads).
    pub fn is_valid(&self) -> bool {
        self.cells.iter().all(|(cell, seen)| cell.load() == *seen)
    }

    /// The fence for an entry fetched after this fence was taken and after the
    /// acknowledgement numbered `acked` (see [`Epochs::bump_acked`]): every bump since
    /// `self` must come from a write the MES had acknowledged by then, so the fetch saw
    /// it; the new fence is over the current values. `None` when a bump came from a
    /// later write, from an unknown one (bus, purge) or is no longer in the log.
    pub fn settled_before(&self, acked: u64) -> Option<Fence> {
        if acked == NO_ACK {
            return None;
        }
        let mut cells = Vec::with_capacity(self.cells.len());
        for (cell, seen) in &self.cells {
            let log = cell.log.lock().unwrap_or_else(|e| e.into_inner());
            let now = cell.load();
            for v in seen + 1..=now {
                let ack = log.iter().find(|(bumped, _)| *bumped == v).map(|(_, a)| *a);
                if ack.is_none_or(|a| a > acked) {
                    return None;
                }
            }
            cells.push((cell.clone(), now));
        }
        Some(Fence { cells })
    }

    /// The values, for the single-flight key (fills under different epochs never merge).
    pub fn tag(&self) -> String {
        let v: Vec<String> = self.cells.iter().map(|(_, s)| s.to_string()).collect();
        v.join(".")
    }
}

impl Epochs {
    fn cell(&self, name: &str) -> Arc<Cell> {
        let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cell) = cells.map.get(name) {
            return cell.clone();
        }
        if cells.map.len() >= cells.prune_at.max(PRUNE_FLOOR) {
            // Held only by the map: no fence can compare against it any more. Amortized
            // O(1) per new counter: the next prune waits for the map to double again.
            cells.map.retain(|_, cell| Arc::strong_count(cell) > 1);
            cells.prune_at = cells.map.len() * 2;
        }
        cells.map.entry(name.to_owned()).or_default().clone()
    }

    /// How many counters the map holds (the `mesgate_epoch_counters` gauge).
    pub fn len(&self) -> usize {
        let cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        cells.map.len()
    }

    /// Whether the map holds no counter.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes a fence over the given epoch names.
    pub fn fence(&self, names: &[String]) -> Fence {
        let cells = names
            .iter()
            .map(|n| {
                let c = self.cell(n);
                let v = c.load();
                (c, v)
            })
            .collect();
        Fence { cells }
    }

    /// Moves the given epochs: every fence over any of them becomes invalid.
    pub fn bump(&self, names: &[String]) {
        self.bump_acked(names, UNKNOWN_ACK);
    }

    /// [`Epochs::bump`] for a write of this instance that the MES acknowledged as number
    /// `ack` (a counter the write path keeps): fetches started after that
    /// acknowledgement saw the write, which [`Fence::settled_before`] relies on.
    pub fn bump_acked(&self, names: &[String], ack: u64) {
        for n in names {
            self.cell(n).bump(ack);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_family_group_and_global() {
        assert_eq!(names_for("status:A"), ["status:A", "status:*", "*"]);
        assert_eq!(names_for("counts"), ["counts", "*"]);
        let all = names_for_all(&["status:A".into(), "status:B".into()]);
        assert_eq!(all, ["status:A", "status:*", "*", "status:B"]);
    }

    #[test]
    fn bumping_a_family_a_group_or_global_breaks_the_fence() {
        let e = Epochs::default();
        let names = names_for("status:A");
        for bumped in ["status:A", "status:*", "*"] {
            let f = e.fence(&names);
            assert!(f.is_valid());
            e.bump(&[bumped.to_owned()]);
            assert!(!f.is_valid(), "{bumped}");
        }
        let f = e.fence(&names);
        e.bump(&["status:B".to_owned()]);
        assert!(f.is_valid(), "another family leaves it alone");
    }

    #[test]
    fn a_fence_settles_only_over_writes_acknowledged_before_the_fetch() {
        let e = Epochs::default();
        let names = names_for("status:A");
        let a = vec!["status:A".to_owned()];
        // Writes 1 and 2 acknowledged, then the fetch (acked = 2), then both applied.
        let f = e.fence(&names);
        e.bump_acked(&a, 1);
        e.bump_acked(&a, 2);
        let g = f
            .settled_before(2)
            .expect("both writes were in the MES before the fetch");
        assert!(!f.is_valid() && g.is_valid());
        e.bump_acked(&a, 3);
        assert!(!g.is_valid(), "a later bump still ends it");
        // A write acknowledged after the fetch started: refused.
        let f = e.fence(&names);
        e.bump_acked(&a, 4);
        e.bump_acked(&a, 5);
        assert!(f.settled_before(4).is_none());
        // A bump of unknown origin (bus, purge) on the family, its group or everything.
        for other in ["status:A", "status:*", "*"] {
            let f = e.fence(&names);
            e.bump(&[other.to_owned()]);
            assert!(f.settled_before(u64::MAX - 1).is_none(), "{other}");
        }
        // Nothing moved: the same values.
        let f = e.fence(&names);
        assert!(f.settled_before(1).is_some_and(|g| g.is_valid()));
        // Fetched at no known point: settles nothing, not even a write numbered 1.
        let f = e.fence(&names);
        e.bump_acked(&a, 1);
        assert!(f.settled_before(NO_ACK).is_none());
        assert!(f.settled_before(1).is_some());
        // More bumps than the log keeps: refused.
        let f = e.fence(&names);
        for i in 0..BUMP_LOG as u64 + 1 {
            e.bump_acked(&a, i);
        }
        assert!(f.settled_before(u64::MAX - 1).is_none());
    }

    #[test]
    fn counters_no_fence_holds_are_pruned_and_held_ones_keep_working() {
        let e = Epochs::default();
        let held = e.fence(&names_for("order:held"));
        e.bump(&["order:held".to_owned()]);
        let held_after_bump = e.fence(&names_for("order:held"));
        for i in 0..3 * PRUNE_FLOOR {
            drop(e.fence(&names_for(&format!("order:{i}"))));
        }
        // Without pruning there would be 3 * PRUNE_FLOOR + 2 (order:held, *).
        assert!(e.len() <= PRUNE_FLOOR + 2, "{} counters", e.len());
        assert!(e.len() >= 2);
        // The held counter survived every prune, with its value: fences still judge right.
        assert!(!held.is_valid(), "fence from before the bump");
        assert!(held_after_bump.is_valid());
        e.bump(&["order:held".to_owned()]);
        assert!(
            !held_after_bump.is_valid(),
            "a bump after the prunes still reaches it"
        );
        // A pruned family starts afresh, shared by new fences and bumps.
        let f = e.fence(&names_for("order:0"));
        assert!(f.is_valid());
        e.bump(&["order:0".to_owned()]);
        assert!(!f.is_valid());
    }
}
