//! A retried write's conflict checked against the entity's state: at-least-once
//! execution of an accepted operation made harmless.
//!
//! It owns only that check; the write itself is [`super`]'s.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::{BodyExt, Either, Full, Limited};
use serde_json::Value;
use tracing::debug;

use super::{WriteFacts, Writer};
use crate::config::InvalidateRule;

/// Request headers that describe the write's body, not the caller: not sent with the read.
const BODY_HEADERS: [header::HeaderName; 3] = [
    header::CONTENT_LENGTH,
    header::CONTENT_TYPE,
    header::TRANSFER_ENCODING,
];

impl Writer {
    /// A retried write that the MES answered `409 Conflict` ("already in that status")
    /// was most likely applied by an earlier attempt whose instance died before it
    /// recorded the outcome. It counts as applied when the entity, read from the MES at
    /// the rule's `represents` path with the caller's headers, shows every top-level
    /// field of the request body: that read is then the write's answer (the index moves
    /// and the invalidation runs with it, which the dead attempt may never have done).
    /// `None`: not shown (or not checkable): the conflict stands.
    pub(super) async fn confirm(
        &self,
        rule: &InvalidateRule,
        facts: &WriteFacts<'_>,
        mut headers: HeaderMap,
        remote: SocketAddr,
    ) -> Option<(http::response::Parts, Option<Bytes>)> {
        let path = rule
            .represents
            .as_ref()?
            .render(&|s, f| facts.lookup(s, f))?;
        let wanted = facts.request.as_ref()?.as_object()?;
        if wanted.is_empty() {
            return None;
        }
        for h in &BODY_HEADERS {
            headers.remove(h);
        }
        headers.remove("prefer");
        let mut req = Request::get(path.as_str())
            .body(Either::Right(Full::new(Bytes::new())))
            .ok()?;
        *req.headers_mut() = headers;
        let resp = self.pass.forward(req, remote).await.ok()?;
        if resp.status() != StatusCode::OK {
            return None;
        }
        let (parts, body) = resp.into_parts();
        let bytes = Limited::new(body, rule.max_body).collect().await.ok()?;
        let bytes = bytes.to_bytes();
        let state: Value = serde_json::from_slice(&bytes).ok()?;
        let shows = wanted.iter().all(|(k, v)| state.get(k) == Some(v));
        debug!(%path, shows, "retried write's conflict checked");
        shows.then_some((parts, Some(bytes)))
    }
}
