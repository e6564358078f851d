//! The shared tier: Redis with a short operation timeout and a circuit breaker.
//!
//! It never fails a request: every error comes back as an [`L2Error`] the caller treats
//! as a miss. Entries are fenced by per-family epochs kept in Redis: an entry records the
//! epochs it was filled under, a lookup reads the entry with the current epochs and
//! serves it only if they are equal, and a store happens only if the epochs did not move
//! since the fill started.
//!
//! Key layout (a table in `docs/operations.md`): entries, epochs and entity sets carry no
//! hash tag, so a Redis Cluster spreads them over all its slots; no operation on them
//! needs two keys in one slot. A lookup is one `MGET` (of the generation marker, the
//! entry and its epochs: atomic on one server, split per node on a cluster, where it is
//! still safe because epochs only grow within a generation, so epochs read equal to the
//! entry's mean it was current when they were read). An invalidation moves its epochs,
//! then stores what it refreshes, then publishes: the message never reaches another
//! instance before the moves are done. They also carry the *generation*
//! (`prefix:GEN:e:KEY`): a Redis that restarted (from an old snapshot, say: epochs back
//! in time, ended entries valid again), failed over or lost data is given a new
//! generation by the first heartbeat that sees it ([`L2::heartbeat`]), and everything
//! stored under the old one is never read again. The marker (`{prefix}:gen`, `GEN/RUN`:
//! the generation and the `run_id` of the server, or on a cluster of every primary)
//! is read in the same `MGET` as the entry.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tracing::warn;

use crate::breaker::{Breaker, BreakerState};
use crate::config::RedisConfig;
use crate::consistency::names::Name;
use crate::entry::{CodecError, Entry};
use crate::redis_master::{Conn, Endpoints};

mod deadline;
mod steps;
use steps::{HEARTBEAT, INVALIDATE, epoch_value, holds, server_run};

/// Epoch keys live far longer than any entry, so an expired epoch (read as 0) can never
/// make an old entry look valid again.
const EPOCH_EXPIRE_MS: u64 = 7 * 24 * 3600 * 1000;

/// What a blocking read may take beyond its own wait before it counts as failed: a blocked
/// read's answer leaves Redis when its wait ends, and on a busy machine it can arrive well
/// past a short `op_timeout` (the event reader then logged a failure and paused).
const BLOCKING_MARGIN: Duration = Duration::from_secs(1);

/// An entry to store in the same step as an invalidation (refresh on write): `entry.epochs`
/// are the values its epochs `names` must hold right after the invalidation's own moves,
/// i.e. their values before its fetch plus the invalidation's move: any other move since
/// (another instance's write, a purge) leaves it out.
#[derive(Debug)]
pub struct SharedStore {
    /// Cache key.
    pub key: String,
    /// Its invalidation names.
    pub names: Vec<Name>,
    /// The entry, with the epochs it expects.
    pub entry: Arc<Entry>,
    /// How long Redis keeps it.
    pub keep: Duration,
}

/// Why a shared-tier operation gave nothing.
#[derive(Debug, thiserror::Error)]
pub enum L2Error {
    /// No generation known yet, or Redis holds another one than this instance's (it
    /// restarted or lost data, and this instance has not followed yet).
    #[error("redis generation not known or moved")]
    Generation,
    /// The breaker is open: Redis was not asked.
    #[error("breaker open, redis skipped")]
    Skipped,
    /// Sentinel mode: no master known yet.
    #[error("no redis master known yet (sentinels not asked or not answering)")]
    NoMaster,
    /// No answer within `redis.op_timeout`.
    #[error("redis operation timed out")]
    Timeout,
    /// Redis answered with an error, or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The stored bytes were not an entry of this codec.
    #[error("bad entry: {0}")]
    Codec(#[from] CodecError),
}

impl L2Error {
    /// Stable lowercase name for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Generation => "generation",
            Self::Skipped => "skipped",
            Self::NoMaster => "no_master",
            Self::Timeout => "timeout",
            Self::Redis(_) => "redis",
            Self::Codec(_) => "codec",
        }
    }
}

/// Counters of the shared tier.
#[derive(Debug, Default)]
pub struct L2Stats {
    /// Operations that failed (timeout, Redis error, bad entry).
    pub errors: AtomicU64,
    /// Operations skipped by the open breaker.
    pub skipped: AtomicU64,
    /// Stores refused because an epoch moved during the fill.
    pub fenced: AtomicU64,
    /// Times Redis was found restarted or emptied and a new generation began.
    pub generations: AtomicU64,
    /// Times the cluster connection was built again after heartbeats failed for a
    /// breaker cooldown ([`L2::heartbeat`]).
    pub renewals: AtomicU64,
}

/// What a lookup found.
#[derive(Debug, Default)]
pub struct Lookup {
    /// The entry, if one is stored and its epochs are current.
    pub entry: Option<Entry>,
    /// The current epochs of the families asked about (the fence for a later store).
    pub epochs: Vec<u64>,
}

/// The shared tier. Cheap to clone.
#[derive(Clone)]
pub struct L2 {
    endpoints: Endpoints,
    connect_timeout: Duration,
    prefix: Arc<str>,
    op_timeout: Duration,
    breaker: Arc<Breaker>,
    stats: Arc<L2Stats>,
    heartbeat_script: Arc<redis::Script>,
    invalidate_script: Arc<redis::Script>,
    /// The generation in force (`None` until the first heartbeat or check answers).
    generation: Arc<tokio::sync::watch::Sender<Option<Arc<str>>>>,
    /// On a cluster: whether the last heartbeat reached every primary. A primary lost
    /// may lose the writes its replica had not yet received when it takes over; the
    /// replica's promotion takes at least the cluster's node timeout, far more than a
    /// heartbeat, so reading nothing from a heartbeat failed until one succeeds (and
    /// sees the new primary's run id: a new generation) keeps those losses unread.
    verified: Arc<std::sync::atomic::AtomicBool>,
    /// Since when heartbeats have failed without a break (or since the connection was
    /// last built again); `None` while they succeed.
    failing_since: Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
    /// How long heartbeats fail before a cluster connection is built again.
    renew_after: Duration,
}

impl L2 {
    /// Prepares a connection without connecting: the gateway starts even when Redis is
    /// down, and the manager reconnects in the background when it comes back.
    pub fn new(cfg: &RedisConfig) -> Result<Self, redis::RedisError> {
        Ok(Self {
            endpoints: Endpoints::new(cfg)?,
            connect_timeout: cfg.connect_timeout,
            prefix: cfg.prefix.as_str().into(),
            op_timeout: cfg.op_timeout,
            breaker: Arc::new(Breaker::new(cfg.breaker_failures, cfg.breaker_cooldown)),
            stats: Arc::default(),
            heartbeat_script: Arc::new(redis::Script::new(HEARTBEAT)),
            invalidate_script: Arc::new(redis::Script::new(INVALIDATE)),
            generation: Arc::new(tokio::sync::watch::Sender::new(None)),
            verified: Arc::default(),
            failing_since: Arc::default(),
            renew_after: cfg.breaker_cooldown.max(Duration::from_secs(1)),
        })
    }

    /// The generation of the shared tier in force: the part of every entry, epoch and
    /// entity key that changes when Redis restarted or lost data (so nothing it held
    /// before is read again). `None` until the first heartbeat reached Redis. Whatever
    /// else keeps state in Redis can key it the same way, or watch for a change with
    /// [`L2::watch_generation`].
    pub fn generation(&self) -> Option<Arc<str>> {
        self.generation.borrow().clone()
    }

    /// Follows the generation: the receiver sees each change (`None` → first known;
    /// one value → another: Redis restarted or lost data).
    pub fn watch_generation(&self) -> tokio::sync::watch::Receiver<Option<Arc<str>>> {
        self.generation.subscribe()
    }

    fn current_generation(&self) -> Result<Arc<str>, L2Error> {
        if self.is_cluster() && !self.verified.load(Ordering::Acquire) {
            return Err(L2Error::Generation);
        }
        self.generation().ok_or(L2Error::Generation)
    }

    fn is_cluster(&self) -> bool {
        self.endpoints.is_cluster()
    }

    fn generation_key(&self) -> String {
        generation_marker(&self.prefix)
    }

    fn entry_key(&self, generation: &str, key: &str) -> String {
        format!("{}:{generation}:e:{key}", self.prefix)
    }

    fn name_key(&self, generation: &str, name: &Name) -> String {
        format!("{}:{generation}:ep:{name}", self.prefix)
    }

    fn members_key(&self, generation: &str, entity: &str) -> String {
        format!("{}:{generation}:m:{entity}", self.prefix)
    }

    /// The Redis key of an epoch in the generation in force (`-` before one is known).
    pub fn epoch_key(&self, name: &str) -> String {
        let g = self.generation().unwrap_or_else(|| "-".into());
        self.name_key(&g, &Name::parse(name))
    }

    /// The Redis key of an entity's known families in the generation in force.
    pub fn entity_key(&self, entity: &str) -> String {
        let g = self.generation().unwrap_or_else(|| "-".into());
        self.members_key(&g, entity)
    }

    /// Publishes `message` (a heartbeat; `""`: none) and checks the generation, in one
    /// step: Redis restarted or emptied since the generation was set gets a new one,
    /// which this instance then adopts (as every instance will at its next heartbeat).
    /// Returns the generation in force. Not held back by the breaker (it is the probe
    /// that closes it), but it reports to it.
    pub async fn heartbeat(&self, message: &str) -> Result<Arc<str>, L2Error> {
        let mut conn = self.connection().map_err(|e| self.probe_failed(e))?;
        let cluster = self.is_cluster();
        let op = async {
            // On a cluster the marker's server is one of several: the generation
            // follows the run ids of all primaries (any of them lost is data lost).
            let run = if cluster {
                server_run(&mut conn).await?
            } else {
                String::new()
            };
            let mut inv = self.heartbeat_script.key(self.generation_key());
            inv.arg(new_generation())
                .arg(self.channel())
                .arg(message)
                .arg(run);
            inv.invoke_async::<String>(&mut conn).await
        };
        let g = match deadline::within(self.op_timeout, op).await {
            Ok(Ok(g)) => g,
            Ok(Err(e)) => return Err(self.probe_failed(L2Error::Redis(e))),
            Err(_) => return Err(self.probe_failed(L2Error::Timeout)),
        };
        *lock(&self.failing_since) = None;
        self.breaker.on_success();
        self.generation.send_if_modified(|held| {
            let moved = held.as_deref() != Some(g.as_str());
            if moved && held.is_some() {
                self.stats.generations.fetch_add(1, Ordering::Relaxed);
            }
            if moved {
                *held = Some(g.as_str().into());
            }
            moved
        });
        self.verified.store(true, Ordering::Release);
        self.current_generation()
    }

    /// The pub/sub channel of invalidations.
    pub fn channel(&self) -> String {
        format!("{{{}}}:inv", self.prefix)
    }

    /// Reads an entry with the current epochs of `epoch_names`, in one round trip. An
    /// entry whose recorded epochs differ from the current ones is dropped (invalidated).
    pub async fn lookup(&self, key: &str, epoch_names: &[Name]) -> Result<Lookup, L2Error> {
        let g = self.current_generation()?;
        let mut cmd = redis::cmd("MGET");
        cmd.arg(self.generation_key()).arg(self.entry_key(&g, key));
        for n in epoch_names {
            cmd.arg(self.name_key(&g, n));
        }
        let values: Vec<redis::Value> = self
            .guarded(|mut c| async move { cmd.query_async(&mut c).await })
            .await?;
        let mut it = values.into_iter();
        if !holds(it.next(), &g) {
            return Err(L2Error::Generation);
        }
        let raw = it.next();
        let epochs: Vec<u64> = it.map(epoch_value).collect();
        let entry = match raw {
            Some(redis::Value::BulkString(b)) => Some(self.decode(b)?),
            _ => None,
        };
        let entry = entry.filter(|e| e.epochs == epochs);
        Ok(Lookup { entry, epochs })
    }

    fn decode(&self, bytes: Vec<u8>) -> Result<Entry, L2Error> {
        Entry::decode(Bytes::from(bytes)).map_err(|e| {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            L2Error::from(e)
        })
    }

    /// Stores an entry for `keep` if the epochs of `epoch_names` still equal
    /// `entry.epochs`; `Ok(false)` when an invalidation came first.
    pub async fn store_fenced(
        &self,
        key: &str,
        entry: &Entry,
        keep: Duration,
        epoch_names: &[Name],
    ) -> Result<bool, L2Error> {
        let g = self.current_generation()?;
        let mut check = redis::cmd("MGET");
        check.arg(self.generation_key());
        for n in epoch_names {
            check.arg(self.name_key(&g, n));
        }
        let mut set = redis::cmd("SET");
        set.arg(self.entry_key(&g, key))
            .arg(entry.encode().as_ref())
            .arg("PX")
            .arg(keep.as_millis().max(1) as u64);
        let expected = entry.epochs.clone();
        // The check, then the store: not one step on a cluster (the epochs may live on
        // other nodes), nor needed: an epoch moved in between makes the entry's recorded
        // epochs differ from the current ones, and no lookup serves it.
        let stored: Option<bool> = self
            .guarded(|mut c| async move {
                let now: Vec<redis::Value> = check.query_async(&mut c).await?;
                let mut it = now.into_iter();
                if !holds(it.next(), &g) {
                    return Ok(None);
                }
                if it.map(epoch_value).collect::<Vec<_>>() != expected {
                    return Ok(Some(false));
                }
                set.query_async::<()>(&mut c).await?;
                Ok(Some(true))
            })
            .await?;
        let stored = stored.ok_or(L2Error::Generation)?;
        if !stored {
            self.stats.fenced.fetch_add(1, Ordering::Relaxed);
        }
        Ok(stored)
    }

    /// Moves the epochs `names` and publishes `message` on the bus, atomically; in the
    /// same step, stores each of `stores` whose epochs then hold exactly the values it
    /// expects (see [`SharedStore`]). Returns how many were stored. When Redis holds
    /// another generation than this instance, the generation is checked again and the
    /// step tried once more: a write must not wait for the next heartbeat.
    pub async fn invalidate(
        &self,
        names: &[Name],
        message: &str,
        stores: &[SharedStore],
    ) -> Result<usize, L2Error> {
        match self.invalidate_once(names, message, stores).await {
            Err(L2Error::Generation) => {
                self.heartbeat("").await?;
                self.invalidate_once(names, message, stores).await
            }
            other => other,
        }
    }

    async fn invalidate_once(
        &self,
        names: &[Name],
        message: &str,
        stores: &[SharedStore],
    ) -> Result<usize, L2Error> {
        if self.is_cluster() {
            return self.invalidate_spread(names, message, stores).await;
        }
        let g = self.current_generation()?;
        let mut inv = self.invalidate_script.key(self.generation_key());
        for n in names {
            inv.key(self.name_key(&g, n));
        }
        inv.arg(&*g)
            .arg(self.channel())
            .arg(EPOCH_EXPIRE_MS)
            .arg(message)
            .arg(names.len())
            .arg(stores.len());
        for st in stores {
            inv.key(self.entry_key(&g, &st.key));
            for n in &st.names {
                inv.key(self.name_key(&g, n));
            }
            inv.arg(st.names.len())
                .arg(st.keep.as_millis().max(1) as u64)
                .arg(st.entry.encode().as_ref());
            for e in &st.entry.epochs {
                inv.arg(*e);
            }
        }
        let stored: i64 = self
            .guarded(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        Ok(stored.max(0) as usize)
    }

    /// The current values of the epochs `names` (0 for one never moved).
    pub async fn epochs(&self, names: &[Name]) -> Result<Vec<u64>, L2Error> {
        let g = self.current_generation()?;
        let mut cmd = redis::cmd("MGET");
        for n in names {
            cmd.arg(self.name_key(&g, n));
        }
        let values: Vec<Option<u64>> = self
            .guarded(|mut c| async move { cmd.query_async(&mut c).await })
            .await?;
        Ok(values.into_iter().map(|v| v.unwrap_or(0)).collect())
    }

    /// Records that `entity` was seen in `families`, for `keep`.
    pub async fn remember(
        &self,
        members: &[(String, Vec<String>)],
        keep: Duration,
    ) -> Result<(), L2Error> {
        let g = self.current_generation()?;
        // One step per entity (its set and expiry: one key, so one slot on a cluster).
        let steps: Vec<redis::Pipeline> = members
            .iter()
            .filter(|(_, f)| !f.is_empty())
            .map(|(entity, families)| {
                let k = self.members_key(&g, entity);
                redis::pipe()
                    .sadd(&k, families)
                    .ignore()
                    .pexpire(&k, keep.as_millis() as i64)
                    .ignore()
                    .to_owned()
            })
            .collect();
        self.guarded(|c| async move {
            futures_util::future::try_join_all(steps.into_iter().map(|p| {
                let mut c = c.clone();
                async move { p.query_async::<()>(&mut c).await }
            }))
            .await
            .map(drop)
        })
        .await
    }

    /// The families `entity` is known to belong to.
    pub async fn known(&self, entity: &str) -> Result<Vec<String>, L2Error> {
        let g = self.current_generation()?;
        let cmd = redis::cmd("SMEMBERS")
            .arg(self.members_key(&g, entity))
            .to_owned();
        self.guarded(|mut c| async move { cmd.query_async(&mut c).await })
            .await
    }

    /// Deletes one entry.
    pub async fn delete(&self, key: &str) -> Result<(), L2Error> {
        let g = self.current_generation()?;
        let cmd = redis::cmd("DEL").arg(self.entry_key(&g, key)).to_owned();
        self.guarded(|mut c| async move { cmd.query_async::<()>(&mut c).await })
            .await
    }

    /// Subscribes to `channel` on a connection of its own; the stream ends when the
    /// connection drops. On a cluster, on one node (classic pub/sub reaches every node);
    /// the next subscription tries another node first.
    pub async fn subscribe(
        &self,
        channel: &str,
    ) -> Result<std::pin::Pin<Box<dyn futures_util::Stream<Item = Vec<u8>> + Send>>, L2Error> {
        use futures_util::StreamExt;
        let connect = async {
            let endpoint = self.endpoints.current().ok_or(L2Error::NoMaster)?;
            Ok::<_, L2Error>(endpoint.subscribe(channel).await?)
        };
        let ps = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| L2Error::Timeout)??;
        Ok(Box::pin(
            ps.into_on_message().map(|m| m.get_payload_bytes().to_vec()),
        ))
    }

    /// Round trip to Redis, for readiness reports.
    pub async fn ping(&self) -> Result<(), L2Error> {
        let cmd = redis::cmd("PING");
        self.guarded(|mut c| async move { cmd.query_async::<String>(&mut c).await })
            .await
            .map(drop)
    }

    /// A connection of its own (for a blocking read, which would hold up every other
    /// command on the shared one), answering within `wait` plus the op timeout (at least
    /// [`BLOCKING_MARGIN`]).
    pub(crate) async fn dedicated(&self, wait: Duration) -> Result<Conn, L2Error> {
        let endpoint = self.endpoints.current().ok_or(L2Error::NoMaster)?;
        Ok(endpoint
            .own(
                self.connect_timeout,
                wait + self.op_timeout.max(BLOCKING_MARGIN),
            )
            .await?)
    }

    /// The key prefix (other Redis users of this deployment, such as the status index's
    /// copy, build their keys under it).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis server's `run_id`: it changes when the server restarts (and may then
    /// have loaded an old snapshot). On a cluster, those of all primaries (sorted,
    /// comma-separated): any of them restarted or replaced by its replica changes it.
    pub async fn run_id(&self) -> Result<String, L2Error> {
        self.guarded(|mut c| async move { server_run(&mut c).await })
            .await
    }

    fn probe_failed(&self, e: L2Error) -> L2Error {
        self.verified.store(false, Ordering::Release);
        self.count_failure();
        self.renew_if_stuck();
        e
    }

    /// An operation failed: counted, and told to the breaker.
    fn count_failure(&self) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        self.breaker.on_failure();
    }

    /// After heartbeats failed for `renew_after` without a break, on a cluster: its
    /// connection is built again (see [`Endpoints::renew_cluster`]); then again after
    /// each further `renew_after` of failures (the cluster may be down, or its replica
    /// not yet promoted, so the new connection may not answer either).
    fn renew_if_stuck(&self) {
        if !self.is_cluster() {
            return;
        }
        let now = tokio::time::Instant::now();
        let failing_for = {
            let mut since = lock(&self.failing_since);
            let start = *since.get_or_insert(now);
            let failing_for = now - start;
            if failing_for < self.renew_after {
                return;
            }
            *since = Some(now);
            failing_for
        };
        if self.endpoints.renew_cluster() {
            self.stats.renewals.fetch_add(1, Ordering::Relaxed);
            warn!(
                failing_for = ?failing_for,
                "redis cluster heartbeats failed: its connection is built again from the seed nodes"
            );
        }
    }

    /// Runs one operation under the breaker and the op timeout.
    pub(crate) async fn guarded<T, F, Fut>(&self, op: F) -> Result<T, L2Error>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.breaker.allow() {
            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
            return Err(L2Error::Skipped);
        }
        let conn = match self.connection() {
            Ok(c) => c,
            Err(e) => {
                self.count_failure();
                return Err(e);
            }
        };
        let result = match deadline::within(self.op_timeout, op(conn)).await {
            Ok(Ok(v)) => Ok(v),
            // Redis answered: it is up, only the generation moved.
            Ok(Err(e)) if e.code() == Some("GENERATION") => {
                self.breaker.on_success();
                return Err(L2Error::Generation);
            }
            Ok(Err(e)) => Err(L2Error::Redis(e)),
            Err(_) => Err(L2Error::Timeout),
        };
        match &result {
            Ok(_) => self.breaker.on_success(),
            Err(_) => self.count_failure(),
        }
        result
    }

    /// The shared connection to the Redis in force.
    fn connection(&self) -> Result<Conn, L2Error> {
        Ok(self
            .endpoints
            .current()
            .ok_or(L2Error::NoMaster)?
            .conn
            .clone())
    }

    /// Under Sentinel, follows the master (see [`crate::redis_master`]); returns at once
    /// in standalone mode.
    pub async fn follow_master(self, every: Duration) {
        self.endpoints.clone().follow(every).await;
    }

    /// Sees each change of master (a failover followed): subscriptions must be made again.
    pub fn watch_master(&self) -> tokio::sync::watch::Receiver<u64> {
        self.endpoints.watch_moves()
    }

    /// Breaker state, for health and metrics.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Counters.
    pub fn stats(&self) -> &L2Stats {
        &self.stats
    }
}

/// The Redis key of the generation marker (a string: `GEN/RUN`) under `prefix`: gone,
/// the next heartbeat starts a new generation.
pub fn generation_marker(prefix: &str) -> String {
    format!("{{{prefix}}}:gen")
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh generation: 16 hex digits, random per call (time and a per-process seed).
fn new_generation() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    h.write_u64(now);
    format!("{:016x}", h.finish())
}
