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
mod raw_redis;
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
    RawSize, RawTimeouts, RawUi, UnknownQuery,
};
pub use runtime::{
    AnswerPath, CachePolicy, EventsConfig, IndexRule, InvalidateRule, Limits, Members,
    OperationsConfig, QueryParam, RedisConfig, RedisTopology, Timeouts, UiConfig, UpstreamTarget,
};

/// Why a config was rejected. Every variant names where: a route by its position and its
/// name (`route[3] "status-change".cache.ttl_l1`), a TOML syntax error by file, line and
/// column.
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
    /// The text is not TOML.
    #[error("{}: {message}", toml_at(.file, .line, .column))]
    Toml {
        /// The file, empty for text not read from one.
        file: String,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in characters) of the error.
        column: usize,
        /// What was wrong.
        message: String,
    },
    /// A field was unknown or of the wrong type.
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

impl ConfigError {
    /// Says which file a syntax error is in.
    fn in_file(self, path: &Path) -> Self {
        match self {
            Self::Toml {
                line,
                column,
                message,
                ..
            } => Self::Toml {
                file: path.display().to_string(),
                line,
                column,
                message,
            },
            other => other,
        }
    }

    /// Adds each route's name to every `route[N]` in the path and the message: the route
    /// table is printed in match order, not file order, so a position alone is hard to find.
    fn with_route_names(self, text: &str) -> Self {
        let names = route_names(text);
        if names.iter().all(Option::is_none) {
            return self;
        }
        let name = |s: &str| name_routes(s, &names);
        match self {
            Self::Syntax { path, message } => Self::Syntax {
                path: name(&path),
                message: name(&message),
            },
            Self::Invalid { path, message } => Self::Invalid {
                path: name(&path),
                message: name(&message),
            },
            other => other,
        }
    }
}

fn toml_at(file: &str, line: &usize, column: &usize) -> String {
    if file.is_empty() {
        format!("line {line}, column {column}")
    } else {
        format!("{file}:{line}:{column}")
    }
}

/// The `name` of each `[[route]]`, by position (read leniently: the text may not be a
/// valid config, only valid TOML).
fn route_names(text: &str) -> Vec<Option<String>> {
    let Ok(doc) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    let Some(routes) = doc.get("route").and_then(toml::Value::as_array) else {
        return Vec::new();
    };
    routes
        .iter()
        .map(|r| {
            r.get("name")
                .and_then(toml::Value::as_str)
                .map(str::to_owned)
        })
        .collect()
}

/// `route[3].cache` becomes `route[3] "status-change".cache`.
fn name_routes(s: &str, names: &[Option<String>]) -> String {
    let mut out = String::with_capacity(s.len() + 32);
    let mut rest = s;
    while let Some(at) = rest.find("route[") {
        let (head, tail) = rest.split_at(at + "route[".len());
        out.push_str(head);
        rest = tail;
        let Some(end) = rest.find(']') else { break };
        let name = rest[..end]
            .parse::<usize>()
            .ok()
            .and_then(|i| names.get(i)?.as_deref());
        out.push_str(&rest[..=end]);
        rest = &rest[end + 1..];
        if let Some(name) = name {
            out.push_str(&format!(" {name:?}"));
        }
    }
    out.push_str(rest);
    out
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    // toml's spans start on a character boundary.
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
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
    /// The operator page.
    pub ui: UiConfig,
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
    /// `MESGATE_REDIS_MODE`: `standalone`, `sentinel` or `cluster`.
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
        Self::from_str_with(&text, overrides).map_err(|e| e.in_file(path))
    }

    /// Parses and validates TOML text, with `overrides` applied before validation.
    pub fn from_str_with(text: &str, overrides: Overrides) -> Result<Self, ConfigError> {
        let mut raw = parse_raw(text).map_err(|e| e.with_route_names(text))?;
        overrides.apply(&mut raw);
        raw.validate().map_err(|e| e.with_route_names(text))
    }

    /// A human-readable summary of the compiled route table, for `check-config`.
    pub fn describe(&self) -> String {
        let redis = match &self.redis {
            None => "off".to_owned(),
            Some(r) => match &r.topology {
                RedisTopology::Standalone => r.url.clone(),
                RedisTopology::Cluster { nodes } => format!("cluster {}", nodes.join(",")),
                RedisTopology::Sentinel { sentinels, master } => {
                    format!("sentinel master={master} at {}", sentinels.join(","))
                }
            },
        };
        let mut out = format!(
            "listen {}  upstream {}://{}  redis {redis}  l1 {} bytes\n",
            self.listen, self.upstream.scheme, self.upstream.authority, self.l1_max_bytes,
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
    let de = toml::Deserializer::parse(text).map_err(|e| {
        let (line, column) = line_column(text, e.span().map_or(0, |s| s.start));
        ConfigError::Toml {
            file: String::new(),
            line,
            column,
            message: e.message().trim().to_owned(),
        }
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
