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
