//! Cacheability: the security defaults an answer must pass to be stored, the members a
//! list body shows (which entity is in which family), and the entry a storable answer
//! becomes.
//!
//! Pure functions of the answer and the route's policy; no tier is touched here.

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use http::header::{self, HeaderMap};

use crate::config::{CachePolicy, Members};
use crate::entry::Entry;
use crate::family::{Source, json_field};
use crate::forward;
use crate::outcome::NoStoreReason;

/// The security defaults of DESIGN.md, first failing rule wins.
pub fn no_store_reason(
    policy: &CachePolicy,
    status: StatusCode,
    headers: &HeaderMap,
) -> Option<NoStoreReason> {
    if !policy.statuses.contains(&status) {
        return Some(NoStoreReason::Status);
    }
    if headers.contains_key(header::SET_COOKIE) {
        return Some(NoStoreReason::SetCookie);
    }
    let directives: Vec<String> = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_ascii_lowercase().replace(' ', ""))
        .collect();
    let mut lifetime_given = false;
    for d in &directives {
        let (name, value) = d.split_once('=').unwrap_or((d, ""));
        let lifetime = matches!(name, "max-age" | "s-maxage");
        lifetime_given |= lifetime;
        let zero_ttl = lifetime && delta_seconds(value).is_none_or(|s| s == 0);
        let private = d.starts_with("private=") || d.starts_with("no-cache=");
        if zero_ttl || private || matches!(d.as_str(), "private" | "no-store" | "no-cache") {
            return Some(NoStoreReason::CacheControl);
        }
    }
    // `max-age` and `s-maxage` override `Expires` (RFC 9111 §5.3).
    if !lifetime_given && expired(headers) {
        return Some(NoStoreReason::Expired);
    }
    vary_reason(policy, headers)
}

/// A delta-seconds value (`60`, `00`, `"0"` quoted); `None` when it is not one, which
/// makes the answer unstorable (the strictest reading of a directive we cannot read).
fn delta_seconds(value: &str) -> Option<u64> {
    let v = value.trim_matches('"');
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Longer than u64: as large as RFC 9111 §1.2.2 lets it be, never zero.
    Some(v.parse().unwrap_or(u64::MAX))
}

/// Whether `Expires` says the answer is already stale: not a date (§5.3: "already
/// expired"), or not after the answer's own `Date` (the MES's clock, not ours; an answer
/// without `Date` is measured against now).
fn expired(headers: &HeaderMap) -> bool {
    let Some(expires) = headers.get(header::EXPIRES) else {
        return false;
    };
    let date = |v: &http::HeaderValue| httpdate::parse_http_date(v.to_str().ok()?).ok();
    let Some(expires) = date(expires) else {
        return true;
    };
    let reference = headers
        .get(header::DATE)
        .and_then(date)
        .unwrap_or_else(std::time::SystemTime::now);
    expires <= reference
}

fn vary_reason(policy: &CachePolicy, headers: &HeaderMap) -> Option<NoStoreReason> {
    let names = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty());
    // Fills never send Accept-Encoding, so an identity answer suits every client.
    let identity = !headers.contains_key(header::CONTENT_ENCODING);
    for n in names {
        if n == "accept-encoding" && identity {
            continue;
        }
        if n == "*" {
            return Some(NoStoreReason::VaryStar);
        }
        if !policy.vary.iter().any(|v| v.as_str() == n) {
            return Some(NoStoreReason::VaryMismatch);
        }
    }
    None
}

/// The members of a body: each entity with the families it shows it belongs to.
pub fn read_members(m: &Members, body: &[u8]) -> Vec<(String, Vec<String>)> {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let mut list = &json;
    for seg in m.items.split('.').filter(|s| !s.is_empty()) {
        match list.get(seg) {
            Some(next) => list = next,
            None => return Vec::new(),
        }
    }
    let items: Vec<&serde_json::Value> = match (m.items.is_empty(), list.as_array()) {
        (true, _) => vec![list],
        (false, Some(a)) => a.iter().collect(),
        (false, None) => Vec::new(),
    };
    items
        .into_iter()
        .filter_map(|item| {
            let lookup = |_: Source, field: &str| json_field(item, field);
            let entity = m.entity.render(&lookup)?;
            let families = m
                .member_of
                .iter()
                .filter_map(|t| t.render(&lookup))
                .collect();
            Some((entity, families))
        })
        .collect()
}

/// The entry a storable MES answer becomes: hop-by-hop headers, `Content-Length` and
/// `Age` dropped (they are set again on every answer from it).
pub fn stored_entry(
    mut parts: http::response::Parts,
    body: Bytes,
    policy: &CachePolicy,
    now: u64,
    epochs: Vec<u64>,
) -> Arc<Entry> {
    forward::strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::AGE);
    Arc::new(Entry {
        status: parts.status,
        headers: parts.headers,
        body,
        stored_at_ms: now,
        ttl_ms: policy.ttl_l2.as_millis() as u64,
        epochs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use http::HeaderValue;

    fn policy(extra: &str) -> CachePolicy {
        let text = format!(
            "upstream = \"http://127.0.0.1:9\"\n[[route]]\nname = \"l\"\npath = \"/o\"\n[route.cache]\n{extra}"
        );
        let c: Config = text.parse().unwrap();
        (*c.routes.routes()[0].cache.clone().unwrap()).clone()
    }

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn security_defaults_one_rule_each() {
        let p = policy("");
        let ok = StatusCode::OK;
        assert_eq!(no_store_reason(&p, ok, &h(&[])), None);
        assert_eq!(
            no_store_reason(&p, StatusCode::NOT_FOUND, &h(&[])),
            Some(NoStoreReason::Status)
        );
        assert_eq!(
            no_store_reason(&p, ok, &h(&[("set-cookie", "a=1")])),
            Some(NoStoreReason::SetCookie)
        );
        for cc in ["private", "no-store", "max-age=5, No-Cache"] {
            assert_eq!(
                no_store_reason(&p, ok, &h(&[("cache-control", cc)])),
                Some(NoStoreReason::CacheControl),
                "{cc}"
            );
        }
        assert_eq!(
            no_store_reason(&p, ok, &h(&[("cache-control", "max-age=60")])),
            None
        );
        for cc in ["max-age=00", "s-maxage=\"0\"", "max-age=", "max-age=soon"] {
            let got = no_store_reason(&p, ok, &h(&[("cache-control", cc)]));
            assert_eq!(got, Some(NoStoreReason::CacheControl), "{cc}");
        }
        let date = ("date", "Mon, 07 Dec 2026 12:00:00 GMT");
        for (expires, want) in [
            (
                "Mon, 07 Dec 2026 12:00:00 GMT",
                Some(NoStoreReason::Expired),
            ),
            (
                "Thu, 01 Jan 1970 00:00:00 GMT",
                Some(NoStoreReason::Expired),
            ),
            ("0", Some(NoStoreReason::Expired)),
            ("Mon, 07 Dec 2026 12:00:01 GMT", None),
        ] {
            let got = no_store_reason(&p, ok, &h(&[date, ("expires", expires)]));
            assert_eq!(got, want, "{expires}");
        }
        let overridden = h(&[date, ("expires", "0"), ("cache-control", "max-age=5")]);
        assert_eq!(no_store_reason(&p, ok, &overridden), None);
        for cc in ["max-age=0", "public, s-maxage=0", "private=\"x\""] {
            let got = no_store_reason(&p, ok, &h(&[("cache-control", cc)]));
            assert_eq!(got, Some(NoStoreReason::CacheControl), "{cc}");
        }
        let ae = h(&[("vary", "Accept-Encoding")]);
        assert_eq!(
            no_store_reason(&p, ok, &ae),
            None,
            "identity answers suit everyone"
        );
        let gz = h(&[("vary", "Accept-Encoding"), ("content-encoding", "gzip")]);
        assert_eq!(
            no_store_reason(&p, ok, &gz),
            Some(NoStoreReason::VaryMismatch)
        );
        assert_eq!(
            no_store_reason(&p, ok, &h(&[("vary", "*")])),
            Some(NoStoreReason::VaryStar)
        );
        assert_eq!(
            no_store_reason(&p, ok, &h(&[("vary", "Accept-Language")])),
            Some(NoStoreReason::VaryMismatch)
        );
        let varied = policy("vary = [\"accept-language\"]");
        assert_eq!(
            no_store_reason(&varied, ok, &h(&[("vary", "Accept-Language")])),
            None
        );
    }
}
