//! Where the index's rows come from: the warm-up from the copy in Redis, the preload of
//! each kept partition from the MES (paged, paced, exact by the scan's verdict, then copied
//! to Redis), and the audit that finds writes made behind mesgate's back.
//!
//! Serving and applying writes are [`super`]'s; the verdict's argument is
//! [`crate::index::scan`]'s; the copy's layout and scripts are [`super::shared`]'s.

use std::sync::Arc;

use futures_util::StreamExt;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderMap;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use tracing::{debug, info, warn};

use super::{ATTEMPTS, AUDIT_RELOCATE, LiveIndex, MAX_LIST_BODY, PROBES, PartitionState};
use crate::index::Applied;

/// How long after the MES's counts answer a delta from the bus still means the answer
/// may already show it (well above the bus's write-to-applied latency).
const BUS_GRACE: Duration = Duration::from_millis(200);

/// Every how many rounds (of `audit`, or 5 s) a refused partition is tried again.
const REFUSED_RETRY_TICKS: u64 = 12;

/// How long the index waits for the bus before it reads its copy in Redis.
const BUS_WAIT: Duration = Duration::from_secs(2);

/// How old the change counter used as the tombstone sweep's horizon is: longer than any
/// write or delta can be in flight.
const SWEEP_AGE: Duration = Duration::from_secs(120);
use crate::consistency::Invalidator;
use crate::consistency::bus::Delta;
use crate::index::{Row, Scan, Verdict};
use crate::metrics::RouteLabel;
use crate::pass::Pass;

impl LiveIndex {
    /// Preloads every kept partition, hottest first; then audits the ready ones every
    /// `audit` (a partition found wrong is rebuilt), until a reload request.
    pub async fn run(self: Arc<Self>, pass: Pass, bus: Invalidator) {
        let mut seqs = std::collections::VecDeque::new();
        let tick = match self.rule.audit.is_zero() {
            true => Duration::from_secs(5),
            false => self.rule.audit,
        };
        let mut ticks = 0u64;
        loop {
            let server = self.copy_server(&bus).await;
            let paused = self.is_paused();
            let loading = (0..self.rule.preload.len())
                .filter(|&at| !paused && self.state(at) == PartitionState::Loading);
            futures_util::stream::iter(loading)
                .for_each_concurrent(self.rule.preload_concurrency, |at| {
                    let (this, server, pass) = (&*self, &server, &pass);
                    async move {
                        if let Some(server) = server
                            && this.warm(at, server).await
                        {
                            return;
                        }
                        this.preload(at, pass).await;
                    }
                })
                .await;
            // The counts first: until they are known every write waits for their
            // refresh; the copy to Redis (a bus grace per partition) can wait.
            if !self.counts.known() {
                self.learn_counts(&pass).await;
            }
            if let Some(server) = &server {
                self.copy_out(server).await;
            }
            tokio::select! {
                _ = self.reload.notified() => {}
                _ = tokio::time::sleep(tick) => {
                    if !self.rule.audit.is_zero() {
                        self.audit_all(&pass).await;
                        self.learn_counts(&pass).await;
                    }
                    self.sweep(&mut seqs);
                    ticks += 1;
                    if ticks.is_multiple_of(REFUSED_RETRY_TICKS) && !self.is_paused() {
                        self.retry_refused();
                    }
                }
            }
        }
    }

    /// Asks the MES for the counts and takes them unless a delta came meanwhile (then the
    /// next round tries again); also the counts' audit: a difference is a repair.
    async fn learn_counts(&self, pass: &Pass) {
        let Some((_, path)) = &self.counts_route else {
            return;
        };
        let issued = self.counts.deltas();
        let watermark = self.writes.sent();
        let (mut headers, body) = match self.get(path, pass).await {
            Ok(answer) => answer,
            Err(e) => {
                debug!(route = %self.route, error = %e, "index counts not learned");
                return;
            }
        };
        self.writes.settled(watermark).await;
        // Another instance's write the MES had before it answered is told over the bus
        // within milliseconds: one told in this grace is counted as in flight.
        tokio::time::sleep(BUS_GRACE).await;
        super::keepable(&mut headers);
        if self
            .counts
            .learn(body, headers, issued, |s| self.counted(s))
            == Some(true)
        {
            info!(route = %self.route, "index audit repaired the counts");
            self.stats.audit_repairs.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn audit_all(&self, pass: &Pass) {
        for at in 0..self.rule.preload.len() {
            if self.state(at) != PartitionState::Ready {
                continue;
            }
            if let Err(e) = self.audit(at, 1, pass).await {
                debug!(route = %self.route, error = %e, "index audit skipped");
            }
            // And one deeper page, a different one each round (an order moved behind
            // mesgate's back lies anywhere in the history).
            let pages = self
                .read_mirror()
                .len(&self.rule.preload[at])
                .unwrap_or(0)
                .div_ceil(self.rule.default_size);
            if pages >= 2 && self.state(at) == PartitionState::Ready {
                let round = self.audit_round[at].fetch_add(1, Ordering::Relaxed);
                let page = 2 + round % (pages - 1);
                if let Err(e) = self.audit(at, page, pass).await {
                    debug!(route = %self.route, page, error = %e, "index audit skipped");
                }
            }
        }
    }

    /// Drops the tombstones (orders gone to a status not kept) born before every request
    /// that can still be in flight: the mirror's change counter as it was [`SWEEP_AGE`]
    /// ago (a write, or another instance's delta, takes far less). Without it every order
    /// ever moved to history would stay until `max_entities` is reached.
    fn sweep(&self, seqs: &mut std::collections::VecDeque<(std::time::Instant, u64)>) {
        let now = std::time::Instant::now();
        seqs.push_back((now, self.read_mirror().seq()));
        let mut horizon = None;
        while let Some(&(at, seq)) = seqs.front() {
            if now.duration_since(at) < SWEEP_AGE {
                break;
            }
            horizon = Some(seq);
            seqs.pop_front();
        }
        if let Some(h) = horizon {
            let dropped = self.write_mirror().sweep(h);
            if dropped > 0 {
                debug!(route = %self.route, dropped, "index tombstones swept");
            }
        }
    }

    /// Compares page `page` of a ready partition with the MES's (writes behind mesgate's back):
    /// newer rows the MES shows are applied, orders the mirror lists there and the MES does
    /// not are looked up one by one and moved to where they are, and a count that still
    /// disagrees rebuilds the partition. Skipped when a write moved the partition while
    /// the MES's page was in flight (the two could not be compared).
    async fn audit(&self, at: usize, page: usize, pass: &Pass) -> Result<(), String> {
        let partition = self.rule.preload[at].as_str();
        let size = self.rule.default_size;
        let before = self.read_mirror().generation(partition);
        let watermark = self.writes.sent();
        let theirs = self.fetch(partition, page, size, pass).await?;
        let mut changed = Vec::new();
        self.writes.settled(watermark).await;
        let (mut repairs, extra, total) = {
            let mut mirror = self.write_mirror();
            if mirror.generation(partition) != before {
                return Ok(());
            }
            let mut listed = Vec::with_capacity(theirs.items.len());
            let mut repairs = 0;
            for item in &theirs.items {
                let Ok(row) = Row::parse(&self.rows, item.clone()) else {
                    continue;
                };
                listed.push(row.id);
                if mirror.apply(row).changed() {
                    repairs += 1;
                    changed.push(item.clone());
                }
            }
            let ours = mirror
                .page(partition, page, size)
                .map(|p| p.items)
                .unwrap_or_default();
            let extra: Vec<u64> = ours
                .iter()
                .filter_map(|b| Row::parse(&self.rows, b.clone()).ok())
                .map(|r| r.id)
                .filter(|id| !listed.contains(id))
                .take(AUDIT_RELOCATE)
                .collect();
            // Counted while the mirror is still held: whoever sees a repair sees it counted.
            self.stats
                .audit_repairs
                .fetch_add(repairs, Ordering::Relaxed);
            (repairs, extra, theirs.total)
        };
        for row in changed {
            self.share(row, false).await;
        }
        for id in &extra {
            repairs += u64::from(self.relocate(*id, pass).await);
        }
        let held = self.read_mirror().len(partition).unwrap_or(0);
        if held != total && self.read_mirror().generation(partition) == before {
            warn!(route = %self.route, partition, held, total, "index audit: the MES disagrees, rebuilding the partition");
            self.write_mirror().forget(partition);
            self.set_state(at, PartitionState::Loading);
            if let Some(shared) = &self.shared
                && let Err(e) = shared.unready(partition).await
            {
                warn!(route = %self.route, partition, error = %e, "index copy in redis not marked incomplete");
            }
            repairs += 1;
            self.stats.audit_repairs.fetch_add(1, Ordering::Relaxed);
            self.reload.notify_one();
        }
        if repairs > 0 {
            info!(route = %self.route, partition, repairs, "index audit repaired writes made behind mesgate's back");
        }
        Ok(())
    }

    /// Asks the MES for one order and applies it; whether the mirror changed.
    async fn relocate(&self, id: u64, pass: &Pass) -> bool {
        let path = match &self.rule.detail {
            Some(t) => t.replace("{id}", &id.to_string()),
            None => format!("{}/{id}", self.path),
        };
        match self.get(&path, pass).await {
            Ok((_, body)) => {
                let Some(applied) = self.apply(&body, false, false) else {
                    return false;
                };
                // Counted before the copy in Redis is told (a round trip): whoever sees
                // the repair served sees it counted.
                if applied.changed() {
                    self.stats.audit_repairs.fetch_add(1, Ordering::Relaxed);
                }
                if applied != Applied::Older {
                    self.share(body, false).await;
                }
                applied.changed()
            }
            Err(e) => {
                debug!(route = %self.route, id, error = %e, "index audit could not look an order up");
                false
            }
        }
    }

    /// The Redis server whose copy can be used now: the bus must be followed first (a
    /// delta published while the copy is read must not be missed); `None` without Redis,
    /// or when the bus or Redis do not answer in time (the MES is asked then).
    async fn copy_server(&self, bus: &Invalidator) -> Option<String> {
        let shared = self.shared.as_ref()?;
        if !bus.wait_subscribed(BUS_WAIT).await {
            debug!(route = %self.route, "index not warmed from redis: the bus is not followed");
            return None;
        }
        shared.server().await.ok()
    }

    /// Loads `partition` from the copy in Redis if it is complete there for `server`;
    /// whether it is ready now. Forgotten first, then read, then this instance's puts not
    /// landed yet applied again: every delta from the moment it was forgotten on is kept.
    async fn warm(&self, at: usize, server: &str) -> bool {
        let Some(shared) = &self.shared else {
            return false;
        };
        let partition = self.rule.preload[at].as_str();
        let Ok(Some(mut headers)) = shared.headers().await else {
            return false;
        };
        self.write_mirror().forget(partition);
        let pending = shared.pending();
        let mut items = Vec::new();
        match shared.warm(partition, server, |b| items.push(b)).await {
            Ok(true) => {}
            Ok(false) => return false,
            Err(e) => {
                warn!(route = %self.route, partition, error = %e, "index copy in redis not read; asking the MES");
                return false;
            }
        }
        let held = {
            let mut mirror = self.write_mirror();
            for item in items {
                match Row::parse(&self.rows, item) {
                    Ok(row) => drop(mirror.apply(row)),
                    Err(e) => {
                        warn!(route = %self.route, partition, error = %e, "index copy in redis has a bad row; asking the MES");
                        mirror.forget(partition);
                        return false;
                    }
                }
            }
            for row in pending {
                mirror.apply(row);
            }
            if mirror.is_overflowed() {
                return false;
            }
            mirror.len(partition).unwrap_or(0)
        };
        self.learn_headers(&mut headers);
        info!(route = %self.route, partition, held, "index partition ready from redis");
        self.stats.warmed.fetch_add(1, Ordering::Relaxed);
        if self.ready_unless_paused(at) {
            self.copied[at].store(true, Ordering::Release);
        }
        true
    }

    /// Makes a loaded partition ready, unless the bus went down meanwhile (then it loads
    /// again once the bus is back); whether it did.
    fn ready_unless_paused(&self, at: usize) -> bool {
        if self.is_paused() {
            return false;
        }
        self.set_state(at, PartitionState::Ready);
        true
    }

    /// Copies each ready partition not in the copy yet (preloaded from the MES, or
    /// Redis lost it) to Redis, marked complete for `server`.
    async fn copy_out(&self, server: &str) {
        for at in 0..self.rule.preload.len() {
            if self.state(at) == PartitionState::Ready && !self.copied[at].load(Ordering::Acquire) {
                let done = self.copy_partition(at, server).await;
                // Unless the partition left Ready meanwhile (then it is copied again).
                if done && self.state(at) == PartitionState::Ready {
                    self.copied[at].store(true, Ordering::Release);
                }
            }
        }
    }

    /// One partition to the copy: the copy's change counter is read first, and the mirror
    /// only a bus grace later, so every put the seal may drop (one counted before) has had
    /// its delta applied here: what the mirror lacks then is not in the partition.
    async fn copy_partition(&self, at: usize, server: &str) -> bool {
        let Some(shared) = &self.shared else {
            return false;
        };
        let partition = self.rule.preload[at].as_str();
        let Ok(since) = shared.seq().await else {
            return false;
        };
        tokio::time::sleep(BUS_GRACE).await;
        let items = {
            let mirror = self.read_mirror();
            let n = mirror.len(partition).unwrap_or(0).max(1);
            mirror
                .page(partition, 1, n)
                .map(|p| p.items)
                .unwrap_or_default()
        };
        if self.state(at) != PartitionState::Ready {
            return false;
        }
        let rows: Vec<Row> = items
            .into_iter()
            .filter_map(|b| Row::parse(&self.rows, b).ok())
            .collect();
        let headers = self
            .answer_headers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let result = async {
            if let Some(h) = headers {
                shared.put_headers(&h).await?;
            }
            shared.load(partition, &rows, since, server).await
        };
        match result.await {
            Ok(dropped) => {
                self.stats.copied.fetch_add(1, Ordering::Relaxed);
                info!(route = %self.route, partition, rows = rows.len(), dropped, "index partition copied to redis");
                true
            }
            Err(e) => {
                warn!(route = %self.route, partition, error = %e, "index partition not copied to redis");
                false
            }
        }
    }

    /// Puts the rows whose put failed until they land, then tells the other instances
    /// again (they may have warmed from the copy without them; see [`super::shared`]).
    pub(super) async fn retry_puts(self: Arc<Self>, bus: Invalidator) {
        let Some(shared) = &self.shared else {
            return;
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            let rows = shared.queued().await;
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = shared.nudged() => backoff = Duration::from_millis(100),
            }
            let only: Vec<Row> = rows.iter().map(|(r, _)| r.clone()).collect();
            if let Err(e) = shared.put(&only, None).await {
                debug!(route = %self.route, error = %e, "retry of queued index rows failed");
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
            backoff = Duration::from_millis(100);
            shared.landed(rows.len());
            info!(route = %self.route, count = rows.len(), "queued index rows applied to redis");
            for (row, created) in rows {
                let delta = Delta {
                    index: self.route.to_string(),
                    row: String::from_utf8_lossy(&row.json).into_owned(),
                    created,
                };
                if let Err(e) = bus.publish_delta(delta).await {
                    debug!(route = %self.route, error = %e, "index delta not published again");
                }
            }
        }
    }

    async fn preload(&self, at: usize, pass: &Pass) {
        let partition = self.rule.preload[at].clone();
        for attempt in 1..=ATTEMPTS {
            match self.scan_once(&partition, pass).await {
                Ok(true) => {
                    let held = self.read_mirror().len(&partition).unwrap_or(0);
                    info!(route = %self.route, %partition, held, attempt, "index partition ready");
                    self.ready_unless_paused(at);
                    return;
                }
                Ok(false) => {
                    self.stats.rescans.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    warn!(route = %self.route, %partition, attempt, error = %e, "index preload failed");
                    tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
                }
            }
            if self.read_mirror().is_overflowed() {
                break;
            }
        }
        warn!(route = %self.route, %partition, "index partition refused: it stays on the ordinary read path");
        self.set_state(at, PartitionState::Refused);
    }

    /// One scan of `partition`, then up to [`PROBES`] probes; whether it ended exact.
    async fn scan_once(&self, partition: &str, pass: &Pass) -> Result<bool, String> {
        let max_pages = self.rule.max_entities / self.rule.max_size + 2;
        let mut scan = Scan::new(partition, self.rule.max_size, max_pages);
        loop {
            let Some(req) = scan.request(&self.read_mirror()) else {
                break;
            };
            let watermark = self.writes.sent();
            let body = self.fetch(partition, req.page, req.size, pass).await?;
            self.stats.preload_pages.fetch_add(1, Ordering::Relaxed);
            let received = scan
                .receive(&mut self.write_mirror(), &self.rows, &body)
                .map_err(|e| e.to_string())?;
            if received.last {
                self.writes.settled(watermark).await;
                break;
            }
            tokio::time::sleep(self.rule.preload_pause).await;
        }
        for _ in 0..=PROBES {
            match scan.verdict(&self.read_mirror()) {
                Verdict::Exact => return Ok(true),
                Verdict::Recheck { .. } | Verdict::Rescan(crate::index::Rescan::Missing { .. }) => {
                }
                other => {
                    debug!(route = %self.route, %partition, verdict = ?other, "index scan again");
                    return Ok(false);
                }
            }
            tokio::time::sleep(self.rule.preload_pause).await;
            let req = scan.probe(&self.read_mirror());
            let watermark = self.writes.sent();
            let body = self.fetch(partition, req.page, req.size, pass).await?;
            scan.receive(&mut self.write_mirror(), &self.rows, &body)
                .map_err(|e| e.to_string())?;
            self.writes.settled(watermark).await;
        }
        Ok(false)
    }

    /// One list page from the MES, parsed; learns the answer headers from the first.
    async fn fetch(
        &self,
        partition: &str,
        page: usize,
        size: usize,
        pass: &Pass,
    ) -> Result<crate::index::ListBody, String> {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair(&self.rule.partition, partition)
            .append_pair(&self.rule.page, &page.to_string())
            .append_pair(&self.rule.size, &size.to_string())
            .finish();
        let (mut headers, bytes) = self.get(&format!("{}?{query}", self.path), pass).await?;
        self.learn_headers(&mut headers);
        self.body.parse(&bytes).map_err(|e| e.to_string())
    }

    /// A GET of `path_and_query` from the MES: a 200's headers and body, or why not.
    async fn get(&self, path_and_query: &str, pass: &Pass) -> Result<(HeaderMap, Bytes), String> {
        let upstream = pass.upstream();
        let mut req = Request::new(Either::Right(Full::new(Bytes::new())));
        *req.uri_mut() = upstream.uri(path_and_query).map_err(|e| e.to_string())?;
        req.extensions_mut().insert(RouteLabel(self.route.clone()));
        let resp = upstream
            .send(req, Some(upstream.response_header()))
            .await
            .map_err(|e| e.to_string())?;
        if resp.status() != StatusCode::OK {
            return Err(format!("the MES answered {}", resp.status()));
        }
        let (parts, body) = resp.into_parts();
        let bytes = Limited::new(body, MAX_LIST_BODY)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((parts.headers, bytes))
    }

    fn learn_headers(&self, headers: &mut HeaderMap) {
        let mut learned = self
            .answer_headers
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if learned.is_some() {
            return;
        }
        super::keepable(headers);
        *learned = Some(std::mem::take(headers));
    }
}
