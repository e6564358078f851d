//! The simulator's order book: orders by id plus per-status indexes kept sorted newest
//! first, so a page of any status is a slice walk, and each order's JSON cached.

use bytes::Bytes;

use super::data::{self, Order, Status};

/// Sort key of the indexes: `(created_ms, id)`, ascending, so the newest is at the end.
type Key = (u64, u64);

/// An order with its rendered JSON, re-rendered on every change.
struct Entry {
    order: Order,
    json: Bytes,
}

impl Entry {
    fn new(order: Order) -> Self {
        let json = order.to_json();
        Self { order, json }
    }

    fn key(&self) -> Key {
        (self.order.created_ms, self.order.id)
    }
}

/// One page of a listing, as cheap `Bytes` clones taken under the lock.
#[derive(Debug)]
pub(super) struct Page {
    /// Order JSON documents, newest first.
    pub(super) items: Vec<Bytes>,
    /// How many orders match the filter (across all pages).
    pub(super) total: usize,
}

/// Why a status change was refused.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ChangeError {
    /// No order has that id.
    NotFound,
    /// The order already has the requested status (the MES answers 409).
    Unchanged,
}

/// Fields of an order created over the API, defaults already applied.
#[derive(Debug)]
pub(super) struct NewOrder {
    pub(super) customer: String,
    pub(super) product: String,
    pub(super) material: String,
    pub(super) quantity: u32,
}

/// All orders and their indexes; lives behind the simulator's `RwLock`.
pub(super) struct Store {
    /// Index `id - 1`; ids are dense because orders are never deleted.
    orders: Vec<Entry>,
    all: Vec<Key>,
    by_status: [Vec<Key>; 8],
    seed: u64,
}

impl Store {
    /// The generated order book for `count` orders from `seed`.
    pub(super) fn new(count: usize, seed: u64) -> Self {
        let mut store = Self {
            orders: Vec::with_capacity(count),
            all: Vec::with_capacity(count),
            by_status: std::array::from_fn(|_| Vec::new()),
            seed,
        };
        for order in data::generate(count, seed) {
            store.push(order);
        }
        store
    }

    fn push(&mut self, order: Order) {
        let entry = Entry::new(order);
        insert_sorted(&mut self.all, entry.key());
        insert_sorted(&mut self.by_status[entry.order.status.index()], entry.key());
        self.orders.push(entry);
    }

    fn index(&self, status: Option<Status>) -> &[Key] {
        match status {
            Some(s) => &self.by_status[s.index()],
            None => &self.all,
        }
    }

    fn entry(&self, id: u64) -> Option<&Entry> {
        let i = usize::try_from(id.checked_sub(1)?).ok()?;
        self.orders.get(i)
    }

    fn entry_mut(&mut self, id: u64) -> Option<&mut Entry> {
        let i = usize::try_from(id.checked_sub(1)?).ok()?;
        self.orders.get_mut(i)
    }

    /// How many orders a listing with this filter walks (drives the list latency).
    pub(super) fn matching(&self, status: Option<Status>) -> usize {
        self.index(status).len()
    }

    /// Page `page` (1-based) of `size` orders, newest first; empty past the end.
    pub(super) fn page(&self, status: Option<Status>, page: usize, size: usize) -> Page {
        let index = self.index(status);
        let skip = page.saturating_sub(1).saturating_mul(size);
        let items = index
            .iter()
            .rev()
            .skip(skip)
            .take(size)
            .filter_map(|&(_, id)| self.entry(id))
            .map(|e| e.json.clone())
            .collect();
        Page {
            items,
            total: index.len(),
        }
    }

    /// One order's JSON.
    pub(super) fn get(&self, id: u64) -> Option<Bytes> {
        self.entry(id).map(|e| e.json.clone())
    }

    /// One order's status, for tests peeking at the truth.
    pub(super) fn status_of(&self, id: u64) -> Option<Status> {
        self.entry(id).map(|e| e.order.status)
    }

    /// Orders per status, in [`Status::ALL`] order.
    pub(super) fn counts(&self) -> [usize; 8] {
        std::array::from_fn(|i| self.by_status[i].len())
    }

    /// Moves an order to `status`: bumps `version`, sets `updated_at` (never backwards).
    pub(super) fn set_status(
        &mut self,
        id: u64,
        status: Status,
        now_ms: u64,
    ) -> Result<Bytes, ChangeError> {
        let entry = self.entry_mut(id).ok_or(ChangeError::NotFound)?;
        let old = entry.order.status;
        if old == status {
            return Err(ChangeError::Unchanged);
        }
        let key = entry.key();
        entry.order.status = status;
        entry.order.version += 1;
        entry.order.updated_ms = now_ms.max(entry.order.updated_ms + 1);
        entry.json = entry.order.to_json();
        let json = entry.json.clone();
        remove_sorted(&mut self.by_status[old.index()], key);
        insert_sorted(&mut self.by_status[status.index()], key);
        Ok(json)
    }

    /// Adds a SUBMITTED order with the next id, strictly newer than every existing order.
    pub(super) fn create(&mut self, new: NewOrder, now_ms: u64) -> Bytes {
        let id = self.orders.len() as u64 + 1;
        let newest = self.all.last().map_or(0, |&(created, _)| created);
        let created_ms = now_ms.max(newest + 1);
        self.push(Order {
            id,
            status: Status::Submitted,
            created_ms,
            updated_ms: created_ms,
            version: 1,
            customer: new.customer,
            product: new.product,
            material: new.material,
            quantity: new.quantity,
            model_hash: data::created_model_hash(self.seed, id),
        });
        self.get(id).unwrap_or_default()
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("orders", &self.orders.len())
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

fn insert_sorted(index: &mut Vec<Key>, key: Key) {
    if let Err(pos) = index.binary_search(&key) {
        index.insert(pos, key);
    }
}

fn remove_sorted(index: &mut Vec<Key>, key: Key) {
    if let Ok(pos) = index.binary_search(&key) {
        index.remove(pos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(page: &Page) -> Vec<u64> {
        page.items
            .iter()
            .map(|j| serde_json::from_slice::<serde_json::Value>(j).unwrap()["id"].as_u64())
            .map(Option::unwrap)
            .collect()
    }

    fn new_order() -> NewOrder {
        NewOrder {
            customer: "c".into(),
            product: "p".into(),
            material: "m".into(),
            quantity: 2,
        }
    }

    #[test]
    fn pages_walk_newest_first_without_gaps() {
        let store = Store::new(25, 7);
        assert_eq!(
            ids(&store.page(None, 1, 10)),
            (16..=25).rev().collect::<Vec<_>>()
        );
        assert_eq!(
            ids(&store.page(None, 3, 10)),
            (1..=5).rev().collect::<Vec<_>>()
        );
        assert!(store.page(None, 4, 10).items.is_empty());
        assert!(store.page(None, usize::MAX, usize::MAX).items.is_empty());
    }

    #[test]
    fn status_change_moves_between_indexes() {
        let mut store = Store::new(50, 42);
        let id = 17;
        let old = store.status_of(id).unwrap();
        let new = if old == Status::Shipped {
            Status::Delivered
        } else {
            Status::Shipped
        };
        let before = store.counts();
        store.set_status(id, new, 0).unwrap();
        let after = store.counts();
        assert_eq!(after[old.index()] + 1, before[old.index()]);
        assert_eq!(after[new.index()], before[new.index()] + 1);
        assert!(ids(&store.page(Some(new), 1, 50)).contains(&id));
        assert!(!ids(&store.page(Some(old), 1, 50)).contains(&id));
        assert_eq!(store.set_status(id, new, 0), Err(ChangeError::Unchanged));
        assert_eq!(store.set_status(51, new, 0), Err(ChangeError::NotFound));
        assert_eq!(store.set_status(0, new, 0), Err(ChangeError::NotFound));
    }

    #[test]
    fn updated_at_never_goes_backwards() {
        let mut store = Store::new(3, 42);
        let new = match store.status_of(3) {
            Some(Status::Cancelled) => Status::Shipped,
            _ => Status::Cancelled,
        };
        let json = store.set_status(3, new, 0).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["updated_at"], "2026-01-01T00:00:00.001Z");
        assert_eq!(v["version"], 2);
    }

    #[test]
    fn created_orders_are_strictly_newest_even_with_an_old_clock() {
        let mut store = Store::new(10, 42);
        store.create(new_order(), 0);
        store.create(new_order(), 0);
        assert_eq!(
            ids(&store.page(Some(Status::Submitted), 1, 2)),
            vec![12, 11]
        );
        assert_eq!(ids(&store.page(None, 1, 1)), vec![12]);
        let v: serde_json::Value = serde_json::from_slice(&store.get(12).unwrap()).unwrap();
        assert_eq!(v["created_at"], "2026-01-01T00:00:00.002Z");
        assert!(v["price"].is_null());
    }

    #[test]
    fn empty_store_creates_id_one() {
        let mut store = Store::new(0, 42);
        assert_eq!(store.counts(), [0; 8]);
        store.create(new_order(), 5);
        assert_eq!(store.status_of(1), Some(Status::Submitted));
    }
}
