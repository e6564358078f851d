//! Compute routes (the price calculation): one computation per key across instances,
//! results kept and served, errors not, the lease taken over when its holder dies.
//! A real `redis-server`, the simulator as the MES, a real mesgate process for the kill.

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use mes_sim::{self as sim, SimConfig, SimHandle};

mod support;

use support::client::{Resp, final_op, send};
use support::gateway::{TestGateway, redis_block, spawn_gateway};
use support::redis::RedisServer;

const PATH: &str = "/api/price-calculations";

/// One compute route with `lease` and an admin token, plus `[redis]` when `redis`.
fn config(lease: &str, redis: bool) -> String {
    let mut c = format!(
        r#"
upstream = "http://127.0.0.1:1"

[admin]
token = "s3cret"

[[route]]
name = "price-calculation"
methods = ["POST"]
path = "{PATH}"
response_timeout = "20s"
[route.compute]
key = ["model_hash", "material", "quantity"]
version = "1"
ttl = "1h"
lease = "{lease}"
"#
    );
    if redis {
        c.push_str(&redis_block());
    }
    c
}

async fn mes(latency: Duration) -> SimHandle {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = SimConfig::instant();
    cfg.orders = 10;
    cfg.price_latency = latency;
    sim::spawn(l, cfg)
}

fn body(hash: &str, quantity: u32) -> String {
    format!(r#"{{"model_hash":"{hash}","material":"Steel","quantity":{quantity}}}"#)
}

async fn price(base: &str, body: &str) -> Resp {
    let url = format!("{base}{PATH}");
    let json = [("content-type", "application/json")];
    send(Method::POST, &url, &json, Bytes::from(body.to_owned())).await
}

fn base(gw: &TestGateway) -> String {
    gw.url("")
}

/// Polls `cond` every 5 ms until it holds, failing with `what` after 10 s.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn count(gw: &TestGateway, kind: &str) -> u64 {
    let counts = gw.gateway.computer().stats().counts();
    counts.iter().find(|(k, _)| *k == kind).unwrap().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_identical_requests_over_two_instances_compute_once() {
    let redis = RedisServer::start().await;
    let mes = mes(Duration::from_millis(800)).await;
    let cfg = config("2s", true);
    let a = spawn_gateway(&cfg, &mes.base_url(), Some(&redis.url())).await;
    let b = spawn_gateway(&cfg, &mes.base_url(), Some(&redis.url())).await;
    let req = body("h100", 7);
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let url = if i % 2 == 0 { base(&a) } else { base(&b) };
            let req = req.clone();
            tokio::spawn(async move { price(&url, &req).await })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    assert_eq!(
        mes.price_runs("h100", "Steel", 7),
        1,
        "one computation for 100 requests"
    );
    let first = answers[0].json();
    assert!(first["price"].as_f64().unwrap() > 0.0);
    for r in &answers {
        assert_eq!(r.status, 200);
        assert_eq!(r.json(), first, "one answer for all");
        assert!(
            ["MISS", "HIT-L2", "HIT-L1"].contains(&r.x_cache()),
            "{}",
            r.x_cache()
        );
    }
    let sum = |kind: &str| count(&a, kind) + count(&b, kind);
    assert_eq!(sum("started"), 1);
    // Each request was the computation, or waited on its instance's flight, or (on the
    // other instance) its flight waited on the lease or found the result kept.
    let joined = sum("joined_local") + sum("joined_remote") + sum("hit");
    assert_eq!(1 + joined, 100);
    assert!(
        sum("joined_local") >= 90,
        "the crowd gathered on two flights"
    );
    // A repeat is a hit on both instances; a different quantity computes again.
    for gw in [&a, &b] {
        let again = price(&base(gw), &req).await;
        assert_eq!(again.x_cache(), "HIT-L1");
        assert_eq!(again.json(), first);
    }
    assert_eq!(mes.price_runs("h100", "Steel", 7), 1);
    let other = price(&base(&a), &body("h100", 8)).await;
    assert_eq!(other.status, 200);
    assert_eq!(other.x_cache(), "MISS");
    assert_ne!(other.json()["price"], first["price"]);
    assert_eq!(mes.price_runs("h100", "Steel", 8), 1);
    // The metrics show it, and the time the hits and joins spared.
    let text = a.gateway.metrics().render(&a.gateway.snapshot());
    assert!(
        text.contains("mesgate_compute_events_total{kind=\"hit\"} 1"),
        "{text}"
    );
    let saved = text
        .lines()
        .find_map(|l| l.strip_prefix("mesgate_compute_saved_seconds_total "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap();
    assert!(
        saved >= 0.8 * 50.0,
        "about 50 requests on a spared 0.8 s each: {saved}"
    );
}

#[tokio::test]
async fn field_order_spacing_and_number_spelling_share_a_key_but_7_and_7_0_do_not() {
    let redis = RedisServer::start().await;
    let mes = mes(Duration::ZERO).await;
    let gw = spawn_gateway(&config("2s", true), &mes.base_url(), Some(&redis.url())).await;
    let first = price(&base(&gw), &body("canon", 7)).await;
    assert_eq!((first.status.as_u16(), first.x_cache()), (200, "MISS"));
    let respelled = [
        r#"{"quantity":7,"material":"Steel","model_hash":"canon"}"#,
        "{ \"model_hash\" : \"can\\u006fn\",\n  \"material\":\"Steel\" , \"quantity\":  7 }",
        r#"{"material":"Steel","quantity":7,"model_hash":"canon","comment":"ignored"}"#,
    ];
    for b in respelled {
        let r = price(&base(&gw), b).await;
        assert_eq!(r.x_cache(), "HIT-L1", "{b}");
        assert_eq!(r.json(), first.json());
    }
    assert_eq!(mes.price_runs("canon", "Steel", 7), 1);
    // 7.0 is another key (the MES parses an integer and refuses it): its 400 is the
    // MES's own, and it is not kept, so 7.0 asks again; 7.00 is 7.0.
    let before = mes.stats().price;
    for b in [
        r#"{"model_hash":"canon","material":"Steel","quantity":7.0}"#,
        r#"{"model_hash":"canon","material":"Steel","quantity":7.00}"#,
    ] {
        let r = price(&base(&gw), b).await;
        assert_eq!(r.status, 400, "{b}");
        assert_eq!(r.x_cache(), "MISS");
        assert!(
            r.header("cache-status").contains("no-store"),
            "{}",
            r.header("cache-status")
        );
    }
    assert_eq!(mes.stats().price, before + 2, "an error is never kept");
}

#[tokio::test]
async fn an_mes_error_is_not_kept_and_a_body_without_its_key_fields_is_forwarded() {
    let redis = RedisServer::start().await;
    let mes = mes(Duration::ZERO).await;
    let gw = spawn_gateway(&config("2s", true), &mes.base_url(), Some(&redis.url())).await;
    // quantity 0: a key, but the MES refuses it.
    for _ in 0..2 {
        let r = price(&base(&gw), &body("err", 0)).await;
        assert_eq!(r.status, 400);
        assert_eq!(r.x_cache(), "MISS");
    }
    assert_eq!(
        mes.stats().price,
        2,
        "the 400 was asked twice, never served from cache"
    );
    // A missing or mistyped key field: forwarded as sent, the MES's 400 passed on.
    for b in [
        r#"{"model_hash":"err","material":"Steel"}"#,
        r#"{"model_hash":"err","material":null,"quantity":1}"#,
        "not json",
    ] {
        let r = price(&base(&gw), b).await;
        assert_eq!(r.status, 400, "{b}");
        assert_eq!(r.x_cache(), "BYPASS");
        assert_eq!(
            r.header("cache-status"),
            "mesgate; fwd=bypass; detail=key-fields"
        );
    }
    assert_eq!(mes.stats().price, 5);
    assert_eq!(count(&gw, "bypass"), 3);
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_nothing_and_the_result_is_kept() {
    use tokio::io::AsyncWriteExt;
    let redis = RedisServer::start().await;
    let mes = mes(Duration::from_millis(600)).await;
    let cfg = config("2s", true);
    let a = spawn_gateway(&cfg, &mes.base_url(), Some(&redis.url())).await;
    let b = spawn_gateway(&cfg, &mes.base_url(), Some(&redis.url())).await;
    let req = body("gone", 3);
    let mut s = tokio::net::TcpStream::connect(a.addr).await.unwrap();
    let head = format!(
        "POST {PATH} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{req}",
        req.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    until("the computation to start", || {
        mes.price_runs("gone", "Steel", 3) == 1
    })
    .await;
    // RST: linger 0 resets the connection on close (deprecated because a non-zero
    // linger blocks the thread on drop; a zero one returns at once).
    #[allow(deprecated)]
    s.set_linger(Some(Duration::ZERO)).unwrap();
    drop(s);
    // The other instance waits for that computation's result rather than asking again.
    let r = price(&base(&b), &req).await;
    assert_eq!(r.status, 200);
    assert_eq!(mes.price_runs("gone", "Steel", 3), 1);
    // The instance whose client left kept the result too.
    let again = price(&base(&a), &req).await;
    assert_eq!(again.x_cache(), "HIT-L1");
    assert_eq!(again.json(), r.json());
    assert_eq!(mes.price_runs("gone", "Steel", 3), 1);
}

/// Over HTTP/2 a client that gives up resets its stream, and the server drops the
/// request's handler at once (HTTP/1.1 notices a closed socket only when it writes): the
/// computation it started must run on, and its result be kept.
#[tokio::test]
async fn a_reset_h2_stream_cancels_nothing_and_the_result_is_kept() {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let redis = RedisServer::start().await;
    let mes = mes(Duration::from_millis(600)).await;
    let cfg = config("2s", true);
    let a = spawn_gateway(&cfg, &mes.base_url(), Some(&redis.url())).await;
    let req = body("reset", 6);
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<Bytes>>();
    let h2 = http::Request::post(a.url(PATH))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from(req.clone())))
        .unwrap();
    let asking = tokio::spawn(async move { client.request(h2).await.map(|_| ()) });
    until("the computation to start", || {
        mes.price_runs("reset", "Steel", 6) == 1
    })
    .await;
    // Dropping the request (and the client) resets the stream and closes the connection.
    asking.abort();
    let _ = asking.await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let kept = loop {
        let r = price(&base(&a), &req).await;
        if r.x_cache() == "HIT-L1" {
            break r;
        }
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert!(Instant::now() < deadline, "the result was never kept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(kept.json()["price"].as_f64().unwrap() > 0.0);
    assert_eq!(
        mes.price_runs("reset", "Steel", 6),
        1,
        "computed once, for the client that left"
    );
}

#[tokio::test]
async fn without_redis_an_instance_still_computes_once_per_key() {
    let mes = mes(Duration::from_millis(300)).await;
    let gw = spawn_gateway(&config("2s", false), &mes.base_url(), None).await;
    let req = body("solo", 2);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (url, req) = (base(&gw), req.clone());
            tokio::spawn(async move { price(&url, &req).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().status, 200);
    }
    assert_eq!(mes.price_runs("solo", "Steel", 2), 1);
    assert_eq!(price(&base(&gw), &req).await.x_cache(), "HIT-L1");
}

#[tokio::test]
async fn with_redis_dead_each_instance_still_computes_a_key_once() {
    let mut redis = RedisServer::start().await;
    let mes = mes(Duration::from_millis(300)).await;
    let gw = spawn_gateway(&config("2s", true), &mes.base_url(), Some(&redis.url())).await;
    redis.stop();
    let req = body("dead", 4);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (url, req) = (base(&gw), req.clone());
            tokio::spawn(async move { price(&url, &req).await })
        })
        .collect();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.x_cache(), "MISS");
    }
    assert_eq!(mes.price_runs("dead", "Steel", 4), 1);
    assert_eq!(price(&base(&gw), &req).await.x_cache(), "HIT-L1");
}

#[tokio::test]
async fn an_admin_purge_by_key_fields_drops_the_result_on_every_instance() {
    let redis = RedisServer::start().await;
    let mes = mes(Duration::ZERO).await;
    let cfg = config("2s", true);
    let a = spawn_gateway(&cfg, &mes.base_url(), Some(&redis.url())).await;
    let b = spawn_gateway(&cfg, &mes.base_url(), Some(&redis.url())).await;
    let req = body("purged", 5);
    price(&base(&a), &req).await;
    assert_eq!(price(&base(&b), &req).await.x_cache(), "HIT-L2");
    assert_eq!(price(&base(&b), &req).await.x_cache(), "HIT-L1");
    let admin = a.admin().await;
    let url = format!("{admin}/admin/purge/compute?route=price-calculation");
    let auth = [("authorization", "Bearer s3cret")];
    // Other spellings of the same key fields purge the same key.
    let respelled = r#"{"quantity":5,"model_hash":"purged","material":"Steel"}"#;
    let r = send(Method::POST, &url, &auth, Bytes::from(respelled)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["shared_error"], serde_json::Value::Null);
    // B hears of it over Redis.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = price(&base(&b), &req).await;
        if r.x_cache() == "MISS" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b still serves the purged result"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mes.price_runs("purged", "Steel", 5), 2);
    let bad = send(Method::POST, &url, &auth, Bytes::from_static(b"{}")).await;
    assert_eq!(bad.status, 400);
}

/// Kills the child on drop, so a failed assertion leaves no process behind.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaseholder_killed_mid_computation_another_instance_takes_over() {
    let redis = RedisServer::start().await;
    let mes = mes(Duration::from_millis(1500)).await;
    let cfg = config("900ms", true);
    let file = std::env::temp_dir().join(format!(
        "mesgate-compute-{}.toml",
        support::process::free_port()
    ));
    std::fs::write(&file, &cfg).unwrap();
    let (child, port) = support::process::start_binary(&file, &mes.base_url(), &redis.url()).await;
    let mut child = Child(child);
    let b = spawn_gateway(&cfg, &mes.base_url(), Some(&redis.url())).await;
    let req = body("killed", 9);
    let on_a = {
        let (url, req) = (format!("http://127.0.0.1:{port}"), req.clone());
        tokio::spawn(async move {
            let url = format!("{url}{PATH}");
            let r = support::client::client()
                .request(
                    http::Request::post(url)
                        .header("content-type", "application/json")
                        .body(http_body_util::Full::new(Bytes::from(req)))
                        .unwrap(),
                )
                .await;
            r.map(|r| r.status().as_u16())
        })
    };
    until("the process to start computing", || {
        mes.price_runs("killed", "Steel", 9) == 1
    })
    .await;
    let waiters: Vec<_> = (0..10)
        .map(|_| {
            let (url, req) = (base(&b), req.clone());
            tokio::spawn(async move { price(&url, &req).await })
        })
        .collect();
    until("b's requests to gather on one flight", || {
        count(&b, "joined_local") == 9
    })
    .await;
    let killed = Command::new("kill")
        .args(["-KILL", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let _ = child.0.wait();
    let mut answers = Vec::new();
    for w in waiters {
        answers.push(w.await.unwrap());
    }
    for r in &answers {
        assert_eq!(r.status, 200, "every waiter gets an answer");
        assert_eq!(r.json(), answers[0].json());
    }
    assert!(
        on_a.await.unwrap().is_err(),
        "the killed instance's client lost its answer"
    );
    assert_eq!(
        mes.price_runs("killed", "Steel", 9),
        2,
        "b computed once more, no more"
    );
    assert_eq!(count(&b, "takeover"), 1);
    assert_eq!(count(&b, "started"), 1);
    let _ = std::fs::remove_file(&file);
}

/// `Prefer: respond-async`: `202` and an operation, read on the other instance; the
/// queue's consumer computes it through the compute path (once), records the result, and
/// keeps it like any other: a later synchronous request is a hit with the same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn respond_async_is_accepted_then_computed_once_and_kept() {
    let redis = RedisServer::start().await;
    let mes = mes(Duration::from_millis(300)).await;
    let cfg = config("2s", true);
    let a = spawn_gateway(&cfg, &mes.base_url(), Some(&redis.url())).await;
    let b = spawn_gateway(&cfg, &mes.base_url(), Some(&redis.url())).await;
    let req = body("hasync", 3);
    let headers = [
        ("content-type", "application/json"),
        ("prefer", "respond-async"),
    ];
    let url = format!("{}{PATH}", base(&a));
    let r = send(Method::POST, &url, &headers, Bytes::from(req.clone())).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("preference-applied"), "respond-async");
    let location = r.header("location").to_owned();
    assert!(location.starts_with("/mesgate/operations/"), "{location}");
    let op = final_op(&base(&b), &location).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(op["status"], 200, "{op}");
    assert_eq!(mes.price_runs("hasync", "Steel", 3), 1);
    let again = price(&base(&b), &req).await;
    assert_eq!(again.status, 200);
    assert!(
        ["HIT-L1", "HIT-L2"].contains(&again.x_cache()),
        "{}",
        again.x_cache()
    );
    assert_eq!(
        again.json(),
        op["response"],
        "the recorded answer is the kept one"
    );
    assert_eq!(mes.price_runs("hasync", "Steel", 3), 1, "computed once");
}
