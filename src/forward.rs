//! What crosses the proxy: the framing a request must have to cross (one `Host`, no
//! transfer coding but chunked), hop-by-hop removal, `X-Forwarded-*`, `Via`, and the
//! headers a cache fill may carry (those in the key).
//!
//! Pure header surgery; it sends nothing.
//!
//! # What a cache fill sends
//!
//! A fill asks the MES once for every caller of its key, so a request header that is not
//! in the key must not reach it: one caller's `Accept-Language`, `X-Forwarded-Host` or API
//! key could otherwise shape the body all the others receive (unkeyed-input cache
//! poisoning). Request headers fall in three classes:
//!
//! - **Keyed: sent.** The route's `vary` headers, and `Authorization`/`Cookie` when the
//!   route caches per credential: their values are in the key, so whatever the MES makes of
//!   them is only served to callers who sent the same.
//! - **Overrides: the cache is bypassed.** Headers that ask for another method or path
//!   than the request line's ([`OVERRIDES`], e.g. `X-HTTP-Method-Override: DELETE`,
//!   `X-Original-URL`): such a request is not a plain read of this path, so it is forwarded
//!   as it came (as a route without a cache would forward it) and nothing is stored.
//!   Stripping them would answer a caller who asked for something else with a read.
//! - **Everything else: stripped.** Content negotiation (`Accept`, `Accept-Language`,
//!   `Accept-Encoding` unless varied), `Host` and `X-Forwarded-*` from the client, API keys,
//!   `User-Agent`, tracing and custom headers, validators and ranges. The MES answers its
//!   default, the same for everyone. Bypassing on them instead would turn most real reads
//!   (browsers send `Accept` and `Accept-Language` on every request) into cache misses.
//!   A header the MES needs to see on reads belongs in the route's `vary`.
//!
//! mesgate then adds what it says about itself: `Host` (the MES's authority), `Via`,
//! `X-Forwarded-Proto` and its own `User-Agent` (unless the route varies on it).

use std::net::IpAddr;

use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::error::GatewayError;

/// Headers that describe one connection, never the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Request headers that would make a cache fill answer one caller only (a 304, a range).
const CONDITIONAL: [HeaderName; 6] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::RANGE,
];

/// Why a request cannot cross, if it cannot (RFC 9112): more than one `Host`, or none on
/// HTTP/1.1 (§3.2, 400); a transfer coding other than `chunked` (§6.1, 501: the body is
/// passed on chunked, and a coding such as gzip would be lost with the header).
pub fn refusal(version: Version, headers: &HeaderMap) -> Option<GatewayError> {
    let hosts = headers.get_all(header::HOST).iter().count();
    if hosts > 1 {
        return Some(GatewayError::BadHost("more than one Host header"));
    }
    if hosts == 0 && version == Version::HTTP_11 {
        return Some(GatewayError::BadHost(
            "an HTTP/1.1 request needs a Host header",
        ));
    }
    let codings: Vec<String> = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase())
        .flat_map(|v| {
            v.split(',')
                .map(|c| c.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .filter(|c| !c.is_empty())
        .collect();
    codings
        .iter()
        .any(|c| c != "chunked")
        .then(|| GatewayError::UnsupportedCoding(codings.join(", ")))
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    // `Trailer` is hop-by-hop only in the sense that we do not forward trailers.
    headers.remove(header::TRAILER);
}

/// The `Via` value for a message that arrived with `version`.
pub fn via(version: Version) -> HeaderValue {
    HeaderValue::from_static(match version {
        Version::HTTP_2 => "2 mesgate",
        Version::HTTP_10 => "1.0 mesgate",
        _ => "1.1 mesgate",
    })
}

/// Prepares a client's request headers for the MES: hop-by-hop out, `X-Forwarded-*` and
/// `Via` in, `Host` set to the MES's own authority (the client's goes in `X-Forwarded-Host`).
pub fn request_headers(
    headers: &mut HeaderMap,
    client_ip: IpAddr,
    version: Version,
    original_host: Option<HeaderValue>,
    upstream_host: &str,
) {
    strip_hop_by_hop(headers);
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {client_ip}"),
        None => client_ip.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Some(host) = original_host {
        headers.insert("x-forwarded-host", host);
    }
    if let Ok(v) = HeaderValue::from_str(upstream_host) {
        headers.insert(header::HOST, v);
    }
    headers.append(header::VIA, via(version));
}

/// Request headers that ask the MES for another method or path than the request line's
/// (honoured by many frameworks behind proxies that only pass GET and POST).
pub const OVERRIDES: [HeaderName; 5] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
];

/// Whether a request carries one of the [`OVERRIDES`]: then it is no plain read.
pub fn overrides_request(headers: &HeaderMap) -> bool {
    // One pass over the request's few names (no hashing of the five).
    headers.keys().any(|k| OVERRIDES.contains(k))
}

/// The `User-Agent` of fills: mesgate's own, so no caller's reaches a shared answer.
const FILL_USER_AGENT: &str = concat!("mesgate/", env!("CARGO_PKG_VERSION"));

/// The headers of a cache fill (see the module doc): the client's `keyed` headers (the
/// route's `vary`), its credentials when `credentials` says they are keyed, and nothing
/// else of the client's; plus `Host` (the MES's authority), `Via`, `X-Forwarded-Proto` and
/// mesgate's `User-Agent`. Validators, ranges and hop-by-hop headers never go, varied or not:
/// a fill stores one full answer.
pub fn fill_headers(
    client: &HeaderMap,
    keyed: &[HeaderName],
    credentials: bool,
    version: Version,
    upstream_host: &str,
) -> HeaderMap {
    let mut out = HeaderMap::new();
    let creds = [header::AUTHORIZATION, header::COOKIE];
    let creds = if credentials { &creds[..] } else { &[] };
    for name in keyed.iter().chain(creds) {
        let own = name == header::HOST || name == header::VIA;
        if own || CONDITIONAL.contains(name) || HOP_BY_HOP.contains(name) {
            continue;
        }
        for v in client.get_all(name) {
            out.append(name.clone(), v.clone());
        }
    }
    if !out.contains_key(header::USER_AGENT) {
        out.insert(
            header::USER_AGENT,
            HeaderValue::from_static(FILL_USER_AGENT),
        );
    }
    out.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Ok(v) = HeaderValue::from_str(upstream_host) {
        out.insert(header::HOST, v);
    }
    out.append(header::VIA, via(version));
    out
}

/// Prepares the MES's response headers for the client.
pub fn response_headers(headers: &mut HeaderMap, version: Version) {
    strip_hop_by_hop(headers);
    headers.append(header::VIA, via(version));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_crosses_with_one_host_and_chunked_only() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(*k, HeaderValue::from_static(v));
            }
            m
        };
        let v11 = Version::HTTP_11;
        assert_eq!(refusal(v11, &h(&[("host", "a")])), None);
        assert_eq!(refusal(Version::HTTP_10, &h(&[])), None);
        assert_eq!(refusal(Version::HTTP_2, &h(&[])), None);
        let chunked = h(&[("host", "a"), ("transfer-encoding", "Chunked")]);
        assert_eq!(refusal(v11, &chunked), None);
        for bad in [h(&[]), h(&[("host", "a"), ("host", "a")])] {
            let e = refusal(v11, &bad).map(|e| e.as_str());
            assert_eq!(e, Some("bad-host"), "{bad:?}");
        }
        let coded = h(&[("host", "a"), ("transfer-encoding", "gzip, chunked")]);
        assert_eq!(
            refusal(v11, &coded),
            Some(GatewayError::UnsupportedCoding("gzip, chunked".into()))
        );
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarded_headers_append() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert(header::VIA, HeaderValue::from_static("1.1 edge"));
        request_headers(
            &mut h,
            "127.0.0.1".parse().unwrap(),
            Version::HTTP_11,
            Some(HeaderValue::from_static("gw.local")),
            "mes:9090",
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "gw.local");
        assert_eq!(h[header::HOST], "mes:9090");
        let via: Vec<_> = h.get_all(header::VIA).iter().collect();
        assert_eq!(via, ["1.1 edge", "1.1 mesgate"]);
    }

    #[test]
    fn fills_send_only_keyed_headers_and_mesgates_own() {
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"x\""));
        h.insert(header::RANGE, HeaderValue::from_static("bytes=0-1"));
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/xml"));
        h.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_static("de"));
        h.insert(header::HOST, HeaderValue::from_static("evil.example"));
        h.insert("x-forwarded-host", HeaderValue::from_static("evil.example"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert("x-api-key", HeaderValue::from_static("k"));
        h.insert(header::USER_AGENT, HeaderValue::from_static("curl"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        let plain = fill_headers(&h, &[], false, Version::HTTP_11, "mes:9090");
        let names: Vec<&str> = plain.keys().map(|n| n.as_str()).collect();
        assert_eq!(names.len(), 4, "{names:?}");
        assert_eq!(plain[header::HOST], "mes:9090");
        assert_eq!(plain[header::USER_AGENT], FILL_USER_AGENT);
        assert_eq!(plain["x-forwarded-proto"], "http");
        assert_eq!(plain[header::VIA], "1.1 mesgate");

        let keyed = [
            header::ACCEPT_ENCODING,
            header::ACCEPT_LANGUAGE,
            header::IF_NONE_MATCH,
            header::HOST,
        ];
        let varied = fill_headers(&h, &keyed, true, Version::HTTP_11, "mes:9090");
        assert_eq!(varied[header::ACCEPT_ENCODING], "gzip");
        assert_eq!(varied[header::ACCEPT_LANGUAGE], "de");
        assert_eq!(varied[header::AUTHORIZATION], "Bearer a");
        assert_eq!(varied[header::HOST], "mes:9090", "the MES's own authority");
        assert!(
            !varied.contains_key(header::IF_NONE_MATCH),
            "never a validator"
        );
        assert!(!varied.contains_key(header::ACCEPT));
    }

    #[test]
    fn override_headers_are_recognized() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(!overrides_request(&h));
        for name in &OVERRIDES {
            let mut o = h.clone();
            o.insert(name.clone(), HeaderValue::from_static("DELETE"));
            assert!(overrides_request(&o), "{name}");
        }
    }
}
