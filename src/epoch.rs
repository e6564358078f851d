//! Local epochs: one counter per family, per group (`status:*`) and one global (`*`).
//!
//! An entry remembers the epochs of its families when its fetch started (its [`Fence`]);
//! bumping any of them makes it invalid in O(1), with no scan of keys. This module holds the
//! counters; who bumps them and when is [`crate::invalidate`]'s business.

use std::collections::HashMap;
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

/// The epoch names of a set of families, without duplicates, in a stable order.
pub fn names_for_all(families: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for f in families {
        for n in names_for(f) {
            if !out.contains(&n) {
                out.push(n);
            }
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
    // go through the `Arc<AtomicU64>` cells a fence holds, not through this map.
    cells: Arc<Mutex<Cells>>,
}

#[derive(Default)]
struct Cells {
    map: HashMap<String, Arc<AtomicU64>>,
    /// Prune when the map grows past this many counters.
    prune_at: usize,
}

/// The map is never pruned below this many counters (a prune is a scan of the map).
const PRUNE_FLOOR: usize = 4096;

/// The epochs an entry was filled under. Valid while none of them moved.
#[derive(Debug, Clone, Default)]
pub struct Fence {
    cells: Vec<(Arc<AtomicU64>, u64)>,
}

impl Fence {
    /// Whether no epoch moved since the fence was taken (a few atomic loads).
    pub fn is_valid(&self) -> bool {
        self.cells
            .iter()
            .all(|(cell, seen)| cell.load(Ordering::Acquire) == *seen)
    }

    /// The fence an entry fetched under `self` gets once the write that bumped `bumped`
    /// (once each) has been applied, if no other bump moved any of its epochs meanwhile:
    /// each epoch must now be exactly its old value, plus one where `names[i]` (the names
    /// `self` was taken over, in that order) is in `bumped`. `None` when anything else
    /// moved, or when the names do not match the fence.
    pub fn advanced_by(&self, names: &[String], bumped: &[String]) -> Option<Fence> {
        if names.len() != self.cells.len() {
            return None;
        }
        let mut cells = Vec::with_capacity(self.cells.len());
        for ((cell, seen), name) in self.cells.iter().zip(names) {
            let expected = seen + u64::from(bumped.contains(name));
            if cell.load(Ordering::Acquire) != expected {
                return None;
            }
            cells.push((cell.clone(), expected));
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
    fn cell(&self, name: &str) -> Arc<AtomicU64> {
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
                let v = c.load(Ordering::Acquire);
                (c, v)
            })
            .collect();
        Fence { cells }
    }

    /// Moves the given epochs: every fence over any of them becomes invalid.
    pub fn bump(&self, names: &[String]) {
        for n in names {
            self.cell(n).fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Current value of one epoch.
    pub fn get(&self, name: &str) -> u64 {
        self.cell(name).load(Ordering::Acquire)
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
    fn a_fence_advances_by_one_write_only_when_nothing_else_moved() {
        let e = Epochs::default();
        let names = names_for("status:A");
        let bumped = vec!["status:A".to_owned(), "status:B".to_owned()];
        // Only the write's own bump: the advanced fence is valid, and a later bump ends it.
        let f = e.fence(&names);
        e.bump(&bumped);
        let g = f.advanced_by(&names, &bumped).expect("only our bump");
        assert!(!f.is_valid() && g.is_valid());
        e.bump(&["status:A".to_owned()]);
        assert!(!g.is_valid());
        // Another bump of a family, its group or everything in between: refused.
        for other in ["status:A", "status:*", "*"] {
            let f = e.fence(&names);
            e.bump(&[other.to_owned()]);
            e.bump(&bumped);
            assert!(f.advanced_by(&names, &bumped).is_none(), "{other}");
        }
        // The write not applied yet: refused too (the epoch is one short).
        let f = e.fence(&names);
        assert!(f.advanced_by(&names, &bumped).is_none());
        // A bump of an unrelated family does not matter.
        e.bump(&["status:C".to_owned()]);
        e.bump(&bumped);
        assert!(f.advanced_by(&names, &bumped).is_some());
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
