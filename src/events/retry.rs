//! Events whose append to the stream failed (Redis slower than `op_timeout`, or down),
//! kept in order and appended again in the background, so a slow moment of Redis does
//! not lose the news of a write that happened.
//!
//! It owns that queue and its loop; what an event is and how it is appended are
//! [`super`]'s. Bounded: an event still not appended after [`GIVE_UP`], or one past
//! [`MAX_QUEUED`], is dropped with a warning and counted (`lost`).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use tracing::warn;

use super::{Event, Shared};

/// How long an event is tried again before it is given up.
pub(super) const GIVE_UP: Duration = Duration::from_secs(30);

/// The most events waiting; one more is dropped.
pub(super) const MAX_QUEUED: usize = 4096;

/// The first wait after a failed append; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Events waiting to be appended again, oldest first.
#[derive(Default)]
pub(super) struct Retry {
    /// A std `Mutex`: held for a push or a pop, never across an `.await`.
    queue: Mutex<VecDeque<(Event, Instant)>>,
    queued: Arc<Notify>,
}

impl Retry {
    /// Whether events are waiting: a new one then queues behind them (the stream keeps
    /// the order in which the writes were answered).
    pub(super) fn is_waiting(&self) -> bool {
        !self.lock().is_empty()
    }

    /// Queues `event`, first tried at `since`; false when the queue is full (dropped).
    pub(super) fn push(&self, event: Event, since: Instant) -> bool {
        let mut q = self.lock();
        if q.len() >= MAX_QUEUED {
            return false;
        }
        q.push_back((event, since));
        drop(q);
        self.queued.notify_one();
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Event, Instant)>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Appends again, in order, the events whose append failed; ends with the gateway (it
/// holds the events only while it works on one).
pub(super) async fn run(shared: Weak<Shared>) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let Some(s) = shared.upgrade() else { return };
        let head = s.retry.lock().front().cloned();
        let Some((event, since)) = head else {
            let queued = s.retry.queued.clone();
            let waiting = queued.notified();
            tokio::pin!(waiting);
            // Registered before the queue is looked at again: a push in between is seen.
            waiting.as_mut().enable();
            let empty = s.retry.lock().is_empty();
            drop(s);
            if empty {
                // Bounded, so a gateway gone meanwhile is noticed.
                let _ = tokio::time::timeout(GIVE_UP, waiting).await;
            }
            continue;
        };
        if since.elapsed() > GIVE_UP {
            s.lost.fetch_add(1, Ordering::Relaxed);
            warn!(
                kind = event.kind,
                order = event.order,
                "event given up: its append kept failing"
            );
            s.retry.lock().pop_front();
            continue;
        }
        if s.append(&event).await {
            s.retry.lock().pop_front();
            backoff = FIRST_BACKOFF;
        } else {
            drop(s);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}
