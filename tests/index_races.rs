//! Races between two writes of one order whose answers reach the gateway in the other
//! order than the MES applied them: what a write's answer stands for (the order's detail,
//! its row in the unfiltered list, its place in the index) must be the newer state.
//!
//! The MES is the simulator behind a forwarding fake (tests/support/fake_mes.rs) that can
//! hold one write's answer after the simulator committed it.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mes_sim::{self as sim, SimConfig, SimHandle};
use support::client::{get, newest, patch_status};
use support::fake_mes::{FakeBody, FakeMes, full};
use support::gateway::{spawn_gateway, wait_indexed};
use support::redis::RedisServer;
use tokio::sync::{Notify, Semaphore};

/// Holds the answer of the next PATCH the fake forwards, once armed.
struct Hold {
    armed: AtomicBool,
    /// Notified when the held answer is in hand (the simulator committed the write).
    held: Notify,
    /// A permit lets it go.
    release: Semaphore,
}

impl Default for Hold {
    fn default() -> Self {
        Self {
            armed: AtomicBool::new(false),
            held: Notify::new(),
            release: Semaphore::new(0),
        }
    }
}

/// A fake MES that forwards everything to `sim` and holds one PATCH answer when armed.
async fn holding_mes(sim: &SimHandle, hold: Arc<Hold>) -> FakeMes {
    let base = sim.base_url();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    FakeMes::builder()
        .handler("*", move |req: Request<Incoming>| {
            let (base, client, hold) = (base.clone(), client.clone(), hold.clone());
            async move { forward(&base, &client, &hold, req).await }
        })
        .start()
        .await
}

async fn forward(
    base: &str,
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    hold: &Hold,
    req: Request<Incoming>,
) -> Response<FakeBody> {
    let (mut parts, body) = req.into_parts();
    let held = parts.method == http::Method::PATCH && hold.armed.swap(false, Ordering::SeqCst);
    let body = body.collect().await.expect("request body").to_bytes();
    parts.uri = format!("{base}{}", parts.uri.path_and_query().expect("path"))
        .parse()
        .expect("uri");
    parts.headers.remove(http::header::HOST);
    let resp = client
        .request(Request::from_parts(parts, Full::new(body)))
        .await
        .expect("the simulator answers");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("answer body").to_bytes();
    if held {
        hold.held.notify_one();
        let _go = hold.release.acquire().await.expect("not closed");
    }
    Response::from_parts(parts, full(body))
}

/// The shipped config with the audit off (it would repair what the race broke, later).
fn shipped_config() -> String {
    let text = std::fs::read_to_string("config/mesgate.toml").expect("config/mesgate.toml");
    text.replace("[route.index]\n", "[route.index]\naudit = \"0s\"\n")
}

/// Two status changes of one order; the first one's answer (the older state) reaches
/// the gateway after the second's. The detail, the unfiltered page and the index must
/// show the second (the MES's) state: an answer older than what the index holds stands
/// for nothing. Guarded by `outdated` in src/write/mod.rs (with it off, the detail and
/// the unfiltered row become the first write's state).
#[tokio::test]
async fn a_late_answer_of_an_older_write_replaces_nothing() {
    let redis = RedisServer::start().await;
    let sim = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        sim::spawn(l, SimConfig::instant())
    };
    let hold = Arc::new(Hold::default());
    let mes = holding_mes(&sim, hold.clone()).await;
    let gw = spawn_gateway(&shipped_config(), &mes.url(), Some(&redis.url())).await;
    wait_indexed(&gw).await;

    // The newest order: first on its status's page 1 and on the unfiltered page 1.
    let (x, from) = newest(&sim).await;
    let (first, second) = match from.as_str() {
        "SUBMITTED" => ("PRICE_CALCULATED", "MANUFACTURING_APPROVED"),
        _ => ("SUBMITTED", "PRICE_CALCULATED"),
    };
    let detail = format!("/api/orders/{x}");
    for p in [detail.as_str(), "/api/orders"] {
        get(&gw.url(p)).await;
        assert_eq!(get(&gw.url(p)).await.x_cache(), "HIT-L1", "{p} cached");
    }

    hold.armed.store(true, Ordering::SeqCst);
    let base = gw.url("");
    let w1 = tokio::spawn(async move { patch_status(&base, x, first).await });
    hold.held.notified().await;
    assert_eq!(
        sim.order_status(x).as_deref(),
        Some(first),
        "the MES applied the first"
    );
    let w2 = patch_status(&gw.url(""), x, second).await;
    assert_eq!(w2.status, 200);
    hold.release.add_permits(1);
    let w1 = w1.await.unwrap();
    assert_eq!(w1.status, 200, "the first write is answered too");
    assert_eq!(w1.json()["status"], first);

    let truth = get(&format!("{}{detail}", sim.base_url())).await;
    assert_eq!(truth.json()["status"], second);
    let ours = get(&gw.url(&detail)).await;
    assert_eq!(
        ours.json()["status"],
        second,
        "the detail is the newer state ({})",
        ours.x_cache()
    );
    assert_eq!(ours.body, truth.body);
    let unfiltered = get(&gw.url("/api/orders")).await;
    let truth = get(&format!("{}/api/orders", sim.base_url())).await;
    assert_eq!(
        unfiltered.body,
        truth.body,
        "the unfiltered page 1 is the MES's ({})",
        unfiltered.x_cache()
    );
    let page = format!("/api/orders?status={second}");
    let listed = get(&gw.url(&page)).await;
    assert_eq!(listed.x_cache(), "HIT-INDEX");
    assert_eq!(listed.item_ids()[0], x, "the index holds the newer state");
    let old = get(&gw.url(&format!("/api/orders?status={first}"))).await;
    assert!(!old.item_ids().contains(&x));
}
