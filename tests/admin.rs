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
