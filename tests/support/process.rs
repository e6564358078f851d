//! Real processes of the tests: Ctrl-C (SIGINT) sent to one, and its exit awaited.

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// Sends SIGINT to `child` and waits (at most 5 s, then SIGKILL and a panic naming
/// `what`) for it to exit; its status and how long it took.
pub fn interrupt(child: &mut Child, what: &str) -> (ExitStatus, Duration) {
    let sent = Instant::now();
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success(), "kill -INT {what}");
    loop {
        if let Some(s) = child.try_wait().expect("wait for the child") {
            return (s, sent.elapsed());
        }
        if sent.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            panic!("{what} still runs 5 s after Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
