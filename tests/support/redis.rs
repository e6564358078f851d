//! Starts a real `redis-server` on a free port and stops it (also on drop).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `redis-server` child process owned by one test.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

const INSTALL_HINT: &str = "redis-server is not installed: the shared-tier tests need a real \
     Redis. Install it with `apt-get install -y redis-server` (or `brew install redis`); \
     `bash .ci/run` does this for you.";

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

impl RedisServer {
    /// Starts a fresh server (no persistence) and waits until it answers PING.
    pub async fn start() -> Self {
        let mut server = Self {
            port: free_port(),
            child: None,
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
            let child = Command::new("redis-server")
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let child = match child {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{INSTALL_HINT}"),
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

    /// Number of keys (to check what the gateway stored).
    pub async fn dbsize(&self) -> u64 {
        let client = ::redis::Client::open(self.url()).expect("redis url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to test redis");
        ::redis::cmd("DBSIZE")
            .query_async(&mut conn)
            .await
            .expect("DBSIZE")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
