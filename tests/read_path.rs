//! The two-tier read path end to end: a real Redis, a counting fake MES, the gateway on port 0.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use mesgate::breaker::BreakerState;
use mesgate::clock::Clock;
use support::client::{get, get_with};
use support::fake_mes::{FakeMes, Gate, full};
use support::gateway::{list_config, redis_block, spawn_gateway, spawn_with_clock, test_config};
use support::redis::RedisServer;

const LIST: &str = r#"{"items":[{"id":1,"status":"SUBMITTED"}],"page":1,"size":50,"total":1}"#;

#[tokio::test]
async fn miss_then_l1_hit_then_l2_hit_after_l1_flush() {
    let redis = RedisServer::start().await;
    let mes = FakeMes::builder().json("/api/orders", LIST).start().await;
    let cfg = format!("{}{}", list_config(""), redis_block());
    let gw = spawn_gateway(&cfg, &mes.url(), Some(&redis.url())).await;
    let url = gw.url("/api/orders?status=SUBMITTED");

    let r = get(&url).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.x_cache(), "MISS");
    assert!(
        r.header("cache-status").contains("fwd=miss"),
        "{:?}",
        r.headers
    );
    assert!(r.header("cache-status").contains("stored"));
    assert_eq!(r.body, LIST);
    assert_eq!(mes.hits("/api/orders"), 1);
    assert_eq!(
        redis.dbsize().await,
        1,
        "the miss was stored in Redis before it answered"
    );

    let r = get(&url).await;
    assert_eq!(r.x_cache(), "HIT-L1");
    assert_eq!(r.header("cache-status"), "mesgate; hit; detail=l1");
    assert_eq!(r.header("age"), "0");
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.body, LIST);
    assert_eq!(mes.hits("/api/orders"), 1);

    gw.gateway.l1().clear();
    let r = get(&url).await;
    assert_eq!(r.x_cache(), "HIT-L2");
    assert_eq!(r.header("cache-status"), "mesgate; hit; detail=l2");
    assert_eq!(r.body, LIST);
    assert_eq!(mes.hits("/api/orders"), 1);

    let r = get(&url).await;
    assert_eq!(r.x_cache(), "HIT-L1", "an L2 hit fills L1");
    assert_eq!(mes.hits("/api/orders"), 1);
}

#[tokio::test]
async fn a_second_instance_hits_the_shared_tier() {
    let redis = RedisServer::start().await;
    let mes = FakeMes::builder().json("/api/orders", LIST).start().await;
    let cfg = format!("{}{}", list_config(""), redis_block());
    let a = spawn_gateway(&cfg, &mes.url(), Some(&redis.url())).await;
    let b = spawn_gateway(&cfg, &mes.url(), Some(&redis.url())).await;
    assert_eq!(get(&a.url("/api/orders")).await.x_cache(), "MISS");
    assert_eq!(get(&b.url("/api/orders")).await.x_cache(), "HIT-L2");
    assert_eq!(mes.hits("/api/orders"), 1);
}

#[tokio::test]
async fn defaults_and_parameter_order_share_one_entry() {
    let mes = FakeMes::builder().json("/api/orders", LIST).start().await;
    let gw = spawn_gateway(&list_config(""), &mes.url(), None).await;
    assert_eq!(
        get(&gw.url("/api/orders?status=SHIPPED")).await.x_cache(),
        "MISS"
    );
    let same = [
        "/api/orders?page=1&status=SHIPPED",
        "/api/orders?size=50&status=SHIPPED&page=1",
        "/api/orders?status=SHIPP%45D",
    ];
    for path in same {
        assert_eq!(get(&gw.url(path)).await.x_cache(), "HIT-L1", "{path}");
    }
    assert_eq!(mes.hits("/api/orders"), 1);
    assert_eq!(
        get(&gw.url("/api/orders?status=SHIPPED&page=2"))
            .await
            .x_cache(),
        "MISS"
    );
    assert_eq!(get(&gw.url("/api/orders")).await.x_cache(), "MISS");
    assert_eq!(mes.hits("/api/orders"), 3);
}

#[tokio::test]
async fn unknown_parameter_bypasses_by_default() {
    let mes = FakeMes::builder().json("/api/orders", LIST).start().await;
    let gw = spawn_gateway(&list_config(""), &mes.url(), None).await;
    for _ in 0..2 {
        let r = get(&gw.url("/api/orders?status=SHIPPED&debug=1")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.x_cache(), "BYPASS");
        assert_eq!(
            r.header("cache-status"),
            "mesgate; fwd=bypass; detail=unknown-query"
        );
    }
    assert_eq!(
        mes.hits("/api/orders"),
        2,
        "bypassed requests all reach the MES"
    );
    let r = get(&gw.url("/api/orders?status=A&status=B")).await;
    assert_eq!(
        r.header("cache-status"),
        "mesgate; fwd=bypass; detail=repeated-query"
    );
    assert_eq!(mes.hits("/api/orders"), 3);
}

#[tokio::test]
async fn unknown_parameter_is_stripped_when_configured() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    let mes = FakeMes::builder()
        .handler("/api/orders", move |req| {
            log.lock()
                .unwrap()
                .push(req.uri().query().unwrap_or("").to_owned());
            async { http::Response::new(full(LIST)) }
        })
        .start()
        .await;
    let gw = spawn_gateway(&list_config("unknown_query = \"strip\""), &mes.url(), None).await;
    assert_eq!(
        get(&gw.url("/api/orders?status=X&debug=1")).await.x_cache(),
        "MISS"
    );
    assert_eq!(
        get(&gw.url("/api/orders?status=X&trace=2")).await.x_cache(),
        "HIT-L1"
    );
    assert_eq!(mes.hits("/api/orders"), 1);
    assert_eq!(seen.lock().unwrap().as_slice(), ["page=1&size=50&status=X"]);
}

#[tokio::test]
async fn five_hundred_concurrent_misses_make_one_upstream_fetch() {
    let gate = Gate::closed();
    let mes = FakeMes::builder()
        .json("/api/orders", LIST)
        .gate("/api/orders", &gate)
        .start()
        .await;
    let gw = spawn_gateway(&list_config(""), &mes.url(), None).await;
    let url = gw.url("/api/orders?status=SUBMITTED");
    let requests: Vec<_> = (0..500)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    // The crowd has gathered when every request waits on the one flight.
    let deadline = Instant::now() + Duration::from_secs(30);
    while gw.gateway.flights_waiting() < 500 {
        assert!(
            Instant::now() < deadline,
            "only {} waiting",
            gw.gateway.flights_waiting()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The leader's fetch reaches the MES from a task of its own: wait for it too.
    while mes.hits("/api/orders") == 0 {
        assert!(
            Instant::now() < deadline,
            "the leader never reached the MES"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gate.open();
    let mut collapsed = 0;
    for r in requests {
        let r = r.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.x_cache(), "MISS");
        assert_eq!(r.body, LIST);
        collapsed += usize::from(r.header("cache-status").contains("collapsed"));
    }
    assert_eq!(collapsed, 499);
    assert_eq!(mes.hits("/api/orders"), 1, "exactly one upstream fetch");
}

#[tokio::test]
async fn redis_outage_degrades_to_l1_and_mes_then_recovers() {
    let mut redis = RedisServer::start().await;
    let mes = FakeMes::builder().json("/api/orders", LIST).start().await;
    // While Redis is down the instance is cut off from the bus: what it fetches stays in
    // L1 for `cut_off_ttl` only (long here, so the test does not race it).
    let cfg = format!(
        "{}{}cut_off_ttl = \"30s\"\n",
        list_config(""),
        redis_block()
    );
    let gw = spawn_gateway(&cfg, &mes.url(), Some(&redis.url())).await;
    let l2 = gw.gateway.l2().expect("l2 configured");
    assert_eq!(get(&gw.url("/api/orders?page=1")).await.x_cache(), "MISS");

    redis.stop();
    let inv = gw.gateway.invalidator();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !inv.is_cut_off() {
        assert!(Instant::now() < deadline, "the dropped bus was not noticed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut slowest = Duration::ZERO;
    for page in 2..22 {
        let started = Instant::now();
        let r = get(&gw.url(&format!("/api/orders?page={page}"))).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(r.status, 200, "page {page} answered while Redis is down");
        assert_eq!(r.x_cache(), "MISS");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while l2.breaker_state() != BreakerState::Open {
        assert!(Instant::now() < deadline, "the breaker never opened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Cut off, Redis is not even asked: a request costs no op timeout.
    assert!(
        slowest < Duration::from_millis(1_000),
        "slowest {slowest:?}"
    );
    // What L1 held from before the outage is not served (a write elsewhere would go
    // unheard); what was fetched during it is, within `cut_off_ttl`.
    assert_eq!(get(&gw.url("/api/orders?page=1")).await.x_cache(), "MISS");
    assert_eq!(get(&gw.url("/api/orders?page=1")).await.x_cache(), "HIT-L1");
    assert_eq!(get(&gw.url("/api/orders?page=2")).await.x_cache(), "HIT-L1");
    assert_eq!(mes.hits("/api/orders"), 22);

    redis.restart().await;
    // The breaker lets a probe through after its 300ms cool-down; keep asking for new
    // pages until one is stored in Redis again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut page = 100;
    while redis.dbsize().await == 0 {
        assert!(Instant::now() < deadline, "L2 never came back");
        get(&gw.url(&format!("/api/orders?page={page}"))).await;
        page += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.gateway.l1().clear();
    let r = get(&gw.url(&format!("/api/orders?page={}", page - 1))).await;
    assert_eq!(r.x_cache(), "HIT-L2", "L2 used again after Redis returned");
}

#[tokio::test]
async fn stale_if_error_serves_a_marked_stale_entry_within_the_window() {
    let status = Arc::new(AtomicU16::new(200));
    let s = status.clone();
    let mes = FakeMes::builder()
        .handler("/api/orders", move |_| {
            let code = s.load(Ordering::SeqCst);
            async move {
                let mut r = http::Response::new(full(if code == 200 { LIST } else { "down" }));
                *r.status_mut() = http::StatusCode::from_u16(code).unwrap();
                r
            }
        })
        .start()
        .await;
    let cfg = list_config("stale_if_error = \"60s\"").replace(
        "query = [\"status\", \"page=1\", \"size=50\"]\nttl_l1 = \"30s\"",
        "query = [\"status\", \"page=1\", \"size=50\"]\nttl_l1 = \"1s\"",
    );
    let clock = Clock::manual(1_700_000_000_000);
    let gw = spawn_with_clock(test_config(&cfg, &mes.url(), None), clock.clone()).await;
    let url = gw.url("/api/orders");
    assert_eq!(get(&url).await.x_cache(), "MISS");

    clock.advance_ms(2_000);
    status.store(503, Ordering::SeqCst);
    let r = get(&url).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.x_cache(), "STALE");
    assert_eq!(
        r.header("cache-status"),
        "mesgate; fwd=stale; fwd-status=503; detail=stale-if-error"
    );
    assert_eq!(r.header("age"), "2");
    assert_eq!(r.body, LIST);

    clock.advance_ms(60_000);
    let r = get(&url).await;
    assert_eq!(r.status, 503, "past the window the MES's failure shows");
    assert_eq!(r.x_cache(), "MISS");
    assert_eq!(mes.hits("/api/orders"), 3);
}

#[tokio::test]
async fn upstream_down_gives_502_problem_json() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let gw = spawn_gateway(&list_config(""), &dead, None).await;
    for path in ["/api/orders", "/api/other", "/api/orders?debug=1"] {
        let r = get_with(&gw.url(path), &[]).await;
        assert_eq!(r.status, 502, "{path}");
        assert_eq!(r.header("content-type"), "application/problem+json");
        let p = r.json();
        assert_eq!(p["status"], 502);
        assert_eq!(p["type"], "urn:mesgate:problem:upstream-unreachable");
    }
}
