//! Redis Cluster (three primaries, one replica each): the shared tier reads and fills
//! through it, invalidations cross instances, its keys spread over the primaries, and a
//! primary SIGKILLed under load costs no request and serves nothing stale.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mes_sim::{self as sim, SimConfig};
use support::client::{final_op, get, newest, other_status, patch_status, send};
use support::cluster::Cluster;
use support::gateway::{
    TestGateway, shared_by_both, shared_tier_serves, spawn_gateway, until_cache, without_index,
    write_shows,
};

/// The shipped config in cluster mode (the seed nodes come in as `MESGATE_REDIS_URL`
/// would); `index`: with the shipped status index (its copy in Redis too).
fn cluster_config(index: bool) -> String {
    let shipped = std::fs::read_to_string("config/mesgate.toml").unwrap();
    assert!(shipped.contains("[redis]\n"));
    let shipped = if index {
        shipped
    } else {
        without_index(&shipped)
    };
    shipped.replace("[redis]\n", "[redis]\nmode = \"cluster\"\n")
}

async fn simulator() -> sim::SimHandle {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    sim::spawn(l, SimConfig::instant())
}

/// Two instances of `config` in front of `sim`, on the cluster of the seed nodes `seeds`.
async fn two_instances(
    config: &str,
    sim: &sim::SimHandle,
    seeds: &str,
) -> (TestGateway, TestGateway) {
    let a = spawn_gateway(config, &sim.base_url(), Some(seeds)).await;
    let b = spawn_gateway(config, &sim.base_url(), Some(seeds)).await;
    (a, b)
}

/// Reads the MES served (lists and details).
fn upstream_reads(sim: &sim::SimHandle) -> u64 {
    let s = sim.stats();
    s.list + s.detail
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_filled_by_one_instance_is_an_l2_hit_after_its_restart() {
    let cluster = Cluster::start().await;
    let sim = simulator().await;
    let config = cluster_config(false);
    let (x, from) = newest(&sim).await;
    let paths = [
        format!("/api/orders?status={from}"),
        format!("/api/orders/{x}"),
    ];
    let a = spawn_gateway(&config, &sim.base_url(), Some(&cluster.urls())).await;
    for p in &paths {
        until_cache(&a, p, "MISS", 10).await;
        assert_eq!(get(&a.url(p)).await.x_cache(), "HIT-L1");
    }
    let hits = upstream_reads(&sim);
    a.stop().await;
    let a = spawn_gateway(&config, &sim.base_url(), Some(&cluster.urls())).await;
    for p in &paths {
        let r = get(&a.url(p)).await;
        assert_eq!((r.status.as_u16(), r.x_cache()), (200, "HIT-L2"), "{p}");
    }
    assert_eq!(
        upstream_reads(&sim),
        hits,
        "the restarted instance asked the MES"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_instance_reaches_the_other_through_the_cluster() {
    let cluster = Cluster::start().await;
    let sim = simulator().await;
    let (a, b) = two_instances(&cluster_config(false), &sim, &cluster.urls()).await;
    let (x, from) = newest(&sim).await;
    let detail = format!("/api/orders/{x}");
    let list = format!("/api/orders?status={from}");
    for p in [&list, &detail] {
        until_cache(&a, p, "MISS", 10).await;
        until_cache(&b, p, "HIT-L2", 10).await;
        assert_eq!(get(&b.url(p)).await.x_cache(), "HIT-L1");
    }
    let to = write_shows(&a, &b, x, &from).await;
    // And the new answer is shared again: B's next read of another page fills, A hits.
    let page = format!("/api/orders?status={to}&size=7");
    assert_eq!(get(&b.url(&page)).await.x_cache(), "MISS");
    assert_eq!(get(&a.url(&page)).await.x_cache(), "HIT-L2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_varied_load_spreads_the_keys_over_the_primaries() {
    let cluster = Cluster::start().await;
    let sim = simulator().await;
    // With the status index: its copy in Redis must work on the cluster too. A longer
    // op timeout: this test is about where the keys go, not about a busy machine.
    let config = cluster_config(true).replace("op_timeout = \"50ms\"", "op_timeout = \"1s\"");
    let (a, b) = two_instances(&config, &sim, &cluster.urls()).await;
    let all = get(&a.url("/api/orders?size=60")).await;
    assert_eq!(all.status, 200);
    let ids = all.item_ids();
    assert!(ids.len() >= 40, "{} orders", ids.len());
    let mut paths: Vec<String> = ids.iter().map(|id| format!("/api/orders/{id}")).collect();
    for status in ["MANUFACTURING_STARTED", "SHIPPED"] {
        for size in 1..=10 {
            paths.push(format!("/api/orders?status={status}&size={size}"));
        }
    }
    for p in &paths {
        let r = get(&a.url(p)).await;
        assert_eq!(r.status, 200, "{p}");
    }
    // Every answer was stored in the cluster: B finds each in Redis (a CROSSSLOT
    // error, or any other, would make it a miss); the lists, B's index answers.
    let mut missed = Vec::new();
    for p in &paths {
        let r = get(&b.url(p)).await;
        let want = if p.contains('?') {
            "HIT-INDEX"
        } else {
            "HIT-L2"
        };
        if r.x_cache() != want {
            missed.push(format!("{p} {}", r.x_cache()));
        }
    }
    assert!(missed.is_empty(), "not found in Redis by B: {missed:?}");
    assert!(
        cluster.count_keys("{mesgate:ix:*").await > 0,
        "the status index keeps no copy in the cluster"
    );
    // A write moves its order in the index's copy too (one script in the index's slot):
    // its row there (`version, partition, ...`) names the new status.
    let versions = "{mesgate:ix:order-list}:ver";
    let (x, from) = newest(&sim).await;
    let to = other_status(&from);
    let id = x.to_string();
    let row = || cluster.hget(versions, &id);
    let deadline = Instant::now() + Duration::from_secs(10);
    while row().await.is_none() {
        assert!(Instant::now() < deadline, "the preload never put order {x}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let patched = patch_status(&a.url(""), x, to).await;
    assert_eq!(patched.status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    let moved = |row: Option<String>| row.is_some_and(|r| r.split('\t').nth(1) == Some(to));
    while !moved(row().await) {
        assert!(
            Instant::now() < deadline,
            "the write never reached the index's copy in the cluster"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let keys = cluster.keys_per_primary().await;
    let total: u64 = keys.iter().sum();
    assert_eq!(keys.len(), 3);
    assert!(total >= paths.len() as u64, "{keys:?}");
    for k in &keys {
        assert!(
            *k * 10 <= total * 6,
            "one primary holds {k} of {total} keys ({keys:?}): the keys are not spread"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_load_costs_no_request_and_serves_nothing_stale() {
    let mut cluster = Cluster::start().await;
    let sim = simulator().await;
    let config = cluster_config(false);
    // The primary of the generation marker (every heartbeat goes to it), listed first:
    // both instances' bus subscriptions are on it too.
    let victim = cluster.primary_of("{mesgate}:gen").await;
    let seeds = format!(
        "redis://127.0.0.1:{victim},{}",
        cluster
            .urls()
            .split(',')
            .filter(|u| !u.ends_with(&format!(":{victim}")))
            .collect::<Vec<_>>()
            .join(",")
    );
    let (a, b) = two_instances(&config, &sim, &seeds).await;
    let (x, from) = shared_by_both(&a, &b, &sim).await;

    // Readers on both instances, over pages spread across the slots, through the kill
    // and the promotion: every request answered.
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = [&a, &b]
        .into_iter()
        .enumerate()
        .map(|(i, gw)| {
            let stop = stop.clone();
            let base = gw.url("");
            let status = from.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let size = 1 + (n + i as u64) % 20;
                    let url = format!("{base}/api/orders?status={status}&size={size}");
                    let r = get(&url).await;
                    assert_eq!(r.status, 200, "{url} during the failover");
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                n
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.kill_primary(victim).await;
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.await.unwrap() > 0);
    }

    // A write on A after the failover: B shows it within the bound, then keeps it.
    let to = write_shows(&a, &b, x, &from).await;

    // And the shared tier works again: A fills, B hits Redis.
    shared_tier_serves(&a, &b, to, 30).await;
    assert!(!cluster.primaries().await.contains(&victim));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_stops_answering_gets_a_new_connection_and_serves_again() {
    let cluster = Cluster::start().await;
    let sim = simulator().await;
    let (a, b) = two_instances(&cluster_config(false), &sim, &cluster.urls()).await;
    let l2 = a.gateway.l2().expect("a shared tier").clone();
    let renewals = || l2.stats().renewals.load(Ordering::Relaxed);
    assert_eq!(renewals(), 0);

    // No node answers a command for longer than a breaker cooldown (2 s): the heartbeats
    // fail all along, and the instance builds its cluster connection again (the
    // crate's cluster client can stop answering for good after a failover under load:
    // see `Endpoints::renew_cluster`).
    let paused = Instant::now();
    cluster.pause_clients(Duration::from_secs(4)).await;
    while renewals() == 0 {
        assert!(
            paused.elapsed() < Duration::from_secs(4),
            "heartbeats failed for {:?} and the connection was not built again",
            paused.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Once the nodes answer again, so does the new connection: A fills, B hits Redis.
    let (_, status) = newest(&sim).await;
    shared_tier_serves(&a, &b, &status, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_restarted_empty_starts_a_new_generation_and_serves_nothing_stale() {
    let mut cluster = Cluster::start().await;
    let sim = simulator().await;
    let (a, b) = two_instances(&cluster_config(false), &sim, &cluster.urls()).await;
    let (x, from) = shared_by_both(&a, &b, &sim).await;
    let generations = |gw: &TestGateway| {
        let l2 = gw.gateway.l2().expect("a shared tier");
        l2.stats().generations.load(Ordering::Relaxed)
    };
    let before = (generations(&a), generations(&b));

    // A primary loses everything it held (the epochs of its slots among it) and is back
    // at once: no failover hides it. Its run id is new. Not the marker's primary: the
    // marker's own server is not the only one whose loss matters.
    let marker = cluster.primary_of("{mesgate}:gen").await;
    let primaries = cluster.primaries().await;
    let victim = *primaries.iter().find(|p| **p != marker).expect("a primary");
    cluster.restart_primary_empty(victim).await;

    // Both instances start a new generation (nothing stored before is read again), a
    // write on A is on B within the bound, and the shared tier serves again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while generations(&a) == before.0 || generations(&b) == before.1 {
        assert!(
            Instant::now() < deadline,
            "no new generation after a primary came back empty: {before:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let to = write_shows(&a, &b, x, &from).await;
    shared_tier_serves(&a, &b, to, 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_asynchronous_write_is_queued_and_run_through_the_cluster() {
    let cluster = Cluster::start().await;
    let sim = simulator().await;
    let (a, b) = two_instances(&cluster_config(false), &sim, &cluster.urls()).await;
    let (x, from) = newest(&sim).await;
    let to = other_status(&from);
    // Queued on A (a record and a stream entry, one script in one slot), read by a
    // blocking XREADGROUP on a connection of its own, run, and its record read on B.
    let r = send(
        http::Method::PATCH,
        &a.url(&format!("/api/orders/{x}/status")),
        &[
            ("content-type", "application/json"),
            ("prefer", "respond-async"),
        ],
        bytes::Bytes::from(format!("{{\"status\":\"{to}\"}}")),
    )
    .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let location = r.header("location").to_owned();
    let op = final_op(&b.url(""), &location).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(sim.order_status(x).as_deref(), Some(to));
    let d = get(&b.url(&format!("/api/orders/{x}"))).await;
    assert_eq!(d.json()["status"], to);
}
