//! What crosses the proxy: the framing a request must have to cross (one `Host`, no
//! transfer coding but chunked), hop-by-hop removal, `X-Forwarded-*`, `Via`, and the
//! headers a cache fill must not carry.
//!
//! Pure header surgery; it sends nothing.

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

/// Removes what a cache fill must not send: validators, ranges, and `Accept-Encoding`
/// unless the route keys on it (a compressed body must not reach a client that did not ask).
pub fn fill_headers(headers: &mut HeaderMap, vary: &[HeaderName]) {
    for name in &CONDITIONAL {
        headers.remove(name);
    }
    if !vary.contains(&header::ACCEPT_ENCODING) {
        headers.remove(header::ACCEPT_ENCODING);
    }
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
    fn fills_drop_validators_and_encoding_unless_varied() {
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"x\""));
        h.insert(header::RANGE, HeaderValue::from_static("bytes=0-1"));
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let mut kept = h.clone();
        fill_headers(&mut h, &[]);
        assert_eq!(h.len(), 1);
        fill_headers(&mut kept, &[header::ACCEPT_ENCODING]);
        assert!(kept.contains_key(header::ACCEPT_ENCODING));
    }
}
