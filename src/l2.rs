//! The shared tier: Redis with a short operation timeout and a circuit breaker.
//!
//! It never fails a request: every error comes back as an [`L2Error`] the caller treats
//! as a miss. It does not decide what to store ([`crate::proxy`] does).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::breaker::{Breaker, BreakerState};
use crate::config::RedisConfig;
use crate::entry::{CodecError, Entry};

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
}

/// The shared tier. Cheap to clone.
#[derive(Clone)]
pub struct L2 {
    conn: ConnectionManager,
    prefix: Arc<str>,
    op_timeout: Duration,
    breaker: Arc<Breaker>,
    stats: Arc<L2Stats>,
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
            conn: ConnectionManager::new_lazy_with_config(client, manager_cfg)?,
            prefix: cfg.prefix.as_str().into(),
            op_timeout: cfg.op_timeout,
            breaker: Arc::new(Breaker::new(cfg.breaker_failures, cfg.breaker_cooldown)),
            stats: Arc::default(),
        })
    }

    /// The Redis key of a cache key. The `{…}` hash tag keeps the keys a later multi-key
    /// script touches for one entry in one Redis Cluster slot.
    pub fn entry_key(&self, key: &str) -> String {
        format!("{}:e:{{{key}}}", self.prefix)
    }

    /// Reads an entry, fresh or stale; `Ok(None)` when Redis has none.
    pub async fn get(&self, key: &str) -> Result<Option<Entry>, L2Error> {
        let cmd = redis::cmd("GET").arg(self.entry_key(key)).to_owned();
        let raw: Option<Vec<u8>> = self.run(cmd).await?;
        match raw {
            None => Ok(None),
            Some(bytes) => Entry::decode(Bytes::from(bytes)).map(Some).map_err(|e| {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                L2Error::from(e)
            }),
        }
    }

    /// Stores an entry for `keep` (freshness plus the stale window).
    pub async fn set(&self, key: &str, entry: &Entry, keep: Duration) -> Result<(), L2Error> {
        let ms = keep.as_millis().max(1) as u64;
        let cmd = redis::cmd("SET")
            .arg(self.entry_key(key))
            .arg(entry.encode().as_ref())
            .arg("PX")
            .arg(ms)
            .to_owned();
        self.run::<()>(cmd).await
    }

    /// Round trip to Redis, for readiness reports.
    pub async fn ping(&self) -> Result<(), L2Error> {
        self.run::<String>(redis::cmd("PING").to_owned())
            .await
            .map(drop)
    }

    /// Runs one command under the breaker and the op timeout.
    async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, L2Error> {
        if !self.breaker.allow() {
            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
            return Err(L2Error::Skipped);
        }
        let mut conn = self.conn.clone();
        let result = match tokio::time::timeout(self.op_timeout, cmd.query_async(&mut conn)).await {
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
