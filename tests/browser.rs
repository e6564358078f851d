//! The operator page (`/mesgate/ui`) in a real browser: headless Chromium driven by
//! Playwright (`tests/browser/ui.mjs`) against the demo config, the simulator and a real
//! Redis. A status changed with the page's control moves its row between the lists
//! without a reload, and the operation is shown (and is) succeeded.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use mes_sim::{self as sim, SimConfig};
use mesgate::demo::EMBEDDED_DEMO_CONFIG;

mod support;
use support::client::get;
use support::gateway::spawn_gateway;
use support::redis::RedisServer;

const CHROMIUM: &str = "/usr/bin/chromium";

/// How to get what the test needs; `bash .ci/run` does all of it.
const INSTALL_HINT: &str = "the browser test needs node (18 or newer), Chromium at \
     /usr/bin/chromium and playwright-core: `apt-get install -y chromium nodejs npm && \
     (cd tests/browser && npm ci)`; `bash .ci/run` does this for you";

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Fails the test (never skips it) when node, Chromium or playwright-core is missing.
fn require_tools() {
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let missing: Vec<&str> = [
        (!node).then_some("node"),
        (!Path::new(CHROMIUM).exists()).then_some("chromium"),
        (!browser_dir().join("node_modules/playwright-core").is_dir()).then_some("playwright-core"),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert!(missing.is_empty(), "missing {missing:?}: {INSTALL_HINT}");
}

/// Runs `ui.mjs` against `url`; its stdout's last line (JSON) on success.
async fn drive(url: &str) -> serde_json::Value {
    let run = tokio::process::Command::new("node")
        .arg(browser_dir().join("ui.mjs"))
        .arg(url)
        .env("CHROMIUM", CHROMIUM)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    // ui.mjs bounds each wait at 30 s; this bounds the whole run (Chromium's start on a
    // busy machine included).
    let out = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("ui.mjs did not finish within 90 s")
        .expect("run node");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "ui.mjs failed ({}):\n{stderr}{stdout}",
        out.status
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_changed_on_the_page_moves_its_row_live_and_shows_the_operation() {
    require_tools();
    let redis = RedisServer::start().await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mes = sim::spawn(l, SimConfig::default());
    let gw = spawn_gateway(EMBEDDED_DEMO_CONFIG, &mes.base_url(), Some(&redis.url())).await;

    let page = get(&gw.url("/mesgate/ui")).await;
    assert_eq!(page.status, 200);
    assert!(page.header("content-security-policy").contains("'self'"));
    assert_eq!(page.header("x-content-type-options"), "nosniff");

    let done = drive(&gw.url("/mesgate/ui")).await;
    let (order, to) = (
        done["order"].as_u64().expect("order"),
        done["to"].as_str().unwrap(),
    );
    let id = done["operation"].as_str().expect("operation id");
    assert!(
        done["shown"].as_str().unwrap().contains("succeeded"),
        "{done}"
    );

    // What the page showed is what happened: the operation succeeded, the MES has it, and
    // the gateway lists it under its new status (not its old one).
    let op = get(&gw.url(&format!("/mesgate/operations/{id}")))
        .await
        .json();
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(op["status"], 200, "{op}");
    assert_eq!(op["target"], format!("/api/orders/{order}/status"), "{op}");
    assert_eq!(mes.order_status(order).as_deref(), Some(to));
    let listed = |s: &str| support::client::get_owned(gw.url(&format!("/api/orders?status={s}")));
    assert!(listed(to).await.item_ids().contains(&order));
    assert!(
        !listed("MANUFACTURING_APPROVED")
            .await
            .item_ids()
            .contains(&order)
    );
    // The refused change was shown with the MES's reason.
    assert!(done["failure"].as_str().unwrap().contains("409"), "{done}");
    gw.stop().await;
    mes.shutdown().await;
}

/// Without `[ui] enabled` the path is the MES's like any other; with it, the gateway
/// answers the page's files itself, with the security headers, and the MES sees nothing.
#[tokio::test]
async fn the_page_is_the_gateways_only_when_enabled() {
    let mes = support::fake_mes::FakeMes::builder()
        .reply(
            "/mesgate/ui",
            200,
            &[("content-type", "text/plain")],
            "the MES's own",
        )
        .start()
        .await;
    let off = "upstream = \"http://127.0.0.1:1\"\n";
    let gw = spawn_gateway(off, &mes.url(), None).await;
    let r = get(&gw.url("/mesgate/ui")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.as_ref(), b"the MES's own");
    assert_eq!(mes.hits("/mesgate/ui"), 1);
    gw.stop().await;

    let gw = spawn_gateway(&format!("{off}[ui]\nenabled = true\n"), &mes.url(), None).await;
    for (path, ty) in [
        ("/mesgate/ui", "text/html"),
        ("/mesgate/ui/app.js", "text/javascript"),
        ("/mesgate/ui/app.css", "text/css"),
        ("/mesgate/ui/config.json", "application/json"),
    ] {
        let r = get(&gw.url(path)).await;
        assert_eq!(r.status, 200, "{path}");
        assert!(r.header("content-type").starts_with(ty), "{path}");
        assert!(
            r.header("content-security-policy")
                .contains("default-src 'none'")
        );
        assert_eq!(r.header("x-content-type-options"), "nosniff");
        assert_eq!(r.header("cache-control"), "no-store");
    }
    assert_eq!(mes.hits("/mesgate/ui"), 1, "the MES was not asked again");
    gw.stop().await;
}
