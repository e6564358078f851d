//! Asynchronous writes (RFC 7240): `Prefer: respond-async` gets 202 + `Location`, the
//! operation is executed from a Redis Stream by any instance (one killed after its 202
//! included), its outcome and its invalidation are both applied, a retry is harmless.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use mes_sim::{self as sim, SimConfig, SimHandle};
use mesgate::operations::StoredRequest;
use mesgate::operations::store::{GROUP, Start, Store};

mod support;
use support::client::{Resp, final_op, get, other_status, send};
use support::gateway::{TestGateway, redis_block, spawn_gateway};
use support::redis::RedisServer;

/// Detail and list cached, the status change asynchronous when asked; claims after 500ms.
fn config(redis: &str) -> String {
    format!(
        r#"
upstream = "http://127.0.0.1:1"

[[route]]
name = "order-detail"
path = "/api/orders/{{id:u64}}"
[route.cache]
families = ["order:{{path.id}}"]
members = {{ entity = "order:{{item.id}}", member_of = ["status:{{item.status}}"] }}
ttl_l1 = "30s"
ttl_l2 = "60s"

[[route]]
name = "order-list"
path = "/api/orders"
[route.cache]
query = ["status", "page=1", "size=50"]
families = ["status:{{query.status|all}}"]
members = {{ items = "items", entity = "order:{{item.id}}", member_of = ["status:{{item.status}}"] }}
ttl_l1 = "30s"
ttl_l2 = "60s"

[[route]]
name = "status-change"
methods = ["PATCH"]
path = "/api/orders/{{id:u64}}/status"
[route.invalidate]
families = ["status:{{request.status}}", "status:all", "order:{{path.id}}"]
entity = "order:{{path.id}}"
fallback = ["status"]
represents = "/api/orders/{{path.id}}"
async = true

[operations]
claim_idle = "500ms"
{redis}"#
    )
}

async fn mes(write_latency: Duration) -> SimHandle {
    let mut cfg = SimConfig::instant();
    cfg.orders = 200;
    cfg.write_latency = write_latency;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    sim::spawn(l, cfg)
}

async fn patch(base: &str, id: u64, status: &str, prefer: Option<&str>) -> Resp {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(p) = prefer {
        headers.push(("prefer", p));
    }
    let url = format!("{base}/api/orders/{id}/status");
    let body = Bytes::from(format!("{{\"status\":\"{status}\"}}"));
    send(Method::PATCH, &url, &headers, body).await
}

fn status_of(r: &Resp) -> String {
    r.json()["status"].as_str().unwrap().to_owned()
}

async fn two(mes: &SimHandle, redis: &RedisServer) -> (TestGateway, TestGateway) {
    let cfg = config(&redis_block());
    let a = spawn_gateway(&cfg, &mes.base_url(), Some(&redis.url())).await;
    let b = spawn_gateway(&cfg, &mes.base_url(), Some(&redis.url())).await;
    (a, b)
}

#[tokio::test]
async fn respond_async_is_accepted_then_applied_and_its_invalidation_too() {
    let redis = RedisServer::start().await;
    let mes = mes(Duration::ZERO).await;
    let gw = spawn_gateway(&config(&redis_block()), &mes.base_url(), Some(&redis.url())).await;
    let base = gw.url("");
    let id = 17;
    let detail = format!("{base}/api/orders/{id}");
    let before = get(&detail).await;
    assert_eq!(get(&detail).await.x_cache(), "HIT-L1");
    let old = status_of(&before);
    let target = other_status(&old);
    let list = format!("{base}/api/orders?status={target}");
    assert!(!get(&list).await.item_ids().contains(&id));
    assert_eq!(get(&list).await.x_cache(), "HIT-L1");
    mes.reset_stats();

    let r = patch(&base, id, target, Some("respond-async")).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("preference-applied"), "respond-async");
    let location = r.header("location").to_owned();
    assert!(location.starts_with("/mesgate/operations/"), "{location}");
    assert_eq!(r.json()["state"], "queued");

    let op = final_op(&base, &location).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(op["status"], 200);
    assert_eq!(op["response"]["status"], target);
    assert_eq!(op["attempts"], 1);
    assert!(op["finished_at"].is_string() && op["accepted_at"].is_string());
    assert_eq!(mes.order_status(id).as_deref(), Some(target));
    assert_eq!(mes.stats().status_change, 1);

    // Marked succeeded only after the invalidation: the cached pages show the change.
    let after = get(&detail).await;
    assert_eq!(status_of(&after), target);
    assert!(get(&list).await.item_ids().contains(&id));
    assert_eq!(mes.stats().detail, 1, "the detail was fetched again once");
    assert_eq!(mes.stats().list, 1, "the list was fetched again once");
    gw.stop().await;
}

#[tokio::test]
async fn without_prefer_nothing_changes_and_wait_answers_synchronously() {
    let redis = RedisServer::start().await;
    let mes = mes(Duration::ZERO).await;
    let cfg = config(&redis_block());
    let gw = spawn_gateway(&cfg, &mes.base_url(), Some(&redis.url())).await;
    let base = gw.url("");
    let old = mes.order_status(5).unwrap();
    let target = other_status(&old);
    let r = patch(&base, 5, target, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("preference-applied"), "");
    assert_eq!(status_of(&r), target);

    let back = old.as_str();
    let r = patch(&base, 5, back, Some("respond-async, wait=10")).await;
    assert_eq!(r.status, 200, "the MES answered within the wait");
    assert_eq!(status_of(&r), back);
    assert_eq!(r.header("content-type"), "application/json");
    let location = r.header("content-location").to_owned();
    assert!(location.starts_with("/mesgate/operations/"), "{location}");
    assert_eq!(
        get(&format!("{base}{location}")).await.json()["state"],
        "succeeded"
    );
    assert_eq!(mes.stats().status_change, 2);
    gw.stop().await;
}

#[tokio::test]
async fn the_operation_is_read_on_another_instance_and_bad_ids_are_problems() {
    let redis = RedisServer::start().await;
    let mes = mes(Duration::ZERO).await;
    let (a, b) = two(&mes, &redis).await;
    let target = other_status(&mes.order_status(9).unwrap());
    let r = patch(&a.url(""), 9, target, Some("respond-async")).await;
    assert_eq!(r.status, 202);
    let op = final_op(&b.url(""), r.header("location")).await;
    assert_eq!(op["state"], "succeeded");
    assert_eq!(op["response"]["status"], target);
    assert_eq!(
        mes.stats().status_change,
        1,
        "executed once, by one instance"
    );

    let unknown = get(&b.url("/mesgate/operations/0123456789abcdef0123456789abcdef")).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.header("content-type"), "application/problem+json");
    assert_eq!(
        unknown.json()["type"],
        "urn:mesgate:problem:operation-not-found"
    );
    let bad = get(&b.url("/mesgate/operations/..%2Fsecret")).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["type"], "urn:mesgate:problem:bad-operation-id");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn redis_down_answers_the_write_synchronously() {
    let mes = mes(Duration::ZERO).await;
    // A Redis that is not there: nothing can be recorded durably.
    let gw = spawn_gateway(
        &config(&redis_block()),
        &mes.base_url(),
        Some("redis://127.0.0.1:1"),
    )
    .await;
    let target = other_status(&mes.order_status(3).unwrap());
    let r = patch(&gw.url(""), 3, target, Some("respond-async")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("preference-applied"), "");
    assert_eq!(status_of(&r), target);
    assert_eq!(mes.stats().status_change, 1);
    gw.stop().await;
}

/// The first attempt reached the MES and its instance died before recording anything
/// (the entry is pending at a consumer that is gone): the retry's 409 is checked against
/// the order, reported as applied, and its invalidation applied; the outcome once.
#[tokio::test]
async fn a_retried_operation_is_not_applied_twice() {
    let redis = RedisServer::start().await;
    let mes = mes(Duration::ZERO).await;
    let gw = spawn_gateway(&config(&redis_block()), &mes.base_url(), Some(&redis.url())).await;
    let base = gw.url("");
    let id = 21;
    let detail = format!("{base}/api/orders/{id}");
    let old = status_of(&get(&detail).await);
    let target = other_status(&old);
    assert_eq!(get(&detail).await.x_cache(), "HIT-L1");

    // The dead attempt: recorded, delivered to a consumer that never comes back, taken
    // (attempt 1), and applied by the MES.
    let store = Store::new(gw.gateway.l2().unwrap().clone());
    let op = "feedfacefeedfacefeedfacefeedface";
    let body = format!("{{\"status\":\"{target}\"}}");
    let req = StoredRequest {
        method: "PATCH".into(),
        target: format!("/api/orders/{id}/status"),
        headers: vec![("content-type".into(), "application/json".into())],
        body: Bytes::from(body.clone()),
        remote: "127.0.0.1:9".into(),
    };
    let mut c = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // The live consumer must not take it first: the ghost reads it in the same MULTI
    // that records it (the group made first).
    let _: redis::Value = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(store.queue_key())
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut c)
        .await
        .unwrap_or(redis::Value::Nil);
    ghost_takes(&store, &mut c, op, &req).await;
    let Start::Run { attempt, .. } = store.start(op).await.unwrap() else {
        panic!("the record was just made");
    };
    assert_eq!(attempt, 1);
    let direct = patch(&mes.base_url(), id, target, None).await;
    assert_eq!(direct.status, 200, "the first attempt reached the MES");
    assert_eq!(
        get(&detail).await.x_cache(),
        "HIT-L1",
        "and mesgate never knew"
    );
    mes.reset_stats();

    let op_json = final_op(&base, &format!("/mesgate/operations/{op}")).await;
    assert_eq!(op_json["state"], "succeeded", "{op_json}");
    assert_eq!(op_json["status"], 200);
    assert_eq!(op_json["attempts"], 2);
    assert_eq!(op_json["response"]["status"], target);
    let s = mes.stats();
    assert_eq!(s.status_change, 1, "sent again once (answered 409)");
    assert_eq!(mes.order_status(id).as_deref(), Some(target));
    // The retry applied the invalidation the dead attempt never did.
    assert_eq!(status_of(&get(&detail).await), target);

    // Recorded once: a late outcome from another attempt changes nothing.
    let late = mesgate::operations::Outcome {
        status: 409,
        content_type: None,
        body: Bytes::from_static(b"late"),
    };
    assert!(!store.finish(op, &late).await.unwrap());
    let again = get(&format!("{base}/mesgate/operations/{op}")).await.json();
    assert_eq!(again["status"], 200);
    assert_eq!(again["state"], "succeeded");
    gw.stop().await;
}

/// Records `op` and makes it pending at consumer `ghost` atomically (the live consumer
/// cannot read it first): MULTI with the record's fields, XADD and XREADGROUP.
async fn ghost_takes(
    store: &Store,
    c: &mut redis::aio::MultiplexedConnection,
    op: &str,
    req: &StoredRequest,
) {
    let headers = serde_json::to_string(&req.headers).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut p = redis::pipe();
    p.atomic();
    p.cmd("HSET")
        .arg(store.record_key(op))
        .arg(&[
            ("state", "queued"),
            ("method", req.method.as_str()),
            ("target", req.target.as_str()),
            ("headers", headers.as_str()),
            ("remote", req.remote.as_str()),
            ("attempts", "0"),
        ])
        .arg("body")
        .arg(req.body.as_ref())
        .arg("accepted_at")
        .arg(now)
        .ignore();
    p.cmd("XADD")
        .arg(store.queue_key())
        .arg("*")
        .arg("op")
        .arg(op)
        .ignore();
    p.cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg("ghost")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(store.queue_key())
        .arg(">")
        .ignore();
    let _: () = p.query_async(c).await.unwrap();
}

/// The real binary accepts an operation and is SIGKILLed while its attempt is at the MES;
/// another instance claims it and carries it out.
#[tokio::test]
async fn an_operation_survives_the_instance_that_accepted_it_being_killed() {
    let redis = RedisServer::start().await;
    let mes = mes(Duration::from_millis(800)).await;
    let block = redis_block();
    let cfg = config(&block);
    let file = std::env::temp_dir().join(format!(
        "mesgate-async-{}-{}.toml",
        std::process::id(),
        support::process::free_port()
    ));
    std::fs::write(&file, &cfg).unwrap();
    let (mut child, port) =
        support::process::start_binary(&file, &mes.base_url(), &redis.url()).await;
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let id = 33;
    let target = other_status(&mes.order_status(id).unwrap());
    let r = patch(&base, id, target, Some("respond-async")).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let location = r.header("location").to_owned();
    while mes.stats().status_change == 0 {
        assert!(
            Instant::now() < deadline,
            "the operation never reached the MES"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    let _ = std::fs::remove_file(&file);

    let b = spawn_gateway(&cfg, &mes.base_url(), Some(&redis.url())).await;
    let op = final_op(&b.url(""), &location).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(op["status"], 200);
    assert_eq!(op["attempts"], 2, "the killed attempt and the claimed one");
    assert_eq!(op["response"]["status"], target);
    assert_eq!(mes.order_status(id).as_deref(), Some(target));
    assert_eq!(mes.stats().status_change, 2);
    let detail = get(&b.url(&format!("/api/orders/{id}"))).await;
    assert_eq!(status_of(&detail), target);
    b.stop().await;
}

#[tokio::test]
async fn an_operation_is_tried_again_while_the_mes_is_unreachable_then_fails_or_applies() {
    let redis = RedisServer::start().await;
    // Nothing listens there yet: every attempt finds the MES unreachable.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = config(&redis_block()).replace(
        "claim_idle = \"500ms\"",
        "claim_idle = \"500ms\"\nmax_attempts = 4\nretry_backoff = \"200ms\"",
    );
    let gw = spawn_gateway(
        &cfg,
        &format!("http://127.0.0.1:{port}"),
        Some(&redis.url()),
    )
    .await;
    let base = gw.url("");

    // Never reachable: four attempts, then failed with mesgate's 502.
    let r = patch(&base, 17, "SHIPPED", Some("respond-async")).await;
    assert_eq!(r.status, 202);
    let op = final_op(&base, r.header("location")).await;
    assert_eq!(op["state"], "failed", "{op}");
    assert_eq!(op["status"], 502);
    assert_eq!(op["attempts"], 4);
    assert_eq!(
        op["response"]["type"],
        "urn:mesgate:problem:upstream-unreachable"
    );

    // Reachable from the third attempt on: applied once.
    let id = 18;
    let target = other_status(&mes(Duration::ZERO).await.order_status(id).unwrap());
    let r = patch(&base, id, target, Some("respond-async")).await;
    assert_eq!(r.status, 202);
    let location = r.header("location").to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let op = get(&format!("{base}{location}")).await.json();
        assert_eq!(op["state"], "running", "tried again, not final: {op}");
        if op["attempts"].as_u64() >= Some(2) {
            break;
        }
        assert!(Instant::now() < deadline, "no second attempt: {op}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut sim_cfg = SimConfig::instant();
    sim_cfg.orders = 200;
    let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let mes = sim::spawn(l, sim_cfg);
    let op = final_op(&base, &location).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(op["status"], 200);
    assert!(matches!(op["attempts"].as_u64(), Some(3 | 4)), "{op}");
    assert_eq!(mes.order_status(id).as_deref(), Some(target));
    assert_eq!(mes.stats().status_change, 1);
    gw.stop().await;
}
