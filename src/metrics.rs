//! Prometheus metrics: one struct, registered once, rendered on the admin listener.
//!
//! Labels come only from enum `as_str()` values and configured route names, never from raw
//! paths or ids. Counters kept elsewhere as atomics (tiers, invalidation) are copied in at
//! scrape time, so the hot path touches only the request counter and one histogram.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::breaker::BreakerState;
use crate::consistency::InvalidationStats;
use crate::l1::L1;
use crate::l2::L2;

/// The route label of requests no rule matched.
pub fn unmatched() -> Arc<String> {
    static UNMATCHED: OnceLock<Arc<String>> = OnceLock::new();
    UNMATCHED
        .get_or_init(|| Arc::new("unmatched".into()))
        .clone()
}

/// One route's `requests_total` children, one per `OUTCOMES` entry, resolved when the
/// route table is put in force: counting a request is an index and an atomic add, with no
/// label hashing (the gateway holds one per route, and one for unmatched requests).
#[derive(Debug)]
pub struct RouteRequests {
    /// The route's name (the `route` label; also the access log's).
    pub name: Arc<String>,
    by_outcome: [Counter; OUTCOMES.len()],
}

/// The route a request to the MES is made for, carried in its extensions.
#[derive(Clone, Debug)]
pub struct RouteLabel(pub Arc<String>);

/// `{route, outcome}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route name.
    pub route: Arc<String>,
    /// `hit_l1`, `hit_l2`, `hit_index`, `miss`, `stale`, `bypass`, `forward` or `write`.
    pub outcome: &'static str,
}

/// `{outcome}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// As in [`RequestLabels`].
    pub outcome: &'static str,
}

/// `{route, status_class}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// Route name.
    pub route: Arc<String>,
    /// `2xx` … `5xx`, or `error` when no answer came.
    pub status_class: &'static str,
}

/// A single `{name}` label of a fixed vocabulary.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The reason.
    pub reason: &'static str,
}

/// `{kind}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// The kind.
    pub kind: &'static str,
}

/// `{cause}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabels {
    /// The cause.
    pub cause: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every request outcome label (see [`RequestLabels`]).
const OUTCOMES: [&str; 8] = [
    "hit_l1",
    "hit_l2",
    "hit_index",
    "miss",
    "stale",
    "bypass",
    "forward",
    "write",
];

fn latency_histogram() -> Histogram {
    // 50 µs … ~26 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

/// The state kept outside the registry, read when the metrics are rendered (the
/// gateway hands it over; this module knows nothing of the gateway).
pub struct Snapshot<'a> {
    /// The local tier (bytes, entries, evictions).
    pub l1: &'a L1,
    /// The shared tier, when configured (errors, fenced stores, breaker).
    pub l2: Option<&'a L2>,
    /// The consistency counters.
    pub invalidation: &'a InvalidationStats,
    /// Name cells in use.
    pub epoch_counters: usize,
    /// Requests waiting on single-flight fetches.
    pub flights_waiting: usize,
    /// Whether the instance counts itself cut off from the invalidation bus.
    pub bus_cut_off: bool,
    /// Whether the last exchange with the MES found it unreachable.
    pub mes_unreachable: bool,
    /// The status indexes.
    pub indexes: Vec<IndexReport>,
    /// The compute path's counters.
    pub compute: &'a crate::compute::stats::ComputeStats,
    /// The asynchronous operations' counters by kind (`accepted`, `succeeded`, …).
    pub operations: [(&'static str, u64); 5],
    /// Operations in the queue not finished yet.
    pub operations_queued: u64,
    /// The event streams' counters.
    pub events: crate::events::EventStats,
}

/// What one status index reports to the metrics.
#[derive(Debug, Clone)]
pub struct IndexReport {
    /// The indexed route.
    pub route: Arc<String>,
    /// Partitions by state: `loading`, `ready`, `refused`.
    pub partitions: [(&'static str, usize); 3],
    /// Rows and tombstones held.
    pub entities: usize,
    /// Counters by kind: `applied`, `ignored`, `preload_page`, `warmed`, `copied`,
    /// `rescan`, `audit_repair`.
    pub events: [(&'static str, u64); 7],
}

/// `{route, state}` of an index partition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    /// The indexed route.
    pub route: Arc<String>,
    /// `loading`, `ready` or `refused`.
    pub state: &'static str,
}

/// `{route, kind}` of an index counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IndexLabels {
    /// The indexed route.
    pub route: Arc<String>,
    /// What was counted.
    pub kind: &'static str,
}

/// All metrics of one gateway.
pub struct Metrics {
    registry: Registry,
    /// Requests by route and outcome.
    pub requests: Family<RequestLabels, Counter>,
    /// Time to response headers by outcome.
    pub duration: HistogramFamily<OutcomeLabels>,
    /// The children of `duration` for `OUTCOMES`, in that order.
    durations: Vec<Histogram>,
    /// Requests sent to the MES by route and status class.
    pub upstream: Family<UpstreamLabels, Counter>,
    /// Time to the MES's response headers.
    pub upstream_duration: Histogram,
    /// Write-to-applied latency of invalidations from other instances.
    pub bus_latency: Histogram,
    invalidations: Family<ReasonLabels, Counter>,
    redis_errors: Family<KindLabels, Counter>,
    breaker_open: Gauge,
    bus_cut_off: Gauge,
    bus_cut_offs: Counter,
    mes_unreachable: Gauge,
    redis_generations: Counter,
    redis_cluster_renewals: Counter,
    l1_bytes: Gauge,
    l1_entries: Gauge,
    epoch_counters: Gauge,
    l1_evictions: Family<CauseLabels, Counter>,
    l2_fenced: Counter,
    singleflight_waiting: Gauge,
    index_partitions: Family<PartitionLabels, Gauge>,
    index_entities: Family<RouteOnly, Gauge>,
    index_events: Family<IndexLabels, Counter>,
    compute_events: Family<KindLabels, Counter>,
    compute_saved: Counter<f64, std::sync::atomic::AtomicU64>,
    live: Live,
}

/// The metrics of asynchronous operations and event streams.
#[derive(Default)]
struct Live {
    operations: Family<KindLabels, Counter>,
    operations_queued: Gauge,
    subscribers: Gauge,
    delivered: Counter,
    dropped: Counter,
    refused: Counter,
    reconnects: Counter,
    lost: Counter,
}

impl Live {
    fn register(&self, r: &mut Registry) {
        r.register(
            "operations",
            "Asynchronous operations: accepted here, outcomes recorded here (succeeded, failed), claimed from a silent consumer",
            self.operations.clone(),
        );
        r.register(
            "operations_queued",
            "Operations in the queue not finished yet, every instance's (read by this instance's consumer)",
            self.operations_queued.clone(),
        );
        r.register(
            "event_subscribers",
            "Event stream subscribers connected to this instance",
            self.subscribers.clone(),
        );
        r.register(
            "events_delivered",
            "Events sent to subscribers (one per subscriber)",
            self.delivered.clone(),
        );
        r.register(
            "event_subscribers_dropped",
            "Subscribers dropped for falling events.buffer behind",
            self.dropped.clone(),
        );
        r.register(
            "event_subscribers_refused",
            "Subscriptions refused at events.max_subscribers",
            self.refused.clone(),
        );
        r.register(
            "event_reader_reconnects",
            "Times the event stream reader connected to Redis again",
            self.reconnects.clone(),
        );
        r.register(
            "events_lost",
            "Events given up after their append to the stream kept failing (30 s), or with too many waiting",
            self.lost.clone(),
        );
    }

    fn render(&self, gw: &Snapshot<'_>) {
        for (kind, v) in gw.operations {
            sync(&self.operations.get_or_create(&KindLabels { kind }), v);
        }
        self.operations_queued.set(gw.operations_queued as i64);
        let ev = gw.events;
        self.subscribers.set(ev.subscribers as i64);
        sync(&self.delivered, ev.delivered);
        sync(&self.dropped, ev.dropped);
        sync(&self.refused, ev.refused);
        sync(&self.reconnects, ev.reconnects);
        sync(&self.lost, ev.lost);
    }
}

/// `{route}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteOnly {
    /// The route.
    pub route: Arc<String>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric under the `mesgate` prefix.
    pub fn new() -> Self {
        let duration: HistogramFamily<OutcomeLabels> =
            Family::new_with_constructor(latency_histogram);
        let durations = OUTCOMES
            .iter()
            .map(|&outcome| duration.get_or_create(&OutcomeLabels { outcome }).clone())
            .collect();
        let mut m = Self {
            registry: Registry::with_prefix("mesgate"),
            requests: Family::default(),
            duration,
            durations,
            upstream: Family::default(),
            upstream_duration: latency_histogram(),
            bus_latency: latency_histogram(),
            invalidations: Family::default(),
            redis_errors: Family::default(),
            breaker_open: Gauge::default(),
            bus_cut_off: Gauge::default(),
            bus_cut_offs: Counter::default(),
            mes_unreachable: Gauge::default(),
            redis_generations: Counter::default(),
            redis_cluster_renewals: Counter::default(),
            l1_bytes: Gauge::default(),
            l1_entries: Gauge::default(),
            epoch_counters: Gauge::default(),
            l1_evictions: Family::default(),
            l2_fenced: Counter::default(),
            singleflight_waiting: Gauge::default(),
            index_partitions: Family::default(),
            index_entities: Family::default(),
            index_events: Family::default(),
            compute_events: Family::default(),
            compute_saved: Counter::default(),
            live: Live::default(),
        };
        m.register();
        m
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "requests",
            "Requests by route and cache outcome",
            self.requests.clone(),
        );
        r.register(
            "index_partitions",
            "Status index partitions by state (ready ones answer their pages)",
            self.index_partitions.clone(),
        );
        r.register(
            "index_entities",
            "Rows and tombstones held by a status index",
            self.index_entities.clone(),
        );
        r.register(
            "index_events",
            "Status index: rows applied or ignored (older), preload pages, rescans, audit repairs",
            self.index_events.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time to response headers",
            self.duration.clone(),
        );
        r.register(
            "upstream_requests",
            "Requests sent to the MES",
            self.upstream.clone(),
        );
        r.register(
            "upstream_duration_seconds",
            "Time to the MES's headers",
            self.upstream_duration.clone(),
        );
        r.register(
            "bus_latency_seconds",
            "Write to applied on this instance",
            self.bus_latency.clone(),
        );
        r.register(
            "invalidations",
            "Invalidations by reason",
            self.invalidations.clone(),
        );
        r.register(
            "redis_errors",
            "Redis operations failed or skipped",
            self.redis_errors.clone(),
        );
        r.register(
            "redis_breaker_open",
            "1 while the Redis breaker skips Redis",
            self.breaker_open.clone(),
        );
        r.register(
            "bus_cut_off",
            "1 while this instance may be missing invalidations (the bus is silent or down): L1 is kept briefly, L2 not read",
            self.bus_cut_off.clone(),
        );
        r.register(
            "upstream_unreachable",
            "1 while the last exchange with the MES failed as an unreachable MES does (indexed pages are then marked detail=index-mes-unreachable)",
            self.mes_unreachable.clone(),
        );
        r.register(
            "bus_cut_offs",
            "Times this instance was cut off from the invalidation bus",
            self.bus_cut_offs.clone(),
        );
        r.register(
            "redis_generations",
            "Times Redis was found restarted or emptied, so nothing it held before is used",
            self.redis_generations.clone(),
        );
        r.register(
            "redis_cluster_renewals",
            "Times the Redis Cluster connection was built again after heartbeats failed for a breaker cooldown",
            self.redis_cluster_renewals.clone(),
        );
        r.register(
            "l1_bytes",
            "Bytes held in the local tier",
            self.l1_bytes.clone(),
        );
        r.register(
            "l1_entries",
            "Entries in the local tier",
            self.l1_entries.clone(),
        );
        r.register(
            "epoch_counters",
            "Local epoch counters (one per family fenced or bumped, pruned when unused)",
            self.epoch_counters.clone(),
        );
        r.register(
            "l1_evictions",
            "Local tier evictions by cause",
            self.l1_evictions.clone(),
        );
        r.register(
            "l2_fenced",
            "Redis stores refused by a moved epoch",
            self.l2_fenced.clone(),
        );
        r.register(
            "singleflight_waiting",
            "Requests waiting on a shared fetch",
            self.singleflight_waiting.clone(),
        );
        r.register(
            "compute_events",
            "Compute routes: computations started, joined (local, remote), hits, lease takeovers, bypasses",
            self.compute_events.clone(),
        );
        r.register(
            "compute_saved_seconds",
            "Computation time that hits and joins on compute routes spared the MES",
            self.compute_saved.clone(),
        );
        self.live.register(r);
    }

    /// Records one answered request.
    pub fn observe_request(&self, route: &RouteRequests, outcome: &'static str, seconds: f64) {
        // The known outcomes' counters and histograms were created up front: no label
        // hashing here.
        match OUTCOMES.iter().position(|o| *o == outcome) {
            Some(i) => {
                route.by_outcome[i].inc();
                self.durations[i].observe(seconds);
            }
            None => {
                let labels = RequestLabels {
                    route: route.name.clone(),
                    outcome,
                };
                self.requests.get_or_create(&labels).inc();
                self.duration
                    .get_or_create(&OutcomeLabels { outcome })
                    .observe(seconds);
            }
        }
    }

    /// The `requests_total` children of the route called `name`, for
    /// [`Metrics::observe_request`]. The same name always gives the same counters (a
    /// reload keeps counting where it was).
    pub fn route_requests(&self, name: &Arc<String>) -> RouteRequests {
        let by_outcome = OUTCOMES.map(|outcome| {
            let labels = RequestLabels {
                route: name.clone(),
                outcome,
            };
            self.requests.get_or_create(&labels).clone()
        });
        RouteRequests {
            name: name.clone(),
            by_outcome,
        }
    }

    /// Records one exchange with the MES.
    pub fn observe_upstream(&self, route: Arc<String>, status: Option<u16>, seconds: f64) {
        let status_class = match status {
            Some(200..=299) => "2xx",
            Some(300..=399) => "3xx",
            Some(400..=499) => "4xx",
            Some(500..=599) => "5xx",
            Some(_) => "1xx",
            None => "error",
        };
        let labels = UpstreamLabels {
            route,
            status_class,
        };
        self.upstream.get_or_create(&labels).inc();
        self.upstream_duration.observe(seconds);
    }

    /// Copies the state kept elsewhere into the registry and renders the text format.
    pub fn render(&self, gw: &Snapshot<'_>) -> String {
        self.l1_bytes.set(gw.l1.weighted_size() as i64);
        self.l1_entries.set(gw.l1.entry_count() as i64);
        self.epoch_counters.set(gw.epoch_counters as i64);
        let ev = gw.l1.evictions();
        for (cause, v) in [
            ("expired", &ev.expired),
            ("size", &ev.size),
            ("explicit", &ev.explicit),
            ("replaced", &ev.replaced),
        ] {
            sync(
                &self.l1_evictions.get_or_create(&CauseLabels { cause }),
                v.load(Ordering::Relaxed),
            );
        }
        if let Some(l2) = gw.l2 {
            let s = l2.stats();
            for (kind, v) in [("failed", &s.errors), ("skipped", &s.skipped)] {
                sync(
                    &self.redis_errors.get_or_create(&KindLabels { kind }),
                    v.load(Ordering::Relaxed),
                );
            }
            sync(&self.l2_fenced, s.fenced.load(Ordering::Relaxed));
            sync(
                &self.redis_generations,
                s.generations.load(Ordering::Relaxed),
            );
            sync(
                &self.redis_cluster_renewals,
                s.renewals.load(Ordering::Relaxed),
            );
            self.breaker_open
                .set(i64::from(l2.breaker_state() != BreakerState::Closed));
        }
        let s = gw.invalidation;
        self.bus_cut_off.set(i64::from(gw.bus_cut_off));
        self.mes_unreachable.set(i64::from(gw.mes_unreachable));
        sync(&self.bus_cut_offs, s.cut_offs.load(Ordering::Relaxed));
        for (reason, v) in [
            ("write", &s.applied),
            ("fallback", &s.fallbacks),
            ("bus", &s.received),
            ("forwarded", &s.forwarded),
            ("queued", &s.queued),
            ("retried", &s.retried),
            ("resubscribe", &s.resubscribes),
            ("fenced_fill", &s.fenced_fills),
            ("refreshed", &s.refreshed),
            ("refresh_dropped", &s.refresh_dropped),
            ("refreshed_shared", &s.refreshed_shared),
            ("refreshed_from_answer", &s.refreshed_from_answer),
            ("revalidated", &s.revalidated),
        ] {
            sync(
                &self.invalidations.get_or_create(&ReasonLabels { reason }),
                v.load(Ordering::Relaxed),
            );
        }
        self.singleflight_waiting.set(gw.flights_waiting as i64);
        self.render_indexes(&gw.indexes);
        for (kind, v) in gw.compute.counts() {
            sync(&self.compute_events.get_or_create(&KindLabels { kind }), v);
        }
        let saved = gw.compute.saved_ms() as f64 / 1000.0;
        let now = self.compute_saved.get();
        if saved > now {
            self.compute_saved.inc_by(saved - now);
        }
        self.live.render(gw);
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Metrics {
    fn render_indexes(&self, indexes: &[IndexReport]) {
        for ix in indexes {
            let route = ix.route.clone();
            for (state, n) in ix.partitions {
                let labels = PartitionLabels {
                    route: route.clone(),
                    state,
                };
                self.index_partitions.get_or_create(&labels).set(n as i64);
            }
            let only = RouteOnly {
                route: route.clone(),
            };
            self.index_entities
                .get_or_create(&only)
                .set(ix.entities as i64);
            for (kind, v) in ix.events {
                let labels = IndexLabels {
                    route: route.clone(),
                    kind,
                };
                sync(&self.index_events.get_or_create(&labels), v);
            }
        }
    }
}

/// Moves a counter up to a value counted elsewhere (never down).
fn sync(c: &Counter, value: u64) {
    let now = c.get();
    if value > now {
        c.inc_by(value - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(m: &Metrics, route: &str, outcome: &'static str) -> u64 {
        m.requests
            .get_or_create(&RequestLabels {
                route: Arc::new(route.to_owned()),
                outcome,
            })
            .get()
    }

    #[test]
    fn route_counters_resolved_up_front_count_under_the_route_and_outcome_labels() {
        let m = Metrics::new();
        let name = Arc::new("order-list".to_owned());
        let before_reload = m.route_requests(&name);
        m.observe_request(&before_reload, "hit_l1", 0.001);
        m.observe_request(&before_reload, "hit_l1", 0.001);
        // A reload resolves them again: the same series, counting on.
        let after_reload = m.route_requests(&Arc::new("order-list".to_owned()));
        m.observe_request(&after_reload, "miss", 0.02);
        m.observe_request(&after_reload, "hit_l1", 0.001);
        assert_eq!(count(&m, "order-list", "hit_l1"), 3);
        assert_eq!(count(&m, "order-list", "miss"), 1);
        assert_eq!(count(&m, "order-list", "write"), 0);
        // An outcome outside the known vocabulary still counts, through the family.
        m.observe_request(&after_reload, "other", 0.001);
        assert_eq!(count(&m, "order-list", "other"), 1);
    }
}
