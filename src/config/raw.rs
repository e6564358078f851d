//! The serde structs of the config file, what the file may say: `deny_unknown_fields`,
//! defaults, and the doc comments that are the config reference (docs/configuration.md
//! points here).
//!
//! It owns the shape of the TOML and every default; it does not check values (that is
//! [`validate`](super::validate)) or hold the typed runtime config
//! ([`runtime`](super::runtime)).

use serde::Deserialize;

pub use super::raw_live::{RawEvents, RawOperations, RawUi};
pub use super::raw_redis::RawRedis;

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
    /// Asynchronous writes (`Prefer: respond-async`) and their records (fields in
    /// `raw_live.rs`).
    #[serde(default)]
    pub operations: RawOperations,
    /// Live updates, `GET /mesgate/events` (fields in `raw_live.rs`).
    #[serde(default)]
    pub events: RawEvents,
    /// The operator page, `/mesgate/ui` (fields in `raw_live.rs`).
    #[serde(default)]
    pub ui: RawUi,
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
    /// A client must send its request headers within this. Default `10s`. It also bounds
    /// a new connection's wait for its first request: one that sends nothing (or too
    /// little) for this long is closed.
    #[serde(default = "default_client_header")]
    pub client_header: String,
    /// A kept-alive connection with no request in progress is closed after this long
    /// without a new one. Default `60s`.
    #[serde(default = "default_client_idle")]
    pub client_idle: String,
    /// Longest pause while a client sends a request body (between two reads that bring
    /// bytes): past it the request is answered `408` and the MES request it fed (a
    /// streamed upload holds an MES connection) is dropped. Default `30s`.
    #[serde(default = "default_client_body")]
    pub client_body: String,
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
            client_idle: default_client_idle(),
            client_body: default_client_body(),
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
fn default_client_idle() -> String {
    "60s".into()
}
fn default_client_body() -> String {
    "30s".into()
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
    /// Most client connections open at once. At the cap, the connection idle the longest
    /// (no request in progress) is closed to make room; when none is idle, the new one
    /// is answered `503` and closed. Absent: derived from the open-file limit
    /// (`RLIMIT_NOFILE`, soft) as `(limit - 64) / 2`, since each client connection may
    /// hold an MES connection too and 64 descriptors are kept for Redis, the listeners
    /// and the runtime (e.g. 96 under `ulimit -n 256`, 4064 under 8192); 512 where the
    /// limit cannot be read.
    #[serde(default)]
    pub max_connections: Option<usize>,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            max_connections: None,
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
    /// A parameter the MES parses takes a type, `{id:u64}` (the only one): families are
    /// named with its canonical spelling (`77` for `077`), and a read that spells it
    /// otherwise bypasses the cache, so one entity never has two cache identities.
    pub path: String,
    /// How to cache reads. Absent: matching requests are forwarded untouched.
    #[serde(default)]
    pub cache: Option<RawCache>,
    /// What a successful write on this route makes wrong. Absent: nothing is invalidated.
    #[serde(default)]
    pub invalidate: Option<RawInvalidate>,
    /// Serve this cached list route from a status index kept true by the writes (needs
    /// `[route.cache]`). Absent: the ordinary read path only.
    #[serde(default)]
    pub index: Option<RawIndex>,
    /// Wait for the MES's response headers on this route instead of
    /// `timeouts.response_header` (e.g. `"30m"` for the price calculation). On a compute
    /// route it also bounds how long a request waits for a computation (its own or one
    /// another request or instance runs).
    #[serde(default)]
    pub response_timeout: Option<String>,
    /// Serve this POST route as a pure computation, at most one per key across instances,
    /// its results kept (see `docs/price-cache.md`). Absent: forwarded untouched.
    #[serde(default)]
    pub compute: Option<RawCompute>,
}

/// `[route.compute]`: a POST whose answer is a pure function of named fields of its JSON
/// body (the price calculation). The rule and its limits: `docs/price-cache.md`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCompute {
    /// The body fields the answer depends on, dotted paths into the JSON object
    /// (`model_hash`, `part.material`). Each must be present and a string, number or
    /// boolean, or the request is forwarded untouched and not cached. At least one.
    pub key: Vec<String>,
    /// Part of every key: change it when the MES's calculator changes, and the results
    /// of the old one are never served again. Default `""`.
    #[serde(default)]
    pub version: String,
    /// How long a result is kept, in both tiers. Default `"24h"`.
    #[serde(default = "default_compute_ttl")]
    pub ttl: String,
    /// The MES statuses whose answers are kept (their bodies must be JSON). Default `[200]`.
    #[serde(default = "default_compute_statuses")]
    pub statuses: Vec<u16>,
    /// How long the lease of one computation lasts in Redis without renewal (it is
    /// renewed every third of it while the MES computes). A dead instance's lease runs
    /// out after it, and a waiter takes over. Default `"15s"`.
    #[serde(default = "default_lease")]
    pub lease: String,
    /// The largest request body (and kept answer) buffered. Default `"64KiB"`.
    #[serde(default = "default_compute_max_body")]
    pub max_body: RawSize,
}

fn default_compute_ttl() -> String {
    "24h".into()
}
fn default_compute_statuses() -> Vec<u16> {
    vec![200]
}
fn default_lease() -> String {
    "15s".into()
}
fn default_compute_max_body() -> RawSize {
    RawSize::Text("64KiB".into())
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
    /// The GET path (a template over the same placeholders, e.g. `/api/orders/{path.id}`)
    /// whose answer the write's answer is, byte for byte, when the MES answers a write
    /// with the entity's new representation. With `refresh` on, an entry this instance
    /// holds for that path is replaced by the write's answer instead of being fetched
    /// again (one MES request less per write, and no wait for it). Only entries of routes
    /// without `vary` headers are taken. Default: none (fetched again).
    #[serde(default)]
    pub represents: Option<String>,
    /// The route (by name) whose `[route.index]` this write's answer updates: the answer is
    /// the entity's new state (a status change, a create), applied to the index at once.
    #[serde(default)]
    pub index: Option<String>,
    /// Accept this write asynchronously when the client asks (`Prefer: respond-async`, or
    /// `Prefer: wait=N`): `202 Accepted` with `Location: /mesgate/operations/{id}`, the
    /// write executed from a durable queue in Redis (see `[operations]`). Without `Prefer`
    /// the write is synchronous as ever. Default `false`.
    #[serde(default, rename = "async")]
    pub async_: bool,
}

/// `[route.index]`: a newest-first index per partition (status) of a list route, with the
/// rows beside it, kept true by the writes' answers and served as composed pages.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIndex {
    /// The query parameter and the item field that name a partition. Default `"status"`.
    #[serde(default = "default_partition")]
    pub partition: String,
    /// The item field that identifies an entity (a number). Default `"id"`.
    #[serde(default = "default_id")]
    pub id: String,
    /// The item field the MES sorts by, newest first (a fixed-width timestamp string); ties
    /// are broken by the id, highest first, as the MES does. Default `"created_at"`.
    #[serde(default = "default_sort")]
    pub sort: String,
    /// The item field that orders two states of one entity (a number, +1 per change): a
    /// row is applied only if it is not older than the one held. Default `"version"`.
    #[serde(default = "default_version")]
    pub version: String,
    /// The list body's fields: the items array and the page, size and total numbers.
    /// Defaults `"items"`, `"page"`, `"size"`, `"total"`; also the query parameters for
    /// page and size.
    #[serde(default = "default_items")]
    pub items: String,
    /// See `items`.
    #[serde(default = "default_page")]
    pub page: String,
    /// See `items`.
    #[serde(default = "default_size_field")]
    pub size: String,
    /// See `items`.
    #[serde(default = "default_total_field")]
    pub total: String,
    /// Page size when the request gives none. Default 50.
    #[serde(default = "default_page_size")]
    pub default_size: usize,
    /// Largest page size the MES accepts (larger requests take the ordinary path and get
    /// the MES's own answer). The preload reads with it. Default 200.
    #[serde(default = "default_max_size")]
    pub max_size: usize,
    /// The partitions kept, hottest first (preloaded in this order), e.g.
    /// `["MANUFACTURING_APPROVED", "SUBMITTED"]`. Others take the ordinary path.
    pub preload: Vec<String>,
    /// Most entities held (rows and tombstones); a partition that does not fit is refused
    /// with a log line and stays on the ordinary path. Default 200000.
    #[serde(default = "default_max_entities")]
    pub max_entities: usize,
    /// Pause between two page requests of the preload, so it is not itself a storm.
    /// Default `"20ms"`.
    #[serde(default = "default_preload_pause")]
    pub preload_pause: String,
    /// How many partitions are preloaded at once (each still paced by `preload_pause`),
    /// hottest first. 1 to 16, default 2.
    #[serde(default = "default_preload_concurrency")]
    pub preload_concurrency: usize,
    /// How often page 1 of each ready partition is compared with the MES's, to find
    /// writes made behind mesgate's back (an ERP job, a DBA) and repair them. `"0s"`:
    /// never. Default `"5s"`.
    #[serde(default = "default_audit")]
    pub audit: String,
    /// The MES path of one entity, `{id}` standing for its id: the audit asks it where an
    /// order that left a page behind mesgate's back went. Default: the list path + `/{id}`.
    #[serde(default)]
    pub detail: Option<String>,
    /// The cached route (by name) of the status counts (`{"counts":{…},"total":n}`) that
    /// the index keeps true from the same answers: learned from the MES, then one taken
    /// from the old status and given to the new on every move. Absent: counts stay on
    /// their own route's cache.
    #[serde(default)]
    pub counts: Option<String>,
}

fn default_audit() -> String {
    "5s".into()
}

fn default_partition() -> String {
    "status".into()
}
fn default_id() -> String {
    "id".into()
}
fn default_sort() -> String {
    "created_at".into()
}
fn default_version() -> String {
    "version".into()
}
fn default_items() -> String {
    "items".into()
}
fn default_page() -> String {
    "page".into()
}
fn default_size_field() -> String {
    "size".into()
}
fn default_total_field() -> String {
    "total".into()
}
fn default_page_size() -> usize {
    50
}
fn default_max_size() -> usize {
    200
}
fn default_max_entities() -> usize {
    200_000
}
fn default_preload_concurrency() -> usize {
    2
}

fn default_preload_pause() -> String {
    "20ms".into()
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
    /// Request headers whose values vary the key (e.g. `accept-language`). These are the
    /// only client headers a cache fill sends the MES (with the credentials, when cached
    /// per credential): a header the MES needs on reads must be listed here.
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
