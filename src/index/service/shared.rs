//! The status index's copy in Redis, shared by every instance: per kept partition a sorted
//! set of its members in the MES's order (note 000 §3.3), the rows and their versions
//! beside it, changed only by scripts that apply the version rule; what a new or restarted
//! instance warms from without asking the MES. It owns the Redis layout and the scripts;
//! when a partition is exact, what is served and what writes do is [`super`]'s.
//!
//! # Layout
//!
//! Under one hash tag per index (`{PREFIX:ix:ROUTE}`, so every script touches one slot):
//!
//! - `…:z:PARTITION`: a sorted set, all scores 0, members `SORT\tID` (the sort field's text,
//!   a tab, the id zero-padded to 20 digits), so byte order is the MES's order reversed;
//! - `…:rows`: id → the row exactly as the MES sent it (kept partitions only);
//! - `…:ver`: id → `VERSION\tPARTITION\tSEQ\tMEMBER` (partition empty when not kept): the
//!   version rule's memory, also for orders gone to history;
//! - `…:seq`: a counter raised by every change, recorded in `…:ver` (what a load's seal
//!   compares with);
//! - `…:ready`: partition → the Redis server's `run_id` when the partition was last made
//!   complete (a restarted Redis, which may hold an old snapshot, is not trusted).
//!
//! # Why the copy stays exact
//!
//! - A write applies its answer to the local mirror, then here ([`SharedIndex::put`]), then
//!   publishes the bus message: a reader that warms after the put sees it here, one that
//!   warms before receives the message (it subscribes before it reads).
//! - A put that fails is queued and retried; once it lands the delta is published again,
//!   so an instance that warmed from the copy without it still converges.
//! - A load from the MES (the preload's exact scan) puts its rows under the version rule
//!   and then seals the partition: members that the scan did not list and that no change
//!   since the scan began placed there are dropped (the MES no longer has them there).
//! - An audit that finds the partition wrong marks it not ready here too.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use redis::Script;
use std::sync::Mutex;
use tokio::sync::Notify;

use crate::index::Row;
use crate::l2::{L2, L2Error};

/// Rows per script call when loading or warming (each call stays well under the op
/// timeout).
const CHUNK: usize = 256;

/// How long the members of an interrupted load are kept.
const LOAD_KEEP_MS: u64 = 600_000;

/// The copy of one index in Redis. Cheap to share (`Arc`).
pub struct SharedIndex {
    l2: L2,
    /// `{PREFIX:ix:ROUTE}:`
    base: String,
    /// The partitions kept (the others have no set: orders there are only remembered by
    /// version).
    kept: Vec<String>,
    scripts: [Script; 3],
    /// Rows whose put failed, with whether each was a create, waiting for a retry.
    // A std Mutex: pushes and drains only, never held across `.await`.
    pending: Mutex<Vec<(Row, bool)>>,
    wake: Notify,
    nudge: Notify,
}

/// A chunk read back: members and their rows.
type Chunk = (Vec<String>, Vec<Option<Vec<u8>>>);

impl SharedIndex {
    /// The copy of the index of route `route` keeping partitions `kept`, in the Redis of
    /// `l2`.
    pub fn new(l2: L2, route: &str, kept: &[String]) -> Self {
        Self {
            kept: kept.to_vec(),
            base: format!("{{{}:ix:{route}}}:", l2.prefix()),
            l2,
            scripts: [
                Script::new(include_str!("lua/put.lua")),
                Script::new(include_str!("lua/seal.lua")),
                Script::new(include_str!("lua/warm.lua")),
            ],
            pending: Mutex::default(),
            wake: Notify::new(),
            nudge: Notify::new(),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.base)
    }

    fn zset(&self, partition: &str) -> String {
        format!("{}z:{partition}", self.base)
    }

    /// The Redis server's identity: a partition marked complete by another server (or by
    /// this one before a restart, which may have loaded an old snapshot) is not trusted.
    pub async fn server(&self) -> Result<String, L2Error> {
        self.l2.run_id().await
    }

    /// The change counter now (a load's seal keeps what changed after it).
    pub async fn seq(&self) -> Result<u64, L2Error> {
        let cmd = redis::cmd("GET").arg(self.key("seq")).to_owned();
        let v: Option<u64> = self
            .l2
            .guarded(|mut c| async move { cmd.query_async(&mut c).await })
            .await?;
        Ok(v.unwrap_or(0))
    }

    /// Applies `rows` under the version rule; `load`, the members key of a load in
    /// progress. Returns how many changed the copy.
    pub async fn put(&self, rows: &[Row], load: Option<&str>) -> Result<usize, L2Error> {
        if rows.is_empty() {
            return Ok(0);
        }
        let mut inv = self.scripts[0].prepare_invoke();
        inv.key(self.key("ver"))
            .key(self.key("rows"))
            .key(self.key("seq"))
            .key(load.map_or_else(|| self.key("seq"), str::to_owned))
            .arg(self.zset(""));
        for r in rows {
            inv.arg(r.id)
                .arg(r.version)
                .arg(&r.partition)
                .arg(if self.kept.contains(&r.partition) {
                    "1"
                } else {
                    "0"
                })
                .arg(member(r));
        }
        for r in rows {
            inv.arg(r.json.as_ref());
        }
        let changed: i64 = self
            .l2
            .guarded(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        Ok(changed.max(0) as usize)
    }

    /// Replaces `partition` with `rows`, the exact result of a scan that began when the
    /// change counter was `since`, and marks it complete for Redis server `server`.
    /// Returns how many members were dropped as no longer there.
    pub async fn load(
        &self,
        partition: &str,
        rows: &[Row],
        since: u64,
        server: &str,
    ) -> Result<usize, L2Error> {
        let members = self.key(&format!("load:{partition}:{}", load_token()));
        for chunk in rows.chunks(CHUNK) {
            self.put(chunk, Some(&members)).await?;
        }
        // The members set only exists once a row went in; an empty partition has none.
        let expire = redis::cmd("PEXPIRE")
            .arg(&members)
            .arg(LOAD_KEEP_MS)
            .to_owned();
        self.l2
            .guarded(|mut c| async move { expire.query_async::<i64>(&mut c).await })
            .await?;
        let mut inv = self.scripts[1].prepare_invoke();
        inv.key(self.key("ver"))
            .key(self.key("rows"))
            .key(self.zset(partition))
            .key(&members)
            .key(self.key("ready"))
            .arg(since)
            .arg(partition)
            .arg(server);
        let dropped: i64 = self
            .l2
            .guarded(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        Ok(dropped.max(0) as usize)
    }

    /// Marks `partition` as not complete (the audit found it wrong): nobody warms from it
    /// until a load completes it again.
    pub async fn unready(&self, partition: &str) -> Result<(), L2Error> {
        let cmd = redis::cmd("HDEL")
            .arg(self.key("ready"))
            .arg(partition)
            .to_owned();
        self.l2
            .guarded(|mut c| async move { cmd.query_async::<i64>(&mut c).await })
            .await
            .map(drop)
    }

    /// Reads `partition` back, oldest first, handing each row to `each`; `false` when the
    /// copy is not complete for Redis server `server` (then nothing is trusted: the
    /// caller drops what it was handed and asks the MES).
    pub async fn warm(
        &self,
        partition: &str,
        server: &str,
        mut each: impl FnMut(Bytes),
    ) -> Result<bool, WarmError> {
        let mut from = "-".to_owned();
        loop {
            let mut inv = self.scripts[2].prepare_invoke();
            inv.key(self.key("ready"))
                .key(self.zset(partition))
                .key(self.key("rows"))
                .arg(partition)
                .arg(server)
                .arg(&from)
                .arg(CHUNK);
            let chunk: Option<Chunk> = self
                .l2
                .guarded(|mut c| async move { inv.invoke_async(&mut c).await })
                .await?;
            let Some((members, rows)) = chunk else {
                return Ok(false);
            };
            let last = members.len() < CHUNK;
            for (m, row) in members.iter().zip(rows) {
                each(Bytes::from(row.ok_or_else(|| WarmError::NoRow(m.clone()))?));
            }
            match members.last() {
                Some(m) if !last => from = format!("({m}"),
                _ => return Ok(true),
            }
        }
    }

    /// Keeps the headers of the MES's list answers beside the copy (an instance that warms
    /// from it answers with them).
    pub async fn put_headers(&self, headers: &HeaderMap) -> Result<(), L2Error> {
        let mut text = Vec::new();
        for (name, value) in headers {
            text.extend_from_slice(name.as_str().as_bytes());
            text.extend_from_slice(b": ");
            text.extend_from_slice(value.as_bytes());
            text.push(b'\n');
        }
        let cmd = redis::cmd("SET")
            .arg(self.key("headers"))
            .arg(text)
            .to_owned();
        self.l2
            .guarded(|mut c| async move { cmd.query_async::<()>(&mut c).await })
            .await
    }

    /// The headers kept by [`SharedIndex::put_headers`], if any.
    pub async fn headers(&self) -> Result<Option<HeaderMap>, L2Error> {
        let cmd = redis::cmd("GET").arg(self.key("headers")).to_owned();
        let text: Option<Vec<u8>> = self
            .l2
            .guarded(|mut c| async move { cmd.query_async(&mut c).await })
            .await?;
        let Some(text) = text else {
            return Ok(None);
        };
        let mut headers = HeaderMap::new();
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let at = line.windows(2).position(|w| w == b": ");
            let parsed = at.and_then(|at| {
                let name = HeaderName::from_bytes(&line[..at]).ok()?;
                Some((name, HeaderValue::from_bytes(&line[at + 2..]).ok()?))
            });
            match parsed {
                Some((name, value)) => headers.append(name, value),
                None => return Ok(None),
            };
        }
        Ok(Some(headers))
    }

    /// The rows whose put failed and has not landed yet (a warm-up applies them again
    /// after what it read: they may be newer than the copy).
    pub fn pending(&self) -> Vec<Row> {
        let p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.iter().map(|(r, _)| r.clone()).collect()
    }

    /// Queues rows whose put failed; the retry loop puts them and tells other instances.
    pub fn queue(&self, row: Row, created: bool) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((row, created));
        self.wake.notify_one();
    }

    /// Waits until rows are queued; a snapshot of them (they stay queued, and a warm-up
    /// reads them, until [`SharedIndex::landed`]).
    pub async fn queued(&self) -> Vec<(Row, bool)> {
        loop {
            let rows = self
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if !rows.is_empty() {
                return rows;
            }
            self.wake.notified().await;
        }
    }

    /// Waits for [`SharedIndex::nudge`] (a retry waiting out its backoff tries at once).
    pub async fn nudged(&self) {
        self.nudge.notified().await;
    }

    /// Redis is back (the bus was heard again): a waiting retry tries now, so the rows
    /// it holds reach the copy before other instances warm from it, or soon after.
    pub fn nudge(&self) {
        self.nudge.notify_one();
    }

    /// The first `n` queued rows landed. (Only the retry removes, and queueing appends:
    /// they are the ones of its snapshot.)
    pub fn landed(&self, n: usize) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..n);
    }
}

/// Why a warm-up failed.
#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    /// Redis did not answer.
    #[error(transparent)]
    Redis(#[from] L2Error),
    /// A member without its row: the copy is damaged.
    #[error("member {0:?} has no row")]
    NoRow(String),
}

/// A name for one load's members set, distinct across processes and loads.
fn load_token() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{}.{nanos}.{n}", std::process::id())
}

/// A row's member in its partition's set: byte order is the MES's order reversed.
fn member(r: &Row) -> String {
    format!("{}\t{:020}", r.sort.at(), r.id)
}
