//! Socket-level tests of the simulator: a real listener on 127.0.0.1:0 and a hyper client.

use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};

use super::{SimConfig, SimHandle, SimStats, spawn};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Sim {
    handle: SimHandle,
    client: HttpClient,
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    content_type: Option<String>,
    json: Value,
}

async fn start(config: SimConfig) -> Sim {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handle = spawn(listener, config);
    let client = Client::builder(TokioExecutor::new()).build_http();
    Sim { handle, client }
}

async fn call(
    client: &HttpClient,
    base: &str,
    method: Method,
    path: &str,
    body: Option<&str>,
) -> Answer {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"));
    if body.is_some() {
        request = request.header(CONTENT_TYPE, "application/json");
    }
    let body = Full::new(Bytes::from(body.unwrap_or_default().to_owned()));
    let response = client.request(request.body(body).unwrap()).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    Answer {
        status,
        content_type,
        json,
    }
}

impl Sim {
    async fn get(&self, path: &str) -> Answer {
        call(
            &self.client,
            &self.handle.base_url(),
            Method::GET,
            path,
            None,
        )
        .await
    }

    async fn send(&self, method: Method, path: &str, body: &str) -> Answer {
        let base = self.handle.base_url();
        call(&self.client, &base, method, path, Some(body)).await
    }

    async fn patch_status(&self, id: u64, status: &str) -> Answer {
        let body = format!(r#"{{"status":"{status}"}}"#);
        let path = format!("/api/orders/{id}/status");
        self.send(Method::PATCH, &path, &body).await
    }

    /// Every id with this status, walking all pages.
    async fn all_ids(&self, status: &str) -> Vec<u64> {
        let mut all = Vec::new();
        for page in 1.. {
            let answer = self
                .get(&format!("/api/orders?status={status}&size=200&page={page}"))
                .await;
            let ids = ids(&answer.json);
            if ids.is_empty() {
                return all;
            }
            all.extend(ids);
        }
        all
    }
}

fn ids(list: &Value) -> Vec<u64> {
    items(list)
        .iter()
        .map(|o| o["id"].as_u64().unwrap())
        .collect()
}

fn items(list: &Value) -> &Vec<Value> {
    list["items"].as_array().unwrap()
}

fn assert_json_error(answer: &Answer, status: StatusCode) {
    assert_eq!(answer.status, status, "{answer:?}");
    assert_eq!(answer.content_type.as_deref(), Some("application/json"));
    assert!(answer.json["error"].is_string(), "{answer:?}");
}

/// Yields until `cond` holds, at most 5 s. The test runtime is current-thread, so the server
/// tasks run between yields: this waits for an event, not for time.
async fn wait_until(cond: impl Fn() -> bool) {
    let waiting = async {
        while !cond() {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("condition not reached within 5 s");
}

#[tokio::test]
async fn list_is_newest_first_and_pages_are_contiguous() {
    let sim = start(SimConfig::instant()).await;
    let first = sim.get("/api/orders?size=20").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        (first.json["page"].as_u64(), first.json["size"].as_u64()),
        (Some(1), Some(20))
    );
    assert_eq!(first.json["total"], 5000);
    assert_eq!(ids(&first.json), (4981..=5000).rev().collect::<Vec<_>>());

    let second = sim.get("/api/orders?size=20&page=2").await;
    assert_eq!(ids(&second.json), (4961..=4980).rev().collect::<Vec<_>>());
    assert_eq!(second.json["total"], 5000);
    let created: Vec<&str> = items(&first.json)
        .iter()
        .chain(items(&second.json))
        .map(|o| o["created_at"].as_str().unwrap())
        .collect();
    assert!(created.windows(2).all(|w| w[0] > w[1]), "{created:?}");

    let default = sim.get("/api/orders").await;
    assert_eq!(items(&default.json).len(), 50);
    assert_eq!(
        (default.json["page"].as_u64(), default.json["size"].as_u64()),
        (Some(1), Some(50))
    );

    let past_end = sim.get("/api/orders?page=1000&size=200").await;
    assert_eq!(past_end.status, StatusCode::OK);
    assert!(items(&past_end.json).is_empty());
    assert_eq!(past_end.json["total"], 5000);
}

#[tokio::test]
async fn status_filter_lists_only_that_status() {
    let sim = start(SimConfig::instant()).await;
    let counts = sim.get("/api/orders/status-counts").await.json;
    for status in ["SUBMITTED", "MANUFACTURING_APPROVED", "DELIVERED"] {
        let page = sim
            .get(&format!("/api/orders?status={status}&size=200"))
            .await;
        assert_eq!(page.status, StatusCode::OK);
        assert_eq!(page.json["total"], counts["counts"][status]);
        assert!(items(&page.json).iter().all(|o| o["status"] == status));
        let ids = ids(&page.json);
        assert!(ids.windows(2).all(|w| w[0] > w[1]));
    }
    let submitted = sim.all_ids("SUBMITTED").await;
    assert_eq!(
        Some(submitted.len() as u64),
        counts["counts"]["SUBMITTED"].as_u64()
    );
    assert!((100..400).contains(&submitted.len()), "{}", submitted.len());
}

#[tokio::test]
async fn bad_list_queries_are_400_with_a_json_error() {
    let sim = start(SimConfig::instant()).await;
    for query in [
        "status=NOPE",
        "status=submitted",
        "page=0",
        "page=abc",
        "page=1.5",
        "size=0",
        "size=201",
        "size=-3",
    ] {
        let answer = sim.get(&format!("/api/orders?{query}")).await;
        assert_json_error(&answer, StatusCode::BAD_REQUEST);
    }
    let ignored = sim.get("/api/orders?size=1&sort=price&foo").await;
    assert_eq!(ignored.status, StatusCode::OK);
    assert_eq!(items(&ignored.json).len(), 1);
}

#[tokio::test]
async fn detail_answers_the_order_or_404() {
    let sim = start(SimConfig::instant()).await;
    let order = sim.get("/api/orders/42").await;
    assert_eq!(order.status, StatusCode::OK);
    assert_eq!(order.content_type.as_deref(), Some("application/json"));
    assert_eq!(order.json["id"], 42);
    assert_eq!(order.json["number"], "ORD-000042");
    assert_eq!(order.json["version"], 1);
    for field in [
        "status",
        "created_at",
        "updated_at",
        "customer",
        "product",
        "material",
    ] {
        assert!(order.json[field].is_string(), "{field}");
    }
    assert!(order.json["quantity"].as_u64().unwrap() >= 1);
    for path in [
        "/api/orders/0",
        "/api/orders/5001",
        "/api/orders/abc",
        "/api/orders/-1",
    ] {
        assert_json_error(&sim.get(path).await, StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn status_change_moves_the_order_between_lists() {
    let sim = start(SimConfig::instant()).await;
    let before = sim.get("/api/orders?status=SUBMITTED&size=1").await.json;
    let id = ids(&before)[0];
    let submitted_total = before["total"].as_u64().unwrap();

    let changed = sim.patch_status(id, "PRICE_CALCULATED").await;
    assert_eq!(changed.status, StatusCode::OK);
    assert_eq!(changed.content_type.as_deref(), Some("application/json"));
    assert_eq!(changed.json["id"], id);
    assert_eq!(changed.json["status"], "PRICE_CALCULATED");
    assert_eq!(changed.json["version"], 2);
    assert!(changed.json["price"].is_f64());
    let (created, updated) = (&changed.json["created_at"], &changed.json["updated_at"]);
    assert!(updated.as_str() > created.as_str());
    assert_eq!(
        sim.handle.order_status(id).as_deref(),
        Some("PRICE_CALCULATED")
    );

    let after = sim.get("/api/orders?status=SUBMITTED&size=1").await.json;
    assert_eq!(after["total"].as_u64(), Some(submitted_total - 1));
    assert_ne!(ids(&after)[0], id);
    assert!(!sim.all_ids("SUBMITTED").await.contains(&id));
    assert!(sim.all_ids("PRICE_CALCULATED").await.contains(&id));
    assert_eq!(
        sim.get(&format!("/api/orders/{id}")).await.json,
        changed.json
    );

    assert_json_error(
        &sim.patch_status(id, "PRICE_CALCULATED").await,
        StatusCode::CONFLICT,
    );
    assert_json_error(&sim.patch_status(id, "NOPE").await, StatusCode::BAD_REQUEST);
    assert_json_error(
        &sim.patch_status(999_999, "SHIPPED").await,
        StatusCode::NOT_FOUND,
    );
    let path = format!("/api/orders/{id}/status");
    for body in ["", "{", "{}", "[]", r#"{"status":5}"#] {
        let answer = sim.send(Method::PATCH, &path, body).await;
        assert_json_error(&answer, StatusCode::BAD_REQUEST);
    }
    let answer = sim.send(
        Method::PATCH,
        "/api/orders/abc/status",
        r#"{"status":"SHIPPED"}"#,
    );
    assert_json_error(&answer.await, StatusCode::NOT_FOUND);
    assert_eq!(
        sim.get(&format!("/api/orders/{id}")).await.json["version"],
        2
    );
}

#[tokio::test]
async fn create_puts_the_new_order_on_top_of_submitted() {
    let sim = start(SimConfig::instant()).await;
    let newest_before = sim.get("/api/orders/5000").await.json;
    let created = sim
        .send(
            Method::POST,
            "/api/orders",
            r#"{"customer":"Test Co","quantity":3}"#,
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.content_type.as_deref(), Some("application/json"));
    let order = &created.json;
    assert_eq!(order["id"], 5001);
    assert_eq!(order["number"], "ORD-005001");
    assert_eq!(
        (&order["status"], &order["version"]),
        (&"SUBMITTED".into(), &1.into())
    );
    assert_eq!(
        (&order["customer"], &order["quantity"]),
        (&"Test Co".into(), &3.into())
    );
    assert!(order["product"].is_string() && order["material"].is_string());
    assert!(order["price"].is_null());
    assert!(order["created_at"].as_str() > newest_before["created_at"].as_str());

    let submitted = sim.get("/api/orders?status=SUBMITTED").await.json;
    assert_eq!(items(&submitted)[0], *order);
    let all = sim.get("/api/orders?size=1").await.json;
    assert_eq!((ids(&all), all["total"].as_u64()), (vec![5001], Some(5001)));

    let defaults = sim.send(Method::POST, "/api/orders", "").await;
    assert_eq!(defaults.status, StatusCode::CREATED);
    assert_eq!(
        (&defaults.json["id"], &defaults.json["quantity"]),
        (&5002.into(), &1.into())
    );
    for body in [
        "{nope",
        "[]",
        r#"{"quantity":"three"}"#,
        r#"{"quantity":0}"#,
    ] {
        let answer = sim.send(Method::POST, "/api/orders", body).await;
        assert_json_error(&answer, StatusCode::BAD_REQUEST);
    }
    assert_eq!(sim.handle.order_status(5003), None);
}

#[tokio::test]
async fn counts_cover_every_status_and_sum_to_total() {
    let sim = start(SimConfig::instant()).await;
    let answer = sim.get("/api/orders/status-counts").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.content_type.as_deref(), Some("application/json"));
    let counts = answer.json["counts"].as_object().unwrap();
    assert_eq!(counts.len(), 8);
    let sum: u64 = counts.values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(answer.json["total"].as_u64(), Some(sum));
    assert_eq!(sum, 5000);
    let delivered = counts["DELIVERED"].as_u64().unwrap();
    assert!(counts.values().all(|n| n.as_u64().unwrap() <= delivered));
}

#[tokio::test]
async fn price_calculation_is_deterministic() {
    let sim = start(SimConfig::instant()).await;
    let body = r#"{"model_hash":"ab12","material":"Brass CW614N","quantity":10}"#;
    let first = sim
        .send(Method::POST, "/api/price-calculations", body)
        .await;
    let again = sim
        .send(Method::POST, "/api/price-calculations", body)
        .await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.json, again.json);
    assert_eq!(first.json["model_hash"], "ab12");
    assert_eq!(first.json["material"], "Brass CW614N");
    assert_eq!(first.json["quantity"], 10);
    assert!(first.json["price"].as_f64().unwrap() > 0.0);
    let other = r#"{"model_hash":"ab12","material":"Brass CW614N","quantity":11}"#;
    let other = sim
        .send(Method::POST, "/api/price-calculations", other)
        .await;
    assert_ne!(other.json["price"], first.json["price"]);
    for bad in [
        "",
        "nope",
        r#"{"model_hash":"x"}"#,
        r#"{"model_hash":"x","material":"y","quantity":-1}"#,
    ] {
        let answer = sim.send(Method::POST, "/api/price-calculations", bad).await;
        assert_json_error(&answer, StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn price_calculations_are_counted_per_key_and_bad_bodies_are_not() {
    let sim = start(SimConfig::instant()).await;
    let a = r#"{"model_hash":"k1","material":"Steel","quantity":3}"#;
    let b = r#"{"model_hash":"k1","material":"Steel","quantity":4}"#;
    for body in [a, a, b, r#"{"model_hash":"k1"}"#] {
        sim.send(Method::POST, "/api/price-calculations", body)
            .await;
    }
    assert_eq!(sim.handle.price_runs("k1", "Steel", 3), 2);
    assert_eq!(sim.handle.price_runs("k1", "Steel", 4), 1);
    assert_eq!(sim.handle.price_runs_total(), 3);
    let listed = sim.get("/__sim/price-calculations").await;
    assert_eq!(listed.json["k1|Steel|3"], 2);
    sim.handle.reset_stats();
    assert_eq!(sim.handle.price_runs_total(), 0);
}

#[tokio::test]
async fn unknown_routes_are_json_404() {
    let sim = start(SimConfig::instant()).await;
    assert_json_error(&sim.get("/nope").await, StatusCode::NOT_FOUND);
    assert_json_error(
        &sim.get("/api/orders/1/status").await,
        StatusCode::NOT_FOUND,
    );
    let delete = sim.send(Method::DELETE, "/api/orders/1", "").await;
    assert_json_error(&delete, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn stats_count_each_route_kind_and_reset() {
    let sim = start(SimConfig::instant()).await;
    sim.get("/api/orders").await;
    sim.get("/api/orders?status=NOPE").await;
    sim.get("/api/orders/1").await;
    sim.get("/api/orders/abc").await;
    sim.get("/api/orders/status-counts").await;
    sim.patch_status(1, "CANCELLED").await;
    sim.send(Method::POST, "/api/orders", "{}").await;
    let price = r#"{"model_hash":"a","material":"b","quantity":1}"#;
    sim.send(Method::POST, "/api/price-calculations", price)
        .await;
    sim.get("/elsewhere").await;
    let expected = SimStats {
        list: 2,
        detail: 2,
        counts: 1,
        status_change: 1,
        create: 1,
        price: 1,
        other: 1,
    };
    assert_eq!(sim.handle.stats(), expected);
    let over_http = sim.get("/__sim/stats").await;
    assert_eq!(over_http.status, StatusCode::OK);
    assert_eq!(over_http.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        serde_json::from_value::<SimStats>(over_http.json).unwrap(),
        expected
    );
    assert_eq!(
        sim.handle.stats(),
        expected,
        "stats requests are not counted"
    );

    let reset = sim.send(Method::POST, "/__sim/reset-stats", "").await;
    assert_eq!(
        (reset.status, reset.json),
        (StatusCode::NO_CONTENT, Value::Null)
    );
    assert_eq!(sim.handle.stats(), SimStats::default());
    sim.get("/api/orders/1").await;
    sim.handle.reset_stats();
    assert_eq!(sim.handle.stats(), SimStats::default());
}

/// Starts a slow listing of SUBMITTED, moves its first order to PRICE_CALCULATED while the
/// listing waits out its latency, and returns (the order id, what the listing answered).
async fn race_listing_against_a_write(mvcc: bool) -> (u64, Value) {
    let sim = start(SimConfig::instant()).await;
    sim.handle.set_mvcc(mvcc);
    let path = "/api/orders?status=SUBMITTED&size=1";
    let id = ids(&sim.get(path).await.json)[0];
    sim.handle
        .set_list_latency(Duration::from_millis(300), Duration::ZERO);
    sim.handle.reset_stats();

    let (client, base) = (sim.client.clone(), sim.handle.base_url());
    let read = tokio::spawn(async move { call(&client, &base, Method::GET, path, None).await });
    // The list counter is bumped on arrival, and the handler takes its snapshot before its
    // first await; on this current-thread runtime, seeing the count means the read has
    // started (and, with MVCC, has its snapshot). No sleep needed.
    wait_until(|| sim.handle.stats().list == 1).await;
    let write = sim.patch_status(id, "PRICE_CALCULATED").await;
    assert_eq!(write.status, StatusCode::OK);
    assert!(
        !read.is_finished(),
        "the write must be acknowledged before the read answers"
    );
    let read = read.await.unwrap();
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(
        sim.handle.order_status(id).as_deref(),
        Some("PRICE_CALCULATED")
    );
    (id, read.json)
}

#[tokio::test]
async fn mvcc_read_answers_the_snapshot_from_before_the_write() {
    let (id, listing) = race_listing_against_a_write(true).await;
    assert_eq!(ids(&listing), vec![id]);
    assert_eq!(items(&listing)[0]["status"], "SUBMITTED");
}

#[tokio::test]
async fn read_without_mvcc_answers_the_state_after_the_write() {
    let (id, listing) = race_listing_against_a_write(false).await;
    assert_ne!(ids(&listing), vec![id]);
    assert_eq!(items(&listing)[0]["status"], "SUBMITTED");
}

#[tokio::test]
async fn same_seed_same_data_other_seed_other_data() {
    let a = start(SimConfig::instant()).await;
    let b = start(SimConfig::instant()).await;
    let c = start(SimConfig {
        seed: 7,
        ..SimConfig::instant()
    })
    .await;
    let path = "/api/orders?size=200&page=3";
    let (pa, pb, pc) = (
        a.get(path).await.json,
        b.get(path).await.json,
        c.get(path).await.json,
    );
    assert_eq!(pa, pb);
    assert_ne!(pa, pc);
}

#[tokio::test]
async fn a_page_of_fifty_is_about_twenty_kilobytes() {
    let sim = start(SimConfig::instant()).await;
    let page = sim.get("/api/orders?size=50").await.json;
    let len = serde_json::to_vec(&page).unwrap().len();
    assert!((15_000..=25_000).contains(&len), "{len} bytes");
}

#[tokio::test]
async fn shutdown_stops_accepting() {
    let sim = start(SimConfig::instant()).await;
    let addr = sim.handle.addr();
    assert_eq!(
        sim.handle.base_url(),
        format!("http://127.0.0.1:{}", addr.port())
    );
    assert_eq!(sim.get("/api/orders/1").await.status, StatusCode::OK);
    let Sim { handle, client } = sim;
    tokio::time::timeout(Duration::from_secs(5), handle.shutdown())
        .await
        .expect("shutdown finishes");
    assert!(TcpStream::connect(addr).await.is_err());
    drop(client);
}
