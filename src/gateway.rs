//! The gateway handle: builds the read and write paths and what they share, puts a config
//! in force (and a reload), and dispatches each request to its path.
//!
//! The paths' decisions are theirs ([`crate::read`], [`crate::write`], [`crate::pass`]);
//! this module only wires and routes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{Method, Request, Response};
use tracing::{info, warn};

use crate::client_body::ClientBody;
use crate::clock::Clock;
use crate::compute::Computer;
use crate::config::route::RouteTable;
use crate::config::{Config, Overrides};
use crate::consistency::bus::BusTiming;
use crate::consistency::{Invalidator, Name};
use crate::error::GatewayError;
use crate::events::Events;
use crate::forward;
use crate::index::service::{Answerer, Indexes};
use crate::l1::L1;
use crate::l2::L2;
use crate::metrics::{self, Metrics, RouteLabel, RouteRequests, Snapshot};
use crate::operations::{self, Execute, OperationId, Operations, Outcome, Prefer, StoredRequest};
use crate::outcome::CacheOutcome;
use crate::pass::{Body, Pass, RouteTimeout, problem};
use crate::read::Reader;
use crate::upstream::Upstream;
use crate::write::Writer;

/// The outcome label of a request that was forwarded (or failed) without a cache outcome.
const FORWARD: &str = "forward";

/// The route table in force, with each route's request counters resolved against it.
struct Routing {
    table: Arc<RouteTable>,
    /// By route index in `table`.
    requests: Vec<Arc<RouteRequests>>,
    unmatched: Arc<RouteRequests>,
    /// Whether some write rule refreshes on write: fills only remember their keys then.
    refresh_on: bool,
    /// By route index: the status index that answers the route's reads, if one does
    /// (resolved here, once, not per request).
    answerers: Vec<Option<Answerer>>,
}

impl Routing {
    fn new(table: Arc<RouteTable>, metrics: &Metrics, indexes: &Indexes) -> Self {
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
        let answerers = table
            .routes()
            .iter()
            .map(|r| indexes.answerer(&r.name))
            .collect();
        Self {
            table,
            requests,
            unmatched,
            refresh_on,
            answerers,
        }
    }
}

/// The gateway: the config, the read and write paths, pass-through and the route table in
/// force. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    reader: Reader,
    writer: Writer,
    computer: Computer,
    pass: Pass,
    invalidator: Invalidator,
    indexes: Indexes,
    operations: Operations,
    events: Events,
    metrics: Arc<Metrics>,
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

/// Why a gateway could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Redis URL was accepted by validation but not by the client.
    #[error("redis.url: {0}")]
    Redis(#[from] redis::RedisError),
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
        if let Some(r) = &config.redis {
            let timing = BusTiming {
                heartbeat: r.heartbeat,
                deadline: r.bus_deadline,
                cut_off_ttl: r.cut_off_ttl,
            };
            invalidator.start_background(metrics.bus_latency.clone(), timing);
        }
        let upstream = Upstream::new(config.upstream.clone(), &config.timeouts, metrics.clone());
        let pass = Pass::new(upstream);
        let indexes = Indexes::new(&config.routes, l2.as_ref());
        let events = Events::new(l2.as_ref(), config.events);
        events.start();
        let operations = Operations::new(l2.as_ref(), config.operations, events.clone());
        invalidator.set_sink(Arc::new(indexes.clone()));
        indexes.start(&pass, &invalidator);
        let has_compute = config.routes.routes().iter().any(|r| r.compute.is_some());
        let computer = Computer::new(
            (l1.clone(), l2.clone()),
            pass.clone(),
            clock.clone(),
            invalidator.clone(),
            config.timeouts.total,
            has_compute,
        );
        let reader = Reader::new(
            (l1, l2),
            clock,
            invalidator.clone(),
            pass.clone(),
            config.timeouts.total,
            index_ttl(&config),
            indexes.clone(),
        );
        let writer = Writer::new(
            pass.clone(),
            invalidator.clone(),
            reader.clone(),
            indexes.clone(),
            events.clone(),
        );
        let gw = Self {
            inner: Arc::new(Inner {
                routes: ArcSwap::from_pointee(Routing::new(
                    config.routes.clone(),
                    &metrics,
                    &indexes,
                )),
                metrics,
                draining: Default::default(),
                access_log: config.log.access.into(),
                source: Default::default(),
                reader,
                writer,
                computer,
                pass,
                invalidator,
                indexes,
                operations,
                events,
                config,
            }),
        };
        // Weak: the consumer stops with the gateway instead of keeping it alive.
        let weak: std::sync::Weak<Inner> = Arc::downgrade(&gw.inner);
        let exec: std::sync::Weak<dyn Execute> = weak;
        gw.inner.operations.start(exec);
        Ok(gw)
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
            &self.inner.indexes,
        )));
        self.inner.invalidator.bump_local(&names);
        // Refresh targets carry their route's policy: the next fills register them anew.
        self.inner.reader.inner.recent.clear();
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
        // Event streams never end by themselves: they would hold the drain to its end.
        self.inner.events.close();
    }

    /// The live updates of this instance (`GET /mesgate/events`).
    pub fn events(&self) -> &Events {
        &self.inner.events
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
        &self.inner.reader.inner.l1
    }

    /// The status indexes (admin, tests).
    pub fn indexes(&self) -> &Indexes {
        &self.inner.indexes
    }

    /// The shared tier, when configured.
    pub fn l2(&self) -> Option<&L2> {
        self.inner.reader.inner.l2.as_ref()
    }

    /// The compute path (admin purge, metrics).
    pub fn computer(&self) -> &Computer {
        &self.inner.computer
    }

    /// The route table in force.
    pub fn routes(&self) -> Arc<RouteTable> {
        self.inner.routes.load().table.clone()
    }

    /// Requests waiting on single-flight fetches right now, leaders included.
    pub fn flights_waiting(&self) -> usize {
        self.inner.reader.flights_waiting()
    }

    /// Handles one request from `remote`. Never fails: errors become problem responses.
    pub async fn handle(&self, req: Request<ClientBody>, remote: SocketAddr) -> Response<Body> {
        let started = Instant::now();
        let access = self
            .inner
            .access_log
            .load(std::sync::atomic::Ordering::Relaxed);
        // Copied only when an access line will be written.
        let request_line = access.then(|| (req.method().clone(), req.uri().clone()));
        let (resp, counted, outcome) = self.dispatch(req, remote).await;
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
    /// outcome the request counts under.
    async fn dispatch(
        &self,
        mut req: Request<ClientBody>,
        remote: SocketAddr,
    ) -> (Response<Body>, Arc<RouteRequests>, &'static str) {
        let pass = &self.inner.pass;
        let routing = self.inner.routes.load();
        if let Some(e) = forward::refusal(req.version(), req.headers()) {
            return (problem(&e), routing.unmatched.clone(), FORWARD);
        }
        if is_read(req.method())
            && let Some(resp) = crate::ui::answer(req.uri().path(), &self.inner.config.ui)
        {
            return (resp, routing.unmatched.clone(), FORWARD);
        }
        if let Some(id) = req.uri().path().strip_prefix(operations::PATH)
            && is_read(req.method())
        {
            let resp = Box::pin(self.inner.operations.read(id)).await;
            return (resp, routing.unmatched.clone(), FORWARD);
        }
        let Some(m) = routing.table.find(req.method(), req.uri().path()) else {
            req.extensions_mut()
                .insert(RouteLabel(metrics::unmatched()));
            let counted = routing.unmatched.clone();
            return (Box::pin(pass.pass(req, remote)).await, counted, FORWARD);
        };
        let route = m.route;
        let name = routing.requests[m.index].clone();
        let answerer = routing.answerers[m.index].as_ref();
        let params = route.path.resolve(&m.params);
        let cached_read = route.cache.is_some() && is_read(req.method());
        if !cached_read {
            // The read path adds it only past a hit: the hit path allocates no extensions.
            req.extensions_mut().insert(RouteLabel(route.name.clone()));
        }
        if let Some(t) = route.response_timeout {
            req.extensions_mut().insert(RouteTimeout(t));
        }
        if let Some(rule) = &route.compute
            && req.method() == Method::POST
        {
            let prefer = Prefer::parse(req.headers());
            let h = req.headers();
            let credentials =
                h.contains_key(http::header::AUTHORIZATION) || h.contains_key(http::header::COOKIE);
            if prefer.is_async() && !credentials {
                let accepting = self.accept_compute(req, remote, route, rule, prefer);
                let (resp, outcome) = Box::pin(accepting).await;
                return (resp, name, outcome);
            }
            let computer = &self.inner.computer;
            let (resp, outcome) = Box::pin(computer.handle(req, remote, route, rule)).await;
            return (resp, name, outcome);
        }
        if cached_read {
            let reader = &self.inner.reader;
            let (resp, outcome) = reader
                .read(req, remote, route, &params, routing.refresh_on, answerer)
                .await;
            return (resp, name, outcome.map_or(FORWARD, CacheOutcome::as_str));
        }
        match &route.invalidate {
            Some(rule) if rule.async_ && Prefer::parse(req.headers()).is_async() => {
                let prefer = Prefer::parse(req.headers());
                let resp = Box::pin(self.accept(req, remote, rule, params.pairs, prefer)).await;
                (resp, name, "async")
            }
            Some(rule) => {
                let writer = &self.inner.writer;
                let resp = Box::pin(writer.write(req, remote, rule.clone(), params.pairs)).await;
                (resp, name, "write")
            }
            None => (Box::pin(pass.pass(req, remote)).await, name, FORWARD),
        }
    }

    /// An asynchronous write: recorded and queued, then answered `202 Accepted` (or the
    /// MES's answer, within `Prefer: wait`). One that cannot be recorded durably (no
    /// Redis, Redis down) is answered synchronously instead, which the client sees by the
    /// missing `Preference-Applied`.
    async fn accept(
        &self,
        req: Request<ClientBody>,
        remote: SocketAddr,
        rule: &Arc<crate::config::InvalidateRule>,
        params: Vec<(String, String)>,
        prefer: Prefer,
    ) -> Response<Body> {
        let mut req = match crate::write::buffer(req, rule).await {
            Ok(r) => r,
            Err(resp) => return resp,
        };
        let ops = &self.inner.operations;
        let stored = StoredRequest::from_request(&req, remote);
        match ops.accept(&stored).await {
            Ok(id) => ops.answer(&id, prefer.wait).await,
            Err(e) => {
                warn!(error = %e, tier = "shared", "operation not recorded; answered synchronously");
                req.headers_mut().remove("prefer");
                let writer = &self.inner.writer;
                writer
                    .write_buffered(req, remote, rule.clone(), params)
                    .await
            }
        }
    }

    /// A computation asked for with `Prefer: respond-async`: recorded and queued like an
    /// asynchronous write, then answered `202 Accepted` (or the result, within `Prefer:
    /// wait`); the queue's consumer computes it through the compute path (one computation
    /// per key still). Not recorded (no Redis): computed and answered synchronously.
    async fn accept_compute(
        &self,
        req: Request<ClientBody>,
        remote: SocketAddr,
        route: &crate::config::route::Route,
        rule: &Arc<crate::config::ComputeRule>,
        prefer: Prefer,
    ) -> (Response<Body>, &'static str) {
        let (mut parts, body) = req.into_parts();
        let body = match crate::compute::read_body(body, rule.max_body).await {
            Ok(b) => b,
            Err(e) => return (problem(&e), "bypass"),
        };
        let req = Request::from_parts(parts.clone(), body.clone());
        let ops = &self.inner.operations;
        match ops.accept(&StoredRequest::from_request(&req, remote)).await {
            Ok(id) => (ops.answer(&id, prefer.wait).await, "async"),
            Err(e) => {
                warn!(error = %e, tier = "shared", "operation not recorded; computed synchronously");
                parts.headers.remove("prefer");
                let computer = &self.inner.computer;
                computer.handle_read(parts, body, remote, route, rule).await
            }
        }
    }

    /// What the metrics render from.
    pub fn snapshot(&self) -> Snapshot<'_> {
        Snapshot {
            l1: self.l1(),
            l2: self.l2(),
            invalidation: self.inner.invalidator.stats(),
            epoch_counters: self.inner.invalidator.epoch_counters(),
            flights_waiting: self.flights_waiting(),
            bus_cut_off: self.inner.invalidator.is_cut_off(),
            mes_unreachable: self.inner.pass.upstream().unreachable(),
            indexes: self.inner.indexes.reports(),
            compute: self.inner.computer.stats(),
            operations: self.inner.operations.stats().counts(),
            operations_queued: (self.inner.operations.stats().queued)
                .load(std::sync::atomic::Ordering::Relaxed),
            events: self.inner.events.stats(),
        }
    }
}

impl Execute for Inner {
    fn execute(
        &self,
        id: OperationId,
        stored: StoredRequest,
        retried: bool,
    ) -> std::pin::Pin<Box<dyn Future<Output = Outcome> + Send + '_>> {
        Box::pin(async move {
            let Some((mut req, remote)) = stored.to_request() else {
                let e = GatewayError::BadTarget(format!("recorded target {:?}", stored.target));
                return outcome(problem(&e)).await;
            };
            let routing = self.routes.load_full();
            // A computation (the price calculation) goes through the compute path.
            let (method, path) = (req.method().clone(), req.uri().path().to_owned());
            if let Some(m) = routing.table.find(&method, &path)
                && let Some(rule) = m.route.compute.clone()
                && method == Method::POST
            {
                req.headers_mut().remove("prefer");
                let (parts, body) = req.into_parts();
                let (resp, _) = self
                    .computer
                    .handle_read(parts, body, remote, m.route, &rule)
                    .await;
                return outcome(resp).await;
            }
            let found = routing
                .table
                .find(req.method(), req.uri().path())
                .and_then(|m| {
                    let rule = m.route.invalidate.clone()?;
                    let params = m.route.path.resolve(&m.params).pairs;
                    Some((rule, params, m.route.name.clone(), m.route.response_timeout))
                });
            // The config was reloaded since it was accepted, and no write rule takes it.
            let Some((rule, params, name, timeout)) = found else {
                let e = GatewayError::BadTarget("no write route takes it any more".into());
                return outcome(problem(&e)).await;
            };
            req.extensions_mut().insert(RouteLabel(name));
            req.extensions_mut().insert(id);
            if let Some(t) = timeout {
                req.extensions_mut().insert(RouteTimeout(t));
            }
            let resp = self
                .writer
                .execute(req, remote, &rule, &params, retried)
                .await;
            outcome(resp).await
        })
    }
}

/// The answer an operation records (bodies up to 8 MiB; a longer one is recorded as a
/// failure to read it).
async fn outcome(resp: Response<Body>) -> Outcome {
    use http_body_util::BodyExt;
    let (parts, body) = resp.into_parts();
    let content_type = parts.headers.get(http::header::CONTENT_TYPE);
    let content_type = content_type
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match http_body_util::Limited::new(body, 8 << 20).collect().await {
        Ok(c) => Outcome {
            status: parts.status.as_u16(),
            content_type,
            body: c.to_bytes(),
        },
        Err(e) => {
            let e = GatewayError::UpstreamProtocol(crate::upstream::error_chain(&*e));
            Outcome {
                status: e.status().as_u16(),
                content_type: Some("application/problem+json".into()),
                body: bytes::Bytes::from(e.to_string()),
            }
        }
    }
}

/// Settings a reload cannot apply to a running instance.
/// Each indexed route with its rule (the live indexes are built once, at start).
fn index_rules(config: &Config) -> Vec<(&str, &crate::config::IndexRule)> {
    config
        .routes
        .routes()
        .iter()
        .filter_map(|r| Some((r.name.as_str(), r.index.as_deref()?)))
        .collect()
}

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
        // The MES client and the accept loop are built with them at start.
        ("timeouts", old.timeouts != new.timeouts),
        ("limits", old.limits != new.limits),
        ("route.index", index_rules(old) != index_rules(new)),
        // The page is answered from the config the instance started with.
        ("ui", old.ui != new.ui),
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

fn is_read(m: &Method) -> bool {
    *m == Method::GET || *m == Method::HEAD
}
