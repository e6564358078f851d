//! Client connections: the cap on how many are open (`limits.max_connections`), each
//! one's activity, when an idle one is due to close, and which one makes way at the cap.
//!
//! It owns no sockets and speaks no HTTP: [`crate::server`] asks it for a slot per
//! accepted connection and closes the connection when its slot says so.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Descriptors kept aside from client connections: Redis, listeners, the runtime.
const RESERVED_FDS: u64 = 64;

/// The cap when the open-file limit cannot be read.
const FALLBACK_CAP: usize = 512;

/// How long an accept at the cap waits for the idlest connection to close.
const MAKE_WAY_WAIT: Duration = Duration::from_secs(1);

/// The cap derived from the soft open-file limit (see `limits.max_connections`): half of
/// what is left after `RESERVED_FDS`, since a client connection may hold an MES one.
pub fn derived_cap(nofile: Option<u64>) -> usize {
    match nofile {
        Some(n) => (n.saturating_sub(RESERVED_FDS) / 2).clamp(1, 1 << 20) as usize,
        None => FALLBACK_CAP,
    }
}

/// The soft `RLIMIT_NOFILE` of this process, read from `/proc/self/limits` (no `unsafe`
/// needed); `None` where there is no such file or the limit is unlimited.
pub fn nofile_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The open client connections, bounded.
pub struct Connections {
    slots: Arc<Semaphore>,
    cap: usize,
    /// By id. A std `Mutex`: held for a scan or an insert, never across an `.await`.
    open: Mutex<HashMap<u64, Arc<Activity>>>,
    next: AtomicU64,
}

/// What one connection is doing, as far as closing it goes.
///
/// A request's begin and end only touch atomics: nothing is woken per request (that
/// cost a task wake and a timer reset on every hit). The idle watch sleeps to the
/// deadline it last computed and computes it again when it wakes (see
/// [`Activity::expired`]).
#[derive(Debug)]
pub struct Activity {
    /// Requests whose answer is not fully sent yet.
    in_flight: AtomicUsize,
    /// Whether a request has arrived (the first one is awaited for `client_header`, the
    /// next ones for `client_idle`).
    served: AtomicBool,
    /// When it was accepted: `last` counts from here.
    born: Instant,
    /// When it was accepted or last finished an answer, in nanoseconds since `born`.
    last: AtomicU64,
    /// Chosen to make way at the cap.
    evicted: AtomicBool,
    evict: Notify,
    /// The first request arrived: the deadline changes from `client_header` to
    /// `client_idle`, which may be shorter.
    first_request: Notify,
}

/// A connection's place under the cap; dropping it frees the place.
pub struct Slot {
    id: u64,
    activity: Arc<Activity>,
    conns: Arc<Connections>,
    _permit: OwnedSemaphorePermit,
}

/// Held while a request's answer is being produced and sent.
pub struct Busy(Arc<Activity>);

impl Connections {
    /// Room for `cap` connections (at least one).
    pub fn new(cap: usize) -> Arc<Self> {
        let cap = cap.max(1);
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(cap)),
            cap,
            open: Mutex::default(),
            next: AtomicU64::new(0),
        })
    }

    /// The cap.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.cap - self.slots.available_permits()
    }

    /// A slot for a new connection. At the cap, the connection idle the longest is told
    /// to close and its slot is taken; `None` when none is idle (every connection is in
    /// the middle of a request) or it did not close in time: refuse the new one.
    pub async fn admit(self: &Arc<Self>) -> Option<Slot> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Some(self.slot(permit));
        }
        if !self.evict_idlest() {
            return None;
        }
        let permit = tokio::time::timeout(MAKE_WAY_WAIT, self.slots.clone().acquire_owned());
        Some(self.slot(permit.await.ok()?.ok()?))
    }

    /// Resolves when every connection has closed (the drain at shutdown).
    pub async fn all_closed(&self) {
        let _ = self.slots.acquire_many(self.cap as u32).await;
    }

    fn slot(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Slot {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            born: Instant::now(),
            last: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
            first_request: Notify::new(),
        });
        self.lock().insert(id, activity.clone());
        Slot {
            id,
            activity,
            conns: self.clone(),
            _permit: permit,
        }
    }

    /// Tells the connection idle the longest to close; false when none is idle.
    fn evict_idlest(&self) -> bool {
        let open = self.lock();
        let idlest = open
            .values()
            .filter(|a| a.in_flight.load(Ordering::Acquire) == 0)
            .filter(|a| !a.evicted.load(Ordering::Acquire))
            .min_by_key(|a| a.last_active());
        let Some(a) = idlest else {
            return false;
        };
        a.evicted.store(true, Ordering::Release);
        a.evict.notify_one();
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Activity>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Slot {
    /// This connection's activity.
    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.conns.lock().remove(&self.id);
    }
}

impl Activity {
    /// Marks a request begun; the returned guard ends it when dropped.
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        if !self.served.load(Ordering::Acquire) && !self.served.swap(true, Ordering::AcqRel) {
            self.first_request.notify_waiters();
        }
        Busy(self.clone())
    }

    fn last_active(&self) -> Instant {
        self.born + Duration::from_nanos(self.last.load(Ordering::Acquire))
    }

    /// When the connection is due to close for idleness, if it is idle now: `first`
    /// after it was accepted while no request has come, `idle` after its last answer.
    fn due(&self, first: Duration, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let wait = if self.served.load(Ordering::Acquire) {
            idle
        } else {
            first
        };
        Some(self.last_active() + wait)
    }

    /// Resolves once the connection has been idle too long (see `Activity::due`).
    ///
    /// Exact without being woken per request: an answer only ever moves the deadline
    /// later, so sleeping to the deadline computed last and computing it again on waking
    /// never closes early; while an answer is in progress it looks again every `idle`, so
    /// it wakes within `idle` of the answer's end, before the new deadline.
    pub async fn expired(&self, first: Duration, idle: Duration) {
        loop {
            // Registered before the state is read, so a first request in between is seen.
            let first_request = self.first_request.notified();
            match self.due(first, idle) {
                Some(at) if at <= Instant::now() => return,
                Some(at) if !self.served.load(Ordering::Acquire) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = first_request => {}
                    }
                }
                Some(at) => tokio::time::sleep_until(at).await,
                None => tokio::time::sleep(idle).await,
            }
        }
    }

    /// Resolves when the connection was chosen to make way at the cap.
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let since = Instant::now().saturating_duration_since(self.0.born);
        let nanos = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX);
        self.0.last.fetch_max(nanos, Ordering::AcqRel);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_room_for_an_mes_connection_each_and_the_reserve() {
        assert_eq!(derived_cap(Some(256)), 96);
        assert_eq!(derived_cap(Some(8192)), 4064);
        assert_eq!(derived_cap(Some(10)), 1);
        assert_eq!(derived_cap(None), 512);
    }

    #[tokio::test]
    async fn at_the_cap_the_idlest_connection_makes_way_and_a_busy_one_does_not() {
        let conns = Connections::new(2);
        let first = conns.admit().await.expect("room");
        tokio::time::sleep(Duration::from_millis(5)).await;
        let second = conns.admit().await.expect("room");
        let busy = second.activity().begin();
        let told = {
            let a = first.activity().clone();
            tokio::spawn(async move { a.evicted().await })
        };
        let admitting = conns.clone();
        let third = tokio::spawn(async move { admitting.admit().await });
        tokio::time::timeout(Duration::from_secs(1), told)
            .await
            .expect("the idle one was told to close")
            .expect("task");
        drop(first);
        let third = third
            .await
            .expect("task")
            .expect("its slot went to the new one");
        assert_eq!(conns.open(), 2);
        // Both busy: nobody makes way, the next one is refused.
        let _busy_too = third.activity().begin();
        assert!(conns.admit().await.is_none());
        drop(busy);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_deadlines_move_with_requests_and_wait_for_the_answer_to_end() {
        let (first, idle) = (Duration::from_secs(10), Duration::from_secs(60));
        let conns = Connections::new(4);
        let slot = conns.admit().await.expect("room");
        let a = slot.activity().clone();
        let start = Instant::now();
        a.expired(first, idle).await;
        assert_eq!(start.elapsed(), first, "no request: client_header");
        let busy = a.begin();
        let waiting = {
            let a = a.clone();
            tokio::spawn(async move { a.expired(first, idle).await })
        };
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(!waiting.is_finished(), "an answer in progress is not idle");
        drop(busy);
        let done = Instant::now();
        waiting.await.expect("task");
        assert_eq!(done.elapsed(), idle, "after the answer: client_idle");
        // A watch begun before the first request moves when it comes and goes: a short
        // client_idle is not held to the first-request deadline.
        let short = Duration::from_millis(300);
        let fresh = conns.admit().await.expect("room");
        let a = fresh.activity().clone();
        let waiting = {
            let a = a.clone();
            tokio::spawn(async move { a.expired(first, short).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(a.begin());
        let done = Instant::now();
        waiting.await.expect("task");
        assert_eq!(done.elapsed(), short);
    }
}
