//! `mesgate demo`: the MES simulator on a local port with the gateway in front of it.
//!
//! It wires existing parts together, runs the tour ([`tour`]: real requests that show a
//! status change leaving a cached page) and prints what to try; no logic of its own.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mes_sim::{self as sim, SimConfig};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::config::{Config, ConfigError, Overrides};
use crate::gateway::{BuildError, Gateway};

pub mod tour;

/// The demo config shipped in the binary, used when `config/demo.toml` is not on disk.
pub const EMBEDDED_DEMO_CONFIG: &str = include_str!("../../config/demo.toml");

/// What `mesgate demo` was asked for.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Demo config file; the embedded copy is used when it does not exist.
    pub config: PathBuf,
    /// Redis URL; when unreachable the demo runs L1 only and says so.
    pub redis: Option<String>,
    /// Where the simulator listens (`127.0.0.1:0` for any free port).
    pub sim_listen: SocketAddr,
    /// Environment overrides (listen, admin).
    pub overrides: Overrides,
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The demo config is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A port could not be bound (the OS error is the source, printed after it).
    #[error("cannot bind {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The gateway could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The server failed (the OS error is the source).
    #[error("server failed")]
    Serve(#[from] std::io::Error),
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, DemoError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| DemoError::Bind { addr, source })
}

/// Whether Redis answers a PING within half a second.
pub async fn redis_reachable(url: &str) -> bool {
    ask::<String>(url, &redis::cmd("PING")).await.is_some()
}

/// `cmd`'s answer from the Redis at `url`, on a connection of its own, within half a
/// second; `None` when there is none.
async fn ask<T: redis::FromRedisValue>(url: &str, cmd: &redis::Cmd) -> Option<T> {
    let client = redis::Client::open(url).ok()?;
    let asked = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        cmd.query_async::<T>(&mut conn).await
    };
    tokio::time::timeout(Duration::from_millis(500), asked)
        .await
        .ok()?
        .ok()
}

fn demo_config_text(path: &PathBuf) -> Result<String, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            info!(path = %path.display(), "demo config not found, using the embedded copy");
            Ok(EMBEDDED_DEMO_CONFIG.to_owned())
        }
        Err(source) => Err(ConfigError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// The prefix of the demo's keys in Redis, when its config keeps the default one: a
/// Redis shared with a real deployment keeps the two apart.
pub const DEMO_PREFIX: &str = "mesgate-demo";

/// Readies the shared tier of a demo whose simulator has just started, with its seeded
/// data: nothing an earlier demo stored in the same Redis describes this MES (an order
/// the last tour moved is back where the seed put it). Its keys get a namespace of their
/// own ([`DEMO_PREFIX`]) and the generation marker goes, so the first heartbeat starts a
/// new generation and nothing stored before is read; the old keys expire by their TTLs.
/// A Redis that cannot be told is left as it is (the gateway then degrades as ever).
pub async fn fresh_shared_tier(config: &mut Config) {
    let Some(redis) = config.redis.as_mut() else {
        return;
    };
    if redis.prefix == "mesgate" {
        redis.prefix = DEMO_PREFIX.to_owned();
    }
    let forget = redis::cmd("DEL")
        .arg(crate::l2::generation_marker(&redis.prefix))
        .to_owned();
    match ask::<i64>(&redis.url, &forget).await {
        Some(_) => info!(prefix = %redis.prefix, "demo: a new generation in redis"),
        None => {
            warn!("demo: redis did not drop the generation marker; earlier entries may be read")
        }
    }
}

/// Runs the simulator and the gateway until `shutdown` resolves.
pub async fn run(opts: DemoOptions, shutdown: impl Future<Output = ()>) -> Result<(), DemoError> {
    let sim_listener = bind(opts.sim_listen).await?;
    let sim = sim::spawn(sim_listener, SimConfig::default());
    let mut overrides = opts.overrides.clone();
    overrides.upstream = Some(sim.base_url());
    overrides.redis_url = None;
    if let Some(url) = &opts.redis {
        if redis_reachable(url).await {
            info!(%url, "using redis as the shared tier");
            overrides.redis_url = Some(url.clone());
        } else {
            warn!(%url, "redis unreachable: running with the in-process tier only");
        }
    } else {
        info!("no --redis or MESGATE_REDIS_URL: running with the in-process tier only");
    }
    let mut config = Config::from_str_with(&demo_config_text(&opts.config)?, overrides)?;
    fresh_shared_tier(&mut config).await;
    let listener = bind(config.listen).await?;
    let admin = match config.admin_listen {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let gateway = Gateway::new(config)?;
    let addr = listener.local_addr()?;
    println!(
        "mesgate demo: gateway http://{addr} in front of the MES simulator {}",
        sim.base_url()
    );
    if let Some(admin) = admin.as_ref().and_then(|l| l.local_addr().ok()) {
        println!("admin: http://{admin}/readyz, /metrics");
    }
    if let Some(admin) = admin {
        tokio::spawn(crate::admin::run(
            admin,
            gateway.clone(),
            std::future::pending(),
        ));
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::server::run(listener, gateway.clone(), async {
        let _ = stopped.await;
    }));
    tokio::pin!(shutdown);
    let toured = async {
        let started = std::time::Instant::now();
        if tour::indexes_ready(&gateway, INDEX_WAIT).await {
            println!(
                "status index: {} statuses preloaded from the MES in {} ms ({} list requests)",
                preloaded(&gateway),
                started.elapsed().as_millis(),
                sim.stats().list
            );
        } else {
            warn!("the status index is not ready: the tour shows the ordinary read path");
        }
        tour::run(addr, &sim).await
    };
    tokio::select! {
        toured = toured => match toured {
            Ok(t) => {
                println!();
                print!("{t}");
            }
            Err(e) => warn!(error = %e, "the tour failed; the gateway keeps serving"),
        },
        () = &mut shutdown => {}
    }
    print_try(addr, &sim.base_url());
    shutdown.await;
    let _ = stop.send(());
    let served = server.await.map_err(std::io::Error::other)?;
    sim.shutdown().await;
    Ok(served?)
}

/// How long the demo waits for its status index before the tour.
const INDEX_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// How many partitions the gateway's indexes keep.
fn preloaded(gateway: &Gateway) -> usize {
    gateway
        .indexes()
        .all()
        .iter()
        .map(|ix| ix.states().len())
        .sum()
}

fn print_try(gw: SocketAddr, sim: &str) {
    let list = format!("http://{gw}/api/orders?status=SUBMITTED");
    println!();
    println!("try (an indexed status: X-Cache HIT-INDEX, and the MES's list counter stays put):");
    println!("  curl -si '{list}' | grep -iE '^(x-cache|cache-status|age):'");
    println!("  curl -s '{sim}/__sim/stats'        # requests that reached the MES, per kind");
    println!("  curl -s 'http://{gw}/api/orders/status-counts'");
    println!("stop with Ctrl-C");
}
