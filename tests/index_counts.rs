//! The status counts kept true by the status index: answered from memory, exactly the
//! MES's bytes, moved by the writes' own answers (no counts query after a write), and
//! repaired by the audit after a change made directly in the MES.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use mes_sim::{self as sim, SimConfig, SimHandle};
use support::client::{Resp, get, patch_status, send};
use support::gateway::{TestGateway, spawn_gateway, wait_indexed};
use support::redis::RedisServer;

const COUNTS: &str = "/api/orders/status-counts";

fn config(audit: &str) -> String {
    let shipped = std::fs::read_to_string("config/mesgate.toml").unwrap();
    assert!(shipped.contains("counts = \"status-counts\""));
    shipped.replace(
        "[route.index]\n",
        &format!("[route.index]\naudit = \"{audit}\"\n"),
    )
}

async fn start(audit: &str) -> (RedisServer, SimHandle, TestGateway) {
    let redis = RedisServer::start().await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = sim::spawn(l, SimConfig::instant());
    let gw = spawn_gateway(&config(audit), &sim.base_url(), Some(&redis.url())).await;
    wait_indexed(&gw).await;
    (redis, sim, gw)
}

/// Waits (at most 10 s) until the gateway answers the counts from the index, equal to
/// the MES's bytes; returns that answer.
async fn counts_from_index(sim: &SimHandle, gw: &TestGateway) -> Resp {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let truth = get(&format!("{}{COUNTS}", sim.base_url())).await;
        let got = get(&gw.url(COUNTS)).await;
        if got.x_cache() == "HIT-INDEX" && got.body == truth.body {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "counts never answered from the index equal to the MES's ({}: {:?} vs {:?})",
            got.x_cache(),
            got.body,
            truth.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn counts_follow_status_changes_and_creates_without_asking_the_mes() {
    let (_redis, sim, gw) = start("0s").await;
    counts_from_index(&sim, &gw).await;
    let asked = sim.stats().counts;
    let r = get(&gw.url(COUNTS)).await;
    assert_eq!(r.header("cache-status"), "mesgate; hit; detail=index");

    // A move between two kept statuses, then to history (not kept), then a create.
    let x = get(&format!("{}/api/orders?status=SUBMITTED", sim.base_url())).await;
    let x = x.item_ids()[0];
    for to in ["MANUFACTURING_APPROVED", "CANCELLED"] {
        assert_eq!(patch_status(&gw.url(""), x, to).await.status, 200);
        let got = get(&gw.url(COUNTS)).await;
        let truth = get(&format!("{}{COUNTS}", sim.base_url())).await;
        assert_eq!(got.x_cache(), "HIT-INDEX", "after ->{to}");
        assert_eq!(got.body, truth.body, "after ->{to}");
    }
    let created = send(
        Method::POST,
        &gw.url("/api/orders"),
        &[("content-type", "application/json")],
        Bytes::from_static(b"{}"),
    )
    .await;
    assert_eq!(created.status, 201);
    let got = get(&gw.url(COUNTS)).await;
    let truth = get(&format!("{}{COUNTS}", sim.base_url())).await;
    assert_eq!((got.x_cache(), &got.body), ("HIT-INDEX", &truth.body));
    // The three truth reads above asked the MES; the gateway asked it nothing.
    assert_eq!(
        sim.stats().counts - asked,
        3,
        "no counts query by the gateway"
    );
}

#[tokio::test]
async fn a_change_made_in_the_mes_is_repaired_in_the_counts_by_the_audit() {
    let (_redis, sim, gw) = start("200ms").await;
    counts_from_index(&sim, &gw).await;
    let x = get(&format!("{}/api/orders?status=SUBMITTED", sim.base_url())).await;
    let x = x.item_ids()[0];
    assert_eq!(
        patch_status(&sim.base_url(), x, "SHIPPED").await.status,
        200
    );
    counts_from_index(&sim, &gw).await;
}

/// Under a steady stream of status changes between kept statuses (what operators do), the
/// counts are still learned and answered from the index: the mirror counts those statuses
/// itself, so no write makes a learned answer ambiguous. The test can fail: with every
/// write counted as in flight, the counts are never learned while the writes go on.
/// The writes of the steady stream (one each 25 ms and more: about 3 s).
const WRITES: usize = 120;

#[tokio::test]
async fn counts_are_learned_and_served_under_a_steady_stream_of_writes() {
    let (_redis, sim, gw) = start("100ms").await;
    let base = gw.url("");
    let ids = get(&format!(
        "{}/api/orders?status=SUBMITTED&size=40",
        sim.base_url()
    ))
    .await
    .item_ids();
    // A number of writes, not a time: a loaded machine slows them, it does not thin them.
    let writer = tokio::spawn(async move {
        let mut i = 0usize;
        while i < WRITES {
            let to = ["MANUFACTURING_APPROVED", "SUBMITTED"][i % 2];
            patch_status(&base, ids[(i / 2) % ids.len()], to).await;
            i += 1;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        i
    });
    // Forgotten (as after a gap on the bus) while the writes go on: learned again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.gateway.indexes().all()[0].gap();
    let mut from_index = 0;
    while !writer.is_finished() {
        from_index += u32::from(get(&gw.url(COUNTS)).await.x_cache() == "HIT-INDEX");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(writer.await.unwrap(), WRITES);
    assert!(
        from_index > 0,
        "the counts were never answered from the index"
    );
    counts_from_index(&sim, &gw).await;
}
