//! A write whose request arrived whole is carried out whatever its client does next: it
//! closes the socket at once (FIN or RST), or half-closes it (`shutdown(SHUT_WR)`, which
//! HTTP/1.1 allows) and still reads its answer. A request cut off before its body is
//! complete is not forwarded. Raw sockets, the simulator counting status changes.

mod support;

use std::time::{Duration, Instant};

use mes_sim::{self as sim, SimConfig, SimHandle};
use support::gateway::{TestGateway, spawn_gateway, without_index};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A status `id` does not have now (so the MES applies the change, not a 409).
fn other_than_now(sim: &SimHandle, id: u64) -> &'static str {
    match sim.order_status(id).as_deref() {
        Some("SHIPPED") => "MANUFACTURING_STARTED",
        _ => "SHIPPED",
    }
}

async fn start() -> (SimHandle, TestGateway) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = SimConfig::instant();
    cfg.write_latency = Duration::from_millis(20);
    let sim = sim::spawn(l, cfg);
    let config = without_index(&std::fs::read_to_string("config/mesgate.toml").unwrap());
    let gw = spawn_gateway(&config, &sim.base_url(), None).await;
    (sim, gw)
}

fn patch(id: u64, to: &str) -> String {
    let body = format!("{{\"status\":\"{to}\"}}");
    format!(
        "PATCH /api/orders/{id}/status HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Waits (at most 5 s) until the MES has `count` status changes in all.
async fn changes_reach(sim: &SimHandle, count: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    while sim.stats().status_change < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sim.stats().status_change
}

#[tokio::test]
async fn a_whole_write_from_a_client_that_closes_at_once_reaches_the_mes() {
    let (sim, gw) = start().await;
    let n = 20u64;
    let targets: Vec<&str> = (0..n).map(|i| other_than_now(&sim, 4000 + i)).collect();
    for i in 0..n {
        let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
        let id = 4000 + i;
        tcp.write_all(patch(id, targets[i as usize]).as_bytes())
            .await
            .unwrap();
        if i % 2 == 0 {
            // RST: linger 0 resets the connection on close. (Deprecated because a non-zero
            // linger blocks the thread on drop; a zero one returns at once.)
            #[allow(deprecated)]
            tcp.set_linger(Some(Duration::ZERO)).unwrap();
        }
        drop(tcp);
    }
    assert_eq!(
        changes_reach(&sim, n).await,
        n,
        "every whole write reached the MES"
    );
    // Counted on arrival; applied after the MES's write latency.
    let deadline = Instant::now() + Duration::from_secs(5);
    let wrong = loop {
        let wrong: Vec<(u64, Option<String>, &str)> = (0..n)
            .map(|i| (4000 + i, sim.order_status(4000 + i), targets[i as usize]))
            .filter(|(_, now, to)| now.as_deref() != Some(*to))
            .collect();
        if wrong.is_empty() || Instant::now() > deadline {
            break wrong;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(wrong.is_empty(), "not applied (id, now, asked): {wrong:?}");
    for i in 0..n {
        assert_eq!(
            sim.order_status(4000 + i).as_deref(),
            Some(targets[i as usize]),
            "order {}",
            4000 + i
        );
    }
}

#[tokio::test]
async fn a_half_closed_client_still_gets_its_answer() {
    let (sim, gw) = start().await;
    let to = other_than_now(&sim, 4100);
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(patch(4100, to).as_bytes()).await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
        .await
        .expect("answered within 5 s")
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains(&format!("\"status\":\"{to}\"")), "{text}");
    assert_eq!(sim.stats().status_change, 1);
    assert_eq!(sim.order_status(4100).as_deref(), Some(to));
}

#[tokio::test]
async fn a_write_cut_off_before_its_body_is_complete_is_not_forwarded() {
    let (sim, gw) = start().await;
    let to = other_than_now(&sim, 4200);
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let whole = patch(4200, to);
    tcp.write_all(&whole.as_bytes()[..whole.len() - 5])
        .await
        .unwrap();
    drop(tcp);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sim.stats().status_change, 0);
    assert_ne!(sim.order_status(4200).as_deref(), Some(to));
}
