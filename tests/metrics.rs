//! Metrics and readiness on the admin listener, after known traffic.

mod support;

use mes_sim::{self as sim, SimConfig};
use support::client::get;
use support::gateway::{spawn_gateway, without_index};
use support::redis::RedisServer;

/// The value of one sample line (`name{labels} value`), 0 when absent.
fn sample(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn counters_move_by_the_traffic_sent() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mes = sim::spawn(l, SimConfig::instant());
    let config = without_index(&std::fs::read_to_string("config/mesgate.toml").unwrap());
    let gw = spawn_gateway(&config, &mes.base_url(), None).await;
    let admin = gw.admin().await;
    let list = gw.url("/api/orders?status=SUBMITTED");
    for _ in 0..3 {
        assert_eq!(get(&list).await.status, 200);
    }
    assert_eq!(
        get(&gw.url("/api/orders?status=SUBMITTED&x=1"))
            .await
            .x_cache(),
        "BYPASS"
    );
    assert_eq!(get(&gw.url("/nowhere")).await.status, 404);

    let r = get(&format!("{admin}/metrics")).await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    let req = |route: &str, outcome: &str| {
        sample(
            &text,
            &format!("mesgate_requests_total{{route=\"{route}\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(req("order-list", "miss"), 1.0, "{text}");
    assert_eq!(req("order-list", "hit_l1"), 2.0);
    assert_eq!(req("order-list", "bypass"), 1.0);
    assert_eq!(req("unmatched", "forward"), 1.0);
    let up = |route: &str, class: &str| {
        sample(
            &text,
            &format!(
                "mesgate_upstream_requests_total{{route=\"{route}\",status_class=\"{class}\"}}"
            ),
        )
    };
    assert_eq!(up("order-list", "2xx"), 2.0, "one fill and one bypass");
    assert_eq!(up("unmatched", "4xx"), 1.0);
    assert_eq!(mes.stats().list, 2);
    assert!(sample(&text, "mesgate_l1_entries") >= 1.0);
    assert!(
        sample(&text, "mesgate_epoch_counters") >= 2.0,
        "the cached list's family and the global epoch"
    );
    assert!(text.contains("mesgate_request_duration_seconds_bucket"));
    assert!(!text.contains("/api/orders"), "no raw paths in labels");
}

#[tokio::test]
async fn readiness_reports_redis_trouble_as_degraded_not_unready() {
    let mut redis = RedisServer::start().await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mes = sim::spawn(l, SimConfig::instant());
    let config = without_index(&std::fs::read_to_string("config/mesgate.toml").unwrap());
    let gw = spawn_gateway(&config, &mes.base_url(), Some(&redis.url())).await;
    let admin = gw.admin().await;
    get(&gw.url("/api/orders")).await;
    let r = get(&format!("{admin}/readyz")).await;
    assert_eq!(
        (r.status.as_u16(), r.json()["redis"].as_str()),
        (200, Some("ok"))
    );
    redis.stop();
    for page in 2..8 {
        assert_eq!(
            get(&gw.url(&format!("/api/orders?page={page}")))
                .await
                .status,
            200
        );
    }
    let r = get(&format!("{admin}/readyz")).await;
    assert_eq!(
        r.status, 200,
        "Redis trouble does not make the instance unready"
    );
    assert_eq!(r.json()["status"], "degraded");
    let text = String::from_utf8(get(&format!("{admin}/metrics")).await.body.to_vec()).unwrap();
    assert_eq!(sample(&text, "mesgate_redis_breaker_open"), 1.0);
    assert!(sample(&text, "mesgate_redis_errors_total{kind=\"failed\"}") >= 1.0);
}

#[tokio::test]
async fn readiness_needs_the_mes() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let config = without_index(&std::fs::read_to_string("config/mesgate.toml").unwrap());
    let gw = spawn_gateway(&config, &dead, None).await;
    let admin = gw.admin().await;
    let r = get(&format!("{admin}/readyz")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["mes"], "unreachable");
    assert_eq!(
        get(&format!("{admin}/healthz")).await.status,
        200,
        "alive all the same"
    );
}

/// Polls `/metrics` until `check` passes on its text (at most 20 s); the last text.
async fn metrics_until(admin: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = get(&format!("{admin}/metrics")).await;
        let text = String::from_utf8(r.body.to_vec()).unwrap();
        if check(&text) {
            return text;
        }
        assert!(std::time::Instant::now() < deadline, "{what}:\n{text}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Reads `socket` until `n` events (`event:` lines) have come in all, within 20 s.
async fn read_events(socket: &mut tokio::net::TcpStream, seen: &mut String, n: usize) {
    use tokio::io::AsyncReadExt;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while seen.matches("\nevent: ").count() < n {
        let mut buf = [0u8; 8192];
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let got = tokio::time::timeout(left, socket.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{n} events expected, got:\n{seen}"))
            .unwrap();
        assert!(got > 0, "the stream ended:\n{seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..got]));
    }
}

#[tokio::test]
async fn operations_and_event_streams_are_counted() {
    use support::client::{final_op, other_status, send};
    use tokio::io::AsyncWriteExt;
    let redis = RedisServer::start().await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mes = sim::spawn(l, SimConfig::instant());
    let config = format!(
        "{}\n[events]\nmax_subscribers = 1\n",
        std::fs::read_to_string("config/mesgate.toml").unwrap()
    );
    let gw = spawn_gateway(&config, &mes.base_url(), Some(&redis.url())).await;
    support::gateway::wait_indexed(&gw).await;
    let admin = gw.admin().await;
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"GET /mesgate/events HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    metrics_until(&admin, "one subscriber", |t| {
        sample(t, "mesgate_event_subscribers") == 1.0
    })
    .await;
    // One more is refused (max_subscribers = 1).
    let refused = get(&gw.url("/mesgate/events")).await;
    assert_eq!(refused.status, 503);

    let patch = |id: u64, status: &str, prefer: Option<&'static str>| {
        let url = gw.url(&format!("/api/orders/{id}/status"));
        let body = bytes::Bytes::from(format!("{{\"status\":\"{status}\"}}"));
        async move {
            let mut headers = vec![("content-type", "application/json")];
            headers.extend(prefer.map(|p| ("prefer", p)));
            send(http::Method::PATCH, &url, &headers, body).await
        }
    };
    // A synchronous write, an operation that succeeds, one the MES refuses (the order has
    // that status already: 409 on a first attempt).
    let (a, b, c) = (10, 11, 12);
    let to = |id| other_status(&mes.order_status(id).unwrap()).to_owned();
    assert_eq!(patch(a, &to(a), None).await.status, 200);
    let ok = patch(b, &to(b), Some("respond-async")).await;
    assert_eq!(ok.status, 202);
    let same = mes.order_status(c).unwrap();
    let refused_op = patch(c, &same, Some("respond-async")).await;
    assert_eq!(refused_op.status, 202);
    let base = gw.url("");
    assert_eq!(
        final_op(&base, ok.header("location")).await["state"],
        "succeeded"
    );
    assert_eq!(
        final_op(&base, refused_op.header("location")).await["state"],
        "failed"
    );
    // Events: a's and b's moves, b's and c's outcomes.
    let mut seen = String::new();
    read_events(&mut stream, &mut seen, 4).await;
    let text = metrics_until(&admin, "the operations finished", |t| {
        sample(t, "mesgate_operations_queued") == 0.0
            && sample(t, "mesgate_events_delivered_total") == 4.0
    })
    .await;
    let ops = |kind: &str| {
        sample(
            &text,
            &format!("mesgate_operations_total{{kind=\"{kind}\"}}"),
        )
    };
    assert_eq!(ops("accepted"), 2.0, "{text}");
    assert_eq!(ops("succeeded"), 1.0);
    assert_eq!(ops("failed"), 1.0);
    assert_eq!(ops("claimed"), 0.0);
    assert_eq!(sample(&text, "mesgate_event_subscribers"), 1.0);
    assert_eq!(
        sample(&text, "mesgate_event_subscribers_refused_total"),
        1.0
    );
    assert_eq!(
        sample(&text, "mesgate_event_subscribers_dropped_total"),
        0.0
    );
    assert_eq!(sample(&text, "mesgate_event_reader_reconnects_total"), 0.0);

    // Redis drops every client: the reader connects again, and events flow on.
    let mut c = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut c)
        .await
        .unwrap();
    metrics_until(&admin, "the reader reconnected", |t| {
        sample(t, "mesgate_event_reader_reconnects_total") >= 1.0
    })
    .await;
    assert_eq!(patch(a, &to(a), None).await.status, 200);
    read_events(&mut stream, &mut seen, 5).await;
}
