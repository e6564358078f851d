//! Starts a real `redis-server` on a free port and stops it (also on drop); hangs it
//! (SIGSTOP) and lets it go on (SIGCONT); with a data directory, restarts it from its
//! last `SAVE`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::process::free_port;

/// A `redis-server` child process owned by one test.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    /// Where `SAVE` writes its snapshot and a restart loads it from (none: no data kept).
    dir: Option<PathBuf>,
    /// Arguments after the usual ones (`--replicaof HOST PORT`).
    extra: Vec<String>,
    /// A sentinel's config file: the process is then `redis-server FILE --sentinel`.
    sentinel_conf: Option<PathBuf>,
}

const INSTALL_HINT: &str = "redis-server is not installed: the shared-tier tests need a real \
     Redis. Install it with `apt-get install -y redis-server` (or `brew install redis`); \
     `bash .ci/run` does this for you.";

/// Set by the first test that finds `redis-server` missing: that one prints the hint; every
/// such test in the binary then fails with one short line pointing at it.
static MISSING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Fails the test: `redis-server` is not installed. The hint is written once per test
/// binary, straight to stderr (not captured by the test harness), above the failures.
fn missing() -> ! {
    use std::io::Write;
    if !MISSING.swap(true, std::sync::atomic::Ordering::SeqCst) {
        let _ = writeln!(std::io::stderr(), "\n{INSTALL_HINT}\n");
    }
    panic!("redis-server missing (how to install it: printed once, above the test list)");
}

impl RedisServer {
    /// Starts a fresh server (no persistence) and waits until it answers PING.
    pub async fn start() -> Self {
        Self::start_with(Vec::new()).await
    }

    /// Starts a fresh server (no persistence) with these arguments after the usual ones
    /// (e.g. `--replicaof 127.0.0.1 PORT`).
    pub async fn start_with(extra: Vec<String>) -> Self {
        let mut server = Self {
            port: free_port(),
            child: None,
            dir: None,
            extra,
            sentinel_conf: None,
        };
        server.launch().await;
        server
    }

    /// Starts a sentinel whose config (without `port`) is `conf`: the file is written
    /// beside the other test files, since a sentinel rewrites its own.
    pub async fn start_sentinel(conf: &str) -> Self {
        let port = free_port();
        let file = std::env::temp_dir().join(format!(
            "mesgate-sentinel-{}-{port}.conf",
            std::process::id()
        ));
        std::fs::write(&file, conf).expect("write the sentinel's config");
        let mut server = Self {
            port,
            child: None,
            dir: None,
            extra: Vec::new(),
            sentinel_conf: Some(file),
        };
        server.launch().await;
        server
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts a server with a data directory of its own: no automatic snapshots, but
    /// [`RedisServer::save`] writes one and [`RedisServer::restart`] loads it, as a Redis
    /// configured to persist would come back after a crash.
    pub async fn start_with_snapshots() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("mesgate-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("redis data dir");
        let mut server = Self {
            port,
            child: None,
            dir: Some(dir),
            extra: Vec::new(),
            sentinel_conf: None,
        };
        server.launch().await;
        server
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn launch(&mut self) {
        for _ in 0..3 {
            let mut cmd = Command::new("redis-server");
            if let Some(conf) = &self.sentinel_conf {
                cmd.arg(conf).arg("--sentinel");
            }
            cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--protected-mode", "no"]);
            if self.sentinel_conf.is_none() {
                cmd.args(["--save", "", "--appendonly", "no"]);
            }
            if let Some(dir) = &self.dir {
                cmd.arg("--dir").arg(dir).args(["--dbfilename", "dump.rdb"]);
            }
            cmd.args(&self.extra);
            let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn();
            let child = match child {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing(),
                Err(e) => panic!("cannot start redis-server: {e}"),
            };
            self.child = Some(child);
            if self.wait_ready().await {
                return;
            }
            // The port was taken between our probe and redis binding it: try another.
            self.kill();
            self.port = free_port();
        }
        panic!("redis-server did not become ready on 127.0.0.1");
    }

    /// Polls PING until it answers: readiness of an external process has no other signal.
    async fn wait_ready(&mut self) -> bool {
        let client = ::redis::Client::open(self.url()).expect("redis url");
        for _ in 0..250 {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(_)) = c.try_wait()
            {
                return false;
            }
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && ::redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Kills the server (SIGKILL: an outage, not a shutdown).
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Hangs the server (SIGSTOP): its connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a hung server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis is running").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill {sig} {pid}");
    }

    /// `SAVE`: a snapshot in the data directory, which a restart loads.
    pub async fn save(&self) {
        assert!(self.dir.is_some(), "started without a data directory");
        let mut conn = self.conn().await;
        let _: () = ::redis::cmd("SAVE")
            .query_async(&mut conn)
            .await
            .expect("SAVE");
    }

    async fn conn(&self) -> ::redis::aio::MultiplexedConnection {
        let client = ::redis::Client::open(self.url()).expect("redis url");
        client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to test redis")
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        let port = self.port;
        self.launch().await;
        assert_eq!(self.port, port, "redis came back on another port");
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Number of keys the gateway stored (entries, epochs, memberships), not counting
    /// its generation marker (`{prefix}:gen`, written by every heartbeat).
    pub async fn dbsize(&self) -> u64 {
        let mut conn = self.conn().await;
        let keys: Vec<String> = ::redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut conn)
            .await
            .expect("KEYS");
        keys.iter().filter(|k| !k.ends_with("}:gen")).count() as u64
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some(conf) = &self.sentinel_conf {
            let _ = std::fs::remove_file(conf);
        }
    }
}
