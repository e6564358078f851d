//! The read path: a GET or HEAD on a cached route, as a fixed sequence of phases: build
//! the key → local tier → one single-flight per key (shared tier, then the MES) → store if
//! cacheable → respond with `Cache-Status`, `X-Cache` and `Age`.
//!
//! It owns the read decisions. The flight's fetch and store are in `fill`, what may be
//! stored in [`cacheable`], the responses in [`response`], the keys a write may refresh
//! in [`recent`]; the tiers, the client and the consistency state are handed to it.

pub mod cacheable;
pub(crate) mod fill;
pub mod recent;
pub mod response;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderMap;
use http::request::Parts;
use http::{Method, Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tracing::debug;

use crate::client_body::ClientBody;
use crate::clock::Clock;
use crate::config::route::{Params, Route};
use crate::config::{CachePolicy, CredentialPolicy};
use crate::consistency::{Check, Fence, Invalidator, Name};
use crate::entry::Entry;
use crate::error::GatewayError;
use crate::family::Source;
use crate::flight::{Flights, Role};
use crate::forward;
use crate::index::service::{Answerer, Indexes};
use crate::key::{self, CacheKey};
use crate::l1::{L1, L1Entry};
use crate::l2::L2;
use crate::metrics::RouteLabel;
use crate::outcome::{self, BypassReason, CacheOutcome, MissDetail, NoStoreReason};
use crate::pass::{Body, Pass, mark_bypass, problem};
use crate::upstream::UpstreamBody;
use recent::RecentFills;
use response::{entry_response, l1_hit};

/// A response and the cache outcome it reports (`None`: forwarded, or an error).
pub type Served = (Response<Body>, Option<CacheOutcome>);

/// The read path of one gateway. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Reader {
    pub(crate) inner: Arc<ReaderParts>,
}

/// What the read path is handed.
pub(crate) struct ReaderParts {
    pub(crate) l1: L1,
    pub(crate) l2: Option<L2>,
    flights: Flights<Arc<Fill>>,
    /// Keys filled lately, by name, for writes that refresh what they make wrong.
    pub(crate) recent: RecentFills,
    pub(crate) clock: Clock,
    pub(crate) invalidator: Invalidator,
    pub(crate) pass: Pass,
    /// `timeouts.total`: a whole fill.
    total: Duration,
    /// How long entity memberships are remembered in Redis.
    pub(crate) member_ttl: Duration,
    /// The status indexes, which answer the pages of their ready partitions.
    pub(crate) indexes: Indexes,
}

impl Reader {
    /// A read path over these tiers and this client; `total` bounds a whole fill,
    /// `member_ttl` how long Redis remembers memberships.
    pub fn new(
        tiers: (L1, Option<L2>),
        clock: Clock,
        invalidator: Invalidator,
        pass: Pass,
        total: Duration,
        member_ttl: Duration,
        indexes: Indexes,
    ) -> Self {
        let (l1, l2) = tiers;
        Self {
            inner: Arc::new(ReaderParts {
                l1,
                l2,
                flights: Flights::default(),
                recent: RecentFills::default(),
                clock,
                invalidator,
                pass,
                total,
                member_ttl,
                indexes,
            }),
        }
    }

    /// Requests waiting on single-flight fetches right now, leaders included.
    pub fn flights_waiting(&self) -> usize {
        self.inner.flights.waiting()
    }

    pub async fn read(
        &self,
        mut req: Request<ClientBody>,
        remote: SocketAddr,
        route: &Route,
        params: &Params,
        remember_key: bool,
        answerer: Option<&Answerer>,
    ) -> Served {
        let Some(policy) = route.cache.as_ref() else {
            return (Box::pin(self.inner.pass.pass(req, remote)).await, None);
        };
        if let Some(reason) = refusal(params, req.headers()) {
            req.extensions_mut().insert(RouteLabel(route.name.clone()));
            let resp = Box::pin(self.inner.pass.bypass(req, remote, reason)).await;
            return (resp, Some(CacheOutcome::Bypass(reason)));
        }
        let params = &params.pairs[..];
        let head = req.method() == Method::HEAD;
        if let Some(mut resp) =
            answerer.and_then(|a| a.answer(req.uri().query(), req.headers(), head))
        {
            if self.inner.pass.upstream().unreachable() {
                resp.headers_mut()
                    .insert(outcome::CACHE_STATUS, outcome::INDEX_WITHOUT_MES);
            }
            return (resp, Some(CacheOutcome::HitIndex));
        }
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
            Ok(Probe::Hit(l)) => return (l1_hit(&l, head, now), Some(CacheOutcome::HitLocal)),
            Ok(Probe::Miss(local, key)) => (local, key),
            Err(reason) => {
                req.extensions_mut().insert(RouteLabel(route.name.clone()));
                let resp = Box::pin(self.inner.pass.bypass(req, remote, reason)).await;
                return (resp, Some(CacheOutcome::Bypass(reason)));
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
        // Boxed, as every path past a hit: see `Gateway::dispatch`.
        Box::pin(self.miss(parts, remote, ctx, stale, remember_key)).await
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
        remember_key: bool,
    ) -> Served {
        let head = parts.method == Method::HEAD;
        // Fills under different bumps never merge (promise 2): a request that arrives after
        // an invalidation never receives a fetch that started before it.
        let flight_key: Arc<str> = format!("{}#{}", ctx.key.key, ctx.fence.tag()).into();
        let (waiter, leader) = match self.inner.flights.join(&flight_key) {
            Role::Waiter(w) => (w, false),
            Role::Leader(l) => {
                let w = l.waiter();
                let fetch = self.fill_request(&parts, &ctx.policy, &ctx.key);
                if remember_key {
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
        let wait = self.inner.total + Duration::from_secs(1);
        let fill = match tokio::time::timeout(wait, waiter.wait()).await {
            Ok(Some(f)) => f,
            Ok(None) => return (problem(&GatewayError::FetchLost), None),
            Err(_) => return (problem(&GatewayError::UpstreamTimeout("total")), None),
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
    ) -> Served {
        let now = self.inner.clock.now_ms();
        let none = MissDetail::default();
        match fill {
            Fill::Hit { entry, tier } => {
                let outcome = match tier {
                    Tier::Local => CacheOutcome::HitLocal,
                    Tier::Shared => CacheOutcome::HitShared,
                };
                let resp = entry_response(entry, outcome, none, None, head, now);
                (resp, Some(outcome))
            }
            Fill::Fetched {
                entry,
                stored,
                no_store,
            } => {
                let shareable = no_store.is_none_or(|r| r.shareable());
                if !leader && !shareable {
                    let req = Request::from_parts(parts, Either::Right(Full::new(Bytes::new())));
                    let reason = BypassReason::NotShareable;
                    let resp = self.inner.pass.forward_marked(req, remote, reason).await;
                    return (resp, Some(CacheOutcome::Bypass(reason)));
                }
                let detail = MissDetail {
                    stored: *stored,
                    collapsed: !leader,
                    no_store: *no_store,
                };
                let status = Some(entry.status.as_u16());
                let outcome = CacheOutcome::Miss;
                (
                    entry_response(entry, outcome, detail, status, head, now),
                    Some(outcome),
                )
            }
            Fill::Stale { entry, fwd_status } => {
                let outcome = CacheOutcome::Stale;
                (
                    entry_response(entry, outcome, none, *fwd_status, head, now),
                    Some(outcome),
                )
            }
            Fill::TooLarge(held) => {
                let held = if leader && !head {
                    held.lock().unwrap_or_else(|e| e.into_inner()).take()
                } else {
                    None
                };
                let reason = BypassReason::TooLarge;
                if let Some(mut resp) = held {
                    let received = resp.version();
                    forward::response_headers(resp.headers_mut(), received);
                    let mut resp = resp.map(Either::Right);
                    mark_bypass(&mut resp, reason);
                    return (resp, Some(CacheOutcome::Bypass(reason)));
                }
                let req = Request::from_parts(parts, Either::Right(Full::new(Bytes::new())));
                let resp = self.inner.pass.forward_marked(req, remote, reason).await;
                (resp, Some(CacheOutcome::Bypass(reason)))
            }
            Fill::Failed(e) => (problem(e), None),
        }
    }

    /// The GET sent to the MES for a fill: the normalized path and query of the key, and
    /// of the leader's headers only those the key accounts for (see [`forward`]).
    fn fill_request(
        &self,
        parts: &Parts,
        policy: &CachePolicy,
        key: &CacheKey,
    ) -> Result<Request<UpstreamBody>, GatewayError> {
        let headers = forward::fill_headers(
            &parts.headers,
            &policy.vary,
            policy.credentials == CredentialPolicy::PerCredential,
            parts.version,
            self.inner.pass.upstream().authority(),
        );
        let label = parts.extensions.get::<RouteLabel>().cloned();
        self.upstream_get(key, headers, label)
    }
}

/// What a fill needs to know about its request, decided before it starts.
pub(crate) struct FillCtx {
    pub(crate) policy: Arc<CachePolicy>,
    pub(crate) key: CacheKey,
    /// The names the entry depends on (families, groups, route, global).
    pub(crate) names: Vec<Name>,
    /// Its names and the tick current when the request arrived: the fetch sees every
    /// write up to it.
    pub(crate) fence: Fence,
    /// The route, and the headers a reader's fill sends to the MES once known: the key
    /// is then remembered for refresh on write.
    pub(crate) route: Arc<String>,
    pub(crate) sent: Option<HeaderMap>,
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

/// An entry past its freshness that may stand in when the MES fails, until `until_ms`.
struct Stale {
    entry: Arc<Entry>,
    until_ms: u64,
}

/// What the local tier said about a request's key.
enum Probe {
    /// A fresh, valid entry.
    Hit(Arc<L1Entry>),
    /// No usable entry (maybe one kept for stale-if-error), and the key, owned.
    Miss(Option<Arc<L1Entry>>, CacheKey),
}

thread_local! {
    /// The cache key of the request this thread is looking up.
    static KEY_BUF: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Why a request on a cached route is not the cache's to answer, whatever its key: it
/// spells an entity in a way of its own, or asks the MES for another method or path.
fn refusal(params: &Params, headers: &HeaderMap) -> Option<BypassReason> {
    if params.aliased {
        Some(BypassReason::NonCanonical)
    } else if forward::overrides_request(headers) {
        Some(BypassReason::Override)
    } else {
        None
    }
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
