//! The mirror: the orders of the kept partitions (statuses), each partition ordered newest
//! first, every order at the newest version seen, whichever answer brought it. It owns the
//! version rule, the tombstones that make it hold, the entity bound and the per-partition
//! change counters; it does not fetch, parse list bodies, compose them, or decide when a
//! partition is complete (the scan does).
//!
//! # The version rule
//!
//! States of one order are ordered by its `version` (the MES raises it on every change). A
//! row is applied only if its version is newer than the one held for its id; an equal
//! version changes nothing ([`Applied::Same`]), an older one is dropped ([`Applied::Older`]).
//! So a page fetched before a write and answered after it (the MVCC race) cannot undo the
//! write, in whatever order the two arrive.
//!
//! An order whose newest state is in a partition that is not kept leaves a *tombstone*: its
//! id, version and partition, no bytes. Without it, an older row (from that late page) would
//! find nothing held and bring the order back to its old status.
//!
//! # Bounds
//!
//! [`Mirror::new`] takes `max_entities`, counting members and tombstones. A row for a new id
//! that would exceed it is refused with [`Applied::Full`], and the refusal is sticky: the
//! mirror is *overflowed*, serves no page and applies no row until it is rebuilt. A refused
//! row is knowledge lost, and which partition it would have made wrong cannot be told (a
//! refused tombstone guards whatever kept partition the order was in): a mirror that can no
//! longer vouch for every kept partition vouches for none, and the caller answers from the
//! MES. Tombstones are what grows in a long-running mirror (every order that ever left a
//! kept partition); [`Mirror::sweep`] drops those no older row can still contradict, so the
//! bound is only reached when the kept partitions themselves outgrow it.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use foldhash::fast::RandomState;

use super::ranked::Ranked;
use super::row::{Row, SortKey};

/// What applying one row did: the reason a row changed the mirror or not, for the caller's
/// logs and metrics (one [`Applied::as_str`] for both) and for the scan's bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The id was not held: it is now a member of its partition if kept, else a tombstone.
    Inserted,
    /// The id was held in another partition (`from`, kept or not): it left it for the
    /// row's, or for a tombstone if the row's partition is not kept. `from` is the status
    /// the write's answer does not say.
    Moved {
        /// The partition the order was in before this row.
        from: Arc<str>,
    },
    /// Same partition, newer version: the bytes (and the position, if the sort field
    /// changed) were replaced.
    Updated,
    /// Same version as held: nothing changed (the row was seen before, e.g. on two pages).
    Same,
    /// Older than held: ignored, so a stale answer cannot undo a newer one.
    Older,
    /// Refused by the entity bound; the mirror is overflowed (see the module docs).
    Full,
}

impl Applied {
    /// Stable name for logs and metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            Applied::Inserted => "inserted",
            Applied::Moved { .. } => "moved",
            Applied::Updated => "updated",
            Applied::Same => "same",
            Applied::Older => "older",
            Applied::Full => "full",
        }
    }

    /// Whether the mirror changed (a tombstone counts): the scan counts its own changes.
    pub fn changed(&self) -> bool {
        matches!(
            self,
            Applied::Inserted | Applied::Moved { .. } | Applied::Updated
        )
    }
}

/// A slice of one partition, newest first, ready for [`super::compose()`]: what the MES's
/// `Store::page` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The members' bytes as the MES sent them, newest first.
    pub items: Vec<Bytes>,
    /// How many members the partition has (across all pages).
    pub total: usize,
}

/// One kept partition.
#[derive(Debug, Default)]
struct Part {
    keys: Ranked<SortKey>,
    /// Raised once by every apply that changes this partition's members or their bytes.
    generation: u64,
}

/// What is known of one id.
#[derive(Debug)]
struct Held {
    version: u64,
    /// Interned: the kept partitions' names are the map's keys, the others in `names`.
    partition: Arc<str>,
    place: Place,
}

#[derive(Debug)]
enum Place {
    /// In a kept partition at `key`, served as `json`.
    Member { key: SortKey, json: Bytes },
    /// In a partition not kept; `born` is the [`Mirror::seq`] of the change that made it.
    Tombstone { born: u64 },
}

/// The index of several partitions; see the module docs for the rule it keeps.
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use mesgate::index::{Applied, Mirror, Row, RowShape};
///
/// let row = |id: u64, status: &str, version: u64| {
///     let json = format!(
///         r#"{{"id":{id},"status":"{status}","created_at":"2026-01-0{id}T00:00:00.000Z","version":{version}}}"#
///     );
///     Row::parse(&RowShape::default(), Bytes::from(json)).unwrap()
/// };
/// let mut mirror = Mirror::new(["SUBMITTED"], 1000);
/// assert_eq!(mirror.apply(row(1, "SUBMITTED", 1)), Applied::Inserted);
/// assert_eq!(mirror.apply(row(2, "SUBMITTED", 1)), Applied::Inserted);
/// assert_eq!(mirror.apply(row(1, "SHIPPED", 2)).as_str(), "moved");
/// // A page fetched before the move, answered after it, cannot bring order 1 back.
/// assert_eq!(mirror.apply(row(1, "SUBMITTED", 1)), Applied::Older);
/// assert_eq!(mirror.page("SUBMITTED", 1, 50).unwrap().total, 1);
/// ```
#[derive(Debug)]
pub struct Mirror {
    parts: HashMap<Arc<str>, Part, RandomState>,
    rows: HashMap<u64, Held, RandomState>,
    /// Names of the partitions not kept that tombstones are in (the MES has a handful).
    names: HashSet<Arc<str>, RandomState>,
    /// Tombstones by birth, oldest first, for [`Mirror::sweep`]; entries whose tombstone
    /// was since revived or re-born are skipped when reached.
    graves: VecDeque<(u64, u64)>,
    max_entities: usize,
    overflowed: bool,
    seq: u64,
}

impl Mirror {
    /// An empty mirror holding the partitions in `kept`, at most `max_entities` ids
    /// (members and tombstones together).
    pub fn new<I, S>(kept: I, max_entities: usize) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let parts = kept
            .into_iter()
            .map(|name| (Arc::from(name.as_ref()), Part::default()))
            .collect();
        Self {
            parts,
            rows: HashMap::default(),
            names: HashSet::default(),
            graves: VecDeque::new(),
            max_entities,
            overflowed: false,
            seq: 0,
        }
    }

    /// Applies `row` under the version rule (module docs): a newer state moves the order
    /// to its partition (or to a tombstone), an equal or older one changes nothing.
    pub fn apply(&mut self, row: Row) -> Applied {
        if self.overflowed {
            return Applied::Full;
        }
        match self
            .rows
            .get(&row.id)
            .map(|held| row.version.cmp(&held.version))
        {
            Some(std::cmp::Ordering::Less) => Applied::Older,
            Some(std::cmp::Ordering::Equal) => Applied::Same,
            None if self.rows.len() >= self.max_entities => {
                self.overflow();
                Applied::Full
            }
            _ => self.put(row),
        }
    }

    /// Puts a new id's state, or a newer state of a held one, in place: leave the old
    /// place, take the new one, and raise each kept partition that changed once.
    fn put(&mut self, row: Row) -> Applied {
        let old = self.rows.remove(&row.id);
        self.seq += 1;
        let was_member = match &old {
            Some(Held {
                partition,
                place: Place::Member { key, .. },
                ..
            }) => self
                .parts
                .get_mut(partition)
                .is_some_and(|p| p.keys.remove(key)),
            _ => false,
        };
        let (id, version) = (row.id, row.version);
        let (partition, place) = self.place(row);
        let is_member = matches!(place, Place::Member { .. });
        let same = old.as_ref().is_some_and(|o| o.partition == partition);
        if let Some(o) = old.as_ref().filter(|_| was_member) {
            let from = o.partition.clone();
            self.bump(&from);
        }
        if is_member && !(same && was_member) {
            self.bump(&partition);
        }
        self.rows.insert(
            id,
            Held {
                version,
                partition,
                place,
            },
        );
        match old {
            None => Applied::Inserted,
            Some(_) if same => Applied::Updated,
            Some(o) => Applied::Moved { from: o.partition },
        }
    }

    /// Where a row's state goes: into its kept partition, or a tombstone (recorded for the
    /// sweep) if its partition is not kept.
    fn place(&mut self, row: Row) -> (Arc<str>, Place) {
        let kept = self.parts.get_key_value(row.partition.as_str());
        if let Some(name) = kept.map(|(name, _)| Arc::clone(name)) {
            if let Some(part) = self.parts.get_mut(&name) {
                part.keys.insert(row.sort.clone());
            }
            let place = Place::Member {
                key: row.sort,
                json: row.json,
            };
            return (name, place);
        }
        let name = match self.names.get(row.partition.as_str()) {
            Some(name) => Arc::clone(name),
            None => {
                let name: Arc<str> = Arc::from(row.partition);
                self.names.insert(Arc::clone(&name));
                name
            }
        };
        self.bury(row.id);
        (name, Place::Tombstone { born: self.seq })
    }

    /// Records a tombstone born now; drops the queue's dead entries when they outnumber the
    /// live ones, so a mirror that is never swept does not grow a queue without bound.
    fn bury(&mut self, id: u64) {
        self.graves.push_back((self.seq, id));
        let live = self.rows.len().saturating_sub(self.members());
        if self.graves.len() > 2 * live + 64 {
            let rows = &self.rows;
            self.graves
                .retain(|&(born, id)| is_tombstone_born(rows.get(&id), born));
        }
    }

    fn bump(&mut self, partition: &str) {
        if let Some(part) = self.parts.get_mut(partition) {
            part.generation += 1;
        }
    }

    fn overflow(&mut self) {
        self.overflowed = true;
        // Whatever a caller cached from these partitions is to be dropped too.
        for part in self.parts.values_mut() {
            part.generation += 1;
        }
    }

    fn members(&self) -> usize {
        self.parts.values().map(|p| p.keys.len()).sum()
    }

    /// Drops every member of `partition`, with no tombstone (their states are not known
    /// any more): the start of a rebuild after the MES disagreed with it (a write past
    /// mesgate, found by the audit). Raises its generation; returns how many were dropped.
    pub fn forget(&mut self, partition: &str) -> usize {
        let Some(part) = self.parts.get_mut(partition) else {
            return 0;
        };
        part.keys = Ranked::default();
        part.generation += 1;
        self.seq += 1;
        let before = self.rows.len();
        self.rows.retain(|_, h| {
            !(matches!(h.place, Place::Member { .. }) && &*h.partition == partition)
        });
        before - self.rows.len()
    }

    /// Page `page` (1-based; 0 is taken as 1, as the simulator's store does) of `size`
    /// members of `partition`, newest first, empty past the end; O(log n + size). `None` if
    /// the partition is not kept or the mirror is overflowed: answer from the MES then.
    pub fn page(&self, partition: &str, page: usize, size: usize) -> Option<Page> {
        let part = self.served(partition)?;
        let skip = page.saturating_sub(1).saturating_mul(size);
        let items = part
            .keys
            .range(skip, size)
            .filter_map(|key| self.json_of(key.id()).cloned())
            .collect();
        Some(Page {
            items,
            total: part.keys.len(),
        })
    }

    fn served(&self, partition: &str) -> Option<&Part> {
        if self.overflowed {
            return None;
        }
        self.parts.get(partition)
    }

    /// Members of `partition` (its `total`); `None` if not kept or overflowed.
    pub fn len(&self, partition: &str) -> Option<usize> {
        self.served(partition).map(|p| p.keys.len())
    }

    /// Whether `partition` is one the mirror holds.
    pub fn is_kept(&self, partition: &str) -> bool {
        self.parts.contains_key(partition)
    }

    /// The kept partitions' names, in no particular order.
    pub fn kept(&self) -> impl Iterator<Item = &str> {
        self.parts.keys().map(|k| &**k)
    }

    /// Whether `id` is a member of a kept partition (a tombstone is not).
    pub fn contains(&self, id: u64) -> bool {
        self.json_of(id).is_some()
    }

    /// The partition `id` was last seen in, kept or not: the previous status a write's
    /// answer does not carry.
    pub fn partition_of(&self, id: u64) -> Option<&str> {
        self.rows.get(&id).map(|h| &*h.partition)
    }

    /// The newest version seen for `id`, member or tombstone.
    pub fn version_of(&self, id: u64) -> Option<u64> {
        self.rows.get(&id).map(|h| h.version)
    }

    /// A member's bytes, as the MES last sent them: the order's detail.
    pub fn json_of(&self, id: u64) -> Option<&Bytes> {
        match &self.rows.get(&id)?.place {
            Place::Member { json, .. } => Some(json),
            Place::Tombstone { .. } => None,
        }
    }

    /// The change counter of `partition`: raised by every apply that changes its members or
    /// their bytes, so a composed page cached with it stays valid while it is unchanged.
    /// `None` if not kept.
    pub fn generation(&self, partition: &str) -> Option<u64> {
        self.parts.get(partition).map(|p| p.generation)
    }

    /// Ids held, members and tombstones: what `max_entities` bounds.
    pub fn entities(&self) -> usize {
        self.rows.len()
    }

    /// The bound given to [`Mirror::new`].
    pub fn max_entities(&self) -> usize {
        self.max_entities
    }

    /// Whether a row was refused by the bound: then nothing is served or applied.
    pub fn is_overflowed(&self) -> bool {
        self.overflowed
    }

    /// Changes made so far (each changing apply counts one). Read it before sending any
    /// request whose answer will be applied (a page, a detail, a write): the request's
    /// *horizon*, for [`Mirror::sweep`].
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Drops the tombstones born at or before `horizon`; returns how many.
    ///
    /// A row older than a tombstone comes from an answer computed before the change that
    /// made the tombstone, so from a request sent before the change was applied. Pass the
    /// smallest [`Mirror::seq`] read by a request still in flight (or the current one if
    /// none is): every tombstone at or before it is older than everything that can still
    /// arrive. Rows from other instances (the bus) count as in flight until delivered.
    pub fn sweep(&mut self, horizon: u64) -> usize {
        let mut dropped = 0;
        while let Some(&(born, id)) = self.graves.front() {
            if born > horizon {
                break;
            }
            self.graves.pop_front();
            if let Entry::Occupied(held) = self.rows.entry(id)
                && is_tombstone_born(Some(held.get()), born)
            {
                held.remove();
                dropped += 1;
            }
        }
        dropped
    }
}

fn is_tombstone_born(held: Option<&Held>, born: u64) -> bool {
    matches!(held, Some(Held { place: Place::Tombstone { born: b }, .. }) if *b == born)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::row::RowShape;

    /// An order shaped like the simulator's; `at` is the second of its `created_at`.
    fn row(id: u64, status: &str, at: u32, version: u64) -> Row {
        let json = format!(
            r#"{{"id":{id},"status":"{status}","created_at":"2026-01-01T00:{:02}:{:02}.000Z","version":{version}}}"#,
            at / 60,
            at % 60
        );
        Row::parse(&RowShape::default(), Bytes::from(json)).unwrap()
    }

    fn ids(page: &Page) -> Vec<u64> {
        page.items
            .iter()
            .map(|j| serde_json::from_slice::<serde_json::Value>(j).unwrap()["id"].as_u64())
            .map(Option::unwrap)
            .collect()
    }

    fn all(mirror: &Mirror, partition: &str) -> Vec<u64> {
        ids(&mirror.page(partition, 1, usize::MAX).unwrap())
    }

    #[test]
    fn pages_slice_newest_first_with_ties_on_the_higher_id() {
        let mut m = Mirror::new(["A"], 100);
        // ids 1..=10; ids 4, 5, 6 share a timestamp, so do 9 and 10.
        for (id, at) in [
            (1, 1),
            (2, 2),
            (3, 3),
            (4, 4),
            (5, 4),
            (6, 4),
            (7, 7),
            (8, 8),
        ] {
            assert_eq!(m.apply(row(id, "A", at, 1)), Applied::Inserted);
        }
        m.apply(row(10, "A", 9, 1));
        m.apply(row(9, "A", 9, 1));
        assert_eq!(all(&m, "A"), [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(ids(&m.page("A", 1, 3).unwrap()), [10, 9, 8]);
        assert_eq!(ids(&m.page("A", 2, 3).unwrap()), [7, 6, 5]);
        assert_eq!(ids(&m.page("A", 4, 3).unwrap()), [1]);
        let past = m.page("A", 5, 3).unwrap();
        assert_eq!((past.items.len(), past.total), (0, 10));
        assert_eq!(ids(&m.page("A", 0, 2).unwrap()), [10, 9], "0 is taken as 1");
        assert!(m.page("A", 1, 0).unwrap().items.is_empty());
        assert!(
            m.page("A", usize::MAX, usize::MAX)
                .unwrap()
                .items
                .is_empty()
        );
        assert_eq!(m.page("B", 1, 3), None, "B is not kept");
        assert_eq!((m.len("A"), m.len("B")), (Some(10), None));
    }

    #[test]
    fn an_older_row_is_ignored() {
        let mut m = Mirror::new(["A"], 100);
        let new = row(1, "A", 1, 3);
        m.apply(new.clone());
        let g = m.generation("A");
        assert_eq!(m.apply(row(1, "A", 1, 2)), Applied::Older);
        assert_eq!(m.json_of(1), Some(&new.json));
        assert_eq!((m.version_of(1), m.generation("A")), (Some(3), g));
    }

    #[test]
    fn an_equal_version_is_idempotent() {
        let mut m = Mirror::new(["A"], 100);
        let first = row(1, "A", 1, 2);
        m.apply(first.clone());
        let g = m.generation("A");
        assert_eq!(m.apply(first.clone()), Applied::Same);
        // Even other bytes (or another status) at the same version change nothing.
        assert_eq!(m.apply(row(1, "B", 1, 2)), Applied::Same);
        assert_eq!(m.json_of(1), Some(&first.json));
        assert_eq!((m.partition_of(1), m.generation("A")), (Some("A"), g));
    }

    #[test]
    fn a_tombstone_blocks_resurrection() {
        let mut m = Mirror::new(["A"], 100);
        m.apply(row(1, "A", 1, 1));
        m.apply(row(2, "A", 2, 1));
        // The write's answer: order 1 is now in B, which is not kept.
        let moved = m.apply(row(1, "B", 1, 2));
        assert_eq!(moved, Applied::Moved { from: "A".into() });
        assert_eq!(all(&m, "A"), [2]);
        assert!(!m.contains(1));
        assert_eq!((m.partition_of(1), m.version_of(1)), (Some("B"), Some(2)));
        // A page fetched before the write, answered after it.
        assert_eq!(m.apply(row(1, "A", 1, 1)), Applied::Older);
        assert_eq!(all(&m, "A"), [2]);
        // An id first seen in a partition not kept is a tombstone too.
        assert_eq!(m.apply(row(3, "C", 3, 5)), Applied::Inserted);
        assert_eq!(m.apply(row(3, "A", 3, 4)), Applied::Older);
        assert_eq!(all(&m, "A"), [2]);
        assert_eq!(m.entities(), 3);
        // A newer state in a kept partition revives it.
        assert_eq!(
            m.apply(row(3, "A", 3, 6)),
            Applied::Moved { from: "C".into() }
        );
        assert_eq!(all(&m, "A"), [3, 2]);
    }

    #[test]
    fn a_move_between_kept_partitions_updates_both_pages_and_totals() {
        let mut m = Mirror::new(["A", "B"], 100);
        for id in 1..=5 {
            m.apply(row(id, "A", id as u32, 1));
        }
        for id in 6..=8 {
            m.apply(row(id, "B", id as u32, 1));
        }
        let (ga, gb) = (m.generation("A").unwrap(), m.generation("B").unwrap());
        assert_eq!(
            m.apply(row(3, "B", 3, 2)),
            Applied::Moved { from: "A".into() }
        );
        assert_eq!(all(&m, "A"), [5, 4, 2, 1]);
        assert_eq!(all(&m, "B"), [8, 7, 6, 3]);
        assert_eq!((m.len("A"), m.len("B")), (Some(4), Some(4)));
        assert_eq!(m.page("B", 2, 3).map(|p| ids(&p)), Some(vec![3]));
        assert_eq!(m.generation("A"), Some(ga + 1), "raised once");
        assert_eq!(m.generation("B"), Some(gb + 1), "raised once");
        assert_eq!(m.partition_of(3), Some("B"));
    }

    #[test]
    fn a_newer_version_in_place_replaces_the_bytes_and_may_move_the_position() {
        let mut m = Mirror::new(["A"], 100);
        for id in 1..=3 {
            m.apply(row(id, "A", id as u32, 1));
        }
        let g = m.generation("A").unwrap();
        let newer = row(2, "A", 2, 2);
        assert_eq!(m.apply(newer.clone()), Applied::Updated);
        assert_eq!(m.json_of(2), Some(&newer.json));
        assert_eq!(all(&m, "A"), [3, 2, 1]);
        assert_eq!(m.generation("A"), Some(g + 1));
        // Should the sort field ever change, the row is re-placed.
        assert_eq!(m.apply(row(1, "A", 9, 2)), Applied::Updated);
        assert_eq!(all(&m, "A"), [1, 3, 2]);
        // Newer tombstone states are updates too, and raise no kept partition.
        m.apply(row(3, "X", 3, 2));
        let g = m.generation("A");
        assert_eq!(m.apply(row(3, "X", 3, 3)), Applied::Updated);
        assert_eq!((m.version_of(3), m.generation("A")), (Some(3), g));
    }

    #[test]
    fn generations_move_only_with_their_partition() {
        let mut m = Mirror::new(["A", "B"], 100);
        assert_eq!((m.generation("A"), m.generation("Z")), (Some(0), None));
        m.apply(row(1, "A", 1, 1));
        m.apply(row(2, "Z", 2, 1));
        m.apply(row(2, "Y", 2, 2));
        m.apply(row(1, "A", 1, 1));
        m.apply(row(1, "A", 1, 0));
        assert_eq!((m.generation("A"), m.generation("B")), (Some(1), Some(0)));
    }

    #[test]
    fn the_entity_bound_overflows_the_whole_mirror() {
        let mut m = Mirror::new(["A", "B"], 3);
        m.apply(row(1, "A", 1, 1));
        m.apply(row(2, "B", 2, 1));
        m.apply(row(3, "X", 3, 1));
        // Known ids move freely at the bound.
        assert_eq!(
            m.apply(row(1, "B", 1, 2)),
            Applied::Moved { from: "A".into() }
        );
        let gb = m.generation("B").unwrap();
        assert_eq!(m.apply(row(4, "A", 4, 1)), Applied::Full);
        assert!(m.is_overflowed());
        assert_eq!((m.page("A", 1, 10), m.len("B")), (None, None));
        assert!(m.generation("B").unwrap() > gb, "cached pages are dropped");
        // Sticky: nothing is applied any more, not even to known ids.
        assert_eq!(m.apply(row(1, "A", 1, 3)), Applied::Full);
        assert_eq!(m.version_of(1), Some(2));
    }

    #[test]
    fn sweep_drops_tombstones_older_than_the_horizon_only() {
        let mut m = Mirror::new(["A"], 3);
        m.apply(row(1, "A", 1, 1));
        m.apply(row(1, "X", 1, 2)); // tombstone, born at seq 2
        let horizon = m.seq();
        m.apply(row(2, "A", 2, 1));
        m.apply(row(2, "X", 2, 2)); // born at seq 4, after the horizon
        m.apply(row(3, "X", 3, 1)); // born at seq 5
        m.apply(row(3, "A", 3, 2)); // revived: its grave entry is dead
        assert_eq!(m.sweep(horizon), 1);
        assert_eq!((m.version_of(1), m.version_of(2)), (None, Some(2)));
        assert_eq!(m.entities(), 2);
        assert_eq!(m.sweep(m.seq()), 1, "only order 2's tombstone is left");
        assert!(m.contains(3));
        // Room again under the bound.
        assert_eq!(m.apply(row(4, "A", 4, 1)), Applied::Inserted);
        assert!(!m.is_overflowed());
    }

    #[test]
    fn the_grave_queue_stays_bounded_without_sweeps() {
        let mut m = Mirror::new(["A"], 10);
        for version in 1..=10_000 {
            let status = if version % 2 == 0 { "X" } else { "Y" };
            m.apply(row(1, status, 1, version));
        }
        assert!(
            m.graves.len() <= 2 * m.entities() + 65,
            "{}",
            m.graves.len()
        );
        assert_eq!(m.sweep(m.seq()), 1);
        assert!(m.graves.is_empty());
    }

    #[test]
    fn names_for_logs_and_metrics() {
        let all = [
            (Applied::Inserted, "inserted", true),
            (Applied::Moved { from: "A".into() }, "moved", true),
            (Applied::Updated, "updated", true),
            (Applied::Same, "same", false),
            (Applied::Older, "older", false),
            (Applied::Full, "full", false),
        ];
        for (applied, name, changed) in all {
            assert_eq!((applied.as_str(), applied.changed()), (name, changed));
        }
        let m = Mirror::new(["A", "B"], 1);
        let mut kept: Vec<&str> = m.kept().collect();
        kept.sort_unstable();
        assert_eq!(kept, ["A", "B"]);
        assert!(m.is_kept("A") && !m.is_kept("C"));
        assert_eq!(m.max_entities(), 1);
    }
}
