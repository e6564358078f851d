//! The typed runtime config, what the gateway runs with (the types of
//! [`Config`](super::Config)'s fields), and the printed route table of `check-config`.
//!
//! It owns no parsing and no rejection: values get here only through
//! [`validate`](super::validate) and [`validate_route`](super::validate_route).

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, StatusCode};

use super::{CredentialPolicy, UnknownQuery};
use crate::config::route::Route;
use crate::family::{Source, Template};

/// The MES as a base URI.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    /// `http`.
    pub scheme: http::uri::Scheme,
    /// `host:port`.
    pub authority: http::uri::Authority,
}

/// How the Redis in use is found (`redis.mode`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTopology {
    /// One server at `url`.
    Standalone,
    /// The master named `master`, asked of these sentinels (URLs) and followed through
    /// failovers.
    Sentinel {
        /// The sentinels' URLs.
        sentinels: Vec<String>,
        /// The monitored master's name.
        master: String,
    },
    /// A Redis Cluster, discovered from these seed nodes (URLs).
    Cluster {
        /// The seed nodes' URLs.
        nodes: Vec<String>,
    },
}

/// Validated `[redis]`.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Connection URL (standalone), or the list as configured (sentinel, cluster).
    pub url: String,
    /// How the Redis in use is found.
    pub topology: RedisTopology,
    /// Key prefix.
    pub prefix: String,
    /// Per-operation timeout.
    pub op_timeout: Duration,
    /// Connection timeout.
    pub connect_timeout: Duration,
    /// Failures that open the breaker.
    pub breaker_failures: u32,
    /// Breaker cool-down.
    pub breaker_cooldown: Duration,
    /// Interval of this instance's heartbeats on the bus.
    pub heartbeat: Duration,
    /// Bus silence after which the instance counts itself cut off.
    pub bus_deadline: Duration,
    /// Longest L1 freshness of an entry stored while cut off.
    pub cut_off_ttl: Duration,
}

/// Validated `[timeouts]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect to the MES.
    pub connect: Duration,
    /// Until response headers.
    pub response_header: Duration,
    /// Whole fetch for the cache.
    pub total: Duration,
    /// Client header read, and the wait for a new connection's first request.
    pub client_header: Duration,
    /// Idle kept-alive client connection.
    pub client_idle: Duration,
    /// Longest pause in a client's request body.
    pub client_body: Duration,
    /// Pool idle.
    pub pool_idle: Duration,
    /// Shutdown drain deadline.
    pub drain: Duration,
}

/// Validated `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request head bytes.
    pub max_header_bytes: usize,
    /// Request header count.
    pub max_headers: usize,
    /// Client connections cap; `None`: derived from the open-file limit at start.
    pub max_connections: Option<usize>,
}

/// One allowed query parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryParam {
    /// Name as sent.
    pub name: String,
    /// Value used when the request omits it.
    pub default: Option<String>,
}

/// Validated `[route.cache]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CachePolicy {
    /// Allowed parameters, sorted by name (so the key is built sorted).
    pub query: Vec<QueryParam>,
    /// Policy for other parameters.
    pub unknown_query: UnknownQuery,
    /// Headers that vary the key, lowercase, sorted.
    pub vary: Vec<HeaderName>,
    /// L1 freshness (zero: skip L1).
    pub ttl_l1: Duration,
    /// L2 freshness (zero: skip L2).
    pub ttl_l2: Duration,
    /// Stale-if-error window.
    pub stale_if_error: Duration,
    /// Largest body stored.
    pub max_body: usize,
    /// Credential policy.
    pub credentials: CredentialPolicy,
    /// Statuses that may be stored.
    pub statuses: Vec<StatusCode>,
    /// Families an entry belongs to.
    pub families: Vec<Template>,
    /// How to read members out of a body.
    pub members: Option<Members>,
}

/// Validated `[route.cache.members]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Members {
    /// Dotted path to the member array; empty: the body is one member.
    pub items: String,
    /// Entity template over `{item.x}`.
    pub entity: Template,
    /// Family templates over `{item.x}`.
    pub member_of: Vec<Template>,
}

/// Validated `[route.invalidate]`.
#[derive(Debug, Clone)]
pub struct InvalidateRule {
    /// Family templates.
    pub families: Vec<Template>,
    /// Entity template.
    pub entity: Option<Template>,
    /// Groups invalidated whole when the entity's families are unknown.
    pub fallback: Vec<String>,
    /// Success statuses; empty means any 2xx.
    pub statuses: Vec<StatusCode>,
    /// Body buffering cap.
    pub max_body: usize,
    /// Longest wait for the refresh of the entries the write makes wrong; zero: off.
    pub refresh: Duration,
    /// The indexed route whose index this write's answer updates.
    pub index: Option<Arc<String>>,
    /// The GET path whose answer the write's answer is (see `RawInvalidate::represents`).
    pub represents: Option<AnswerPath>,
    /// Whether the write may be accepted asynchronously (`RawInvalidate::async_`).
    pub async_: bool,
}

/// Validated `[events]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventsConfig {
    /// Approximate length of the stream's history.
    pub history: usize,
    /// How far one subscriber may fall behind before it is dropped.
    pub buffer: usize,
    /// Heartbeat comment interval.
    pub heartbeat: Duration,
    /// `retry:` hint.
    pub retry: Duration,
    /// The most subscribers at once (`None`: half the connection cap).
    pub max_subscribers: Option<usize>,
}

/// Validated `[ui]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UiConfig {
    /// Whether `/mesgate/ui` is served.
    pub enabled: bool,
    /// The statuses whose first pages it shows, in order.
    pub statuses: Vec<String>,
}

/// Validated `[operations]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OperationsConfig {
    /// How long an operation's record is kept.
    pub keep: Duration,
    /// Idle time after which another instance claims a taken operation.
    pub claim_idle: Duration,
    /// The longest `Prefer: wait` honoured.
    pub max_wait: Duration,
    /// Attempts while the MES is unreachable, the first included (at least 1).
    pub max_attempts: u32,
    /// The wait before the second attempt (doubling).
    pub retry_backoff: Duration,
}

/// A GET path rendered from a write's facts: one template per segment.
#[derive(Debug, Clone)]
pub struct AnswerPath {
    /// The segments after the leading `/`.
    pub segments: Vec<Template>,
}

impl AnswerPath {
    /// The path, or `None` when a placeholder has no value or a value is not a plain
    /// segment (letters, digits and `-_.:` only: nothing that could name another path).
    pub fn render(&self, lookup: &dyn Fn(Source, &str) -> Option<String>) -> Option<String> {
        let mut out = String::new();
        for t in &self.segments {
            let seg = t.render(lookup)?;
            let plain = |c: char| c.is_ascii_alphanumeric() || "-_.:".contains(c);
            if seg.is_empty() || !seg.chars().all(plain) {
                return None;
            }
            out.push('/');
            out.push_str(&seg);
        }
        Some(out)
    }
}

/// Validated `[route.index]` (see `RawIndex` for each field's meaning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexRule {
    /// Query parameter and item field naming a partition.
    pub partition: String,
    /// Item fields: id, sort, version.
    pub id: String,
    /// See `id`.
    pub sort: String,
    /// See `id`.
    pub version: String,
    /// Body fields (and page/size query parameters).
    pub items: String,
    /// See `items`.
    pub page: String,
    /// See `items`.
    pub size: String,
    /// See `items`.
    pub total: String,
    /// Page size when none is given.
    pub default_size: usize,
    /// Largest page size the MES accepts.
    pub max_size: usize,
    /// Partitions kept, hottest first.
    pub preload: Vec<String>,
    /// Most entities held.
    pub max_entities: usize,
    /// Pause between two preload page requests.
    pub preload_pause: Duration,
    /// Partitions preloaded at once.
    pub preload_concurrency: usize,
    /// Period of the audit against the MES; zero: off.
    pub audit: Duration,
    /// The MES path of one entity, with `{id}`; `None`: the list path + `/{id}`.
    pub detail: Option<String>,
    /// The counts route the index keeps true.
    pub counts: Option<String>,
}

impl InvalidateRule {
    /// Whether an answer with `status` counts as a successful write.
    pub fn applies_to(&self, status: StatusCode) -> bool {
        if self.statuses.is_empty() {
            status.is_success()
        } else {
            self.statuses.contains(&status)
        }
    }
}

pub(super) fn describe_route(r: &Route) -> String {
    let methods: Vec<&str> = r.methods.iter().map(Method::as_str).collect();
    let head = format!(
        "  {:<18} {:<10} {:<30}",
        r.name,
        methods.join(","),
        r.path.as_str()
    );
    if let Some(c) = &r.cache {
        let index = match &r.index {
            Some(ix) => format!(" index preload=[{}]", ix.preload.join(",")),
            None => String::new(),
        };
        return format!("{head} cache {}{index}\n", describe_cache(c));
    }
    if let Some(c) = &r.compute {
        let key: Vec<String> = c.key.iter().map(|p| p.join(".")).collect();
        return format!(
            "{head} compute key=[{}] version={:?} ttl={:?} lease={:?}\n",
            key.join(","),
            c.version,
            c.ttl,
            c.lease
        );
    }
    match &r.invalidate {
        Some(i) => format!(
            "{head} forward, invalidate families=[{}] entity={} fallback=[{}]{}\n",
            join_templates(&i.families),
            i.entity.as_ref().map_or("-", Template::as_str),
            i.fallback.join(","),
            i.index
                .as_ref()
                .map_or(String::new(), |n| format!(" index={n}")),
        ),
        None => format!("{head} forward\n"),
    }
}

fn join_templates(t: &[Template]) -> String {
    t.iter().map(Template::as_str).collect::<Vec<_>>().join(",")
}

fn describe_cache(c: &CachePolicy) -> String {
    let query: Vec<String> = c
        .query
        .iter()
        .map(|q| match &q.default {
            Some(d) => format!("{}={d}", q.name),
            None => q.name.clone(),
        })
        .collect();
    // Printed as the config spells them (`5s`, `bypass`), so they can be copied back.
    let d = humantime::format_duration;
    format!(
        "l1={} l2={} stale_if_error={} query=[{}] unknown={} families=[{}] members={} credentials={}",
        d(c.ttl_l1),
        d(c.ttl_l2),
        d(c.stale_if_error),
        query.join(","),
        c.unknown_query.as_str(),
        join_templates(&c.families),
        c.members.as_ref().map_or("-", |m| m.entity.as_str()),
        c.credentials.as_str(),
    )
}

impl UnknownQuery {
    /// The config's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bypass => "bypass",
            Self::Strip => "strip",
        }
    }
}

impl CredentialPolicy {
    /// The config's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bypass => "bypass",
            Self::PerCredential => "per_credential",
        }
    }
}
