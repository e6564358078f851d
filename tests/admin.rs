//! The admin listener: health, bearer-token purge and the entity index.

mod support;

use bytes::Bytes;
use http::Method;
use mes_sim::{self as sim, SimConfig};
use support::client::{Resp, get, send};
use support::gateway::{spawn_gateway, without_index};

async fn post(url: &str, token: Option<&str>) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    send(Method::POST, url, &headers, Bytes::new()).await
}

fn config(token: Option<&str>) -> String {
    let shipped = without_index(&std::fs::read_to_string("config/mesgate.toml").unwrap());
    match token {
        Some(t) => shipped.replace("[admin]\n", &format!("[admin]\ntoken = \"{t}\"\n")),
        None => shipped,
    }
}

#[tokio::test]
async fn purge_needs_the_bearer_token_and_invalidates_a_family() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mes = sim::spawn(l, SimConfig::instant());
    let gw = spawn_gateway(&config(Some("s3cret")), &mes.base_url(), None).await;
    let admin = gw.admin().await;
    assert_eq!(get(&format!("{admin}/healthz")).await.status, 200);
    assert_eq!(get(&format!("{admin}/readyz")).await.json()["redis"], "off");

    let list = gw.url("/api/orders?status=SUBMITTED");
    let first = get(&list).await;
    assert_eq!(get(&list).await.x_cache(), "HIT-L1");
    let purge = format!("{admin}/admin/purge?family=status:SUBMITTED");
    assert_eq!(post(&purge, None).await.status, 401);
    assert_eq!(post(&purge, Some("wrong")).await.status, 401);
    assert_eq!(
        get(&list).await.x_cache(),
        "HIT-L1",
        "refused purges change nothing"
    );
    let r = post(&purge, Some("s3cret")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["purged"], "family");
    assert_eq!(get(&list).await.x_cache(), "MISS");
    assert_eq!(mes.stats().list, 2);

    let id = first.json()["items"][0]["id"].as_u64().unwrap();
    let r = get_auth(&format!("{admin}/admin/entity?id=order:{id}"), "s3cret").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["families"],
        serde_json::json!(["status:SUBMITTED"])
    );

    let r = post(&format!("{admin}/admin/purge?all=true"), Some("s3cret")).await;
    assert_eq!(r.status, 200);
    assert_eq!(get(&list).await.x_cache(), "MISS");
    assert_eq!(
        post(&format!("{admin}/admin/purge"), Some("s3cret"))
            .await
            .status,
        400
    );
}

async fn get_auth(url: &str, token: &str) -> Resp {
    let auth = format!("Bearer {token}");
    send(Method::GET, url, &[("authorization", &auth)], Bytes::new()).await
}

#[tokio::test]
async fn admin_actions_are_off_without_a_token() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mes = sim::spawn(l, SimConfig::instant());
    let gw = spawn_gateway(&config(None), &mes.base_url(), None).await;
    let admin = gw.admin().await;
    let r = post(&format!("{admin}/admin/purge?all=true"), Some("anything")).await;
    assert_eq!(r.status, 403);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("MESGATE_ADMIN_TOKEN")
    );
}

/// `POST /admin/index/reload` (bearer token) loads the status indexes again from the MES;
/// `/readyz` shows their partitions' states, and they serve again once ready.
#[tokio::test]
async fn the_status_index_reloads_on_demand_and_reports_its_progress() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mes = sim::spawn(l, SimConfig::instant());
    let shipped = std::fs::read_to_string("config/mesgate.toml").unwrap();
    let config = shipped.replace("[admin]\n", "[admin]\ntoken = \"s3cret\"\n");
    let gw = spawn_gateway(&config, &mes.base_url(), None).await;
    support::gateway::wait_indexed(&gw).await;
    let admin = gw.admin().await;
    let ready = get(&format!("{admin}/readyz")).await.json();
    assert_eq!(
        ready["index"]["order-list"]["SUBMITTED"], "ready",
        "{ready}"
    );
    let page = gw.url("/api/orders?status=SUBMITTED");
    assert_eq!(get(&page).await.x_cache(), "HIT-INDEX");

    let reload = format!("{admin}/admin/index/reload");
    assert_eq!(post(&reload, None).await.status, 401);
    let before = mes.stats().list;
    let r = post(&reload, Some("s3cret")).await;
    assert_eq!(r.status, 202);
    assert_eq!(r.json()["reloading"], serde_json::json!(["order-list"]));
    support::gateway::wait_indexed(&gw).await;
    assert!(mes.stats().list > before, "read again from the MES");
    let r = get(&page).await;
    assert_eq!(r.x_cache(), "HIT-INDEX");
    let truth = get(&format!("{}/api/orders?status=SUBMITTED", mes.base_url())).await;
    assert_eq!(r.body, truth.body);
}

/// The admin listener's address (`http://127.0.0.1:PORT`) as a socket address.
fn admin_addr(admin: &str) -> std::net::SocketAddr {
    admin
        .trim_start_matches("http://")
        .parse()
        .expect("admin address")
}

#[tokio::test]
async fn an_admin_connection_that_never_finishes_its_headers_is_closed() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mes = sim::spawn(l, SimConfig::instant());
    let cfg = config(None).replace("client_header = \"10s\"", "client_header = \"300ms\"");
    assert!(cfg.contains("client_header = \"300ms\""));
    let gw = spawn_gateway(&cfg, &mes.base_url(), None).await;
    let admin = admin_addr(&gw.admin().await);
    // Half a request, then nothing: the listener closes it (raw() fails after 10 s
    // when nothing does).
    let started = std::time::Instant::now();
    let answer = support::client::raw(admin, b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "closed after {:?}",
        started.elapsed()
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer:?}"
    );
    assert_eq!(mes.stats().list + mes.stats().detail, 0);
}

#[tokio::test]
async fn admin_connections_beyond_the_cap_are_closed_and_the_rest_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mes = sim::spawn(l, SimConfig::instant());
    let gw = spawn_gateway(&config(None), &mes.base_url(), None).await;
    let base = gw.admin().await;
    let admin = admin_addr(&base);
    // The cap's worth of connections, each proven served (a keep-alive answer).
    let mut held = Vec::new();
    for _ in 0..mesgate::admin::MAX_CONNECTIONS {
        let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(s);
    }
    // One more is closed without an answer.
    let answer = support::client::raw(admin, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(answer, "", "a connection beyond the cap");
    // One let go: the next is served.
    drop(held.pop());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let answer = support::client::raw(
            admin,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never served again: {answer:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
