//! Runs the gateway on port 0 in-process and stops it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mesgate::clock::Clock;
use mesgate::config::{Config, Overrides};
use mesgate::gateway::Gateway;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A gateway serving on a free port.
pub struct TestGateway {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The gateway itself (tiers, flights) for white-box checks.
    pub gateway: Gateway,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestGateway {
    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Starts the admin listener for this gateway on a free port; returns its base URL.
    pub async fn admin(&self) -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let addr = l.local_addr().expect("addr");
        let gateway = self.gateway.clone();
        tokio::spawn(mesgate::admin::run(l, gateway, std::future::pending()));
        format!("http://{addr}")
    }

    /// Stops accepting and drains.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("server task").expect("server");
        }
    }
}

/// Parses `config` (TOML) with `upstream` and `redis` put over it, and serves it on port 0.
pub async fn spawn_gateway(config: &str, upstream: &str, redis: Option<&str>) -> TestGateway {
    spawn_config(test_config(config, upstream, redis)).await
}

/// Parses a test config with port 0, no admin listener, and `upstream`/`redis` put over it.
pub fn test_config(config: &str, upstream: &str, redis: Option<&str>) -> Config {
    let overrides = Overrides {
        listen: Some("127.0.0.1:0".into()),
        upstream: Some(upstream.into()),
        // No Redis asked for: the shared tier is off even if the config names one.
        redis_url: Some(redis.unwrap_or("off").to_owned()),
        admin_listen: Some(String::new()),
        ..Overrides::default()
    };
    Config::from_str_with(config, overrides).expect("test config is valid")
}

/// Serves an already built config on port 0.
pub async fn spawn_config(config: Config) -> TestGateway {
    spawn_with_clock(config, Clock::system()).await
}

/// Serves a config on port 0 with an injected clock.
pub async fn spawn_with_clock(config: Config, clock: Clock) -> TestGateway {
    let shared = config.redis.is_some();
    let gateway = Gateway::with_clock(config, clock).expect("gateway");
    if shared {
        // Until the bus subscription is up, the instance hears nothing of other
        // instances' writes: tests that count on that wait for it.
        let inv = gateway.invalidator();
        let _ = inv.wait_subscribed(std::time::Duration::from_secs(5)).await;
    }
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind gateway");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(mesgate::server::run(listener, gateway.clone(), async {
        let _ = rx.await;
    }));
    TestGateway {
        addr,
        gateway,
        stop: Some(tx),
        task: Some(task),
    }
}

/// A config with a cached detail route `/api/orders/{id}` and a cached list route
/// `/api/orders`, with `extra` appended to the list route's `[route.cache]` table.
pub fn list_config(extra: &str) -> String {
    format!(
        r#"
upstream = "http://127.0.0.1:1"

[[route]]
name = "detail"
path = "/api/orders/{{id}}"
[route.cache]
ttl_l1 = "30s"
ttl_l2 = "60s"

[[route]]
name = "list"
path = "/api/orders"
[route.cache]
query = ["status", "page=1", "size=50"]
ttl_l1 = "30s"
ttl_l2 = "60s"
{extra}
"#
    )
}

/// A `[redis]` table (URL filled in by [`spawn_gateway`]) with a unique prefix and short
/// timeouts, to append to a config.
pub fn redis_block() -> String {
    format!(
        "\n[redis]\nurl = \"redis://127.0.0.1:1\"\nprefix = \"t{}\"\nop_timeout = \"100ms\"\nconnect_timeout = \"100ms\"\nbreaker_failures = 2\nbreaker_cooldown = \"300ms\"\n",
        rand_suffix()
    )
}
fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ (u64::from(std::process::id()) << 32) ^ N.fetch_add(1, Ordering::Relaxed)
}

/// `config` without its status indexes (`[route.index]` tables and write rules' `index =`
/// lines): the ordinary read path only, for the tests of path 1 (end it and ask again).
pub fn without_index(config: &str) -> String {
    let mut out = Vec::new();
    let mut in_index = false;
    for line in config.lines() {
        let t = line.trim_start();
        if t.starts_with('[') {
            in_index = t.starts_with("[route.index]");
        }
        if in_index || t.starts_with("index = ") {
            continue;
        }
        out.push(line);
    }
    out.join("\n")
}

/// Waits (bounded) until every partition of every status index of `gw` is ready.
pub async fn wait_indexed(gw: &TestGateway) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let indexes = gw.gateway.indexes();
        let ready = indexes.all().iter().all(|ix| {
            ix.states()
                .iter()
                .all(|(_, s)| *s == mesgate::index::service::PartitionState::Ready)
        });
        if ready {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the status index never became ready: {:?}",
            indexes
                .all()
                .iter()
                .map(|ix| ix.states())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Reads `path` on `gw` until it answers `want` (within `secs`).
pub async fn until_cache(gw: &TestGateway, path: &str, want: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let r = super::client::get(&gw.url(path)).await;
        assert_eq!(r.status, 200, "{path}");
        if r.x_cache() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never {want} within {secs} s (last {})",
            r.x_cache()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Changes the status of `x` (listed under `from`) through `a`, then polls `b` until its
/// detail and its `from` page show the write (within 1.5 s); the new status.
pub async fn write_shows(a: &TestGateway, b: &TestGateway, x: u64, from: &str) -> &'static str {
    use super::client::{get, other_status, patch_status};
    let to = other_status(from);
    assert_eq!(patch_status(&a.url(""), x, to).await.status, 200);
    let detail = format!("/api/orders/{x}");
    let list = format!("/api/orders?status={from}");
    let written = Instant::now();
    loop {
        let d = get(&b.url(&detail)).await;
        let l = get(&b.url(&list)).await;
        assert_eq!((d.status.as_u16(), l.status.as_u16()), (200, 200));
        if d.json()["status"] == to && !l.item_ids().contains(&x) {
            return to;
        }
        assert!(
            written.elapsed() < Duration::from_millis(1500),
            "B still serves the pre-write answers {:?} after the write ({} {})",
            written.elapsed(),
            d.x_cache(),
            l.x_cache()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The shared tier works (again, after a failover): `a` fills a page of `status`, `b`
/// finds it in Redis, within 10 s. A fill may be fenced while invalidations queued during
/// the failover land, and `b` then keeps its own copy in L1: each try takes a page size
/// not read yet, from `first_size` on.
pub async fn shared_tier_serves(a: &TestGateway, b: &TestGateway, status: &str, first_size: u32) {
    use super::client::get;
    let deadline = Instant::now() + Duration::from_secs(10);
    for size in first_size.. {
        let page = format!("/api/orders?status={status}&size={size}");
        assert_eq!(get(&a.url(&page)).await.x_cache(), "MISS");
        if get(&b.url(&page)).await.x_cache() == "HIT-L2" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no L2 hit on B after the failover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The newest order of `sim` and its status, once `a` has filled the order's detail and
/// its status's page and `b` finds both in Redis (the shared tier works between them).
pub async fn shared_by_both(
    a: &TestGateway,
    b: &TestGateway,
    sim: &mes_sim::SimHandle,
) -> (u64, String) {
    let (x, from) = super::client::newest(sim).await;
    for p in [
        format!("/api/orders?status={from}"),
        format!("/api/orders/{x}"),
    ] {
        until_cache(a, &p, "MISS", 10).await;
        until_cache(b, &p, "HIT-L2", 10).await;
    }
    (x, from)
}
