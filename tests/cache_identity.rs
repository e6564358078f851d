//! What makes two requests the same answer, and nothing else: another spelling of an id
//! never becomes a cache identity of its own (the shipped config, the simulator, Redis),
//! and a header outside the key never reaches the MES on a fill (a recording fake MES).

mod support;

use std::sync::{Arc, Mutex};

use http::{HeaderMap, Response};
use mes_sim::{self as sim, SimConfig, SimHandle};
use support::client::{get, get_with, patch_status, patch_status_spelled};
use support::fake_mes::{FakeMes, full};
use support::gateway::{TestGateway, spawn_gateway, without_index};
use support::redis::RedisServer;

/// The shipped config without the index and without refresh on write: a write's effect
/// is what it drops (the next read is a MISS).
fn shipped_config() -> String {
    let text = std::fs::read_to_string("config/mesgate.toml").expect("config/mesgate.toml");
    without_index(&text)
        .lines()
        .filter(|l| !l.starts_with("refresh = "))
        .collect::<Vec<_>>()
        .join("\n")
}

struct Env {
    _redis: RedisServer,
    sim: SimHandle,
    gw: TestGateway,
}

async fn env() -> Env {
    let redis = RedisServer::start().await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = sim::spawn(l, SimConfig::instant());
    let gw = spawn_gateway(&shipped_config(), &sim.base_url(), Some(&redis.url())).await;
    Env {
        _redis: redis,
        sim,
        gw,
    }
}

/// The newest order, its status, and a status to move it to.
async fn an_order(sim: &SimHandle) -> (u64, String, &'static str) {
    let r = get(&format!("{}/api/orders?size=1", sim.base_url())).await;
    let o = &r.json()["items"][0];
    let from = o["status"].as_str().unwrap().to_owned();
    let to = if from == "MANUFACTURING_STARTED" {
        "SHIPPED"
    } else {
        "MANUFACTURING_STARTED"
    };
    (o["id"].as_u64().unwrap(), from, to)
}

/// Issue 13, item 2, from the write side: the MES reads `/api/orders/077` as order 77, so
/// a status change sent as `077` must end the cached detail of `77`.
#[tokio::test]
async fn a_write_through_another_spelling_of_an_id_ends_the_cached_detail() {
    let e = env().await;
    let (id, from, to) = an_order(&e.sim).await;
    let detail = format!("/api/orders/{id}");
    assert_eq!(get(&e.gw.url(&detail)).await.x_cache(), "MISS");
    let r = get(&e.gw.url(&detail)).await;
    assert_eq!(
        (r.x_cache(), r.json()["status"].as_str()),
        ("HIT-L1", Some(&*from))
    );
    let before = e.sim.stats().detail;

    let r = patch_status_spelled(&e.gw.url(""), &format!("0{id}"), to).await;
    assert_eq!(r.status, 200, "the MES parses 0{id} as {id}");
    assert_eq!(r.json()["id"], id);

    let r = get(&e.gw.url(&detail)).await;
    assert_eq!(
        (r.x_cache(), r.json()["status"].as_str()),
        ("MISS", Some(to)),
        "the detail of {id} after a write of 0{id}"
    );
    assert_eq!(e.sim.stats().detail - before, 1, "asked again once");
}

/// Issue 13, item 2, from the read side: `077` is served (a bypass, marked as such) but
/// never cached, so no write of `77` can leave an entry of it behind.
#[tokio::test]
async fn another_spelling_of_an_id_is_never_cached() {
    let e = env().await;
    let (id, from, to) = an_order(&e.sim).await;
    let padded = format!("/api/orders/00{id}");
    let before = e.sim.stats().detail;
    for n in 1..=2 {
        let r = get(&e.gw.url(&padded)).await;
        assert_eq!(r.status, 200, "request {n}");
        assert_eq!(r.json()["status"], from.as_str(), "request {n}");
        assert_eq!(r.x_cache(), "BYPASS", "request {n}: {:?}", r.headers);
        assert_eq!(
            r.header("cache-status"),
            "mesgate; fwd=bypass; detail=non-canonical"
        );
        assert_eq!(
            e.sim.stats().detail - before,
            n,
            "request {n} reached the MES"
        );
    }
    // Statuses have no other spelling: the MES refuses one, and a 400 is never stored.
    let lower = format!("/api/orders?status={}", from.to_lowercase());
    let lists = e.sim.stats().list;
    for n in 1..=2 {
        let r = get(&e.gw.url(&lower)).await;
        assert_eq!((r.status.as_u16(), r.x_cache()), (400, "MISS"), "{lower}");
        assert_eq!(e.sim.stats().list - lists, n, "{lower}: asked each time");
    }
    for odd in [format!("+{id}"), "7_7".to_owned()] {
        let r = get(&e.gw.url(&format!("/api/orders/{odd}"))).await;
        assert_eq!((r.status.as_u16(), r.x_cache()), (404, "BYPASS"), "{odd}");
    }

    let r = patch_status(&e.gw.url(""), id, to).await;
    assert_eq!(r.status, 200);
    let r = get(&e.gw.url(&padded)).await;
    assert_eq!(r.json()["status"], to, "never a stale entry of 00{id}");
    let r = get(&e.gw.url(&format!("/api/orders/{id}"))).await;
    assert_eq!(
        (r.x_cache(), r.json()["status"].as_str()),
        ("MISS", Some(to))
    );
}

/// A fake MES whose `/api/report` answers in the language it is asked for, and to an
/// override with what a DELETE would say; it records the headers of every request.
async fn negotiating_mes() -> (FakeMes, Arc<Mutex<Vec<HeaderMap>>>) {
    let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let record = seen.clone();
    let mes = FakeMes::builder()
        .handler("/api/report", move |req| {
            let h = req.headers().clone();
            record.lock().unwrap().push(h.clone());
            let text = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let body = match text("x-http-method-override") {
                Some(m) => format!(r#"{{"done":"{m}"}}"#),
                None => format!(
                    r#"{{"lang":"{}","host":"{}"}}"#,
                    text("accept-language").unwrap_or_else(|| "en".into()),
                    text("x-forwarded-host").unwrap_or_default()
                ),
            };
            let mut resp = Response::new(full(body));
            resp.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            async move { resp }
        })
        .start()
        .await;
    (mes, seen)
}

fn report_config(vary: &str) -> String {
    format!(
        "upstream = \"http://127.0.0.1:1\"\n[[route]]\nname = \"report\"\npath = \"/api/report\"\n[route.cache]\nttl_l1 = \"30s\"\nttl_l2 = \"60s\"\nvary = [{vary}]\n"
    )
}

/// Headers a caller can send that the key does not account for.
const UNKEYED: [(&str, &str); 6] = [
    ("accept-language", "de"),
    ("accept", "application/xml"),
    ("x-forwarded-host", "evil.example"),
    ("x-api-key", "caller-a"),
    ("user-agent", "caller-a"),
    ("x-original-host", "evil.example"),
];

/// Issue 13, item 6: caller A's unkeyed headers never reach the MES on a fill, so caller
/// B gets the answer every caller would get, and the MES saw none of A's headers.
#[tokio::test]
async fn unkeyed_request_headers_never_shape_a_shared_answer() {
    let (mes, seen) = negotiating_mes().await;
    let gw = spawn_gateway(&report_config(""), &mes.url(), None).await;
    let a = get_with(&gw.url("/api/report"), &UNKEYED).await;
    assert_eq!(a.x_cache(), "MISS");
    assert_eq!(a.json(), serde_json::json!({"lang": "en", "host": ""}));
    let b = get(&gw.url("/api/report")).await;
    assert_eq!(b.x_cache(), "HIT-L1");
    assert_eq!(b.body, a.body);
    assert_eq!(mes.hits("/api/report"), 1);
    let sent = seen.lock().unwrap()[0].clone();
    for (name, _) in UNKEYED {
        assert!(
            sent.get(name).is_none_or(|v| v != "caller-a" && v != "de"),
            "the fill carried {name}: {sent:?}"
        );
    }
    assert!(sent.get("x-forwarded-host").is_none(), "{sent:?}");
    assert!(sent.get("accept").is_none(), "{sent:?}");

    // A header the route varies on is in the key: it reaches the MES, per value.
    let (mes, seen) = negotiating_mes().await;
    let gw = spawn_gateway(&report_config("\"accept-language\""), &mes.url(), None).await;
    let de = get_with(&gw.url("/api/report"), &UNKEYED).await;
    assert_eq!(
        (de.x_cache(), de.json()["lang"].as_str()),
        ("MISS", Some("de"))
    );
    let en = get(&gw.url("/api/report")).await;
    assert_eq!(
        (en.x_cache(), en.json()["lang"].as_str()),
        ("MISS", Some("en"))
    );
    let de = get_with(&gw.url("/api/report"), &[("accept-language", "de")]).await;
    assert_eq!(
        (de.x_cache(), de.json()["lang"].as_str()),
        ("HIT-L1", Some("de"))
    );
    assert_eq!(mes.hits("/api/report"), 2);
    assert_eq!(seen.lock().unwrap()[0]["accept-language"], "de");
}

/// Issue 13, item 6, the override class: a read that asks the MES for another method is
/// forwarded as it came and never stored, so the next caller is not served its answer.
#[tokio::test]
async fn a_method_override_bypasses_the_cache() {
    let (mes, seen) = negotiating_mes().await;
    let gw = spawn_gateway(&report_config(""), &mes.url(), None).await;
    let url = gw.url("/api/report");
    let r = get_with(&url, &[("x-http-method-override", "DELETE")]).await;
    assert_eq!(r.x_cache(), "BYPASS");
    assert_eq!(
        r.header("cache-status"),
        "mesgate; fwd=bypass; detail=override"
    );
    assert_eq!(r.json()["done"], "DELETE", "forwarded as it came");
    assert_eq!(seen.lock().unwrap()[0]["x-http-method-override"], "DELETE");
    let r = get(&url).await;
    assert_eq!(
        (r.x_cache(), r.json()["lang"].as_str()),
        ("MISS", Some("en"))
    );
    assert_eq!(mes.hits("/api/report"), 2);
}
