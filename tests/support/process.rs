//! Real processes of the tests: the mesgate binary started on a free port, Ctrl-C
//! (SIGINT) sent to one, and its exit awaited.

use std::process::{Child, Command, ExitStatus, Stdio};
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

/// A port nothing listens on now (it may be taken before it is used).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Starts the mesgate binary with config `file` on a free port (admin on a port of its
/// own), in front of `upstream`, on Redis `redis`; a port taken meanwhile (it exits) is
/// tried again. Returns once it accepts connections.
pub async fn start_binary(
    file: &std::path::Path,
    upstream: &str,
    redis: &str,
) -> (std::process::Child, u16) {
    for _ in 0..3 {
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_mesgate"))
            .arg("--config")
            .arg(file)
            .env("MESGATE_LISTEN", format!("127.0.0.1:{port}"))
            .env("MESGATE_UPSTREAM", upstream)
            .env("MESGATE_REDIS_URL", redis)
            // Its own port: an empty value would leave the file's 127.0.0.1:9901.
            .env("MESGATE_ADMIN_LISTEN", "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mesgate");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return (child, port);
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "mesgate did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    panic!("mesgate exited at start three times");
}

/// Polls `check` every 50 ms until it holds (within `secs`, else a panic naming `what`):
/// for processes whose state has no other signal (a cluster's or a sentinel set's).
pub async fn until<F, Fut>(what: &str, secs: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
