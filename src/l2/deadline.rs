//! The operation timeout of the shared tier, measured against the time the process gave
//! the operation, not against the wall clock alone.
//!
//! A Redis answer travels through two tasks of this process: the connection's driver
//! reads it, then the operation's task takes it. When the runtime is saturated (an event
//! fanned out to 10,000 subscribers wakes 10,000 tasks at once), both wait their turn,
//! and a plain timeout fires on an answer that Redis gave in time: the operation fails,
//! the breaker counts a Redis failure, an event appended in time is appended again. So
//! when the deadline is noticed late (the task itself waited its turn for more than half
//! the timeout), the operation gets one more timeout's worth: the tasks queued before it
//! run meanwhile. A Redis that does not answer still fails on time on a runtime that keeps
//! up, and one timeout after the late notice on one that does not.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// The operation did not finish within its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Elapsed;

/// Runs `op` for `limit`, and for one more `limit` when the deadline was noticed more
/// than `limit / 2` late (see the module's notes).
pub(super) async fn within<F: Future>(limit: Duration, op: F) -> Result<F::Output, Elapsed> {
    tokio::pin!(op);
    let deadline = Instant::now() + limit;
    if let Ok(done) = tokio::time::timeout_at(deadline, &mut op).await {
        return Ok(done);
    }
    let late = Instant::now().saturating_duration_since(deadline);
    if late <= limit / 2 {
        return Err(Elapsed);
    }
    tokio::time::timeout(limit, op).await.map_err(|_| Elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On one thread: a task that holds the thread for `hold` (as 10,000 subscriber
    /// wake-ups do), after which the answer still needs a few turns of a task of its
    /// own (the connection's driver) to reach the operation.
    async fn answer_behind_a_busy_runtime(hold: Duration) -> tokio::sync::oneshot::Receiver<u32> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            std::thread::sleep(hold);
            tokio::spawn(async move {
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                let _ = tx.send(7);
            });
        });
        rx
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_answer_held_up_by_this_process_is_not_a_timeout() {
        let limit = Duration::from_millis(50);
        let rx = answer_behind_a_busy_runtime(Duration::from_millis(200)).await;
        assert_eq!(within(limit, rx).await.map(Result::unwrap), Ok(7));
        // A plain timeout fails it.
        let rx = answer_behind_a_busy_runtime(Duration::from_millis(200)).await;
        assert!(tokio::time::timeout(limit, rx).await.is_err());
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn no_answer_fails_on_time_on_a_runtime_that_keeps_up() {
        let started = Instant::now();
        let never = std::future::pending::<()>();
        assert_eq!(within(Duration::from_millis(50), never).await, Err(Elapsed));
        assert_eq!(started.elapsed(), Duration::from_millis(50));
    }
}
