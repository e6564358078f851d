//! `mes-sim`: the MES simulator as a standalone server, for load tests and manual poking.

use std::process::ExitCode;
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
    #[arg(long, value_parser = humantime::parse_duration, help = latency_help("Fixed latency of a listing", SimConfig::default().list_base))]
    list_base: Option<Duration>,
    #[arg(long, value_parser = humantime::parse_duration, help = latency_help("Extra listing latency per matching row", SimConfig::default().list_per_row))]
    list_per_row: Option<Duration>,
    #[arg(long, value_parser = humantime::parse_duration, help = latency_help("Latency of an order detail", SimConfig::default().detail_latency))]
    detail_latency: Option<Duration>,
    #[arg(long, value_parser = humantime::parse_duration, help = latency_help("Latency of the status counts", SimConfig::default().counts_latency))]
    counts_latency: Option<Duration>,
    #[arg(long, value_parser = humantime::parse_duration, help = latency_help("Latency of a status change or order creation", SimConfig::default().write_latency))]
    write_latency: Option<Duration>,
    #[arg(long, value_parser = humantime::parse_duration, help = latency_help("Latency of a price calculation", SimConfig::default().price_latency))]
    price_latency: Option<Duration>,
}

/// A latency flag's help, with its default (which `--instant` makes zero).
fn latency_help(what: &str, default: Duration) -> String {
    format!(
        "{what} [default: {}; 0 with --instant]",
        humantime::format_duration(default)
    )
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

/// Errors are printed as mesgate prints its own: `mes-sim: what: why`, exit 1.
fn main() -> ExitCode {
    // Logs go to stderr so stdout carries only the "listening" line scripts wait for;
    // colour codes only when stderr is a terminal.
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let result = tokio::runtime::Runtime::new()
        .context("cannot start the runtime")
        .and_then(|rt| rt.block_on(serve(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mes-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let config = args.config();
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot bind listen address {}", args.listen))?;
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
