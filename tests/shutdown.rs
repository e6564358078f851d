//! The real binary: SIGTERM with a slow request in flight lets it finish, then exits 0.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mes_sim::{self as sim, SimConfig};

mod support;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish_then_exits_zero() {
    let mut cfg = SimConfig::instant();
    cfg.detail_latency = Duration::from_millis(800);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mes = sim::spawn(l, cfg);
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mesgate"))
        .args(["--config", "config/mesgate.toml"])
        .env("MESGATE_LISTEN", format!("127.0.0.1:{port}"))
        .env("MESGATE_UPSTREAM", mes.base_url())
        .env("MESGATE_REDIS_URL", "off")
        .env("MESGATE_ADMIN_LISTEN", "")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mesgate");
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "mesgate did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let slow = tokio::spawn(support::client::get_owned(format!("{base}/api/orders/42")));
    while mes.stats().detail == 0 {
        assert!(
            Instant::now() < deadline,
            "the request never reached the MES"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200, "the request in flight finished");
    assert_eq!(r.json()["id"], 42);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "mesgate did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0));
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
    );
}
