//! The admin listener: liveness and readiness, on a port of its own.
//!
//! Purge and metrics will live here too; it never serves client traffic.

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tracing::debug;

use crate::breaker::BreakerState;
use crate::proxy::Gateway;

/// Serves the admin endpoints until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = &mut shutdown => return Ok(()),
        };
        let gateway = gateway.clone();
        let service = service_fn(move |req| {
            let gateway = gateway.clone();
            async move { Ok::<_, Infallible>(route(&gateway, req)) }
        });
        tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

fn route(gateway: &Gateway, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz" => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        "/readyz" => readiness(gateway),
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not found"}),
        ),
    }
}

/// Ready while serving; a Redis breaker that is not closed is reported as degraded
/// (the gateway still answers from L1 and the MES).
fn readiness(gateway: &Gateway) -> Response<Full<Bytes>> {
    let redis = match gateway.l2() {
        None => "off",
        Some(l2) if l2.breaker_state() == BreakerState::Closed => "ok",
        Some(_) => "degraded",
    };
    let status = if redis == "degraded" {
        "degraded"
    } else {
        "ready"
    };
    json(
        StatusCode::OK,
        serde_json::json!({"status": status, "redis": redis}),
    )
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}
