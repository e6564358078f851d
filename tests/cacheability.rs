//! The security defaults of DESIGN.md, one rule per test: what may be stored and shared,
//! checked end to end through the gateway against a counting fake MES.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use support::client::{Resp, get, get_with, send};
use support::fake_mes::{FakeMes, Gate, full};
use support::gateway::{TestGateway, redis_block, spawn_gateway};
use support::redis::RedisServer;

/// The path every test asks for; it falls under the cached route below.
const ITEM: &str = "/api/items/7";
const BODY: &str = r#"{"id":7,"status":"SUBMITTED"}"#;

/// One cached route, `/api/items/{id}`, with `extra` appended to its `[route.cache]`.
fn cached(extra: &str) -> String {
    format!(
        r#"
upstream = "http://127.0.0.1:1"

[[route]]
name = "item"
path = "/api/items/{{id}}"
[route.cache]
ttl_l1 = "30s"
ttl_l2 = "60s"
{extra}
"#
    )
}

async fn gateway(mes: &FakeMes, extra: &str) -> TestGateway {
    spawn_gateway(&cached(extra), &mes.url(), None).await
}

/// Asks twice with `headers` and checks that both requests reached the MES, each a MISS
/// with `cache_status`, answering `status` and `body`.
async fn assert_never_stored(
    mes: &FakeMes,
    gw: &TestGateway,
    headers: &[(&str, &str)],
    status: u16,
    body: &str,
    cache_status: &str,
) -> Vec<Resp> {
    let mut out = Vec::new();
    for n in 1..=2 {
        let r = get_with(&gw.url(ITEM), headers).await;
        assert_eq!(r.status, status, "request {n}");
        assert_eq!(r.body, body, "request {n}");
        assert_eq!(r.x_cache(), "MISS", "request {n}: {:?}", r.headers);
        assert_eq!(r.header("cache-status"), cache_status, "request {n}");
        assert_eq!(mes.hits(ITEM), n, "request {n} reached the MES");
        out.push(r);
    }
    out
}

/// Waits until `n` requests wait on single-flight fetches (the crowd has gathered).
async fn wait_for_crowd(gw: &TestGateway, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.gateway.flights_waiting() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} waiting",
            gw.gateway.flights_waiting()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until the MES has been asked `n` times for `path` (a held fill has arrived).
async fn wait_for_hits(mes: &FakeMes, path: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while mes.hits(path) < n {
        assert!(
            Instant::now() < deadline,
            "the MES saw {} of {n}",
            mes.hits(path)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Response headers that forbid storing.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn set_cookie_answer_is_not_stored_in_either_tier() {
    let redis = RedisServer::start().await;
    let mes = FakeMes::builder()
        .reply(
            ITEM,
            200,
            &[("content-type", "application/json"), ("set-cookie", "s=1")],
            BODY,
        )
        .start()
        .await;
    let cfg = format!("{}{}", cached(""), redis_block());
    let gw = spawn_gateway(&cfg, &mes.url(), Some(&redis.url())).await;
    let rs = assert_never_stored(
        &mes,
        &gw,
        &[],
        200,
        BODY,
        "mesgate; fwd=miss; fwd-status=200; detail=no-store-set-cookie",
    )
    .await;
    for r in rs {
        assert_eq!(
            r.header("set-cookie"),
            "s=1",
            "the caller still gets its cookie"
        );
    }
    assert_eq!(redis.dbsize().await, 0, "nothing reached the shared tier");
}

#[tokio::test]
async fn cache_control_private_is_not_stored() {
    let mes = FakeMes::builder()
        .reply(ITEM, 200, &[("cache-control", "private, max-age=60")], BODY)
        .start()
        .await;
    let gw = gateway(&mes, "").await;
    assert_never_stored(
        &mes,
        &gw,
        &[],
        200,
        BODY,
        "mesgate; fwd=miss; fwd-status=200; detail=no-store-cache-control",
    )
    .await;
}

#[tokio::test]
async fn cache_control_no_store_is_not_stored() {
    let mes = FakeMes::builder()
        .reply(ITEM, 200, &[("cache-control", "no-store")], BODY)
        .start()
        .await;
    let gw = gateway(&mes, "").await;
    assert_never_stored(
        &mes,
        &gw,
        &[],
        200,
        BODY,
        "mesgate; fwd=miss; fwd-status=200; detail=no-store-cache-control",
    )
    .await;
}

#[tokio::test]
async fn cache_control_no_cache_is_not_stored() {
    // A second Cache-Control line, mixed case: every line and directive counts.
    let mes = FakeMes::builder()
        .reply(
            ITEM,
            200,
            &[
                ("cache-control", "max-age=60"),
                ("cache-control", "No-Cache"),
            ],
            BODY,
        )
        .start()
        .await;
    let gw = gateway(&mes, "").await;
    assert_never_stored(
        &mes,
        &gw,
        &[],
        200,
        BODY,
        "mesgate; fwd=miss; fwd-status=200; detail=no-store-cache-control",
    )
    .await;
}

#[tokio::test]
async fn cache_control_max_age_zero_is_not_stored() {
    // Varnish's builtin rules do not store an answer whose TTL is 0 (max-age=0,
    // s-maxage=0, an Expires in the past); DESIGN.md asks for at least that strictness.
    let mes = FakeMes::builder()
        .reply(ITEM, 200, &[("cache-control", "public, max-age=0")], BODY)
        .start()
        .await;
    let gw = gateway(&mes, "").await;
    for n in 1..=2 {
        let r = get(&gw.url(ITEM)).await;
        assert_eq!(r.status, 200, "request {n}");
        assert_eq!(r.body, BODY, "request {n}");
        assert_eq!(
            r.x_cache(),
            "MISS",
            "request {n}: max-age=0 must not be served from cache"
        );
        assert!(
            r.header("cache-status")
                .starts_with("mesgate; fwd=miss; fwd-status=200; detail=no-store-"),
            "request {n}: {}",
            r.header("cache-status")
        );
        assert_eq!(mes.hits(ITEM), n, "request {n} reached the MES");
    }
}

/// A path, the headers the MES answers it with, and the no-store reason (or `None`:
/// stored).
type ZeroTtlCase = (
    &'static str,
    Vec<(&'static str, String)>,
    Option<&'static str>,
);

#[tokio::test]
async fn zero_ttl_spellings_and_a_past_expires_are_not_stored() {
    // RFC 9111: `max-age=00` is a delta-seconds of 0 like `max-age=0`; an `Expires` at or
    // before the answer's `Date`, or one that is not a date at all (§5.3), means "already
    // stale". A `max-age` wins over `Expires` (§5.3), and a future `Expires` is storable.
    let past = "Thu, 01 Jan 1970 00:00:00 GMT";
    let future = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3600));
    let cases: Vec<ZeroTtlCase> = vec![
        (
            "/api/items/1",
            vec![("cache-control", "max-age=00".into())],
            Some("cache-control"),
        ),
        (
            "/api/items/2",
            vec![("cache-control", "public, s-maxage=000".into())],
            Some("cache-control"),
        ),
        (
            "/api/items/3",
            vec![("cache-control", "max-age=\"0\"".into())],
            Some("cache-control"),
        ),
        (
            "/api/items/4",
            vec![("expires", past.into())],
            Some("expired"),
        ),
        (
            "/api/items/5",
            vec![("expires", "0".into())],
            Some("expired"),
        ),
        ("/api/items/6", vec![("expires", future.clone())], None),
        (
            "/api/items/7",
            vec![
                ("cache-control", "max-age=60".into()),
                ("expires", past.into()),
            ],
            None,
        ),
    ];
    let mut builder = FakeMes::builder();
    for (path, headers, _) in &cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        builder = builder.reply(path, 200, &h, BODY);
    }
    let mes = builder.start().await;
    let gw = gateway(&mes, "").await;
    for (path, headers, refused) in &cases {
        let first = get(&gw.url(path)).await;
        let second = get(&gw.url(path)).await;
        assert_eq!(
            (first.status, second.status),
            (StatusCode::OK, StatusCode::OK),
            "{path}"
        );
        assert_eq!(first.x_cache(), "MISS", "{path} {headers:?}");
        match refused {
            Some(reason) => {
                let cs = format!("mesgate; fwd=miss; fwd-status=200; detail=no-store-{reason}");
                assert_eq!(first.header("cache-status"), cs, "{path} {headers:?}");
                assert_eq!(second.x_cache(), "MISS", "{path} {headers:?}: stored");
                assert_eq!(mes.hits(path), 2, "{path} {headers:?}");
            }
            None => {
                assert_eq!(second.x_cache(), "HIT-L1", "{path} {headers:?}");
                assert_eq!(mes.hits(path), 1, "{path} {headers:?}");
            }
        }
    }
}

#[tokio::test]
async fn vary_star_is_not_stored() {
    let mes = FakeMes::builder()
        .reply(ITEM, 200, &[("vary", "*")], BODY)
        .start()
        .await;
    // Even a route that varies on a header must not store `Vary: *`.
    let gw = gateway(&mes, "vary = [\"accept-language\"]").await;
    assert_never_stored(
        &mes,
        &gw,
        &[],
        200,
        BODY,
        "mesgate; fwd=miss; fwd-status=200; detail=no-store-vary-star",
    )
    .await;
}

#[tokio::test]
async fn vary_on_a_header_the_route_does_not_key_on_is_not_stored() {
    let mes = FakeMes::builder()
        .reply(ITEM, 200, &[("vary", "Accept-Language")], BODY)
        .start()
        .await;
    let gw = gateway(&mes, "").await;
    assert_never_stored(
        &mes,
        &gw,
        &[("accept-language", "de")],
        200,
        BODY,
        "mesgate; fwd=miss; fwd-status=200; detail=no-store-vary-mismatch",
    )
    .await;
}

#[tokio::test]
async fn vary_on_a_keyed_header_is_stored_per_value() {
    let mes = FakeMes::builder()
        .handler(ITEM, |req| {
            let lang = req
                .headers()
                .get("accept-language")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned();
            async move {
                let mut r = Response::new(full(format!("{{\"lang\":\"{lang}\"}}")));
                r.headers_mut()
                    .insert("vary", "Accept-Language".parse().unwrap());
                r
            }
        })
        .start()
        .await;
    let gw = gateway(&mes, "vary = [\"Accept-Language\"]").await;
    let ask = |lang: &'static str| {
        let url = gw.url(ITEM);
        async move { get_with(&url, &[("accept-language", lang)]).await }
    };
    let stored = "mesgate; fwd=miss; fwd-status=200; stored";

    let r = ask("en").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.x_cache(), "MISS");
    assert_eq!(r.header("cache-status"), stored);
    assert_eq!(r.body, r#"{"lang":"en"}"#);
    assert_eq!(mes.hits(ITEM), 1);

    let r = ask("en").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.x_cache(), "HIT-L1");
    assert_eq!(r.header("cache-status"), "mesgate; hit; detail=l1");
    assert_eq!(r.body, r#"{"lang":"en"}"#);
    assert_eq!(mes.hits(ITEM), 1);

    let r = ask("de").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.x_cache(), "MISS", "another language is another entry");
    assert_eq!(r.header("cache-status"), stored);
    assert_eq!(r.body, r#"{"lang":"de"}"#);
    assert_eq!(mes.hits(ITEM), 2);

    for (lang, body) in [("de", r#"{"lang":"de"}"#), ("en", r#"{"lang":"en"}"#)] {
        let r = ask(lang).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.x_cache(), "HIT-L1", "{lang}");
        assert_eq!(r.body, body, "{lang} gets its own entry");
    }
    assert_eq!(mes.hits(ITEM), 2);

    // No Accept-Language at all is a third entry, not one of the others.
    let r = get(&gw.url(ITEM)).await;
    assert_eq!(r.x_cache(), "MISS");
    assert_eq!(r.body, r#"{"lang":"none"}"#);
    assert_eq!(mes.hits(ITEM), 3);
}

// ---------------------------------------------------------------------------------------
// Statuses.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn not_found_is_not_stored_by_default() {
    let mes = FakeMes::builder()
        .reply(ITEM, 404, &[], r#"{"error":"no such order"}"#)
        .start()
        .await;
    let gw = gateway(&mes, "").await;
    assert_never_stored(
        &mes,
        &gw,
        &[],
        404,
        r#"{"error":"no such order"}"#,
        "mesgate; fwd=miss; fwd-status=404; detail=no-store-status",
    )
    .await;
}

#[tokio::test]
async fn server_error_is_not_stored() {
    let mes = FakeMes::builder()
        .reply(ITEM, 500, &[], "boom")
        .start()
        .await;
    let gw = gateway(&mes, "").await;
    assert_never_stored(
        &mes,
        &gw,
        &[],
        500,
        "boom",
        "mesgate; fwd=miss; fwd-status=500; detail=no-store-status",
    )
    .await;
}

#[tokio::test]
async fn not_found_is_stored_when_the_route_lists_it() {
    let redis = RedisServer::start().await;
    let mes = FakeMes::builder()
        .reply(ITEM, 404, &[], r#"{"error":"no such order"}"#)
        .start()
        .await;
    let cfg = format!("{}{}", cached("statuses = [200, 404]"), redis_block());
    let gw = spawn_gateway(&cfg, &mes.url(), Some(&redis.url())).await;
    let body = r#"{"error":"no such order"}"#;

    let r = get(&gw.url(ITEM)).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body, body);
    assert_eq!(r.x_cache(), "MISS");
    assert_eq!(
        r.header("cache-status"),
        "mesgate; fwd=miss; fwd-status=404; stored"
    );
    assert_eq!(mes.hits(ITEM), 1);
    assert_eq!(redis.dbsize().await, 1);

    let r = get(&gw.url(ITEM)).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body, body);
    assert_eq!(r.x_cache(), "HIT-L1");
    assert_eq!(r.header("cache-status"), "mesgate; hit; detail=l1");
    assert_eq!(mes.hits(ITEM), 1);

    gw.gateway.l1().clear();
    let r = get(&gw.url(ITEM)).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body, body);
    assert_eq!(r.x_cache(), "HIT-L2");
    assert_eq!(mes.hits(ITEM), 1);
}

// ---------------------------------------------------------------------------------------
// Credentials.
// ---------------------------------------------------------------------------------------

/// A fake that answers with the credentials it saw, so a shared answer would show.
async fn credential_echo() -> FakeMes {
    FakeMes::builder()
        .handler(ITEM, |req| {
            let h = |name: &str| {
                req.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_owned()
            };
            let body = format!("auth={} cookie={}", h("authorization"), h("cookie"));
            async move { Response::new(full(body)) }
        })
        .start()
        .await
}

#[tokio::test]
async fn authorization_bypasses_the_cache() {
    let mes = credential_echo().await;
    let gw = gateway(&mes, "").await;
    for (n, token) in [(1, "Bearer a"), (2, "Bearer a"), (3, "Bearer b")] {
        let r = get_with(&gw.url(ITEM), &[("authorization", token)]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, format!("auth={token} cookie=-"));
        assert_eq!(r.x_cache(), "BYPASS");
        assert_eq!(
            r.header("cache-status"),
            "mesgate; fwd=bypass; detail=credentials"
        );
        assert_eq!(
            mes.hits(ITEM),
            n,
            "every credentialed request reaches the MES"
        );
    }
    // Nothing was stored for anonymous callers either.
    let r = get(&gw.url(ITEM)).await;
    assert_eq!(r.x_cache(), "MISS");
    assert_eq!(r.body, "auth=- cookie=-");
    assert_eq!(mes.hits(ITEM), 4);
}

#[tokio::test]
async fn cookie_bypasses_the_cache() {
    let mes = credential_echo().await;
    let gw = gateway(&mes, "").await;
    for n in 1..=2 {
        let r = get_with(&gw.url(ITEM), &[("cookie", "session=abc")]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "auth=- cookie=session=abc");
        assert_eq!(r.x_cache(), "BYPASS");
        assert_eq!(
            r.header("cache-status"),
            "mesgate; fwd=bypass; detail=credentials"
        );
        assert_eq!(mes.hits(ITEM), n);
    }
}

#[tokio::test]
async fn per_credential_caches_one_entry_per_token() {
    let mes = credential_echo().await;
    let gw = gateway(&mes, "credentials = \"per_credential\"").await;
    let ask = |token: &'static str| {
        let url = gw.url(ITEM);
        async move { get_with(&url, &[("authorization", token)]).await }
    };

    let r = ask("Bearer a").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.x_cache(), "MISS");
    assert_eq!(
        r.header("cache-status"),
        "mesgate; fwd=miss; fwd-status=200; stored"
    );
    assert_eq!(r.body, "auth=Bearer a cookie=-");
    assert_eq!(mes.hits(ITEM), 1);

    let r = ask("Bearer a").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.x_cache(), "HIT-L1");
    assert_eq!(r.body, "auth=Bearer a cookie=-");
    assert_eq!(mes.hits(ITEM), 1);

    let r = ask("Bearer b").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.x_cache(), "MISS", "another token gets its own entry");
    assert_eq!(r.body, "auth=Bearer b cookie=-");
    assert_eq!(mes.hits(ITEM), 2);

    let r = ask("Bearer b").await;
    assert_eq!(r.x_cache(), "HIT-L1");
    assert_eq!(r.body, "auth=Bearer b cookie=-");

    // A cookie is a credential too, and no credential at all is yet another entry.
    let r = get_with(&gw.url(ITEM), &[("cookie", "s=1")]).await;
    assert_eq!(r.x_cache(), "MISS");
    assert_eq!(r.body, "auth=- cookie=s=1");
    let r = get(&gw.url(ITEM)).await;
    assert_eq!(
        r.x_cache(),
        "MISS",
        "anonymous callers never see a token's entry"
    );
    assert_eq!(r.body, "auth=- cookie=-");
    assert_eq!(mes.hits(ITEM), 4);
}

// ---------------------------------------------------------------------------------------
// HEAD.
// ---------------------------------------------------------------------------------------

/// A fake that records the methods it was asked with.
async fn method_recorder(body: &'static str) -> (FakeMes, Arc<Mutex<Vec<Method>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let mes = FakeMes::builder()
        .handler(ITEM, move |req| {
            log.lock().unwrap().push(req.method().clone());
            async move {
                let mut r = Response::new(full(body));
                r.headers_mut()
                    .insert("content-type", "application/json".parse().unwrap());
                r
            }
        })
        .start()
        .await;
    (mes, seen)
}

#[tokio::test]
async fn head_after_get_is_a_hit_with_length_and_no_body() {
    let (mes, seen) = method_recorder(BODY).await;
    let gw = gateway(&mes, "").await;
    let r = get(&gw.url(ITEM)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.x_cache(), "MISS");
    assert_eq!(r.body, BODY);
    assert_eq!(mes.hits(ITEM), 1);

    let r = send(Method::HEAD, &gw.url(ITEM), &[], Bytes::new()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.x_cache(), "HIT-L1");
    assert_eq!(r.header("cache-status"), "mesgate; hit; detail=l1");
    assert!(r.body.is_empty(), "HEAD has no body: {:?}", r.body);
    assert_eq!(r.header("content-length"), BODY.len().to_string());
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(mes.hits(ITEM), 1);
    assert_eq!(seen.lock().unwrap().as_slice(), [Method::GET]);
}

#[tokio::test]
async fn cold_head_is_filled_with_a_get_then_serves_gets() {
    let (mes, seen) = method_recorder(BODY).await;
    let gw = gateway(&mes, "").await;
    let r = send(Method::HEAD, &gw.url(ITEM), &[], Bytes::new()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.x_cache(), "MISS");
    assert_eq!(
        r.header("cache-status"),
        "mesgate; fwd=miss; fwd-status=200; stored"
    );
    assert!(r.body.is_empty(), "HEAD has no body: {:?}", r.body);
    assert_eq!(r.header("content-length"), BODY.len().to_string());
    assert_eq!(mes.hits(ITEM), 1);
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [Method::GET],
        "the fill asks the MES with GET, so the body can be stored"
    );

    let r = get(&gw.url(ITEM)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.x_cache(), "HIT-L1");
    assert_eq!(r.body, BODY);
    assert_eq!(mes.hits(ITEM), 1);
}

// ---------------------------------------------------------------------------------------
// Size cap.
// ---------------------------------------------------------------------------------------

fn big_body() -> String {
    (0..10_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect()
}

fn assert_too_large_bypass(r: &Resp, big: &str, n: usize) {
    assert_eq!(r.status, 200, "request {n}");
    assert_eq!(r.body.len(), big.len(), "request {n}: body intact");
    assert_eq!(r.body, big, "request {n}");
    assert_eq!(r.x_cache(), "BYPASS", "request {n}");
    assert_eq!(
        r.header("cache-status"),
        "mesgate; fwd=bypass; detail=too-large"
    );
}

#[tokio::test]
async fn answer_announced_over_max_body_is_streamed_once_and_not_stored() {
    let big = big_body();
    let mes = FakeMes::builder().reply(ITEM, 200, &[], &big).start().await;
    let gw = gateway(&mes, "max_body = \"1KiB\"").await;
    for n in 1..=2 {
        let r = get(&gw.url(ITEM)).await;
        assert_too_large_bypass(&r, &big, n);
        // Content-Length said too large before a byte was read: the fill hands the
        // answer to its request, one upstream request per client request.
        assert_eq!(mes.hits(ITEM), n, "request {n}");
    }
}

#[tokio::test]
async fn chunked_answer_over_max_body_is_forwarded_whole_and_not_stored() {
    let big = big_body();
    let chunks: Vec<Bytes> = big
        .as_bytes()
        .chunks(700)
        .map(Bytes::copy_from_slice)
        .collect();
    let mes = FakeMes::builder()
        .handler(ITEM, move |_| {
            let frames = chunks
                .clone()
                .into_iter()
                .map(|c| Ok::<_, hyper::Error>(hyper::body::Frame::data(c)));
            let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
            async move { Response::new(http_body_util::BodyExt::boxed(body)) }
        })
        .start()
        .await;
    let gw = gateway(&mes, "max_body = \"1KiB\"").await;
    for n in 1..=2 {
        let r = get(&gw.url(ITEM)).await;
        assert_too_large_bypass(&r, &big, n);
        // No length announced: the fill reads up to max_body, gives up, and the request
        // is then forwarded on its own: two upstream requests per client request.
        assert_eq!(mes.hits(ITEM), 2 * n, "request {n}");
    }
}

#[tokio::test]
async fn answer_of_exactly_max_body_is_stored() {
    let exact = "x".repeat(1024);
    let mes = FakeMes::builder()
        .reply(ITEM, 200, &[], &exact)
        .start()
        .await;
    let gw = gateway(&mes, "max_body = \"1KiB\"").await;
    let r = get(&gw.url(ITEM)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, exact);
    assert_eq!(r.x_cache(), "MISS");
    assert_eq!(
        r.header("cache-status"),
        "mesgate; fwd=miss; fwd-status=200; stored"
    );
    assert_eq!(mes.hits(ITEM), 1);
    let r = get(&gw.url(ITEM)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, exact);
    assert_eq!(r.x_cache(), "HIT-L1");
    assert_eq!(mes.hits(ITEM), 1);
}

// ---------------------------------------------------------------------------------------
// Sharing with concurrent waiters.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn unshareable_answer_is_not_handed_to_concurrent_waiters() {
    let gate = Gate::closed();
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    let mes = FakeMes::builder()
        .handler(ITEM, move |_| {
            // Every caller gets its own session cookie.
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                let mut r = Response::new(full(BODY));
                r.headers_mut()
                    .insert("set-cookie", format!("s={n}").parse().unwrap());
                r
            }
        })
        .gate(ITEM, &gate)
        .start()
        .await;
    let gw = gateway(&mes, "").await;
    let requests: Vec<_> = (0..5)
        .map(|_| {
            let url = gw.url(ITEM);
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    wait_for_crowd(&gw, 5).await;
    wait_for_hits(&mes, ITEM, 1).await;
    assert_eq!(mes.hits(ITEM), 1, "one fill while the crowd waits");
    gate.open();

    let mut cookies = Vec::new();
    let (mut misses, mut bypasses) = (0, 0);
    for r in requests {
        let r = r.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, BODY);
        match r.x_cache() {
            "MISS" => {
                misses += 1;
                assert_eq!(
                    r.header("cache-status"),
                    "mesgate; fwd=miss; fwd-status=200; detail=no-store-set-cookie"
                );
            }
            "BYPASS" => {
                bypasses += 1;
                assert_eq!(
                    r.header("cache-status"),
                    "mesgate; fwd=bypass; detail=not-shareable"
                );
            }
            other => panic!("unexpected X-Cache {other:?}: {:?}", r.headers),
        }
        cookies.push(r.header("set-cookie").to_owned());
    }
    assert_eq!(
        (misses, bypasses),
        (1, 4),
        "the leader's answer, then 4 re-asks"
    );
    assert_eq!(mes.hits(ITEM), 5, "each waiter asked the MES itself");
    cookies.sort();
    assert_eq!(
        cookies,
        ["s=1", "s=2", "s=3", "s=4", "s=5"],
        "no cookie shared"
    );
}

#[tokio::test]
async fn unstorable_status_is_still_shared_with_concurrent_waiters() {
    let gate = Gate::closed();
    let mes = FakeMes::builder()
        .reply(ITEM, 404, &[], "gone")
        .gate(ITEM, &gate)
        .start()
        .await;
    let gw = gateway(&mes, "").await;
    let requests: Vec<_> = (0..5)
        .map(|_| {
            let url = gw.url(ITEM);
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    wait_for_crowd(&gw, 5).await;
    wait_for_hits(&mes, ITEM, 1).await;
    assert_eq!(mes.hits(ITEM), 1, "one fill while the crowd waits");
    gate.open();
    let mut collapsed = 0;
    for r in requests {
        let r = r.await.unwrap();
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.body, "gone");
        assert_eq!(r.x_cache(), "MISS");
        let cs = r.header("cache-status");
        if cs.contains("collapsed") {
            collapsed += 1;
            assert_eq!(
                cs,
                "mesgate; fwd=miss; fwd-status=404; collapsed; detail=no-store-status"
            );
        } else {
            assert_eq!(
                cs,
                "mesgate; fwd=miss; fwd-status=404; detail=no-store-status"
            );
        }
    }
    assert_eq!(collapsed, 4);
    assert_eq!(
        mes.hits(ITEM),
        1,
        "a 404 is the same for everyone: one fetch"
    );

    // ...but it was not stored.
    let r = get(&gw.url(ITEM)).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.x_cache(), "MISS");
    assert_eq!(mes.hits(ITEM), 2);
}
