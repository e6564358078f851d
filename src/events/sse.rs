//! One subscriber of `GET /mesgate/events`: access, filters, resume by `Last-Event-ID`,
//! the `reset` event, heartbeats, and the Server-Sent Events framing.
//!
//! It owns what one subscriber is sent; the stream and the fan-out are [`super`]'s.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, header};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::broadcast;
use tracing::debug;

use super::{Event, Events, Live, Shared, Since, parse_id};
use crate::error::GatewayError;

/// The body of an event stream (or of its refusal).
pub type EventBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Which events a subscriber asked for (`?status=A,B&order=7&operation=…`); empty: all.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Filter {
    statuses: Vec<String>,
    orders: Vec<String>,
    operations: Vec<String>,
}

impl Filter {
    /// From the query string; unknown parameters are ignored.
    pub fn parse(query: Option<&str>) -> Self {
        let mut f = Self::default();
        let pairs = form_urlencoded::parse(query.unwrap_or("").as_bytes());
        for (k, v) in pairs {
            let list = match k.as_ref() {
                "status" => &mut f.statuses,
                "order" => &mut f.orders,
                "operation" => &mut f.operations,
                _ => continue,
            };
            list.extend(v.split(',').filter(|s| !s.is_empty()).map(str::to_owned));
        }
        f
    }

    /// Whether `e` passes every filter given.
    pub fn matches(&self, e: &Event) -> bool {
        let any = |list: &[String], values: &[&str]| {
            list.is_empty()
                || values
                    .iter()
                    .any(|v| !v.is_empty() && list.iter().any(|l| l == v))
        };
        any(&self.statuses, &[&e.status, &e.previous])
            && any(&self.orders, &[&e.order])
            && any(&self.operations, &[&e.operation])
    }
}

/// `id:`, `event:` and `data:` lines of one event (`data` is compact JSON: one line).
pub fn frame(e: &Event) -> Bytes {
    Bytes::from(format!(
        "id: {}\nevent: {}\ndata: {}\n\n",
        e.id, e.kind, e.data
    ))
}

impl Events {
    /// Answers `GET /mesgate/events`: a stream of the events `query` asks for, resumed
    /// after `Last-Event-ID` when given. Refused (problem JSON) to a caller with
    /// credentials, since lists are shared only between callers without them (the
    /// routes' `credentials` policies); `503` without Redis.
    pub async fn subscribe(&self, headers: &HeaderMap, query: Option<&str>) -> Response<EventBody> {
        if headers.contains_key(header::AUTHORIZATION) || headers.contains_key(header::COOKIE) {
            return refusal(&GatewayError::EventsForbidden);
        }
        let Some(shared) = self.shared.clone() else {
            return refusal(&GatewayError::EventsUnavailable(
                "no [redis] configured".into(),
            ));
        };
        // Counted before it is let in: the cap holds however many arrive at once.
        let cap = shared.cap.load(Ordering::Relaxed);
        if shared.subscribers.fetch_add(1, Ordering::Relaxed) >= cap {
            shared.subscribers.fetch_sub(1, Ordering::Relaxed);
            shared.refused.fetch_add(1, Ordering::Relaxed);
            return refusal(&GatewayError::EventsFull(cap));
        }
        // Subscribed before the history is read: nothing falls between the two.
        let rx = shared.tx.subscribe();
        let mut sub = Subscriber::new(shared.clone(), rx, Filter::parse(query));
        let last = headers.get("last-event-id").and_then(|v| v.to_str().ok());
        if let Some(after) = last.map(str::trim).filter(|s| !s.is_empty()) {
            match shared.since(after).await {
                Ok(Since::Backlog(events)) => events.iter().for_each(|e| sub.push(e)),
                Ok(Since::Reset { last }) => sub.reset(last),
                Err(e) => return refusal(&GatewayError::EventsUnavailable(e.to_string())),
            }
        }
        let stream = futures_util::stream::unfold(sub, Subscriber::next);
        let body = StreamBody::new(stream).boxed();
        let mut resp = Response::new(body);
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert("x-accel-buffering", HeaderValue::from_static("no"));
        resp
    }
}

fn refusal(e: &GatewayError) -> Response<EventBody> {
    let mut resp = e.to_response();
    if matches!(e, GatewayError::EventsFull(_)) {
        // A subscriber comes back by itself (EventSource reconnects): not at once.
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    resp.map(|b| b.map_err(|never: Infallible| match never {}).boxed())
}

type Item = Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>;

/// One subscriber's state: what is queued for it, where it is in the stream.
struct Subscriber {
    shared: Arc<Shared>,
    rx: broadcast::Receiver<Arc<Live>>,
    filter: Filter,
    queued: VecDeque<Bytes>,
    /// The newest id sent or skipped: a live event not newer was in the backlog.
    last: Option<(u64, u64)>,
    heartbeat: tokio::time::Interval,
    closing: tokio::sync::watch::Receiver<bool>,
    ended: bool,
}

impl Subscriber {
    /// A subscriber already counted in `shared.subscribers` (its drop uncounts it).
    fn new(shared: Arc<Shared>, rx: broadcast::Receiver<Arc<Live>>, filter: Filter) -> Self {
        let every = shared.config.heartbeat;
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let retry = format!("retry: {}\n\n", shared.config.retry.as_millis());
        Self {
            closing: shared.closing.subscribe(),
            shared,
            rx,
            filter,
            queued: VecDeque::from([Bytes::from(retry)]),
            last: None,
            heartbeat,
            ended: false,
        }
    }

    fn push(&mut self, e: &Event) {
        self.last = parse_id(&e.id).or(self.last);
        if self.filter.matches(e) {
            self.shared.delivered.fetch_add(1, Ordering::Relaxed);
            self.queued.push_back(frame(e));
        }
    }

    fn reset(&mut self, last: Option<String>) {
        let id = last.as_deref().unwrap_or("0-0");
        self.last = last.as_deref().and_then(parse_id);
        let text = format!(
            "id: {id}\nevent: reset\ndata: {{\"reason\":\"history lost: reload, then follow from here\"}}\n\n"
        );
        self.queued.push_back(Bytes::from(text));
    }

    async fn next(mut self) -> Option<(Item, Self)> {
        if self.ended {
            return None;
        }
        if let Some(b) = self.queued.pop_front() {
            return Some((Ok(Frame::data(b)), self));
        }
        loop {
            tokio::select! {
                got = self.rx.recv() => match got {
                    Ok(live) => {
                        let id = parse_id(&live.event.id);
                        if id.is_some() && id <= self.last {
                            continue;
                        }
                        self.last = id.or(self.last);
                        if self.filter.matches(&live.event) {
                            self.shared.delivered.fetch_add(1, Ordering::Relaxed);
                            return Some((Ok(Frame::data(live.frame.clone())), self));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        // Buffering for it without bound is what must not happen: an
                        // error aborts the connection; it reconnects with its last id.
                        debug!(missed = n, "slow event subscriber dropped");
                        self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                        self.ended = true;
                        return Some((Err("event subscriber fell behind".into()), self));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = self.heartbeat.tick() => {
                    return Some((Ok(Frame::data(Bytes::from_static(b": keep-alive\n\n"))), self));
                }
                _ = self.closing.changed() => return None,
            }
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.shared.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(status: &str, previous: &str, order: &str) -> Event {
        Event {
            id: "1-0".into(),
            kind: "order".into(),
            data: "{}".into(),
            order: order.into(),
            status: status.into(),
            previous: previous.into(),
            operation: String::new(),
        }
    }

    #[test]
    fn filters_match_new_or_previous_status_and_ids() {
        let e = event("SHIPPED", "MANUFACTURING_COMPLETED", "7");
        assert!(Filter::parse(None).matches(&e));
        assert!(Filter::parse(Some("status=SHIPPED")).matches(&e));
        assert!(Filter::parse(Some("status=MANUFACTURING_COMPLETED")).matches(&e));
        assert!(Filter::parse(Some("status=SUBMITTED,SHIPPED&order=7")).matches(&e));
        assert!(!Filter::parse(Some("status=SUBMITTED")).matches(&e));
        assert!(!Filter::parse(Some("order=8")).matches(&e));
        assert!(!Filter::parse(Some("operation=abc")).matches(&e));
    }

    #[test]
    fn an_event_is_one_sse_record() {
        let e = event("SHIPPED", "", "7");
        assert_eq!(
            frame(&e),
            Bytes::from_static(b"id: 1-0\nevent: order\ndata: {}\n\n")
        );
    }
}
