//! Client connections are bounded: one that sends nothing is closed, one idle between
//! requests is closed, a stalled request body is cut (408, and the MES connection goes
//! with it), and with few file descriptors idle connections make way for live requests.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response};
use support::client::get;
use support::fake_mes::{FakeBody, FakeMes, body_noting_mes as mes, full};
use support::gateway::spawn_gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_mesgate");

/// Pass-through only.
const CONFIG: &str = "upstream = \"http://127.0.0.1:1\"\n";

/// Reads until the peer closes, failing at `deadline`; returns what was read.
async fn read_until_closed(s: &mut TcpStream, deadline: Instant, what: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, s.read_to_end(&mut out)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(Err(e)) => panic!("{what}: read: {e}"),
        Err(_) => panic!(
            "{what}: still open at the deadline, read {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
    out
}

#[tokio::test]
async fn connections_that_never_send_a_byte_are_closed_within_15s() {
    let seen = Arc::default();
    let mes = mes(&seen).await;
    let gw = spawn_gateway(CONFIG, &mes.url(), None).await;
    let opened = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(gw.addr).await.expect("connect"));
    }
    let deadline = opened + Duration::from_secs(15);
    for (n, s) in idle.iter_mut().enumerate() {
        let got = read_until_closed(s, deadline, &format!("idle connection {n}")).await;
        // Closed without an answer: there was no request to answer.
        assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    }
    assert_eq!(mes.total_hits(), 0);
    let r = get(&gw.url("/plain/after")).await;
    assert_eq!(r.status, 200);
    assert_eq!(mes.hits("/plain/after"), 1);
}

#[tokio::test]
async fn a_kept_alive_connection_idle_past_client_idle_is_closed() {
    let seen = Arc::default();
    let mes = mes(&seen).await;
    let cfg = format!("{CONFIG}[timeouts]\nclient_idle = \"300ms\"\n");
    let gw = spawn_gateway(&cfg, &mes.url(), None).await;
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(b"GET /plain/one HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let answered = Instant::now();
    let got = read_until_closed(&mut s, answered + Duration::from_secs(5), "kept alive").await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    assert!(text.ends_with("received=0"), "{text:?}");
    assert!(
        answered.elapsed() >= Duration::from_millis(250),
        "closed after {:?}, before client_idle",
        answered.elapsed()
    );
    assert_eq!(mes.hits("/plain/one"), 1);
}

#[tokio::test]
async fn a_stalled_request_body_gets_408_and_the_mes_request_is_dropped() {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let mes = mes(&seen).await;
    let cfg = format!("{CONFIG}[timeouts]\nclient_body = \"300ms\"\n");
    let gw = spawn_gateway(&cfg, &mes.url(), None).await;
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    // 10 of the 100 bytes announced, then nothing.
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .expect("write");
    let sent = Instant::now();
    let got = read_until_closed(&mut s, sent + Duration::from_secs(5), "stalled body").await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
    assert!(
        text.contains("urn:mesgate:problem:body-timeout"),
        "{text:?}"
    );
    assert!(
        sent.elapsed() >= Duration::from_millis(250),
        "{:?}",
        sent.elapsed()
    );
    // The MES saw the request begin, and its end as a broken body, never a complete one.
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the MES request was never ended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(*seen.lock().unwrap(), ["broken"]);
}

/// The real binary under `prlimit --nofile=256`, killed on drop.
struct Limited {
    child: Child,
    addr: std::net::SocketAddr,
    config: std::path::PathBuf,
}

impl Drop for Limited {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

fn start_limited(upstream: &str, nofile: u32) -> Limited {
    let config = format!(
        "listen = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n[admin]\nlisten = \"\"\n[log]\nformat = \"json\"\nlevel = \"info\"\n"
    );
    let path =
        std::env::temp_dir().join(format!("mesgate-conn-{}-{nofile}.toml", std::process::id()));
    std::fs::write(&path, config).expect("write config");
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={nofile}:{nofile}"))
        .arg(BIN)
        .arg("--config")
        .arg(&path)
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("MESGATE_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd.spawn().expect("run prlimit mesgate");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    // Drains the log for the whole run, so the child never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !line.contains("mesgate listening") {
                continue;
            }
            let json: serde_json::Value = serde_json::from_str(&line).expect("json log");
            let addr = json["fields"]["addr"].as_str().expect("addr").to_owned();
            if let Some(tx) = tx.take() {
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the gateway never said where it listens");
    Limited {
        child,
        addr: addr.parse().expect("listen address"),
        config: path,
    }
}

#[tokio::test]
async fn requests_are_answered_under_a_256_descriptor_limit_with_300_idle_connections() {
    let seen = Arc::default();
    let mes = mes(&seen).await;
    let gw = start_limited(&mes.url(), 256);
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(gw.addr).await.expect("connect"));
    }
    for n in 1..=20 {
        let url = format!("http://{}/plain/live", gw.addr);
        let r = tokio::time::timeout(Duration::from_secs(5), get(&url))
            .await
            .unwrap_or_else(|_| panic!("request {n} not answered within 5s"));
        assert_eq!(r.status, 200, "request {n}");
        assert_eq!(r.body, "received=0", "request {n}");
        assert_eq!(mes.hits("/plain/live"), n);
    }
    drop(idle);
}

/// A gateway with room for `cap` connections, in front of `mes`.
async fn capped(mes: &FakeMes, cap: usize) -> support::gateway::TestGateway {
    let cfg = format!("{CONFIG}[limits]\nmax_connections = {cap}\n");
    spawn_gateway(&cfg, &mes.url(), None).await
}

#[tokio::test]
async fn at_the_cap_an_idle_connection_makes_way_for_a_new_request() {
    let seen = Arc::default();
    let mes = mes(&seen).await;
    let gw = capped(&mes, 1).await;
    let mut idle = TcpStream::connect(gw.addr).await.expect("connect");
    // The idle one holds the only slot; a request on a new connection still gets through.
    let r = get(&gw.url("/plain/live")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "received=0");
    assert_eq!(mes.hits("/plain/live"), 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    let got = read_until_closed(&mut idle, deadline, "the idle connection").await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
}

#[tokio::test]
async fn at_the_cap_with_every_connection_busy_a_new_one_gets_503() {
    let gate = support::fake_mes::Gate::closed();
    let mes = FakeMes::builder()
        .gate("/slow", &gate)
        .handler("*", |_req: Request<hyper::body::Incoming>| async {
            Response::<FakeBody>::new(full("slow"))
        })
        .start()
        .await;
    let gw = capped(&mes, 2).await;
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(gw.addr).await.expect("connect");
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        busy.push(s);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while mes.hits("/slow") < 2 {
        assert!(
            Instant::now() < deadline,
            "the MES saw {}",
            mes.hits("/slow")
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut third = TcpStream::connect(gw.addr).await.expect("connect");
    let refused =
        read_until_closed(&mut third, Instant::now() + Duration::from_secs(5), "third").await;
    let text = String::from_utf8_lossy(&refused);
    assert!(text.starts_with("HTTP/1.1 503"), "{text:?}");
    assert!(text.contains("retry-after: 1"), "{text:?}");
    assert!(
        text.contains("urn:mesgate:problem:too-many-connections"),
        "{text:?}"
    );
    // The busy ones were not cut: they finish when the MES answers.
    gate.open();
    for (n, s) in busy.iter_mut().enumerate() {
        let got = read_until_closed(s, Instant::now() + Duration::from_secs(5), "busy").await;
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 200") && text.ends_with("slow"),
            "{n}: {text:?}"
        );
    }
    assert_eq!(mes.hits("/slow"), 2);
}

#[tokio::test]
async fn a_stalled_write_body_gets_408_before_anything_reaches_the_mes() {
    // A write with invalidation rules is buffered first (to read its fields): the stall
    // is found there, and the MES is never asked.
    let seen = Arc::default();
    let mes = mes(&seen).await;
    let cfg = format!(
        "{CONFIG}[timeouts]\nclient_body = \"300ms\"\n\n[[route]]\nname = \"list\"\npath = \"/api/orders\"\n[route.cache]\nfamilies = [\"orders\"]\n\n[[route]]\nname = \"create\"\nmethods = [\"POST\"]\npath = \"/api/orders\"\n[route.invalidate]\nfamilies = [\"orders\"]\n"
    );
    let gw = spawn_gateway(&cfg, &mes.url(), None).await;
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(b"POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"a\":")
        .await
        .expect("write");
    let sent = Instant::now();
    let got = read_until_closed(&mut s, sent + Duration::from_secs(5), "stalled write").await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
    assert!(
        text.contains("urn:mesgate:problem:body-timeout"),
        "{text:?}"
    );
    assert_eq!(mes.total_hits(), 0);
}
