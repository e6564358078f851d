//! The admin listener: liveness, readiness, purge and the entity index, on a port of its
//! own. Purge and lookups need `Authorization: Bearer <admin.token>`.
//!
//! It never serves client traffic.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde_json::json;

use crate::consistency::Name;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info};

use crate::breaker::BreakerState;
use crate::gateway::Gateway;

/// The most admin connections open at once: scrapers, probes and an operator's curl
/// need a handful; one more is closed at once, so a client that opens connections
/// without end cannot take the process's descriptors.
pub const MAX_CONNECTIONS: usize = 64;

/// Serves the admin endpoints until `shutdown` resolves. A connection has
/// `timeouts.client_header` to send a request's headers, and lives at most
/// `timeouts.client_idle`.
pub async fn run(
    listener: TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = &mut shutdown => return Ok(()),
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, max = MAX_CONNECTIONS, "admin connection refused: too many open");
            continue;
        };
        let timeouts = gateway.config().timeouts;
        let gateway = gateway.clone();
        let service = service_fn(move |req| {
            let gateway = gateway.clone();
            async move { Ok::<_, Infallible>(route(&gateway, req).await) }
        });
        tokio::spawn(async move {
            let _slot = slot;
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(timeouts.client_header);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            // Admin answers are small and quick: a connection lives at most
            // `client_idle`, then ends after the request in flight (a scraper simply
            // connects again), and one that still holds on after another
            // `client_header` is dropped.
            let life = timeouts.client_idle.max(timeouts.client_header);
            let ended = tokio::select! {
                ended = conn.as_mut() => Some(ended),
                () = tokio::time::sleep(life) => None,
            };
            let ended = match ended {
                Some(ended) => ended,
                None => {
                    conn.as_mut().graceful_shutdown();
                    match tokio::time::timeout(timeouts.client_header, conn).await {
                        Ok(ended) => ended,
                        Err(_) => return debug!("admin connection dropped: it held on"),
                    }
                }
            };
            if let Err(e) = ended {
                debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

/// Dispatches one admin request.
pub async fn route(gateway: &Gateway, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (_, "/healthz") => json_response(StatusCode::OK, json!({"status": "ok"})),
        (_, "/readyz") => readiness(gateway).await,
        (&Method::GET, "/metrics") => {
            let mut resp = Response::new(Full::new(Bytes::from(
                gateway.metrics().render(&gateway.snapshot()),
            )));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        (&Method::POST, "/admin/purge") => match refusal(gateway, &req) {
            None => purge(gateway, req.uri().query().unwrap_or("")).await,
            Some(resp) => resp,
        },
        (&Method::POST, "/admin/purge/compute") => match refusal(gateway, &req) {
            None => purge_compute(gateway, req).await,
            Some(resp) => resp,
        },
        (&Method::POST, "/admin/reload") => match refusal(gateway, &req) {
            None => reload(gateway),
            Some(resp) => resp,
        },
        (&Method::POST, "/admin/index/reload") => match refusal(gateway, &req) {
            None => reload_indexes(gateway),
            Some(resp) => resp,
        },
        (&Method::GET, "/admin/entity") => match refusal(gateway, &req) {
            None => entity(gateway, req.uri().query().unwrap_or("")).await,
            Some(resp) => resp,
        },
        _ => json_response(StatusCode::NOT_FOUND, json!({"error": "not found"})),
    }
}

/// The answer refusing an admin action, or `None` when the bearer token is right.
fn refusal(gateway: &Gateway, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let Some(token) = gateway.config().admin_token.as_deref() else {
        let msg = "admin actions are off: set admin.token or MESGATE_ADMIN_TOKEN";
        return Some(json_response(StatusCode::FORBIDDEN, json!({"error": msg})));
    };
    let sent = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if sent.is_some_and(|s| constant_time_eq(s.as_bytes(), token.as_bytes())) {
        return None;
    }
    let mut resp = json_response(
        StatusCode::UNAUTHORIZED,
        json!({"error": "bad or missing bearer token"}),
    );
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    Some(resp)
}

/// Compares without an early exit, so response time says nothing about the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `?family=status:NEW`, `?group=status`, `?key=<cache key>` or `?all=true`.
async fn purge(gateway: &Gateway, query: &str) -> Response<Full<Bytes>> {
    let inv = gateway.invalidator();
    let done = if let Some(f) = param(query, "family") {
        inv.apply(vec![Name::family(&f)], None).await;
        json!({"purged": "family", "family": f})
    } else if let Some(g) = param(query, "group") {
        inv.apply(vec![Name::group(&g)], None).await;
        json!({"purged": "group", "group": g})
    } else if let Some(k) = param(query, "key") {
        gateway.l1().remove(&k);
        let shared = match gateway.l2() {
            Some(l2) => l2.delete(&k).await.map_err(|e| e.to_string()).err(),
            None => None,
        };
        json!({"purged": "key", "key": k, "shared_error": shared})
    } else if param(query, "all").as_deref() == Some("true") {
        inv.purge_all().await;
        json!({"purged": "all"})
    } else {
        let msg = "say what to purge: ?family=F, ?group=G, ?key=K or ?all=true";
        return json_response(StatusCode::BAD_REQUEST, json!({"error": msg}));
    };
    info!(what = %done, "admin purge");
    json_response(StatusCode::OK, done)
}

/// `POST /admin/purge/compute?route=NAME` with the key fields as a request would send
/// them (`{"model_hash":…,"material":…,"quantity":…}`): drops that result here, in
/// Redis, and (told over Redis) on every instance.
async fn purge_compute(gateway: &Gateway, req: Request<Incoming>) -> Response<Full<Bytes>> {
    use http_body_util::{BodyExt, Limited};
    let bad = |msg: String| json_response(StatusCode::BAD_REQUEST, json!({"error": msg}));
    let query = req.uri().query().unwrap_or("").to_owned();
    let Some(name) = param(&query, "route") else {
        return bad("say which compute route: ?route=NAME".into());
    };
    let routes = gateway.routes();
    let Some(route) = routes
        .routes()
        .iter()
        .find(|r| *r.name == name && r.compute.is_some())
    else {
        return bad(format!("{name:?} is not a compute route"));
    };
    let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return bad(format!("body: {e}")),
    };
    match gateway.computer().purge(route, &body).await {
        Ok((key, shared_error)) => {
            let done = json!({"purged": "compute", "route": name, "key": key, "shared_error": shared_error});
            info!(what = %done, "admin purge");
            json_response(StatusCode::OK, done)
        }
        Err(e) => bad(format!("body: {e}")),
    }
}

/// Reads the config file again; on error the old rules keep serving.
fn reload(gateway: &Gateway) -> Response<Full<Bytes>> {
    match gateway.reload() {
        Ok(report) => {
            info!(?report, "config reloaded");
            json_response(StatusCode::OK, json!({"reloaded": report}))
        }
        Err(e) => {
            tracing::error!(error = %e, "reload refused, the old rules keep serving");
            json_response(StatusCode::BAD_REQUEST, json!({"error": e.to_string()}))
        }
    }
}

/// `?id=order:42`: the families the entity is known to belong to.
async fn entity(gateway: &Gateway, query: &str) -> Response<Full<Bytes>> {
    let Some(id) = param(query, "id") else {
        let msg = "give the entity: ?id=order:42";
        return json_response(StatusCode::BAD_REQUEST, json!({"error": msg}));
    };
    let families = gateway.invalidator().known(&id).await;
    json_response(StatusCode::OK, json!({"entity": id, "families": families}))
}

/// Ready while serving and the MES accepts connections; a Redis breaker that is not
/// closed is reported as degraded (the gateway still answers from L1 and the MES).
async fn readiness(gateway: &Gateway) -> Response<Full<Bytes>> {
    if gateway.is_draining() {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "draining"}),
        );
    }
    let mes = gateway.config().upstream.authority.as_str().to_owned();
    let connect = tokio::net::TcpStream::connect(mes.as_str());
    let reachable = matches!(
        tokio::time::timeout(std::time::Duration::from_millis(500), connect).await,
        Ok(Ok(_))
    );
    if !reachable {
        let body = json!({"status": "unready", "mes": "unreachable", "upstream": mes});
        return json_response(StatusCode::SERVICE_UNAVAILABLE, body);
    }
    let redis = match gateway.l2() {
        None => "off",
        Some(l2) if l2.breaker_state() == BreakerState::Closed => "ok",
        Some(_) => "degraded",
    };
    // Cut off from the bus, the instance still answers (from the MES), so it stays ready.
    let bus = match gateway.l2() {
        None => "off",
        Some(_) if gateway.invalidator().is_cut_off() => "cut_off",
        Some(_) => "ok",
    };
    let status = if redis == "degraded" || bus == "cut_off" {
        "degraded"
    } else {
        "ready"
    };
    let mut body = json!({"status": status, "redis": redis, "bus": bus});
    if let Some(progress) = index_progress(gateway) {
        body["index"] = progress;
    }
    json_response(StatusCode::OK, body)
}

/// Loads every status index again from the MES (nothing is served from them meanwhile):
/// after a write made behind mesgate's back that the audit cannot see, for instance.
fn reload_indexes(gateway: &Gateway) -> Response<Full<Bytes>> {
    let indexes = gateway.indexes();
    for ix in indexes.all() {
        ix.gap();
    }
    let routes: Vec<String> = indexes
        .all()
        .iter()
        .map(|ix| ix.route().to_string())
        .collect();
    json_response(StatusCode::ACCEPTED, json!({"reloading": routes}))
}

/// Each status index's partitions by state (`{"order-list": {"SUBMITTED": "ready", …}}`):
/// a partition still loading is served by the ordinary read path, so it does not make the
/// instance unready.
fn index_progress(gateway: &Gateway) -> Option<serde_json::Value> {
    let all = gateway.indexes().all();
    if all.is_empty() {
        return None;
    }
    let mut out = serde_json::Map::new();
    for ix in all {
        let states: serde_json::Map<String, serde_json::Value> = ix
            .states()
            .into_iter()
            .map(|(p, s)| (p.to_owned(), json!(s.as_str())))
            .collect();
        out.insert(ix.route().to_string(), states.into());
    }
    Some(out.into())
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}
