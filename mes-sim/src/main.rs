//! `mes-sim`: the MES simulator as a standalone server, for load tests and manual poking.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mes_sim::{self as sim, SimConfig};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// Command line; every latency defaults to the production-like [`SimConfig::default`].
#[derive(Debug, Parser)]
#[command(
    name = "mes-sim",
    version,
    about = "Deterministic fake of the legacy MES HTTP API"
)]
struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, env = "MES_SIM_LISTEN", default_value = "127.0.0.1:9090")]
    listen: String,
    /// Number of generated orders.
    #[arg(long, default_value_t = SimConfig::default().orders)]
    orders: usize,
    /// Seed of the generated data.
    #[arg(long, default_value_t = SimConfig::default().seed)]
    seed: u64,
    /// Reads compute their answer after their latency instead of on arrival.
    #[arg(long)]
    no_mvcc: bool,
    /// Every latency zero; latency flags given as well still apply on top.
    #[arg(long)]
    instant: bool,
    /// Fixed latency of a listing (e.g. 20ms).
    #[arg(long, value_parser = humantime::parse_duration)]
    list_base: Option<Duration>,
    /// Extra listing latency per matching row (e.g. 20us).
    #[arg(long, value_parser = humantime::parse_duration)]
    list_per_row: Option<Duration>,
    /// Latency of an order detail.
    #[arg(long, value_parser = humantime::parse_duration)]
    detail_latency: Option<Duration>,
    /// Latency of the status counts.
    #[arg(long, value_parser = humantime::parse_duration)]
    counts_latency: Option<Duration>,
    /// Latency of a status change or order creation.
    #[arg(long, value_parser = humantime::parse_duration)]
    write_latency: Option<Duration>,
    /// Latency of a price calculation.
    #[arg(long, value_parser = humantime::parse_duration)]
    price_latency: Option<Duration>,
}

impl Args {
    fn config(&self) -> SimConfig {
        let base = if self.instant {
            SimConfig::instant()
        } else {
            SimConfig::default()
        };
        SimConfig {
            orders: self.orders,
            seed: self.seed,
            mvcc: !self.no_mvcc,
            list_base: self.list_base.unwrap_or(base.list_base),
            list_per_row: self.list_per_row.unwrap_or(base.list_per_row),
            detail_latency: self.detail_latency.unwrap_or(base.detail_latency),
            counts_latency: self.counts_latency.unwrap_or(base.counts_latency),
            write_latency: self.write_latency.unwrap_or(base.write_latency),
            price_latency: self.price_latency.unwrap_or(base.price_latency),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Logs go to stderr so stdout carries only the "listening" line scripts wait for.
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = args.config();
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    println!(
        "mes-sim listening on http://{addr} ({} orders, seed {})",
        config.orders, config.seed
    );
    tracing::info!(?config, "mes-sim started");
    sim::run(listener, config, shutdown_signal()).await?;
    tracing::info!("mes-sim stopped");
    Ok(())
}

/// Ctrl-C, or SIGTERM on Unix (how load-test scripts stop it).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
