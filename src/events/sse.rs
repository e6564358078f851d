//! One subscriber of `GET /mesgate/events`: access, filters, resume by `Last-Event-ID`,
//! the `reset` event, heartbeats, and the Server-Sent Events framing.
//!
//! It owns what one subscriber is sent; the stream and the fan-out are [`super`]'s.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Response, header};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
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
        // After joining the channel: a drain that began since sent `Live::Close` to it.
        if shared.closed.load(Ordering::SeqCst) {
            // Draining: the `retry:` hint and the end, so the client comes back (to
            // another instance); a refusal would stop an `EventSource` for good.
            sub.end = Some(End::Clean);
        }
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

/// The most bytes of waiting events sent as one frame: a subscriber that fell behind
/// catches up with one write per this much, not one per event.
const BATCH: usize = 64 << 10;

/// One subscriber's state: what is queued for it, where it is in the stream.
struct Subscriber {
    shared: Arc<Shared>,
    rx: broadcast::Receiver<Arc<Live>>,
    filter: Filter,
    queued: VecDeque<Bytes>,
    /// The newest id sent or skipped: a live event not newer was in the backlog.
    last: Option<(u64, u64)>,
    heartbeat: tokio::time::Interval,
    /// Set when the stream ends, once what is queued is sent.
    end: Option<End>,
}

/// How a stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The body ends (draining, or the channel is gone).
    Clean,
    /// The subscriber fell behind: an error, which aborts the connection.
    Behind,
}

impl Subscriber {
    /// A subscriber already counted in `shared.subscribers` (its drop uncounts it).
    fn new(shared: Arc<Shared>, rx: broadcast::Receiver<Arc<Live>>, filter: Filter) -> Self {
        let every = shared.config.heartbeat;
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let retry = format!("retry: {}\n\n", shared.config.retry.as_millis());
        Self {
            shared,
            rx,
            filter,
            queued: VecDeque::from([Bytes::from(retry)]),
            last: None,
            heartbeat,
            end: None,
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

    /// The next frame: what is queued, else the events waiting (as one frame), else a
    /// heartbeat when it is due; `None` once the stream has ended.
    async fn next(mut self) -> Option<(Item, Self)> {
        loop {
            if let Some(b) = self.queued.pop_front() {
                return Some((Ok(Frame::data(b)), self));
            }
            match self.end {
                Some(End::Clean) => return None,
                Some(End::Behind) => {
                    self.end = Some(End::Clean);
                    return Some((Err("event subscriber fell behind".into()), self));
                }
                None => {}
            }
            // Two things to wait on, both this subscriber's own or its channel's: the
            // drain comes through the channel (`Live::Close`).
            tokio::select! {
                got = self.rx.recv() => {
                    if let Some(first) = self.take(got) {
                        let frame = self.batch(first);
                        return Some((Ok(Frame::data(frame)), self));
                    }
                }
                _ = self.heartbeat.tick() => {
                    return Some((Ok(Frame::data(Bytes::from_static(b": keep-alive\n\n"))), self));
                }
            }
        }
    }

    /// `first` and the events already waiting for this subscriber, as one frame (up to
    /// [`BATCH`] bytes): one write to its socket instead of one per event, so one that
    /// fell behind costs less to catch up, not more.
    fn batch(&mut self, first: Bytes) -> Bytes {
        let mut buf: Option<BytesMut> = None;
        while self.end.is_none() && buf.as_ref().map_or(first.len(), BytesMut::len) < BATCH {
            let got = match self.rx.try_recv() {
                Ok(live) => Ok(live),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                Err(TryRecvError::Closed) => Err(RecvError::Closed),
            };
            if let Some(more) = self.take(got) {
                buf.get_or_insert_with(|| BytesMut::from(&first[..]))
                    .extend_from_slice(&more);
            }
        }
        buf.map_or(first, BytesMut::freeze)
    }

    /// The record to send for what the channel gave, if any; sets `end` when the stream
    /// must end.
    fn take(&mut self, got: Result<Arc<Live>, RecvError>) -> Option<Bytes> {
        match got {
            Ok(live) => match &*live {
                Live::Event { event, frame } => {
                    let id = parse_id(&event.id);
                    if id.is_some() && id <= self.last {
                        return None;
                    }
                    self.last = id.or(self.last);
                    if !self.filter.matches(event) {
                        return None;
                    }
                    self.shared.delivered.fetch_add(1, Ordering::Relaxed);
                    Some(frame.clone())
                }
                Live::Close => {
                    self.end = Some(End::Clean);
                    None
                }
            },
            Err(RecvError::Lagged(n)) => {
                // Buffering for it without bound is what must not happen: an error
                // aborts the connection; it reconnects with its last id.
                debug!(missed = n, "slow event subscriber dropped");
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                self.end = Some(End::Behind);
                None
            }
            Err(RecvError::Closed) => {
                self.end = Some(End::Clean);
                None
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

    /// The events of a gateway whose Redis is never reached (nothing here reads it).
    fn events() -> Events {
        let text = "upstream = \"http://127.0.0.1:9\"\n[redis]\nurl = \"redis://127.0.0.1:9\"\n";
        let config: crate::config::Config = text.parse().unwrap();
        let l2 = crate::l2::L2::new(config.redis.as_ref().unwrap()).unwrap();
        Events::new(Some(&l2), config.events)
    }

    fn live(id: &str, status: &str) -> Arc<Live> {
        let event = Event {
            id: id.into(),
            ..event(status, "", "7")
        };
        let frame = frame(&event);
        Arc::new(Live::Event { event, frame })
    }

    #[tokio::test]
    async fn events_waiting_for_a_subscriber_go_out_as_one_frame() {
        let events = events();
        let shared = events.shared.clone().unwrap();
        let filter = Filter::parse(Some("status=SHIPPED"));
        let mut sub = Subscriber::new(shared.clone(), shared.tx.subscribe(), filter);
        sub.queued.clear();
        for (id, status) in [("1-0", "SHIPPED"), ("2-0", "SUBMITTED"), ("3-0", "SHIPPED")] {
            assert_eq!(shared.tx.send(live(id, status)).ok(), Some(1));
        }
        let (item, sub) = sub.next().await.unwrap();
        let data = item.unwrap().into_data().unwrap();
        // The two that pass the filter, in order, in one frame.
        let want = [frame(&live_event("1-0")), frame(&live_event("3-0"))].concat();
        assert_eq!(
            std::str::from_utf8(&data).unwrap(),
            std::str::from_utf8(&want).unwrap()
        );
        assert_eq!(shared.delivered.load(Ordering::Relaxed), 2);
        // The drain ends it, through the same channel.
        events.close();
        assert!(sub.next().await.is_none());
    }

    fn live_event(id: &str) -> Event {
        Event {
            id: id.into(),
            ..event("SHIPPED", "", "7")
        }
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
