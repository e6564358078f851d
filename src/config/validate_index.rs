//! Validation of `[route.index]`: field names, page-size bounds and the partitions kept,
//! against the route's own `[route.cache]` (the index serves the same requests).
//!
//! It does not know how the index is kept (see [`crate::index`]).

use std::collections::HashSet;

use super::parse::parse_duration;
use super::{CachePolicy, ConfigError, IndexRule, RawIndex, invalid};

impl RawIndex {
    pub(super) fn validate(self, at: &str, cache: &CachePolicy) -> Result<IndexRule, ConfigError> {
        let fields = [
            ("partition", &self.partition),
            ("id", &self.id),
            ("sort", &self.sort),
            ("version", &self.version),
            ("items", &self.items),
            ("page", &self.page),
            ("size", &self.size),
            ("total", &self.total),
        ];
        for (name, value) in fields {
            if value.trim().is_empty() {
                return Err(invalid(format!("{at}.{name}"), "must name a field"));
            }
        }
        for param in [&self.partition, &self.page, &self.size] {
            if !cache.query.iter().any(|q| q.name == *param) {
                return Err(invalid(
                    at,
                    format!(
                        "the index reads the query parameter {param:?}, which the route's \
                         [route.cache] query does not allow: add it there"
                    ),
                ));
            }
        }
        if !cache.vary.is_empty() {
            return Err(invalid(
                at,
                "an index answers every caller alike: the route cannot vary on headers",
            ));
        }
        if self.max_size == 0 || self.default_size == 0 || self.default_size > self.max_size {
            return Err(invalid(
                format!("{at}.default_size"),
                format!(
                    "{} with max_size {}: both at least 1, default_size at most max_size",
                    self.default_size, self.max_size
                ),
            ));
        }
        if self.preload.is_empty() {
            return Err(invalid(
                format!("{at}.preload"),
                "names no partition to keep (e.g. [\"MANUFACTURING_APPROVED\"])",
            ));
        }
        let mut seen = HashSet::new();
        for (k, p) in self.preload.iter().enumerate() {
            if p.trim().is_empty() || !seen.insert(p.as_str()) {
                return Err(invalid(
                    format!("{at}.preload[{k}]"),
                    format!("{p:?}: empty or named twice"),
                ));
            }
        }
        if self.max_entities == 0 {
            return Err(invalid(format!("{at}.max_entities"), "must be at least 1"));
        }
        if !(1..=16).contains(&self.preload_concurrency) {
            return Err(invalid(
                format!("{at}.preload_concurrency"),
                format!("{}: must be 1 to 16", self.preload_concurrency),
            ));
        }
        let preload_pause = parse_duration(&format!("{at}.preload_pause"), &self.preload_pause)?;
        let audit = parse_duration(&format!("{at}.audit"), &self.audit)?;
        if let Some(d) = &self.detail
            && (!d.starts_with('/') || !d.contains("{id}"))
        {
            return Err(invalid(
                format!("{at}.detail"),
                format!("{d:?}: a path starting with '/' with {{id}} in it"),
            ));
        }
        Ok(IndexRule {
            partition: self.partition,
            id: self.id,
            sort: self.sort,
            version: self.version,
            items: self.items,
            page: self.page,
            size: self.size,
            total: self.total,
            default_size: self.default_size,
            max_size: self.max_size,
            preload: self.preload,
            max_entities: self.max_entities,
            preload_pause,
            preload_concurrency: self.preload_concurrency,
            audit,
            detail: self.detail,
            counts: self.counts,
        })
    }
}
