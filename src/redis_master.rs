//! The Redis server the shared tier talks to: one fixed server, or the master a set of
//! sentinels names, followed through failovers.
//!
//! Standalone, the endpoint is built once and never changes (its managed connection
//! reconnects by itself). Under Sentinel, `Endpoints::follow` asks the sentinels for
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

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::Sentinel;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{RedisConfig, RedisTopology};

/// One Redis server: a client (for connections of their own, such as the bus's) and the
/// managed connection every operation shares.
pub(crate) struct Endpoint {
    pub client: redis::Client,
    pub conn: ConnectionManager,
    /// `host:port`, for logs and comparisons.
    pub addr: String,
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
        };
        match &cfg.topology {
            RedisTopology::Standalone => {
                let first = e.endpoint(redis::Client::open(cfg.url.as_str())?)?;
                e.now = Arc::new(RwLock::new(Some(Arc::new(first))));
            }
            RedisTopology::Sentinel { sentinels, master } => {
                e.sentinel = Some(Arc::new((sentinels.clone(), master.clone())));
            }
        }
        Ok(e)
    }

    fn endpoint(&self, client: redis::Client) -> redis::RedisResult<Endpoint> {
        Ok(Endpoint {
            addr: client.get_connection_info().addr().to_string(),
            conn: ConnectionManager::new_lazy_with_config(client.clone(), self.manager.clone())?,
            client,
        })
    }

    /// The endpoint in force (`None` under Sentinel until a master is known).
    pub fn current(&self) -> Option<Arc<Endpoint>> {
        self.now.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sees each change of master.
    pub fn watch_moves(&self) -> watch::Receiver<u64> {
        self.moved.subscribe()
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
                    *self.now.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(next));
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
