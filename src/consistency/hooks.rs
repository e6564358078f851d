//! Test hooks: points where a test can switch a mechanism off (to see the race it closes)
//! or hold a write (to read in a gap), injected as a trait object.
//!
//! Production runs [`NoHooks`]: every mechanism on, no point held. The code under test
//! calls the hooks unconditionally; it carries no branch of its own for them.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// A future a hook point returns.
pub type HookFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where a write can be held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// Between the local bump and the Redis bump of an invalidation.
    BumpGap,
    /// Right after a write looked up the families its entity was seen in (its plan).
    Planned,
}

/// The hooks the consistency code consults.
pub trait Hooks: Send + Sync {
    /// Whether a write looks up where its entity was seen and falls back to whole groups
    /// when nothing is known (promise 5).
    fn previous_lookup(&self) -> bool {
        true
    }

    /// Whether names are closed to the shared tier while their Redis bump is on its way
    /// (promise 1 across the two tiers).
    fn close_l2_while_bumping(&self) -> bool {
        true
    }

    /// Waits at `point` when a test holds it.
    fn reached(&self, point: Point) -> HookFuture {
        let _ = point;
        Box::pin(std::future::ready(()))
    }
}

/// Production: every mechanism on, nothing held.
#[derive(Debug, Default)]
pub struct NoHooks;

impl Hooks for NoHooks {}

/// Switches for tests: each mechanism, turned off, must produce violations.
#[derive(Debug)]
pub struct TestSwitches {
    /// The previous-status lookup (entity index) and its fallback.
    pub previous_lookup: AtomicBool,
    /// Names closed to L2 while their Redis bump is in flight (else a read in that gap
    /// refills L1 from the pre-write L2 entry).
    pub close_l2_while_bumping: AtomicBool,
    /// When set, every invalidation stops between the local bump and the Redis bump
    /// until the gate is released: the gap made wide enough for a test to read in it.
    pub bump_gate: Mutex<Option<Arc<Gate>>>,
    /// When set, every write stops right after it looked up the families its entity was
    /// seen in (its plan), until the gate is released.
    pub plan_gate: Mutex<Option<Arc<Gate>>>,
}

impl Default for TestSwitches {
    fn default() -> Self {
        Self {
            previous_lookup: AtomicBool::new(true),
            close_l2_while_bumping: AtomicBool::new(true),
            bump_gate: Mutex::new(None),
            plan_gate: Mutex::new(None),
        }
    }
}

impl Hooks for TestSwitches {
    fn previous_lookup(&self) -> bool {
        self.previous_lookup.load(Ordering::Relaxed)
    }

    fn close_l2_while_bumping(&self) -> bool {
        self.close_l2_while_bumping.load(Ordering::Relaxed)
    }

    fn reached(&self, point: Point) -> HookFuture {
        let gate = match point {
            Point::BumpGap => &self.bump_gate,
            Point::Planned => &self.plan_gate,
        };
        let gate = gate.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Box::pin(async move {
            if let Some(gate) = gate {
                gate.reached.notify_one();
                gate.release.notified().await;
            }
        })
    }
}

/// A point where a test holds the gateway (see [`TestSwitches::bump_gate`]).
#[derive(Debug, Default)]
pub struct Gate {
    /// Notified when a task reached the gate.
    pub reached: Notify,
    /// Notify to let it go on.
    pub release: Notify,
}
