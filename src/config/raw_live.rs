//! The serde structs of `[operations]` and `[events]` (asynchronous writes and live
//! updates): their doc comments are the config reference of those tables.
//!
//! Kept beside [`raw`](super::raw) (which re-exports them) so that file stays small; the
//! checks are [`validate`](super::validate)'s.

use serde::Deserialize;

/// `[events]`: `GET /mesgate/events` (Server-Sent Events, docs/async-and-events.md).
/// Needs `[redis]`: events are appended to a Redis Stream that every instance reads.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvents {
    /// Events kept for resuming with `Last-Event-ID` (the stream's approximate
    /// `MAXLEN`); a client further behind gets a `reset` event. Default 10000.
    #[serde(default = "default_events_history")]
    pub history: usize,
    /// Events one subscriber may fall behind the instance's reader before it is dropped
    /// (its connection closed; it reconnects with its last id). Default 1024.
    #[serde(default = "default_events_buffer")]
    pub buffer: usize,
    /// Interval of the comment lines that keep idle proxies from closing a quiet
    /// stream. Default `15s`.
    #[serde(default = "default_events_heartbeat")]
    pub heartbeat: String,
    /// The reconnection delay suggested to clients (`retry:`). Default `2s`.
    #[serde(default = "default_events_retry")]
    pub retry: String,
    /// The most subscribers one instance serves at once; one more is answered `503`
    /// (`events-full`, `Retry-After`). Each holds a client connection for as long as it
    /// listens, counted in `limits.max_connections`, so this must stay below it (room
    /// for the requests). Default: half the connection cap.
    #[serde(default)]
    pub max_subscribers: Option<usize>,
}

impl Default for RawEvents {
    fn default() -> Self {
        Self {
            history: default_events_history(),
            buffer: default_events_buffer(),
            heartbeat: default_events_heartbeat(),
            retry: default_events_retry(),
            max_subscribers: None,
        }
    }
}

fn default_events_history() -> usize {
    10_000
}
fn default_events_buffer() -> usize {
    1024
}
fn default_events_heartbeat() -> String {
    "15s".into()
}
fn default_events_retry() -> String {
    "2s".into()
}

/// `[operations]`: writes accepted with `202 Accepted` on a route with
/// `[route.invalidate] async = true` (docs/async-and-events.md). Needs `[redis]`: the
/// operation is recorded there and executed from a Redis Stream by any instance.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOperations {
    /// How long an operation's record (`GET /mesgate/operations/{id}`) is kept after it
    /// was accepted. Default `1h`.
    #[serde(default = "default_operations_keep")]
    pub keep: String,
    /// How long an operation taken by an instance may go without a sign of life before
    /// another instance claims it (the taker died). A running operation renews its claim
    /// three times per period, so it only has to exceed a few Redis round trips. Default
    /// `10s`.
    #[serde(default = "default_operations_claim_idle")]
    pub claim_idle: String,
    /// The longest `Prefer: wait=N` honoured; a longer wait is cut to this. Default `30s`.
    #[serde(default = "default_operations_max_wait")]
    pub max_wait: String,
    /// Attempts at an operation while the MES is unreachable (nothing was sent: connection
    /// refused, reset before a request went out), the first included; then it fails with
    /// mesgate's `502` problem. An MES that answers, even with an error, is not retried.
    /// Default 4.
    #[serde(default = "default_operations_max_attempts")]
    pub max_attempts: u32,
    /// The wait before the second attempt; it doubles for each next one, at most `30s`.
    /// Default `500ms`.
    #[serde(default = "default_operations_retry_backoff")]
    pub retry_backoff: String,
}

impl Default for RawOperations {
    fn default() -> Self {
        Self {
            keep: default_operations_keep(),
            claim_idle: default_operations_claim_idle(),
            max_wait: default_operations_max_wait(),
            max_attempts: default_operations_max_attempts(),
            retry_backoff: default_operations_retry_backoff(),
        }
    }
}

fn default_operations_keep() -> String {
    "1h".into()
}
fn default_operations_claim_idle() -> String {
    "10s".into()
}
fn default_operations_max_wait() -> String {
    "30s".into()
}
fn default_operations_max_attempts() -> u32 {
    4
}
fn default_operations_retry_backoff() -> String {
    "500ms".into()
}

/// `[ui]`: the operator page at `/mesgate/ui` (docs/async-and-events.md, "The operator
/// page"): the first pages of a few statuses, updated live from `/mesgate/events`, with a
/// control on each order that changes its status with `Prefer: respond-async`. Off by
/// default: anyone who can reach the gateway can open it and change statuses through it
/// (no more than they can with `curl`, but a production gateway should not advertise it);
/// `config/demo.toml` turns it on.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUi {
    /// Serve the page. Default `false`; off, `/mesgate/ui` is forwarded to the MES like
    /// any path no route matches.
    #[serde(default)]
    pub enabled: bool,
    /// The statuses whose first page (`GET /api/orders?status=S`, through the gateway)
    /// the page shows, in this order. Letters, digits, `_` and `-` only. Default the ones
    /// operators work on: `["MANUFACTURING_APPROVED", "SUBMITTED", "PRICE_CALCULATED",
    /// "MANUFACTURING_STARTED"]`.
    #[serde(default = "default_ui_statuses")]
    pub statuses: Vec<String>,
}

impl Default for RawUi {
    fn default() -> Self {
        Self {
            enabled: false,
            statuses: default_ui_statuses(),
        }
    }
}

fn default_ui_statuses() -> Vec<String> {
    [
        "MANUFACTURING_APPROVED",
        "SUBMITTED",
        "PRICE_CALCULATED",
        "MANUFACTURING_STARTED",
    ]
    .map(String::from)
    .to_vec()
}
