//! Asynchronous writes (RFC 7240 `Prefer: respond-async`): operations recorded in Redis,
//! answered `202 Accepted`, executed from a Redis Stream by any instance, and read back
//! at `GET /mesgate/operations/{id}`.
//!
//! It owns the operation (a forwarded request and its recorded outcome), its queue and
//! its record; it does not know what a write does: executing one is the gateway's
//! ([`Execute`]), which runs the synchronous write path ([`crate::write`]). Records are
//! in [`store`], the consumers in [`worker`], the header in [`prefer`].

pub mod prefer;
pub mod store;
pub mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use tracing::warn;

use crate::config::OperationsConfig;
use crate::error::GatewayError;
use crate::events::Events;
use crate::l2::{L2, L2Error};
use crate::pass::Body;
pub use prefer::Prefer;
use store::{Record, Store};

/// Where operations are read: `/mesgate/operations/{id}`.
pub const PATH: &str = "/mesgate/operations/";

/// Request headers not recorded: the preference is answered by mesgate (the MES never
/// sees it), and the body is sent whole with its own length.
const NOT_RECORDED: [&str; 4] = ["prefer", "content-length", "transfer-encoding", "expect"];

/// An operation's request as recorded: enough to send it again from any instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRequest {
    /// `PATCH`, `POST`…
    pub method: String,
    /// Path and query.
    pub target: String,
    /// The client's headers (minus [`NOT_RECORDED`]), in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
    /// The client's address (for `X-Forwarded-For`).
    pub remote: String,
}

impl StoredRequest {
    /// The request as it will be recorded.
    pub fn from_request(req: &Request<Bytes>, remote: SocketAddr) -> Self {
        let headers = req.headers().iter();
        let kept = headers.filter(|(n, _)| !NOT_RECORDED.contains(&n.as_str()));
        Self {
            method: req.method().to_string(),
            target: req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned(),
            headers: kept
                .filter_map(|(n, v)| Some((n.to_string(), v.to_str().ok()?.to_owned())))
                .collect(),
            body: req.body().clone(),
            remote: remote.to_string(),
        }
    }

    /// The request to send again (`None`: the record does not make one).
    pub fn to_request(&self) -> Option<(Request<Bytes>, SocketAddr)> {
        let mut b = Request::builder()
            .method(self.method.as_str())
            .uri(self.target.as_str());
        for (n, v) in &self.headers {
            b = b.header(n.as_str(), v.as_str());
        }
        let remote = self.remote.parse().unwrap_or(([127, 0, 0, 1], 0).into());
        Some((b.body(self.body.clone()).ok()?, remote))
    }

    fn headers_json(&self) -> String {
        serde_json::to_string(&self.headers).unwrap_or_else(|_| "[]".into())
    }

    fn headers_from_json(bytes: &[u8]) -> Vec<(String, String)> {
        serde_json::from_slice(bytes).unwrap_or_default()
    }
}

/// The state of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Recorded, not taken yet.
    Queued,
    /// Taken by an instance.
    Running,
    /// The MES answered with success (or, on a retry, showed the write applied).
    Succeeded,
    /// The MES refused it, or it could not be sent.
    Failed,
}

impl State {
    /// The name in the record and its JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

/// What executing an operation gave: the answer the client would have had.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The status.
    pub status: u16,
    /// Its `Content-Type`.
    pub content_type: Option<String>,
    /// Its body.
    pub body: Bytes,
}

impl Outcome {
    /// Succeeded on a 2xx, failed otherwise.
    pub fn state(&self) -> State {
        if (200..300).contains(&self.status) {
            State::Succeeded
        } else {
            State::Failed
        }
    }
}

/// Runs an operation's request the way a synchronous request would have run (the
/// gateway implements it with its route table and write path). `retried`: an earlier
/// attempt may have reached the MES.
pub trait Execute: Send + Sync {
    /// Executes `req`, operation `id`; the write's invalidation is applied before the
    /// future ends.
    fn execute(
        &self,
        id: OperationId,
        req: StoredRequest,
        retried: bool,
    ) -> Pin<Box<dyn Future<Output = Outcome> + Send + '_>>;
}

/// The operation a request is executed for, carried in its extensions: the write path
/// names it in the `order` event it publishes, so a client can match the move to its
/// request (and `?operation=` finds both events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationId(pub std::sync::Arc<str>);

/// The operations of one gateway. Cheap to clone.
#[derive(Clone)]
pub struct Operations {
    store: Option<Store>,
    config: OperationsConfig,
    events: Events,
    stats: Arc<OperationStats>,
}

/// What this instance did with operations, for the metrics.
#[derive(Debug, Default)]
pub struct OperationStats {
    /// Recorded and queued (answered `202`, or waited for).
    pub accepted: AtomicU64,
    /// Outcomes recorded as succeeded by this instance.
    pub succeeded: AtomicU64,
    /// Outcomes recorded as failed by this instance.
    pub failed: AtomicU64,
    /// Entries claimed from a consumer that went silent.
    pub claimed: AtomicU64,
    /// Attempts made again because the MES was unreachable.
    pub retried: AtomicU64,
    /// Entries in the queue not finished yet (every instance's), as last read.
    pub queued: AtomicU64,
}

impl OperationStats {
    /// The counters by name, as the metrics label them.
    pub fn counts(&self) -> [(&'static str, u64); 5] {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("accepted", get(&self.accepted)),
            ("succeeded", get(&self.succeeded)),
            ("failed", get(&self.failed)),
            ("claimed", get(&self.claimed)),
            ("retried", get(&self.retried)),
        ]
    }
}

impl Operations {
    /// Operations in `l2`'s Redis; without Redis, none can be recorded.
    pub fn new(l2: Option<&L2>, config: OperationsConfig, events: Events) -> Self {
        Self {
            store: l2.cloned().map(Store::new),
            config,
            events,
            stats: Arc::default(),
        }
    }

    /// Starts this instance's consumer of the queue; it stops when `exec` is gone.
    pub fn start(&self, exec: Weak<dyn Execute>) {
        if let Some(store) = &self.store {
            let (events, stats) = (self.events.clone(), self.stats.clone());
            worker::spawn(store.clone(), self.config, events, stats, exec);
        }
    }

    /// The counters, for the metrics.
    pub fn stats(&self) -> &OperationStats {
        &self.stats
    }

    /// Records and queues `req`; its id. An error: it could not be recorded durably (the
    /// caller answers the write synchronously instead).
    pub async fn accept(&self, req: &StoredRequest) -> Result<String, L2Error> {
        let store = self.store.as_ref().ok_or(L2Error::Skipped)?;
        let id = new_id();
        store.record(&id, req, self.config.keep).await?;
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        Ok(id)
    }

    /// The answer to an accepted operation: the MES's, if it answered within `wait`
    /// (capped by `operations.max_wait`), else `202 Accepted`.
    pub async fn answer(&self, id: &str, wait: Option<Duration>) -> Response<Body> {
        if let Some(wait) = wait.map(|w| w.min(self.config.max_wait))
            && let Some(rec) = self.wait_final(id, wait).await
        {
            return synchronous(id, &rec);
        }
        accepted(id)
    }

    /// Polls the record until it is final or `wait` has passed (a rare path: only a
    /// client's `Prefer: wait` takes it).
    async fn wait_final(&self, id: &str, wait: Duration) -> Option<Record> {
        let store = self.store.as_ref()?;
        let deadline = Instant::now() + wait;
        loop {
            if let Ok(Some(rec)) = store.read(id).await
                && rec.is_final()
            {
                return Some(rec);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET /mesgate/operations/{id}`.
    pub async fn read(&self, id: &str) -> Response<Body> {
        if !is_id(id) {
            return problem(&GatewayError::BadOperationId(id.to_owned()));
        }
        let Some(store) = &self.store else {
            return problem(&GatewayError::OperationNotFound(id.to_owned()));
        };
        match store.read(id).await {
            Ok(Some(rec)) => json(StatusCode::OK, &rec.to_json()),
            Ok(None) => problem(&GatewayError::OperationNotFound(id.to_owned())),
            Err(e) => {
                warn!(error = %e, tier = "shared", "operation read failed");
                problem(&GatewayError::OperationsUnavailable(e.to_string()))
            }
        }
    }
}

/// 32 lowercase hex digits, random.
fn new_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::with_capacity(32);
    for _ in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        h.write_u128(now.map_or(0, |d| d.as_nanos()));
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

/// Whether `id` is one [`new_id`] could have given.
pub fn is_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn accepted(id: &str) -> Response<Body> {
    let body = serde_json::json!({ "id": id, "state": State::Queued.as_str() });
    let mut resp = json(StatusCode::ACCEPTED, &body);
    let location = format!("{PATH}{id}");
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    h.insert(
        "preference-applied",
        HeaderValue::from_static("respond-async"),
    );
    resp
}

/// The MES's answer, recorded, as if the write had been synchronous; its record stays
/// at `Content-Location`.
fn synchronous(id: &str, rec: &Record) -> Response<Body> {
    let status = rec.status().and_then(|s| StatusCode::from_u16(s).ok());
    let mut resp = Response::new(Either::Left(Full::new(rec.response().unwrap_or_default())));
    *resp.status_mut() = status.unwrap_or(StatusCode::BAD_GATEWAY);
    let h = resp.headers_mut();
    if let Some(v) = rec
        .content_type()
        .and_then(|t| HeaderValue::from_str(t).ok())
    {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("{PATH}{id}")) {
        h.insert(header::CONTENT_LOCATION, v);
    }
    resp
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Either::Left(Full::new(Bytes::from(body.to_string()))));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn problem(e: &GatewayError) -> Response<Body> {
    e.to_response().map(Either::Left)
}
