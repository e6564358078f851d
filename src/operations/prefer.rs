//! The `Prefer` request header (RFC 7240): what a client asks of a write, read once.
//!
//! It owns the parsing only; what the answer does with it is [`super`]'s and the
//! gateway's.

use std::time::Duration;

use http::HeaderMap;

/// What the client prefers for a write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prefer {
    /// `respond-async`: answer `202 Accepted` now, the outcome at the operation's URL.
    pub respond_async: bool,
    /// `wait=N`: an answer is wanted within N seconds; a synchronous one if the MES
    /// answers by then.
    pub wait: Option<Duration>,
}

impl Prefer {
    /// Reads every `Prefer` header (comma-separated preferences, each `token[=value]`
    /// with `;` parameters, which are ignored). Unknown preferences are ignored, as the
    /// RFC asks; a malformed `wait` is ignored too (a preference, never an error).
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut out = Self::default();
        let values = headers.get_all("prefer").into_iter();
        let text = values.filter_map(|v| v.to_str().ok());
        for pref in text.flat_map(|t| t.split(',')) {
            let head = pref.split(';').next().unwrap_or("").trim();
            let (name, value) = match head.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (head, None),
            };
            if name.eq_ignore_ascii_case("respond-async") {
                out.respond_async = true;
            } else if name.eq_ignore_ascii_case("wait") {
                // The first `wait` wins (RFC 7240 §2: later duplicates are ignored).
                let secs = value.and_then(|v| v.parse::<u64>().ok());
                out.wait = out.wait.or(secs.map(Duration::from_secs));
            }
        }
        out
    }

    /// Whether the write is to be accepted as an operation.
    pub fn is_async(&self) -> bool {
        self.respond_async || self.wait.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(values: &[&str]) -> Prefer {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("prefer", v.parse().unwrap());
        }
        Prefer::parse(&h)
    }

    #[test]
    fn reads_respond_async_and_wait_in_any_spelling() {
        assert_eq!(parse(&[]), Prefer::default());
        assert!(!parse(&[]).is_async());
        let p = parse(&["respond-async"]);
        assert!(p.respond_async && p.wait.is_none() && p.is_async());
        let p = parse(&["Respond-Async, wait=5"]);
        assert!(p.respond_async);
        assert_eq!(p.wait, Some(Duration::from_secs(5)));
        let p = parse(&["return=minimal", "wait=\"3\"; x=1", "wait=9"]);
        assert!(!p.respond_async);
        assert_eq!(p.wait, Some(Duration::from_secs(3)));
    }

    #[test]
    fn malformed_or_unknown_preferences_are_ignored() {
        assert_eq!(parse(&["wait=soon"]), Prefer::default());
        assert_eq!(parse(&["handling=lenient", ",,"]), Prefer::default());
        assert_eq!(parse(&["wait=-1"]), Prefer::default());
    }
}
