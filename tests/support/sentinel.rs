//! A real Sentinel set on free ports: one master, one replica, three sentinels (quorum
//! 2, a master down after 400 ms), and a failover provoked by SIGKILL of the master.

use super::process::until;
use super::redis::RedisServer;

/// The name the sentinels monitor the master under.
pub const MASTER_NAME: &str = "mesgate";

/// One master, one replica, three sentinels; all stopped on drop.
pub struct SentinelSet {
    /// The master at the start (killed or hung by the tests).
    pub master: RedisServer,
    /// Its replica (the master after a failover).
    pub replica: RedisServer,
    sentinels: Vec<RedisServer>,
}

/// A connection to the server on `port`; a connect that fails (a busy machine, a server
/// in the middle of a failover) is tried again for up to 5 s.
async fn conn(port: u16) -> ::redis::aio::MultiplexedConnection {
    let client = ::redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match client.get_multiplexed_async_connection().await {
            Ok(c) => return c,
            Err(e) if std::time::Instant::now() > deadline => panic!("connect to {port}: {e}"),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
}

/// The master's port as the sentinel on `port` names it.
async fn named_master(port: u16) -> u16 {
    let (_, master): (String, String) = ::redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(MASTER_NAME)
        .query_async(&mut conn(port).await)
        .await
        .expect("the sentinel names a master");
    master.parse().expect("a port")
}

impl SentinelSet {
    /// Starts the set and waits until the replica is in sync and every sentinel knows
    /// the replica and the two other sentinels (so a failover can be agreed on).
    pub async fn start() -> Self {
        let master = RedisServer::start().await;
        let replica = RedisServer::start_with(vec![
            "--replicaof".into(),
            "127.0.0.1".into(),
            master.port().to_string(),
            // Loaded from the socket, not through a dump.rdb in the working directory.
            "--repl-diskless-load".into(),
            "on-empty-db".into(),
        ])
        .await;
        let rp = replica.port();
        until("the replica in sync", 20, || async move {
            let info: String = ::redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut conn(rp).await)
                .await
                .unwrap_or_default();
            info.contains("master_link_status:up")
        })
        .await;
        let conf = format!(
            "sentinel monitor {MASTER_NAME} 127.0.0.1 {} 2\n\
             sentinel down-after-milliseconds {MASTER_NAME} 400\n\
             sentinel failover-timeout {MASTER_NAME} 3000\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n",
            master.port()
        );
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            sentinels.push(RedisServer::start_sentinel(&conf).await);
        }
        for s in &sentinels {
            let sp = s.port();
            until("a sentinel that knows the set", 30, || async move {
                let mut c = conn(sp).await;
                let replicas: Vec<::redis::Value> = ::redis::cmd("SENTINEL")
                    .arg("replicas")
                    .arg(MASTER_NAME)
                    .query_async(&mut c)
                    .await
                    .unwrap_or_default();
                let others: Vec<::redis::Value> = ::redis::cmd("SENTINEL")
                    .arg("sentinels")
                    .arg(MASTER_NAME)
                    .query_async(&mut c)
                    .await
                    .unwrap_or_default();
                replicas.len() == 1 && others.len() == 2
            })
            .await;
        }
        Self {
            master,
            replica,
            sentinels,
        }
    }

    /// The sentinels' URLs, comma-separated (`MESGATE_REDIS_URL` in sentinel mode).
    pub fn urls(&self) -> String {
        self.sentinels
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The master's port as the first sentinel names it.
    pub async fn master_port(&self) -> u16 {
        named_master(self.sentinels[0].port()).await
    }

    /// SIGKILLs the master, then waits until the sentinels have promoted the replica
    /// and it takes writes.
    pub async fn kill_master(&mut self) {
        let old = self.master.port();
        assert_eq!(
            self.master_port().await,
            old,
            "the set starts on its master"
        );
        self.master.stop();
        self.wait_promoted().await;
    }

    /// Hangs the master (SIGSTOP) until the sentinels have promoted the replica, then
    /// lets it go on (SIGCONT): it comes back as a master nobody should write to (the
    /// sentinels turn it into a replica of the new one).
    pub async fn hang_master_through_a_failover(&mut self) {
        let old = self.master.port();
        assert_eq!(
            self.master_port().await,
            old,
            "the set starts on its master"
        );
        self.master.pause();
        self.wait_promoted().await;
        self.master.resume();
    }

    async fn wait_promoted(&self) {
        let rp = self.replica.port();
        let sp = self.sentinels[0].port();
        until("the failover", 30, || async move {
            let named = named_master(sp).await;
            let role: Vec<::redis::Value> = ::redis::cmd("ROLE")
                .query_async(&mut conn(rp).await)
                .await
                .unwrap_or_default();
            let is_master =
                matches!(role.first(), Some(::redis::Value::BulkString(b)) if b == b"master");
            named == rp && is_master
        })
        .await;
    }
}
