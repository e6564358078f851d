//! `mesgate`: CLI → config → telemetry → gateway → bind → serve. All logic is in the library.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use mesgate::config::{Config, LogConfig, LogFormat, Overrides};
use mesgate::demo::{self, DemoError, DemoOptions};
use mesgate::gateway::Gateway;
use tokio::net::TcpListener;
use tracing::info;

/// A two-tier caching reverse proxy for legacy MES APIs.
///
/// `--config` is for running the gateway (`mesgate --config FILE`, `mesgate run --config
/// FILE`): `check-config` takes the file to check as its argument, `demo` uses
/// `--demo-config`.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Config file for the gateway [default: config/mesgate.toml].
    #[arg(long, short)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

const DEFAULT_CONFIG: &str = "config/mesgate.toml";

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run {
        /// Config file for the gateway [default: config/mesgate.toml].
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and print the compiled route table (exit 2 when invalid).
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Start the MES simulator and the gateway in front of it, with config/demo.toml, and
    /// show a short tour with real requests.
    Demo {
        /// Where the gateway listens (default: the demo config's, 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Redis for the shared tier; the demo runs L1 only when it is unreachable.
        #[arg(long, env = "MESGATE_REDIS_URL")]
        redis: Option<String>,
        /// Where the simulator listens.
        #[arg(long, default_value = "127.0.0.1:9090")]
        sim_listen: SocketAddr,
        /// Demo config file (the embedded copy is used when it is missing).
        #[arg(long, default_value = "config/demo.toml")]
        demo_config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mesgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let command = cli.command.unwrap_or(Command::Run { config: None });
    if cli.config.is_some() {
        let why = match &command {
            Command::CheckConfig { .. } => {
                Some("check-config takes the file to check as its argument")
            }
            Command::Demo { .. } => Some("the demo's config is --demo-config"),
            Command::Run { .. } => None,
        };
        if let Some(why) = why {
            Cli::command()
                .error(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!("--config cannot be used with this subcommand: {why}"),
                )
                .exit();
        }
    }
    match command {
        Command::CheckConfig { file } => check_config(&file),
        Command::Run { config } => {
            let path = config
                .or(cli.config)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
            load(&path).map_or(ExitCode::from(2), |config| {
                init_tracing(&config.log);
                report(runtime.block_on(run(config, &path)))
            })
        }
        Command::Demo {
            listen,
            redis,
            sim_listen,
            demo_config,
        } => {
            init_tracing(&LogConfig::default());
            let mut overrides = Overrides::from_env();
            if let Some(listen) = listen {
                overrides.listen = Some(listen.to_string());
            }
            let opts = DemoOptions {
                config: demo_config,
                redis,
                sim_listen,
                overrides,
            };
            match runtime.block_on(demo::run(opts, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(DemoError::Config(e)) => {
                    eprintln!("mesgate: config error: {e}");
                    ExitCode::from(2)
                }
                Err(e) => report(Err(e.into())),
            }
        }
    }
}

fn init_tracing(log: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only for a person at a terminal, not in a file or a log collector.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

fn load(path: &Path) -> Option<Config> {
    match Config::load(path, Overrides::from_env()) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("mesgate: config error: {e}");
            None
        }
    }
}

fn check_config(file: &Path) -> ExitCode {
    match load(file) {
        Some(config) => {
            use std::io::Write;
            for w in config.warnings() {
                eprintln!("mesgate: warning: {w}");
            }
            // A closed pipe (`| head`) is not an error worth a panic.
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}: ok", file.display());
            let _ = write!(out, "{}", config.describe());
            ExitCode::SUCCESS
        }
        None => ExitCode::from(2),
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// SIGHUP reloads the config file; a bad file is logged with its field path and the old
/// rules keep serving.
async fn reload_on_sighup(gateway: Gateway) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            match gateway.reload() {
                Ok(report) => info!(?report, "config reloaded"),
                Err(e) => tracing::error!(error = %e, "reload refused, the old rules keep serving"),
            }
        }
    }
    #[cfg(not(unix))]
    drop(gateway);
}

async fn run(config: Config, path: &Path) -> anyhow::Result<()> {
    for w in config.warnings() {
        tracing::warn!("{w}");
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot bind listen address {}", config.listen))?;
    let admin = match config.admin_listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot bind admin.listen {a}"))?,
        ),
        None => None,
    };
    let gateway = Gateway::new(config)?;
    gateway.set_config_source(path.to_owned(), Overrides::from_env());
    tokio::spawn(reload_on_sighup(gateway.clone()));
    if let Some(admin) = admin {
        tokio::spawn(mesgate::admin::run(
            admin,
            gateway.clone(),
            std::future::pending(),
        ));
    }
    info!(addr = %listener.local_addr()?, "mesgate listening");
    mesgate::server::run(listener, gateway, shutdown_signal()).await?;
    info!("stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.unwrap_or(());
}
