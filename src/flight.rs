//! Single-flight: one fetch per key per instance, however many requests miss at once.
//!
//! It coordinates; what the flight does (shared tier, MES, store) is `read::fill`'s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use std::sync::atomic::{AtomicUsize, Ordering};

/// A flight as the map holds it: where its result appears, and how many wait on it.
#[derive(Debug)]
struct Slot<T> {
    rx: watch::Receiver<Option<T>>,
    waiting: Arc<AtomicUsize>,
}

/// The in-flight fetches of one instance, by key.
///
/// # Example
///
/// ```
/// # use mesgate::flight::{Flights, Role};
/// # tokio_test_block(async {
/// let flights: Flights<u32> = Flights::default();
/// let key: std::sync::Arc<str> = "k".into();
/// let Role::Leader(leader) = flights.join(&key) else { unreachable!() };
/// let Role::Waiter(waiter) = flights.join(&key) else { unreachable!() };
/// leader.finish(7);
/// assert_eq!(waiter.wait().await, Some(7));
/// # });
/// # fn tokio_test_block(f: impl std::future::Future<Output = ()>) {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug)]
pub struct Flights<T> {
    // A std Mutex: lookups and inserts only, never held across `.await`.
    map: Arc<Mutex<HashMap<Arc<str>, Slot<T>>>>,
}

impl<T> Default for Flights<T> {
    fn default() -> Self {
        Self {
            map: Arc::default(),
        }
    }
}

impl<T> Clone for Flights<T> {
    fn clone(&self) -> Self {
        Self {
            map: self.map.clone(),
        }
    }
}

/// What a request becomes when it misses.
#[derive(Debug)]
pub enum Role<T> {
    /// No fetch was under way: this request must run one and [`Leader::finish`] it.
    Leader(Leader<T>),
    /// A fetch is under way: wait for its result.
    Waiter(Waiter<T>),
}

/// The duty to finish a flight. Dropping it unfinished releases the key, and waiters
/// see `None` (the fetch was lost), so nobody waits forever.
#[derive(Debug)]
pub struct Leader<T> {
    key: Arc<str>,
    tx: watch::Sender<Option<T>>,
    waiting: Arc<AtomicUsize>,
    flights: Flights<T>,
    done: bool,
}

/// A handle to wait on someone else's fetch.
#[derive(Debug)]
pub struct Waiter<T> {
    rx: watch::Receiver<Option<T>>,
    waiting: Arc<AtomicUsize>,
}

impl<T: Clone> Flights<T> {
    /// Joins the flight for `key`, or starts one.
    pub fn join(&self, key: &Arc<str>) -> Role<T> {
        let mut map = self.lock();
        if let Some(slot) = map.get(key) {
            return Role::Waiter(Waiter::new(slot.rx.clone(), slot.waiting.clone()));
        }
        let (tx, rx) = watch::channel(None);
        let waiting = Arc::new(AtomicUsize::new(0));
        map.insert(
            key.clone(),
            Slot {
                rx,
                waiting: waiting.clone(),
            },
        );
        Role::Leader(Leader {
            key: key.clone(),
            tx,
            waiting,
            flights: self.clone(),
            done: false,
        })
    }

    /// Number of flights under way (for metrics and tests).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Requests waiting on flights right now, the leaders' own included (a gauge for
    /// metrics, and the signal tests use to know a crowd has gathered).
    pub fn waiting(&self) -> usize {
        self.lock()
            .values()
            .map(|s| s.waiting.load(Ordering::SeqCst))
            .sum()
    }

    /// Whether no flight is under way.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Slot<T>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remove(&self, key: &Arc<str>) {
        self.lock().remove(key);
    }
}

impl<T: Clone> Leader<T> {
    /// A waiter on this leader's own flight (so the leader can hand its work to a task
    /// and wait like everyone else).
    pub fn waiter(&self) -> Waiter<T> {
        Waiter::new(self.tx.subscribe(), self.waiting.clone())
    }

    /// Publishes the result and releases the key. The caller stores the result in the
    /// local tier *before* this, so a request that finds no flight finds the entry.
    pub fn finish(mut self, value: T) {
        self.flights.remove(&self.key);
        self.tx.send_replace(Some(value));
        self.done = true;
    }
}

impl<T> Drop for Leader<T> {
    fn drop(&mut self) {
        if !self.done {
            let mut map = self.flights.map.lock().unwrap_or_else(|e| e.into_inner());
            map.remove(&self.key);
        }
    }
}

impl<T> Waiter<T> {
    fn new(rx: watch::Receiver<Option<T>>, waiting: Arc<AtomicUsize>) -> Self {
        waiting.fetch_add(1, Ordering::SeqCst);
        Self { rx, waiting }
    }
}

impl<T> Drop for Waiter<T> {
    fn drop(&mut self) {
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<T: Clone> Waiter<T> {
    /// Waits for the result; `None` if the leader was dropped without finishing.
    pub async fn wait(mut self) -> Option<T> {
        match self.rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn many_waiters_one_leader() {
        let f: Flights<u32> = Flights::default();
        let key: Arc<str> = "k".into();
        let Role::Leader(leader) = f.join(&key) else {
            panic!("first is leader")
        };
        let waiters: Vec<_> = (0..100)
            .map(|_| match f.join(&key) {
                Role::Waiter(w) => tokio::spawn(w.wait()),
                Role::Leader(_) => panic!("second leader"),
            })
            .collect();
        while f.waiting() < 100 {
            tokio::task::yield_now().await;
        }
        leader.finish(42);
        for w in waiters {
            assert_eq!(w.await.unwrap(), Some(42));
        }
        assert!(f.is_empty());
    }

    #[tokio::test]
    async fn dropped_leader_releases_waiters_and_key() {
        let f: Flights<u32> = Flights::default();
        let key: Arc<str> = "k".into();
        let Role::Leader(leader) = f.join(&key) else {
            panic!()
        };
        let Role::Waiter(w) = f.join(&key) else {
            panic!()
        };
        drop(leader);
        assert_eq!(w.wait().await, None);
        assert!(matches!(f.join(&key), Role::Leader(_)));
    }

    #[tokio::test]
    async fn after_finish_a_new_flight_starts() {
        let f: Flights<u32> = Flights::default();
        let key: Arc<str> = "k".into();
        let Role::Leader(leader) = f.join(&key) else {
            panic!()
        };
        let own = leader.waiter();
        leader.finish(1);
        assert_eq!(own.wait().await, Some(1));
        assert!(matches!(f.join(&key), Role::Leader(_)));
    }
}
