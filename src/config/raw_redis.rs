//! The serde struct of `[redis]` (the shared tier, and how its server is found): its doc
//! comments are the config reference of that table.
//!
//! Kept beside [`raw`](super::raw) (which re-exports it) so that file stays small; the
//! checks are [`validate`](super::validate)'s.

use serde::Deserialize;

/// `[redis]`: the shared tier. Short timeouts on purpose: a slow Redis must cost little.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// `standalone` (default: one Redis at `url`), `sentinel` (the master named
    /// `master_name`, found through the sentinels at `url` and followed through
    /// failovers) or `cluster` (a Redis Cluster found from the seed nodes at `url`;
    /// `MOVED`/`ASK` followed, failovers survived). Env: `MESGATE_REDIS_MODE`.
    #[serde(default = "default_mode")]
    pub mode: String,
    /// Standalone: `redis://host:port/db`. Sentinel: the sentinels, comma-separated
    /// (`redis://10.0.0.1:26379,redis://10.0.0.2:26379`). Cluster: some of its nodes,
    /// comma-separated (the rest is discovered). Env: `MESGATE_REDIS_URL`.
    pub url: String,
    /// Sentinel mode: the name the sentinels monitor the master under. Env:
    /// `MESGATE_REDIS_MASTER`.
    #[serde(default)]
    pub master_name: Option<String>,
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
    /// How often this instance publishes a heartbeat on the invalidation bus (and checks
    /// that Redis was not restarted or emptied: its `run_id` and mesgate's generation
    /// marker). Default `100ms`.
    #[serde(default = "default_heartbeat")]
    pub heartbeat: String,
    /// Silence on the bus (no heartbeat, not even this instance's own, and no message) for
    /// this long and the instance counts itself *cut off*: it may be missing other
    /// instances' invalidations, so it drops its L1, stops reading L2 and keeps new L1
    /// entries only `cut_off_ttl` until it hears the bus again. More than `heartbeat`;
    /// default `500ms`.
    #[serde(default = "default_bus_deadline")]
    pub bus_deadline: String,
    /// While cut off, how long an answer fetched from the MES may be served from L1 (the
    /// bound on what this instance serves without the bus); `0s` keeps nothing. Default
    /// `200ms`.
    #[serde(default = "default_cut_off_ttl")]
    pub cut_off_ttl: String,
}

fn default_mode() -> String {
    "standalone".into()
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
fn default_heartbeat() -> String {
    "100ms".into()
}
fn default_bus_deadline() -> String {
    "500ms".into()
}
fn default_cut_off_ttl() -> String {
    "200ms".into()
}

impl RawRedis {
    pub(in crate::config) fn with_url(url: String) -> Self {
        Self {
            mode: default_mode(),
            master_name: None,
            url,
            prefix: default_prefix(),
            op_timeout: default_op_timeout(),
            connect_timeout: default_connect_timeout(),
            breaker_failures: default_breaker_failures(),
            breaker_cooldown: default_breaker_cooldown(),
            heartbeat: default_heartbeat(),
            bus_deadline: default_bus_deadline(),
            cut_off_ttl: default_cut_off_ttl(),
        }
    }
}
