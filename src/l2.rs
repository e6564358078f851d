//! The shared tier: Redis with a short operation timeout and a circuit breaker.
//!
//! It never fails a request: every error comes back as an [`L2Error`] the caller treats
//! as a miss. Entries are fenced by per-family epochs kept in Redis: a lookup returns the
//! current epochs with the entry, and a store happens only if the epochs did not move
//! since the fill started (one Lua script, so the check and the store are one step).
//!
//! Key layout: every key of a deployment carries the hash tag `{prefix}`, so the
//! multi-key scripts stay in one slot under Redis Cluster.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::breaker::{Breaker, BreakerState};
use crate::config::RedisConfig;
use crate::consistency::names::Name;
use crate::entry::{CodecError, Entry};

/// Epoch keys live far longer than any entry, so an expired epoch (read as 0) can never
/// make an old entry look valid again.
const EPOCH_EXPIRE_MS: u64 = 7 * 24 * 3600 * 1000;

const LOOKUP: &str = r"
local out = {redis.call('GET', KEYS[1]) or false}
for i = 2, #KEYS do out[i] = tonumber(redis.call('GET', KEYS[i]) or '0') end
return out
";

const STORE_FENCED: &str = r"
for i = 2, #KEYS do
  if tonumber(redis.call('GET', KEYS[i]) or '0') ~= tonumber(ARGV[i + 1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

// KEYS: the n epochs to move, then per entry to store: its key and its m epochs.
// ARGV: channel, epoch expiry, message, n, entry count, then per entry: m, keep ms, the
// encoded entry, and the m epoch values it must find (it is stored only if it does).
const INVALIDATE: &str = r"
local n = tonumber(ARGV[4])
for i = 1, n do
  redis.call('INCR', KEYS[i])
  redis.call('PEXPIRE', KEYS[i], ARGV[2])
end
local k, a, stored = n + 1, 6, 0
for _ = 1, tonumber(ARGV[5]) do
  local m = tonumber(ARGV[a])
  local fresh = true
  for i = 1, m do
    if tonumber(redis.call('GET', KEYS[k + i]) or '0') ~= tonumber(ARGV[a + 2 + i]) then
      fresh = false
    end
  end
  if fresh then
    redis.call('SET', KEYS[k], ARGV[a + 2], 'PX', ARGV[a + 1])
    stored = stored + 1
  end
  k, a = k + 1 + m, a + 3 + m
end
redis.call('PUBLISH', ARGV[1], ARGV[3])
return stored
";

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
    /// The breaker is open: Redis was not asked.
    #[error("breaker open, redis skipped")]
    Skipped,
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
            Self::Skipped => "skipped",
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
    client: redis::Client,
    connect_timeout: Duration,
    conn: ConnectionManager,
    prefix: Arc<str>,
    op_timeout: Duration,
    breaker: Arc<Breaker>,
    stats: Arc<L2Stats>,
    scripts: Arc<[redis::Script; 3]>,
}

impl L2 {
    /// Prepares a connection without connecting: the gateway starts even when Redis is
    /// down, and the manager reconnects in the background when it comes back.
    pub fn new(cfg: &RedisConfig) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(cfg.url.as_str())?;
        let manager_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.connect_timeout))
            .set_response_timeout(Some(cfg.op_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        Ok(Self {
            conn: ConnectionManager::new_lazy_with_config(client.clone(), manager_cfg)?,
            client,
            connect_timeout: cfg.connect_timeout,
            prefix: cfg.prefix.as_str().into(),
            op_timeout: cfg.op_timeout,
            breaker: Arc::new(Breaker::new(cfg.breaker_failures, cfg.breaker_cooldown)),
            stats: Arc::default(),
            scripts: Arc::new([
                redis::Script::new(LOOKUP),
                redis::Script::new(STORE_FENCED),
                redis::Script::new(INVALIDATE),
            ]),
        })
    }

    /// The Redis key of a cache entry.
    pub fn entry_key(&self, key: &str) -> String {
        format!("{{{}}}:e:{key}", self.prefix)
    }

    /// The Redis key of an epoch.
    pub fn epoch_key(&self, name: &str) -> String {
        format!("{{{}}}:ep:{name}", self.prefix)
    }

    fn name_key(&self, name: &Name) -> String {
        self.epoch_key(&name.to_string())
    }

    /// The Redis key of an entity's known families.
    pub fn entity_key(&self, entity: &str) -> String {
        format!("{{{}}}:m:{entity}", self.prefix)
    }

    /// The pub/sub channel of invalidations.
    pub fn channel(&self) -> String {
        format!("{{{}}}:inv", self.prefix)
    }

    /// Reads an entry with the current epochs of `epoch_names`, in one round trip. An
    /// entry whose recorded epochs differ from the current ones is dropped (invalidated).
    pub async fn lookup(&self, key: &str, epoch_names: &[Name]) -> Result<Lookup, L2Error> {
        let mut inv = self.scripts[0].key(self.entry_key(key));
        for n in epoch_names {
            inv.key(self.name_key(n));
        }
        let values: Vec<redis::Value> = self
            .guarded(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        let mut it = values.into_iter();
        let raw = it.next();
        let epochs: Vec<u64> = it
            .map(|v| redis::from_redis_value::<u64>(v).unwrap_or(u64::MAX))
            .collect();
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
        let mut inv = self.scripts[1].key(self.entry_key(key));
        for n in epoch_names {
            inv.key(self.name_key(n));
        }
        inv.arg(entry.encode().as_ref())
            .arg(keep.as_millis().max(1) as u64);
        for e in &entry.epochs {
            inv.arg(*e);
        }
        let stored: i64 = self
            .guarded(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        if stored == 0 {
            self.stats.fenced.fetch_add(1, Ordering::Relaxed);
        }
        Ok(stored == 1)
    }

    /// Moves the epochs `names` and publishes `message` on the bus, atomically; in the
    /// same step, stores each of `stores` whose epochs then hold exactly the values it
    /// expects (see [`SharedStore`]). Returns how many were stored.
    pub async fn invalidate(
        &self,
        names: &[Name],
        message: &str,
        stores: &[SharedStore],
    ) -> Result<usize, L2Error> {
        let mut inv = self.scripts[2].prepare_invoke();
        for n in names {
            inv.key(self.name_key(n));
        }
        inv.arg(self.channel())
            .arg(EPOCH_EXPIRE_MS)
            .arg(message)
            .arg(names.len())
            .arg(stores.len());
        for st in stores {
            inv.key(self.entry_key(&st.key));
            for n in &st.names {
                inv.key(self.name_key(n));
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
        let mut cmd = redis::cmd("MGET");
        for n in names {
            cmd.arg(self.name_key(n));
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
        let mut pipe = redis::pipe();
        for (entity, families) in members.iter().filter(|(_, f)| !f.is_empty()) {
            let k = self.entity_key(entity);
            pipe.sadd(&k, families).ignore();
            pipe.pexpire(&k, keep.as_millis() as i64).ignore();
        }
        self.guarded(|mut c| async move { pipe.query_async::<()>(&mut c).await })
            .await
    }

    /// The families `entity` is known to belong to.
    pub async fn known(&self, entity: &str) -> Result<Vec<String>, L2Error> {
        let cmd = redis::cmd("SMEMBERS")
            .arg(self.entity_key(entity))
            .to_owned();
        self.guarded(|mut c| async move { cmd.query_async(&mut c).await })
            .await
    }

    /// Deletes one entry.
    pub async fn delete(&self, key: &str) -> Result<(), L2Error> {
        let cmd = redis::cmd("DEL").arg(self.entry_key(key)).to_owned();
        self.guarded(|mut c| async move { cmd.query_async::<()>(&mut c).await })
            .await
    }

    /// Subscribes to `channel` on a connection of its own; the stream ends when the
    /// connection drops.
    pub async fn subscribe(
        &self,
        channel: &str,
    ) -> Result<std::pin::Pin<Box<dyn futures_util::Stream<Item = Vec<u8>> + Send>>, L2Error> {
        use futures_util::StreamExt;
        let connect = async {
            let mut ps = self.client.get_async_pubsub().await?;
            ps.subscribe(channel).await?;
            Ok::<_, redis::RedisError>(ps)
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

    /// The key prefix (other Redis users of this deployment, such as the status index's
    /// copy, build their keys under it).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis server's `run_id`: it changes when the server restarts (and may then
    /// have loaded an old snapshot).
    pub async fn run_id(&self) -> Result<String, L2Error> {
        let cmd = redis::cmd("INFO").arg("server").to_owned();
        let info: String = self
            .guarded(|mut c| async move { cmd.query_async(&mut c).await })
            .await?;
        info.lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|id| id.trim().to_owned())
            .ok_or_else(|| {
                L2Error::Redis(redis::RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "INFO server has no run_id",
                )))
            })
    }

    /// Runs one operation under the breaker and the op timeout.
    pub(crate) async fn guarded<T, F, Fut>(&self, op: F) -> Result<T, L2Error>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.breaker.allow() {
            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
            return Err(L2Error::Skipped);
        }
        let result = match tokio::time::timeout(self.op_timeout, op(self.conn.clone())).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(L2Error::Redis(e)),
            Err(_) => Err(L2Error::Timeout),
        };
        match &result {
            Ok(_) => self.breaker.on_success(),
            Err(_) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                self.breaker.on_failure();
            }
        }
        result
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
