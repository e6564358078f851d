//! Writes in flight (what a preload's verdict waits for) and the set of a gateway's live
//! indexes, with what it reports and where the bus's deltas go.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

use super::shared::SharedIndex;
use super::{LiveIndex, PartitionState};
use crate::consistency::Invalidator;
use crate::l2::L2;
use crate::metrics::IndexReport;
use crate::pass::{Body, Pass};
use http::Response;

/// Writes sent to the MES and not yet answered and applied, numbered in sending order.
#[derive(Default)]
pub(super) struct WritesInFlight {
    // A std Mutex: inserts and removes, never held across `.await`.
    open: Mutex<BTreeSet<u64>>,
    next: AtomicU64,
    done: Notify,
}

impl WritesInFlight {
    pub(super) fn begin(&self, index: Arc<LiveIndex>) -> WriteTicket {
        let n = self.next.fetch_add(1, Ordering::AcqRel);
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(n);
        WriteTicket { index, n }
    }

    /// The number the next write sent will get.
    pub(super) fn sent(&self) -> u64 {
        self.next.load(Ordering::Acquire)
    }

    /// Waits (at most 10 s) until every write numbered below `watermark` is done.
    pub(super) async fn settled(&self, watermark: u64) {
        let wait = async {
            loop {
                let notified = self.done.notified();
                let pending = {
                    let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
                    open.first().is_some_and(|&n| n < watermark)
                };
                if !pending {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), wait).await;
    }
}

/// A write of an indexed entity in flight (see [`LiveIndex::write_sent`]).
pub struct WriteTicket {
    index: Arc<LiveIndex>,
    n: u64,
}

impl Drop for WriteTicket {
    fn drop(&mut self) {
        let w = &self.index.writes;
        w.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.n);
        w.done.notify_waiters();
    }
}

/// The index side of one route's reads, resolved when a route table is put in force.
#[derive(Clone)]
pub enum Answerer {
    /// The list pages of an indexed route.
    Pages(Arc<LiveIndex>),
    /// The counts route an index keeps.
    Counts(Arc<LiveIndex>),
}

impl Answerer {
    /// The answer from the index, when it can vouch for it.
    pub fn answer(
        &self,
        query: Option<&str>,
        headers: &http::HeaderMap,
        head: bool,
    ) -> Option<Response<Body>> {
        match self {
            Answerer::Pages(ix) => ix.serve(query, headers, head),
            Answerer::Counts(ix) => query
                .is_none()
                .then(|| ix.serve_counts(headers, head))
                .flatten(),
        }
    }

    /// Whether a request with this query is answered from the index now.
    pub fn answers(&self, query: Option<&str>) -> bool {
        match self {
            Answerer::Pages(ix) => query.is_some_and(|q| ix.ready_for(q)),
            Answerer::Counts(ix) => query.is_none() && ix.counts_known(),
        }
    }
}

/// The live indexes of a gateway, by route name. Cheap to clone.
#[derive(Clone, Default)]
pub struct Indexes {
    all: Arc<Vec<Arc<LiveIndex>>>,
}

impl Indexes {
    /// One live index per route with a `[route.index]`, each with its copy in the Redis
    /// of `l2` when there is one.
    pub fn new(routes: &crate::config::route::RouteTable, l2: Option<&L2>) -> Self {
        let all = routes
            .routes()
            .iter()
            .filter_map(|r| {
                let rule = r.index.clone()?;
                let counts = rule.counts.as_ref().and_then(|name| {
                    let c = routes.routes().iter().find(|o| o.name.as_str() == name)?;
                    Some((c.name.clone(), c.path.as_str().to_owned()))
                });
                let shared = l2.map(|l2| SharedIndex::new(l2.clone(), &r.name, &rule.preload));
                Some(Arc::new(LiveIndex::new(
                    r.name.clone(),
                    r.path.as_str(),
                    rule,
                    counts,
                    shared,
                )))
            })
            .collect();
        Self { all: Arc::new(all) }
    }

    /// The index of route `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<LiveIndex>> {
        self.all.iter().find(|i| i.route.as_str() == name)
    }

    /// Every index.
    pub fn all(&self) -> &[Arc<LiveIndex>] {
        &self.all
    }

    /// What each index reports to the metrics.
    pub fn reports(&self) -> Vec<IndexReport> {
        self.all
            .iter()
            .map(|ix| {
                let states = ix.states();
                let count = |s: PartitionState| states.iter().filter(|(_, x)| *x == s).count();
                let st = &ix.stats;
                let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
                IndexReport {
                    route: ix.route.clone(),
                    partitions: [
                        ("loading", count(PartitionState::Loading)),
                        ("ready", count(PartitionState::Ready)),
                        ("refused", count(PartitionState::Refused)),
                    ],
                    entities: ix.entities(),
                    events: [
                        ("applied", load(&st.applied)),
                        ("ignored", load(&st.ignored)),
                        ("preload_page", load(&st.preload_pages)),
                        ("warmed", load(&st.warmed)),
                        ("copied", load(&st.copied)),
                        ("rescan", load(&st.rescans)),
                        ("audit_repair", load(&st.audit_repairs)),
                    ],
                }
            })
            .collect()
    }

    /// Starts every index's preload (from its copy in Redis when that is complete, once
    /// the bus of `bus` is followed; else from the MES) and the retries of its puts.
    pub fn start(&self, pass: &Pass, bus: &Invalidator) {
        for ix in self.all.iter() {
            tokio::spawn(ix.clone().run(pass.clone(), bus.clone()));
            if ix.shared.is_some() {
                tokio::spawn(ix.clone().retry_puts(bus.clone()));
            }
        }
    }

    /// Whether an index answers a request of route `name` with this query now.
    pub fn answers(&self, name: &str, query: Option<&str>) -> bool {
        self.answerer(name).is_some_and(|a| a.answers(query))
    }

    /// What answers the reads of route `name` from an index: its pages or its counts.
    pub fn answerer(&self, name: &str) -> Option<Answerer> {
        if let Some(ix) = self.get(name) {
            return Some(Answerer::Pages(ix.clone()));
        }
        let ix = self.all.iter().find(|i| i.keeps_counts_of(name))?;
        Some(Answerer::Counts(ix.clone()))
    }

    /// Another instance's delta for index `name`.
    pub fn apply_delta(&self, name: &str, row: &[u8], created: bool) {
        if let Some(ix) = self.get(name) {
            ix.apply(&Bytes::copy_from_slice(row), created, true);
        }
    }
}

impl crate::consistency::bus::DeltaSink for Indexes {
    fn delta(&self, index: &str, row: &[u8], created: bool) {
        self.apply_delta(index, row, created);
    }

    fn paused(&self) {
        for ix in self.all.iter() {
            ix.pause();
        }
    }

    fn resumed(&self) {
        for ix in self.all.iter() {
            ix.gap();
        }
    }
}
