//! The config file: raw TOML structs, validation with field paths, the typed runtime config.
//!
//! The module owns every default and every rejection; it does not open sockets or talk to
//! Redis. This file owns [`ConfigError`], [`Config`] with its loading (parse, apply
//! [`Overrides`], validate) and its summary, and re-exports the submodules' public items,
//! so every item is reached as `config::X`:
//!
//! - `raw`: the serde structs, what the file may say, and their defaults. Their doc
//!   comments are the config reference.
//! - `validate`: the document and its scalar sections, raw to runtime, with field paths.
//! - `validate_route`: the `[[route]]` rules and the checks across routes.
//! - `runtime`: the typed runtime types and the printed route table.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use crate::config::route::RouteTable;
use runtime::describe_route;

mod compute;
mod parse;
mod raw;
mod raw_live;
pub mod route;
mod runtime;
mod validate;
mod validate_index;
mod validate_route;

pub use compute::ComputeRule;
pub use parse::{parse_duration, parse_size};
pub use raw::{
    CredentialPolicy, LogConfig, LogFormat, RawAdmin, RawCache, RawCompute, RawConfig, RawEvents,
    RawIndex, RawInvalidate, RawL1, RawLimits, RawMembers, RawOperations, RawRedis, RawRoute,
    RawSize, RawTimeouts, UnknownQuery,
};
pub use runtime::{
    AnswerPath, CachePolicy, EventsConfig, IndexRule, InvalidateRule, Limits, Members,
    OperationsConfig, QueryParam, RedisConfig, RedisTopology, Timeouts, UpstreamTarget,
};

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
    /// Asynchronous writes.
    pub operations: OperationsConfig,
    /// Live updates.
    pub events: EventsConfig,
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
    /// `MESGATE_REDIS_MODE`: `standalone` or `sentinel`.
    pub redis_mode: Option<String>,
    /// `MESGATE_REDIS_MASTER`: the master's name in sentinel mode.
    pub redis_master: Option<String>,
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
            redis_mode: var("MESGATE_REDIS_MODE"),
            redis_master: var("MESGATE_REDIS_MASTER"),
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
        if let Some(r) = &mut raw.redis {
            if let Some(mode) = self.redis_mode {
                r.mode = mode;
            }
            if let Some(master) = self.redis_master {
                r.master_name = Some(master);
            }
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

#[cfg(test)]
mod tests;
