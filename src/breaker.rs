//! A small circuit breaker so a dead Redis costs nothing after the first failures.
//!
//! It only counts and decides; the caller ([`crate::l2`]) reports each operation's result.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Breaker state, exposed for health reports and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Operations go through.
    Closed,
    /// Operations are skipped until the cool-down ends.
    Open,
    /// One probe operation is in flight; the rest are skipped.
    HalfOpen,
}

impl BreakerState {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { since: Instant },
}

/// Consecutive-failure breaker with a cool-down and a single half-open probe.
///
/// Uses tokio's `Instant` so tests with paused time can drive it.
#[derive(Debug)]
pub struct Breaker {
    // A std Mutex: every critical section is a few comparisons and never crosses `.await`.
    state: Mutex<State>,
    threshold: u32,
    cooldown: Duration,
}

impl Breaker {
    /// Opens after `threshold` consecutive failures, for `cooldown`.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            state: Mutex::new(State::Closed { failures: 0 }),
            threshold: threshold.max(1),
            cooldown,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether an operation may go ahead now. When the cool-down has passed, the first
    /// caller becomes the probe; a probe that never reports is replaced after another cool-down.
    pub fn allow(&self) -> bool {
        let now = Instant::now();
        let mut s = self.lock();
        match *s {
            State::Closed { .. } => true,
            State::Open { until } | State::HalfOpen { since: until } if now >= until => {
                *s = State::HalfOpen {
                    since: now + self.cooldown,
                };
                true
            }
            State::Open { .. } | State::HalfOpen { .. } => false,
        }
    }

    /// Reports a successful operation: the breaker closes.
    pub fn on_success(&self) {
        *self.lock() = State::Closed { failures: 0 };
    }

    /// Reports a failed operation.
    pub fn on_failure(&self) {
        let mut s = self.lock();
        let open = State::Open {
            until: Instant::now() + self.cooldown,
        };
        *s = match *s {
            State::Closed { failures } if failures + 1 < self.threshold => State::Closed {
                failures: failures + 1,
            },
            _ => open,
        };
    }

    /// Current state.
    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_then_probes_once() {
        let b = Breaker::new(3, Duration::from_secs(2));
        for _ in 0..2 {
            assert!(b.allow());
            b.on_failure();
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.on_failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(b.allow(), "first caller after cool-down is the probe");
        assert!(!b.allow(), "only one probe");
        b.on_success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.allow());
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens_and_lost_probe_is_replaced() {
        let b = Breaker::new(1, Duration::from_secs(1));
        b.on_failure();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.allow());
        b.on_failure();
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.allow());
        // The probe never reports; after another cool-down a new probe goes.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.allow());
    }

    #[test]
    fn success_resets_the_count() {
        let b = Breaker::new(2, Duration::from_secs(1));
        b.on_failure();
        b.on_success();
        b.on_failure();
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
