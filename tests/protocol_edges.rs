//! Protocol edges of RFC 9112 met on raw sockets: a client's broken chunked upload is the
//! client's fault (400, not 502), a transfer coding mesgate cannot pass on is refused (501),
//! and a request without exactly one `Host` is refused (400). None of them reaches the MES
//! as a request it would act on.

mod support;

use std::sync::{Arc, Mutex};

use support::client::{get, raw, status_line};
use support::fake_mes::{FakeMes, body_noting_mes as mes};
use support::gateway::{TestGateway, spawn_gateway};

/// Nothing but pass-through: no route claims `/upload` or `/plain`.
const CONFIG: &str = "upstream = \"http://127.0.0.1:1\"\n";

/// What the MES made of each request body: `complete:N` or `broken`.
type Seen = Arc<Mutex<Vec<String>>>;

/// The gateway still serves an ordinary request after the misbehaving ones.
async fn still_serves(gw: &TestGateway, mes: &FakeMes) {
    let before = mes.hits("/plain/after");
    let r = get(&gw.url("/plain/after")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "received=0");
    assert_eq!(mes.hits("/plain/after"), before + 1);
}

#[tokio::test]
async fn malformed_chunked_upload_on_a_pass_through_route_is_the_clients_400() {
    let seen = Seen::default();
    let mes = mes(&seen).await;
    let gw = spawn_gateway(CONFIG, &mes.url(), None).await;
    // One good chunk, then a chunk size that is not hex: the client broke the framing.
    let answer = raw(gw.addr,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\nmore\r\n",
    )
    .await;
    assert!(
        status_line(&answer).starts_with("HTTP/1.1 400"),
        "{answer:?}"
    );
    assert!(
        answer.contains("urn:mesgate:problem:bad-body"),
        "{answer:?}"
    );
    assert!(!answer.contains("the MES answer failed"), "{answer:?}");
    // The MES may have been asked (the head is streamed before the body breaks), but it
    // never saw a complete body it could act on.
    assert!(
        seen.lock().unwrap().iter().all(|s| s == "broken"),
        "{:?}",
        seen.lock().unwrap()
    );
    still_serves(&gw, &mes).await;
}

#[tokio::test]
async fn transfer_coding_other_than_chunked_is_refused_with_501() {
    let seen = Seen::default();
    let mes = mes(&seen).await;
    let gw = spawn_gateway(CONFIG, &mes.url(), None).await;
    // mesgate strips Transfer-Encoding (hop-by-hop) and sends the body chunked: passing a
    // gzip-coded body on without its coding would hand the MES bytes it cannot read.
    for te in ["gzip, chunked", "deflate,chunked", "x-custom, chunked"] {
        let req = format!(
            "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {te}\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        let answer = raw(gw.addr, req.as_bytes()).await;
        assert!(
            status_line(&answer).starts_with("HTTP/1.1 501"),
            "{te}: {answer:?}"
        );
        assert!(
            answer.contains("urn:mesgate:problem:unsupported-transfer-coding"),
            "{te}: {answer:?}"
        );
    }
    assert_eq!(mes.total_hits(), 0, "no coded body reached the MES");
    // Plain chunked still passes, body intact.
    let answer = raw(gw.addr,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(
        status_line(&answer).starts_with("HTTP/1.1 200"),
        "{answer:?}"
    );
    assert!(answer.ends_with("received=5"), "{answer:?}");
    assert_eq!(mes.hits("/upload"), 1);
}

#[tokio::test]
async fn request_without_exactly_one_host_is_400() {
    let seen = Seen::default();
    let mes = mes(&seen).await;
    let gw = spawn_gateway(CONFIG, &mes.url(), None).await;
    let cases: [&[u8]; 3] = [
        b"GET /plain/none HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET /plain/two HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
        b"GET /plain/two10 HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n",
    ];
    for bytes in cases {
        let answer = raw(gw.addr, bytes).await;
        let text = String::from_utf8_lossy(bytes);
        let line = status_line(&answer);
        assert!(
            line.starts_with("HTTP/1.1 400") || line.starts_with("HTTP/1.0 400"),
            "{text:?} got {answer:?}"
        );
        assert!(
            answer.contains("urn:mesgate:problem:bad-host"),
            "{text:?} got {answer:?}"
        );
    }
    assert_eq!(mes.total_hits(), 0, "none reached the MES");
    // HTTP/1.0 has no Host requirement: one without is still served.
    let answer = raw(gw.addr, b"GET /plain/ten HTTP/1.0\r\n\r\n").await;
    assert!(
        status_line(&answer).starts_with("HTTP/1.0 200")
            || status_line(&answer).starts_with("HTTP/1.1 200"),
        "{answer:?}"
    );
    assert_eq!(mes.hits("/plain/ten"), 1);
    still_serves(&gw, &mes).await;
}
