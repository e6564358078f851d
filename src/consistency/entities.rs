//! Entities: the families each one was seen in, and the writes of each one that a fill may
//! not have seen.
//!
//! The first answers "where was this order before?", which a status change's answer does
//! not say (promise 5 in [`super`]). The second keeps out of the cache an answer that
//! lists an entity whose write it may predate and whose invalidation may have missed the
//! answer's family (promise 2): a write of the entity that is still open is handed the
//! answer's families instead (its bump ends the entry); one already finished keeps it out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use moka::sync::Cache;

use super::names::{Name, push_unique};

/// The entity state of one instance. Cheap to clone.
#[derive(Clone)]
pub struct Entities {
    inner: Arc<Inner>,
}

struct Inner {
    /// entity → families it was seen in, for as long as entries listing it may live.
    seen_in: Cache<String, Arc<Vec<String>>>,
    /// entity → the highest tick of its finished writes (and of foreign writes of it).
    written: Cache<String, u64>,
    /// entity → this instance's writes of it between their mark and their local bump.
    // A std Mutex: short scans, never held across `.await`. It also orders a fill's check
    // against a write's finish and a foreign mark (promise 2).
    open: Mutex<HashMap<String, Vec<OpenWrite>>>,
}

/// A write of this instance between its mark and its local bump.
#[derive(Debug)]
struct OpenWrite {
    tick: u64,
    /// Families of fills that listed the entity while the write was open.
    handed: Vec<String>,
}

impl Entities {
    /// Memberships live `seen_ttl` (at least as long as any entry), write marks
    /// `written_ttl` (at least as long as a fill can take).
    pub fn new(seen_ttl: Duration, written_ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                seen_in: Cache::builder()
                    .max_capacity(1_000_000)
                    .time_to_live(seen_ttl)
                    .build(),
                written: Cache::builder()
                    .max_capacity(1_000_000)
                    .time_to_live(written_ttl)
                    .build(),
                open: Mutex::default(),
            }),
        }
    }

    fn lock_open(&self) -> MutexGuard<'_, HashMap<String, Vec<OpenWrite>>> {
        self.inner.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records memberships seen in an answer.
    pub fn remember(&self, members: &[(String, Vec<String>)]) {
        for (entity, families) in members {
            // One read-merge-write per key at a time (moka's key lock): two fills that list
            // the same order must not overwrite each other's families, or a later write
            // would miss the order's previous status.
            self.inner
                .seen_in
                .entry_by_ref(entity)
                .and_upsert_with(|known| {
                    let mut merged: Vec<String> = known
                        .map(|e| e.into_value().as_ref().clone())
                        .unwrap_or_default();
                    for f in families {
                        push_unique(&mut merged, f.clone());
                    }
                    Arc::new(merged)
                });
        }
    }

    /// The families `entity` was seen in on this instance.
    pub fn seen_in(&self, entity: &str) -> Vec<String> {
        self.inner
            .seen_in
            .get(entity)
            .map(|v| v.as_ref().clone())
            .unwrap_or_default()
    }

    /// Opens a write of `entity` acknowledged at `tick` (promise 2: marked before the
    /// write looks up where the entity was seen).
    pub fn open(&self, entity: &str, tick: u64) -> WriteMark {
        self.lock_open()
            .entry(entity.to_owned())
            .or_default()
            .push(OpenWrite {
                tick,
                handed: Vec::new(),
            });
        WriteMark {
            entity: entity.to_owned(),
            tick,
            finished: false,
            entities: self.clone(),
        }
    }

    /// Closes a write (right before its bump); returns the families fills handed it.
    pub fn finish(&self, mark: &mut WriteMark) -> Vec<Name> {
        mark.finished = true;
        let mut open = self.lock_open();
        let mut handed = Vec::new();
        if let Some(writes) = open.get_mut(&mark.entity) {
            if let Some(i) = writes.iter().position(|w| w.tick == mark.tick) {
                handed = writes.swap_remove(i).handed;
            }
            if writes.is_empty() {
                open.remove(&mark.entity);
            }
        }
        self.mark_written(&mark.entity, mark.tick);
        handed.iter().map(|f| Name::family(f)).collect()
    }

    /// Marks a foreign write of `entity` (a bus message) received at `tick`; under the
    /// lock fills check under, so a fill that checked before it recorded what it lists
    /// before (promise 2, across instances).
    pub fn mark_foreign(&self, entity: &str, tick: u64) {
        let _ordered = self.lock_open();
        self.mark_written(entity, tick);
    }

    /// Raises an entity's write mark to `tick`, never lowers it (two writes of one entity
    /// may finish in either order).
    fn mark_written(&self, entity: &str, tick: u64) {
        self.inner
            .written
            .entry_by_ref(entity)
            .and_upsert_with(|old| old.map_or(tick, |o| o.into_value().max(tick)));
    }

    /// Whether an answer whose fill began at tick `began`, listing `entities`, with its
    /// own `families`, may be stored (promise 2). A write of a listed entity acknowledged
    /// after the fill began keeps it out when that write has finished (its invalidation
    /// may have missed these families: it looked the entity up before the fill recorded
    /// what it lists). A write still open is handed the families instead, and its bump
    /// ends the entry: nothing is lost, the answer is stored.
    pub fn admits(&self, entities: &[String], began: u64, families: &[&str]) -> bool {
        if entities.is_empty() {
            return true;
        }
        let mut open = self.lock_open();
        let mut admitted = true;
        for e in entities {
            if self.inner.written.get(e).is_some_and(|t| t > began) {
                return false;
            }
            let Some(writes) = open.get_mut(e) else {
                continue;
            };
            for w in writes.iter_mut().filter(|w| w.tick > began) {
                admitted &= !families.is_empty();
                for f in families {
                    push_unique(&mut w.handed, (*f).to_owned());
                }
            }
        }
        admitted
    }

    /// Whether no write is open (tests).
    pub fn none_open(&self) -> bool {
        self.lock_open().is_empty()
    }
}

/// An open write (see [`Entities::open`]); pass it to
/// [`super::Invalidator::apply_acked`]. Dropped unapplied, it closes the write as if
/// applied (later fills that missed it are kept out), so none stays open.
#[must_use]
pub struct WriteMark {
    entity: String,
    tick: u64,
    finished: bool,
    entities: Entities,
}

impl WriteMark {
    /// The entity written.
    pub fn entity(&self) -> &str {
        &self.entity
    }
}

impl Drop for WriteMark {
    fn drop(&mut self) {
        if !self.finished {
            let entities = self.entities.clone();
            entities.finish(self);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entities() -> Entities {
        Entities::new(Duration::from_secs(60), Duration::from_secs(60))
    }

    #[test]
    fn concurrent_fills_listing_one_order_lose_none_of_its_families() {
        let ent = entities();
        std::thread::scope(|s| {
            for t in 0..8 {
                let ent = &ent;
                s.spawn(move || {
                    for i in 0..200 {
                        let family = format!("status:T{t}-{i}");
                        ent.remember(&[("order:1".to_owned(), vec![family])]);
                    }
                });
            }
        });
        assert_eq!(
            ent.seen_in("order:1").len(),
            8 * 200,
            "every family any fill saw is kept"
        );
    }

    #[test]
    fn a_write_mark_never_goes_back() {
        let ent = entities();
        ent.mark_written("order:1", 7);
        ent.mark_written("order:1", 5);
        assert_eq!(ent.inner.written.get("order:1"), Some(7));
    }

    #[test]
    fn a_fill_hands_its_families_to_a_write_in_progress_and_a_finished_one_fences_it() {
        let ent = entities();
        let listed = ["order:1".to_owned()];
        let a = ["status:A"];
        // A fill began at tick 1, then a write of order:1 was acknowledged at tick 2.
        let mut mark = ent.open("order:1", 2);
        assert!(ent.admits(&listed, 1, &a), "handed over, stored");
        assert!(
            !ent.admits(&listed, 1, &[]),
            "nothing to hand over: kept out"
        );
        assert_eq!(ent.finish(&mut mark), [Name::family("status:A")]);
        // Finished: a fill from before it is kept out, one from after is stored.
        assert!(!ent.admits(&listed, 1, &a));
        assert!(ent.admits(&listed, 2, &a));
        // A fill that began after the write was acknowledged saw it.
        let mark = ent.open("order:1", 3);
        assert!(ent.admits(&listed, 3, &[]), "acknowledged before");
        assert!(!ent.admits(&listed, 2, &[]));
        drop(mark);
        assert!(ent.none_open(), "dropped marks close");
    }
}
