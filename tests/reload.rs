//! Hot reload: a broken file changes nothing; a good one adds rules and keeps the entries
//! of unchanged routes.

mod support;

use mesgate::config::Overrides;
use support::client::get;
use support::fake_mes::FakeMes;
use support::gateway::{list_config, spawn_gateway};

const LIST: &str = r#"{"items":[],"page":1,"size":50,"total":0}"#;

fn overrides(upstream: &str) -> Overrides {
    Overrides {
        listen: Some("127.0.0.1:0".into()),
        upstream: Some(upstream.into()),
        redis_url: Some("off".into()),
        admin_listen: Some(String::new()),
        ..Overrides::default()
    }
}

#[tokio::test]
async fn a_broken_file_keeps_the_old_rules_and_a_good_one_keeps_unchanged_entries() {
    let mes = FakeMes::builder()
        .json("/api/orders", LIST)
        .json("/api/orders/7", r#"{"id":7}"#)
        .json("/api/customers", "[]")
        .start()
        .await;
    let first = list_config("");
    let gw = spawn_gateway(&first, &mes.url(), None).await;
    let file = std::env::temp_dir().join(format!("mesgate-reload-{}.toml", std::process::id()));
    std::fs::write(&file, &first).unwrap();
    gw.gateway
        .set_config_source(file.clone(), overrides(&mes.url()));
    for path in ["/api/orders", "/api/orders/7"] {
        get(&gw.url(path)).await;
        assert_eq!(get(&gw.url(path)).await.x_cache(), "HIT-L1");
    }

    std::fs::write(
        &file,
        first.replace("ttl_l1 = \"30s\"", "ttl_l1 = \"soon\""),
    )
    .unwrap();
    let err = gw.gateway.reload().unwrap_err().to_string();
    assert!(
        err.starts_with("route[0] \"detail\".cache.ttl_l1: bad duration"),
        "{err}"
    );
    assert_eq!(
        get(&gw.url("/api/orders")).await.x_cache(),
        "HIT-L1",
        "old rules serve"
    );

    // The detail route changes its TTL; a new cached route appears; the list is unchanged.
    let second = format!(
        "{}\n[[route]]\nname = \"customers\"\npath = \"/api/customers\"\n[route.cache]\nttl_l1 = \"30s\"\n",
        first.replacen("ttl_l1 = \"30s\"", "ttl_l1 = \"20s\"", 1)
    );
    std::fs::write(&file, &second).unwrap();
    let report = gw.gateway.reload().unwrap();
    assert_eq!(report.flushed, ["detail"]);
    assert_eq!(report.routes, 3);
    assert_eq!(
        get(&gw.url("/api/orders")).await.x_cache(),
        "HIT-L1",
        "unchanged route kept"
    );
    assert_eq!(
        get(&gw.url("/api/orders/7")).await.x_cache(),
        "MISS",
        "changed route dropped"
    );
    assert_eq!(get(&gw.url("/api/customers")).await.x_cache(), "MISS");
    assert_eq!(
        get(&gw.url("/api/customers")).await.x_cache(),
        "HIT-L1",
        "new rule active"
    );
    assert_eq!(mes.hits("/api/orders"), 1);
    assert_eq!(mes.hits("/api/orders/7"), 2);
    assert_eq!(mes.hits("/api/customers"), 1);
    let _ = std::fs::remove_file(&file);
}
