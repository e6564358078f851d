//! The status index's audit: a change made directly in the MES (behind mesgate's back)
//! shows through on page 1 of both statuses, and on a deeper page (a rotating sample),
//! answered from the index, within seconds.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mes_sim::{self as sim, SimConfig, SimHandle};
use support::client::{get, patch_status};
use support::gateway::{TestGateway, spawn_gateway, wait_indexed};
use support::redis::RedisServer;

/// The shipped config, auditing every 200 ms.
fn auditing_config() -> String {
    let shipped = std::fs::read_to_string("config/mesgate.toml").unwrap();
    assert!(shipped.contains("[route.index]\n"));
    shipped.replace("[route.index]\n", "[route.index]\naudit = \"200ms\"\n")
}

async fn start() -> (RedisServer, SimHandle, TestGateway) {
    let redis = RedisServer::start().await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = sim::spawn(l, SimConfig::instant());
    let gw = spawn_gateway(&auditing_config(), &sim.base_url(), Some(&redis.url())).await;
    wait_indexed(&gw).await;
    (redis, sim, gw)
}

/// The first order of `status`'s page 1, asked of the simulator.
async fn first_of(sim: &SimHandle, status: &str) -> u64 {
    let r = get(&format!("{}/api/orders?status={status}", sim.base_url())).await;
    r.item_ids()[0]
}

/// Changes an order's status directly in the MES.
async fn behind_the_back(sim: &SimHandle, id: u64, to: &str) {
    assert_eq!(patch_status(&sim.base_url(), id, to).await.status, 200);
}

/// Waits (at most 10 s) until the gateway's page equals the simulator's, from the index.
async fn shows_through(sim: &SimHandle, gw: &TestGateway, path: &str) -> Duration {
    let started = Instant::now();
    loop {
        let truth = get(&format!("{}{path}", sim.base_url())).await;
        let got = get(&gw.url(path)).await;
        if got.body == truth.body && got.x_cache() == "HIT-INDEX" {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{path} still differs from the MES after 10 s ({})",
            got.x_cache()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn repairs(gw: &TestGateway) -> u64 {
    let ix = &gw.gateway.indexes().all()[0];
    ix.stats().audit_repairs.load(Ordering::Relaxed)
}

#[tokio::test]
async fn a_move_between_two_indexed_statuses_made_in_the_mes_shows_through_on_both() {
    let (_redis, sim, gw) = start().await;
    let (from, to) = ("MANUFACTURING_APPROVED", "SUBMITTED");
    let x = first_of(&sim, from).await;
    let from_page = format!("/api/orders?status={from}");
    let to_page = format!("/api/orders?status={to}");
    let before = get(&gw.url(&from_page)).await;
    assert_eq!(before.x_cache(), "HIT-INDEX");
    assert_eq!(before.item_ids()[0], x);
    behind_the_back(&sim, x, to).await;
    let took = shows_through(&sim, &gw, &from_page).await;
    shows_through(&sim, &gw, &to_page).await;
    assert!(!get(&gw.url(&from_page)).await.item_ids().contains(&x));
    assert!(repairs(&gw) >= 1, "counted");
    println!("a change behind mesgate's back showed through in {took:?}");
}

#[tokio::test]
async fn an_order_moved_in_the_mes_to_a_status_not_kept_leaves_the_page() {
    let (_redis, sim, gw) = start().await;
    let from = "SUBMITTED";
    let x = first_of(&sim, from).await;
    let page = format!("/api/orders?status={from}");
    assert_eq!(get(&gw.url(&page)).await.item_ids()[0], x);
    // CANCELLED is history: not kept, so no page of the index lists x in its new status;
    // the audit finds x missing from the MES's page 1 and asks the MES where it went.
    behind_the_back(&sim, x, "CANCELLED").await;
    shows_through(&sim, &gw, &page).await;
    assert!(!get(&gw.url(&page)).await.item_ids().contains(&x));
    assert!(repairs(&gw) >= 1);
}

/// `status`'s orders on `page` (of 50), asked of the simulator: (id, created_at).
async fn orders_on(sim: &SimHandle, status: &str, page: usize) -> Vec<(u64, String)> {
    let r = get(&format!(
        "{}/api/orders?status={status}&page={page}",
        sim.base_url()
    ))
    .await;
    r.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let at = o["created_at"].as_str().unwrap().to_owned();
            (o["id"].as_u64().unwrap(), at)
        })
        .collect()
}

#[tokio::test]
async fn changes_below_page_one_that_keep_the_counts_show_through_on_their_page() {
    let (_redis, sim, gw) = start().await;
    let status = "SUBMITTED";
    let (a, a_at) = orders_on(&sim, status, 3).await[10].clone();
    // An older order from history comes back: together with `a` leaving, the count and
    // page 1 stay as they were, so only an audit of the deeper pages can see either.
    let mut b = None;
    for page in 1..=40 {
        let found = orders_on(&sim, "CANCELLED", page).await;
        if found.is_empty() {
            break;
        }
        if let Some((id, _)) = found.into_iter().find(|(_, at)| *at < a_at) {
            b = Some(id);
            break;
        }
    }
    let b = b.expect("a cancelled order older than a");
    let page1 = format!("/api/orders?status={status}");
    let before = get(&gw.url(&page1)).await;
    behind_the_back(&sim, a, "CANCELLED").await;
    behind_the_back(&sim, b, status).await;
    assert_eq!(
        get(&format!("{}{page1}", sim.base_url())).await.body,
        before.body
    );
    let page3 = format!("/api/orders?status={status}&page=3");
    let took = shows_through(&sim, &gw, &page3).await;
    assert!(!get(&gw.url(&page3)).await.item_ids().contains(&a));
    assert!(repairs(&gw) >= 1, "counted");
    println!("a change below page 1 showed through in {took:?}");
}
