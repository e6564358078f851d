//! Live updates over Server-Sent Events: what writes changed and operation outcomes,
//! resumed by `Last-Event-ID` on another instance, `reset` after history loss, a slow
//! subscriber dropped, the streams ended by a drain.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use mes_sim::{self as sim, SimConfig, SimHandle};

mod support;
use support::client::{other_status, send};
use support::gateway::{TestGateway, spawn_gateway, wait_indexed};
use support::redis::RedisServer;

const SHIPPED: &str = include_str!("../config/mesgate.toml");

async fn mes() -> SimHandle {
    let mut cfg = SimConfig::instant();
    cfg.orders = 300;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    sim::spawn(l, cfg)
}

async fn gateway(mes: &SimHandle, redis: &RedisServer, extra: &str) -> TestGateway {
    let cfg = format!("{SHIPPED}\n{extra}");
    let gw = spawn_gateway(&cfg, &mes.base_url(), Some(&redis.url())).await;
    wait_indexed(&gw).await;
    gw
}

/// One parsed SSE record.
#[derive(Debug, Default, Clone)]
struct Sse {
    id: String,
    event: String,
    data: String,
    retry: String,
}

impl Sse {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap()
    }
}

/// An open event stream.
struct Stream {
    headers: http::HeaderMap,
    body: Incoming,
    buf: String,
}

async fn subscribe(url: &str, last_event_id: Option<&str>) -> Stream {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let mut req = http::Request::get(url);
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let resp = client
        .request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    if parts.status != 200 {
        let b = body.collect().await.unwrap().to_bytes();
        panic!("{}: {}", parts.status, String::from_utf8_lossy(&b));
    }
    Stream {
        headers: parts.headers,
        body,
        buf: String::new(),
    }
}

impl Stream {
    /// The next record (comments skipped), within 10 s.
    async fn next(&mut self) -> Sse {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let record: String = self.buf.drain(..end + 2).collect();
                let mut out = Sse::default();
                for line in record.lines() {
                    let (k, v) = line.split_once(": ").unwrap_or((line, ""));
                    match k {
                        "id" => out.id = v.into(),
                        "event" => out.event = v.into(),
                        "data" => out.data = v.into(),
                        "retry" => out.retry = v.into(),
                        _ => {}
                    }
                }
                if record.starts_with(':') {
                    continue;
                }
                return out;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = tokio::time::timeout(left, self.body.frame())
                .await
                .expect("an event within 10 s")
                .expect("the stream is open")
                .expect("a frame");
            if let Ok(data) = frame.into_data() {
                self.buf.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }

    /// Reads to the end of the stream (it must end within 10 s); what was left unread.
    async fn end(mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = tokio::time::timeout(left, self.body.frame())
                .await
                .unwrap_or_else(|_| panic!("the stream did not end in 10 s: {:?}", self.buf));
            match frame {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.buf.push_str(std::str::from_utf8(&data).unwrap());
                    }
                }
                Some(Err(e)) => panic!("the stream broke instead of ending: {e}"),
                None => return self.buf,
            }
        }
    }

    /// The next event of `kind`.
    async fn next_of(&mut self, kind: &str) -> Sse {
        loop {
            let e = self.next().await;
            if e.event == kind {
                return e;
            }
        }
    }
}

async fn patch(base: &str, id: u64, status: &str, prefer: Option<&str>) -> support::client::Resp {
    let mut headers = vec![("content-type", "application/json")];
    headers.extend(prefer.map(|p| ("prefer", p)));
    let body = Bytes::from(format!("{{\"status\":\"{status}\"}}"));
    let url = format!("{base}/api/orders/{id}/status");
    send(Method::PATCH, &url, &headers, body).await
}

#[tokio::test]
async fn writes_are_streamed_and_a_reconnect_to_another_instance_resumes() {
    let redis = RedisServer::start().await;
    let mes = mes().await;
    let a = gateway(&mes, &redis, "").await;
    let b = gateway(&mes, &redis, "").await;
    let id = 250;
    let old = mes.order_status(id).unwrap();
    let target = other_status(&old);

    let mut s = subscribe(&a.url(&format!("/mesgate/events?order={id}")), None).await;
    assert_eq!(s.headers["content-type"], "text/event-stream");
    assert_eq!(s.headers["cache-control"], "no-store");
    assert_eq!(s.headers["x-accel-buffering"], "no");
    assert_eq!(s.next().await.retry, "2000");
    // A write of another order is filtered out; this one's is sent, previous status
    // included (the index knew it).
    assert_eq!(patch(&b.url(""), id - 1, target, None).await.status, 200);
    assert_eq!(patch(&b.url(""), id, target, None).await.status, 200);
    let first = s.next_of("order").await;
    let data = first.json();
    assert_eq!(data["order"], id);
    assert_eq!(data["status"], target);
    assert_eq!(data["previous"], old.as_str());
    assert_eq!(data["row"]["status"], target);
    drop(s);

    // Missed while away: a status change and an asynchronous one back.
    assert_eq!(patch(&a.url(""), id, "SHIPPED", None).await.status, 200);
    let r = patch(&a.url(""), id, &old, Some("respond-async")).await;
    assert_eq!(r.status, 202);
    let op = r.header("location").rsplit('/').next().unwrap().to_owned();
    let mut s = subscribe(
        &b.url(&format!("/mesgate/events?order={id}")),
        Some(&first.id),
    )
    .await;
    assert_eq!(s.next().await.retry, "2000");
    let e = s.next_of("order").await;
    assert_eq!(e.json()["status"], "SHIPPED");
    assert_eq!(e.json()["previous"], target);
    let e = s.next_of("order").await;
    assert_eq!(e.json()["status"], old.as_str());
    assert_eq!(e.json()["previous"], "SHIPPED");
    let done = s.next_of("operation").await;
    assert_eq!(done.json()["operation"], op.as_str());
    assert_eq!(done.json()["state"], "succeeded");
    assert!(
        e.id < done.id,
        "the order moved before the operation was succeeded"
    );
    assert_eq!(mes.stats().status_change, 4);
}

#[tokio::test]
async fn an_id_out_of_the_history_gets_a_reset() {
    let redis = RedisServer::start().await;
    let mes = mes().await;
    let gw = gateway(&mes, &redis, "").await;
    let id = 240;
    let target = other_status(&mes.order_status(id).unwrap());
    let mut s = subscribe(&gw.url("/mesgate/events"), None).await;
    assert_eq!(patch(&gw.url(""), id, target, None).await.status, 200);
    let seen = s.next_of("order").await;
    drop(s);
    // The history is lost (trimmed, or Redis emptied), and life goes on.
    let mut c = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let prefix = gw.gateway.l2().unwrap().prefix().to_owned();
    let key = format!("{{{prefix}}}:events");
    let _: i64 = redis::cmd("XTRIM")
        .arg(&key)
        .arg("MAXLEN")
        .arg(0)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(patch(&gw.url(""), id, "SHIPPED", None).await.status, 200);
    let mut s = subscribe(&gw.url("/mesgate/events"), Some(&seen.id)).await;
    s.next().await;
    let reset = s.next().await;
    assert_eq!(reset.event, "reset", "{reset:?}");
    assert!(reset.id > seen.id, "it goes on from the newest id");
    // Not an id at all: the same.
    let mut s = subscribe(&gw.url("/mesgate/events"), Some("yesterday")).await;
    s.next().await;
    assert_eq!(s.next().await.event, "reset");
}

#[tokio::test]
async fn a_subscriber_that_does_not_read_is_dropped() {
    let redis = RedisServer::start().await;
    let mes = mes().await;
    let gw = gateway(&mes, &redis, "[events]\nbuffer = 8\n").await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(gw.addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    slow.write_all(b"GET /mesgate/events HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while gw.gateway.events().subscribers() == 0 {
        assert!(Instant::now() < deadline, "never subscribed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Far more than the socket buffers hold, in events of 32 KiB.
    let mut c = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = format!("{{{}}}:events", gw.gateway.l2().unwrap().prefix());
    let data = format!("\"{}\"", "x".repeat(32 << 10));
    let mut published = 0;
    while gw.gateway.events().dropped() == 0 {
        assert!(
            Instant::now() < deadline,
            "a subscriber that reads nothing was never dropped ({published} events)"
        );
        let mut p = redis::pipe();
        for _ in 0..32 {
            p.cmd("XADD")
                .arg(&key)
                .arg("*")
                .arg("kind")
                .arg("order")
                .arg("data")
                .arg(&data)
                .ignore();
        }
        let _: () = p.query_async(&mut c).await.unwrap();
        published += 32;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(gw.gateway.events().subscribers(), 0);
    assert!(published > 8, "dropped only after falling behind");
}

#[tokio::test]
async fn callers_with_credentials_get_no_events() {
    let redis = RedisServer::start().await;
    let mes = mes().await;
    let gw = gateway(&mes, &redis, "").await;
    for h in [("authorization", "Bearer x"), ("cookie", "s=1")] {
        let r = support::client::get_with(&gw.url("/mesgate/events"), &[h]).await;
        assert_eq!(r.status, 403);
        assert_eq!(r.json()["type"], "urn:mesgate:problem:events-forbidden");
    }
    assert_eq!(gw.gateway.events().subscribers(), 0);
}

#[tokio::test]
async fn an_order_event_caused_by_an_operation_names_it() {
    let redis = RedisServer::start().await;
    let mes = mes().await;
    let gw = gateway(&mes, &redis, "").await;
    let id = 230;
    let old = mes.order_status(id).unwrap();
    let target = other_status(&old);
    // A synchronous write first: its event names no operation, and its id is where the
    // filtered stream below resumes (the operation's id is known only from its 202).
    let mut s = subscribe(&gw.url(&format!("/mesgate/events?order={id}")), None).await;
    assert_eq!(patch(&gw.url(""), id, target, None).await.status, 200);
    let sync = s.next_of("order").await;
    assert!(sync.json().get("operation").is_none(), "{}", sync.data);
    drop(s);

    let r = patch(&gw.url(""), id, &old, Some("respond-async")).await;
    assert_eq!(r.status, 202);
    let op = r.header("location").rsplit('/').next().unwrap().to_owned();
    let url = gw.url(&format!("/mesgate/events?operation={op}"));
    let mut s = subscribe(&url, Some(&sync.id)).await;
    assert_eq!(s.next().await.retry, "2000");
    let moved = s.next().await;
    assert_eq!(moved.event, "order", "{moved:?}");
    assert_eq!(moved.json()["operation"], op.as_str());
    assert_eq!(moved.json()["status"], old.as_str());
    assert_eq!(moved.json()["previous"], target);
    let done = s.next().await;
    assert_eq!(done.event, "operation", "{done:?}");
    assert_eq!(done.json()["operation"], op.as_str());
    assert_eq!(done.json()["state"], "succeeded");
}

#[tokio::test]
async fn subscribers_past_their_share_of_the_connections_are_refused_and_requests_get_through() {
    let redis = RedisServer::start().await;
    let mes = mes().await;
    // No events.max_subscribers: half of the 4 connections. A subscriber that left is
    // noticed when the next write to it fails: a heartbeat at the latest.
    let cfg = SHIPPED.replace("[limits]\n", "[limits]\nmax_connections = 4\n");
    let cfg = format!("{cfg}\n[events]\nheartbeat = \"200ms\"\n");
    let gw = spawn_gateway(&cfg, &mes.base_url(), Some(&redis.url())).await;
    wait_indexed(&gw).await;
    let url = gw.url("/mesgate/events");
    let first = subscribe(&url, None).await;
    let _second = subscribe(&url, None).await;
    let third = tokio::time::timeout(Duration::from_secs(5), support::client::get(&url))
        .await
        .expect("a subscriber past the cap is answered at once, not streamed to");
    assert_eq!(third.status, 503);
    assert_eq!(third.json()["type"], "urn:mesgate:problem:events-full");
    assert_eq!(third.header("retry-after"), "5");
    assert_eq!(gw.gateway.events().stats().refused, 1);
    // The requests keep their connections.
    for _ in 0..3 {
        let r = support::client::get(&gw.url("/api/orders?status=SUBMITTED")).await;
        assert_eq!(r.status, 200);
    }
    // A subscriber that leaves makes room.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.gateway.events().subscribers() > 1 {
        assert!(
            Instant::now() < deadline,
            "the subscriber that left is still counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut again = subscribe(&url, None).await;
    assert_eq!(again.next().await.retry, "2000");
}

// Two workers: while Redis hangs, the gateway's Redis calls wait out their timeouts; the
// test's own reads must not queue behind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_append_failed_is_appended_once_redis_answers() {
    let redis = RedisServer::start().await;
    let mes = mes().await;
    let a = gateway(&mes, &redis, "").await;
    let id = 240;
    let old = mes.order_status(id).unwrap();
    let target = other_status(&old);
    let mut s = subscribe(&a.url(&format!("/mesgate/events?order={id}")), None).await;
    assert_eq!(s.next().await.retry, "2000");

    // A hung Redis: the write reaches the MES and is answered; the append of its event
    // (tried before the answer left) timed out.
    redis.pause();
    assert_eq!(patch(&a.url(""), id, target, None).await.status, 200);
    assert_eq!(mes.order_status(id).as_deref(), Some(target));
    redis.resume();

    // Redis answers again: the event is appended and streamed.
    let e = s.next_of("order").await;
    assert_eq!(e.json()["order"], id);
    assert_eq!(e.json()["status"], target);
    assert_eq!(e.json()["previous"], old.as_str());
    assert_eq!(a.gateway.events().stats().lost, 0);
}

#[tokio::test]
async fn a_drain_ends_every_stream_and_any_opened_after_it() {
    let redis = RedisServer::start().await;
    let mes = mes().await;
    let gw = gateway(&mes, &redis, "").await;
    let url = gw.url("/mesgate/events");
    let mut open = subscribe(&url, None).await;
    assert_eq!(open.next().await.retry, "2000");

    gw.gateway.start_draining();
    assert_eq!(open.end().await, "");
    // One opened while the instance drains gets the retry hint and its end (so the
    // client comes back, to another instance), not a stream that never ends.
    let late = subscribe(&url, None).await;
    assert_eq!(late.end().await, "retry: 2000\n\n");
    assert_eq!(gw.gateway.events().subscribers(), 0);
}
