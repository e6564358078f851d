//! A tiny HTTP client for tests: requests in, (status, headers, body) out.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A buffered response.
#[derive(Debug, Clone)]
pub struct Resp {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Resp {
    /// `X-Cache` value, or "" when absent.
    pub fn x_cache(&self) -> &str {
        self.header("x-cache")
    }

    /// A header as text, or "".
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The ids of `items` in a list body, in order (empty when there are none).
    pub fn item_ids(&self) -> Vec<u64> {
        let json: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        json["items"]
            .as_array()
            .map(|a| a.iter().filter_map(|o| o["id"].as_u64()).collect())
            .unwrap_or_default()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A keep-alive HTTP/1.1 client.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// Sends a request with the given headers and body and buffers the answer.
pub async fn send(method: Method, url: &str, headers: &[(&str, &str)], body: Bytes) -> Resp {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body)).expect("request");
    let resp = client().request(req).await.expect("gateway answered");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// GET with no extra headers.
pub async fn get(url: &str) -> Resp {
    send(Method::GET, url, &[], Bytes::new()).await
}

/// GET with headers.
pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> Resp {
    send(Method::GET, url, headers, Bytes::new()).await
}

/// GET that owns its URL (for spawned tasks).
pub async fn get_owned(url: String) -> Resp {
    get(&url).await
}

/// `PATCH {base}/api/orders/{id}/status` with `{"status": status}`: a status change.
pub async fn patch_status(base: &str, id: u64, status: &str) -> Resp {
    patch_status_spelled(base, &id.to_string(), status).await
}

/// `PATCH {base}/api/orders/{id}/status` with the id spelled as given (`077`).
pub async fn patch_status_spelled(base: &str, id: &str, status: &str) -> Resp {
    let body = Bytes::from(format!("{{\"status\":\"{status}\"}}"));
    let url = format!("{base}/api/orders/{id}/status");
    send(
        Method::PATCH,
        &url,
        &[("content-type", "application/json")],
        body,
    )
    .await
}

/// Writes raw bytes on a fresh connection to `addr` and reads until the server closes it
/// (10 s at most; a reset after an error answer counts as a close).
pub async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let read =
        tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out)).await;
    match read {
        Ok(Ok(_)) => {}
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(Err(e)) => panic!("read: {e}"),
        Err(_) => panic!(
            "the server neither answered nor closed: {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status line of a raw answer, or "" when the server just closed.
pub fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or("")
}

/// The newest order of all and its status, asked of the simulator at `sim` directly.
pub async fn newest(sim: &mes_sim::SimHandle) -> (u64, String) {
    let r = get(&format!("{}/api/orders?size=1", sim.base_url())).await;
    let o = &r.json()["items"][0];
    (
        o["id"].as_u64().unwrap(),
        o["status"].as_str().unwrap().to_owned(),
    )
}

/// Another status a test can move an order to: both are preloaded by the shipped index.
pub fn other_status(s: &str) -> &'static str {
    if s == "MANUFACTURING_STARTED" {
        "SHIPPED"
    } else {
        "MANUFACTURING_STARTED"
    }
}

/// Polls `GET {base}{location}` (an operation resource) until the operation is final
/// (at most 20 s); its JSON.
pub async fn final_op(base: &str, location: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = get(&format!("{base}{location}")).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let op = r.json();
        if op["state"] == "succeeded" || op["state"] == "failed" {
            return op;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "operation never finished: {op}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
