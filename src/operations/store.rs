//! Operation records in Redis: the scripts that record, start and finish an operation,
//! the key layout, and the record's JSON view.
//!
//! It owns what is stored and how it moves between states; who runs an operation is
//! [`super::worker`]'s.
//!
//! Keys (all under the deployment's hash tag, one slot in a cluster): the record
//! `{prefix}:op:{id}` (a hash, expiring `operations.keep` after it was accepted) and the
//! queue `{prefix}:ops` (a stream of `op = id` entries, consumer group `mesgate`).

use bytes::Bytes;
use serde_json::{Value, json};

use super::{Outcome, StoredRequest};
use crate::l2::{L2, L2Error};

/// The consumer group every instance reads the queue in.
pub const GROUP: &str = "mesgate";

/// Records the operation and queues it, in one step: the 202 leaves only after both.
/// The queue and its group are made by the first operation (`pcall`: a group that exists
/// is fine), so a deployment that never writes asynchronously has no key for them.
/// KEYS: record, queue. ARGV: keep ms, id, then the record's field/value pairs.
const RECORD: &str = r"
redis.pcall('XGROUP', 'CREATE', KEYS[2], 'mesgate', '0', 'MKSTREAM')
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return redis.call('XADD', KEYS[2], '*', 'op', ARGV[2])
";

/// Takes an operation for an attempt. Nil: no record (expired); `{state}`: already
/// final (a retried delivery of a finished operation); else the attempt number and the
/// request. KEYS: record. ARGV: now (ms).
const START: &str = r"
local s = redis.call('HGET', KEYS[1], 'state')
if not s then return false end
if s == 'succeeded' or s == 'failed' then return {s} end
local n = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'state', 'running', 'started_at', ARGV[1])
local r = redis.call('HMGET', KEYS[1], 'method', 'target', 'headers', 'body', 'remote')
return {'running', tostring(n), r[1], r[2], r[3], r[4] or '', r[5]}
";

/// Records the outcome once: a record already final (or gone) is left as it is.
/// KEYS: record. ARGV: state, status, content type, response, now (ms).
const FINISH: &str = r"
local s = redis.call('HGET', KEYS[1], 'state')
if not s or s == 'succeeded' or s == 'failed' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'status', ARGV[2], 'content_type', ARGV[3],
  'response', ARGV[4], 'finished_at', ARGV[5])
return 1
";

/// The Redis side of operations. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    l2: L2,
    scripts: std::sync::Arc<[redis::Script; 3]>,
}

/// What taking an operation for an attempt found.
pub enum Start {
    /// No record: it expired (or never was). Nothing to do.
    Gone,
    /// Already succeeded or failed: a repeated delivery. Nothing to do.
    Final,
    /// Attempt number `attempt` (1 for the first) of this request.
    Run {
        /// 1 for the first attempt.
        attempt: u64,
        /// What to send.
        request: StoredRequest,
    },
}

impl Store {
    /// The store of a deployment's shared tier.
    pub fn new(l2: L2) -> Self {
        Self {
            l2,
            scripts: std::sync::Arc::new([
                redis::Script::new(RECORD),
                redis::Script::new(START),
                redis::Script::new(FINISH),
            ]),
        }
    }

    /// The shared tier (its client opens the worker's blocking connection).
    pub fn l2(&self) -> &L2 {
        &self.l2
    }

    /// The record's key.
    pub fn record_key(&self, id: &str) -> String {
        format!("{{{}}}:op:{id}", self.l2.prefix())
    }

    /// The queue's key.
    pub fn queue_key(&self) -> String {
        format!("{{{}}}:ops", self.l2.prefix())
    }

    /// Records `req` as operation `id` (state `queued`) and queues it.
    pub async fn record(
        &self,
        id: &str,
        req: &StoredRequest,
        keep: std::time::Duration,
    ) -> Result<(), L2Error> {
        let mut inv = self.scripts[0].prepare_invoke();
        inv.key(self.record_key(id)).key(self.queue_key());
        inv.arg(keep.as_millis() as u64).arg(id);
        inv.arg("state").arg("queued");
        inv.arg("method").arg(&req.method);
        inv.arg("target").arg(&req.target);
        inv.arg("headers").arg(req.headers_json());
        inv.arg("body").arg(req.body.as_ref());
        inv.arg("remote").arg(&req.remote);
        inv.arg("attempts").arg(0);
        inv.arg("accepted_at").arg(now_ms());
        self.l2
            .guarded(|mut c| async move { inv.invoke_async::<String>(&mut c).await })
            .await
            .map(drop)
    }

    /// Takes operation `id` for an attempt.
    pub async fn start(&self, id: &str) -> Result<Start, L2Error> {
        let mut inv = self.scripts[1].prepare_invoke();
        inv.key(self.record_key(id)).arg(now_ms());
        let got: Option<Vec<Vec<u8>>> = self
            .l2
            .guarded(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        let Some(mut f) = got else {
            return Ok(Start::Gone);
        };
        if f.len() < 7 {
            return Ok(Start::Final);
        }
        let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
        let remote = text(f.pop().unwrap_or_default());
        let body = Bytes::from(f.pop().unwrap_or_default());
        let headers = f.pop().unwrap_or_default();
        let target = text(f.pop().unwrap_or_default());
        let method = text(f.pop().unwrap_or_default());
        let attempt = text(f.pop().unwrap_or_default()).parse().unwrap_or(1);
        let request = StoredRequest {
            method,
            target,
            headers: StoredRequest::headers_from_json(&headers),
            body,
            remote,
        };
        Ok(Start::Run { attempt, request })
    }

    /// Records the outcome unless one is recorded already; whether this call recorded it.
    pub async fn finish(&self, id: &str, outcome: &Outcome) -> Result<bool, L2Error> {
        let mut inv = self.scripts[2].prepare_invoke();
        inv.key(self.record_key(id));
        inv.arg(outcome.state().as_str()).arg(outcome.status);
        inv.arg(outcome.content_type.as_deref().unwrap_or(""));
        inv.arg(outcome.body.as_ref()).arg(now_ms());
        let n: i64 = self
            .l2
            .guarded(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        Ok(n == 1)
    }

    /// The record of `id`, as the client sees it; `None`: no such record.
    pub async fn read(&self, id: &str) -> Result<Option<Record>, L2Error> {
        let cmd = redis::cmd("HGETALL").arg(self.record_key(id)).to_owned();
        let fields: Vec<(String, Vec<u8>)> = self
            .l2
            .guarded(|mut c| async move { cmd.query_async(&mut c).await })
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        Ok(Some(Record {
            id: id.to_owned(),
            fields,
        }))
    }
}

/// One operation's record as stored.
#[derive(Debug, Clone)]
pub struct Record {
    id: String,
    fields: Vec<(String, Vec<u8>)>,
}

impl Record {
    fn field(&self, name: &str) -> Option<&[u8]> {
        let found = self.fields.iter().find(|(n, _)| n == name);
        found.map(|(_, v)| v.as_slice())
    }

    fn text(&self, name: &str) -> Option<&str> {
        self.field(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// `queued`, `running`, `succeeded` or `failed`.
    pub fn state(&self) -> &str {
        self.text("state").unwrap_or("queued")
    }

    /// Whether the outcome is recorded.
    pub fn is_final(&self) -> bool {
        matches!(self.state(), "succeeded" | "failed")
    }

    /// The MES's status code, once final.
    pub fn status(&self) -> Option<u16> {
        self.text("status")?.parse().ok()
    }

    /// The MES's `Content-Type`, once final.
    pub fn content_type(&self) -> Option<&str> {
        self.text("content_type").filter(|t| !t.is_empty())
    }

    /// The MES's answer body, once final.
    pub fn response(&self) -> Option<Bytes> {
        self.field("response").map(Bytes::copy_from_slice)
    }

    /// `GET /mesgate/operations/{id}`: the id, state, MES status and body (JSON when it
    /// is JSON, else a string), attempts, and RFC 3339 timestamps.
    pub fn to_json(&self) -> Value {
        let response = self.field("response").map(|b| {
            serde_json::from_slice(b).unwrap_or_else(|_| Value::from(String::from_utf8_lossy(b)))
        });
        let time = |name: &str| self.text(name).and_then(rfc3339);
        json!({
            "id": self.id,
            "state": self.state(),
            "status": self.status(),
            "response": response,
            "method": self.text("method"),
            "target": self.text("target"),
            "attempts": self.text("attempts").and_then(|a| a.parse::<u64>().ok()),
            "accepted_at": time("accepted_at"),
            "started_at": time("started_at"),
            "finished_at": time("finished_at"),
        })
    }
}

fn now_ms() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map_or(0, |d| d.as_millis() as u64)
}

fn rfc3339(ms: &str) -> Option<String> {
    let ms: u64 = ms.parse().ok()?;
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    Some(humantime::format_rfc3339_millis(at).to_string())
}
