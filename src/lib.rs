//! mesgate: a two-tier caching reverse proxy for legacy MES APIs.
//!
//! # Layout
//!
//! The handle and the three paths a request can take:
//!
//! - [`gateway`]: builds the paths and what they share, puts a config (and a reload) in
//!   force, dispatches each request and counts its outcome.
//! - [`read`]: the read path (GET/HEAD on a cached route): phases in `read`, the flight's
//!   fetch and store in `read::fill`, the security defaults and member extraction in
//!   `read::cacheable`, responses in `read::response`, keys filled lately in `read::recent`.
//! - [`write`](mod@write): the write path: forward detached, plan the invalidation, apply it; refresh
//!   on write in `write::refresh` (handed the read path).
//! - [`pass`]: pass-through to the MES, and answers marked as a bypass.
//! - [`compute`]: the compute path (a POST declared a pure computation, the price
//!   calculation): one computation per key across instances (a lease in Redis), results
//!   kept in both tiers; keys in `compute::canon`, Redis in `compute::shared`.
//! - [`operations`]: asynchronous writes (`Prefer: respond-async`): recorded in Redis,
//!   answered `202`, executed from a Redis Stream by any instance through the write path
//!   (`operations::worker`), records in `operations::store`.
//! - [`events`]: live updates at `GET /mesgate/events` (Server-Sent Events): what writes
//!   changed and operation outcomes, from a Redis Stream; one subscriber in `events::sse`.
//! - [`ui`]: the operator page at `/mesgate/ui` (`[ui] enabled`): embedded static files
//!   that read and write through the routes above.
//!
//! Keeping answers true:
//!
//! - [`consistency`]: the numbered promises and their mechanisms: the write clock and
//!   fences (`clock`), invalidation names (`names`), the entity index and write marks
//!   (`entities`), the outbox to Redis (`outbox`), the bus (`bus`), test hooks (`hooks`).
//!
//! The cache itself:
//!
//! - [`key`]: cache keys (query normalization, vary headers, credential policy).
//! - [`family`]: family templates (`status:{query.status|all}`) and JSON field access.
//! - [`entry`]: a cached response and its versioned wire codec for the shared tier.
//! - [`l1`]: the in-process tier (moka, bounded in bytes).
//! - [`l2`]: the shared tier (Redis, op timeout, circuit breaker in [`breaker`]); the
//!   Redis it talks to (one server, or the master the sentinels name, followed through
//!   failovers) in [`redis_master`].
//! - [`flight`]: single-flight of concurrent misses for one key.
//! - [`outcome`]: the decisions (`CacheOutcome`, `BypassReason`, `NoStoreReason`), their
//!   names and the header names they are reported in.
//! - [`index`]: the status index: rows, the mirror of kept statuses under the version
//!   rule, list pages composed byte for byte, the preload scan's verdict (the pure core),
//!   and the live service that preloads (or warms from its copy in Redis), serves and
//!   applies writes (`index::service`).
//!
//! Around it:
//!
//! - [`config`]: raw TOML structs (`raw`), scalar parsers (`parse`), validation with field
//!   paths (`validate`, `validate_route`), the typed runtime config (`runtime`), path
//!   templates with typed parameters and the route table (`route`).
//! - [`upstream`]: the pooled client to the MES and its timeouts.
//! - [`forward`]: what crosses the proxy: the framing a request needs (one `Host`, only
//!   chunked), hop-by-hop removal, `X-Forwarded-*`, `Via`, and the only headers a cache
//!   fill sends (those in the key).
//! - [`clock`]: wall-clock time, injectable for tests.
//! - [`metrics`]: Prometheus metrics, rendered on the admin listener from a snapshot.
//! - [`server`]: accept loop, connection settings, closing idle connections, the
//!   connection cap's refusal, accept backoff, graceful shutdown.
//! - [`connections`]: the cap on open client connections, each one's activity and idle
//!   deadline, and which one makes way at the cap.
//! - [`client_body`]: the client's request body with a read timeout, and its errors as
//!   the client's fault.
//! - [`admin`]: the admin listener (health, readiness, purge, reload).
//! - [`error`]: the top-level error and its one mapping to a problem response.
//! - [`demo`]: `mesgate demo`, the simulator with the gateway in front of it, and the
//!   tour it prints (real requests that show a write leaving a cached page).
//!
//! The MES simulator used by the demo, the tests and the load tests is its own crate in
//! this workspace: `mes-sim` (`mes-sim/`, the [`mes_sim`] library and the `mes-sim` binary).
//!
//! # Request flow
//!
//! A request is matched against the route table. On a cached route, a GET or HEAD goes
//! through the read path: build the key (or bypass, with a reason) → local tier → one
//! single-flight per key that asks the shared tier, then the MES → store if cacheable →
//! respond with `Cache-Status`, `X-Cache` and `Age`. Anything else is forwarded untouched,
//! with bodies streamed both ways.
#![forbid(unsafe_code)]

pub mod admin;
pub mod breaker;
pub mod client_body;
pub mod clock;
pub mod compute;
pub mod config;
pub mod connections;
pub mod consistency;
pub mod demo;
pub mod entry;
pub mod error;
pub mod events;
pub mod family;
pub mod flight;
pub mod forward;
pub mod gateway;
pub mod index;
pub mod key;
pub mod l1;
pub mod l2;
pub mod metrics;
pub mod operations;
pub mod outcome;
pub mod pass;
pub mod read;
pub mod redis_master;
pub mod server;
pub mod ui;
pub mod upstream;
pub mod write;
