//! mesgate: a two-tier caching reverse proxy for legacy MES APIs.
//!
//! # Layout
//!
//! - [`config`]: raw TOML structs (`raw`), validation with field paths (`validate`,
//!   `validate_route`), the typed runtime config (`runtime`).
//! - [`route`]: path templates and the route table (which rule a request falls under).
//! - [`key`]: cache keys (query normalization, vary headers, credential policy).
//! - [`family`]: family templates (`status:{query.status|all}`) and JSON field access.
//! - [`consistency`]: the promises and their mechanisms: the write clock and fences,
//!   invalidation names, the entity index and write marks, the outbox to Redis, the bus.
//! - [`entry`]: a cached response and its versioned wire codec for the shared tier.
//! - [`outcome`]: the decisions (`CacheOutcome`, `BypassReason`, `NoStoreReason`) and their names.
//! - [`l1`]: the in-process tier (moka, bounded in bytes).
//! - [`l2`]: the shared tier (Redis, op timeout, circuit breaker in [`breaker`]).
//! - [`flight`]: single-flight of concurrent misses for one key.
//! - [`index`]: the status index (pure): rows, the mirror of kept statuses under the
//!   version rule, list pages composed byte for byte, the preload scan's verdict.
//! - [`upstream`]: the pooled client to the MES and its timeouts.
//! - [`forward`]: what crosses the proxy: hop-by-hop removal, `X-Forwarded-*`, `Via`.
//! - [`proxy`]: the request phases, read path and pass-through.
//! - [`write`]: the write path: forward detached, plan the invalidation, apply it.
//! - [`metrics`]: Prometheus metrics, rendered on the admin listener.
//! - [`server`]: accept loop, connection settings, graceful shutdown.
//! - [`admin`]: the admin listener (health, readiness).
//! - [`error`]: the top-level error and its one mapping to a problem response.
//! - [`sim`]: the MES simulator used by the demo, the tests and the load tests.
//! - [`demo`]: `mesgate demo`, the simulator with the gateway in front of it.
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
pub mod clock;
pub mod config;
pub mod consistency;
pub mod demo;
pub mod entry;
pub mod error;
pub mod family;
pub mod flight;
pub mod forward;
pub mod index;
pub mod key;
pub mod l1;
pub mod l2;
pub mod metrics;
pub mod outcome;
pub mod proxy;
pub mod refresh;
pub mod route;
pub mod server;
pub mod sim;
pub mod upstream;
pub mod write;
