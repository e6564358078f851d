//! A fill: the flight's re-check of L1, the shared tier, the MES fetch, and the store
//! (fenced locally and in Redis, promises 2 and 2a in [`crate::consistency`]).
//!
//! The phases around it (joining the flight, answering its waiters) are in [`super`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Request, Response};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use tracing::{debug, warn};

use super::cacheable::{no_store_reason, read_members, stored_entry};
use super::recent::Target;
use super::response::hit_headers;
use super::{Fill, FillCtx, Reader, Stale, Tier, newer_stale};
use crate::consistency::{Fence, Name};
use crate::entry::Entry;
use crate::error::GatewayError;
use crate::key::CacheKey;
use crate::l1::L1Entry;
use crate::l2::Lookup;
use crate::metrics::RouteLabel;
use crate::outcome::{CacheOutcome, NoStoreReason};
use crate::upstream::{UpstreamBody, error_chain};

/// Why a fill's fetch gave no storable bytes.
pub(crate) enum FetchError {
    /// The body passed `max_body` while it was being read.
    TooLarge,
    /// `Content-Length` says more than `max_body`: nothing read yet, the answer can still
    /// be streamed to the request that led the fill.
    TooLargeAnnounced(Response<Incoming>),
    Gateway(GatewayError),
}

impl Reader {
    /// A bodiless GET of the key's path and normalized query, for a fill or a refresh.
    pub(crate) fn upstream_get(
        &self,
        key: &CacheKey,
        headers: HeaderMap,
        label: Option<RouteLabel>,
    ) -> Result<Request<UpstreamBody>, GatewayError> {
        let mut req = Request::new(Either::Right(Full::new(Bytes::new())));
        *req.uri_mut() = self.inner.pass.upstream().uri(key.upstream_path())?;
        *req.headers_mut() = headers;
        if let Some(label) = label {
            req.extensions_mut().insert(label);
        }
        Ok(req)
    }

    /// One flight: re-check L1, ask L2, fetch from the MES, store.
    pub(super) async fn run_flight(
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
    /// shared tier is off for the route, waits for a queued invalidation, cannot be
    /// vouched for (cut off from the bus, promise 3a), or failed.
    async fn shared_lookup(&self, ctx: &FillCtx) -> Option<Lookup> {
        let l2 = self
            .inner
            .l2
            .as_ref()
            .filter(|_| !ctx.policy.ttl_l2.is_zero())?;
        let inv = &self.inner.invalidator;
        if !inv.l2_vouched() || inv.closed_any(&ctx.names) {
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
        let total = self.inner.total;
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

    pub(crate) async fn fetch(
        &self,
        req: Request<UpstreamBody>,
        max_body: usize,
    ) -> Result<(http::response::Parts, Bytes), FetchError> {
        let upstream = self.inner.pass.upstream();
        let resp = upstream
            .send(req, Some(upstream.response_header()))
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

    /// Whether an answer listing `entities` may be stored (promise 2a).
    pub(crate) fn admits(&self, ctx: &FillCtx, entities: &[String]) -> bool {
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
        if let Err(e) = l2.remember(members, self.inner.member_ttl).await {
            debug!(error = %e, kind = e.as_str(), tier = "shared", "entity index store failed");
        }
    }

    /// Puts a fetched answer in L1 under `fence`, unless a bump already ended it.
    /// Returns whether it went in.
    pub(crate) fn store_local(
        &self,
        ctx: &FillCtx,
        fence: Fence,
        entry: &Arc<Entry>,
        now: u64,
    ) -> bool {
        let policy = &ctx.policy;
        if policy.ttl_l1.is_zero() || !fence.is_valid() {
            return false;
        }
        let own_limit = now + policy.ttl_l1.as_millis() as u64;
        let origin_limit = entry.stored_at_ms.saturating_add(entry.ttl_ms);
        let mut fresh_until_ms = if policy.ttl_l2.is_zero() {
            own_limit
        } else {
            own_limit.min(origin_limit.max(now + 1))
        };
        // Cut off from the bus (promise 3a): a write elsewhere would go unheard, so what
        // is stored now is served only briefly.
        if let Some(limit) = self.inner.invalidator.cut_off_limit_ms() {
            if limit == 0 {
                return false;
            }
            fresh_until_ms = fresh_until_ms.min(now + limit);
        }
        let keep_for = Duration::from_millis(fresh_until_ms - now) + policy.stale_if_error;
        let value = L1Entry {
            hit_headers: hit_headers(entry.headers.clone(), CacheOutcome::HitLocal),
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
            .recent
            .register(target, |t| self.refresh_live(t, now));
    }

    /// Worth refreshing: a reader's fill got an answer for it within its L1 TTL. (L1
    /// holding it says less: entries stay there past freshness for `stale_if_error`, and
    /// refreshed entries would keep each other alive under a steady stream of writes.)
    /// Whether the status index answers this key now (then refreshing it on write would
    /// only cost the MES a request: its reads never reach the cache).
    pub(crate) fn index_answers(&self, t: &Target) -> bool {
        let query = t.key.upstream_path().split_once('?').map(|(_, q)| q);
        self.inner.indexes.answers(&t.route, query)
    }

    pub(crate) fn refresh_live(&self, t: &Target, now: u64) -> bool {
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
}
