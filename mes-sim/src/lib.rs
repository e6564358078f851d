//! `mes_sim`, the MES simulator: a deterministic, latency-modelled fake of the legacy MES
//! HTTP API, served in-process for integration tests and `mesgate demo`, and by the
//! `mes-sim` binary (this crate's `src/main.rs`) for load tests.
//!
//! # Endpoints
//!
//! - `GET /api/orders?status=S&page=P&size=N`: a page of orders, newest first.
//! - `GET /api/orders/{id}`, `GET /api/orders/status-counts`.
//! - `PATCH /api/orders/{id}/status` (`{"status":"X"}`), `POST /api/orders`.
//! - `POST /api/price-calculations`: slow and deterministic.
//! - `GET /__sim/stats`, `POST /__sim/reset-stats`: request counters per route kind.
//! - `GET /__sim/price-calculations`: price calculations begun, by their inputs
//!   (`{"MODEL_HASH|MATERIAL|QUANTITY": n}`; zeroed by `reset-stats` too).
//!
//! # Model
//!
//! The order book is generated from a seed ([`SimConfig::seed`]), so two simulators with the
//! same settings serve the same data. Every endpoint has its own latency; listings cost more
//! the more rows match, like the real MES. With [`SimConfig::mvcc`] a read computes its
//! answer on arrival and only then waits, so it can answer with data older than a write that
//! was acknowledged while it waited: the staleness a cache in front of the MES has to live
//! with anyway.
//!
//! Layout: [`data`] (statuses, orders, generator, prices), [`store`] (the indexed order
//! book), [`state`] (what connections share), [`routes`] (the HTTP surface).
#![forbid(unsafe_code)]

mod data;
mod routes;
mod state;
mod store;
#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use self::state::Shared;

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Simulator settings: the size and seed of the generated data, the read model, and the
/// latency of each kind of request (all may be zero).
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// How many orders to generate (ids `1..=orders`, higher id = newer).
    pub orders: usize,
    /// Seed of the generator: the same seed gives the same orders.
    pub seed: u64,
    /// Reads answer from a snapshot taken on arrival (see the module docs).
    pub mvcc: bool,
    /// Fixed part of a listing's latency.
    pub list_base: Duration,
    /// Added to a listing's latency for every order matching its filter.
    pub list_per_row: Duration,
    /// Latency of `GET /api/orders/{id}`.
    pub detail_latency: Duration,
    /// Latency of `GET /api/orders/status-counts` (expensive on the real MES).
    pub counts_latency: Duration,
    /// Latency of a status change or an order creation, before it applies.
    pub write_latency: Duration,
    /// Latency of `POST /api/price-calculations` (very slow on the real MES).
    pub price_latency: Duration,
}

impl Default for SimConfig {
    /// Production-like latencies for the demo and load tests.
    fn default() -> Self {
        Self {
            orders: 5000,
            seed: 42,
            mvcc: true,
            list_base: Duration::from_millis(20),
            list_per_row: Duration::from_micros(20),
            detail_latency: Duration::from_millis(5),
            counts_latency: Duration::from_millis(150),
            write_latency: Duration::from_millis(10),
            price_latency: Duration::from_secs(2),
        }
    }
}

impl SimConfig {
    /// The default data with every latency zero, so tests run at full speed.
    pub fn instant() -> Self {
        Self {
            list_base: Duration::ZERO,
            list_per_row: Duration::ZERO,
            detail_latency: Duration::ZERO,
            counts_latency: Duration::ZERO,
            write_latency: Duration::ZERO,
            price_latency: Duration::ZERO,
            ..Self::default()
        }
    }
}

/// Snapshot of the per-route-kind request counters, so tests can assert how many requests
/// actually reached the MES (e.g. that the cache absorbed the rest). Same shape as the JSON
/// of `GET /__sim/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SimStats {
    /// `GET /api/orders`.
    pub list: u64,
    /// `GET /api/orders/{id}` (including non-integer ids).
    pub detail: u64,
    /// `GET /api/orders/status-counts`.
    pub counts: u64,
    /// `PATCH /api/orders/{id}/status`.
    pub status_change: u64,
    /// `POST /api/orders`.
    pub create: u64,
    /// `POST /api/price-calculations`.
    pub price: u64,
    /// Anything that matched no route.
    pub other: u64,
}

/// A running simulator, for in-process use: its address, its counters, runtime knobs, and
/// a peek at the true state of the data.
///
/// Dropping the handle stops the simulator just like [`SimHandle::shutdown`], without
/// waiting; keep it alive as long as the simulator should serve.
#[must_use = "dropping the handle stops the simulator"]
#[derive(Debug)]
pub struct SimHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl SimHandle {
    /// The address the simulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`, with a loopback IP if the listener is bound to the unspecified one.
    pub fn base_url(&self) -> String {
        format!("http://{}", connectable(self.addr))
    }

    /// The request counters now (same numbers as `GET /__sim/stats`).
    pub fn stats(&self) -> SimStats {
        self.shared.stats()
    }

    /// Zeroes the request counters.
    pub fn reset_stats(&self) {
        self.shared.reset_stats();
    }

    /// Price calculations begun for these inputs (a request the MES rejected as bad is
    /// not one). Zeroed by [`SimHandle::reset_stats`].
    pub fn price_runs(&self, model_hash: &str, material: &str, quantity: u32) -> u64 {
        let key = format!("{model_hash}|{material}|{quantity}");
        self.shared.price_runs().get(&key).copied().unwrap_or(0)
    }

    /// Price calculations begun, all inputs together.
    pub fn price_runs_total(&self) -> u64 {
        self.shared.price_runs().values().sum()
    }

    /// Changes the latency of a price calculation at runtime.
    pub fn set_price_latency(&self, d: Duration) {
        self.shared.set_price_latency(d);
    }

    /// Switches the read model at runtime (see [`SimConfig::mvcc`]).
    pub fn set_mvcc(&self, on: bool) {
        self.shared.set_mvcc(on);
    }

    /// Changes the listing latency at runtime, e.g. to make a read slow enough to race a
    /// write in a test.
    pub fn set_list_latency(&self, base: Duration, per_row: Duration) {
        self.shared.set_list_latency(base, per_row);
    }

    /// The current status of an order, bypassing HTTP and latency: the truth tests compare
    /// cached answers against. `None` if there is no such order.
    pub fn order_status(&self, id: u64) -> Option<String> {
        self.shared
            .read()
            .status_of(id)
            .map(|s| s.as_str().to_owned())
    }

    /// Stops accepting connections and waits for the accept loop to end. Open connections
    /// finish their in-flight requests and then close (idle keep-alive ones close at once);
    /// this does not wait for them.
    pub async fn shutdown(self) {
        let SimHandle { stop, task, .. } = self;
        // The receiver may already be gone if the loop ended; nothing to do then.
        let _ = stop.send(());
        if let Err(e) = task.await {
            tracing::error!(error = %e, "mes-sim accept loop failed");
        }
    }
}

/// Serves on `listener` in a background task until the returned handle is shut down or
/// dropped. Binds nothing itself, so the caller picks the address (tests bind port 0).
/// Must be called from within a Tokio runtime.
pub fn spawn(listener: TcpListener, config: SimConfig) -> SimHandle {
    let addr = local_addr(&listener);
    let shared = Arc::new(Shared::new(&config));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, Arc::clone(&shared), async move {
        // Resolves on an explicit stop and when the handle is dropped.
        let _ = stopped.await;
    }));
    SimHandle {
        addr,
        shared,
        stop,
        task,
    }
}

/// Serves on `listener` until `shutdown` resolves; for the `mes-sim` binary. Accept errors
/// are logged and retried, so this only returns once shut down.
pub async fn run(
    listener: TcpListener,
    config: SimConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared::new(&config));
    serve(listener, shared, shutdown).await;
    Ok(())
}

fn local_addr(listener: &TcpListener) -> SocketAddr {
    listener.local_addr().unwrap_or_else(|e| {
        tracing::error!(error = %e, "mes-sim listener has no local address");
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    })
}

fn connectable(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => (Ipv4Addr::LOCALHOST, a.port()).into(),
        SocketAddr::V6(a) if a.ip().is_unspecified() => (Ipv6Addr::LOCALHOST, a.port()).into(),
        other => other,
    }
}

/// The accept loop: one task per connection, until `shutdown` resolves; then every
/// connection is told to finish gracefully.
async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    // Connections watch this; dropping the sender tells them to wind down.
    let (closing, closing_rx) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    serve_connection(&builder, stream, Arc::clone(&shared), closing_rx.clone());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "mes-sim accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    drop(closing);
}

fn serve_connection(
    builder: &auto::Builder<TokioExecutor>,
    stream: TcpStream,
    shared: Arc<Shared>,
    mut closing: watch::Receiver<()>,
) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "mes-sim could not set TCP_NODELAY");
    }
    let service = service_fn(move |req| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(routes::handle(&shared, req).await) }
    });
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .into_owned();
    tokio::spawn(async move {
        tokio::pin!(conn);
        let result = tokio::select! {
            result = conn.as_mut() => result,
            _ = closing.changed() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "mes-sim connection ended with an error");
        }
    });
}
