//! The real binary: SIGTERM with a slow request in flight lets it finish, then exits 0;
//! SIGINT (Ctrl-C) with nothing in flight exits at once.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mes_sim::{self as sim, SimConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod support;

use support::process::free_port;

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
        // Its own port: an empty value would leave the shipped 127.0.0.1:9901.
        .env("MESGATE_ADMIN_LISTEN", format!("127.0.0.1:{}", free_port()))
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

/// A person's Ctrl-C: after some traffic, with Redis and the bus up, the index loaded and a
/// keep-alive connection left idle (as a browser or `oha` leaves it), the process is gone
/// well within a second, not after a drain or a background task's own timer.
#[tokio::test]
async fn ctrl_c_with_nothing_in_flight_exits_at_once() {
    let redis = support::redis::RedisServer::start().await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mes = sim::spawn(l, SimConfig::instant());
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mesgate"))
        .args(["--config", "config/mesgate.toml"])
        .env("MESGATE_LISTEN", format!("127.0.0.1:{port}"))
        .env("MESGATE_UPSTREAM", mes.base_url())
        .env("MESGATE_REDIS_URL", redis.url())
        .env("MESGATE_ADMIN_LISTEN", format!("127.0.0.1:{}", free_port()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mesgate");
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    // Ready when the index answers a hot list from memory: preload, bus and copy are done.
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            let r = support::client::get(&format!("{base}/api/orders?status=SUBMITTED")).await;
            if r.x_cache() == "HIT-INDEX" {
                break;
            }
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "mesgate exited before it was ready"
        );
        assert!(Instant::now() < deadline, "mesgate did not become ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = support::client::get(&format!("{base}/api/orders/42")).await;
    assert_eq!(r.status, 200);
    let w = support::client::patch_status(&base, 42, "MANUFACTURING_STARTED").await;
    assert_eq!(w.status, 200);
    // One keep-alive connection, answered and then left idle.
    let mut idle = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    idle.write_all(b"GET /api/orders/43 HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "the idle connection was answered"
    );

    let (status, took) = support::process::interrupt(&mut child, "mesgate");
    assert_eq!(status.code(), Some(0));
    assert!(
        took < Duration::from_millis(1000),
        "Ctrl-C with nothing in flight took {took:?}"
    );
    drop(idle);
}
