//! `mesgate demo`: its tour's claims are true (the order it changes is on the indexed page
//! it reads, and afterwards gone from it and on the new status's page, as the MES has it,
//! with no list request to the MES but the history page's),
//! the binary prints that tour and stops at once on Ctrl-C, and the README shows the same;
//! a port in use is named once.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mes_sim::{self as sim, SimConfig};
use mesgate::demo::EMBEDDED_DEMO_CONFIG;
use mesgate::demo::tour::{self, COLD, FROM, TO};

mod support;
use support::gateway::spawn_gateway;

async fn mes_ids(sim: &sim::SimHandle, status: &str) -> Vec<u64> {
    let url = format!("{}/api/orders?status={status}", sim.base_url());
    support::client::get(&url).await.item_ids()
}

#[tokio::test]
async fn the_tour_moves_an_order_between_indexed_pages_with_no_mes_list_request() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    // The demo's own simulator settings (its latencies) and config.
    let mes = sim::spawn(l, SimConfig::default());
    let gw = spawn_gateway(EMBEDDED_DEMO_CONFIG, &mes.base_url(), None).await;
    assert!(
        tour::indexes_ready(&gw.gateway, Duration::from_secs(30)).await,
        "the demo's status index is ready"
    );
    let listed = mes_ids(&mes, FROM).await;
    let lists = mes.stats().list;
    let t = tour::run(gw.addr, &mes).await.expect("the tour runs");
    let s = &t.steps;
    assert_eq!(s.len(), 6, "{t}");
    let outcome = |i: usize| (s[i].status, s[i].x_cache.as_str());

    assert_eq!(outcome(0), (200, "HIT-INDEX"), "{t}");
    assert!(s[0].ids.contains(&t.order), "the order is on the page: {t}");
    assert_eq!(s[0].ids, listed, "as the MES listed it before the write");

    assert_eq!(s[1].status, 200, "{t}");
    assert_eq!(s[1].order_status.as_deref(), Some(TO));
    assert_eq!(
        mes.order_status(t.order).as_deref(),
        Some(TO),
        "the MES has it"
    );

    // Both pages read again: composed from the index, as the MES lists them now.
    assert_eq!(outcome(2), (200, "HIT-INDEX"), "{t}");
    assert!(!s[2].ids.contains(&t.order), "{t}");
    assert_eq!(outcome(3), (200, "HIT-INDEX"), "{t}");
    assert!(s[3].ids.contains(&t.order), "{t}");
    // History: the ordinary cache, the MES asked once.
    assert_eq!(outcome(4), (200, "MISS"), "{t}");
    assert_eq!(outcome(5), (200, "HIT-L1"), "{t}");
    assert_eq!(s[5].ids, s[4].ids);
    assert_eq!(
        mes.stats().list - lists,
        1,
        "the one list request of the tour is the history page's: {t}"
    );
    // Only now ask the MES (its list counter was read above).
    assert_eq!(s[2].ids, mes_ids(&mes, FROM).await);
    assert_eq!(s[3].ids, mes_ids(&mes, TO).await);
    assert_eq!(s[4].ids, mes_ids(&mes, COLD).await);

    assert_eq!(t.page, Some(format!("http://{}/mesgate/ui", gw.addr)));

    // What a new user reads in the README is what the demo prints (seeded data), on the
    // demo's default port.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let printed = t
        .to_string()
        .replace(&gw.addr.to_string(), "127.0.0.1:8080");
    assert!(
        readme.contains(&printed),
        "README.md does not show the tour as printed:\n{printed}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_demo_on_the_same_redis_reads_nothing_the_first_one_stored() {
    let redis = support::redis::RedisServer::start().await;
    let detail = |order: u64| format!("/api/orders/{order}");
    let mut moved = None;
    for run in 0..2 {
        // Each demo starts its own simulator, with the same seeded data.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mes = sim::spawn(l, SimConfig::default());
        let mut config = support::gateway::test_config(
            EMBEDDED_DEMO_CONFIG,
            &mes.base_url(),
            Some(&redis.url()),
        );
        mesgate::demo::fresh_shared_tier(&mut config).await;
        assert_eq!(
            config.redis.as_ref().unwrap().prefix,
            mesgate::demo::DEMO_PREFIX
        );
        let gw = support::gateway::spawn_config(config).await;
        assert!(tour::indexes_ready(&gw.gateway, Duration::from_secs(30)).await);
        if let Some(order) = moved {
            // The first run moved it, in its own MES: this MES has it where the seed
            // put it, and so must the gateway (the first run stored the moved order in
            // Redis).
            let d = support::client::get(&gw.url(&detail(order))).await;
            assert_eq!(d.status, 200);
            assert_eq!(
                d.json()["status"].as_str(),
                mes.order_status(order).as_deref(),
                "order {order} as an earlier demo left it ({})",
                d.x_cache()
            );
            assert_eq!(d.x_cache(), "MISS");
        }
        let t = tour::run(gw.addr, &mes).await.expect("the tour runs");
        // Read after the tour: stored in Redis with the moved status.
        let d = support::client::get(&gw.url(&detail(t.order))).await;
        assert_eq!(d.json()["status"], TO, "run {run}");
        moved = Some(t.order);
        gw.stop().await;
        mes.shutdown().await;
    }
}

#[test]
fn the_demo_binary_prints_the_tour_and_stops_at_once_on_ctrl_c() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mesgate"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--sim-listen",
            "127.0.0.1:0",
        ])
        .env_remove("MESGATE_REDIS_URL")
        .env("MESGATE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mesgate demo");
    let stdout = child.stdout.take().unwrap();
    // Lines arrive through a channel so a demo that never finishes its tour fails the
    // test at the deadline instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while !out.iter().any(|l: &String| l.contains("stop with Ctrl-C")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => out.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!("no tour within 30 s; printed:\n{}", out.join("\n"));
            }
        }
    }
    let printed = out.join("\n");
    for want in [
        "tour (real requests",
        &format!("GET /api/orders?status={FROM}"),
        "200 HIT-INDEX",
        "200 MISS",
        "200 HIT-L1",
        "is gone from the page",
        "is listed here now",
        "/mesgate/ui",
    ] {
        assert!(printed.contains(want), "want {want:?} in:\n{printed}");
    }
    assert!(!printed.contains("STILL listed"), "{printed}");

    let (status, took) = support::process::interrupt(&mut child, "the demo");
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[test]
fn a_port_in_use_is_named_once_with_the_reason_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_mesgate"))
        .args(["demo", "--listen", "127.0.0.1:0", "--sim-listen", &addr])
        .env_remove("MESGATE_REDIS_URL")
        .env("MESGATE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "error")
        .output()
        .expect("run mesgate demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.starts_with(&format!("mesgate: cannot bind {addr}: ")),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("os error").count(),
        1,
        "the reason once: {stderr}"
    );
    drop(taken);
}
