//! Requests no cached route claims are forwarded faithfully: methods, targets, bodies of
//! any size (streamed both ways), odd statuses, repeated headers, hop-by-hop surgery,
//! h2c clients, and garbage on the socket.

mod support;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::client::{Resp, get, raw, send, status_line};
use support::fake_mes::{FakeBody, FakeMes, full};
use support::gateway::{TestGateway, spawn_gateway};
use tokio::sync::oneshot;

/// A cached list route (reads only), a forward-only write route on the same path, and
/// nothing else: every other request is a pass-through.
const CONFIG: &str = r#"
upstream = "http://127.0.0.1:1"

[[route]]
name = "list"
path = "/api/orders"
[route.cache]
query = ["status"]
ttl_l1 = "30s"
ttl_l2 = "60s"

[[route]]
name = "create"
methods = ["POST", "PUT"]
path = "/api/orders"
"#;

async fn gateway(mes: &FakeMes) -> TestGateway {
    spawn_gateway(CONFIG, &mes.url(), None).await
}

/// Answers `METHOD path?query\n` followed by the request body.
async fn echo(req: Request<hyper::body::Incoming>) -> Response<FakeBody> {
    let line = format!(
        "{} {}\n",
        req.method(),
        req.uri().path_and_query().map_or("", |p| p.as_str())
    );
    let body = req
        .into_body()
        .collect()
        .await
        .expect("request body")
        .to_bytes();
    let mut out = line.into_bytes();
    out.extend_from_slice(&body);
    Response::new(full(out))
}

fn values<'a>(h: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().expect("ascii header"))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Methods, targets, bodies.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn every_method_reaches_the_mes_with_its_target_and_body() {
    let mes = FakeMes::builder().handler("*", echo).start().await;
    let gw = gateway(&mes).await;
    let methods = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
        Method::from_bytes(b"PURGEX").unwrap(),
    ];
    let target = "/plain/a%20b/c?x=1&x=2&y=%2F&empty=&flag";
    for (i, m) in methods.iter().enumerate() {
        let body = format!("{{\"n\":{i},\"method\":\"{m}\"}}");
        let r = send(m.clone(), &gw.url(target), &[], Bytes::from(body.clone())).await;
        assert_eq!(r.status, 200, "{m}");
        assert_eq!(r.body, format!("{m} {target}\n{body}"), "{m}");
        assert_eq!(r.x_cache(), "", "{m}: a pass-through has no cache outcome");
        assert_eq!(r.header("cache-status"), "", "{m}");
        assert_eq!(mes.hits("/plain/a%20b/c"), i + 1, "{m}");
    }
    // HEAD is forwarded as HEAD: no body comes back, but the MES's length does.
    let r = send(Method::HEAD, &gw.url(target), &[], Bytes::new()).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(
        r.header("content-length"),
        format!("HEAD {target}\n").len().to_string()
    );
    assert_eq!(mes.hits("/plain/a%20b/c"), methods.len() + 1);
}

#[tokio::test]
async fn writes_and_non_read_methods_on_a_cached_path_are_forwarded() {
    let mes = FakeMes::builder().handler("*", echo).start().await;
    let gw = gateway(&mes).await;
    // POST and PUT match the forward-only route; DELETE and PATCH match no route at all;
    // none of them may touch the cache, whatever the query says.
    let target = "/api/orders?status=NEW&debug=1";
    for (n, m) in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH]
        .into_iter()
        .enumerate()
    {
        let r = send(m.clone(), &gw.url(target), &[], Bytes::from_static(b"{}")).await;
        assert_eq!(r.status, 200, "{m}");
        assert_eq!(r.body, format!("{m} {target}\n{{}}"), "{m}");
        assert_eq!(r.x_cache(), "", "{m}");
        assert_eq!(mes.hits("/api/orders"), n + 1, "{m}");
    }
}

#[tokio::test]
async fn odd_statuses_pass_through() {
    let mes = FakeMes::builder()
        .handler("*", |req| async move {
            let code: u16 = req
                .uri()
                .path()
                .trim_start_matches("/status/")
                .parse()
                .expect("status in path");
            let body = if code == 204 {
                String::new()
            } else {
                format!("status {code}")
            };
            let mut r = Response::new(full(body));
            *r.status_mut() = StatusCode::from_u16(code).unwrap();
            r.headers_mut()
                .insert("x-status", code.to_string().parse().unwrap());
            if code == 301 {
                r.headers_mut()
                    .insert("location", "/api/orders/7?moved=1".parse().unwrap());
            }
            r
        })
        .start()
        .await;
    let gw = gateway(&mes).await;
    for code in [204u16, 207, 301, 418, 451, 599] {
        let path = format!("/status/{code}");
        let r = get(&gw.url(&path)).await;
        assert_eq!(r.status.as_u16(), code);
        assert_eq!(r.header("x-status"), code.to_string());
        let want = if code == 204 {
            String::new()
        } else {
            format!("status {code}")
        };
        assert_eq!(r.body, want, "{code}");
        if code == 301 {
            assert_eq!(r.header("location"), "/api/orders/7?moved=1");
        }
        assert_eq!(mes.hits(&path), 1, "{code}");
    }
}

#[tokio::test]
async fn repeated_headers_survive_both_ways() {
    let mes = FakeMes::builder()
        .handler("/multi", |req| {
            let seen = values(req.headers(), "x-multi").join("|");
            async move {
                let mut r = Response::new(full(seen));
                let h = r.headers_mut();
                h.append("set-cookie", "a=1; Path=/".parse().unwrap());
                h.append("set-cookie", "b=2; HttpOnly".parse().unwrap());
                h.append("x-multi-out", "one".parse().unwrap());
                h.append("x-multi-out", "two".parse().unwrap());
                r
            }
        })
        .start()
        .await;
    let gw = gateway(&mes).await;
    let r = send(
        Method::GET,
        &gw.url("/multi"),
        &[("x-multi", "first"), ("x-multi", "second")],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body, "first|second",
        "both request values reached the MES"
    );
    assert_eq!(
        values(&r.headers, "set-cookie"),
        ["a=1; Path=/", "b=2; HttpOnly"]
    );
    assert_eq!(values(&r.headers, "x-multi-out"), ["one", "two"]);
    assert_eq!(mes.hits("/multi"), 1);
}

#[tokio::test]
async fn hop_by_hop_headers_go_and_forwarding_headers_come() {
    let seen: Arc<Mutex<Option<HeaderMap>>> = Arc::default();
    let log = seen.clone();
    let mes = FakeMes::builder()
        .handler("/hop", move |req| {
            *log.lock().unwrap() = Some(req.headers().clone());
            async move {
                let mut r = Response::new(full("ok"));
                let h = r.headers_mut();
                h.insert("connection", "x-bar".parse().unwrap());
                h.insert("x-bar", "secret".parse().unwrap());
                h.insert("keep-alive", "timeout=5".parse().unwrap());
                h.insert("x-kept-out", "yes".parse().unwrap());
                r
            }
        })
        .start()
        .await;
    let mes_authority = mes.url().trim_start_matches("http://").to_owned();
    let gw = gateway(&mes).await;
    let r = send(
        Method::GET,
        &gw.url("/hop"),
        &[
            ("connection", "x-foo"),
            ("x-foo", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("te", "trailers"),
            ("x-kept", "yes"),
        ],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "ok");
    assert_eq!(mes.hits("/hop"), 1);

    let h = seen
        .lock()
        .unwrap()
        .clone()
        .expect("the MES saw the request");
    for gone in ["x-foo", "keep-alive", "proxy-authorization", "te"] {
        assert!(!h.contains_key(gone), "{gone} reached the MES: {h:?}");
    }
    assert!(
        values(&h, "connection")
            .iter()
            .all(|v| !v.contains("x-foo")),
        "{h:?}"
    );
    assert_eq!(h["x-kept"], "yes");
    assert_eq!(values(&h, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(values(&h, "x-forwarded-proto"), ["http"]);
    assert_eq!(
        values(&h, "x-forwarded-host"),
        [gw.addr.to_string()],
        "the client's Host"
    );
    assert_eq!(values(&h, "host"), [mes_authority], "the MES's own Host");
    assert_eq!(values(&h, "via"), ["1.1 mesgate"]);

    for gone in ["x-bar", "keep-alive"] {
        assert!(!r.headers.contains_key(gone), "{gone} reached the client");
    }
    assert!(
        values(&r.headers, "connection")
            .iter()
            .all(|v| !v.contains("x-bar")),
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("x-kept-out"), "yes");
    assert_eq!(values(&r.headers, "via"), ["1.1 mesgate"]);
}

#[tokio::test]
async fn existing_forwarding_headers_are_appended_to() {
    let seen: Arc<Mutex<Option<HeaderMap>>> = Arc::default();
    let log = seen.clone();
    let mes = FakeMes::builder()
        .handler("/hop", move |req| {
            *log.lock().unwrap() = Some(req.headers().clone());
            async move { Response::new(full("ok")) }
        })
        .start()
        .await;
    let gw = gateway(&mes).await;
    let r = send(
        Method::GET,
        &gw.url("/hop"),
        &[("x-forwarded-for", "10.1.2.3"), ("via", "1.1 edge")],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "ok");
    assert_eq!(mes.hits("/hop"), 1);
    let h = seen
        .lock()
        .unwrap()
        .clone()
        .expect("the MES saw the request");
    assert_eq!(values(&h, "x-forwarded-for"), ["10.1.2.3, 127.0.0.1"]);
    assert_eq!(values(&h, "via"), ["1.1 edge", "1.1 mesgate"]);
}

// ---------------------------------------------------------------------------------------
// 100 MB both ways, streamed.
// ---------------------------------------------------------------------------------------

const HUNDRED_MB: u64 = 100 * 1024 * 1024;
/// Pattern period: a prime, so it never lines up with chunk or buffer sizes.
const PERIOD: usize = 65_521;
const CHUNK: usize = 32 * 1024;

/// The pattern twice over, so any window of up to `PERIOD` bytes is one slice.
fn pattern() -> Bytes {
    let mut x: u32 = 0x9e37_79b9;
    let one: Vec<u8> = (0..PERIOD)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    Bytes::from([one.as_slice(), one.as_slice()].concat())
}

/// A body of `total` pattern bytes in `CHUNK`-sized zero-copy frames. With `hold`, it
/// stops after the first frame until `hold` resolves: proof the other end streams.
struct PatternBody {
    pattern: Bytes,
    pos: u64,
    total: u64,
    hold: Option<oneshot::Receiver<()>>,
}

impl PatternBody {
    fn new(total: u64, hold: Option<oneshot::Receiver<()>>) -> Self {
        Self {
            pattern: pattern(),
            pos: 0,
            total,
            hold,
        }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.pos > 0
            && let Some(hold) = this.hold.as_mut()
        {
            match Pin::new(hold).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(_) => this.hold = None,
            }
        }
        if this.pos >= this.total {
            return Poll::Ready(None);
        }
        let n = (this.total - this.pos).min(CHUNK as u64) as usize;
        let off = (this.pos % PERIOD as u64) as usize;
        this.pos += n as u64;
        Poll::Ready(Some(Ok(Frame::data(this.pattern.slice(off..off + n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.pos >= self.total
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.total - self.pos)
    }
}

/// Checks bytes against the pattern as they stream by, holding none of them.
struct Verifier {
    pattern: Bytes,
    len: u64,
    first_mismatch: Option<u64>,
}

impl Verifier {
    fn new() -> Self {
        Self {
            pattern: pattern(),
            len: 0,
            first_mismatch: None,
        }
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let off = (self.len % PERIOD as u64) as usize;
            let n = data.len().min(PERIOD);
            if self.first_mismatch.is_none() && data[..n] != self.pattern[off..off + n] {
                self.first_mismatch = Some(self.len);
            }
            self.len += n as u64;
            data = &data[n..];
        }
    }

    /// `(length, first mismatching offset)`.
    fn result(&self) -> (u64, Option<u64>) {
        (self.len, self.first_mismatch)
    }
}

/// Reads a body to its end through a verifier, calling `on_first` after the first bytes.
async fn verify_body<B>(mut body: B, mut on_first: Option<oneshot::Sender<()>>) -> Verifier
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let mut v = Verifier::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("body frame").into_data() {
            v.feed(&data);
            if !data.is_empty()
                && let Some(tx) = on_first.take()
            {
                let _ = tx.send(());
            }
        }
    }
    v
}

#[tokio::test]
async fn hundred_megabyte_upload_is_streamed_to_the_mes() {
    let (first_tx, first_rx) = oneshot::channel::<()>();
    let first_tx = Arc::new(Mutex::new(Some(first_tx)));
    let mes = FakeMes::builder()
        .handler("/upload", move |req| {
            let tx = first_tx.lock().unwrap().take();
            async move {
                let length = req.headers().get("content-length").cloned();
                let v = verify_body(req.into_body(), tx).await;
                let (len, bad) = v.result();
                let body = format!("received={len} mismatch={bad:?} content-length={length:?}");
                Response::new(full(body))
            }
        })
        .start()
        .await;
    let gw = gateway(&mes).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<PatternBody>();
    // The client sends one chunk, then waits until the MES has seen bytes: a gateway that
    // buffered the upload would never forward them, and the test would time out.
    let req = Request::post(gw.url("/upload"))
        .body(PatternBody::new(HUNDRED_MB, Some(first_rx)))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(60), async {
        let resp = client.request(req).await.expect("gateway answered");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        (parts, body)
    })
    .await
    .expect("upload was not streamed through in time");
    let (parts, body) = resp;
    assert_eq!(parts.status, 200, "{body:?}");
    assert_eq!(
        body,
        format!("received={HUNDRED_MB} mismatch=None content-length=Some(\"{HUNDRED_MB}\")")
    );
    assert_eq!(mes.hits("/upload"), 1);
}

#[tokio::test]
async fn hundred_megabyte_download_is_streamed_to_the_client() {
    let (first_tx, first_rx) = oneshot::channel::<()>();
    let first_rx = Arc::new(Mutex::new(Some(first_rx)));
    let mes = FakeMes::builder()
        .handler("/download", move |_| {
            let hold = first_rx.lock().unwrap().take();
            async move {
                // The MES sends one chunk, then waits until the client has seen bytes.
                Response::new(
                    PatternBody::new(HUNDRED_MB, hold)
                        .map_err(|never| match never {})
                        .boxed(),
                )
            }
        })
        .start()
        .await;
    let gw = gateway(&mes).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let v = tokio::time::timeout(Duration::from_secs(60), async {
        let resp = client
            .request(
                Request::get(gw.url("/download"))
                    .body(Empty::new())
                    .unwrap(),
            )
            .await
            .expect("gateway answered");
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok()),
            Some(HUNDRED_MB.to_string().as_str()),
            "the length is forwarded"
        );
        verify_body(resp.into_body(), Some(first_tx)).await
    })
    .await
    .expect("download was not streamed through in time");
    assert_eq!(v.result(), (HUNDRED_MB, None));
    assert_eq!(mes.hits("/download"), 1);
}

/// A body of `chunks` small frames, one per `every`: a client on a slow link.
struct TrickleBody {
    left: usize,
    tick: tokio::time::Interval,
}

impl Body for TrickleBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        match self.tick.poll_tick(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => {
                self.left -= 1;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"0123456789")))))
            }
        }
    }
}

#[tokio::test]
async fn slow_upload_is_not_cut_by_the_response_header_timeout() {
    // `timeouts.response_header` is "from request sent to response headers received";
    // a client that takes longer than that to send its body has not finished sending.
    let mes = FakeMes::builder()
        .handler("/upload", |req| async move {
            let body = req.into_body().collect().await;
            Response::new(full(match body {
                Ok(b) => format!("received={}", b.to_bytes().len()),
                Err(e) => format!("broken: {e}"),
            }))
        })
        .start()
        .await;
    let cfg = format!("{CONFIG}\n[timeouts]\nresponse_header = \"300ms\"\ntotal = \"300ms\"\n");
    let gw = spawn_gateway(&cfg, &mes.url(), None).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<TrickleBody>();
    // 10 frames, 100ms apart: about a second of upload, then the MES answers at once.
    let body = TrickleBody {
        left: 10,
        tick: tokio::time::interval(Duration::from_millis(100)),
    };
    let resp = client
        .request(Request::post(gw.url("/upload")).body(body).unwrap())
        .await
        .expect("gateway answered");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(body, "received=100");
    assert_eq!(mes.hits("/upload"), 1);
}

// ---------------------------------------------------------------------------------------
// h2c.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn h2c_prior_knowledge_client_is_served() {
    let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let log = seen.clone();
    let mes = FakeMes::builder()
        .json("/api/orders", r#"{"items":[],"total":0}"#)
        .handler("*", move |req| {
            log.lock().unwrap().push(req.headers().clone());
            echo(req)
        })
        .start()
        .await;
    let gw = gateway(&mes).await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let ask = |method: Method, path: &str, body: &'static str| {
        let req = Request::builder()
            .method(method)
            .uri(gw.url(path))
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        let client = client.clone();
        async move {
            let resp = client.request(req).await.expect("gateway answered over h2");
            let (parts, body) = resp.into_parts();
            assert_eq!(parts.version, Version::HTTP_2);
            Resp {
                status: parts.status,
                headers: parts.headers,
                body: body.collect().await.expect("body").to_bytes(),
            }
        }
    };

    let r = ask(Method::POST, "/plain/h2?x=1", "hello").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "POST /plain/h2?x=1\nhello");
    assert_eq!(r.x_cache(), "");
    assert_eq!(mes.hits("/plain/h2"), 1);
    let h = seen.lock().unwrap()[0].clone();
    assert_eq!(values(&h, "via"), ["2 mesgate"], "received over HTTP/2");
    assert_eq!(
        values(&r.headers, "via"),
        ["1.1 mesgate"],
        "the answer came from the MES over HTTP/1.1"
    );
    assert_eq!(values(&h, "x-forwarded-host"), [gw.addr.to_string()]);
    assert_eq!(values(&h, "x-forwarded-for"), ["127.0.0.1"]);

    let r = ask(Method::GET, "/api/orders?status=NEW", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.x_cache(), "MISS");
    assert_eq!(r.body, r#"{"items":[],"total":0}"#);
    assert_eq!(mes.hits("/api/orders"), 1);
    let r = ask(Method::GET, "/api/orders?status=NEW", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.x_cache(), "HIT-L1");
    assert_eq!(r.header("cache-status"), "mesgate; hit; detail=l1");
    assert_eq!(r.body, r#"{"items":[],"total":0}"#);
    assert_eq!(
        values(&r.headers, "via"),
        ["1.1 mesgate"],
        "as when passed through"
    );
    assert_eq!(mes.hits("/api/orders"), 1);

    // An HTTP/1.1 client shares the entry the h2 client filled.
    let r = get(&gw.url("/api/orders?status=NEW")).await;
    assert_eq!(r.x_cache(), "HIT-L1");
    assert_eq!(mes.hits("/api/orders"), 1);
}

// ---------------------------------------------------------------------------------------
// Garbage.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn garbage_on_the_socket_does_not_kill_the_server() {
    let mes = FakeMes::builder().handler("*", echo).start().await;
    let gw = gateway(&mes).await;
    let cases: [&[u8]; 5] = [
        b"GARBAGE\r\n\r\n",
        b"GET /\x01\x02 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"\x00\xff\x13\x37PRI * HTTP/2.0\r\n\r\n",
    ];
    for bytes in cases {
        let answer = raw(gw.addr, bytes).await;
        let line = status_line(&answer);
        assert!(
            line.is_empty() || line.starts_with("HTTP/1.1 4"),
            "{:?} got {line:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    assert_eq!(mes.total_hits(), 0, "no garbage reached the MES");
    let r = get(&gw.url("/plain/after")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "GET /plain/after\n");
    assert_eq!(mes.hits("/plain/after"), 1);
}

#[tokio::test]
async fn oversized_request_head_gets_431_and_the_server_lives_on() {
    let mes = FakeMes::builder().handler("*", echo).start().await;
    let gw = gateway(&mes).await;
    let big = "a".repeat(80 * 1024);
    let req = format!("GET /plain HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let answer = raw(gw.addr, req.as_bytes()).await;
    let line = status_line(&answer);
    assert!(
        line.is_empty() || line.starts_with("HTTP/1.1 431"),
        "got {line:?}"
    );
    assert_eq!(mes.total_hits(), 0);
    let r = get(&gw.url("/plain/after")).await;
    assert_eq!(r.status, 200);
    assert_eq!(mes.hits("/plain/after"), 1);
}

#[tokio::test]
async fn absolute_form_target_still_goes_to_the_mes() {
    let seen: Arc<Mutex<Option<HeaderMap>>> = Arc::default();
    let log = seen.clone();
    let mes = FakeMes::builder()
        .handler("*", move |req| {
            *log.lock().unwrap() = Some(req.headers().clone());
            echo(req)
        })
        .start()
        .await;
    let gw = gateway(&mes).await;
    // A proxy-style request for another host must not turn mesgate into an open proxy.
    let answer = raw(gw.addr,
        b"GET http://elsewhere.example/plain/abs?q=1 HTTP/1.1\r\nHost: elsewhere.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("GET /plain/abs?q=1\n"), "{answer}");
    assert_eq!(mes.hits("/plain/abs"), 1);
    let h = seen.lock().unwrap().clone().expect("the MES saw it");
    assert_eq!(
        values(&h, "host"),
        [mes.url().trim_start_matches("http://")]
    );
    assert_eq!(values(&h, "x-forwarded-host"), ["elsewhere.example"]);
}

#[tokio::test]
async fn authority_form_target_on_get_is_rejected_not_rewritten() {
    let mes = FakeMes::builder().handler("*", echo).start().await;
    let gw = gateway(&mes).await;
    // Authority-form is for CONNECT only (RFC 9112 §3.2.3): `GET foo` is a bad target,
    // and must not become a `GET /` the client never asked for.
    for target in ["foo", "foo.example:80"] {
        let answer = raw(
            gw.addr,
            format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        let line = status_line(&answer);
        assert!(
            line.is_empty() || line.starts_with("HTTP/1.1 4"),
            "GET {target} got {answer:?}"
        );
    }
    assert_eq!(mes.total_hits(), 0, "nothing reached the MES");
    let r = get(&gw.url("/plain/after")).await;
    assert_eq!(r.status, 200);
    assert_eq!(mes.hits("/plain/after"), 1);
}
