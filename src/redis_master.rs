//! The Redis the shared tier talks to: one fixed server, a Redis Cluster, or the master a
//! set of sentinels names, followed through failovers.
//!
//! Standalone, the endpoint is built once and never changes (its managed connection
//! reconnects by itself). On a cluster too: the cluster connection follows `MOVED`/`ASK`
//! and refreshes its slot map after a failover by itself; [`Conn`] puts it behind the
//! same interface as the single-server connection, so every user of the shared tier
//! runs the same calls on both. Under Sentinel, `Endpoints::follow` asks the sentinels for
//! the master every round and, when they name another one (a failover), swaps in an
//! endpoint for it and tells the bus to subscribe again. The managed connection alone
//! would keep reconnecting to the old address, or keep talking to a demoted master.
//!
//! A failover loses what the old master had not yet sent to its replica (replication is
//! asynchronous): epochs may go back in time. The new master's `run_id` differs, so the
//! generation check ([`crate::l2::L2::heartbeat`]) starts a new generation and nothing
//! stored before is read again, exactly as after a restart from an old snapshot.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::Sentinel;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{RedisConfig, RedisTopology};

/// A connection to the Redis in use, whatever its kind: every operation of the shared
/// tier runs on it (`redis::aio::ConnectionLike`). Cheap to clone.
#[derive(Clone)]
pub(crate) enum Conn {
    /// The managed connection to one server (standalone, or the master in force).
    Managed(ConnectionManager),
    /// A connection of its own to one server (a blocking read).
    Own(MultiplexedConnection),
    /// A Redis Cluster: each command goes to the node of its key's slot.
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Managed(c) => c.req_packed_command(cmd),
            Conn::Own(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Own(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Managed(c) => c.get_db(),
            Conn::Own(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// How to open connections of one's own (the bus's subscription, blocking reads).
enum Server {
    One(redis::Client),
    /// The cluster, and a client per seed node (a subscription lives on one node:
    /// classic pub/sub reaches every node of a cluster).
    Cluster {
        client: Box<ClusterClient>,
        seeds: Vec<redis::Client>,
    },
}

/// The Redis in use: how to open connections of one's own, and the connection every
/// operation shares.
pub(crate) struct Endpoint {
    server: Server,
    pub conn: Conn,
    /// `host:port` (a cluster: its seed nodes), for logs and comparisons.
    pub addr: String,
    /// The seed node the next subscription tries first (a cluster).
    next_seed: std::sync::atomic::AtomicUsize,
}

impl Endpoint {
    /// A pub/sub connection subscribed to `channel`. On a cluster, on one of the seed
    /// nodes (the one after the last one used, so a resubscription after a node's loss
    /// goes elsewhere; a node that refuses is skipped).
    pub async fn subscribe(&self, channel: &str) -> redis::RedisResult<redis::aio::PubSub> {
        let clients: Vec<&redis::Client> = match &self.server {
            Server::One(c) => vec![c],
            Server::Cluster { seeds, .. } => {
                let first = self
                    .next_seed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                (0..seeds.len())
                    .map(|i| &seeds[(first + i) % seeds.len()])
                    .collect()
            }
        };
        let mut last = None;
        for c in clients {
            let subscribed = async {
                let mut ps = c.get_async_pubsub().await?;
                ps.subscribe(channel).await?;
                Ok::<_, redis::RedisError>(ps)
            };
            match subscribed.await {
                Ok(ps) => return Ok(ps),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| (redis::ErrorKind::Io, "no node to subscribe on").into()))
    }

    /// A connection of its own (a blocking read would hold up every command of the
    /// shared one), answering within `response`.
    pub async fn own(&self, connect: Duration, response: Duration) -> redis::RedisResult<Conn> {
        match &self.server {
            Server::One(client) => {
                let cfg = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect))
                    .set_response_timeout(Some(response));
                Ok(Conn::Own(
                    client
                        .get_multiplexed_async_connection_with_config(&cfg)
                        .await?,
                ))
            }
            Server::Cluster { client, .. } => {
                let cfg = ClusterConfig::new()
                    .set_connection_timeout(connect)
                    .set_response_timeout(response);
                Ok(Conn::Cluster(
                    client.get_async_connection_with_config(cfg).await?,
                ))
            }
        }
    }
}

/// The endpoint in force, and how to find the next one. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Endpoints {
    now: Arc<RwLock<Option<Arc<Endpoint>>>>,
    manager: ConnectionManagerConfig,
    connect_timeout: Duration,
    /// The sentinels and the master's name (sentinel mode).
    sentinel: Option<Arc<(Vec<String>, String)>>,
    /// Bumped each time another master is taken.
    moved: Arc<watch::Sender<u64>>,
    /// A Redis Cluster (fixed at start): its seed nodes and timeouts, to build its
    /// connection again ([`Endpoints::renew_cluster`]).
    cluster: Option<Arc<ClusterSpec>>,
}

/// What a cluster's connection is built from, besides the connect timeout.
struct ClusterSpec {
    nodes: Vec<String>,
    op_timeout: Duration,
}

impl Endpoints {
    /// Standalone: the endpoint at `cfg.url`, connected lazily. Sentinel: none until
    /// [`Endpoints::follow`] has asked the sentinels.
    pub fn new(cfg: &RedisConfig) -> redis::RedisResult<Self> {
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.connect_timeout))
            .set_response_timeout(Some(cfg.op_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let mut e = Self {
            now: Arc::default(),
            manager,
            connect_timeout: cfg.connect_timeout,
            sentinel: None,
            moved: Arc::new(watch::Sender::new(0)),
            cluster: None,
        };
        match &cfg.topology {
            RedisTopology::Standalone => {
                e.put(e.endpoint(redis::Client::open(cfg.url.as_str())?)?);
            }
            RedisTopology::Sentinel { sentinels, master } => {
                e.sentinel = Some(Arc::new((sentinels.clone(), master.clone())));
            }
            RedisTopology::Cluster { nodes } => {
                let spec = ClusterSpec {
                    nodes: nodes.clone(),
                    op_timeout: cfg.op_timeout,
                };
                e.put(cluster(&spec, e.connect_timeout)?);
                e.cluster = Some(Arc::new(spec));
            }
        }
        Ok(e)
    }

    fn endpoint(&self, client: redis::Client) -> redis::RedisResult<Endpoint> {
        Ok(Endpoint {
            addr: client.get_connection_info().addr().to_string(),
            conn: Conn::Managed(ConnectionManager::new_lazy_with_config(
                client.clone(),
                self.manager.clone(),
            )?),
            server: Server::One(client),
            next_seed: Default::default(),
        })
    }

    /// Puts `next` in force (operations under way finish on the one they hold).
    fn put(&self, next: Endpoint) {
        *self.now.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(next));
    }

    /// The endpoint in force (`None` under Sentinel until a master is known).
    pub fn current(&self) -> Option<Arc<Endpoint>> {
        self.now.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sees each change of master.
    pub fn watch_moves(&self) -> watch::Receiver<u64> {
        self.moved.subscribe()
    }

    /// On a Redis Cluster (the same for the life of the process).
    pub fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// On a cluster: builds its shared connection again from the seed nodes and puts it
    /// in force (operations under way finish on the old one). The cluster client of the
    /// `redis` crate can wedge for good after a primary is lost under load (seen here:
    /// a slot refresh that began and never ended, and every operation timed out for the
    /// rest of a 45 s load test, long after the replica took over; most likely the
    /// refresh waits for a lock held by requests it no longer polls). A new connection learns the slots afresh. Its old driver,
    /// if wedged, stays until the process ends (a task and its sockets). Returns
    /// whether it was built (standalone and Sentinel: nothing to do).
    pub fn renew_cluster(&self) -> bool {
        let Some(spec) = &self.cluster else {
            return false;
        };
        match cluster(spec, self.connect_timeout) {
            Ok(next) => {
                self.put(next);
                true
            }
            Err(e) => {
                warn!(error = %e, "redis cluster connection cannot be built again");
                false
            }
        }
    }

    /// Under Sentinel: asks the sentinels for the master every `every` and takes the one
    /// they name when it is another. Returns at once in standalone mode.
    pub async fn follow(self, every: Duration) {
        let Some(spec) = self.sentinel.clone() else {
            return;
        };
        let (sentinels, master) = (&spec.0, &spec.1);
        let mut asker = match Sentinel::build(sentinels.clone()) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "redis sentinels cannot be asked; the shared tier stays off");
                return;
            }
        };
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut unknown_logged = false;
        loop {
            ticks.tick().await;
            // A sentinel that hangs must not hold the next round up.
            let asked = tokio::time::timeout(
                self.connect_timeout * 2,
                asker.async_master_for(master, None),
            )
            .await;
            let client = match asked {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    if !unknown_logged {
                        warn!(master = %master, error = %e, "redis master not known to the sentinels");
                        unknown_logged = true;
                    }
                    continue;
                }
                Err(_) => {
                    if !unknown_logged {
                        warn!(master = %master, "redis sentinels did not answer in time");
                        unknown_logged = true;
                    }
                    continue;
                }
            };
            unknown_logged = false;
            let addr = client.get_connection_info().addr().to_string();
            if self.current().is_some_and(|e| e.addr == addr) {
                continue;
            }
            match self.endpoint(client) {
                Ok(next) => {
                    let before = self.current().map(|e| e.addr.clone());
                    self.put(next);
                    self.moved.send_modify(|n| *n += 1);
                    match before {
                        Some(old) => {
                            warn!(master = %master, from = %old, to = %addr, "redis failover followed: a new master")
                        }
                        None => {
                            info!(master = %master, at = %addr, "redis master found through the sentinels")
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, at = %addr, "redis master named by the sentinels cannot be used")
                }
            }
        }
    }
}

/// The endpoint of a Redis Cluster found from `nodes`, connected lazily (the gateway
/// starts while the cluster is down). Few, short retries: an operation has
/// `redis.op_timeout` in all, and the breaker, not the client, waits out an outage.
fn cluster(spec: &ClusterSpec, connect_timeout: Duration) -> redis::RedisResult<Endpoint> {
    let nodes = &spec.nodes;
    let client = ClusterClient::builder(nodes.iter().map(String::as_str))
        .retries(3)
        .min_retry_wait(5)
        .max_retry_wait(100)
        .build()?;
    let conn = client.get_pending_async_connection_with_config(
        ClusterConfig::new()
            .set_connection_timeout(connect_timeout)
            .set_response_timeout(spec.op_timeout),
    );
    let seeds = nodes
        .iter()
        .map(|n| redis::Client::open(n.as_str()))
        .collect::<redis::RedisResult<Vec<_>>>()?;
    Ok(Endpoint {
        addr: nodes.join(","),
        conn: Conn::Cluster(conn),
        server: Server::Cluster {
            client: Box::new(client),
            seeds,
        },
        next_seed: Default::default(),
    })
}
