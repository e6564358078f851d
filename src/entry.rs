//! A cached response and its versioned wire codec for the shared tier.
//!
//! It does not decide freshness against a route's policy ([`crate::read`] does) and it
//! does not talk to Redis ([`crate::l2`] does).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// Version byte of the codec; bump it when the layout changes, old entries then read as misses.
pub const CODEC_VERSION: u8 = 2;

/// One stored answer of the MES: everything needed to replay it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Status to replay.
    pub status: StatusCode,
    /// End-to-end headers to replay (no hop-by-hop, no `Content-Length`, no `Age`).
    pub headers: HeaderMap,
    /// The body, shared (never copied) between tiers and responses.
    pub body: Bytes,
    /// When the MES answered, ms since the epoch; `Age` is computed from it.
    pub stored_at_ms: u64,
    /// Freshness lifetime in the tier it was stored in, ms.
    pub ttl_ms: u64,
    /// The shared-tier epochs of its families when its fetch started; it is valid in
    /// Redis only while they are unchanged (empty outside the shared tier).
    pub epochs: Vec<u64>,
}

impl Entry {
    /// Whether the entry is fresh at `now_ms`.
    pub fn is_fresh(&self, now_ms: u64) -> bool {
        now_ms < self.stored_at_ms.saturating_add(self.ttl_ms)
    }

    /// Age in whole seconds at `now_ms` (RFC 9111 `Age`).
    pub fn age_secs(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.stored_at_ms) / 1000
    }

    /// Approximate memory cost, for the L1 weigher.
    pub fn weight(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        self.body.len() + headers + 128
    }

    /// Serializes for the shared tier.
    ///
    /// Layout: version u8, status u16, stored_at u64, ttl u64, epoch count u8 and the
    /// epochs as u64, header count u16, then
    /// (name len u16, name, value len u32, value) per header, then the body to the end.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.weight());
        buf.put_u8(CODEC_VERSION);
        buf.put_u16(self.status.as_u16());
        buf.put_u64(self.stored_at_ms);
        buf.put_u64(self.ttl_ms);
        let epochs = &self.epochs[..self.epochs.len().min(u8::MAX as usize)];
        buf.put_u8(epochs.len() as u8);
        for e in epochs {
            buf.put_u64(*e);
        }
        buf.put_u16(self.headers.len().min(u16::MAX as usize) as u16);
        for (name, value) in self.headers.iter().take(u16::MAX as usize) {
            buf.put_u16(name.as_str().len() as u16);
            buf.put_slice(name.as_str().as_bytes());
            buf.put_u32(value.len() as u32);
            buf.put_slice(value.as_bytes());
        }
        buf.put_slice(&self.body);
        buf.freeze()
    }

    /// Parses what [`Entry::encode`] wrote; anything else is a [`CodecError`].
    pub fn decode(mut buf: Bytes) -> Result<Self, CodecError> {
        need(&buf, 1 + 2 + 8 + 8 + 1)?;
        let version = buf.get_u8();
        if version != CODEC_VERSION {
            return Err(CodecError::Version(version));
        }
        let status = StatusCode::from_u16(buf.get_u16()).map_err(|_| CodecError::Status)?;
        let stored_at_ms = buf.get_u64();
        let ttl_ms = buf.get_u64();
        let n = buf.get_u8() as usize;
        need(&buf, n * 8 + 2)?;
        let epochs = (0..n).map(|_| buf.get_u64()).collect();
        let count = buf.get_u16() as usize;
        let mut headers = HeaderMap::with_capacity(count);
        for _ in 0..count {
            let (name, value) = decode_header(&mut buf)?;
            headers.append(name, value);
        }
        Ok(Self {
            status,
            headers,
            body: buf,
            stored_at_ms,
            ttl_ms,
            epochs,
        })
    }
}

fn need(buf: &Bytes, n: usize) -> Result<(), CodecError> {
    if buf.remaining() < n {
        return Err(CodecError::Truncated);
    }
    Ok(())
}

fn decode_header(buf: &mut Bytes) -> Result<(HeaderName, HeaderValue), CodecError> {
    need(buf, 2)?;
    let n = buf.get_u16() as usize;
    need(buf, n)?;
    let name = HeaderName::from_bytes(&buf.split_to(n)).map_err(|_| CodecError::Header)?;
    need(buf, 4)?;
    let v = buf.get_u32() as usize;
    need(buf, v)?;
    let value = HeaderValue::from_maybe_shared(buf.split_to(v)).map_err(|_| CodecError::Header)?;
    Ok((name, value))
}

/// Why bytes from the shared tier could not be read as an entry (treated as a miss).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Written by another codec version.
    #[error("codec version {0} is not {CODEC_VERSION}")]
    Version(u8),
    /// Ends too early.
    #[error("entry is truncated")]
    Truncated,
    /// Status out of range.
    #[error("entry has a bad status")]
    Status,
    /// Header name or value not valid.
    #[error("entry has a bad header")]
    Header,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Entry {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        Entry {
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(b"{\"items\":[]}"),
            stored_at_ms: 1_700_000_000_000,
            ttl_ms: 5_000,
            epochs: vec![3, 0, 7],
        }
    }

    #[test]
    fn round_trips_including_repeated_headers() {
        let e = sample();
        let back = Entry::decode(e.encode()).unwrap();
        assert_eq!(back, e);
        let multi: Vec<_> = back.headers.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["a", "b"]);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = sample().encode();
        let header_end = bytes.len() - sample().body.len();
        for cut in 0..header_end {
            assert!(Entry::decode(bytes.slice(..cut)).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn other_versions_and_garbage_are_rejected() {
        let mut raw = sample().encode().to_vec();
        raw[0] = 9;
        assert_eq!(Entry::decode(raw.into()), Err(CodecError::Version(9)));
        assert!(Entry::decode(Bytes::from_static(b"GET / HTTP/1.1")).is_err());
    }

    #[test]
    fn freshness_and_age_are_pure_functions_of_now() {
        let e = sample();
        assert!(e.is_fresh(e.stored_at_ms + 4_999));
        assert!(!e.is_fresh(e.stored_at_ms + 5_000));
        assert_eq!(e.age_secs(e.stored_at_ms + 2_999), 2);
    }
}
