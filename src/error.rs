//! The top-level error and its one mapping to an `application/problem+json` response.
//!
//! Cache-tier errors never get here: they degrade to misses in [`crate::read`].

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

/// Who is at fault, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The MES failed or was unreachable.
    Upstream,
    /// The client sent something we will not handle.
    Client,
    /// A bug or a lost task on our side.
    Internal,
}

/// Everything that can turn a request into an error response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// TCP connect to the MES failed or timed out.
    #[error("cannot connect to the MES: {0}")]
    UpstreamConnect(String),
    /// The MES did not answer within a timeout (named).
    #[error("the MES did not answer within timeouts.{0}")]
    UpstreamTimeout(&'static str),
    /// The MES broke the protocol or the connection mid-answer.
    #[error("the MES answer failed: {0}")]
    UpstreamProtocol(String),
    /// The request target could not be turned into an upstream URI.
    #[error("bad request target: {0}")]
    BadTarget(String),
    /// The task fetching for this key ended without an answer.
    #[error("the shared fetch for this request was lost")]
    FetchLost,
    /// A write's body is larger than its route's `invalidate.max_body`.
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(usize),
    /// A request body could not be read from the client (bad framing, connection lost).
    #[error("request body could not be read: {0}")]
    BadBody(String),
    /// The client paused its request body longer than `timeouts.client_body`.
    #[error("the request body stalled: no bytes for {0:?} (timeouts.client_body)")]
    BodyTimeout(std::time::Duration),
    /// `Transfer-Encoding` names a coding other than `chunked`: mesgate passes bodies on
    /// chunked and cannot pass the coding with them (RFC 9112 §6.1: 501).
    #[error("transfer coding {0:?} is not supported; send the body with chunked only")]
    UnsupportedCoding(String),
    /// An HTTP/1.1 request without `Host`, or any request with more than one
    /// (RFC 9112 §3.2: 400).
    #[error("{0}")]
    BadHost(&'static str),
    /// All `limits.max_connections` connections are in the middle of a request.
    #[error("all {0} connections are busy; try again")]
    TooManyConnections(usize),
    /// `GET /mesgate/operations/{id}` with an id mesgate never gives out.
    #[error("{0:?} is not an operation id (32 lowercase hex digits)")]
    BadOperationId(String),
    /// No record of that operation: never accepted, or its record expired
    /// (`operations.keep`).
    #[error("no operation {0} (unknown, or its record expired)")]
    OperationNotFound(String),
    /// The operations' records are in Redis, and Redis did not answer.
    #[error("operation records cannot be read now: {0}")]
    OperationsUnavailable(String),
    /// Events to a caller with credentials: the lists they describe are shared only
    /// between callers without them.
    #[error(
        "events are not sent to requests with Authorization or Cookie: the lists they describe are not shared with them"
    )]
    EventsForbidden,
    /// The event stream is in Redis, and Redis is not there.
    #[error("events cannot be streamed now: {0}")]
    EventsUnavailable(String),
    /// Every one of this instance's `events.max_subscribers` subscriptions is taken.
    #[error("all {0} event subscriptions of this instance are taken; try again later")]
    EventsFull(usize),
}

impl GatewayError {
    /// The status sent to the client.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UpstreamConnect(_) | Self::UpstreamProtocol(_) | Self::FetchLost => {
                StatusCode::BAD_GATEWAY
            }
            Self::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::BadTarget(_) | Self::BadBody(_) | Self::BadHost(_) | Self::BadOperationId(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::OperationNotFound(_) => StatusCode::NOT_FOUND,
            Self::EventsForbidden => StatusCode::FORBIDDEN,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::UnsupportedCoding(_) => StatusCode::NOT_IMPLEMENTED,
            Self::TooManyConnections(_)
            | Self::OperationsUnavailable(_)
            | Self::EventsUnavailable(_)
            | Self::EventsFull(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Stable lowercase name (the problem `type` suffix, log field, metric label).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::UpstreamConnect(_) => "upstream-unreachable",
            Self::UpstreamTimeout(_) => "upstream-timeout",
            Self::UpstreamProtocol(_) => "upstream-protocol",
            Self::BadTarget(_) => "bad-target",
            Self::FetchLost => "fetch-lost",
            Self::BodyTooLarge(_) => "body-too-large",
            Self::BadBody(_) => "bad-body",
            Self::BodyTimeout(_) => "body-timeout",
            Self::UnsupportedCoding(_) => "unsupported-transfer-coding",
            Self::BadHost(_) => "bad-host",
            Self::TooManyConnections(_) => "too-many-connections",
            Self::BadOperationId(_) => "bad-operation-id",
            Self::OperationNotFound(_) => "operation-not-found",
            Self::OperationsUnavailable(_) => "operations-unavailable",
            Self::EventsForbidden => "events-forbidden",
            Self::EventsUnavailable(_) => "events-unavailable",
            Self::EventsFull(_) => "events-full",
        }
    }

    /// Who is at fault.
    pub fn fault(&self) -> Fault {
        match self {
            Self::UpstreamConnect(_) | Self::UpstreamTimeout(_) | Self::UpstreamProtocol(_) => {
                Fault::Upstream
            }
            Self::BadTarget(_)
            | Self::BodyTooLarge(_)
            | Self::BadBody(_)
            | Self::BodyTimeout(_)
            | Self::UnsupportedCoding(_)
            | Self::BadHost(_)
            | Self::BadOperationId(_)
            | Self::OperationNotFound(_)
            | Self::EventsForbidden => Fault::Client,
            Self::FetchLost
            | Self::TooManyConnections(_)
            | Self::OperationsUnavailable(_)
            | Self::EventsUnavailable(_)
            | Self::EventsFull(_) => Fault::Internal,
        }
    }

    /// The RFC 9457 problem response.
    pub fn to_response(&self) -> Response<Full<Bytes>> {
        let status = self.status();
        let body = serde_json::json!({
            "type": format!("urn:mesgate:problem:{}", self.as_str()),
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": self.to_string(),
        });
        let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn every_variant_maps_to_one_status_and_a_problem_body() {
        let rows = [
            (
                GatewayError::UpstreamConnect("refused".into()),
                502,
                Fault::Upstream,
            ),
            (
                GatewayError::UpstreamTimeout("response_header"),
                504,
                Fault::Upstream,
            ),
            (
                GatewayError::UpstreamProtocol("reset".into()),
                502,
                Fault::Upstream,
            ),
            (GatewayError::BadTarget("x".into()), 400, Fault::Client),
            (GatewayError::FetchLost, 502, Fault::Internal),
            (GatewayError::BodyTooLarge(10), 413, Fault::Client),
            (GatewayError::BadBody("reset".into()), 400, Fault::Client),
            (
                GatewayError::BodyTimeout(std::time::Duration::from_secs(30)),
                408,
                Fault::Client,
            ),
            (
                GatewayError::UnsupportedCoding("gzip".into()),
                501,
                Fault::Client,
            ),
            (GatewayError::BadHost("no Host"), 400, Fault::Client),
            (GatewayError::TooManyConnections(96), 503, Fault::Internal),
            (GatewayError::BadOperationId("x".into()), 400, Fault::Client),
            (
                GatewayError::OperationNotFound("ab".into()),
                404,
                Fault::Client,
            ),
            (
                GatewayError::OperationsUnavailable("down".into()),
                503,
                Fault::Internal,
            ),
            (GatewayError::EventsForbidden, 403, Fault::Client),
            (
                GatewayError::EventsUnavailable("down".into()),
                503,
                Fault::Internal,
            ),
            (GatewayError::EventsFull(2), 503, Fault::Internal),
        ];
        for (err, status, fault) in rows {
            assert_eq!(err.fault(), fault);
            let resp = err.to_response();
            assert_eq!(resp.status().as_u16(), status);
            assert_eq!(
                resp.headers()[header::CONTENT_TYPE],
                "application/problem+json"
            );
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["status"], status);
            assert_eq!(
                json["type"],
                format!("urn:mesgate:problem:{}", err.as_str())
            );
        }
    }
}
