//! The client's request body as the gateway reads it: a pause longer than
//! `timeouts.client_body` ends it with an error, and its errors say that the client, not
//! the MES, broke the exchange (a `400` or a `408`, never a `502`).
//!
//! It reads and times; what the body is for (buffering a write, streaming an upload) is
//! the paths' business.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

use crate::error::GatewayError;

/// A client's request body with a limit on the pause between two reads that bring bytes.
///
/// The clock runs only while the gateway waits for the client: a reader that does not
/// poll (the MES not taking an upload yet) does not count against the client.
#[derive(Debug)]
pub struct ClientBody {
    inner: Incoming,
    pause: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

/// Why a client's request body ended early. Found again in an upstream error's source
/// chain by [`client_fault`], so a broken upload is reported as the client's fault.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    /// No bytes for `timeouts.client_body`.
    #[error("the request body stalled: no bytes for {0:?} (timeouts.client_body)")]
    Stalled(Duration),
    /// The body broke its framing (a bad chunk) or the connection ended mid-body.
    #[error("request body could not be read: {0}")]
    Read(#[source] hyper::Error),
}

impl ClientBodyError {
    /// The answer this failure gets.
    pub fn to_gateway(&self) -> GatewayError {
        match self {
            Self::Stalled(d) => GatewayError::BodyTimeout(*d),
            Self::Read(e) => {
                // hyper's top-level message alone ("error reading a body") says little.
                let mut text = e.to_string();
                let mut source = std::error::Error::source(e);
                while let Some(s) = source {
                    text.push_str(&format!(": {s}"));
                    source = s.source();
                }
                GatewayError::BadBody(text)
            }
        }
    }
}

/// The client's fault in an error's source chain, if it is there: a pass-through that
/// failed because the client's body did.
pub fn client_fault(e: &(dyn std::error::Error + 'static)) -> Option<GatewayError> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(body) = err.downcast_ref::<ClientBodyError>() {
            return Some(body.to_gateway());
        }
        next = err.source();
    }
    None
}

impl ClientBody {
    /// Wraps `inner`, allowing pauses of at most `pause`.
    pub fn new(inner: Incoming, pause: Duration) -> Self {
        Self {
            inner,
            pause,
            timer: None,
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.timer = None;
            return Poll::Ready(frame.map(|f| f.map_err(ClientBodyError::Read)));
        }
        let pause = this.pause;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(pause)));
        ready!(timer.as_mut().poll(cx));
        this.timer = None;
        Poll::Ready(Some(Err(ClientBodyError::Stalled(pause))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
