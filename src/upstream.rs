//! The pooled HTTP/1.1 client to the MES and its connect and response-header timeouts.
//!
//! It sends what it is given; header surgery is [`crate::forward`]'s, caching is not its business.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::client_body::{ClientBody, client_fault};
use crate::config::{Timeouts, UpstreamTarget};
use crate::error::GatewayError;
use crate::metrics::{self, Metrics, RouteLabel};

/// Body of a request to the MES: a client's streamed body, or bytes we hold (cache
/// fills send none; writes with invalidation rules are buffered to read their fields).
pub type UpstreamBody = Either<ClientBody, Full<Bytes>>;

/// The client to the MES. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct Upstream {
    metrics: Arc<Metrics>,
    client: Client<HttpConnector, UpstreamBody>,
    target: UpstreamTarget,
    response_header: Duration,
    /// Set by an exchange that failed as an unreachable MES does (no connection, no
    /// answer in time, a broken answer, or 502/503/504), cleared by any other answer:
    /// what served without the MES is marked as such meanwhile.
    unreachable: Arc<AtomicBool>,
}

impl Upstream {
    /// A pooled keep-alive client; connect timeout on the connector, idle pooled
    /// connections closed after `pool_idle`.
    pub fn new(target: UpstreamTarget, t: &Timeouts, metrics: Arc<Metrics>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(t.connect));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(t.pool_idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Self {
            metrics,
            client,
            target,
            response_header: t.response_header,
            unreachable: Arc::default(),
        }
    }

    /// The MES URI for a path and query as the client sent them.
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, GatewayError> {
        Uri::builder()
            .scheme(self.target.scheme.clone())
            .authority(self.target.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| GatewayError::BadTarget(e.to_string()))
    }

    /// The MES's `host:port`, for the `Host` header.
    pub fn authority(&self) -> &str {
        self.target.authority.as_str()
    }

    /// `timeouts.response_header`, the default wait for response headers.
    pub fn response_header(&self) -> Duration {
        self.response_header
    }

    fn failed(&self, e: GatewayError) -> GatewayError {
        self.unreachable.store(true, Ordering::Relaxed);
        e
    }

    /// Whether the last exchange with the MES found it unreachable (see the field).
    pub fn unreachable(&self) -> bool {
        self.unreachable.load(Ordering::Relaxed)
    }

    /// Sends a request and waits for the response headers within `wait`; `None` waits as
    /// long as the connection lives (a streamed upload is sent inside this call, and a
    /// slow client must not turn into a half-sent write).
    pub async fn send(
        &self,
        req: Request<UpstreamBody>,
        wait: Option<Duration>,
    ) -> Result<Response<Incoming>, GatewayError> {
        let route = req
            .extensions()
            .get::<RouteLabel>()
            .map_or_else(metrics::unmatched, |l| l.0.clone());
        let started = Instant::now();
        let sent = self.client.request(req);
        let result = match wait {
            Some(w) => tokio::time::timeout(w, sent).await,
            None => Ok(sent.await),
        };
        let status = match &result {
            Ok(Ok(r)) => Some(r.status().as_u16()),
            _ => None,
        };
        let secs = started.elapsed().as_secs_f64();
        self.metrics.observe_upstream(route, status, secs);
        let result =
            result.map_err(|_| self.failed(GatewayError::UpstreamTimeout("response_header")))?;
        match result {
            Ok(resp) => {
                let down = matches!(resp.status().as_u16(), 502..=504);
                self.unreachable.store(down, Ordering::Relaxed);
                Ok(resp)
            }
            // The client's body broke (bad framing, a stall): its fault, not the MES's.
            Err(e) if let Some(fault) = client_fault(&e) => Err(fault),
            Err(e) if e.is_connect() => {
                Err(self.failed(GatewayError::UpstreamConnect(error_chain(&e))))
            }
            Err(e) => Err(self.failed(GatewayError::UpstreamProtocol(error_chain(&e)))),
        }
    }
}

/// The error and its sources on one line: hyper's top-level messages alone say little.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
