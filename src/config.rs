//! The config file: raw TOML structs, validation with field paths, the typed runtime config.
//!
//! It owns every default and every rejection; it does not open sockets or talk to Redis.
//! The doc comments on the raw structs are the config reference (README links here).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, StatusCode, Uri};
use serde::Deserialize;

use crate::family::{Source, Template};
use crate::route::{PathTemplate, Route, RouteTable};

/// Why a config was rejected. Every variant names where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The TOML did not parse, or a field was unknown or of the wrong type.
    #[error("{path}: {message}")]
    Syntax {
        /// Field path (`route[2].cache.ttl_l1`), or `.` for the document.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// The TOML parsed but a value or a combination of values is wrong.
    #[error("{path}: {message}")]
    Invalid {
        /// Field path (`route[2].cache.ttl_l1`).
        path: String,
        /// What was wrong and what to do instead.
        message: String,
    },
}

fn invalid(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.into(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------------------
// Raw structs: what the file may say.
// ---------------------------------------------------------------------------------------

/// The whole config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Address the proxy listens on. Default `127.0.0.1:8080`. Env: `MESGATE_LISTEN`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Base URL of the MES, `http://host:port` (no path). Env: `MESGATE_UPSTREAM`.
    pub upstream: String,
    /// The admin listener (health now; metrics and purge later).
    #[serde(default)]
    pub admin: RawAdmin,
    /// The shared tier. Absent (and no `MESGATE_REDIS_URL`): the gateway runs L1 only.
    #[serde(default)]
    pub redis: Option<RawRedis>,
    /// The in-process tier.
    #[serde(default)]
    pub l1: RawL1,
    /// Timeouts towards clients and the MES.
    #[serde(default)]
    pub timeouts: RawTimeouts,
    /// Size limits on what clients send.
    #[serde(default)]
    pub limits: RawLimits,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Route rules, `[[route]]`. A request no rule matches is forwarded untouched.
    #[serde(default, rename = "route")]
    pub routes: Vec<RawRoute>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

/// `[admin]`: a separate listener so health and purge never share a port with clients.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Address; default `127.0.0.1:9901`; `""` turns the admin listener off.
    /// Env: `MESGATE_ADMIN_LISTEN`.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// Bearer token for admin actions (purge). Env `MESGATE_ADMIN_TOKEN` wins.
    #[serde(default)]
    pub token: Option<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            token: None,
        }
    }
}

fn default_admin_listen() -> String {
    "127.0.0.1:9901".into()
}

/// `[redis]`: the shared tier. Short timeouts on purpose: a slow Redis must cost little.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// `redis://host:port/db`. Env: `MESGATE_REDIS_URL`.
    pub url: String,
    /// Prefix of every key mesgate writes, so several deployments can share a Redis.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Longest wait for one Redis operation before it counts as failed. Default `50ms`.
    #[serde(default = "default_op_timeout")]
    pub op_timeout: String,
    /// Longest wait for a (re)connection. Default `500ms`.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: String,
    /// Consecutive failures that open the circuit breaker (Redis is then skipped). Default 3.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long the breaker stays open before one probe is let through. Default `2s`.
    #[serde(default = "default_breaker_cooldown")]
    pub breaker_cooldown: String,
}

fn default_prefix() -> String {
    "mesgate".into()
}
fn default_op_timeout() -> String {
    "50ms".into()
}
fn default_connect_timeout() -> String {
    "500ms".into()
}
fn default_breaker_failures() -> u32 {
    3
}
fn default_breaker_cooldown() -> String {
    "2s".into()
}

/// `[l1]`: the in-process tier.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawL1 {
    /// Bound in bytes (bodies plus headers), e.g. `"256MiB"` or `268435456`. Default 256 MiB.
    #[serde(default = "default_l1_bytes")]
    pub max_bytes: RawSize,
}

impl Default for RawL1 {
    fn default() -> Self {
        Self {
            max_bytes: default_l1_bytes(),
        }
    }
}

fn default_l1_bytes() -> RawSize {
    RawSize::Text("256MiB".into())
}

/// `[timeouts]`: all durations are humantime strings (`"250ms"`, `"10s"`, `"1m"`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// TCP connect to the MES. Default `1s`.
    #[serde(default = "default_connect")]
    pub connect: String,
    /// From request sent to response headers received. Default `10s`.
    #[serde(default = "default_response_header")]
    pub response_header: String,
    /// Whole exchange (headers and body) of a fetch for the cache. Default `30s`.
    /// Pass-through streams are bounded by `response_header` only, so long downloads pass.
    #[serde(default = "default_total")]
    pub total: String,
    /// A client must send its request headers within this. Default `10s`.
    #[serde(default = "default_client_header")]
    pub client_header: String,
    /// Idle pooled connections to the MES are closed after this. Default `90s`.
    #[serde(default = "default_pool_idle")]
    pub pool_idle: String,
    /// On SIGTERM, how long open requests (and their invalidations) get to finish. Default `30s`.
    #[serde(default = "default_drain")]
    pub drain: String,
}

fn default_drain() -> String {
    "30s".into()
}

impl Default for RawTimeouts {
    fn default() -> Self {
        Self {
            connect: default_connect(),
            response_header: default_response_header(),
            total: default_total(),
            client_header: default_client_header(),
            pool_idle: default_pool_idle(),
            drain: default_drain(),
        }
    }
}

fn default_connect() -> String {
    "1s".into()
}
fn default_response_header() -> String {
    "10s".into()
}
fn default_total() -> String {
    "30s".into()
}
fn default_client_header() -> String {
    "10s".into()
}
fn default_pool_idle() -> String {
    "90s".into()
}

/// `[limits]`: what a client may send before it gets a 431 or the connection closes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Largest request head (request line plus headers). Default `64KiB`; at least 8 KiB.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: RawSize,
    /// Most request headers. Default 100.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
        }
    }
}

fn default_max_header_bytes() -> RawSize {
    RawSize::Text("64KiB".into())
}
fn default_max_headers() -> usize {
    100
}

/// `[log]`: how mesgate logs. `RUST_LOG`, when set, wins over `level`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `"human"` (default) or `"json"` (one object per line, for log shippers).
    #[serde(default)]
    pub format: LogFormat,
    /// Level filter in `RUST_LOG` syntax. Default `"info"`.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// One `mesgate::access` line per request. Default `false`: at tens of thousands of
    /// cache hits per second an access log costs more than the hit.
    #[serde(default)]
    pub access: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            level: default_log_level(),
            access: false,
        }
    }
}

fn default_log_level() -> String {
    "info".into()
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Readable text.
    #[default]
    Human,
    /// JSON objects.
    Json,
}

/// A byte size: an integer, or a string with a unit (`B`, `KB`, `KiB`, `MB`, `MiB`, `GB`, `GiB`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    /// Plain bytes.
    Bytes(u64),
    /// With a unit.
    Text(String),
}

/// `[[route]]`: one rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Name used in logs and metric labels: lowercase letters, digits, `-` and `_`.
    pub name: String,
    /// Methods the rule applies to. Default `["GET", "HEAD"]`.
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// Path template: literal segments and whole-segment parameters, `/api/orders/{id}`.
    pub path: String,
    /// How to cache reads. Absent: matching requests are forwarded untouched.
    #[serde(default)]
    pub cache: Option<RawCache>,
    /// What a successful write on this route makes wrong. Absent: nothing is invalidated.
    #[serde(default)]
    pub invalidate: Option<RawInvalidate>,
    /// Wait for the MES's response headers on this route instead of
    /// `timeouts.response_header` (e.g. `"30m"` for the price calculation).
    #[serde(default)]
    pub response_timeout: Option<String>,
}

/// `[route.cache.members]`: how to read the entities out of a cached body, so that a
/// later write knows which families an entity was seen in (its previous status).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMembers {
    /// Dotted path to the array of members (`items`); `""` means the body is one member.
    #[serde(default)]
    pub items: String,
    /// The entity a member is, from its fields: `order:{item.id}`.
    pub entity: String,
    /// The families a member shows it belongs to: `["status:{item.status}"]`.
    #[serde(default)]
    pub member_of: Vec<String>,
}

/// `[route.invalidate]`: the families a successful write makes wrong.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInvalidate {
    /// Family templates over `{path.x}`, `{request.x}` (JSON body sent) and `{response.x}`
    /// (JSON answer), e.g. `["status:{request.status}", "order:{path.id}", "counts"]`.
    #[serde(default)]
    pub families: Vec<String>,
    /// The entity written, e.g. `order:{path.id}`: the families it is known to belong to
    /// (from cached members) are invalidated too, which is how the previous status is found.
    #[serde(default)]
    pub entity: Option<String>,
    /// Groups invalidated whole when the entity's families are not known (`["status"]`).
    #[serde(default)]
    pub fallback: Vec<String>,
    /// Answer statuses that count as success. Default: any 2xx.
    #[serde(default)]
    pub statuses: Vec<u16>,
    /// Largest request or answer body buffered to read placeholders from. Default `1MiB`.
    #[serde(default = "default_max_body")]
    pub max_body: RawSize,
    /// How long a successful write may wait, before it is answered, for this instance's
    /// cached entries it makes wrong to be fetched again, so that they are replaced
    /// instead of dropped and no read has to wait for the MES. `"0s"` (the default): off.
    #[serde(default)]
    pub refresh: Option<String>,
}

fn default_methods() -> Vec<String> {
    vec!["GET".into(), "HEAD".into()]
}

/// `[route.cache]`: the caching policy of a read route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// Query parameters that form the key, each `name` or `name=default`. The key is
    /// normalized: sorted, defaults applied, so `?status=X` and `?page=1&status=X` share it.
    #[serde(default)]
    pub query: Vec<String>,
    /// What to do with a parameter not in `query`: `"bypass"` the cache (default) or
    /// `"strip"` it from both the key and the request sent to the MES.
    #[serde(default)]
    pub unknown_query: UnknownQuery,
    /// Request headers whose values vary the key (e.g. `accept-language`).
    #[serde(default)]
    pub vary: Vec<String>,
    /// Freshness in the in-process tier. Default `5s`; `"0s"` skips L1 for this route.
    #[serde(default = "default_ttl_l1")]
    pub ttl_l1: String,
    /// Freshness in Redis. Default `60s`; `"0s"` skips L2 for this route.
    #[serde(default = "default_ttl_l2")]
    pub ttl_l2: String,
    /// How long past freshness an entry may still be served, marked stale, when the MES
    /// fails (connection error, timeout or 5xx). Default `"0s"` (never).
    #[serde(default = "default_stale_if_error")]
    pub stale_if_error: String,
    /// Largest body worth caching; larger answers are forwarded, not stored. Default `1MiB`.
    #[serde(default = "default_max_body")]
    pub max_body: RawSize,
    /// Requests carrying `Authorization` or `Cookie`: `"bypass"` the cache (default), or
    /// `"per_credential"`: cache them under a key that includes a SHA-256 of the credential.
    #[serde(default)]
    pub credentials: CredentialPolicy,
    /// Response statuses that may be stored. Default `[200]`.
    #[serde(default = "default_statuses")]
    pub statuses: Vec<u16>,
    /// Families an entry belongs to, over `{path.x}` and `{query.x|default}`:
    /// `["status:{query.status|all}"]`. A write that names one invalidates the entry.
    #[serde(default)]
    pub families: Vec<String>,
    /// How to read member entities out of the body (for the previous-status lookup).
    #[serde(default)]
    pub members: Option<RawMembers>,
}

fn default_ttl_l1() -> String {
    "5s".into()
}
fn default_ttl_l2() -> String {
    "60s".into()
}
fn default_stale_if_error() -> String {
    "0s".into()
}
fn default_max_body() -> RawSize {
    RawSize::Text("1MiB".into())
}
fn default_statuses() -> Vec<u16> {
    vec![200]
}

/// What a cached route does with a query parameter outside its allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownQuery {
    /// Forward the request untouched and do not cache it (safe default: never drop
    /// something that might change the answer).
    #[default]
    Bypass,
    /// Remove the parameter from the key and from the request sent upstream.
    Strip,
}

/// How a cached route treats requests with `Authorization` or `Cookie`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialPolicy {
    /// Never share: forward untouched (Varnish's builtin rule).
    #[default]
    Bypass,
    /// Cache per credential: the key includes a hash of `Authorization` and `Cookie`.
    PerCredential,
}

// ---------------------------------------------------------------------------------------
// Runtime config: what the gateway runs with.
// ---------------------------------------------------------------------------------------

/// The validated runtime config.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the proxy listens.
    pub listen: SocketAddr,
    /// The MES.
    pub upstream: UpstreamTarget,
    /// Admin listener address, `None` when turned off.
    pub admin_listen: Option<SocketAddr>,
    /// Admin bearer token.
    pub admin_token: Option<String>,
    /// The shared tier, `None` for L1 only.
    pub redis: Option<RedisConfig>,
    /// L1 bound in bytes.
    pub l1_max_bytes: u64,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Client request limits.
    pub limits: Limits,
    /// The compiled route table.
    pub routes: Arc<RouteTable>,
    /// Logging.
    pub log: LogConfig,
}

/// The MES as a base URI.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    /// `http`.
    pub scheme: http::uri::Scheme,
    /// `host:port`.
    pub authority: http::uri::Authority,
}

/// Validated `[redis]`.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Connection URL.
    pub url: String,
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
}

/// Validated `[timeouts]`.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect to the MES.
    pub connect: Duration,
    /// Until response headers.
    pub response_header: Duration,
    /// Whole fetch for the cache.
    pub total: Duration,
    /// Client header read.
    pub client_header: Duration,
    /// Pool idle.
    pub pool_idle: Duration,
    /// Shutdown drain deadline.
    pub drain: Duration,
}

/// Validated `[limits]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Request head bytes.
    pub max_header_bytes: usize,
    /// Request header count.
    pub max_headers: usize,
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

/// Values that the environment (or CLI) puts over the file, for containers.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `MESGATE_LISTEN`.
    pub listen: Option<String>,
    /// `MESGATE_UPSTREAM`.
    pub upstream: Option<String>,
    /// `MESGATE_REDIS_URL`; `off` turns the shared tier off whatever the file says.
    pub redis_url: Option<String>,
    /// `MESGATE_ADMIN_LISTEN`.
    pub admin_listen: Option<String>,
    /// `MESGATE_ADMIN_TOKEN`.
    pub admin_token: Option<String>,
}

impl Overrides {
    /// Reads the `MESGATE_*` variables; empty values count as unset.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self {
            listen: var("MESGATE_LISTEN"),
            upstream: var("MESGATE_UPSTREAM"),
            redis_url: var("MESGATE_REDIS_URL"),
            admin_listen: var("MESGATE_ADMIN_LISTEN"),
            admin_token: var("MESGATE_ADMIN_TOKEN"),
        }
    }

    fn apply(self, raw: &mut RawConfig) {
        if let Some(v) = self.listen {
            raw.listen = v;
        }
        if let Some(v) = self.upstream {
            raw.upstream = v;
        }
        if let Some(v) = self.admin_listen {
            raw.admin.listen = v;
        }
        if let Some(v) = self.admin_token {
            raw.admin.token = Some(v);
        }
        if self.redis_url.as_deref() == Some("off") {
            raw.redis = None;
        } else if let Some(url) = self.redis_url {
            match &mut raw.redis {
                Some(r) => r.url = url,
                None => raw.redis = Some(RawRedis::with_url(url)),
            }
        }
    }
}

impl RawRedis {
    fn with_url(url: String) -> Self {
        Self {
            url,
            prefix: default_prefix(),
            op_timeout: default_op_timeout(),
            connect_timeout: default_connect_timeout(),
            breaker_failures: default_breaker_failures(),
            breaker_cooldown: default_breaker_cooldown(),
        }
    }
}

impl Config {
    /// Reads, parses and validates a file, with `overrides` applied before validation.
    pub fn load(path: &Path, overrides: Overrides) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_str_with(&text, overrides)
    }

    /// Parses and validates TOML text, with `overrides` applied before validation.
    pub fn from_str_with(text: &str, overrides: Overrides) -> Result<Self, ConfigError> {
        let mut raw = parse_raw(text)?;
        overrides.apply(&mut raw);
        raw.validate()
    }

    /// A human-readable summary of the compiled route table, for `check-config`.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "listen {}  upstream {}://{}  redis {}  l1 {} bytes\n",
            self.listen,
            self.upstream.scheme,
            self.upstream.authority,
            self.redis.as_ref().map_or("off", |r| r.url.as_str()),
            self.l1_max_bytes,
        );
        for r in self.routes.routes() {
            out.push_str(&describe_route(r));
        }
        out
    }
}

impl std::str::FromStr for Config {
    type Err = ConfigError;

    /// Parses and validates TOML text without environment overrides.
    fn from_str(text: &str) -> Result<Self, ConfigError> {
        Self::from_str_with(text, Overrides::default())
    }
}

fn describe_route(r: &Route) -> String {
    let methods: Vec<&str> = r.methods.iter().map(Method::as_str).collect();
    let head = format!(
        "  {:<18} {:<10} {:<30}",
        r.name,
        methods.join(","),
        r.path.as_str()
    );
    if let Some(c) = &r.cache {
        return format!("{head} cache {}\n", describe_cache(c));
    }
    match &r.invalidate {
        Some(i) => format!(
            "{head} forward, invalidate families=[{}] entity={} fallback=[{}]\n",
            join_templates(&i.families),
            i.entity.as_ref().map_or("-", Template::as_str),
            i.fallback.join(","),
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
    format!(
        "l1={:?} l2={:?} stale_if_error={:?} query=[{}] unknown={:?} families=[{}] members={} credentials={:?}",
        c.ttl_l1,
        c.ttl_l2,
        c.stale_if_error,
        query.join(","),
        c.unknown_query,
        join_templates(&c.families),
        c.members.as_ref().map_or("-", |m| m.entity.as_str()),
        c.credentials,
    )
}

fn parse_raw(text: &str) -> Result<RawConfig, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Syntax {
        path: ".".into(),
        message: e.to_string(),
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        ConfigError::Syntax {
            path,
            message: first_line(&e.into_inner().to_string()),
        }
    })
}

/// toml's messages carry a source excerpt over several lines; the path already says where.
fn first_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("TOML parse error") && !l.contains('|'))
        .unwrap_or(message)
        .to_owned()
}

// ---------------------------------------------------------------------------------------
// Validation.
// ---------------------------------------------------------------------------------------

/// Parses a humantime duration, naming the field on error.
pub fn parse_duration(path: &str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value.trim()).map_err(|e| {
        invalid(
            path,
            format!("bad duration {value:?}: {e} (try \"250ms\", \"5s\")"),
        )
    })
}

/// Parses a byte size, naming the field on error.
pub fn parse_size(path: &str, value: &RawSize) -> Result<u64, ConfigError> {
    let text = match value {
        RawSize::Bytes(n) => return Ok(*n),
        RawSize::Text(t) => t.trim(),
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        _ => {
            return Err(invalid(
                path,
                format!("bad size {text:?}: unknown unit (try \"1MiB\")"),
            ));
        }
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| invalid(path, format!("bad size {text:?}: not a number")))
}

fn parse_addr(path: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        invalid(
            path,
            format!("bad address {value:?} (want host-ip:port, e.g. 127.0.0.1:8080)"),
        )
    })
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        let admin_listen = match self.admin.listen.trim() {
            "" => None,
            a => Some(parse_addr("admin.listen", a)?),
        };
        Ok(Config {
            listen: parse_addr("listen", &self.listen)?,
            upstream: parse_upstream(&self.upstream)?,
            admin_listen,
            admin_token: self.admin.token.filter(|t| !t.is_empty()),
            redis: self.redis.map(RawRedis::validate).transpose()?,
            l1_max_bytes: validate_l1(&self.l1)?,
            timeouts: self.timeouts.validate()?,
            limits: self.limits.validate()?,
            routes: Arc::new(validate_routes(self.routes)?),
            log: validate_log(self.log)?,
        })
    }
}

fn validate_log(log: LogConfig) -> Result<LogConfig, ConfigError> {
    tracing_subscriber::EnvFilter::try_new(&log.level)
        .map_err(|e| invalid("log.level", format!("{:?}: {e}", log.level)))?;
    Ok(log)
}

fn validate_l1(l1: &RawL1) -> Result<u64, ConfigError> {
    let n = parse_size("l1.max_bytes", &l1.max_bytes)?;
    if n == 0 {
        return Err(invalid("l1.max_bytes", "must be more than 0"));
    }
    Ok(n)
}

fn parse_upstream(value: &str) -> Result<UpstreamTarget, ConfigError> {
    let uri: Uri = value
        .parse()
        .map_err(|e| invalid("upstream", format!("bad URL {value:?}: {e}")))?;
    let scheme = uri.scheme().cloned();
    if scheme.as_ref() != Some(&http::uri::Scheme::HTTP) {
        return Err(invalid(
            "upstream",
            format!(
                "{value:?}: only http:// upstreams are supported (TLS to the MES is not built yet)"
            ),
        ));
    }
    let Some(authority) = uri.authority().cloned() else {
        return Err(invalid("upstream", format!("{value:?}: needs a host")));
    };
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(invalid(
            "upstream",
            format!(
                "{value:?}: must be scheme://host:port only; paths are forwarded as the client sent them"
            ),
        ));
    }
    Ok(UpstreamTarget {
        scheme: http::uri::Scheme::HTTP,
        authority,
    })
}

impl RawRedis {
    fn validate(self) -> Result<RedisConfig, ConfigError> {
        redis::Client::open(self.url.as_str())
            .map_err(|e| invalid("redis.url", format!("bad Redis URL {:?}: {e}", self.url)))?;
        if self.prefix.is_empty() || self.prefix.contains(['{', '}', ' ']) {
            return Err(invalid(
                "redis.prefix",
                "must be non-empty, without spaces or braces",
            ));
        }
        if self.breaker_failures == 0 {
            return Err(invalid("redis.breaker_failures", "must be at least 1"));
        }
        let op_timeout = parse_duration("redis.op_timeout", &self.op_timeout)?;
        if op_timeout.is_zero() {
            return Err(invalid("redis.op_timeout", "must be more than 0"));
        }
        Ok(RedisConfig {
            op_timeout,
            connect_timeout: parse_duration("redis.connect_timeout", &self.connect_timeout)?,
            breaker_cooldown: parse_duration("redis.breaker_cooldown", &self.breaker_cooldown)?,
            breaker_failures: self.breaker_failures,
            prefix: self.prefix,
            url: self.url,
        })
    }
}

impl RawTimeouts {
    fn validate(self) -> Result<Timeouts, ConfigError> {
        let nonzero = |path: &str, v: &str| {
            let d = parse_duration(path, v)?;
            if d.is_zero() {
                return Err(invalid(path, "must be more than 0"));
            }
            Ok(d)
        };
        let t = Timeouts {
            connect: nonzero("timeouts.connect", &self.connect)?,
            response_header: nonzero("timeouts.response_header", &self.response_header)?,
            total: nonzero("timeouts.total", &self.total)?,
            client_header: nonzero("timeouts.client_header", &self.client_header)?,
            pool_idle: nonzero("timeouts.pool_idle", &self.pool_idle)?,
            drain: parse_duration("timeouts.drain", &self.drain)?,
        };
        if t.total < t.response_header {
            return Err(invalid(
                "timeouts.total",
                format!(
                    "{:?} is shorter than timeouts.response_header ({:?})",
                    t.total, t.response_header
                ),
            ));
        }
        Ok(t)
    }
}

impl RawLimits {
    fn validate(self) -> Result<Limits, ConfigError> {
        let bytes = parse_size("limits.max_header_bytes", &self.max_header_bytes)?;
        if !(8192..=1 << 20).contains(&bytes) {
            return Err(invalid(
                "limits.max_header_bytes",
                "must be between 8KiB and 1MiB",
            ));
        }
        if self.max_headers == 0 {
            return Err(invalid("limits.max_headers", "must be at least 1"));
        }
        Ok(Limits {
            max_header_bytes: bytes as usize,
            max_headers: self.max_headers,
        })
    }
}

fn validate_routes(raw: Vec<RawRoute>) -> Result<RouteTable, ConfigError> {
    let mut routes: Vec<Route> = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let at = format!("route[{i}]");
        let route = r.validate(&at)?;
        check_clashes(&at, &route, &routes)?;
        routes.push(route);
    }
    check_families_used(&routes)?;
    Ok(RouteTable::new(routes))
}

fn check_clashes(at: &str, route: &Route, earlier: &[Route]) -> Result<(), ConfigError> {
    for (j, other) in earlier.iter().enumerate() {
        if other.name == route.name {
            return Err(invalid(
                format!("{at}.name"),
                format!("{:?} is already the name of route[{j}]", route.name),
            ));
        }
        let same_path = other.path.as_str() == route.path.as_str();
        if let Some(m) = route
            .methods
            .iter()
            .find(|m| same_path && other.methods.contains(m))
        {
            return Err(invalid(
                format!("{at}.path"),
                format!(
                    "{m} {} is already handled by route[{j}] ({})",
                    route.path.as_str(),
                    other.name
                ),
            ));
        }
    }
    Ok(())
}

/// Methods a cached route may serve: reads only.
const READ_METHODS: [Method; 2] = [Method::GET, Method::HEAD];

impl RawRoute {
    fn validate(self, at: &str) -> Result<Route, ConfigError> {
        let valid_name = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !valid_name {
            return Err(invalid(
                format!("{at}.name"),
                format!(
                    "{:?}: use lowercase letters, digits, '-' and '_'",
                    self.name
                ),
            ));
        }
        let path = PathTemplate::parse(&self.path)
            .map_err(|e| invalid(format!("{at}.path"), format!("{:?}: {e}", self.path)))?;
        let methods = validate_methods(at, &self.methods)?;
        if self.cache.is_some() && self.invalidate.is_some() {
            return Err(invalid(
                format!("{at}.invalidate"),
                "a route either caches reads or invalidates on writes, not both",
            ));
        }
        let invalidate = match self.invalidate {
            Some(i) => Some(Arc::new(i.validate(&format!("{at}.invalidate"), &path)?)),
            None => None,
        };
        let cache = match self.cache {
            Some(c) => {
                if let Some(m) = methods.iter().find(|m| !READ_METHODS.contains(m)) {
                    return Err(invalid(
                        format!("{at}.methods"),
                        format!(
                            "a cached route serves only GET and HEAD; give {m} a route of its own"
                        ),
                    ));
                }
                Some(Arc::new(c.validate(&format!("{at}.cache"), &path)?))
            }
            None => None,
        };
        let response_timeout = self
            .response_timeout
            .as_deref()
            .map(|t| parse_duration(&format!("{at}.response_timeout"), t))
            .transpose()?;
        Ok(Route {
            name: Arc::new(self.name),
            methods,
            path,
            cache,
            invalidate,
            response_timeout,
        })
    }
}

fn validate_methods(at: &str, raw: &[String]) -> Result<Vec<Method>, ConfigError> {
    if raw.is_empty() {
        return Err(invalid(
            format!("{at}.methods"),
            "must list at least one method",
        ));
    }
    let mut out: Vec<Method> = Vec::new();
    for (k, m) in raw.iter().enumerate() {
        let path = format!("{at}.methods[{k}]");
        let upper = m.to_ascii_uppercase();
        let method = Method::from_bytes(upper.as_bytes())
            .map_err(|_| invalid(&path, format!("{m:?} is not an HTTP method")))?;
        if out.contains(&method) {
            return Err(invalid(&path, format!("{method} is listed twice")));
        }
        out.push(method);
    }
    Ok(out)
}

/// Statuses RFC 9110 calls cacheable by default, minus 206 (we do not cache ranges).
const STORABLE_STATUSES: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

impl RawCache {
    fn validate(self, at: &str, path: &PathTemplate) -> Result<CachePolicy, ConfigError> {
        let ttl_l1 = parse_duration(&format!("{at}.ttl_l1"), &self.ttl_l1)?;
        let ttl_l2 = parse_duration(&format!("{at}.ttl_l2"), &self.ttl_l2)?;
        if ttl_l1.is_zero() && ttl_l2.is_zero() {
            return Err(invalid(
                format!("{at}.ttl_l1"),
                "ttl_l1 and ttl_l2 are both 0: nothing would be cached; remove [cache] to forward",
            ));
        }
        let max_body = parse_size(&format!("{at}.max_body"), &self.max_body)?;
        if max_body == 0 || max_body > 64 << 20 {
            return Err(invalid(
                format!("{at}.max_body"),
                "must be between 1 byte and 64MiB",
            ));
        }
        let vary = validate_vary(at, &self.vary, self.credentials)?;
        let query = validate_query(at, &self.query)?;
        let families = validate_entry_families(at, &self.families, path, &query)?;
        let members = self
            .members
            .map(|m| m.validate(&format!("{at}.members")))
            .transpose()?;
        Ok(CachePolicy {
            families,
            members,
            query,
            unknown_query: self.unknown_query,
            vary,
            ttl_l1,
            ttl_l2,
            stale_if_error: parse_duration(&format!("{at}.stale_if_error"), &self.stale_if_error)?,
            max_body: max_body as usize,
            credentials: self.credentials,
            statuses: validate_statuses(at, &self.statuses)?,
        })
    }
}

fn validate_query(at: &str, raw: &[String]) -> Result<Vec<QueryParam>, ConfigError> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (k, item) in raw.iter().enumerate() {
        let path = format!("{at}.query[{k}]");
        let (name, default) = match item.split_once('=') {
            Some((n, d)) => (n.trim(), Some(d.trim().to_owned())),
            None => (item.trim(), None),
        };
        if name.is_empty() || name.contains(['&', '#', ' ']) {
            return Err(invalid(
                &path,
                format!("{item:?}: want \"name\" or \"name=default\""),
            ));
        }
        if !seen.insert(name.to_owned()) {
            return Err(invalid(
                &path,
                format!("parameter {name:?} is listed twice"),
            ));
        }
        out.push(QueryParam {
            name: name.to_owned(),
            default,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn validate_vary(
    at: &str,
    raw: &[String],
    credentials: CredentialPolicy,
) -> Result<Vec<HeaderName>, ConfigError> {
    let mut out: Vec<HeaderName> = Vec::with_capacity(raw.len());
    for (k, h) in raw.iter().enumerate() {
        let path = format!("{at}.vary[{k}]");
        let name = HeaderName::from_bytes(h.trim().to_ascii_lowercase().as_bytes())
            .map_err(|_| invalid(&path, format!("{h:?} is not a header name")))?;
        if name == http::header::AUTHORIZATION || name == http::header::COOKIE {
            let hint = match credentials {
                CredentialPolicy::Bypass => "set credentials = \"per_credential\" instead",
                CredentialPolicy::PerCredential => {
                    "credentials = \"per_credential\" already keys on it"
                }
            };
            return Err(invalid(
                &path,
                format!("{name} cannot be a vary header: {hint}"),
            ));
        }
        if out.contains(&name) {
            return Err(invalid(&path, format!("{name} is listed twice")));
        }
        out.push(name);
    }
    out.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Ok(out)
}

fn validate_statuses(at: &str, raw: &[u16]) -> Result<Vec<StatusCode>, ConfigError> {
    if raw.is_empty() {
        return Err(invalid(
            format!("{at}.statuses"),
            "must list at least one status",
        ));
    }
    raw.iter()
        .enumerate()
        .map(|(k, &s)| {
            if !STORABLE_STATUSES.contains(&s) {
                return Err(invalid(
                    format!("{at}.statuses[{k}]"),
                    format!("{s} is not cacheable (allowed: {STORABLE_STATUSES:?})"),
                ));
            }
            StatusCode::from_u16(s)
                .map_err(|_| invalid(format!("{at}.statuses[{k}]"), "bad status"))
        })
        .collect()
}

fn template(path: &str, text: &str, allowed: &[Source]) -> Result<Template, ConfigError> {
    Template::parse(text, allowed).map_err(|e| invalid(path, format!("{text:?}: {e}")))
}

fn validate_entry_families(
    at: &str,
    raw: &[String],
    path: &PathTemplate,
    query: &[QueryParam],
) -> Result<Vec<Template>, ConfigError> {
    let mut out = Vec::with_capacity(raw.len());
    for (k, text) in raw.iter().enumerate() {
        let here = format!("{at}.families[{k}]");
        let t = template(&here, text, &[Source::Path, Source::Query])?;
        for (source, field, default) in t.placeholders() {
            check_entry_placeholder(&here, source, field, default, path, query)?;
        }
        out.push(t);
    }
    Ok(out)
}

fn check_entry_placeholder(
    here: &str,
    source: Source,
    field: &str,
    default: Option<&str>,
    path: &PathTemplate,
    query: &[QueryParam],
) -> Result<(), ConfigError> {
    match source {
        Source::Path if !path.params().any(|p| p == field) => Err(invalid(
            here,
            format!("unknown placeholder {{path.{field}}}: the path has no {{{field}}}"),
        )),
        Source::Query => match query.iter().find(|q| q.name == field) {
            None => Err(invalid(
                here,
                format!("unknown placeholder {{query.{field}}}: not in this route's query list"),
            )),
            Some(q) if q.default.is_none() && default.is_none() => Err(invalid(
                here,
                format!(
                    "{{query.{field}}} may be absent: give it a default, e.g. {{query.{field}|all}}"
                ),
            )),
            Some(_) => Ok(()),
        },
        _ => Ok(()),
    }
}

impl RawMembers {
    fn validate(self, at: &str) -> Result<Members, ConfigError> {
        let entity = template(&format!("{at}.entity"), &self.entity, &[Source::Item])?;
        let member_of = self
            .member_of
            .iter()
            .enumerate()
            .map(|(k, t)| template(&format!("{at}.member_of[{k}]"), t, &[Source::Item]))
            .collect::<Result<_, _>>()?;
        Ok(Members {
            items: self.items,
            entity,
            member_of,
        })
    }
}

const WRITE_SOURCES: &[Source] = &[Source::Path, Source::Request, Source::Response];

fn write_template(here: &str, text: &str, path: &PathTemplate) -> Result<Template, ConfigError> {
    let t = template(here, text, WRITE_SOURCES)?;
    for (source, field, _) in t.placeholders() {
        if source == Source::Path && !path.params().any(|p| p == field) {
            return Err(invalid(
                here,
                format!("unknown placeholder {{path.{field}}}"),
            ));
        }
    }
    Ok(t)
}

impl RawInvalidate {
    fn validate(self, at: &str, path: &PathTemplate) -> Result<InvalidateRule, ConfigError> {
        let families = self
            .families
            .iter()
            .enumerate()
            .map(|(k, text)| write_template(&format!("{at}.families[{k}]"), text, path))
            .collect::<Result<Vec<_>, _>>()?;
        let entity = self
            .entity
            .as_deref()
            .map(|text| write_template(&format!("{at}.entity"), text, path))
            .transpose()?;
        if families.is_empty() && entity.is_none() {
            return Err(invalid(
                at,
                "lists no families and no entity: nothing would be invalidated",
            ));
        }
        let statuses = self
            .statuses
            .iter()
            .enumerate()
            .map(|(k, &c)| {
                StatusCode::from_u16(c).map_err(|_| {
                    invalid(
                        format!("{at}.statuses[{k}]"),
                        format!("{c} is not a status"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(InvalidateRule {
            families,
            entity,
            fallback: self.fallback,
            statuses,
            max_body: parse_size(&format!("{at}.max_body"), &self.max_body)? as usize,
            refresh: match &self.refresh {
                None => Duration::ZERO,
                Some(v) => {
                    let at = format!("{at}.refresh");
                    let d = parse_duration(&at, v)?;
                    if d > Duration::from_secs(10) {
                        return Err(invalid(
                            at,
                            "a write waits this long at most before it is answered: keep it under 10s (e.g. \"250ms\")",
                        ));
                    }
                    d
                }
            },
        })
    }
}

/// A write may only name families (by group) that some cached route's entries belong to,
/// so a typo cannot silently invalidate nothing.
fn check_families_used(routes: &[Route]) -> Result<(), ConfigError> {
    let mut groups: HashSet<String> = HashSet::new();
    let mut entity_groups: HashSet<String> = HashSet::new();
    for c in routes.iter().filter_map(|r| r.cache.as_ref()) {
        groups.extend(c.families.iter().map(Template::group));
        if let Some(m) = &c.members {
            groups.extend(m.member_of.iter().map(Template::group));
            entity_groups.insert(m.entity.group());
        }
    }
    for (i, r) in routes.iter().enumerate() {
        let Some(rule) = &r.invalidate else { continue };
        let at = format!("route[{i}].invalidate");
        for (k, t) in rule.families.iter().enumerate() {
            if !groups.contains(&t.group()) {
                let msg = format!(
                    "{:?}: no cached route has a family in group {:?}",
                    t.as_str(),
                    t.group()
                );
                return Err(invalid(format!("{at}.families[{k}]"), msg));
            }
        }
        for (k, g) in rule.fallback.iter().enumerate() {
            if !groups.contains(g) {
                let msg = format!("no cached route has a family in group {g:?}");
                return Err(invalid(format!("{at}.fallback[{k}]"), msg));
            }
        }
        if let Some(e) = &rule.entity
            && !entity_groups.contains(&e.group())
        {
            let msg = format!(
                "{:?}: no cached route reads members of that kind",
                e.as_str()
            );
            return Err(invalid(format!("{at}.entity"), msg));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
upstream = "http://127.0.0.1:9090"
[[route]]
name = "order-list"
path = "/api/orders"
[route.cache]
query = ["status", "page=1", "size=50"]
"#;

    fn err(text: &str) -> String {
        text.parse::<Config>().unwrap_err().to_string()
    }

    #[test]
    fn refresh_on_write_defaults_off_and_is_bounded() {
        let off = |c: &Config| c.routes.routes()[1].invalidate.as_ref().unwrap().refresh;
        let base = "upstream = \"http://127.0.0.1:9090\"\n[[route]]\nname = \"l\"\npath = \"/o\"\n[route.cache]\nfamilies = [\"s:{query.s|all}\"]\nquery = [\"s\"]\n[[route]]\nname = \"w\"\nmethods = [\"POST\"]\npath = \"/o\"\n[route.invalidate]\nfamilies = [\"s:all\"]\n";
        let c: Config = base.parse().unwrap();
        assert_eq!(off(&c), Duration::ZERO);
        let c: Config = format!("{base}refresh = \"250ms\"\n").parse().unwrap();
        assert_eq!(off(&c), Duration::from_millis(250));
        let e = err(&format!("{base}refresh = \"soon\"\n"));
        assert!(e.contains("route[1].invalidate.refresh"), "{e}");
        let e = err(&format!("{base}refresh = \"1m\"\n"));
        assert!(
            e.contains("route[1].invalidate.refresh") && e.contains("10s"),
            "{e}"
        );
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c: Config = MINIMAL.parse().unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert!(c.redis.is_none());
        let r = &c.routes.routes()[0];
        let p = r.cache.as_ref().unwrap();
        assert_eq!(p.ttl_l1, Duration::from_secs(5));
        assert_eq!(p.max_body, 1 << 20);
        assert_eq!(p.query[0].name, "page");
        assert_eq!(p.query[0].default.as_deref(), Some("1"));
        assert_eq!(r.methods, vec![Method::GET, Method::HEAD]);
    }

    #[test]
    fn unknown_field_names_its_path() {
        let e = err(&MINIMAL.replace("query =", "ttl_l3 = \"1s\"\nquery ="));
        assert!(e.starts_with("route[0].cache.ttl_l3"), "{e}");
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn bad_duration_names_its_path() {
        let e = err(&format!("{MINIMAL}ttl_l1 = \"5 parsecs\"\n"));
        assert!(e.starts_with("route[0].cache.ttl_l1: bad duration"), "{e}");
    }

    #[test]
    fn bad_template_names_its_path() {
        let e = err(&MINIMAL.replace("/api/orders", "/api/{id"));
        assert!(e.starts_with("route[0].path:"), "{e}");
    }

    #[test]
    fn wrong_type_names_its_path() {
        let e = err(&format!("{MINIMAL}statuses = \"200\"\n"));
        assert!(e.starts_with("route[0].cache.statuses"), "{e}");
    }

    #[test]
    fn contradictions_are_rejected() {
        let cases = [
            (
                MINIMAL.replace("path =", "methods = [\"GET\", \"POST\"]\npath ="),
                "route[0].methods",
            ),
            (
                format!("{MINIMAL}ttl_l1 = \"0s\"\nttl_l2 = \"0s\"\n"),
                "route[0].cache.ttl_l1",
            ),
            (
                format!("{MINIMAL}vary = [\"Authorization\"]\n"),
                "route[0].cache.vary[0]",
            ),
            (
                format!("{MINIMAL}statuses = [500]\n"),
                "route[0].cache.statuses[0]",
            ),
            (
                MINIMAL.replace("\"size=50\"", "\"size=50\", \"page\""),
                "route[0].cache.query[3]",
            ),
            (
                format!("{MINIMAL}[timeouts]\ntotal = \"1s\"\n"),
                "timeouts.total",
            ),
        ];
        for (text, path) in cases {
            let e = err(&text);
            assert!(e.starts_with(path), "want {path}, got {e}");
        }
    }

    #[test]
    fn duplicate_routes_are_rejected() {
        let dup = format!("{MINIMAL}[[route]]\nname = \"again\"\npath = \"/api/orders\"\n");
        assert!(err(&dup).starts_with("route[1].path"), "{}", err(&dup));
        let same_name = format!("{MINIMAL}[[route]]\nname = \"order-list\"\npath = \"/x\"\n");
        assert!(err(&same_name).starts_with("route[1].name"));
    }

    #[test]
    fn bad_upstream_and_addresses() {
        assert!(
            err(&MINIMAL.replace("http://127.0.0.1:9090", "https://mes")).starts_with("upstream")
        );
        assert!(
            err(&MINIMAL.replace("http://127.0.0.1:9090", "http://mes/api"))
                .starts_with("upstream")
        );
        assert!(err(&format!("listen = \"nope\"\n{MINIMAL}")).starts_with("listen: bad address"));
        let e = err(&format!("{MINIMAL}[redis]\nurl = \"ftp://x\"\n"));
        assert!(
            e.starts_with("route[0].cache.redis") || e.starts_with("redis.url"),
            "{e}"
        );
    }

    #[test]
    fn sizes_parse_with_units() {
        let s = |t: &str| parse_size("x", &RawSize::Text(t.into()));
        assert_eq!(s("1MiB").unwrap(), 1 << 20);
        assert_eq!(s("2 KB").unwrap(), 2000);
        assert_eq!(s("17").unwrap(), 17);
        assert!(s("1 parsec").is_err());
        assert!(s("MiB").is_err());
    }

    #[test]
    fn overrides_win_over_the_file() {
        let o = Overrides {
            listen: Some("127.0.0.1:1".into()),
            redis_url: Some("redis://127.0.0.1:2".into()),
            ..Overrides::default()
        };
        let c = Config::from_str_with(MINIMAL, o).unwrap();
        assert_eq!(c.listen.port(), 1);
        assert_eq!(c.redis.unwrap().url, "redis://127.0.0.1:2");
        let with_redis = format!("{MINIMAL}[redis]\nurl = \"redis://127.0.0.1:3\"\n");
        let off = Overrides {
            redis_url: Some("off".into()),
            ..Overrides::default()
        };
        assert!(
            Config::from_str_with(&with_redis, off)
                .unwrap()
                .redis
                .is_none()
        );
    }
}
