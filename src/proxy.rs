//! The request as a fixed sequence of phases: match route → build key → local tier →
//! single-flight (shared tier, then MES) → store → respond; everything else is forwarded
//! (writes with invalidation rules go through [`crate::write`]).
//!
//! It owns the read decisions; the tiers, the client and the header surgery live in their
//! modules.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use std::time::Instant;

use tracing::{debug, info, warn};

use crate::clock::Clock;
use arc_swap::ArcSwap;

use crate::config::{CachePolicy, Config, Members, Overrides};
use crate::consistency::{Check, Fence, Invalidator, Name};
use crate::entry::Entry;
use crate::error::GatewayError;
use crate::family::{Source, json_field};
use crate::flight::{Flights, Role};
use crate::forward;
use crate::key::{self, CacheKey};
use crate::l1::{L1, L1Entry};
use crate::l2::{L2, Lookup, SharedStore};
use crate::metrics::{self, Metrics, RouteLabel, RouteRequests};
use crate::outcome::{self, BypassReason, CacheOutcome, MissDetail, NoStoreReason, cache_status};
use crate::refresh::{RefreshIndex, Target};
use crate::route::Route;
use crate::route::RouteTable;
use crate::upstream::{Upstream, UpstreamBody, error_chain};

/// `X-Cache`, parsed once (a `&str` name is parsed on every use).
const X_CACHE: http::HeaderName = http::HeaderName::from_static("x-cache");
/// `Cache-Status` (RFC 9211).
const CACHE_STATUS: http::HeaderName = http::HeaderName::from_static("cache-status");

/// Body of every response to a client: bytes we hold, or the MES's stream.
pub type Body = Either<Full<Bytes>, Incoming>;

/// The route table in force, with each route's request counters resolved against it.
struct Routing {
    table: Arc<RouteTable>,
    /// By route index in `table`.
    requests: Vec<Arc<RouteRequests>>,
    unmatched: Arc<RouteRequests>,
    /// Whether some write rule refreshes on write: fills only remember their keys then.
    refresh_on: bool,
}

impl Routing {
    fn new(table: Arc<RouteTable>, metrics: &Metrics) -> Self {
        let requests = table
            .routes()
            .iter()
            .map(|r| Arc::new(metrics.route_requests(&r.name)))
            .collect();
        let unmatched = Arc::new(metrics.route_requests(&metrics::unmatched()));
        let refresh_on = table
            .routes()
            .iter()
            .filter_map(|r| r.invalidate.as_ref())
            .any(|rule| !rule.refresh.is_zero());
        Self {
            table,
            requests,
            unmatched,
            refresh_on,
        }
    }
}

/// The gateway: config, tiers, client, flights and invalidation. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Gateway {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) upstream: Upstream,
    pub(crate) l1: L1,
    pub(crate) l2: Option<L2>,
    flights: Flights<Arc<Fill>>,
    /// Cached keys by epoch name, for writes that refresh what they make wrong.
    refresh: RefreshIndex,
    pub(crate) clock: Clock,
    pub(crate) invalidator: Invalidator,
    pub(crate) metrics: Arc<Metrics>,
    draining: std::sync::atomic::AtomicBool,
    /// The route table in force; swapped whole by a reload.
    routes: ArcSwap<Routing>,
    access_log: std::sync::atomic::AtomicBool,
    /// Where a reload reads the config from.
    source: std::sync::Mutex<Option<(std::path::PathBuf, Overrides)>>,
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReloadReport {
    /// Routes now in force.
    pub routes: usize,
    /// Cached routes whose policy changed or that went away: their entries were dropped.
    pub flushed: Vec<String>,
    /// Settings that changed in the file but need a restart to apply.
    pub need_restart: Vec<&'static str>,
}

/// Why a reload did not happen (the old rules keep serving).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The gateway was not started from a file.
    #[error("no config file to reload from")]
    NoSource,
    /// The new file is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// What a fill needs to know about its request, decided before it starts.
pub(crate) struct FillCtx {
    policy: Arc<CachePolicy>,
    key: CacheKey,
    /// The names the entry depends on (families, groups, route, global).
    names: Vec<Name>,
    /// Its names and the tick current when the request arrived: the fetch sees every
    /// write up to it.
    fence: Fence,
    /// The route, and the headers a reader's fill sends to the MES once known: the key
    /// is then remembered for refresh on write.
    route: Arc<String>,
    sent: Option<HeaderMap>,
}

/// An answer a write fetched again, ready for [`Gateway::refresh_install`].
pub(crate) struct Refetched {
    ctx: FillCtx,
    /// The Redis epochs of its names read before its fetch, when it may go to Redis too.
    shared_before: Option<Vec<u64>>,
    entry: Arc<Entry>,
    entities: Vec<String>,
}

/// Why a gateway could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Redis URL was accepted by validation but not by the client.
    #[error("redis.url: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Where a hit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    Local,
    Shared,
}

/// The result of one flight, shared by the leader and its waiters.
#[derive(Debug)]
enum Fill {
    /// Fresh in a tier (found by the flight's own re-check).
    Hit { entry: Arc<Entry>, tier: Tier },
    /// Fetched from the MES.
    Fetched {
        entry: Arc<Entry>,
        stored: bool,
        no_store: Option<NoStoreReason>,
    },
    /// The MES failed; a stale entry stands in.
    Stale {
        entry: Arc<Entry>,
        fwd_status: Option<u16>,
    },
    /// Too large to buffer: the leader streams the answer when it is still unread (it was
    /// announced too large by `Content-Length`); everyone else forwards on its own.
    TooLarge(std::sync::Mutex<Option<Response<Incoming>>>),
    /// The MES could not be reached and nothing stale was at hand.
    Failed(GatewayError),
}

impl Gateway {
    /// Builds the gateway; connects to nothing yet (Redis connects lazily).
    pub fn new(config: Config) -> Result<Self, BuildError> {
        Self::with_clock(config, Clock::system())
    }

    /// Builds the gateway with an injected clock (tests control freshness with it).
    ///
    /// Starts the invalidation bus listener and retry loop when Redis is configured, so
    /// it must be called inside a tokio runtime.
    pub fn with_clock(config: Config, clock: Clock) -> Result<Self, BuildError> {
        let l2 = config.redis.as_ref().map(L2::new).transpose()?;
        let l1 = L1::new(config.l1_max_bytes);
        let fill_ttl = config.timeouts.total * 2 + Duration::from_secs(10);
        let metrics = Arc::new(Metrics::new());
        let invalidator = Invalidator::new(
            l1.clone(),
            l2.clone(),
            clock.clone(),
            index_ttl(&config),
            fill_ttl,
        );
        invalidator.start_background(metrics.bus_latency.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                upstream: Upstream::new(config.upstream.clone(), &config.timeouts, metrics.clone()),
                routes: ArcSwap::from_pointee(Routing::new(config.routes.clone(), &metrics)),
                metrics,
                draining: Default::default(),
                access_log: config.log.access.into(),
                source: Default::default(),
                l1,
                l2,
                flights: Flights::default(),
                refresh: RefreshIndex::default(),
                clock,
                invalidator,
                config,
            }),
        })
    }

    /// Remembers where the config came from, so `reload` (SIGHUP, `POST /admin/reload`)
    /// can read it again.
    pub fn set_config_source(&self, path: std::path::PathBuf, overrides: Overrides) {
        *self.inner.source.lock().unwrap_or_else(|e| e.into_inner()) = Some((path, overrides));
    }

    /// Reads the config file again. An invalid file changes nothing (the error names the
    /// field); a valid one swaps the route table, keeping the entries of unchanged routes.
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let source = self
            .inner
            .source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let (path, overrides) = source.ok_or(ReloadError::NoSource)?;
        let new = Config::load(&path, overrides)?;
        Ok(self.apply_config(&new))
    }

    /// Puts the routes (and the access-log switch) of `new` in force.
    pub fn apply_config(&self, new: &Config) -> ReloadReport {
        let old = self.inner.routes.load_full();
        let flushed: Vec<String> = old
            .table
            .routes()
            .iter()
            .filter(|r| r.cache.is_some())
            .filter(|r| {
                let same = new.routes.routes().iter().find(|n| n.name == r.name);
                same.is_none_or(|n| n.cache != r.cache)
            })
            .map(|r| r.name.to_string())
            .collect();
        let names: Vec<Name> = flushed.iter().map(|n| Name::Route(n.clone())).collect();
        self.inner.routes.store(Arc::new(Routing::new(
            new.routes.clone(),
            &self.inner.metrics,
        )));
        self.inner.invalidator.bump_local(&names);
        // Refresh targets carry their route's policy: the next fills register them anew.
        self.inner.refresh.clear();
        let access = new.log.access;
        self.inner
            .access_log
            .store(access, std::sync::atomic::Ordering::Relaxed);
        ReloadReport {
            routes: new.routes.routes().len(),
            flushed,
            need_restart: need_restart(&self.inner.config, new),
        }
    }

    /// Marks the instance as draining: `/readyz` answers 503 so load balancers move away.
    pub fn start_draining(&self) {
        self.inner
            .draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.inner
            .draining
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The metrics (rendered by the admin listener).
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The invalidation state (admin, tests).
    pub fn invalidator(&self) -> &Invalidator {
        &self.inner.invalidator
    }

    /// The runtime config.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The local tier (admin and tests flush it).
    pub fn l1(&self) -> &L1 {
        &self.inner.l1
    }

    /// The shared tier, when configured.
    pub fn l2(&self) -> Option<&L2> {
        self.inner.l2.as_ref()
    }

    /// Requests waiting on single-flight fetches right now, leaders included.
    pub fn flights_waiting(&self) -> usize {
        self.inner.flights.waiting()
    }

    /// Handles one request from `remote`. Never fails: errors become problem responses.
    pub async fn handle(&self, req: Request<Incoming>, remote: SocketAddr) -> Response<Body> {
        let started = Instant::now();
        let access = self
            .inner
            .access_log
            .load(std::sync::atomic::Ordering::Relaxed);
        // Copied only when an access line will be written.
        let request_line = access.then(|| (req.method().clone(), req.uri().clone()));
        let (resp, counted, kind) = self.dispatch(req, remote).await;
        let outcome = outcome::label_for_x_cache(resp.headers().get(&X_CACHE)).unwrap_or(kind);
        let secs = started.elapsed().as_secs_f64();
        self.inner.metrics.observe_request(&counted, outcome, secs);
        let route = &counted.name;
        let Some((method, uri)) = request_line else {
            return resp;
        };
        info!(
            target: "mesgate::access",
            %method,
            path = uri.path(),
            route = route.as_str(),
            outcome,
            status = resp.status().as_u16(),
            ms = secs * 1000.0,
            "request"
        );
        resp
    }

    /// Matches the route and runs the path for it; also says which route label and which
    /// outcome (when no cache outcome is reported) the request counts under.
    async fn dispatch(
        &self,
        mut req: Request<Incoming>,
        remote: SocketAddr,
    ) -> (Response<Body>, Arc<RouteRequests>, &'static str) {
        let routing = self.inner.routes.load();
        let Some(m) = routing.table.find(req.method(), req.uri().path()) else {
            req.extensions_mut()
                .insert(RouteLabel(metrics::unmatched()));
            let counted = routing.unmatched.clone();
            return (self.pass(req, remote).await, counted, "forward");
        };
        let route = m.route;
        let name = routing.requests[m.index].clone();
        let params: Vec<(String, String)> = route
            .path
            .params()
            .zip(m.params)
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect();
        let cached_read = route.cache.is_some() && is_read(req.method());
        if !cached_read {
            // The read path adds it only past a hit: the hit path allocates no extensions.
            req.extensions_mut().insert(RouteLabel(route.name.clone()));
        }
        if let Some(t) = route.response_timeout {
            req.extensions_mut().insert(RouteTimeout(t));
        }
        if cached_read {
            return (
                self.read(req, remote, route, &params).await,
                name,
                "forward",
            );
        }
        match &route.invalidate {
            Some(rule) => (
                self.write(req, remote, rule.clone(), params).await,
                name,
                "write",
            ),
            None => (self.pass(req, remote).await, name, "forward"),
        }
    }

    // ---------------------------------------------------------------------------------
    // Read path.
    // ---------------------------------------------------------------------------------

    async fn read(
        &self,
        mut req: Request<Incoming>,
        remote: SocketAddr,
        route: &Route,
        params: &[(String, String)],
    ) -> Response<Body> {
        let Some(policy) = route.cache.as_ref() else {
            return self.pass(req, remote).await;
        };
        let head = req.method() == Method::HEAD;
        let now = self.inner.clock.now_ms();
        // The key is built in a per-thread buffer and looked up synchronously: a hit
        // allocates nothing for it; a miss takes its own copy.
        let probe = KEY_BUF.with_borrow_mut(|buf| {
            let uri = req.uri();
            let upstream = key::build_into(
                buf,
                &route.name,
                policy,
                uri.path(),
                uri.query(),
                req.headers(),
            )?;
            Ok(match self.local_lookup(policy, buf) {
                Some(l) => match self.servable(buf, l, now) {
                    Ok(l) => Probe::Hit(l),
                    Err(l) => Probe::Miss(Some(l), CacheKey::from_parts(buf.clone(), upstream)),
                },
                None => Probe::Miss(None, CacheKey::from_parts(buf.clone(), upstream)),
            })
        });
        let (local, key) = match probe {
            Ok(Probe::Hit(l)) => return l1_hit(&l, head, now),
            Ok(Probe::Miss(local, key)) => (local, key),
            Err(reason) => {
                req.extensions_mut().insert(RouteLabel(route.name.clone()));
                return self.bypass(req, remote, reason).await;
            }
        };
        req.extensions_mut().insert(RouteLabel(route.name.clone()));
        let (parts, _) = req.into_parts();
        let stale_ms = policy.stale_if_error.as_millis() as u64;
        let why = match &local {
            None => "absent",
            Some(l) if now >= l.fresh_until_ms => "expired",
            Some(_) => "invalidated",
        };
        debug!(key = %key.key, why, "local miss");
        // An invalidated entry never stands in, not even when the MES fails.
        let stale = local.filter(|l| l.fence.is_valid()).map(|l| Stale {
            until_ms: l.fresh_until_ms.saturating_add(stale_ms),
            entry: l.entry.clone(),
        });
        let ctx = self.fill_ctx(&route.name, policy.clone(), key, params);
        self.miss(parts, remote, ctx, stale).await
    }

    fn fill_ctx(
        &self,
        route: &Arc<String>,
        policy: Arc<CachePolicy>,
        key: CacheKey,
        params: &[(String, String)],
    ) -> FillCtx {
        let query = key.query_pairs();
        let lookup = |source: Source, field: &str| {
            let pairs = match source {
                Source::Path => params,
                Source::Query => &query[..],
                _ => return None,
            };
            pairs
                .iter()
                .find(|(n, _)| n == field)
                .map(|(_, v)| v.clone())
        };
        let families: Vec<String> = policy
            .families
            .iter()
            .filter_map(|t| t.render(&lookup))
            .collect();
        let mut names = Name::all_for(&families);
        // A reload that changes the route's policy drops its entries through this name.
        names.push(Name::Route(route.to_string()));
        let fence = self.inner.invalidator.fence(&names);
        FillCtx {
            policy,
            key,
            names,
            fence,
            route: route.clone(),
            sent: None,
        }
    }

    fn local_lookup(&self, policy: &CachePolicy, key: &str) -> Option<Arc<L1Entry>> {
        if policy.ttl_l1.is_zero() {
            return None;
        }
        self.inner.l1.get(key)
    }

    /// An L1 entry that may be served at `now` (`Err` gives it back otherwise): fresh and
    /// valid, or bumped only by writes its fetch already saw (promise 2b), then put back
    /// with those bumps recorded, so it is counted once.
    #[inline]
    fn servable(&self, key: &str, l: Arc<L1Entry>, now: u64) -> Result<Arc<L1Entry>, Arc<L1Entry>> {
        match l.check(now) {
            Some(Check::Valid) => Ok(l),
            Some(Check::Kept) => {
                let kept = Arc::new(l.rebased());
                self.inner.l1.replace(key, &l, kept.clone());
                self.inner.invalidator.count_revalidated();
                Ok(kept)
            }
            _ => Err(l),
        }
    }

    /// Joins or leads the flight for the key, then answers from its result.
    async fn miss(
        &self,
        parts: Parts,
        remote: SocketAddr,
        mut ctx: FillCtx,
        stale: Option<Stale>,
    ) -> Response<Body> {
        let head = parts.method == Method::HEAD;
        // Fills under different bumps never merge (promise 2): a request that arrives after
        // an invalidation never receives a fetch that started before it.
        let flight_key: Arc<str> = format!("{}#{}", ctx.key.key, ctx.fence.tag()).into();
        let (waiter, leader) = match self.inner.flights.join(&flight_key) {
            Role::Waiter(w) => (w, false),
            Role::Leader(l) => {
                let w = l.waiter();
                let fetch = self.fill_request(&parts, remote, &ctx.policy, &ctx.key);
                if self.inner.routes.load().refresh_on {
                    ctx.sent = fetch.as_ref().ok().map(|r| r.headers().clone());
                }
                let gw = self.clone();
                // Detached: a client that goes away cannot cancel a fill others wait on.
                tokio::spawn(async move {
                    let fill = gw.run_flight(fetch, ctx, stale).await;
                    l.finish(Arc::new(fill));
                });
                (w, true)
            }
        };
        let wait = self.inner.config.timeouts.total + Duration::from_secs(1);
        let fill = match tokio::time::timeout(wait, waiter.wait()).await {
            Ok(Some(f)) => f,
            Ok(None) => return problem(&GatewayError::FetchLost),
            Err(_) => return problem(&GatewayError::UpstreamTimeout("total")),
        };
        self.answer_fill(&fill, parts, remote, leader, head).await
    }

    async fn answer_fill(
        &self,
        fill: &Fill,
        parts: Parts,
        remote: SocketAddr,
        leader: bool,
        head: bool,
    ) -> Response<Body> {
        let now = self.inner.clock.now_ms();
        let none = MissDetail::default();
        match fill {
            Fill::Hit { entry, tier } => {
                let outcome = match tier {
                    Tier::Local => CacheOutcome::HitLocal,
                    Tier::Shared => CacheOutcome::HitShared,
                };
                entry_response(entry, outcome, none, None, head, now)
            }
            Fill::Fetched {
                entry,
                stored,
                no_store,
            } => {
                let shareable = no_store.is_none_or(|r| r.shareable());
                if !leader && !shareable {
                    let req = Request::from_parts(parts, Either::Right(Full::new(Bytes::new())));
                    return self
                        .forward_marked(req, remote, BypassReason::NotShareable)
                        .await;
                }
                let detail = MissDetail {
                    stored: *stored,
                    collapsed: !leader,
                    no_store: *no_store,
                };
                let status = Some(entry.status.as_u16());
                entry_response(entry, CacheOutcome::Miss, detail, status, head, now)
            }
            Fill::Stale { entry, fwd_status } => {
                entry_response(entry, CacheOutcome::Stale, none, *fwd_status, head, now)
            }
            Fill::TooLarge(held) => {
                let held = if leader && !head {
                    held.lock().unwrap_or_else(|e| e.into_inner()).take()
                } else {
                    None
                };
                if let Some(mut resp) = held {
                    let received = resp.version();
                    forward::response_headers(resp.headers_mut(), received);
                    let mut resp = resp.map(Either::Right);
                    mark_bypass(&mut resp, BypassReason::TooLarge);
                    return resp;
                }
                let req = Request::from_parts(parts, Either::Right(Full::new(Bytes::new())));
                self.forward_marked(req, remote, BypassReason::TooLarge)
                    .await
            }
            Fill::Failed(e) => problem(e),
        }
    }

    /// The GET sent to the MES for a fill: the leader's headers minus validators, the
    /// normalized path and query of the key.
    fn fill_request(
        &self,
        parts: &Parts,
        remote: SocketAddr,
        policy: &CachePolicy,
        key: &CacheKey,
    ) -> Result<Request<UpstreamBody>, GatewayError> {
        let mut headers = parts.headers.clone();
        forward::fill_headers(&mut headers, &policy.vary);
        let host = original_host(parts);
        let upstream = &self.inner.upstream;
        forward::request_headers(
            &mut headers,
            remote.ip(),
            parts.version,
            host,
            upstream.authority(),
        );
        let label = parts.extensions.get::<RouteLabel>().cloned();
        self.upstream_get(key, headers, label)
    }

    /// A bodiless GET of the key's path and normalized query, for a fill or a refresh.
    fn upstream_get(
        &self,
        key: &CacheKey,
        headers: HeaderMap,
        label: Option<RouteLabel>,
    ) -> Result<Request<UpstreamBody>, GatewayError> {
        let mut req = Request::new(Either::Right(Full::new(Bytes::new())));
        *req.uri_mut() = self.inner.upstream.uri(key.upstream_path())?;
        *req.headers_mut() = headers;
        if let Some(label) = label {
            req.extensions_mut().insert(label);
        }
        Ok(req)
    }

    /// One flight: re-check L1, ask L2, fetch from the MES, store.
    async fn run_flight(
        &self,
        fetch: Result<Request<UpstreamBody>, GatewayError>,
        ctx: FillCtx,
        mut stale: Option<Stale>,
    ) -> Fill {
        let now = self.inner.clock.now_ms();
        let local = self.local_lookup(&ctx.policy, &ctx.key.key);
        if let Some(l) = local.and_then(|l| self.servable(&ctx.key.key, l, now).ok()) {
            return Fill::Hit {
                entry: l.entry.clone(),
                tier: Tier::Local,
            };
        }
        let mut snapshot = None;
        // Read before the lookup (promise 1b): Redis may hold the pre-write answer of a
        // write not yet bumped here.
        let began = self.inner.invalidator.watermark();
        if let Some(found) = self.shared_lookup(&ctx).await {
            if let Some(e) = found.entry {
                if e.is_fresh(now) {
                    let entry = Arc::new(e);
                    self.register_refresh(&ctx, now);
                    let fence = self.inner.invalidator.fence_at(&ctx.names, began);
                    self.store_local(&ctx, fence, &entry, now);
                    return Fill::Hit {
                        entry,
                        tier: Tier::Shared,
                    };
                }
                stale = newer_stale(stale, e, ctx.policy.stale_if_error);
            }
            snapshot = Some(found.epochs);
        }
        let stale = stale.filter(|s| now < s.until_ms).map(|s| s.entry);
        match fetch {
            Ok(req) => self.fetch_and_store(req, &ctx, snapshot, stale).await,
            Err(e) => Fill::Failed(e),
        }
    }

    /// Asks Redis for the entry and the current epochs of its families; `None` when the
    /// shared tier is off for the route, waits for a queued invalidation, or failed.
    async fn shared_lookup(&self, ctx: &FillCtx) -> Option<Lookup> {
        let l2 = self
            .inner
            .l2
            .as_ref()
            .filter(|_| !ctx.policy.ttl_l2.is_zero())?;
        if self.inner.invalidator.closed_any(&ctx.names) {
            return None;
        }
        match l2.lookup(&ctx.key.key, &ctx.names).await {
            Ok(found) => Some(found),
            Err(e) => {
                debug!(error = %e, kind = e.as_str(), tier = "shared", "lookup failed");
                None
            }
        }
    }

    async fn fetch_and_store(
        &self,
        req: Request<UpstreamBody>,
        ctx: &FillCtx,
        snapshot: Option<Vec<u64>>,
        stale: Option<Arc<Entry>>,
    ) -> Fill {
        let total = self.inner.config.timeouts.total;
        let timed_out = FetchError::Gateway(GatewayError::UpstreamTimeout("total"));
        let fetched = tokio::time::timeout(total, self.fetch(req, ctx.policy.max_body)).await;
        let (parts, body) = match fetched.unwrap_or(Err(timed_out)) {
            Ok(ok) => ok,
            Err(FetchError::TooLarge) => return Fill::TooLarge(std::sync::Mutex::new(None)),
            Err(FetchError::TooLargeAnnounced(resp)) => {
                return Fill::TooLarge(std::sync::Mutex::new(Some(resp)));
            }
            Err(FetchError::Gateway(e)) => {
                warn!(error = %e, key = %ctx.key.key, "fill failed");
                return match stale {
                    Some(entry) => Fill::Stale {
                        entry,
                        fwd_status: None,
                    },
                    None => Fill::Failed(e),
                };
            }
        };
        if parts.status.is_server_error()
            && let Some(entry) = stale
        {
            return Fill::Stale {
                entry,
                fwd_status: Some(parts.status.as_u16()),
            };
        }
        self.store(parts, body, ctx, snapshot).await
    }

    async fn fetch(
        &self,
        req: Request<UpstreamBody>,
        max_body: usize,
    ) -> Result<(http::response::Parts, Bytes), FetchError> {
        let resp = self
            .inner
            .upstream
            .send(req, Some(self.inner.upstream.response_header()))
            .await
            .map_err(FetchError::Gateway)?;
        let announced = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if announced.is_some_and(|n| n > max_body as u64) {
            return Err(FetchError::TooLargeAnnounced(resp));
        }
        let (parts, body) = resp.into_parts();
        match Limited::new(body, max_body).collect().await {
            Ok(collected) => Ok((parts, collected.to_bytes())),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(FetchError::TooLarge),
            Err(e) => Err(FetchError::Gateway(GatewayError::UpstreamProtocol(
                error_chain(&*e),
            ))),
        }
    }

    /// Decides cacheability; records the members, then stores in L1 and (fenced) in L2.
    async fn store(
        &self,
        parts: http::response::Parts,
        body: Bytes,
        ctx: &FillCtx,
        snapshot: Option<Vec<u64>>,
    ) -> Fill {
        let policy = &ctx.policy;
        let mut no_store = no_store_reason(policy, parts.status, &parts.headers);
        let members = match (&no_store, &policy.members) {
            (None, Some(m)) => read_members(m, &body),
            _ => Vec::new(),
        };
        // Recorded before the write marks are checked (promise 2a): a write either was
        // opened before this check, or finds the families here.
        // (Memberships seen in an answer not stored are still true of some moment; they
        // can only widen a later invalidation.)
        self.remember(&members).await;
        let entities: Vec<String> = members.iter().map(|(e, _)| e.clone()).collect();
        if no_store.is_none() && !self.admits(ctx, &entities) {
            no_store = Some(NoStoreReason::Invalidated);
        }
        let now = self.inner.clock.now_ms();
        let fenced = snapshot.is_some();
        let entry = stored_entry(parts, body, policy, now, snapshot.unwrap_or_default());
        if no_store.is_none() || no_store == Some(NoStoreReason::Invalidated) {
            self.register_refresh(ctx, now);
        }
        if no_store.is_none() {
            self.store_local(ctx, ctx.fence.clone(), &entry, now);
            self.store_shared(ctx, &entry, fenced).await;
        }
        Fill::Fetched {
            entry,
            stored: no_store.is_none(),
            no_store,
        }
    }

    /// Refresh on write, first half: fetches again, for at most `budget`, this instance's
    /// entries under any of `names` that are worth it (the write is in the MES by now),
    /// and records the memberships they show. Returns what came back storable in time,
    /// each with the fence taken before its fetch (its tick is the write's or later).
    pub(crate) async fn refresh_fetch(&self, names: &[Name], budget: Duration) -> Vec<Refetched> {
        let inv = &self.inner.invalidator;
        let now = self.inner.clock.now_ms();
        let targets = self
            .inner
            .refresh
            .targets(names, |t| self.refresh_live(t, now));
        if targets.is_empty() {
            return Vec::new();
        }
        let deadline = tokio::time::Instant::now() + budget;
        let fetches = targets.into_iter().map(|t| async move {
            let fence = inv.fence(&t.names);
            let ctx = FillCtx {
                policy: t.policy.clone(),
                key: t.key.clone(),
                names: t.names.clone(),
                fence,
                route: t.route.clone(),
                // Not remembered again: only a reader's fill says the key is still read,
                // so a page nobody reads stops being refreshed after its `ttl_l1`.
                sent: None,
            };
            // Read after the local fence and before the fetch: the Redis store (in the
            // write's own Redis step) expects exactly these plus the write's moves.
            let shared_before = match self.inner.l2.as_ref() {
                Some(l2) if !t.policy.ttl_l2.is_zero() && !inv.closed_any(&t.names) => {
                    l2.epochs(&t.names).await.ok()
                }
                _ => None,
            };
            let req =
                self.upstream_get(&t.key, t.headers.clone(), Some(RouteLabel(t.route.clone())));
            let refetched = match req {
                Ok(req) => {
                    let fetch = self.fetch(req, t.policy.max_body);
                    match tokio::time::timeout_at(deadline, fetch).await {
                        Ok(Ok((parts, body))) => {
                            self.prepare_refresh(ctx, shared_before, parts, body).await
                        }
                        _ => None,
                    }
                }
                Err(_) => None,
            };
            if refetched.is_none() {
                debug!(key = %t.key.key, "refresh failed, late or not storable: dropped");
                inv.count_refresh(false);
            }
            refetched
        });
        futures_util::future::join_all(fetches)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// A refreshed answer made ready to go into L1: storable, its members recorded
    /// (true facts: the fetch began after the write was in the MES).
    async fn prepare_refresh(
        &self,
        ctx: FillCtx,
        shared_before: Option<Vec<u64>>,
        parts: http::response::Parts,
        body: Bytes,
    ) -> Option<Refetched> {
        let policy = &ctx.policy;
        if no_store_reason(policy, parts.status, &parts.headers).is_some() {
            return None;
        }
        let members = match &policy.members {
            Some(m) => read_members(m, &body),
            None => Vec::new(),
        };
        self.remember(&members).await;
        let entry = stored_entry(parts, body, policy, self.inner.clock.now_ms(), Vec::new());
        Some(Refetched {
            entities: members.into_iter().map(|(e, _)| e).collect(),
            ctx,
            shared_before,
            entry,
        })
    }

    /// Refresh on write, second half, called right after the write's local bump (before
    /// its Redis part, so no read of this instance waits in between): puts in L1 each
    /// refreshed entry whose names nothing with a tick after its fetch began has moved
    /// (promise 2b: the write itself and writes acknowledged earlier do not count), and
    /// that no finished write it may not have seen keeps out (promise 2a). Returns those to store in
    /// Redis in the write's Redis step (`moved`: the epochs the write moves), so other
    /// instances find them there after the write's bus message: each expects its Redis
    /// epochs as read before its fetch plus the write's moves, and nothing else.
    pub(crate) fn refresh_install(
        &self,
        fetched: Vec<Refetched>,
        moved: &[Name],
    ) -> Vec<SharedStore> {
        let inv = &self.inner.invalidator;
        let now = self.inner.clock.now_ms();
        let mut shared = Vec::new();
        for Refetched {
            ctx,
            shared_before,
            entry,
            entities,
        } in fetched
        {
            if !self.admits(&ctx, &entities) {
                debug!(key = %ctx.key.key, "a listed entity was written since: not refreshed");
                inv.count_refresh(false);
                continue;
            }
            let stored = self.store_local(&ctx, ctx.fence.clone(), &entry, now);
            if !stored {
                debug!(key = %ctx.key.key, "another write moved its epochs: not refreshed");
            }
            inv.count_refresh(stored);
            if let Some(before) = shared_before.filter(|_| stored) {
                let expected = ctx
                    .names
                    .iter()
                    .zip(before)
                    .map(|(n, v)| v + u64::from(moved.contains(n)))
                    .collect();
                shared.push(SharedStore {
                    key: ctx.key.key.clone(),
                    entry: Arc::new(Entry {
                        epochs: expected,
                        ..entry.as_ref().clone()
                    }),
                    keep: ctx.policy.ttl_l2 + ctx.policy.stale_if_error,
                    names: ctx.names,
                });
            }
        }
        shared
    }

    /// Whether an answer listing `entities` may be stored (promise 2a).
    fn admits(&self, ctx: &FillCtx, entities: &[String]) -> bool {
        // Its own families: bumping one of them ends the entry (groups, the global name
        // and the route's would end far more).
        let families: Vec<&str> = ctx.names.iter().filter_map(Name::as_family).collect();
        let began = ctx.fence.began();
        self.inner.invalidator.admits(entities, began, &families)
    }

    /// Records which families the listed entities were seen in, before the entry that
    /// lists them becomes visible (so a write that follows finds them).
    pub(crate) async fn remember(&self, members: &[(String, Vec<String>)]) {
        if members.is_empty() {
            return;
        }
        self.inner.invalidator.remember_local(members);
        let Some(l2) = &self.inner.l2 else { return };
        if let Err(e) = l2.remember(members, index_ttl(&self.inner.config)).await {
            debug!(error = %e, kind = e.as_str(), tier = "shared", "entity index store failed");
        }
    }

    /// Puts a fetched answer in L1 under `fence`, unless a bump already ended it.
    /// Returns whether it went in.
    fn store_local(&self, ctx: &FillCtx, fence: Fence, entry: &Arc<Entry>, now: u64) -> bool {
        let policy = &ctx.policy;
        if policy.ttl_l1.is_zero() || !fence.is_valid() {
            return false;
        }
        let own_limit = now + policy.ttl_l1.as_millis() as u64;
        let origin_limit = entry.stored_at_ms.saturating_add(entry.ttl_ms);
        let fresh_until_ms = if policy.ttl_l2.is_zero() {
            own_limit
        } else {
            own_limit.min(origin_limit.max(now + 1))
        };
        let keep_for = Duration::from_millis(fresh_until_ms - now) + policy.stale_if_error;
        let value = L1Entry {
            hit_headers: hit_headers(entry),
            entry: entry.clone(),
            fresh_until_ms,
            keep_for,
            fence,
        };
        self.inner.l1.insert(Arc::from(ctx.key.key.as_str()), value);
        true
    }

    /// Remembers a key whose fill got a storable answer (stored or fenced out), for
    /// the writes that refresh what they make wrong.
    fn register_refresh(&self, ctx: &FillCtx, now: u64) {
        let Some(headers) = &ctx.sent else { return };
        if ctx.policy.ttl_l1.is_zero() {
            return;
        }
        let target = Target {
            key: ctx.key.clone(),
            policy: ctx.policy.clone(),
            names: ctx.names.clone(),
            headers: headers.clone(),
            route: ctx.route.clone(),
            filled_ms: now,
        };
        self.inner
            .refresh
            .register(target, |t| self.refresh_live(t, now));
    }

    /// Worth refreshing: a reader's fill got an answer for it within its L1 TTL. (L1
    /// holding it says less: entries stay there past freshness for `stale_if_error`, and
    /// refreshed entries would keep each other alive under a steady stream of writes.)
    fn refresh_live(&self, t: &Target, now: u64) -> bool {
        now.saturating_sub(t.filled_ms) <= t.policy.ttl_l1.as_millis() as u64
    }

    /// Stores in Redis before the flight finishes, so once an answer has left, every
    /// instance can find it, unless an epoch moved since the fill began (checked and
    /// stored in one script). Bounded by the op timeout; a failure only costs the share.
    async fn store_shared(&self, ctx: &FillCtx, entry: &Arc<Entry>, fenced: bool) {
        let policy = &ctx.policy;
        let Some(l2) = self.inner.l2.as_ref().filter(|_| !policy.ttl_l2.is_zero()) else {
            return;
        };
        if !fenced || self.inner.invalidator.closed_any(&ctx.names) {
            return;
        }
        let keep = policy.ttl_l2 + policy.stale_if_error;
        if let Err(e) = l2.store_fenced(&ctx.key.key, entry, keep, &ctx.names).await {
            debug!(error = %e, kind = e.as_str(), tier = "shared", "store failed");
        }
    }

    // ---------------------------------------------------------------------------------
    // Pass-through.
    // ---------------------------------------------------------------------------------

    async fn bypass(
        &self,
        req: Request<Incoming>,
        remote: SocketAddr,
        reason: BypassReason,
    ) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let req = Request::from_parts(parts, Either::Left(body));
        self.forward_marked(req, remote, reason).await
    }

    /// Forwards a request on a cached route and marks the answer as a bypass.
    async fn forward_marked(
        &self,
        req: Request<UpstreamBody>,
        remote: SocketAddr,
        reason: BypassReason,
    ) -> Response<Body> {
        let mut resp = self.pass_body(req, remote).await;
        mark_bypass(&mut resp, reason);
        resp
    }

    async fn pass(&self, req: Request<Incoming>, remote: SocketAddr) -> Response<Body> {
        let (parts, body) = req.into_parts();
        self.pass_body(Request::from_parts(parts, Either::Left(body)), remote)
            .await
    }

    /// Forwards a request untouched but for hop-by-hop headers, streaming both bodies.
    pub(crate) async fn pass_body(
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

    pub(crate) async fn forward(
        &self,
        req: Request<UpstreamBody>,
        remote: SocketAddr,
    ) -> Result<Response<Incoming>, GatewayError> {
        let (mut parts, body) = req.into_parts();
        let upstream = &self.inner.upstream;
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
struct RouteTimeout(Duration);

/// Settings a reload cannot apply to a running instance.
fn need_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let checks = [
        ("listen", old.listen != new.listen),
        ("upstream", old.upstream.authority != new.upstream.authority),
        (
            "admin",
            old.admin_listen != new.admin_listen || old.admin_token != new.admin_token,
        ),
        (
            "redis",
            old.redis.as_ref().map(|r| &r.url) != new.redis.as_ref().map(|r| &r.url),
        ),
        ("l1", old.l1_max_bytes != new.l1_max_bytes),
        (
            "log.format",
            old.log.format != new.log.format || old.log.level != new.log.level,
        ),
    ];
    for (name, changed) in checks {
        if changed {
            out.push(name);
        }
    }
    out
}

/// Keeps the newer of two stale candidates.
fn newer_stale(current: Option<Stale>, e: Entry, window: Duration) -> Option<Stale> {
    if current
        .as_ref()
        .is_some_and(|s| s.entry.stored_at_ms >= e.stored_at_ms)
    {
        return current;
    }
    let until_ms = e
        .stored_at_ms
        .saturating_add(e.ttl_ms)
        .saturating_add(window.as_millis() as u64);
    Some(Stale {
        until_ms,
        entry: Arc::new(e),
    })
}

/// How long entity memberships must be remembered: as long as any entry listing them can
/// live in either tier, plus a margin.
fn index_ttl(config: &Config) -> Duration {
    let longest = config
        .routes
        .routes()
        .iter()
        .filter_map(|r| r.cache.as_ref())
        .map(|c| c.ttl_l1.max(c.ttl_l2) + c.stale_if_error)
        .max()
        .unwrap_or_default();
    longest + Duration::from_secs(60)
}

/// The members of a body: each entity with the families it shows it belongs to.
fn read_members(m: &Members, body: &[u8]) -> Vec<(String, Vec<String>)> {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let mut list = &json;
    for seg in m.items.split('.').filter(|s| !s.is_empty()) {
        match list.get(seg) {
            Some(next) => list = next,
            None => return Vec::new(),
        }
    }
    let items: Vec<&serde_json::Value> = match (m.items.is_empty(), list.as_array()) {
        (true, _) => vec![list],
        (false, Some(a)) => a.iter().collect(),
        (false, None) => Vec::new(),
    };
    items
        .into_iter()
        .filter_map(|item| {
            let lookup = |_: Source, field: &str| json_field(item, field);
            let entity = m.entity.render(&lookup)?;
            let families = m
                .member_of
                .iter()
                .filter_map(|t| t.render(&lookup))
                .collect();
            Some((entity, families))
        })
        .collect()
}

/// An entry past its freshness that may stand in when the MES fails, until `until_ms`.
struct Stale {
    entry: Arc<Entry>,
    until_ms: u64,
}

/// Why a fill's fetch gave no storable bytes.
enum FetchError {
    /// The body passed `max_body` while it was being read.
    TooLarge,
    /// `Content-Length` says more than `max_body`: nothing read yet, the answer can still
    /// be streamed to the request that led the fill.
    TooLargeAnnounced(Response<Incoming>),
    Gateway(GatewayError),
}

fn is_read(m: &Method) -> bool {
    *m == Method::GET || *m == Method::HEAD
}

fn original_host(parts: &Parts) -> Option<HeaderValue> {
    parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    })
}

/// The security defaults of DESIGN.md, first failing rule wins.
pub fn no_store_reason(
    policy: &CachePolicy,
    status: StatusCode,
    headers: &HeaderMap,
) -> Option<NoStoreReason> {
    if !policy.statuses.contains(&status) {
        return Some(NoStoreReason::Status);
    }
    if headers.contains_key(header::SET_COOKIE) {
        return Some(NoStoreReason::SetCookie);
    }
    let directives = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_ascii_lowercase().replace(' ', ""));
    for d in directives {
        let zero_ttl = matches!(d.as_str(), "max-age=0" | "s-maxage=0");
        let private = d.starts_with("private=") || d.starts_with("no-cache=");
        if zero_ttl || private || matches!(d.as_str(), "private" | "no-store" | "no-cache") {
            return Some(NoStoreReason::CacheControl);
        }
    }
    vary_reason(policy, headers)
}

fn vary_reason(policy: &CachePolicy, headers: &HeaderMap) -> Option<NoStoreReason> {
    let names = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty());
    // Fills never send Accept-Encoding, so an identity answer suits every client.
    let identity = !headers.contains_key(header::CONTENT_ENCODING);
    for n in names {
        if n == "accept-encoding" && identity {
            continue;
        }
        if n == "*" {
            return Some(NoStoreReason::VaryStar);
        }
        if !policy.vary.iter().any(|v| v.as_str() == n) {
            return Some(NoStoreReason::VaryMismatch);
        }
    }
    None
}

/// `Cache-Status` and `X-Cache` of an answer that bypassed the cache.
fn mark_bypass(resp: &mut Response<Body>, reason: BypassReason) {
    let outcome = CacheOutcome::Bypass(reason);
    let cs = cache_status(outcome, MissDetail::default(), None);
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&cs) {
        h.insert(CACHE_STATUS, v);
    }
    h.insert(X_CACHE, HeaderValue::from_static(outcome.x_cache()));
}

thread_local! {
    /// The cache key of the request this thread is looking up.
    static KEY_BUF: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// What the local tier said about a request's key.
enum Probe {
    /// A fresh, valid entry.
    Hit(Arc<L1Entry>),
    /// No usable entry (maybe one kept for stale-if-error), and the key, owned.
    Miss(Option<Arc<L1Entry>>, CacheKey),
}

fn problem(e: &GatewayError) -> Response<Body> {
    e.to_response().map(Either::Left)
}

/// The entry a storable MES answer becomes: hop-by-hop headers, `Content-Length` and
/// `Age` dropped (they are set again on every answer from it).
fn stored_entry(
    mut parts: http::response::Parts,
    body: Bytes,
    policy: &CachePolicy,
    now: u64,
    epochs: Vec<u64>,
) -> Arc<Entry> {
    forward::strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::AGE);
    Arc::new(Entry {
        status: parts.status,
        headers: parts.headers,
        body,
        stored_at_ms: now,
        ttl_ms: policy.ttl_l2.as_millis() as u64,
        epochs,
    })
}

/// The prebuilt headers of an L1 hit.
fn hit_headers(entry: &Entry) -> HeaderMap {
    let mut h = entry.headers.clone();
    h.insert(
        CACHE_STATUS,
        HeaderValue::from_static("mesgate; hit; detail=l1"),
    );
    h.insert(
        X_CACHE,
        HeaderValue::from_static(CacheOutcome::HitLocal.x_cache()),
    );
    h.append(header::VIA, forward::via(http::Version::HTTP_11));
    // A placeholder the hit overwrites in place: inserting a new name would grow the
    // cloned map (a reallocation per hit).
    h.insert(header::AGE, age_value(0));
    h
}

/// An `Age` value. The first hour's are built once and shared (a hit clones a static
/// slice, no allocation, no reference count); later ones are formatted.
fn age_value(secs: u64) -> HeaderValue {
    static AGES: std::sync::LazyLock<Vec<HeaderValue>> = std::sync::LazyLock::new(|| {
        let mut digits = String::new();
        let mut ends = Vec::with_capacity(3601);
        for s in 0..=3600u64 {
            digits.push_str(&s.to_string());
            ends.push(digits.len());
        }
        // One allocation kept for the life of the process (about 14 KB).
        let digits: &'static str = String::leak(digits);
        let mut start = 0;
        ends.into_iter()
            .map(|end| {
                let v = HeaderValue::from_static(&digits[start..end]);
                start = end;
                v
            })
            .collect()
    });
    match AGES.get(secs as usize) {
        Some(v) => v.clone(),
        None => HeaderValue::from(secs),
    }
}

/// The answer to an L1 hit: prebuilt headers plus `Age`, the body shared, not copied.
fn l1_hit(l: &L1Entry, head: bool, now_ms: u64) -> Response<Body> {
    if head {
        let none = MissDetail::default();
        return entry_response(&l.entry, CacheOutcome::HitLocal, none, None, true, now_ms);
    }
    let mut resp = Response::new(Either::Left(Full::new(l.entry.body.clone())));
    *resp.status_mut() = l.entry.status;
    let mut headers = l.hit_headers.clone();
    headers.insert(header::AGE, age_value(l.entry.age_secs(now_ms)));
    *resp.headers_mut() = headers;
    resp
}

/// A response replayed from an entry, with `Age`, `Cache-Status`, `X-Cache` and `Via`.
fn entry_response(
    entry: &Entry,
    outcome: CacheOutcome,
    miss: MissDetail,
    fwd_status: Option<u16>,
    head: bool,
    now_ms: u64,
) -> Response<Body> {
    let body = if head {
        Bytes::new()
    } else {
        entry.body.clone()
    };
    let mut resp = Response::new(Either::Left(Full::new(body)));
    *resp.status_mut() = entry.status;
    let mut headers = entry.headers.clone();
    if head {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(entry.body.len()));
    }
    if outcome != CacheOutcome::Miss {
        headers.insert(header::AGE, age_value(entry.age_secs(now_ms)));
    }
    if let Ok(v) = HeaderValue::from_str(&cache_status(outcome, miss, fwd_status)) {
        headers.insert(CACHE_STATUS, v);
    }
    headers.insert(X_CACHE, HeaderValue::from_static(outcome.x_cache()));
    headers.append(header::VIA, forward::via(http::Version::HTTP_11));
    *resp.headers_mut() = headers;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(extra: &str) -> CachePolicy {
        let text = format!(
            "upstream = \"http://127.0.0.1:9\"\n[[route]]\nname = \"l\"\npath = \"/o\"\n[route.cache]\n{extra}"
        );
        let c: Config = text.parse().unwrap();
        (*c.routes.routes()[0].cache.clone().unwrap()).clone()
    }

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn security_defaults_one_rule_each() {
        let p = policy("");
        let ok = StatusCode::OK;
        assert_eq!(no_store_reason(&p, ok, &h(&[])), None);
        assert_eq!(
            no_store_reason(&p, StatusCode::NOT_FOUND, &h(&[])),
            Some(NoStoreReason::Status)
        );
        assert_eq!(
            no_store_reason(&p, ok, &h(&[("set-cookie", "a=1")])),
            Some(NoStoreReason::SetCookie)
        );
        for cc in ["private", "no-store", "max-age=5, No-Cache"] {
            assert_eq!(
                no_store_reason(&p, ok, &h(&[("cache-control", cc)])),
                Some(NoStoreReason::CacheControl),
                "{cc}"
            );
        }
        assert_eq!(
            no_store_reason(&p, ok, &h(&[("cache-control", "max-age=60")])),
            None
        );
        for cc in ["max-age=0", "public, s-maxage=0", "private=\"x\""] {
            let got = no_store_reason(&p, ok, &h(&[("cache-control", cc)]));
            assert_eq!(got, Some(NoStoreReason::CacheControl), "{cc}");
        }
        let ae = h(&[("vary", "Accept-Encoding")]);
        assert_eq!(
            no_store_reason(&p, ok, &ae),
            None,
            "identity answers suit everyone"
        );
        let gz = h(&[("vary", "Accept-Encoding"), ("content-encoding", "gzip")]);
        assert_eq!(
            no_store_reason(&p, ok, &gz),
            Some(NoStoreReason::VaryMismatch)
        );
        assert_eq!(
            no_store_reason(&p, ok, &h(&[("vary", "*")])),
            Some(NoStoreReason::VaryStar)
        );
        assert_eq!(
            no_store_reason(&p, ok, &h(&[("vary", "Accept-Language")])),
            Some(NoStoreReason::VaryMismatch)
        );
        let varied = policy("vary = [\"accept-language\"]");
        assert_eq!(
            no_store_reason(&varied, ok, &h(&[("vary", "Accept-Language")])),
            None
        );
    }

    #[test]
    fn head_replay_keeps_length_without_body() {
        let entry = Entry {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"12345"),
            stored_at_ms: 1_000,
            ttl_ms: 10_000,
            epochs: Vec::new(),
        };
        let r = entry_response(
            &entry,
            CacheOutcome::HitLocal,
            MissDetail::default(),
            None,
            true,
            4_000,
        );
        assert_eq!(r.headers()[header::CONTENT_LENGTH], "5");
        assert_eq!(r.headers()[header::AGE], "3");
        assert_eq!(r.headers()["x-cache"], "HIT-L1");
    }
}
