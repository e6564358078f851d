//! Refresh on write: before a write is answered, fetch again what it makes wrong and
//! this instance holds (the MES has the write by then), then put it in place once the
//! invalidation is applied, so readers go from the old answer to the new one without
//! waiting for the MES (promise 2b in [`crate::consistency`]).
//!
//! Which keys were filled lately is the read path's record ([`crate::read::recent`]);
//! fetching and storing go through the read path's own steps.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tracing::debug;

use crate::consistency::Name;
use crate::entry::Entry;
use crate::index::service::LiveIndex;
use crate::l2::SharedStore;
use crate::metrics::RouteLabel;
use crate::read::cacheable::{no_store_reason, read_members, stored_entry};
use crate::read::recent::Target;
use crate::read::{FillCtx, Reader};

/// An answer a write fetched again, ready for [`Refresher::install`].
pub struct Refetched {
    ctx: FillCtx,
    /// The Redis epochs of its names read before its fetch, when it may go to Redis too.
    shared_before: Option<Vec<u64>>,
    entry: Arc<Entry>,
    entities: Vec<String>,
}

/// A write's answer that is, byte for byte, the answer to a GET of `path` (the route's
/// `represents`): the entry for that path is taken from it instead of fetched again.
pub struct Answer {
    /// The GET path and query it answers (`represents`), if any.
    pub path: Option<String>,
    /// The write answer's headers.
    pub headers: http::HeaderMap,
    /// The write answer's body.
    pub body: Bytes,
    /// The write's tick: the entry counts as begun then (a write acknowledged after it
    /// ends it, as it would end an answer fetched before that write).
    pub tick: u64,
    /// The status index whose route's unfiltered pages list the entity in place: a status
    /// change moves nothing there, so a page held is patched (its item replaced by the
    /// answer), not fetched again. `None` for a create (it shifts every page).
    pub patches: Option<Arc<LiveIndex>>,
}

/// Refreshes what a write makes wrong, through the read path it is handed.
#[derive(Clone)]
pub struct Refresher {
    reader: Reader,
}

impl Refresher {
    /// A refresher over `reader`'s tiers and fills.
    pub fn new(reader: Reader) -> Self {
        Self { reader }
    }

    /// Refresh on write, first half: fetches again, for at most `budget`, this instance's
    /// entries under any of `names` that are worth it (the write is in the MES by now),
    /// and records the memberships they show. Returns what came back storable in time,
    /// each with the fence taken before its fetch (its tick is the write's or later).
    pub async fn fetch(
        &self,
        names: &[Name],
        budget: Duration,
        answer: Option<Answer>,
    ) -> Vec<Refetched> {
        let inv = &self.reader.inner.invalidator;
        let now = self.reader.inner.clock.now_ms();
        let targets = self.reader.inner.recent.targets(names, |t| {
            self.reader.refresh_live(t, now) && !self.reader.index_answers(t)
        });
        if targets.is_empty() {
            return Vec::new();
        }
        let deadline = tokio::time::Instant::now() + budget;
        let answer = answer.as_ref();
        let fetches = targets.into_iter().map(|t| async move {
            let given = answer.filter(|a| {
                a.path.as_deref() == Some(t.key.upstream_path()) && t.policy.vary.is_empty()
            });
            let patched = answer.and_then(|a| Some((a, self.patched(&t, a)?)));
            let fence = match given {
                Some(a) => inv.fence_at(&t.names, a.tick),
                None => inv.fence(&t.names),
            };
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
            let shared_before = match self.reader.inner.l2.as_ref() {
                Some(l2) if !t.policy.ttl_l2.is_zero() && !inv.closed_any(&t.names) => {
                    l2.epochs(&t.names).await.ok()
                }
                _ => None,
            };
            if let Some(a) = given {
                let (mut parts, ()) = http::Response::new(()).into_parts();
                parts.headers = a.headers.clone();
                crate::forward::strip_hop_by_hop(&mut parts.headers);
                parts.headers.remove(http::header::CONTENT_LENGTH);
                inv.count_refresh_from_answer();
                return self
                    .prepare(ctx, shared_before, parts, a.body.clone())
                    .await;
            }
            if let Some((a, (parts, body))) = patched {
                inv.count_refresh_from_answer();
                let ctx = FillCtx {
                    fence: inv.fence_at(&t.names, a.tick),
                    ..ctx
                };
                return self.prepare(ctx, shared_before, parts, body).await;
            }
            let req = self.reader.upstream_get(
                &t.key,
                t.headers.clone(),
                Some(RouteLabel(t.route.clone())),
            );
            let refetched = match req {
                Ok(req) => {
                    let fetch = self.reader.fetch(req, t.policy.max_body);
                    match tokio::time::timeout_at(deadline, fetch).await {
                        Ok(Ok((parts, body))) => {
                            self.prepare(ctx, shared_before, parts, body).await
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

    /// An unfiltered page of the index's route that this instance holds, still valid,
    /// with the written entity's item replaced by the answer (see [`Answer::patches`]).
    fn patched(&self, t: &Target, a: &Answer) -> Option<(http::response::Parts, Bytes)> {
        let ix = a.patches.as_ref()?;
        let query = t.key.upstream_path().split_once('?').map_or("", |(_, q)| q);
        if ix.route() != &t.route || ix.partitioned(query) {
            return None;
        }
        let held = self.reader.inner.l1.get(&t.key.key)?;
        let now = self.reader.inner.clock.now_ms();
        if !held.is_fresh(now) || !held.fence.is_valid() {
            return None;
        }
        let body = ix.patch_item(&held.entry.body, &a.body)?;
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = held.entry.status;
        parts.headers = held.entry.headers.clone();
        Some((parts, body))
    }

    /// A refreshed answer made ready to go into L1: storable, its members recorded
    /// (true facts: the fetch began after the write was in the MES).
    async fn prepare(
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
        self.reader.remember(&members).await;
        let entry = stored_entry(
            parts,
            body,
            policy,
            self.reader.inner.clock.now_ms(),
            Vec::new(),
        );
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
    pub fn install(&self, fetched: Vec<Refetched>, moved: &[Name]) -> Vec<SharedStore> {
        let inv = &self.reader.inner.invalidator;
        let now = self.reader.inner.clock.now_ms();
        let mut shared = Vec::new();
        for Refetched {
            ctx,
            shared_before,
            entry,
            entities,
        } in fetched
        {
            if !self.reader.admits(&ctx, &entities) {
                debug!(key = %ctx.key.key, "a listed entity was written since: not refreshed");
                inv.count_refresh(false);
                continue;
            }
            let stored = self
                .reader
                .store_local(&ctx, ctx.fence.clone(), &entry, now);
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
}
