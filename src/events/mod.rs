//! Live updates: `order` and `operation` events appended to a Redis Stream (bounded
//! history), read by one reader per instance and fanned out to its subscribers of
//! `GET /mesgate/events` (Server-Sent Events).
//!
//! It owns the events (what is published, the stream, the fan-out); the SSE framing of
//! one subscriber is [`sse`]'s. It does not decide what a write changed: the write path
//! ([`crate::write`]) and the operations ([`crate::operations`]) publish.

mod retry;
pub mod sse;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use redis::Value;
use tokio::sync::broadcast;
use tracing::{debug, warn};

use crate::config::EventsConfig;
use crate::l2::{L2, L2Error};

/// Where events are served.
pub const PATH: &str = "/mesgate/events";

/// How long one blocking read of the stream waits (also how soon a reader notices that
/// its gateway is gone).
const BLOCK: Duration = Duration::from_millis(1000);

/// One event, as published and as read back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    /// The stream id (`ms-seq`); empty before it is published.
    pub id: String,
    /// `order` or `operation`.
    pub kind: String,
    /// The JSON sent as the event's `data:`.
    pub data: String,
    /// The order's id, for `?order=`.
    pub order: String,
    /// The new status, for `?status=`.
    pub status: String,
    /// The previous status when known (`?status=` matches it too: an order leaving a
    /// status is news to that status's list).
    pub previous: String,
    /// The operation's id, for `?operation=`.
    pub operation: String,
}

impl Event {
    fn fields(&self) -> [(&'static str, &str); 6] {
        [
            ("kind", &self.kind),
            ("data", &self.data),
            ("order", &self.order),
            ("status", &self.status),
            ("prev", &self.previous),
            ("op", &self.operation),
        ]
    }

    /// From a stream entry `[id, [field, value…]]`.
    fn from_entry(entry: &Value) -> Option<Self> {
        let e = items(entry);
        let mut out = Self {
            id: text(e.first()?)?,
            ..Self::default()
        };
        for kv in items(e.get(1)?).chunks(2) {
            let (Some(k), Some(v)) = (text(&kv[0]), kv.get(1).and_then(text)) else {
                continue;
            };
            let slot = match k.as_str() {
                "kind" => &mut out.kind,
                "data" => &mut out.data,
                "order" => &mut out.order,
                "status" => &mut out.status,
                "prev" => &mut out.previous,
                "op" => &mut out.operation,
                _ => continue,
            };
            *slot = v;
        }
        Some(out)
    }
}

impl Event {
    /// What a successful write changed: its answer `row` (the entity's new state; the
    /// MES's `id` and `status` fields), whether it was created, the status it left
    /// when known, and the asynchronous operation that made it, if one did (then the
    /// data names it as `operation`). `None`: the answer is not such a row.
    pub fn order(
        row: &[u8],
        created: bool,
        previous: Option<&str>,
        operation: Option<&str>,
    ) -> Option<Self> {
        let json: serde_json::Value = serde_json::from_slice(row).ok()?;
        let order = match &json["id"] {
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::String(s) => s.clone(),
            _ => return None,
        };
        let status = json["status"].as_str().unwrap_or_default().to_owned();
        let mut data = serde_json::json!({
            "order": json["id"],
            "status": status,
            "previous": previous,
            "created": created,
            "row": json,
        });
        if let Some(op) = operation {
            data["operation"] = op.into();
        }
        Some(Self {
            kind: "order".into(),
            data: data.to_string(),
            order,
            status,
            previous: previous.unwrap_or_default().to_owned(),
            operation: operation.unwrap_or_default().to_owned(),
            ..Self::default()
        })
    }

    /// An operation's recorded outcome, read at `location` (`order`: the entity it
    /// answered with, if any).
    pub fn operation(id: &str, state: &str, status: u16, body: &[u8], location: &str) -> Self {
        let response: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let order = response.as_ref().map(|r| &r["id"]);
        let order = order.filter(|o| o.is_number() || o.is_string());
        let data = serde_json::json!({
            "operation": id,
            "state": state,
            "status": status,
            "order": order,
            "location": location,
        });
        Self {
            kind: "operation".into(),
            data: data.to_string(),
            order: order
                .map(|o| o.to_string().trim_matches('"').to_owned())
                .unwrap_or_default(),
            operation: id.to_owned(),
            ..Self::default()
        }
    }
}

/// A stream id as a comparable pair; `None` when it is not one.
pub fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// The events of one gateway. Cheap to clone.
#[derive(Clone)]
pub struct Events {
    shared: Option<Arc<Shared>>,
}

struct Shared {
    l2: L2,
    config: EventsConfig,
    tx: broadcast::Sender<Arc<Live>>,
    subscribers: AtomicUsize,
    /// The most subscribers at once (`events.max_subscribers`, else half the connection
    /// cap, set by [`Events::default_cap`]).
    cap: AtomicUsize,
    dropped: AtomicU64,
    refused: AtomicU64,
    delivered: AtomicU64,
    reconnects: AtomicU64,
    /// Events given up after their append failed (see [`retry`]).
    lost: AtomicU64,
    /// Events whose append failed, appended again in the background.
    retry: retry::Retry,
    /// Set when the instance drains: every stream ends (clients reconnect elsewhere), and
    /// one opened after it ends at once. The streams open now learn it from
    /// [`Live::Close`], in the channel they wait on anyway: a second thing to wait on per
    /// subscriber (a watch) cost a registration on one shared lock per event sent.
    closed: AtomicBool,
}

impl Events {
    /// Events in `l2`'s Redis; without Redis there are none.
    pub fn new(l2: Option<&L2>, config: EventsConfig) -> Self {
        let shared = l2.map(|l2| {
            Arc::new(Shared {
                l2: l2.clone(),
                config,
                tx: broadcast::channel(config.buffer).0,
                subscribers: AtomicUsize::new(0),
                cap: AtomicUsize::new(config.max_subscribers.unwrap_or(usize::MAX)),
                dropped: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                delivered: AtomicU64::new(0),
                reconnects: AtomicU64::new(0),
                lost: AtomicU64::new(0),
                retry: retry::Retry::default(),
                closed: AtomicBool::new(false),
            })
        });
        Self { shared }
    }

    /// Starts this instance's one reader of the stream; it stops with the gateway.
    pub fn start(&self) {
        if let Some(s) = &self.shared {
            tokio::spawn(read_loop(Arc::downgrade(s)));
            tokio::spawn(retry::run(Arc::downgrade(s)));
        }
    }

    /// Appends `event` to the stream (history bounded by `events.history`). One whose
    /// append fails (or that would overtake one waiting) is queued and appended again in
    /// the background, in order, for up to [`retry::GIVE_UP`]: the write it describes has
    /// happened regardless. An append that timed out may still have landed, so such an
    /// event can be in the stream twice (clients read it as the same news again).
    pub async fn publish(&self, event: Event) {
        let Some(s) = &self.shared else { return };
        let since = tokio::time::Instant::now();
        if !s.retry.is_waiting() && s.append(&event).await {
            return;
        }
        if !s.retry.push(event, since) {
            s.lost.fetch_add(1, Ordering::Relaxed);
            warn!(
                queued = retry::MAX_QUEUED,
                "event not published: too many waiting"
            );
        }
    }

    /// Ends every stream of this instance (it is draining), and any opened after.
    pub fn close(&self) {
        if let Some(s) = &self.shared {
            // The flag before the message: a subscriber that joins the channel after the
            // message was sent sees the flag (see `subscribe`).
            s.closed.store(true, Ordering::SeqCst);
            // No subscriber: nothing to end (an error only says that).
            let _ = s.tx.send(Arc::new(Live::Close));
        }
    }

    /// Subscribers connected to this instance now.
    pub fn subscribers(&self) -> usize {
        let s = self.shared.as_ref();
        s.map_or(0, |s| s.subscribers.load(Ordering::Relaxed))
    }

    /// Subscribers dropped for falling behind, since start.
    pub fn dropped(&self) -> u64 {
        let s = self.shared.as_ref();
        s.map_or(0, |s| s.dropped.load(Ordering::Relaxed))
    }

    /// Sets the subscriber cap from the connection cap when `events.max_subscribers` is
    /// not given: half of it, so subscribers (each holds a connection for as long as it
    /// listens) can never take every connection from the requests.
    pub fn default_cap(&self, max_connections: usize) {
        if let Some(s) = &self.shared
            && s.config.max_subscribers.is_none()
        {
            s.cap.store((max_connections / 2).max(1), Ordering::Relaxed);
        }
    }

    /// The counters, for the metrics.
    pub fn stats(&self) -> EventStats {
        let Some(s) = &self.shared else {
            return EventStats::default();
        };
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        EventStats {
            subscribers: s.subscribers.load(Ordering::Relaxed),
            delivered: get(&s.delivered),
            dropped: get(&s.dropped),
            refused: get(&s.refused),
            reconnects: get(&s.reconnects),
            lost: get(&s.lost),
        }
    }
}

/// What the events of one instance report to the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventStats {
    /// Subscribers connected now.
    pub subscribers: usize,
    /// Events sent to subscribers (one per subscriber it was sent to).
    pub delivered: u64,
    /// Subscribers dropped for falling behind.
    pub dropped: u64,
    /// Subscriptions refused at `events.max_subscribers`.
    pub refused: u64,
    /// Times the stream reader connected to Redis again after losing its connection.
    pub reconnects: u64,
    /// Events given up: their append kept failing, or too many were waiting.
    pub lost: u64,
}

/// What the subscribers are handed, in one channel.
pub(crate) enum Live {
    /// An event from the reader, its SSE record formatted once and shared by every
    /// subscriber it is sent to.
    Event {
        /// The event, for the filters and the resume check.
        event: Event,
        /// Its SSE record.
        frame: bytes::Bytes,
    },
    /// The instance drains: every stream ends ([`Events::close`]).
    Close,
}

impl Shared {
    fn key(&self) -> String {
        format!("{{{}}}:events", self.l2.prefix())
    }

    /// Appends `event` to the stream; whether it landed (a failure is logged).
    async fn append(&self, event: &Event) -> bool {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.key())
            .arg("MAXLEN")
            .arg("~")
            .arg(self.config.history);
        cmd.arg("*");
        for (k, v) in event.fields() {
            cmd.arg(k).arg(v);
        }
        let r = self
            .l2
            .guarded(|mut c| async move { cmd.query_async::<String>(&mut c).await })
            .await;
        if let Err(e) = &r {
            warn!(error = %e, tier = "shared", kind = event.kind, "event not appended, queued");
        }
        r.is_ok()
    }

    /// Entries after `after`, oldest first, or a reset when some may have been trimmed
    /// (or `after` is not from this history): the subscriber must reload.
    async fn since(&self, after: &str) -> Result<Since, L2Error> {
        let key = self.key();
        let mut pipe = redis::pipe();
        pipe.cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1);
        pipe.cmd("XREVRANGE")
            .arg(&key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);
        // Only a well-formed id goes to Redis (anything else is a reset anyway).
        let start = parse_id(after).map_or_else(|| "+".into(), |(m, q)| format!("({m}-{q}"));
        let count = self.config.history;
        pipe.cmd("XRANGE")
            .arg(&key)
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(count);
        let (first, last, rest): (Value, Value, Value) = self
            .l2
            .guarded(|mut c| async move { pipe.query_async(&mut c).await })
            .await?;
        let id_of = |v: &Value| items(v).first().and_then(Event::from_entry).map(|e| e.id);
        let (first, last) = (id_of(&first), id_of(&last));
        let bounds = (
            first.as_deref().and_then(parse_id),
            last.as_deref().and_then(parse_id),
        );
        let kept = match (parse_id(after), bounds) {
            (Some(from), (Some(f), Some(l))) => f <= from && from <= l,
            // Empty, or not an id: whatever the client holds is gone.
            _ => false,
        };
        if !kept {
            return Ok(Since::Reset { last });
        }
        let backlog = items(&rest).iter().filter_map(Event::from_entry);
        Ok(Since::Backlog(backlog.collect()))
    }
}

/// What a subscriber resuming after an id gets first.
enum Since {
    /// What it missed, oldest first.
    Backlog(Vec<Event>),
    /// Its id fell out of the history: reload, then go on from `last`.
    Reset {
        /// The newest id now (`None`: the history is empty).
        last: Option<String>,
    },
}

/// The one reader: follows the stream from its end and hands every entry to the
/// subscribers (a `broadcast`; a subscriber that falls `events.buffer` behind is dropped).
async fn read_loop(shared: std::sync::Weak<Shared>) {
    let mut conn = None;
    let mut last: Option<String> = None;
    let mut connected_before = false;
    loop {
        let Some(s) = shared.upgrade() else { return };
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match s.l2.dedicated(BLOCK).await {
                Ok(c) => {
                    if connected_before {
                        s.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    connected_before = true;
                    conn.insert(c)
                }
                Err(e) => {
                    debug!(error = %e, tier = "shared", "event stream not reachable");
                    drop(s);
                    tokio::time::sleep(BLOCK / 2).await;
                    continue;
                }
            },
        };
        // A concrete id to read after (never `$`: an entry added between two reads
        // would be skipped).
        let Some(from) = last.clone() else {
            last = last_id(&s).await;
            if last.is_none() {
                drop(s);
                tokio::time::sleep(BLOCK / 2).await;
            }
            continue;
        };
        let read: redis::RedisResult<Value> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(256)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(s.key())
            .arg(&from)
            .query_async(c)
            .await;
        match read {
            Ok(v) => {
                for stream in items(&v) {
                    let entries = items(stream).get(1).map(items).unwrap_or_default();
                    for event in entries.iter().filter_map(Event::from_entry) {
                        last = Some(event.id.clone());
                        let frame = sse::frame(&event);
                        // No subscriber: nothing to do (an error only says that).
                        let _ = s.tx.send(Arc::new(Live::Event { event, frame }));
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, tier = "shared", "event stream read failed");
                conn = None;
                drop(s);
                tokio::time::sleep(BLOCK / 2).await;
            }
        }
    }
}

async fn last_id(s: &Shared) -> Option<String> {
    let cmd = redis::cmd("XREVRANGE")
        .arg(s.key())
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .to_owned();
    let v: Value =
        s.l2.guarded(|mut c| async move { cmd.query_async(&mut c).await })
            .await
            .ok()?;
    let id = items(&v).first().and_then(Event::from_entry).map(|e| e.id);
    Some(id.unwrap_or_else(|| "0-0".into()))
}

/// The elements of a Redis array reply (none for anything else): stream replies are
/// nested arrays.
pub(crate) fn items(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) => a,
        _ => &[],
    }
}

/// A Redis string reply as text.
pub(crate) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}
