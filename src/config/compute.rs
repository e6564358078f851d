//! `[route.compute]`: the rule of a compute route (a POST that is a pure computation) and
//! its validation with field paths.
//!
//! What the rule means at run time (keys, leases, waiting) is [`crate::compute`]'s.

use std::time::Duration;

use http::{Method, StatusCode};

use super::parse::{parse_duration, parse_size};
use super::{ConfigError, RawCompute, invalid};

/// The shortest lease: renewals every third of it must be able to reach Redis in time.
const MIN_LEASE: Duration = Duration::from_millis(300);

/// A validated `[route.compute]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComputeRule {
    /// The body fields the key is made of, each split into its dotted path's segments,
    /// in the order written (the order is part of the key's canonical form).
    pub key: Vec<Vec<String>>,
    /// The configured version, part of every key.
    pub version: String,
    /// How long a result is kept in both tiers.
    pub ttl: Duration,
    /// The MES statuses whose (JSON) answers are kept.
    pub statuses: Vec<StatusCode>,
    /// Lease lifetime without renewal.
    pub lease: Duration,
    /// The largest request body and kept answer, bytes.
    pub max_body: usize,
}

impl RawCompute {
    /// Validates the table of a route whose `methods` are given; `others`: the route also
    /// caches reads or invalidates (a compute route does neither).
    pub(super) fn validate(
        self,
        at: &str,
        methods: &[Method],
        others: bool,
    ) -> Result<ComputeRule, ConfigError> {
        if methods != [Method::POST] {
            return Err(invalid(
                at,
                "a compute route serves POST only: set methods = [\"POST\"]",
            ));
        }
        if others {
            return Err(invalid(
                at,
                "a compute route neither caches reads nor invalidates: drop [route.cache] and [route.invalidate]",
            ));
        }
        let key = validate_key(&format!("{at}.key"), &self.key)?;
        let ttl = parse_duration(&format!("{at}.ttl"), &self.ttl)?;
        if ttl.is_zero() {
            return Err(invalid(format!("{at}.ttl"), "must be longer than 0"));
        }
        let lease = parse_duration(&format!("{at}.lease"), &self.lease)?;
        if lease < MIN_LEASE {
            return Err(invalid(
                format!("{at}.lease"),
                format!(
                    "{:?} is shorter than the least lease, {MIN_LEASE:?}",
                    self.lease
                ),
            ));
        }
        let max_body = parse_size(&format!("{at}.max_body"), &self.max_body)?;
        Ok(ComputeRule {
            key,
            version: self.version,
            ttl,
            statuses: validate_statuses(&format!("{at}.statuses"), &self.statuses)?,
            lease,
            max_body: usize::try_from(max_body).unwrap_or(usize::MAX),
        })
    }
}

fn validate_key(at: &str, raw: &[String]) -> Result<Vec<Vec<String>>, ConfigError> {
    if raw.is_empty() {
        return Err(invalid(at, "must name at least one body field"));
    }
    let mut out: Vec<Vec<String>> = Vec::with_capacity(raw.len());
    for (i, field) in raw.iter().enumerate() {
        let segments: Vec<String> = field.split('.').map(str::to_owned).collect();
        let shaped = segments.iter().all(|s| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        });
        if !shaped {
            return Err(invalid(
                format!("{at}[{i}]"),
                format!(
                    "{field:?}: a field is a dotted path of names (a-z, 0-9, '_', '-'), e.g. \"model_hash\" or \"part.material\""
                ),
            ));
        }
        if out.contains(&segments) {
            return Err(invalid(
                format!("{at}[{i}]"),
                format!("{field:?} is named twice"),
            ));
        }
        out.push(segments);
    }
    Ok(out)
}

fn validate_statuses(at: &str, raw: &[u16]) -> Result<Vec<StatusCode>, ConfigError> {
    if raw.is_empty() {
        return Err(invalid(at, "must list at least one status"));
    }
    raw.iter()
        .enumerate()
        .map(|(k, &s)| match StatusCode::from_u16(s) {
            // A result is a JSON body: success with content only (no 204, no 206).
            Ok(code) if code.is_success() && s != 204 && s != 206 => Ok(code),
            _ => Err(invalid(
                format!("{at}[{k}]"),
                format!("{s}: only a success with a body (2xx but 204 and 206) is a result"),
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawSize;

    fn raw(key: &[&str]) -> RawCompute {
        RawCompute {
            key: key.iter().map(|s| s.to_string()).collect(),
            version: "v1".into(),
            ttl: "24h".into(),
            statuses: vec![200],
            lease: "15s".into(),
            max_body: RawSize::Text("64KiB".into()),
        }
    }

    fn err(r: RawCompute, methods: &[Method], others: bool) -> String {
        r.validate("route[4].compute", methods, others)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_valid_table_keeps_the_key_order_and_splits_paths() {
        let rule = raw(&["model_hash", "part.material"])
            .validate("r", &[Method::POST], false)
            .unwrap();
        assert_eq!(rule.key, [vec!["model_hash"], vec!["part", "material"]]);
        assert_eq!(rule.ttl, Duration::from_secs(24 * 3600));
        assert_eq!(rule.max_body, 64 * 1024);
    }

    #[test]
    fn each_mistake_names_its_field() {
        let post = [Method::POST];
        let cases: Vec<(RawCompute, &[Method], bool, &str)> = vec![
            (raw(&[]), &post, false, "route[4].compute.key: must name"),
            (
                raw(&["a..b"]),
                &post,
                false,
                "route[4].compute.key[0]: \"a..b\"",
            ),
            (raw(&["a", "{q}"]), &post, false, "route[4].compute.key[1]:"),
            (
                raw(&["a", "a"]),
                &post,
                false,
                "route[4].compute.key[1]: \"a\" is named twice",
            ),
            (
                raw(&["a"]),
                &[Method::GET],
                false,
                "route[4].compute: a compute route serves POST",
            ),
            (
                raw(&["a"]),
                &[Method::POST, Method::PUT],
                false,
                "serves POST only",
            ),
            (
                raw(&["a"]),
                &post,
                true,
                "route[4].compute: a compute route neither",
            ),
            (
                RawCompute {
                    ttl: "soon".into(),
                    ..raw(&["a"])
                },
                &post,
                false,
                "route[4].compute.ttl: bad duration",
            ),
            (
                RawCompute {
                    ttl: "0s".into(),
                    ..raw(&["a"])
                },
                &post,
                false,
                "route[4].compute.ttl: must be",
            ),
            (
                RawCompute {
                    lease: "10ms".into(),
                    ..raw(&["a"])
                },
                &post,
                false,
                "route[4].compute.lease:",
            ),
            (
                RawCompute {
                    statuses: vec![200, 500],
                    ..raw(&["a"])
                },
                &post,
                false,
                "route[4].compute.statuses[1]: 500",
            ),
            (
                RawCompute {
                    statuses: vec![204],
                    ..raw(&["a"])
                },
                &post,
                false,
                "statuses[0]: 204",
            ),
            (
                RawCompute {
                    statuses: vec![],
                    ..raw(&["a"])
                },
                &post,
                false,
                "route[4].compute.statuses: must list",
            ),
            (
                RawCompute {
                    max_body: RawSize::Text("big".into()),
                    ..raw(&["a"])
                },
                &post,
                false,
                "route[4].compute.max_body:",
            ),
        ];
        for (r, methods, others, want) in cases {
            let got = err(r, methods, others);
            assert!(got.contains(want), "{got:?} should contain {want:?}");
        }
    }
}
