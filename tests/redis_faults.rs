//! Redis faults that other instances must notice (issue 13, items 3 and 4): a Redis that
//! hangs (SIGSTOP) or dies (SIGKILL) while a write goes through one instance, and a Redis
//! that comes back from an older snapshot. Real processes, the shipped config, the MES
//! simulator and two gateway instances on one Redis.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mes_sim::{self as sim, SimConfig, SimHandle};
use support::client::{Resp, get, newest, other_status, patch_status};
use support::gateway::{TestGateway, spawn_gateway, without_index};
use support::redis::RedisServer;

/// What the issue asks: a write on one instance is not stale on another this long after.
const STALE_BOUND: Duration = Duration::from_millis(1_500);

struct Env {
    redis: RedisServer,
    sim: SimHandle,
    a: TestGateway,
    b: TestGateway,
}

/// The shipped config without its status index and without refresh on write: a write
/// ends what it makes wrong, and the next read asks the MES.
fn shipped_config() -> String {
    let text = without_index(&std::fs::read_to_string("config/mesgate.toml").unwrap());
    text.lines()
        .filter(|l| !l.starts_with("refresh = "))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn two_instances(redis: RedisServer) -> Env {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = sim::spawn(l, SimConfig::instant());
    let config = shipped_config();
    let a = spawn_gateway(&config, &sim.base_url(), Some(&redis.url())).await;
    let b = spawn_gateway(&config, &sim.base_url(), Some(&redis.url())).await;
    Env { redis, sim, a, b }
}

/// Reads `path` on `gw` until it comes from L1.
async fn cached(gw: &TestGateway, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&gw.url(path)).await.x_cache() != "HIT-L1" {
        assert!(Instant::now() < deadline, "{path} never cached in L1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the detail and the list answers show the write of `id` to `to`.
fn shows(detail: &Resp, list: &Resp, id: u64, to: &str) -> bool {
    detail.json()["status"] == to && !list.item_ids().contains(&id)
}

/// Reads the detail and the old status's list on `gw` until both show the write, which
/// must happen within [`STALE_BOUND`] of `written`; then they must stay fresh.
async fn fresh_within_bound(gw: &TestGateway, written: Instant, id: u64, to: &str, from: &str) {
    let (detail, list) = paths(id, from);
    loop {
        let d = get(&gw.url(&detail)).await;
        let l = get(&gw.url(&list)).await;
        if shows(&d, &l, id, to) {
            break;
        }
        assert!(
            written.elapsed() < STALE_BOUND,
            "{:?} after the write the other instance still serves the pre-write answers \
             (detail {} {}, list {} {})",
            written.elapsed(),
            d.x_cache(),
            d.json()["status"],
            l.x_cache(),
            l.item_ids().contains(&id),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..5 {
        let d = get(&gw.url(&detail)).await;
        let l = get(&gw.url(&list)).await;
        assert!(shows(&d, &l, id, to), "stale again: {}", d.x_cache());
    }
}

fn paths(id: u64, from: &str) -> (String, String) {
    (
        format!("/api/orders/{id}"),
        format!("/api/orders?status={from}"),
    )
}

/// One sample of the Prometheus text `text` (0 when absent).
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

async fn metrics(admin: &str) -> String {
    String::from_utf8(get(&format!("{admin}/metrics")).await.body.to_vec()).unwrap()
}

/// Polls the metrics at `admin` until `name` reads `want`.
async fn metric_reaches(admin: &str, name: &str, want: f64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while sample(&metrics(admin).await, name) != want {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// After the fault is over, `gw` caches again and never answers stale on the way.
async fn caches_again(gw: &TestGateway, id: u64, to: &str, from: &str) {
    let (detail, list) = paths(id, from);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = get(&gw.url(&detail)).await;
        let l = get(&gw.url(&list)).await;
        assert!(
            shows(&d, &l, id, to),
            "stale after the fault: {}",
            d.x_cache()
        );
        if d.x_cache() == "HIT-L1" && l.x_cache() == "HIT-L1" {
            return;
        }
        assert!(Instant::now() < deadline, "never cached again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Item 3, a hung Redis: its connections stay open and nothing answers, so no instance
/// sees its subscription drop. Instance B must find out by itself (its own heartbeats
/// no longer come back) that it may be missing invalidations, and stop serving its L1.
#[tokio::test]
async fn a_write_on_one_instance_is_not_stale_on_another_while_redis_hangs() {
    let e = two_instances(RedisServer::start().await).await;
    let admin_b = e.b.admin().await;
    let (id, from) = newest(&e.sim).await;
    let to = other_status(&from);
    let (detail, list) = paths(id, &from);
    cached(&e.b, &detail).await;
    cached(&e.b, &list).await;
    let asked = e.sim.stats().detail;

    e.redis.pause();
    assert_eq!(patch_status(&e.a.url(""), id, to).await.status, 200);
    let written = Instant::now();
    fresh_within_bound(&e.b, written, id, to, &from).await;
    assert!(e.sim.stats().detail > asked, "B asked the MES again");
    let text = metrics(&admin_b).await;
    assert_eq!(
        sample(&text, "mesgate_bus_cut_off"),
        1.0,
        "B says it is cut off"
    );
    assert_eq!(sample(&text, "mesgate_bus_cut_offs_total"), 1.0);

    e.redis.resume();
    metric_reaches(
        &admin_b,
        "mesgate_bus_cut_off",
        0.0,
        "B never heard the bus again",
    )
    .await;
    caches_again(&e.b, id, to, &from).await;
    caches_again(&e.a, id, to, &from).await;
}

/// Item 3, a killed Redis: the subscription drops at once; B must stop serving what it
/// cannot vouch for until Redis is back and B has resynchronized.
#[tokio::test]
async fn a_write_on_one_instance_is_not_stale_on_another_while_redis_is_dead() {
    let mut e = two_instances(RedisServer::start().await).await;
    let admin_b = e.b.admin().await;
    let (id, from) = newest(&e.sim).await;
    let to = other_status(&from);
    let (detail, list) = paths(id, &from);
    cached(&e.b, &detail).await;
    cached(&e.b, &list).await;

    e.redis.stop();
    assert_eq!(patch_status(&e.a.url(""), id, to).await.status, 200);
    let written = Instant::now();
    fresh_within_bound(&e.b, written, id, to, &from).await;
    assert_eq!(sample(&metrics(&admin_b).await, "mesgate_bus_cut_off"), 1.0);

    e.redis.restart().await;
    metric_reaches(
        &admin_b,
        "mesgate_bus_cut_off",
        0.0,
        "B never heard the bus again",
    )
    .await;
    caches_again(&e.b, id, to, &from).await;
    caches_again(&e.a, id, to, &from).await;
}

/// Item 4: Redis restarted from a snapshot taken before a write. The snapshot holds the
/// pre-write entries with the epochs they were stored under, so today they would be
/// valid again (on every instance, for the whole `ttl_l2`). The restarted Redis must be
/// recognized (a new generation) and nothing it held before read again.
#[tokio::test]
async fn redis_back_from_an_older_snapshot_serves_nothing_a_later_write_ended() {
    let mut e = two_instances(RedisServer::start_with_snapshots().await).await;
    let admin_a = e.a.admin().await;
    let (id, from) = newest(&e.sim).await;
    let to = other_status(&from);
    let (detail, list) = paths(id, &from);
    // Both pre-write answers in Redis (B filled them, A finds them there).
    cached(&e.b, &detail).await;
    cached(&e.b, &list).await;
    assert_eq!(get(&e.a.url(&detail)).await.x_cache(), "HIT-L2");
    e.redis.save().await;

    assert_eq!(patch_status(&e.a.url(""), id, to).await.status, 200);
    fresh_within_bound(&e.b, Instant::now(), id, to, &from).await;
    fresh_within_bound(&e.a, Instant::now(), id, to, &from).await;

    e.redis.stop();
    e.redis.restart().await;
    // Both instances are subscribed again (and flushed their L1): what they read now
    // comes from Redis, or the MES.
    for gw in [&e.a, &e.b] {
        let inv = gw.gateway.invalidator();
        let deadline = Instant::now() + Duration::from_secs(10);
        while inv.stats().resubscribes.load(Ordering::Relaxed) == 0 || !inv.bus_subscribed() {
            assert!(Instant::now() < deadline, "never subscribed again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for gw in [&e.a, &e.b] {
        let d = get(&gw.url(&detail)).await;
        let l = get(&gw.url(&list)).await;
        assert!(
            shows(&d, &l, id, to),
            "the snapshot's pre-write answers are back: detail {} {}, list {} lists {id}: {}",
            d.x_cache(),
            d.json()["status"],
            l.x_cache(),
            l.item_ids().contains(&id),
        );
    }
    let text = metrics(&admin_a).await;
    assert!(sample(&text, "mesgate_redis_generations_total") >= 1.0);
    caches_again(&e.b, id, to, &from).await;
    caches_again(&e.a, id, to, &from).await;
}
