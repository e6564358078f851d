//! How a cached answer goes back to the client: prebuilt hit headers, `Age`,
//! `Cache-Status`, `X-Cache` and `Via`.
//!
//! It builds responses; what is served is the read path's decision.

use bytes::Bytes;
use http::Response;
use http::header::{self, HeaderMap, HeaderValue};
use http_body_util::{Either, Full};

use crate::entry::Entry;
use crate::forward;
use crate::l1::L1Entry;
use crate::outcome::{CACHE_STATUS, CacheOutcome, MissDetail, X_CACHE, cache_status};
use crate::pass::Body;

/// The prebuilt headers of a hit (`outcome`: from L1, or from the status index) over the
/// stored answer's `h`: built once when the answer is stored or composed.
pub fn hit_headers(mut h: HeaderMap, outcome: CacheOutcome) -> HeaderMap {
    let status = cache_status(outcome, MissDetail::default(), None);
    if let Ok(v) = HeaderValue::from_str(&status) {
        h.insert(CACHE_STATUS, v);
    }
    h.insert(X_CACHE, HeaderValue::from_static(outcome.x_cache()));
    h.append(header::VIA, forward::via(http::Version::HTTP_11));
    // A placeholder the hit overwrites in place: inserting a new name would grow the
    // cloned map (a reallocation per hit).
    h.insert(header::AGE, age_value(0));
    h
}

/// An `Age` value. The first hour's are built once and shared (a hit clones a static
/// slice, no allocation, no reference count); later ones are formatted.
fn age_value(secs: u64) -> HeaderValue {
    static AGES: std::sync::LazyLock<Vec<HeaderValue>> = std::sync::LazyLock::new(|| {
        let mut digits = String::new();
        let mut ends = Vec::with_capacity(3601);
        for s in 0..=3600u64 {
            digits.push_str(&s.to_string());
            ends.push(digits.len());
        }
        // One allocation kept for the life of the process (about 14 KB).
        let digits: &'static str = String::leak(digits);
        let mut start = 0;
        ends.into_iter()
            .map(|end| {
                let v = HeaderValue::from_static(&digits[start..end]);
                start = end;
                v
            })
            .collect()
    });
    match AGES.get(secs as usize) {
        Some(v) => v.clone(),
        None => HeaderValue::from(secs),
    }
}

/// The answer to an L1 hit: prebuilt headers plus `Age`, the body shared, not copied.
pub fn l1_hit(l: &L1Entry, head: bool, now_ms: u64) -> Response<Body> {
    if head {
        let none = MissDetail::default();
        return entry_response(&l.entry, CacheOutcome::HitLocal, none, None, true, now_ms);
    }
    let mut resp = Response::new(Either::Left(Full::new(l.entry.body.clone())));
    *resp.status_mut() = l.entry.status;
    let mut headers = l.hit_headers.clone();
    let age = age_value(l.entry.age_secs(now_ms));
    // In place: `insert` reserves room first, and a cloned map has none to spare (it
    // would grow, a reallocation per hit, even for a name it holds).
    match headers.get_mut(header::AGE) {
        Some(v) => *v = age,
        None => {
            headers.insert(header::AGE, age);
        }
    }
    *resp.headers_mut() = headers;
    resp
}

/// A response replayed from an entry, with `Age`, `Cache-Status`, `X-Cache` and `Via`.
pub fn entry_response(
    entry: &Entry,
    outcome: CacheOutcome,
    miss: MissDetail,
    fwd_status: Option<u16>,
    head: bool,
    now_ms: u64,
) -> Response<Body> {
    let body = if head {
        Bytes::new()
    } else {
        entry.body.clone()
    };
    let mut resp = Response::new(Either::Left(Full::new(body)));
    *resp.status_mut() = entry.status;
    let mut headers = entry.headers.clone();
    if head {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(entry.body.len()));
    }
    if outcome != CacheOutcome::Miss {
        headers.insert(header::AGE, age_value(entry.age_secs(now_ms)));
    }
    if let Ok(v) = HeaderValue::from_str(&cache_status(outcome, miss, fwd_status)) {
        headers.insert(CACHE_STATUS, v);
    }
    headers.insert(X_CACHE, HeaderValue::from_static(outcome.x_cache()));
    headers.append(header::VIA, forward::via(http::Version::HTTP_11));
    *resp.headers_mut() = headers;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn head_replay_keeps_length_without_body() {
        let entry = Entry {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"12345"),
            stored_at_ms: 1_000,
            ttl_ms: 10_000,
            epochs: Vec::new(),
        };
        let r = entry_response(
            &entry,
            CacheOutcome::HitLocal,
            MissDetail::default(),
            None,
            true,
            4_000,
        );
        assert_eq!(r.headers()[header::CONTENT_LENGTH], "5");
        assert_eq!(r.headers()[header::AGE], "3");
        assert_eq!(r.headers()["x-cache"], "HIT-L1");
    }
}
