//! The status index at run time: one live index per indexed list route, holding the mirror
//! behind a lock, each kept partition's readiness, the composed pages (bytes until the
//! partition changes), the preload from the MES, and what the writes' answers and other
//! instances' deltas apply to it.
//!
//! It decides nothing about the ordinary read path: a request it cannot answer exactly
//! (a partition not ready, a parameter it does not know, credentials) is left to it. The
//! pure parts (version rule, composition, the scan's verdict) are [`crate::index`]'s; the
//! preload, the warm-up from Redis and the audit are in `sync`, the copy in Redis in
//! [`shared`], the set of indexes in `set`.

mod counts;
mod set;
pub mod shared;
mod sync;

use set::WritesInFlight;
pub use set::{Answerer, Indexes, WriteTicket};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use http::Response;
use http::header::{self, HeaderMap, HeaderValue};
use http_body_util::{Either, Full};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::{Applied, BodyShape, Mirror, RowShape};
use crate::config::IndexRule;
use crate::forward;
use crate::outcome::CacheOutcome;
use crate::pass::Body;
use crate::read::response::hit_headers;

/// A partition's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PartitionState {
    /// Being preloaded (or waiting to be): its pages take the ordinary read path.
    Loading = 0,
    /// Exact: its pages are composed from the mirror.
    Ready = 1,
    /// Given up on (too large, or the MES kept disagreeing): the ordinary read path.
    Refused = 2,
}

impl PartitionState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Ready,
            2 => Self::Refused,
            _ => Self::Loading,
        }
    }

    /// The name in logs, `/readyz` and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Loading => "loading",
            Self::Ready => "ready",
            Self::Refused => "refused",
        }
    }
}

/// Counters of one index.
#[derive(Debug, Default)]
pub struct IndexStats {
    /// Pages answered from the index.
    pub hits: AtomicU64,
    /// Rows from writes' answers (this instance's and the bus's) that changed the mirror.
    pub applied: AtomicU64,
    /// Rows from writes' answers that were older than what was held, or unchanged.
    pub ignored: AtomicU64,
    /// Pages the preload asked the MES for.
    pub preload_pages: AtomicU64,
    /// Scans that had to start again (an order skipped at a page boundary, a count that
    /// moved under the scan).
    pub rescans: AtomicU64,
    /// Partitions made ready from the copy in Redis (no MES request).
    pub warmed: AtomicU64,
    /// Partitions preloaded from the MES and copied to Redis, complete.
    pub copied: AtomicU64,
    /// Differences the audit found with the MES (writes behind mesgate's back) and
    /// repaired: rows applied, orders relocated, partitions rebuilt.
    pub audit_repairs: AtomicU64,
}

/// Orders the audit relocates per partition and round, at most (each costs a detail
/// request to the MES).
pub(super) const AUDIT_RELOCATE: usize = 20;

/// Composed pages kept at most (then the cache starts afresh).
const PAGE_CACHE: usize = 4096;
/// Attempts per partition before it is refused.
pub(super) const ATTEMPTS: usize = 6;
/// Probes after a scan whose count could not be compared or came out short.
pub(super) const PROBES: usize = 3;
/// Largest list body read by the preload.
pub(super) const MAX_LIST_BODY: usize = 64 << 20;

/// A composed page, with the headers of its answer built once.
struct Composed {
    generation: u64,
    body: Bytes,
    headers: HeaderMap,
}

/// The live index of one list route. Cheap to share (`Arc`).
pub struct LiveIndex {
    route: Arc<String>,
    /// The MES path of the list (the route's literal path).
    path: String,
    rule: Arc<IndexRule>,
    rows: RowShape,
    body: BodyShape,
    // A std RwLock: reads compose pages, writes apply one row; never held across `.await`.
    mirror: RwLock<Mirror>,
    /// By position in `rule.preload`.
    states: Vec<AtomicU8>,
    /// By position in `rule.preload`: whether the partition, since it was last ready, is
    /// in the copy in Redis too (complete there).
    copied: Vec<AtomicBool>,
    /// Set while the bus is down or this instance is cut off: nothing is loaded or made
    /// ready (deltas may be missed) until the bus is heard again.
    paused: AtomicBool,
    /// By position in `rule.preload`: audit rounds, which choose the deeper page audited.
    audit_round: Vec<AtomicUsize>,
    // A std Mutex: a map lookup or insert, never held across `.await`.
    pages: Mutex<HashMap<(usize, usize, usize), Arc<Composed>>>,
    /// The headers of the MES's list answers (content type and the like), learned from
    /// the preload; until then nothing is served.
    answer_headers: RwLock<Option<HeaderMap>>,
    writes: WritesInFlight,
    /// Bumped to make the preload start again (a gap on the bus).
    reload: Notify,
    stats: IndexStats,
    /// The counts route kept true from the same answers, and its MES path.
    counts_route: Option<(Arc<String>, String)>,
    counts: counts::Counts,
    /// The copy in Redis, when Redis is configured.
    shared: Option<shared::SharedIndex>,
}

impl LiveIndex {
    /// An index for route `route` at MES path `path`, nothing loaded yet; `counts` the
    /// counts route it keeps (name and MES path), if any; `shared` its copy in Redis.
    pub fn new(
        route: Arc<String>,
        path: &str,
        rule: Arc<IndexRule>,
        counts: Option<(Arc<String>, String)>,
        shared: Option<shared::SharedIndex>,
    ) -> Self {
        let rows = RowShape {
            id: rule.id.clone(),
            partition: rule.partition.clone(),
            sort: rule.sort.clone(),
            version: rule.version.clone(),
        };
        let body = BodyShape {
            items: rule.items.clone(),
            page: rule.page.clone(),
            size: rule.size.clone(),
            total: rule.total.clone(),
        };
        Self {
            route,
            path: path.to_owned(),
            mirror: RwLock::new(Mirror::new(&rule.preload, rule.max_entities)),
            states: rule.preload.iter().map(|_| AtomicU8::new(0)).collect(),
            audit_round: rule.preload.iter().map(|_| AtomicUsize::new(0)).collect(),
            paused: AtomicBool::new(false),
            copied: rule
                .preload
                .iter()
                .map(|_| AtomicBool::new(false))
                .collect(),
            rule,
            rows,
            body,
            pages: Mutex::default(),
            answer_headers: RwLock::new(None),
            writes: WritesInFlight::default(),
            reload: Notify::new(),
            stats: IndexStats::default(),
            counts_route: counts,
            counts: counts::Counts::default(),
            shared,
        }
    }

    /// The mirror's count of `status` when it counts it itself (a ready partition).
    pub(super) fn counted(&self, status: &str) -> Option<usize> {
        let at = self.rule.preload.iter().position(|p| p == status)?;
        if self.state(at) != PartitionState::Ready {
            return None;
        }
        self.read_mirror().len(status)
    }

    /// Whether the counts are known (served from here).
    pub fn counts_known(&self) -> bool {
        self.counts.known()
    }

    /// Whether a list request with this query is answered from here now.
    pub fn ready_for(&self, query: &str) -> bool {
        self.parse_query(query)
            .is_some_and(|(at, _, _)| self.state(at) == PartitionState::Ready)
    }

    /// Whether this index keeps the counts of route `name`.
    pub fn keeps_counts_of(&self, name: &str) -> bool {
        self.counts_route
            .as_ref()
            .is_some_and(|(n, _)| n.as_str() == name)
    }

    /// The counts, exactly the MES's, when known (else the ordinary read path answers).
    pub fn serve_counts(&self, headers: &HeaderMap, head: bool) -> Option<Response<Body>> {
        if !shared(headers) {
            return None;
        }
        let (body, h) = self.counts.served(|s| self.counted(s))?;
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        Some(respond(body, hit_headers(h, CacheOutcome::HitIndex), head))
    }

    /// The route this index serves.
    pub fn route(&self) -> &Arc<String> {
        &self.route
    }

    /// Counters.
    pub fn stats(&self) -> &IndexStats {
        &self.stats
    }

    /// Each kept partition with its state, hottest first.
    pub fn states(&self) -> Vec<(&str, PartitionState)> {
        self.rule
            .preload
            .iter()
            .zip(&self.states)
            .map(|(p, s)| {
                (
                    p.as_str(),
                    PartitionState::from_u8(s.load(Ordering::Acquire)),
                )
            })
            .collect()
    }

    /// Rows and tombstones held.
    pub fn entities(&self) -> usize {
        self.read_mirror().entities()
    }

    fn state(&self, at: usize) -> PartitionState {
        PartitionState::from_u8(self.states[at].load(Ordering::Acquire))
    }

    fn set_state(&self, at: usize, state: PartitionState) {
        if state != PartitionState::Ready {
            self.copied[at].store(false, Ordering::Release);
        }
        self.states[at].store(state as u8, Ordering::Release);
    }

    fn read_mirror(&self) -> std::sync::RwLockReadGuard<'_, Mirror> {
        self.mirror.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_mirror(&self) -> std::sync::RwLockWriteGuard<'_, Mirror> {
        self.mirror.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The answer to a list request from a ready partition, exactly the MES's; `None`
    /// when the index cannot vouch for it (the ordinary read path takes it then).
    pub fn serve(
        &self,
        query: Option<&str>,
        headers: &HeaderMap,
        head: bool,
    ) -> Option<Response<Body>> {
        if !shared(headers) {
            return None;
        }
        let (at, page, size) = self.parse_query(query?)?;
        if self.state(at) != PartitionState::Ready {
            return None;
        }
        let composed = self.composed(at, page, size)?;
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        Some(respond(
            composed.body.clone(),
            composed.headers.clone(),
            head,
        ))
    }

    /// `partition=P[&page=N][&size=M]` and nothing else, values within the MES's bounds.
    fn parse_query(&self, query: &str) -> Option<(usize, usize, usize)> {
        let (mut partition, mut page, mut size) = (None, None, None);
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let slot = if k == self.rule.partition.as_str() {
                let at = self.rule.preload.iter().position(|p| *p == v)?;
                partition.replace(at).is_none()
            } else if k == self.rule.page.as_str() {
                page.replace(v.parse::<usize>().ok().filter(|&n| n >= 1)?)
                    .is_none()
            } else if k == self.rule.size.as_str() {
                let n = v.parse::<usize>().ok();
                size.replace(n.filter(|&n| (1..=self.rule.max_size).contains(&n))?)
                    .is_none()
            } else {
                false
            };
            if !slot {
                return None;
            }
        }
        Some((
            partition?,
            page.unwrap_or(1),
            size.unwrap_or(self.rule.default_size),
        ))
    }

    fn composed(&self, at: usize, page: usize, size: usize) -> Option<Arc<Composed>> {
        let mirror = self.read_mirror();
        let partition = &self.rule.preload[at];
        let generation = mirror.generation(partition)?;
        let key = (at, page, size);
        let mut pages = self.pages.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = pages.get(&key).filter(|c| c.generation == generation) {
            return Some(c.clone());
        }
        let rows = mirror.page(partition, page, size)?;
        let body = self.body.compose(&rows, page, size);
        drop(mirror);
        let headers = self.page_headers()?;
        let composed = Arc::new(Composed {
            generation,
            body,
            headers,
        });
        if pages.len() >= PAGE_CACHE {
            pages.clear();
        }
        pages.insert(key, composed.clone());
        Some(composed)
    }

    fn page_headers(&self) -> Option<HeaderMap> {
        let learned = self
            .answer_headers
            .read()
            .unwrap_or_else(|e| e.into_inner());
        Some(hit_headers(
            learned.as_ref()?.clone(),
            CacheOutcome::HitIndex,
        ))
    }

    /// Applies a write's answer (the entity's new state) or another instance's delta;
    /// `created`: the answer is a new entity's (a `201`); `from_bus`: another instance's.
    /// The counts follow. Returns what
    /// the mirror did; `None` when the body is not a row of this index.
    pub fn apply(&self, row_json: &Bytes, created: bool, from_bus: bool) -> Option<Applied> {
        let row = match super::Row::parse(&self.rows, row_json.clone()) {
            Ok(row) => row,
            Err(e) => {
                debug!(route = %self.route, error = %e, "write answer is not an index row");
                return None;
            }
        };
        let to = row.partition.clone();
        let applied = self.write_mirror().apply(row);
        let delta = match &applied {
            Applied::Moved { from } => Some(counts::CountDelta::Moved { from, to: &to }),
            Applied::Inserted if created => Some(counts::CountDelta::Created { to: &to }),
            Applied::Inserted | Applied::Full => Some(counts::CountDelta::Unknown),
            Applied::Updated | Applied::Same | Applied::Older => None,
        };
        if let Some(d) = delta {
            self.counts
                .apply(d, from_bus, |s| self.counted(s).is_some());
        }
        let counter = match applied.changed() {
            true => &self.stats.applied,
            false => &self.stats.ignored,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if applied == Applied::Full {
            warn!(route = %self.route, max_entities = self.rule.max_entities,
                "index full: every partition goes back to the ordinary read path");
            self.refuse_all();
        }
        Some(applied)
    }

    /// Applies this instance's write answer (see [`LiveIndex::apply`]), then puts it in
    /// the copy in Redis before the caller publishes the bus message (see [`shared`]); a
    /// put that fails is queued and retried.
    pub async fn apply_answer(&self, row_json: &Bytes, created: bool) -> Option<Applied> {
        let applied = self.apply(row_json, created, false)?;
        if applied != Applied::Older {
            self.share(row_json.clone(), created).await;
        }
        Some(applied)
    }

    /// The list body `body` of this route with the item of the entity `row_json` is the
    /// new state of replaced by it, byte for byte in place (everything else, `total`
    /// included, as it was); unchanged if it does not list the entity. Only for a change
    /// that moves no entity within the unfiltered order (a status change; not a create);
    /// `None` when either cannot be read.
    pub fn patch_item(&self, body: &Bytes, row_json: &Bytes) -> Option<Bytes> {
        let id = super::Row::parse(&self.rows, row_json.clone()).ok()?.id;
        let list = self.body.parse(body).ok()?;
        for item in &list.items {
            if super::Row::parse(&self.rows, item.clone()).ok()?.id != id {
                continue;
            }
            // The items are slices of `body`: where this one starts within it.
            let at = item.as_ptr() as usize - body.as_ptr() as usize;
            let mut out = Vec::with_capacity(body.len() + row_json.len());
            out.extend_from_slice(&body[..at]);
            out.extend_from_slice(row_json);
            out.extend_from_slice(&body[at + item.len()..]);
            return Some(Bytes::from(out));
        }
        Some(body.clone())
    }

    /// Whether a list request with this query asks for one partition (else it is the
    /// unfiltered list).
    pub fn partitioned(&self, query: &str) -> bool {
        form_urlencoded::parse(query.as_bytes()).any(|(k, _)| k == self.rule.partition.as_str())
    }

    /// Puts a row in the copy in Redis (if any), queueing it when Redis fails.
    async fn share(&self, json: Bytes, created: bool) {
        let Some(shared) = &self.shared else {
            return;
        };
        let Ok(row) = super::Row::parse(&self.rows, json) else {
            return;
        };
        if let Err(e) = shared.put(std::slice::from_ref(&row), None).await {
            debug!(route = %self.route, error = %e, "index row not put in redis, queued");
            shared.queue(row, created);
        }
    }

    /// Partitions refused for a cause that may have passed (the MES kept disagreeing
    /// while writes flowed, or was down) are loaded again; not when the mirror is full.
    pub(super) fn retry_refused(&self) {
        if self.read_mirror().is_overflowed() {
            return;
        }
        for at in 0..self.states.len() {
            if self.state(at) == PartitionState::Refused {
                self.set_state(at, PartitionState::Loading);
            }
        }
    }

    /// Whether the bus is down (or this instance cut off from it): deltas may be missed,
    /// so no partition may become ready until [`LiveIndex::gap`].
    pub(super) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    fn refuse_all(&self) {
        for at in 0..self.states.len() {
            self.set_state(at, PartitionState::Refused);
        }
    }

    /// Marks a write of this index's entities as sent to the MES: the preload's verdict
    /// waits for it to be answered and applied (the scan's assumption A2). Drop the ticket
    /// when it is.
    pub fn write_sent(self: &Arc<Self>) -> WriteTicket {
        self.writes.begin(self.clone())
    }

    /// Deltas may be missed from now on (the bus is down): nothing is served until the
    /// bus is back and the partitions are loaded again.
    pub fn pause(&self) {
        self.paused.store(true, Ordering::Release);
        self.counts.forget();
        for at in 0..self.states.len() {
            if self.state(at) == PartitionState::Ready {
                self.set_state(at, PartitionState::Loading);
            }
        }
    }

    /// Deltas may have been missed (the bus was down and is back): the partitions are
    /// loaded again, nothing served meanwhile.
    pub fn gap(&self) {
        self.counts.forget();
        self.paused.store(false, Ordering::Release);
        self.retry_refused();
        for at in 0..self.states.len() {
            if self.state(at) == PartitionState::Ready {
                self.set_state(at, PartitionState::Loading);
            }
        }
        info!(route = %self.route, "index reloads: messages may have been missed");
        if let Some(shared) = &self.shared {
            shared.nudge();
        }
        self.reload.notify_one();
    }
}

/// The MES's answer headers as the index keeps them: no hop-by-hop, length, age, date or
/// cookie (each answer gets its own).
pub(super) fn keepable(headers: &mut HeaderMap) {
    forward::strip_hop_by_hop(headers);
    for h in [
        header::CONTENT_LENGTH,
        header::AGE,
        header::DATE,
        header::SET_COOKIE,
    ] {
        headers.remove(h);
    }
}

/// Shared answers only: a request with credentials takes its route's own policy.
fn shared(headers: &HeaderMap) -> bool {
    !headers.contains_key(header::AUTHORIZATION) && !headers.contains_key(header::COOKIE)
}

/// A 200 from the index: the body (none for HEAD, with its length then) and its headers.
fn respond(body: Bytes, mut headers: HeaderMap, head: bool) -> Response<Body> {
    if head {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    let body = if head { Bytes::new() } else { body };
    let mut resp = Response::new(Either::Left(Full::new(body)));
    *resp.headers_mut() = headers;
    resp
}
