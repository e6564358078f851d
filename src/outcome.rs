//! The cache decisions and their names: one `as_str()` feeds the header, the log and the metric.
//!
//! It does not make decisions; the paths ([`crate::read`], [`crate::write`], [`crate::pass`]) do, and report them with these types.

/// Why a request on a cached route was forwarded without consulting the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BypassReason {
    /// A query parameter outside the route's allow-list, with `unknown_query = "bypass"`.
    UnknownQuery,
    /// An allowed query parameter given twice: which one the MES honours is not ours to guess.
    RepeatedQuery,
    /// `Authorization` or `Cookie` on a route with `credentials = "bypass"`.
    Credentials,
    /// The MES answer was too large to buffer for the cache; it was streamed instead.
    TooLarge,
    /// The answer was not shareable (e.g. `Set-Cookie`), so this waiter asked the MES itself.
    NotShareable,
    /// A typed path parameter not spelled canonically (`/api/orders/077`): another
    /// spelling of an entity must not become a second cache identity for it.
    NonCanonical,
    /// A header that asks the MES for another method or path (`X-HTTP-Method-Override`,
    /// `X-Original-URL`): not a plain read of this path, so not the cache's to answer.
    Override,
    /// A compute route's body lacks a key field, or has one of the wrong type: the MES
    /// gives its own answer (a 400, usually), which is not kept.
    KeyFields,
}

impl BypassReason {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownQuery => "unknown-query",
            Self::RepeatedQuery => "repeated-query",
            Self::Credentials => "credentials",
            Self::TooLarge => "too-large",
            Self::NotShareable => "not-shareable",
            Self::NonCanonical => "non-canonical",
            Self::Override => "override",
            Self::KeyFields => "key-fields",
        }
    }
}

/// Why an upstream answer was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoStoreReason {
    /// Status not in the route's `statuses`.
    Status,
    /// `Set-Cookie` present: the answer belongs to one caller.
    SetCookie,
    /// `Cache-Control` with `private`, `no-store` or `no-cache`, or a zero (or unreadable)
    /// `max-age` / `s-maxage`.
    CacheControl,
    /// `Expires` not after the answer's `Date`, or not a date (RFC 9111 §5.3), with no
    /// `max-age` to override it.
    Expired,
    /// `Vary: *`.
    VaryStar,
    /// `Vary` names a header the route does not key on.
    VaryMismatch,
    /// A write to an entity the answer lists landed while it was being fetched.
    Invalidated,
}

impl NoStoreReason {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::SetCookie => "set-cookie",
            Self::CacheControl => "cache-control",
            Self::Expired => "expired",
            Self::VaryStar => "vary-star",
            Self::VaryMismatch => "vary-mismatch",
            Self::Invalidated => "invalidated",
        }
    }

    /// Whether the answer may still be handed to concurrent waiters of the same key.
    /// Only a status (or a write that raced the fill: its waiters joined before the
    /// write) makes an answer unstorable yet right for every caller of the flight.
    pub fn shareable(self) -> bool {
        matches!(self, Self::Status | Self::Invalidated)
    }
}

/// What the cache did for one request on a cached route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheOutcome {
    /// Served from the in-process tier.
    HitLocal,
    /// Served from Redis (and copied into the local tier).
    HitShared,
    /// Composed from the status index (a ready partition), no tier or MES asked.
    HitIndex,
    /// Fetched from the MES (by this request or a single-flight it joined).
    Miss,
    /// The MES failed; served a stale entry within `stale_if_error`.
    Stale,
    /// Not looked up.
    Bypass(BypassReason),
}

impl CacheOutcome {
    /// Stable lowercase name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HitLocal => "hit_l1",
            Self::HitShared => "hit_l2",
            Self::HitIndex => "hit_index",
            Self::Miss => "miss",
            Self::Stale => "stale",
            Self::Bypass(_) => "bypass",
        }
    }

    /// The `X-Cache` header value.
    pub fn x_cache(self) -> &'static str {
        match self {
            Self::HitLocal => "HIT-L1",
            Self::HitShared => "HIT-L2",
            Self::HitIndex => "HIT-INDEX",
            Self::Miss => "MISS",
            Self::Stale => "STALE",
            Self::Bypass(_) => "BYPASS",
        }
    }
}

/// `X-Cache`, parsed once (a `&str` name is parsed on every use).
pub const X_CACHE: http::HeaderName = http::HeaderName::from_static("x-cache");

/// `Cache-Status` (RFC 9211).
pub const CACHE_STATUS: http::HeaderName = http::HeaderName::from_static("cache-status");

/// Extra facts for the `Cache-Status` header of a miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MissDetail {
    /// The answer was stored.
    pub stored: bool,
    /// This request waited on another request's fetch.
    pub collapsed: bool,
    /// Why it was not stored, when it was not.
    pub no_store: Option<NoStoreReason>,
}

/// The `Cache-Status` of an index hit served while the MES is unreachable: the answer
/// is still exact (the index needs no MES to know it), and says it was not checked.
pub const INDEX_WITHOUT_MES: http::HeaderValue =
    http::HeaderValue::from_static("mesgate; hit; detail=index-mes-unreachable");

/// The RFC 9211 `Cache-Status` value for an outcome.
pub fn cache_status(outcome: CacheOutcome, miss: MissDetail, fwd_status: Option<u16>) -> String {
    match outcome {
        CacheOutcome::HitLocal => "mesgate; hit; detail=l1".into(),
        CacheOutcome::HitShared => "mesgate; hit; detail=l2".into(),
        CacheOutcome::HitIndex => "mesgate; hit; detail=index".into(),
        CacheOutcome::Stale => match fwd_status {
            Some(s) => format!("mesgate; fwd=stale; fwd-status={s}; detail=stale-if-error"),
            None => "mesgate; fwd=stale; detail=stale-if-error".into(),
        },
        CacheOutcome::Bypass(r) => format!("mesgate; fwd=bypass; detail={}", r.as_str()),
        CacheOutcome::Miss => miss_status(miss, fwd_status),
    }
}

fn miss_status(miss: MissDetail, fwd_status: Option<u16>) -> String {
    let mut s = String::from("mesgate; fwd=miss");
    if let Some(code) = fwd_status {
        s.push_str(&format!("; fwd-status={code}"));
    }
    if miss.stored {
        s.push_str("; stored");
    }
    if miss.collapsed {
        s.push_str("; collapsed");
    }
    if let Some(r) = miss.no_store {
        s.push_str("; detail=no-store-");
        s.push_str(r.as_str());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_follow_rfc9211_shape() {
        let d = MissDetail::default();
        assert_eq!(
            cache_status(CacheOutcome::HitLocal, d, None),
            "mesgate; hit; detail=l1"
        );
        assert_eq!(
            cache_status(CacheOutcome::HitShared, d, None),
            "mesgate; hit; detail=l2"
        );
        let stored = MissDetail {
            stored: true,
            collapsed: true,
            no_store: None,
        };
        assert_eq!(
            cache_status(CacheOutcome::Miss, stored, Some(200)),
            "mesgate; fwd=miss; fwd-status=200; stored; collapsed"
        );
        let not = MissDetail {
            no_store: Some(NoStoreReason::SetCookie),
            ..d
        };
        assert_eq!(
            cache_status(CacheOutcome::Miss, not, Some(200)),
            "mesgate; fwd=miss; fwd-status=200; detail=no-store-set-cookie"
        );
        assert_eq!(
            cache_status(CacheOutcome::Bypass(BypassReason::Credentials), d, None),
            "mesgate; fwd=bypass; detail=credentials"
        );
        assert_eq!(
            cache_status(CacheOutcome::Stale, d, Some(503)),
            "mesgate; fwd=stale; fwd-status=503; detail=stale-if-error"
        );
    }

    #[test]
    fn names_are_distinct() {
        let all = [
            CacheOutcome::HitLocal,
            CacheOutcome::HitShared,
            CacheOutcome::Miss,
            CacheOutcome::Stale,
            CacheOutcome::Bypass(BypassReason::Credentials),
        ];
        let names: std::collections::HashSet<_> = all.iter().map(|o| o.as_str()).collect();
        let x: std::collections::HashSet<_> = all.iter().map(|o| o.x_cache()).collect();
        assert_eq!(names.len(), all.len());
        assert_eq!(x.len(), all.len());
    }
}
