//! Validation of the document and its scalar sections: raw structs in, runtime types out,
//! every rejection naming its field path.
//!
//! It owns `listen`, `upstream`, `[admin]`, `[redis]`, `[l1]`, `[timeouts]`, `[limits]`,
//! `[log]` and the address parsers; the `[[route]]` rules are
//! [`validate_route`](super::validate_route)'s. It does not open sockets or talk to Redis.

use std::net::SocketAddr;
use std::sync::Arc;

use http::Uri;

use super::parse::{parse_duration, parse_size};
use super::validate_route::validate_routes;
use super::{
    Config, ConfigError, EventsConfig, Limits, LogConfig, OperationsConfig, RawConfig, RawEvents,
    RawL1, RawLimits, RawOperations, RawRedis, RawTimeouts, RawUi, RedisConfig, RedisTopology,
    Timeouts, UiConfig, UpstreamTarget, invalid,
};

fn parse_addr(path: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        invalid(
            path,
            format!("bad address {value:?} (want host-ip:port, e.g. 127.0.0.1:8080)"),
        )
    })
}

impl RawConfig {
    pub(super) fn validate(self) -> Result<Config, ConfigError> {
        let admin_listen = match self.admin.listen.trim() {
            "" => None,
            a => Some(parse_addr("admin.listen", a)?),
        };
        let redis = self.redis.map(RawRedis::validate).transpose()?;
        let timeouts = self.timeouts.validate()?;
        if let Some(r) = &redis {
            check_redis_against_timeouts(r, &timeouts)?;
        }
        Ok(Config {
            listen: parse_addr("listen", &self.listen)?,
            upstream: parse_upstream(&self.upstream)?,
            admin_listen,
            admin_token: self.admin.token.filter(|t| !t.is_empty()),
            redis,
            l1_max_bytes: validate_l1(&self.l1)?,
            timeouts,
            limits: self.limits.validate()?,
            routes: Arc::new(validate_routes(self.routes)?),
            log: validate_log(self.log)?,
            operations: self.operations.validate()?,
            events: self.events.validate()?,
            ui: self.ui.validate()?,
        })
        .and_then(subscribers_below_connections)
    }
}

/// Subscribers hold their connections (`events.max_subscribers` ≥ 1) and need to leave
/// some of `limits.max_connections` to the requests.
fn subscribers_below_connections(c: Config) -> Result<Config, ConfigError> {
    let at = "events.max_subscribers";
    match (c.events.max_subscribers, c.limits.max_connections) {
        (Some(0), _) => Err(invalid(at, "must be at least 1")),
        (Some(s), Some(conns)) if s >= conns => Err(invalid(
            at,
            format!(
                "{s} must be below limits.max_connections ({conns}): subscribers hold \
                 connections, and requests need some"
            ),
        )),
        _ => Ok(c),
    }
}

impl RawEvents {
    fn validate(self) -> Result<EventsConfig, ConfigError> {
        if self.history == 0 {
            return Err(invalid("events.history", "must be at least 1"));
        }
        if self.buffer == 0 {
            return Err(invalid("events.buffer", "must be at least 1"));
        }
        let heartbeat = parse_duration("events.heartbeat", &self.heartbeat)?;
        if heartbeat.is_zero() {
            return Err(invalid("events.heartbeat", "must be more than 0"));
        }
        Ok(EventsConfig {
            history: self.history,
            buffer: self.buffer,
            heartbeat,
            retry: parse_duration("events.retry", &self.retry)?,
            max_subscribers: self.max_subscribers,
        })
    }
}

impl RawUi {
    fn validate(self) -> Result<UiConfig, ConfigError> {
        if self.enabled && self.statuses.is_empty() {
            return Err(invalid("ui.statuses", "must name at least one status"));
        }
        for (i, s) in self.statuses.iter().enumerate() {
            let plain = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
            if s.is_empty() || !s.chars().all(plain) {
                let why = format!("{s:?} is not a status name (letters, digits, _ and - only)");
                return Err(invalid(format!("ui.statuses[{i}]"), why));
            }
            if self.statuses[..i].contains(s) {
                return Err(invalid(
                    format!("ui.statuses[{i}]"),
                    format!("{s} is named twice"),
                ));
            }
        }
        Ok(UiConfig {
            enabled: self.enabled,
            statuses: self.statuses,
        })
    }
}

impl RawOperations {
    fn validate(self) -> Result<OperationsConfig, ConfigError> {
        let positive = |at: &str, v: &str| {
            let d = parse_duration(at, v)?;
            if d.is_zero() {
                return Err(invalid(at, "must be more than 0"));
            }
            Ok(d)
        };
        Ok(OperationsConfig {
            keep: positive("operations.keep", &self.keep)?,
            claim_idle: positive("operations.claim_idle", &self.claim_idle)?,
            max_wait: parse_duration("operations.max_wait", &self.max_wait)?,
            max_attempts: match self.max_attempts {
                0 => return Err(invalid("operations.max_attempts", "must be at least 1")),
                n => n,
            },
            retry_backoff: parse_duration("operations.retry_backoff", &self.retry_backoff)?,
        })
    }
}

impl Config {
    /// What is allowed but probably a mistake, each line naming its field path: printed
    /// by `check-config` and logged at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let public_admin = self.admin_listen.is_some_and(|a| !a.ip().is_loopback());
        if public_admin && self.admin_token.is_none() {
            out.push(format!(
                "admin.listen: {} is reachable from other hosts and admin.token is not set: anyone who reaches it can purge the cache and reload the config",
                self.admin_listen.map_or_else(String::new, |a| a.to_string())
            ));
        }
        out
    }
}

/// Redis is there to be cheaper than the MES: a lookup that may wait longer than the MES
/// takes to answer, or longer than the breaker stays open, defeats the breaker (each
/// request pays the whole wait until it opens, and a probe outlasts the pause).
fn check_redis_against_timeouts(r: &RedisConfig, t: &Timeouts) -> Result<(), ConfigError> {
    let limits = [
        ("redis.breaker_cooldown", r.breaker_cooldown),
        ("timeouts.response_header", t.response_header),
    ];
    for (other, limit) in limits {
        if r.op_timeout >= limit {
            return Err(invalid(
                "redis.op_timeout",
                format!(
                    "{:?} is not shorter than {other} ({limit:?}): a slow Redis would cost more than the breaker saves",
                    r.op_timeout
                ),
            ));
        }
    }
    Ok(())
}

fn validate_log(log: LogConfig) -> Result<LogConfig, ConfigError> {
    tracing_subscriber::EnvFilter::try_new(&log.level)
        .map_err(|e| invalid("log.level", format!("{:?}: {e}", log.level)))?;
    Ok(log)
}

fn validate_l1(l1: &RawL1) -> Result<u64, ConfigError> {
    let n = parse_size("l1.max_bytes", &l1.max_bytes)?;
    if n == 0 {
        return Err(invalid("l1.max_bytes", "must be more than 0"));
    }
    Ok(n)
}

fn parse_upstream(value: &str) -> Result<UpstreamTarget, ConfigError> {
    let uri: Uri = value
        .parse()
        .map_err(|e| invalid("upstream", format!("bad URL {value:?}: {e}")))?;
    let scheme = uri.scheme().cloned();
    if scheme.as_ref() != Some(&http::uri::Scheme::HTTP) {
        return Err(invalid(
            "upstream",
            format!(
                "{value:?}: only http:// upstreams are supported (TLS to the MES is not built yet)"
            ),
        ));
    }
    let Some(authority) = uri.authority().cloned() else {
        return Err(invalid("upstream", format!("{value:?}: needs a host")));
    };
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(invalid(
            "upstream",
            format!(
                "{value:?}: must be scheme://host:port only; paths are forwarded as the client sent them"
            ),
        ));
    }
    Ok(UpstreamTarget {
        scheme: http::uri::Scheme::HTTP,
        authority,
    })
}

impl RawRedis {
    fn validate(self) -> Result<RedisConfig, ConfigError> {
        let topology = self.topology()?;
        if self.prefix.is_empty() || self.prefix.contains(['{', '}', ' ']) {
            return Err(invalid(
                "redis.prefix",
                "must be non-empty, without spaces or braces",
            ));
        }
        if self.breaker_failures == 0 {
            return Err(invalid("redis.breaker_failures", "must be at least 1"));
        }
        let op_timeout = parse_duration("redis.op_timeout", &self.op_timeout)?;
        if op_timeout.is_zero() {
            return Err(invalid("redis.op_timeout", "must be more than 0"));
        }
        let heartbeat = parse_duration("redis.heartbeat", &self.heartbeat)?;
        if heartbeat.is_zero() {
            return Err(invalid("redis.heartbeat", "must be more than 0"));
        }
        let bus_deadline = parse_duration("redis.bus_deadline", &self.bus_deadline)?;
        if bus_deadline <= heartbeat {
            return Err(invalid(
                "redis.bus_deadline",
                format!("must be more than redis.heartbeat ({})", self.heartbeat),
            ));
        }
        Ok(RedisConfig {
            heartbeat,
            bus_deadline,
            cut_off_ttl: parse_duration("redis.cut_off_ttl", &self.cut_off_ttl)?,
            op_timeout,
            connect_timeout: parse_duration("redis.connect_timeout", &self.connect_timeout)?,
            breaker_cooldown: parse_duration("redis.breaker_cooldown", &self.breaker_cooldown)?,
            breaker_failures: self.breaker_failures,
            prefix: self.prefix,
            url: self.url,
            topology,
        })
    }

    /// `mode`, `url` and `master_name` together: one Redis URL (standalone), or the
    /// sentinels' URLs and the master's name (sentinel).
    fn topology(&self) -> Result<RedisTopology, ConfigError> {
        let open = |url: &str| {
            redis::Client::open(url)
                .map(drop)
                .map_err(|e| invalid("redis.url", format!("bad Redis URL {url:?}: {e}")))
        };
        match self.mode.as_str() {
            "standalone" => {
                if self.master_name.is_some() {
                    return Err(invalid("redis.master_name", "only for mode = \"sentinel\""));
                }
                open(&self.url)?;
                Ok(RedisTopology::Standalone)
            }
            "sentinel" => {
                let sentinels = self.url_list("sentinels", &open)?;
                let master = match self.master_name.as_deref().map(str::trim) {
                    Some(m) if !m.is_empty() && !m.contains(char::is_whitespace) => m.to_owned(),
                    Some(m) => {
                        return Err(invalid(
                            "redis.master_name",
                            format!("{m:?}: must be a name without spaces"),
                        ));
                    }
                    None => {
                        return Err(invalid(
                            "redis.master_name",
                            "mode = \"sentinel\" needs the name the sentinels monitor the master under (env MESGATE_REDIS_MASTER)",
                        ));
                    }
                };
                Ok(RedisTopology::Sentinel { sentinels, master })
            }
            "cluster" => {
                if self.master_name.is_some() {
                    return Err(invalid("redis.master_name", "only for mode = \"sentinel\""));
                }
                let nodes = self.url_list("seed nodes", &open)?;
                Ok(RedisTopology::Cluster { nodes })
            }
            other => Err(invalid(
                "redis.mode",
                format!("{other:?}: one of \"standalone\", \"sentinel\", \"cluster\""),
            )),
        }
    }

    /// `url` as a comma-separated list of Redis URLs (the sentinels, or a cluster's seed
    /// nodes), each checked by `open`.
    fn url_list(
        &self,
        what: &str,
        open: &dyn Fn(&str) -> Result<(), ConfigError>,
    ) -> Result<Vec<String>, ConfigError> {
        let urls: Vec<String> = self.url.split(',').map(|u| u.trim().to_owned()).collect();
        for u in &urls {
            if u.is_empty() {
                return Err(invalid(
                    "redis.url",
                    format!("{:?}: an empty entry in the list of {what}", self.url),
                ));
            }
            open(u)?;
        }
        Ok(urls)
    }
}

impl RawTimeouts {
    fn validate(self) -> Result<Timeouts, ConfigError> {
        let nonzero = |path: &str, v: &str| {
            let d = parse_duration(path, v)?;
            if d.is_zero() {
                return Err(invalid(path, "must be more than 0"));
            }
            Ok(d)
        };
        let t = Timeouts {
            connect: nonzero("timeouts.connect", &self.connect)?,
            response_header: nonzero("timeouts.response_header", &self.response_header)?,
            total: nonzero("timeouts.total", &self.total)?,
            client_header: nonzero("timeouts.client_header", &self.client_header)?,
            client_idle: nonzero("timeouts.client_idle", &self.client_idle)?,
            client_body: nonzero("timeouts.client_body", &self.client_body)?,
            pool_idle: nonzero("timeouts.pool_idle", &self.pool_idle)?,
            drain: parse_duration("timeouts.drain", &self.drain)?,
        };
        if t.total < t.response_header {
            return Err(invalid(
                "timeouts.total",
                format!(
                    "{:?} is shorter than timeouts.response_header ({:?})",
                    t.total, t.response_header
                ),
            ));
        }
        Ok(t)
    }
}

impl RawLimits {
    fn validate(self) -> Result<Limits, ConfigError> {
        let bytes = parse_size("limits.max_header_bytes", &self.max_header_bytes)?;
        if !(8192..=1 << 20).contains(&bytes) {
            return Err(invalid(
                "limits.max_header_bytes",
                "must be between 8KiB and 1MiB",
            ));
        }
        if self.max_headers == 0 {
            return Err(invalid("limits.max_headers", "must be at least 1"));
        }
        if self.max_connections == Some(0) {
            return Err(invalid(
                "limits.max_connections",
                "must be at least 1 (leave it out to derive it from the open-file limit)",
            ));
        }
        Ok(Limits {
            max_header_bytes: bytes as usize,
            max_headers: self.max_headers,
            max_connections: self.max_connections,
        })
    }
}
