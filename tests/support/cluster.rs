//! A real Redis Cluster on free ports: three primaries, one replica each (node timeout
//! 1 s), built with `redis-cli --cluster create`; a primary SIGKILLed and its replica's
//! promotion awaited; every node killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::process::until;

const INSTALL_HINT: &str = "redis-server or redis-cli is not installed: the cluster tests \
     need a real Redis Cluster. Install both with `apt-get install -y redis-server` (it \
     brings redis-tools, which has redis-cli); `bash .ci/run` does this for you.";

/// How long a primary may be silent before its replica takes over: short, so a
/// failover test stays short.
const NODE_TIMEOUT_MS: u64 = 1000;

/// One cluster node: a `redis-server --cluster-enabled yes` child.
struct Node {
    port: u16,
    child: Option<Child>,
}

/// Six nodes: three primaries and their replicas; all killed on drop.
pub struct Cluster {
    nodes: Vec<Node>,
    dir: PathBuf,
}

/// A port below 55536 that is free, and whose cluster bus port (+10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        if port < 55536 && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

async fn conn(port: u16) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(300)))
        .set_response_timeout(Some(Duration::from_millis(1000)));
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
}

async fn query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> redis::RedisResult<T> {
    cmd.query_async(&mut conn(port).await?).await
}

fn missing() -> ! {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n{INSTALL_HINT}\n");
    panic!("redis-server or redis-cli missing (how to install: printed above)");
}

impl Cluster {
    /// Starts six nodes, joins them (`redis-cli --cluster create`, one replica per
    /// primary) and waits until every node says `cluster_state:ok` and every replica is
    /// in sync with its primary.
    pub async fn start() -> Self {
        if Command::new("redis-cli").arg("--version").output().is_err() {
            missing();
        }
        let dir = std::env::temp_dir().join(format!(
            "mesgate-cluster-{}-{}",
            std::process::id(),
            free_cluster_port()
        ));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let mut cluster = Self {
            nodes: Vec::new(),
            dir,
        };
        for _ in 0..6 {
            let node = cluster.launch().await;
            cluster.nodes.push(node);
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for port in cluster.ports() {
            until("cluster_state:ok on every node", 30, || async move {
                let info: String = query(port, &redis::cmd("CLUSTER").arg("INFO").to_owned())
                    .await
                    .unwrap_or_default();
                info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:6")
            })
            .await;
        }
        cluster.wait_replicas_in_sync().await;
        cluster
    }

    async fn launch(&self) -> Node {
        for _ in 0..5 {
            let port = free_cluster_port();
            if let Some(child) = self.spawn_node(port).await {
                return Node {
                    port,
                    child: Some(child),
                };
            }
        }
        panic!("a cluster node did not start on 127.0.0.1");
    }

    /// A node on `port`, in its own directory under the cluster's (a `nodes.conf` there
    /// from an earlier life is read again), once it answers; `None` when it exits (the
    /// port was taken meanwhile) or stays silent for 5 s.
    async fn spawn_node(&self, port: u16) -> Option<Child> {
        let dir = self.dir.join(port.to_string());
        std::fs::create_dir_all(&dir).expect("node dir");
        let spawned = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--protected-mode", "no", "--save", "", "--appendonly", "no"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            // A replica may always take over, however long it was cut from its
            // primary (the test kills primaries on purpose).
            .args(["--cluster-replica-validity-factor", "0"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing(),
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return None;
            }
            if query::<String>(port, &redis::cmd("PING")).await.is_ok() {
                return Some(child);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILLs the primary on `port` and starts it again at once, empty (no
    /// persistence) but with its cluster config: it comes back as the primary it was,
    /// with nothing in it, unless its replica took over first. Waits until the cluster
    /// is whole again (three primaries, `cluster_state:ok` everywhere).
    pub async fn restart_primary_empty(&mut self, port: u16) {
        let i = self.kill(port).await;
        let child = self.spawn_node(port).await.expect("the node starts again");
        self.nodes[i].child = Some(child);
        self.wait_whole().await;
    }

    fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    fn alive(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// The seed nodes, comma-separated (`MESGATE_REDIS_URL` in cluster mode).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The ports of the nodes that are primaries now (as each live node says of itself).
    pub async fn primaries(&self) -> Vec<u16> {
        let mut out = Vec::new();
        for port in self.alive() {
            let role: Vec<redis::Value> =
                query(port, &redis::cmd("ROLE")).await.unwrap_or_default();
            if matches!(role.first(), Some(redis::Value::BulkString(b)) if b == b"master") {
                out.push(port);
            }
        }
        out
    }

    async fn wait_replicas_in_sync(&self) {
        for port in self.alive() {
            until("every replica in sync", 30, || async move {
                let info: String = query(port, &redis::cmd("INFO").arg("replication").to_owned())
                    .await
                    .unwrap_or_default();
                info.contains("role:master") || info.contains("master_link_status:up")
            })
            .await;
        }
    }

    /// Keys per primary (`DBSIZE`), in the order of [`Cluster::primaries`].
    pub async fn keys_per_primary(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for port in self.primaries().await {
            out.push(query(port, &redis::cmd("DBSIZE")).await.expect("DBSIZE"));
        }
        out
    }

    /// Keys matching `pattern` on all primaries together.
    pub async fn count_keys(&self, pattern: &str) -> usize {
        let mut n = 0;
        for port in self.primaries().await {
            let keys: Vec<String> = query(port, redis::cmd("KEYS").arg(pattern))
                .await
                .expect("KEYS");
            n += keys.len();
        }
        n
    }

    /// `HGET key field`, on the primary that holds `key`.
    pub async fn hget(&self, key: &str, field: &str) -> Option<String> {
        let port = self.primary_of(key).await;
        query(port, redis::cmd("HGET").arg(key).arg(field))
            .await
            .expect("HGET")
    }

    /// The port of the primary that holds `key`'s slot.
    pub async fn primary_of(&self, key: &str) -> u16 {
        let any = self.alive()[0];
        let slot: u16 = query(
            any,
            &redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).to_owned(),
        )
        .await
        .expect("CLUSTER KEYSLOT");
        for port in self.primaries().await {
            let mine: Vec<Vec<redis::Value>> = query(port, redis::cmd("CLUSTER").arg("SLOTS"))
                .await
                .expect("CLUSTER SLOTS");
            for range in mine {
                let (Some(redis::Value::Int(lo)), Some(redis::Value::Int(hi))) =
                    (range.first(), range.get(1))
                else {
                    continue;
                };
                let owner = match range.get(2) {
                    Some(redis::Value::Array(node)) => match node.get(1) {
                        Some(redis::Value::Int(p)) => *p as u16,
                        _ => continue,
                    },
                    _ => continue,
                };
                if (*lo..=*hi).contains(&i64::from(slot)) {
                    return owner;
                }
            }
        }
        panic!("no primary owns slot {slot}");
    }

    /// `CLIENT PAUSE` on every node for `d`: no command of any client is answered (the
    /// cluster bus goes on, so no node is taken for failed and nothing fails over).
    pub async fn pause_clients(&self, d: Duration) {
        for port in self.alive() {
            let pause = redis::cmd("CLIENT")
                .arg("PAUSE")
                .arg(d.as_millis() as u64)
                .arg("ALL")
                .to_owned();
            query::<()>(port, &pause).await.expect("CLIENT PAUSE");
        }
    }

    /// SIGKILLs the primary on `port`, then waits until its replica was promoted, the
    /// cluster says `cluster_state:ok` again on every live node, and there are three
    /// primaries again.
    pub async fn kill_primary(&mut self, port: u16) {
        self.kill(port).await;
        self.wait_whole().await;
    }

    /// SIGKILLs the primary on `port`; its index among the nodes.
    async fn kill(&mut self, port: u16) -> usize {
        assert!(
            self.primaries().await.contains(&port),
            "{port} is not a primary"
        );
        let i = self
            .nodes
            .iter()
            .position(|n| n.port == port)
            .expect("a node of this cluster");
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        i
    }

    /// Waits until there are three primaries and every live node says
    /// `cluster_state:ok` (a node timeout, then an election: a few seconds at most).
    async fn wait_whole(&self) {
        let deadline = 10 + 2 * NODE_TIMEOUT_MS / 1000;
        until("three primaries", deadline, || async {
            self.primaries().await.len() == 3
        })
        .await;
        for port in self.alive() {
            until(
                "cluster_state:ok after the failover",
                deadline,
                || async move {
                    let info: String = query(port, &redis::cmd("CLUSTER").arg("INFO").to_owned())
                        .await
                        .unwrap_or_default();
                    info.contains("cluster_state:ok")
                },
            )
            .await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
