//! Cache keys: query normalization, vary headers and the credential policy.
//!
//! It decides what identifies an answer; it does not look anything up.

use std::borrow::Cow;

use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE};
use sha2::{Digest, Sha256};
use smallvec::{SmallVec, smallvec};

use crate::config::{CachePolicy, CredentialPolicy, UnknownQuery};
use crate::outcome::BypassReason;

/// The identity of a cacheable request.
///
/// One string, built with one allocation on the hit path:
/// `{route}|{path}?{normalized query}|{vary values}|cred={hash}`. The part sent to the MES
/// is a slice of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    /// The key, identical on every instance for the same request.
    pub key: String,
    upstream: std::ops::Range<usize>,
}

impl CacheKey {
    /// A key from a buffer [`build_into`] filled and the range it returned.
    pub fn from_parts(key: String, upstream: std::ops::Range<usize>) -> Self {
        Self { key, upstream }
    }

    /// Path and normalized query sent to the MES, so the fetch asks exactly what the key says.
    pub fn upstream_path(&self) -> &str {
        &self.key[self.upstream.clone()]
    }

    /// The normalized query as pairs (allowed parameters, defaults applied).
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        let q = self.upstream_path().split_once('?').map_or("", |(_, q)| q);
        form_urlencoded::parse(q.as_bytes()).into_owned().collect()
    }
}

/// Builds the key of a request on a cached route, or says why the cache must be bypassed.
///
/// # Example
///
/// ```
/// # use mesgate::{config::Config, key::build};
/// let c: Config = r#"
/// upstream = "http://127.0.0.1:9"
/// [[route]]
/// name = "list"
/// path = "/api/orders"
/// cache = { query = ["status", "page=1"] }
/// "#.parse().unwrap();
/// let policy = c.routes.routes()[0].cache.as_ref().unwrap();
/// let a = build("list", policy, "/api/orders", Some("status=NEW"), &Default::default()).unwrap();
/// let b = build("list", policy, "/api/orders", Some("page=1&status=NEW"), &Default::default()).unwrap();
/// assert_eq!(a.key, b.key);
/// assert_eq!(a.upstream_path(), "/api/orders?page=1&status=NEW");
/// ```
pub fn build(
    route: &str,
    policy: &CachePolicy,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<CacheKey, BypassReason> {
    let mut key = String::with_capacity(route.len() + path.len() + 64);
    let upstream = build_into(&mut key, route, policy, path, query, headers)?;
    Ok(CacheKey { key, upstream })
}

/// [`build`] into a caller's buffer (cleared first), so that a lookup that hits needs no
/// allocation; returns where the upstream part lies. The buffer's contents are
/// unspecified after an error.
pub fn build_into(
    key: &mut String,
    route: &str,
    policy: &CachePolicy,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<std::ops::Range<usize>, BypassReason> {
    key.clear();
    let values = normalize_query(policy, query.unwrap_or(""))?;
    key.push_str(route);
    key.push('|');
    let start = key.len();
    key.push_str(path);
    let mut sep = '?';
    for (param, value) in policy.query.iter().zip(&values) {
        if let Some(v) = value.as_deref().or(param.default.as_deref()) {
            key.push(sep);
            sep = '&';
            push_form_encoded(key, &param.name);
            key.push('=');
            push_form_encoded(key, v);
        }
    }
    let upstream = start..key.len();
    push_vary(key, policy, headers);
    push_credentials(key, policy.credentials, headers)?;
    Ok(upstream)
}

/// The allowed parameters' values in the policy's (sorted) order, borrowed where the
/// request needs no decoding.
fn normalize_query<'q>(
    policy: &CachePolicy,
    query: &'q str,
) -> Result<SmallVec<[Option<Cow<'q, str>>; 4]>, BypassReason> {
    let mut values: SmallVec<[Option<Cow<'q, str>>; 4]> = smallvec![None; policy.query.len()];
    for (name, value) in query_pairs(query) {
        match policy.query.iter().position(|p| p.name == name) {
            Some(i) if values[i].is_some() => return Err(BypassReason::RepeatedQuery),
            Some(i) => values[i] = Some(value),
            None if policy.unknown_query == UnknownQuery::Strip => {}
            None => return Err(BypassReason::UnknownQuery),
        }
    }
    Ok(values)
}

/// The pairs of an `application/x-www-form-urlencoded` query, exactly as
/// `form_urlencoded::parse` yields them; a pair made only of characters that neither
/// decoding nor encoding changes is borrowed without a pass through the decoder.
fn query_pairs(query: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if is_form_plain(name) && is_form_plain(value) {
            return (Cow::Borrowed(name), Cow::Borrowed(value));
        }
        form_urlencoded::parse(pair.as_bytes())
            .next()
            .unwrap_or((Cow::Borrowed(""), Cow::Borrowed("")))
    })
}

/// Whether form encoding leaves `s` as it is (and so decoding too).
fn is_form_plain(s: &str) -> bool {
    const PLAIN: [bool; 256] = {
        let mut t = [false; 256];
        let mut b = 0;
        while b < 256 {
            let c = b as u8;
            t[b] = c.is_ascii_alphanumeric() || matches!(c, b'*' | b'-' | b'.' | b'_');
            b += 1;
        }
        t
    };
    s.bytes().all(|b| PLAIN[b as usize])
}

fn push_form_encoded(key: &mut String, s: &str) {
    if is_form_plain(s) {
        key.push_str(s);
    } else {
        key.extend(form_urlencoded::byte_serialize(s.as_bytes()));
    }
}

fn push_vary(key: &mut String, policy: &CachePolicy, headers: &HeaderMap) {
    for name in &policy.vary {
        key.push('|');
        key.push_str(name.as_str());
        key.push('=');
        let mut first = true;
        for v in headers.get_all(name) {
            if !first {
                key.push(',');
            }
            first = false;
            key.push_str(&String::from_utf8_lossy(v.as_bytes()));
        }
    }
}

fn push_credentials(
    key: &mut String,
    policy: CredentialPolicy,
    headers: &HeaderMap,
) -> Result<(), BypassReason> {
    if !headers.contains_key(AUTHORIZATION) && !headers.contains_key(COOKIE) {
        return Ok(());
    }
    if policy == CredentialPolicy::Bypass {
        return Err(BypassReason::Credentials);
    }
    let mut h = Sha256::new();
    for name in [AUTHORIZATION, COOKIE] {
        for v in headers.get_all(&name) {
            h.update(name.as_str());
            h.update(b":");
            h.update(v.as_bytes());
            h.update(b"\n");
        }
    }
    key.push_str("|cred=");
    key.push_str(&hex::encode(&h.finalize()[..16]));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use http::HeaderValue;

    fn policy(extra: &str) -> CachePolicy {
        let text = format!(
            "upstream = \"http://127.0.0.1:9\"\n[[route]]\nname = \"l\"\npath = \"/o\"\n[route.cache]\nquery = [\"status\", \"page=1\", \"size=50\"]\n{extra}"
        );
        let c: Config = text.parse().unwrap();
        (*c.routes.routes()[0].cache.clone().unwrap()).clone()
    }

    fn key(p: &CachePolicy, q: &str, h: &HeaderMap) -> Result<CacheKey, BypassReason> {
        build("l", p, "/o", Some(q), h)
    }

    #[test]
    fn defaults_and_order_do_not_change_the_key() {
        let p = policy("");
        let h = HeaderMap::new();
        let a = key(&p, "status=NEW", &h).unwrap();
        let b = key(&p, "size=50&page=1&status=NEW", &h).unwrap();
        let c = key(&p, "status=N%45W", &h).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a.upstream_path(), "/o?page=1&size=50&status=NEW");
        assert_ne!(a.key, key(&p, "status=NEW&page=2", &h).unwrap().key);
    }

    #[test]
    fn fast_path_parses_and_encodes_as_form_urlencoded_does() {
        let queries = [
            "status=NEW&page=2",
            "a=b=c&&x&=y&status=N%45W&q=a+b&e=%zz&u=%C3%A9&s=caf\u{e9}",
            "&&&",
            "k=v*-._~!",
            "=&=x&y=",
            "%26=%3D&plus=+",
        ];
        for q in queries {
            let ours: Vec<_> = query_pairs(q).collect();
            let theirs: Vec<_> = form_urlencoded::parse(q.as_bytes()).collect();
            assert_eq!(ours, theirs, "{q}");
            for (n, v) in &theirs {
                for s in [n, v] {
                    let mut k = String::new();
                    push_form_encoded(&mut k, s);
                    let want: String = form_urlencoded::byte_serialize(s.as_bytes()).collect();
                    assert_eq!(k, want, "{s}");
                }
            }
        }
    }

    #[test]
    fn absent_parameter_without_default_is_left_out() {
        let p = policy("");
        let k = key(&p, "", &HeaderMap::new()).unwrap();
        assert_eq!(k.upstream_path(), "/o?page=1&size=50");
    }

    #[test]
    fn unknown_parameter_bypasses_or_is_stripped() {
        let h = HeaderMap::new();
        assert_eq!(
            key(&policy(""), "status=NEW&debug=1", &h),
            Err(BypassReason::UnknownQuery)
        );
        let strip = policy("unknown_query = \"strip\"");
        let k = key(&strip, "status=NEW&debug=1", &h).unwrap();
        assert_eq!(k, key(&strip, "status=NEW", &h).unwrap());
        assert!(!k.upstream_path().contains("debug"));
    }

    #[test]
    fn repeated_parameter_bypasses() {
        assert_eq!(
            key(&policy(""), "status=A&status=B", &HeaderMap::new()),
            Err(BypassReason::RepeatedQuery)
        );
    }

    #[test]
    fn vary_headers_split_the_key() {
        let p = policy("vary = [\"Accept-Language\"]");
        let mut en = HeaderMap::new();
        en.insert("accept-language", HeaderValue::from_static("en"));
        let mut de = HeaderMap::new();
        de.insert("accept-language", HeaderValue::from_static("de"));
        assert_ne!(key(&p, "", &en).unwrap().key, key(&p, "", &de).unwrap().key);
        assert_eq!(key(&p, "", &en).unwrap(), key(&p, "", &en.clone()).unwrap());
    }

    #[test]
    fn credentials_bypass_by_default_and_split_per_credential() {
        let mut a = HeaderMap::new();
        a.insert(AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        let mut b = HeaderMap::new();
        b.insert(AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert_eq!(key(&policy(""), "", &a), Err(BypassReason::Credentials));
        let mut cookie = HeaderMap::new();
        cookie.insert(COOKIE, HeaderValue::from_static("s=1"));
        assert_eq!(
            key(&policy(""), "", &cookie),
            Err(BypassReason::Credentials)
        );
        let p = policy("credentials = \"per_credential\"");
        let ka = key(&p, "", &a).unwrap();
        assert_ne!(ka.key, key(&p, "", &b).unwrap().key);
        assert!(
            !ka.key.contains("Bearer"),
            "the raw credential never enters a key"
        );
    }
}
