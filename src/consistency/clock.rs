//! The write clock: one per-instance tick, the tick of every name's last bump, and the
//! fences entries carry.
//!
//! It only counts and compares; when a tick is taken and what is bumped with it is
//! decided in [`super`] (see promises 1, 2 and 5 there).
//!
//! A *tick* is taken when the MES acknowledges a write this instance forwarded, and when a
//! foreign invalidation (bus message, purge, reload, resubscription) arrives. Every
//! invalidation name keeps the highest tick it was bumped with. A fill records the tick
//! current when it began: every write with a tick up to it was in the MES before the
//! fill's request left, so its answer shows them. An entry is valid while every name it
//! depends on was last bumped at or before its fill began: one atomic load per name, as
//! many as names, on the hit path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::names::Name;

/// The tick counter. Ticks start at 1; 0 means "before anything".
#[derive(Debug)]
pub struct WriteClock {
    now: AtomicU64,
}

impl Default for WriteClock {
    fn default() -> Self {
        Self {
            now: AtomicU64::new(1),
        }
    }
}

impl WriteClock {
    /// The latest tick taken: a fetch that starts now sees every write up to it.
    pub fn now(&self) -> u64 {
        self.now.load(Ordering::Acquire)
    }

    /// Takes the next tick.
    pub fn tick(&self) -> u64 {
        self.now.fetch_add(1, Ordering::AcqRel) + 1
    }
}

/// The last-bump tick of each name. Cheap to clone.
///
/// There is one cell per name ever fenced or bumped (one per order whose detail was
/// cached, among others), so the map is pruned: a cell no fence holds any more (no L1
/// entry, no fill in flight) is dropped when the map has doubled since the last prune.
/// That is safe because only fences compare against a cell, and a fence holds its cell:
/// a name fenced again later starts a fresh cell that every new fence and bump share.
#[derive(Clone, Default)]
pub struct Names {
    // A std Mutex: get-or-create only, never held across `.await`. The hit path reads the
    // `Arc<AtomicU64>` cells a fence holds, not this map.
    cells: Arc<Mutex<Cells>>,
}

#[derive(Default)]
struct Cells {
    map: HashMap<Name, Arc<AtomicU64>>,
    /// Prune when the map grows past this many cells.
    prune_at: usize,
}

/// The map is never pruned below this many cells (a prune is a scan of the map).
const PRUNE_FLOOR: usize = 4096;

impl Names {
    fn cell(&self, name: &Name) -> Arc<AtomicU64> {
        let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cell) = cells.map.get(name) {
            return cell.clone();
        }
        if cells.map.len() >= cells.prune_at.max(PRUNE_FLOOR) {
            // Held only by the map: no fence can compare against it any more. Amortized
            // O(1) per new cell: the next prune waits for the map to double again.
            cells.map.retain(|_, cell| Arc::strong_count(cell) > 1);
            cells.prune_at = cells.map.len() * 2;
        }
        cells.map.entry(name.clone()).or_default().clone()
    }

    /// How many cells the map holds (the `mesgate_epoch_counters` gauge).
    pub fn len(&self) -> usize {
        let cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        cells.map.len()
    }

    /// Whether the map holds no cell.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A fence over `names` for a fill that began at tick `began`.
    pub fn fence(&self, names: &[Name], began: u64) -> Fence {
        let cells: Vec<Arc<AtomicU64>> = names.iter().map(|n| self.cell(n)).collect();
        let seen = cells.iter().map(|c| c.load(Ordering::Acquire)).max();
        Fence {
            cells,
            began,
            seen: seen.unwrap_or(0),
        }
    }

    /// Bumps `names` with `tick`: every fence over any of them whose fill began before
    /// `tick` becomes invalid. A name never goes back to an older tick.
    pub fn bump(&self, names: &[Name], tick: u64) {
        for n in names {
            self.cell(n).fetch_max(tick, Ordering::AcqRel);
        }
    }
}

/// What a fence says now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// No name was bumped since the fence was taken.
    Valid,
    /// Names were bumped, but only with ticks up to the fill's start: the answer already
    /// shows those writes (typically a write whose bump waited for its refresh). Valid;
    /// [`Fence::rebased`] records that it was seen.
    Kept,
    /// A name was bumped with a later tick: the entry may be wrong.
    Ended,
}

/// The names an entry depends on, the tick its fill began at, and the highest bump tick
/// among them when the fence was taken.
#[derive(Debug, Clone, Default)]
pub struct Fence {
    cells: Vec<Arc<AtomicU64>>,
    began: u64,
    seen: u64,
}

impl Fence {
    /// Whether no name was bumped after the fill began (a few atomic loads).
    #[inline]
    pub fn is_valid(&self) -> bool {
        self.cells
            .iter()
            .all(|c| c.load(Ordering::Acquire) <= self.began)
    }

    /// [`Fence::is_valid`], also telling whether a bump that did not end it came since
    /// the fence was taken (the same loads).
    #[inline]
    pub fn check(&self) -> Check {
        let mut moved = false;
        for c in &self.cells {
            let last = c.load(Ordering::Acquire);
            if last > self.began {
                return Check::Ended;
            }
            moved |= last > self.seen;
        }
        if moved { Check::Kept } else { Check::Valid }
    }

    /// The same fence, with the bumps it outlived recorded as seen.
    pub fn rebased(&self) -> Fence {
        let seen = self.cells.iter().map(|c| c.load(Ordering::Acquire)).max();
        Fence {
            cells: self.cells.clone(),
            began: self.began,
            seen: seen.unwrap_or(0).max(self.seen),
        }
    }

    /// The tick its fill began at.
    pub fn began(&self) -> u64 {
        self.began
    }

    /// The highest bump tick among its names when it was taken: the single-flight key
    /// carries it, so a request that arrives after a bump never joins a fetch that began
    /// before it (a bump with a tick after the fetch began raises it).
    pub fn tag(&self) -> u64 {
        self.seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consistency::names::Name;

    fn fam(f: &str) -> Vec<Name> {
        Name::all_for(&[f.to_owned()])
    }

    #[test]
    fn bumping_a_family_a_group_or_global_after_the_fill_began_ends_it() {
        let clock = WriteClock::default();
        let n = Names::default();
        let names = fam("status:A");
        for bumped in [
            Name::family("status:A"),
            Name::group("status"),
            Name::Global,
        ] {
            let f = n.fence(&names, clock.now());
            assert!(f.is_valid());
            n.bump(std::slice::from_ref(&bumped), clock.tick());
            assert!(!f.is_valid(), "{bumped}");
            assert_eq!(f.check(), Check::Ended);
        }
        let f = n.fence(&names, clock.now());
        n.bump(&[Name::family("status:B")], clock.tick());
        assert_eq!(f.check(), Check::Valid, "another family leaves it alone");
    }

    #[test]
    fn a_bump_by_a_write_acknowledged_before_the_fill_began_keeps_it() {
        let clock = WriteClock::default();
        let n = Names::default();
        let a = [Name::family("status:A")];
        // Writes acknowledged (ticks taken), then the fetch, then both bumps land.
        let w1 = clock.tick();
        let w2 = clock.tick();
        let f = n.fence(&fam("status:A"), clock.now());
        n.bump(&a, w1);
        n.bump(&a, w2);
        assert_eq!(f.check(), Check::Kept);
        let g = f.rebased();
        assert_eq!(g.check(), Check::Valid, "counted once");
        n.bump(&a, clock.tick());
        assert_eq!(g.check(), Check::Ended, "a later write still ends it");
        // A tick never goes back: an older write's late bump leaves the newer one.
        let f = n.fence(&fam("status:A"), clock.now());
        n.bump(&a, w1);
        assert_eq!(f.check(), Check::Valid);
    }

    #[test]
    fn a_fence_from_before_any_tick_was_acknowledged_ends_at_the_first_bump() {
        let clock = WriteClock::default();
        let n = Names::default();
        let f = n.fence(&fam("status:A"), 0);
        n.bump(&[Name::family("status:A")], clock.now());
        assert_eq!(f.check(), Check::Ended);
    }

    #[test]
    fn the_tag_rises_with_every_bump_after_the_fence() {
        let clock = WriteClock::default();
        let n = Names::default();
        let before = n.fence(&fam("status:A"), clock.now()).tag();
        n.bump(&[Name::group("status")], clock.tick());
        assert!(n.fence(&fam("status:A"), clock.now()).tag() > before);
    }

    #[test]
    fn cells_no_fence_holds_are_pruned_and_held_ones_keep_working() {
        let clock = WriteClock::default();
        let n = Names::default();
        let held = n.fence(&fam("order:held"), clock.now());
        n.bump(&[Name::family("order:held")], clock.tick());
        let held_after_bump = n.fence(&fam("order:held"), clock.now());
        for i in 0..3 * PRUNE_FLOOR {
            drop(n.fence(&fam(&format!("order:{i}")), clock.now()));
        }
        // Without pruning there would be 3 * PRUNE_FLOOR + 2 (order:held, *).
        assert!(n.len() <= PRUNE_FLOOR + 2, "{} cells", n.len());
        assert!(n.len() >= 2);
        assert!(!held.is_valid(), "fence from before the bump");
        assert!(held_after_bump.is_valid());
        n.bump(&[Name::family("order:held")], clock.tick());
        assert!(
            !held_after_bump.is_valid(),
            "a bump after the prunes still reaches it"
        );
        let f = n.fence(&fam("order:0"), clock.now());
        assert!(f.is_valid());
        n.bump(&[Name::family("order:0")], clock.tick());
        assert!(!f.is_valid());
    }
}
