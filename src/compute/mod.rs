//! The compute path: a POST route declared a pure computation (`[route.compute]`, the
//! price calculation) is computed at most once per key across every instance, and its
//! result served from the local tier and Redis for the rule's `ttl`.
//!
//! The phases of a request: buffer the body → key it ([`canon`]; no key: forward
//! untouched) → local tier → join or start this instance's flight for the key
//! ([`crate::flight`]) → wait for the flight, bounded by the route's `response_timeout`
//! → respond. The flight runs detached ([`run`]): a client that goes away cancels
//! nothing. It looks in Redis, takes the key's lease or waits for the holder's result
//! (told on the compute channel, polled as a fallback), and takes over when a dead
//! holder's lease runs out. Redis keys and the channel are [`shared`]'s; the counters
//! [`stats`]'s. `Prefer: respond-async` is not handled here yet: the seam is
//! [`Computer::start`], which starts (or joins) the detached flight without waiting.

pub mod canon;
mod run;
pub mod shared;
pub mod stats;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::request::Parts;
use http::{Request, Response};
use http_body_util::{BodyExt, Either, Full, Limited};
use tokio::sync::broadcast;
use tracing::debug;

use crate::client_body::{ClientBody, ClientBodyError};
use crate::clock::Clock;
use crate::config::ComputeRule;
use crate::config::route::Route;
use crate::consistency::{Invalidator, Name};
use crate::entry::Entry;
use crate::error::GatewayError;
use crate::flight::{Flights, Role, Waiter};
use crate::l1::{L1, L1Entry};
use crate::l2::L2;
use crate::outcome::{BypassReason, CacheOutcome, MissDetail, NoStoreReason};
use crate::pass::{Body, Pass, problem};
use crate::read::response::entry_response;
use crate::upstream::error_chain;

use self::shared::Shared;
use self::stats::ComputeStats;

/// The header a kept result carries its computation time in (ms), for the time-saved
/// metric; never sent to a client.
const COMPUTE_MS: HeaderName = HeaderName::from_static("x-mesgate-compute-ms");

/// How a flight ended: what every request that waited on it is answered with.
#[derive(Debug, Clone)]
pub enum Done {
    /// A kept result.
    Kept {
        /// The result.
        entry: Arc<Entry>,
        /// Where it came from.
        how: How,
    },
    /// The MES's answer, not kept (a status the rule does not keep, a body that is not
    /// JSON, `Set-Cookie`): handed to this instance's waiters, never stored.
    Unkept(Arc<Entry>, NoStoreReason),
    /// No answer (the MES failed or timed out, or the wait passed its bound).
    Failed(Arc<GatewayError>),
}

/// Where a kept result came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// Already in Redis when the flight looked.
    Stored,
    /// Computed by this instance's flight.
    Computed,
    /// Computed by another instance while this flight waited on its lease.
    Remote,
}

/// The compute path. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Computer {
    inner: Arc<Inner>,
}

struct Inner {
    l1: L1,
    shared: Option<Shared>,
    pass: Pass,
    clock: Clock,
    invalidator: Invalidator,
    flights: Flights<Done>,
    stats: ComputeStats,
    /// Keys whose computation ended somewhere (from the compute channel).
    notices: broadcast::Sender<Arc<str>>,
    /// The wait on a route without `response_timeout`, and the bound on reading an
    /// answer's body.
    default_wait: Duration,
    /// Makes lease tokens unique per instance.
    instance: String,
    tokens: AtomicU64,
}

/// A request's computation, as the detached flight takes it over.
pub(crate) struct Job {
    key: Arc<str>,
    route: Arc<String>,
    rule: Arc<ComputeRule>,
    parts: Parts,
    body: Bytes,
    remote: SocketAddr,
    deadline: Instant,
}

impl Computer {
    /// Builds the path over the tiers; with Redis and `listen`, follows the compute
    /// channel in the background (results stored, purges).
    pub fn new(
        (l1, l2): (L1, Option<L2>),
        pass: Pass,
        clock: Clock,
        invalidator: Invalidator,
        default_wait: Duration,
        listen: bool,
    ) -> Self {
        let (notices, _) = broadcast::channel(1024);
        let c = Self {
            inner: Arc::new(Inner {
                l1,
                shared: l2.map(Shared::new),
                pass,
                clock,
                invalidator,
                flights: Flights::default(),
                stats: ComputeStats::default(),
                notices,
                default_wait,
                instance: run::instance_id(),
                tokens: AtomicU64::new(0),
            }),
        };
        if listen && c.inner.shared.is_some() {
            tokio::spawn(run::follow(Arc::downgrade(&c.inner)));
        }
        c
    }

    /// The counters (metrics).
    pub fn stats(&self) -> &ComputeStats {
        &self.inner.stats
    }

    /// Answers a request on a compute route; also says which outcome it counts under.
    pub async fn handle(
        &self,
        req: Request<ClientBody>,
        remote: SocketAddr,
        route: &Route,
        rule: &Arc<ComputeRule>,
    ) -> (Response<Body>, &'static str) {
        let h = req.headers();
        if h.contains_key(header::AUTHORIZATION) || h.contains_key(header::COOKIE) {
            self.inner.stats.count_bypass();
            let reason = BypassReason::Credentials;
            return (self.inner.pass.bypass(req, remote, reason).await, "bypass");
        }
        let (parts, body) = req.into_parts();
        let body = match read_body(body, rule.max_body).await {
            Ok(b) => b,
            Err(e) => return (problem(&e), "bypass"),
        };
        self.handle_read(parts, body, remote, route, rule).await
    }

    /// [`Computer::handle`] of a request whose body is read (and carries no
    /// credentials): an accepted operation's, executed from the queue.
    pub(crate) async fn handle_read(
        &self,
        parts: http::request::Parts,
        body: Bytes,
        remote: SocketAddr,
        route: &Route,
        rule: &Arc<ComputeRule>,
    ) -> (Response<Body>, &'static str) {
        let key = match canon::key(&route.name, rule, &body) {
            Ok(k) => k,
            Err(why) => {
                debug!(%why, "compute: no key, forwarded untouched");
                self.inner.stats.count_bypass();
                let req = Request::from_parts(parts, Either::Right(Full::new(body)));
                let reason = BypassReason::KeyFields;
                return (
                    self.inner.pass.forward_marked(req, remote, reason).await,
                    "bypass",
                );
            }
        };
        let head = false;
        if let Some(entry) = self.local(&key) {
            self.inner.stats.count_hit(compute_ms(&entry));
            let now = self.inner.clock.now_ms();
            let resp = respond_entry(
                &entry,
                CacheOutcome::HitLocal,
                MissDetail::default(),
                head,
                now,
            );
            return (resp, "hit_l1");
        }
        let wait = route.response_timeout.unwrap_or(self.inner.default_wait);
        let job = Job {
            key: key.into(),
            route: route.name.clone(),
            rule: rule.clone(),
            parts,
            body,
            remote,
            deadline: Instant::now() + wait,
        };
        let (waiter, leader) = self.start(job);
        let done = match tokio::time::timeout(wait, waiter.wait()).await {
            Ok(Some(done)) => done,
            Ok(None) => Done::Failed(Arc::new(GatewayError::FetchLost)),
            Err(_) => Done::Failed(Arc::new(GatewayError::UpstreamTimeout(
                "response_timeout (route)",
            ))),
        };
        self.answer(done, leader)
    }

    /// Starts the detached flight for `job`'s key, or joins the one under way; returns a
    /// waiter on it and whether this request started it. The seam for an asynchronous
    /// answer (`Prefer: respond-async`): hold the waiter in an operation resource
    /// instead of awaiting it here.
    pub(crate) fn start(&self, job: Job) -> (Waiter<Done>, bool) {
        match self.inner.flights.join(&job.key) {
            Role::Leader(leader) => {
                let w = leader.waiter();
                tokio::spawn(run::run(self.clone(), leader, job));
                (w, true)
            }
            Role::Waiter(w) => {
                self.inner.stats.count_joined_local();
                (w, false)
            }
        }
    }

    /// The response to a request whose flight ended with `done`.
    fn answer(&self, done: Done, leader: bool) -> (Response<Body>, &'static str) {
        let now = self.inner.clock.now_ms();
        match done {
            Done::Kept { entry, how } => {
                if !(leader && how == How::Computed) {
                    self.inner.stats.add_saved(compute_ms(&entry));
                }
                if how == How::Stored {
                    let none = MissDetail::default();
                    let resp = respond_entry(&entry, CacheOutcome::HitShared, none, false, now);
                    return (resp, "hit_l2");
                }
                let miss = MissDetail {
                    stored: true,
                    collapsed: !leader || how == How::Remote,
                    no_store: None,
                };
                let resp = respond_entry(&entry, CacheOutcome::Miss, miss, false, now);
                (resp, "miss")
            }
            Done::Unkept(entry, reason) => {
                let miss = MissDetail {
                    stored: false,
                    collapsed: !leader,
                    no_store: Some(reason),
                };
                let resp = respond_entry(&entry, CacheOutcome::Miss, miss, false, now);
                (resp, "miss")
            }
            Done::Failed(e) => (problem(&e), "miss"),
        }
    }

    /// A fresh result in the local tier.
    fn local(&self, key: &str) -> Option<Arc<Entry>> {
        let l = self.inner.l1.get(&l1_key(key))?;
        l.is_fresh(self.inner.clock.now_ms())
            .then(|| l.entry.clone())
    }

    /// Keeps a result in the local tier for what is left of its lifetime.
    fn keep_local(&self, key: &str, route: &str, entry: &Arc<Entry>) {
        let fresh_until_ms = entry.stored_at_ms.saturating_add(entry.ttl_ms);
        let left = fresh_until_ms.saturating_sub(self.inner.clock.now_ms());
        if left == 0 {
            return;
        }
        let fence = self
            .inner
            .invalidator
            .fence(&[Name::Route(route.to_owned())]);
        let l = L1Entry {
            entry: entry.clone(),
            fresh_until_ms,
            keep_for: Duration::from_millis(left),
            fence,
            hit_headers: HeaderMap::new(),
        };
        self.inner.l1.insert(l1_key(key).into(), l);
    }

    /// Purges the result of the key `body` makes on `route` (its key fields, as a
    /// request would send them), here and, through Redis, on every instance. Returns
    /// the key, and the Redis error if Redis could not be told.
    pub async fn purge(
        &self,
        route: &Route,
        body: &[u8],
    ) -> Result<(String, Option<String>), canon::NoKey> {
        let Some(rule) = &route.compute else {
            return Err(canon::NoKey::NotObject);
        };
        let key = canon::key(&route.name, rule, body)?;
        self.inner.l1.remove(&l1_key(&key));
        let shared_error = match &self.inner.shared {
            Some(s) => s.purge(&key).await.err().map(|e| e.to_string()),
            None => None,
        };
        Ok((key, shared_error))
    }

    fn token(&self) -> String {
        let n = self.inner.tokens.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.inner.instance)
    }
}

/// The local tier's key of a computation (distinct from every read key, which is a path).
fn l1_key(key: &str) -> String {
    format!("compute:{key}")
}

/// The computation time a kept result carries, ms (0 when unknown).
fn compute_ms(entry: &Entry) -> u64 {
    entry
        .headers
        .get(&COMPUTE_MS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn respond_entry(
    entry: &Entry,
    outcome: CacheOutcome,
    miss: MissDetail,
    head: bool,
    now_ms: u64,
) -> Response<Body> {
    let fwd = (outcome == CacheOutcome::Miss).then(|| entry.status.as_u16());
    let mut resp = entry_response(entry, outcome, miss, fwd, head, now_ms);
    resp.headers_mut().remove(&COMPUTE_MS);
    resp
}

pub(crate) async fn read_body(body: ClientBody, max: usize) -> Result<Bytes, GatewayError> {
    match Limited::new(body, max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(GatewayError::BodyTooLarge(max))
        }
        Err(e) => {
            let fault = e.downcast_ref::<ClientBodyError>();
            Err(fault.map_or_else(
                || GatewayError::BadBody(error_chain(&*e)),
                |f| f.to_gateway(),
            ))
        }
    }
}
