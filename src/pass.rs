//! Pass-through: what the gateway forwards to the MES as it came, bodies streamed both
//! ways, minus hop-by-hop headers, plus `X-Forwarded-*` and `Via`; and the answers marked
//! as a bypass of the cache.
//!
//! It decides nothing about caching (the read path does) or invalidation (the write path).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response};
use http_body::Body as _;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tracing::warn;

use crate::client_body::ClientBody;
use crate::error::GatewayError;
use crate::forward;
use crate::outcome::{BypassReason, CACHE_STATUS, CacheOutcome, MissDetail, X_CACHE, cache_status};
use crate::upstream::{Upstream, UpstreamBody};

/// Body of every response to a client: bytes we hold, or the MES's stream.
pub type Body = Either<Full<Bytes>, Incoming>;

/// Forwards requests to the MES. Cheap to clone.
#[derive(Clone)]
pub struct Pass {
    upstream: Upstream,
}

impl Pass {
    /// Forwards through `upstream`.
    pub fn new(upstream: Upstream) -> Self {
        Self { upstream }
    }

    /// The pooled client to the MES.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    pub async fn bypass(
        &self,
        req: Request<ClientBody>,
        remote: SocketAddr,
        reason: BypassReason,
    ) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let req = Request::from_parts(parts, Either::Left(body));
        self.forward_marked(req, remote, reason).await
    }

    /// Forwards a request on a cached route and marks the answer as a bypass.
    pub async fn forward_marked(
        &self,
        req: Request<UpstreamBody>,
        remote: SocketAddr,
        reason: BypassReason,
    ) -> Response<Body> {
        let mut resp = self.pass_body(req, remote).await;
        mark_bypass(&mut resp, reason);
        resp
    }

    pub async fn pass(&self, req: Request<ClientBody>, remote: SocketAddr) -> Response<Body> {
        let (parts, body) = req.into_parts();
        self.pass_body(Request::from_parts(parts, Either::Left(body)), remote)
            .await
    }

    /// Forwards a request untouched but for hop-by-hop headers, streaming both bodies.
    pub async fn pass_body(
        &self,
        req: Request<UpstreamBody>,
        remote: SocketAddr,
    ) -> Response<Body> {
        match self.forward(req, remote).await {
            Ok(resp) => resp.map(Either::Right),
            Err(e) => {
                warn!(error = %e, kind = e.as_str(), "forward failed");
                problem(&e)
            }
        }
    }

    pub async fn forward(
        &self,
        req: Request<UpstreamBody>,
        remote: SocketAddr,
    ) -> Result<Response<Incoming>, GatewayError> {
        let (mut parts, body) = req.into_parts();
        let upstream = &self.upstream;
        if parts.method == Method::CONNECT {
            return Err(GatewayError::BadTarget("CONNECT is not proxied".into()));
        }
        let Some(target) = parts.uri.path_and_query().map(|p| p.as_str()) else {
            let msg = format!("{} has no path; send an origin-form target", parts.uri);
            return Err(GatewayError::BadTarget(msg));
        };
        let uri = upstream.uri(target)?;
        let host = original_host(&parts);
        let version = parts.version;
        forward::request_headers(
            &mut parts.headers,
            remote.ip(),
            version,
            host,
            upstream.authority(),
        );
        parts.uri = uri;
        parts.version = http::Version::HTTP_11;
        let wait = match (&body, parts.extensions.get::<RouteTimeout>()) {
            (Either::Left(incoming), _) if !incoming.is_end_stream() => None,
            (_, Some(RouteTimeout(t))) => Some(*t),
            _ => Some(upstream.response_header()),
        };
        let mut resp = upstream
            .send(Request::from_parts(parts, body), wait)
            .await?;
        // `Via` on a response names the protocol it was received with: the MES's answer,
        // whatever the client spoke (as on cached answers).
        let received = resp.version();
        forward::response_headers(resp.headers_mut(), received);
        Ok(resp)
    }
}

/// A route's own wait for response headers (`response_timeout`), carried with the request.
#[derive(Debug, Clone, Copy)]
pub struct RouteTimeout(pub Duration);

pub fn original_host(parts: &Parts) -> Option<HeaderValue> {
    parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    })
}

pub fn problem(e: &GatewayError) -> Response<Body> {
    e.to_response().map(Either::Left)
}

/// `Cache-Status` and `X-Cache` of an answer that bypassed the cache.
pub fn mark_bypass(resp: &mut Response<Body>, reason: BypassReason) {
    let outcome = CacheOutcome::Bypass(reason);
    let cs = cache_status(outcome, MissDetail::default(), None);
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&cs) {
        h.insert(CACHE_STATUS, v);
    }
    h.insert(X_CACHE, HeaderValue::from_static(outcome.x_cache()));
}
