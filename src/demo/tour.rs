//! The demo's tour: a few real requests through the gateway that read a status page (from
//! the status index), change the status of an order on it, read the page and the new
//! status's page again, then a page of history (the ordinary cache), with each step's
//! cache outcome and the list requests that reached the MES, so a first look shows the
//! index kept true by the write itself.
//!
//! The ids are the simulator's own (seeded data), so the printed tour is the same on
//! every fresh start and the README can show it.

use std::fmt;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mes_sim::SimHandle;

/// The status whose first page the tour caches.
pub const FROM: &str = "MANUFACTURING_APPROVED";
/// The status the tour moves an order of that page to.
pub const TO: &str = "MANUFACTURING_STARTED";
/// A status of history, not indexed: the ordinary cache answers it.
pub const COLD: &str = "DELIVERED";

/// One request of the tour and what came back.
#[derive(Debug, Clone)]
pub struct Step {
    /// `GET /api/orders?status=…`, as sent.
    pub request: String,
    /// The answer's status code.
    pub status: u16,
    /// The `X-Cache` header (`-` when absent).
    pub x_cache: String,
    /// The ids a list answer lists, in order (empty for other answers).
    pub ids: Vec<u64>,
    /// The `status` field of a single order's answer.
    pub order_status: Option<String>,
    /// What the step shows, in words.
    pub note: String,
}

impl Step {
    /// A list read: `GET path`, what it shows, its answer and the ids it lists.
    fn list(path: &str, note: String, answer: Answer, ids: Vec<u64>) -> Self {
        Self {
            request: format!("GET {path}"),
            status: answer.status,
            x_cache: answer.x_cache,
            ids,
            order_status: None,
            note,
        }
    }
}

/// The whole tour: the order it moved and its steps.
#[derive(Debug, Clone)]
pub struct Tour {
    /// The order whose status the tour changed (the first one on `FROM`'s page 1).
    pub order: u64,
    /// The steps, in the order they ran.
    pub steps: Vec<Step>,
    /// The operator page's URL, when the gateway serves it (`[ui] enabled`).
    pub page: Option<String>,
}

/// Why the tour could not run.
#[derive(Debug, thiserror::Error)]
pub enum TourError {
    /// A request failed.
    #[error("{request}: {message}")]
    Request {
        /// The request.
        request: String,
        /// What went wrong.
        message: String,
    },
    /// An answer was not what a working gateway gives.
    #[error("{request}: {message}")]
    Unexpected {
        /// The request.
        request: String,
        /// What was wrong.
        message: String,
    },
}

struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

struct Answer {
    status: u16,
    x_cache: String,
    json: serde_json::Value,
}

impl Http {
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Answer, TourError> {
        let request = format!("{method} {path}");
        let fail = |message: String| TourError::Request {
            request: request.clone(),
            message,
        };
        let mut req = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base));
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| fail(e.to_string()))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let status = resp.status().as_u16();
        let x_cache = resp
            .headers()
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| fail(e.to_string()))?
            .to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Ok(Answer {
            status,
            x_cache,
            json,
        })
    }
}

fn ids(json: &serde_json::Value) -> Vec<u64> {
    json["items"]
        .as_array()
        .map(|items| items.iter().filter_map(|i| i["id"].as_u64()).collect())
        .unwrap_or_default()
}

/// What a list answer's `X-Cache` says about where it came from.
fn source(x_cache: &str) -> &'static str {
    match x_cache {
        "HIT-INDEX" => "composed from the status index",
        "HIT-L1" => "from memory",
        "HIT-L2" => "from Redis",
        "MISS" => "fetched from the MES and cached",
        _ => "answered",
    }
}

fn requests(n: u64) -> String {
    format!("{n} list request{}", if n == 1 { "" } else { "s" })
}

/// Waits, bounded, until every status index of `gateway` is ready (or refused): the tour
/// then shows the index at work rather than its preload. Whether they all became ready.
pub async fn indexes_ready(gateway: &crate::gateway::Gateway, within: std::time::Duration) -> bool {
    use crate::index::service::PartitionState;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let states: Vec<PartitionState> = gateway
            .indexes()
            .all()
            .iter()
            .flat_map(|ix| ix.states().into_iter().map(|(_, s)| s))
            .collect();
        if states.iter().all(|s| *s == PartitionState::Ready) {
            return true;
        }
        if states.iter().all(|s| *s != PartitionState::Loading)
            || tokio::time::Instant::now() >= deadline
        {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Runs the tour against the gateway at `gateway`, in front of `sim` (whose counters
/// show what reached the MES). Run it once the status index is ready
/// ([`indexes_ready`]).
pub async fn run(gateway: SocketAddr, sim: &SimHandle) -> Result<Tour, TourError> {
    let http = Http {
        client: Client::builder(TokioExecutor::new()).build_http(),
        base: format!("http://{gateway}"),
    };
    let page = format!("/api/orders?status={FROM}");
    let lists = || sim.stats().list;
    let mut steps = Vec::new();

    let before = lists();
    let a = http.send(Method::GET, &page, None).await?;
    let first = ids(&a.json);
    let Some(&order) = first.first() else {
        return Err(TourError::Unexpected {
            request: format!("GET {page}"),
            message: format!("{} with no orders listed", a.status),
        });
    };
    let asked = lists() - before;
    steps.push(Step::list(
        &page,
        format!(
            "{} orders, the first is {order}; {} ({} to the MES)",
            first.len(),
            source(&a.x_cache),
            requests(asked)
        ),
        a,
        first,
    ));

    let before = lists();
    let change = format!("/api/orders/{order}/status");
    let w = http
        .send(
            Method::PATCH,
            &change,
            Some(format!("{{\"status\":\"{TO}\"}}")),
        )
        .await?;
    steps.push(Step {
        note: format!("order {order}: {FROM} -> {TO}, in the MES"),
        request: format!("PATCH {change} {{\"status\":\"{TO}\"}}"),
        status: w.status,
        x_cache: w.x_cache,
        ids: Vec::new(),
        order_status: w.json["status"].as_str().map(str::to_owned),
    });
    if w.status != 200 {
        return Err(TourError::Unexpected {
            request: format!("PATCH {change}"),
            message: format!("answered {}", w.status),
        });
    }

    let c = http.send(Method::GET, &page, None).await?;
    let again = ids(&c.json);
    let asked = lists() - before;
    steps.push(Step::list(
        &page,
        if again.contains(&order) {
            format!("order {order} is STILL listed: the write did not reach this page")
        } else {
            format!(
                "order {order} is gone from the page, {} ({} to the MES since the write)",
                source(&c.x_cache),
                requests(asked)
            )
        },
        c,
        again,
    ));

    let to_page = format!("/api/orders?status={TO}");
    let before = lists();
    let d = http.send(Method::GET, &to_page, None).await?;
    let listed = ids(&d.json);
    let asked = lists() - before;
    steps.push(Step::list(
        &to_page,
        match listed.iter().position(|&id| id == order) {
            Some(p) => format!(
                "order {order} is listed here now, at position {}, {} ({})",
                p + 1,
                source(&d.x_cache),
                requests(asked)
            ),
            None => format!("order {order} is not on this page"),
        },
        d,
        listed,
    ));

    // History is not indexed: the ordinary cache answers it, the MES once.
    let cold = format!("/api/orders?status={COLD}");
    for again in [false, true] {
        let before = lists();
        let e = http.send(Method::GET, &cold, None).await?;
        let asked = lists() - before;
        let what = if again {
            "again"
        } else {
            "history, not indexed"
        };
        let note = format!("{what}: {} ({})", source(&e.x_cache), requests(asked));
        let listed = ids(&e.json);
        steps.push(Step::list(&cold, note, e, listed));
    }

    let ui = http.send(Method::GET, crate::ui::PATH, None).await?;
    let page = (ui.status == 200).then(|| format!("{}{}", http.base, crate::ui::PATH));
    Ok(Tour { order, steps, page })
}

impl fmt::Display for Tour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "tour (real requests, just made; X-Cache is each answer's cache outcome):"
        )?;
        for (i, s) in self.steps.iter().enumerate() {
            writeln!(f, "  {}. {}", i + 1, s.request)?;
            writeln!(f, "     {} {:<9} {}", s.status, s.x_cache, s.note)?;
        }
        if let Some(page) = &self.page {
            writeln!(
                f,
                "the operator page (these lists, live with Redis; change a status there): {page}"
            )?;
        }
        Ok(())
    }
}
