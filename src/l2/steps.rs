//! How the shared tier's operations run on Redis: its Lua scripts, the invalidation as
//! one-key steps on a cluster (whose keys are in many slots), and reading back what
//! Redis holds (the generation marker, an epoch, the servers' run ids).

use super::{EPOCH_EXPIRE_MS, L2, L2Error, SharedStore};
use crate::consistency::names::Name;
use crate::redis_master::Conn;

// One server: the whole invalidation in one step, after the generation check (KEYS[1],
// ARGV[1]). KEYS: the marker, the n epochs to move, then per entry to store: its key and
// its m epochs. ARGV: generation, channel, epoch expiry, message, n, entry count, then
// per entry: m, keep ms, the encoded entry, and the m epoch values it must find (it is
// stored only if it does). On a cluster the keys are in many slots: see
// `L2::invalidate_spread`.
pub(super) const INVALIDATE: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur or string.match(cur, '^(%x+)/') ~= ARGV[1] then
  return redis.error_reply('GENERATION moved')
end
local n = tonumber(ARGV[5])
for i = 2, n + 1 do
  redis.call('INCR', KEYS[i])
  redis.call('PEXPIRE', KEYS[i], ARGV[3])
end
local k, a, stored = n + 2, 7, 0
for _ = 1, tonumber(ARGV[6]) do
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
redis.call('PUBLISH', ARGV[2], ARGV[4])
return stored
";

// The heartbeat and the generation check, in one step. KEYS[1]: the generation marker
// (a string `GEN/RUN`: the generation, and the run id of the Redis process that holds
// it, or on a cluster the run ids of all primaries). ARGV: a new generation, the
// channel, the heartbeat message ('' to publish nothing), the run ids ('': this
// server's). A marker missing (data lost) or written under other processes (a restart,
// perhaps from an old snapshot, or a failover) means nothing stored before can be
// trusted: the new generation replaces it. A marker of the older layout (a hash) is
// replaced too. Returns the generation in force.
pub(super) const HEARTBEAT: &str = r"
local run = ARGV[4]
if run == '' then run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') end
local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'string' and t ~= 'none' then redis.call('DEL', KEYS[1]) end
local g, r
local cur = redis.call('GET', KEYS[1])
if cur then g, r = string.match(cur, '^(%x+)/(.*)$') end
if not g or r ~= run then
  g = ARGV[1]
  redis.call('SET', KEYS[1], g .. '/' .. run)
end
if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return g
";

impl L2 {
    /// The invalidation on a cluster, where its keys are in many slots: the moves, then
    /// the stores, then the message, as steps of one key each. The steps run as a task
    /// of their own, so an operation timeout cannot stop them half-way (the moves done,
    /// the message never sent), as a script on one server runs to its end whatever the
    /// client does.
    pub(super) async fn invalidate_spread(
        &self,
        names: &[Name],
        message: &str,
        stores: &[SharedStore],
    ) -> Result<usize, L2Error> {
        use futures_util::future::try_join_all;
        let g = self.current_generation()?;
        let marker = self.generation_key();
        let moves: Vec<String> = names.iter().map(|n| self.name_key(&g, n)).collect();
        // Per entry to store: its key, the keys of its epochs, the values they must hold,
        // and the SET that stores it.
        let stores: Vec<(Vec<String>, Vec<u64>, redis::Cmd)> = stores
            .iter()
            .map(|st| {
                let mut set = redis::cmd("SET");
                set.arg(self.entry_key(&g, &st.key))
                    .arg(st.entry.encode().as_ref())
                    .arg("PX")
                    .arg(st.keep.as_millis().max(1) as u64);
                let keys = st.names.iter().map(|n| self.name_key(&g, n)).collect();
                (keys, st.entry.epochs.clone(), set)
            })
            .collect();
        let publish = redis::cmd("PUBLISH")
            .arg(self.channel())
            .arg(message)
            .to_owned();
        let steps = move |c: Conn| async move {
            // 1. Every move (an epoch and its expiry: one key, so one step), and the
            // generation check, at once.
            let moved = try_join_all(moves.iter().map(|k| {
                let mut c = c.clone();
                let step = redis::pipe()
                    .cmd("INCR")
                    .arg(k)
                    .cmd("PEXPIRE")
                    .arg(k)
                    .arg(EPOCH_EXPIRE_MS)
                    .ignore()
                    .to_owned();
                async move { step.query_async::<(u64,)>(&mut c).await }
            }));
            let mut c0 = c.clone();
            let check = async move {
                redis::cmd("GET")
                    .arg(&marker)
                    .query_async::<redis::Value>(&mut c0)
                    .await
            };
            let (_, marker) = futures_util::try_join!(moved, check)?;
            if !holds(Some(marker), &g) {
                return Ok(None);
            }
            // 2. What it refreshes, each if its epochs hold what it expects after the
            // moves (another move since would make it stale).
            let fresh = try_join_all(stores.into_iter().map(|(keys, expected, set)| {
                let mut c = c.clone();
                async move {
                    let now: Vec<redis::Value> =
                        redis::cmd("MGET").arg(&keys).query_async(&mut c).await?;
                    if now.into_iter().map(epoch_value).collect::<Vec<_>>() != expected {
                        return Ok(0);
                    }
                    set.query_async::<()>(&mut c).await.map(|()| 1usize)
                }
            }))
            .await?;
            // 3. The message, only now: an instance that hears it and reads Redis
            // must find the epochs moved.
            let mut c = c;
            publish.query_async::<i64>(&mut c).await?;
            Ok(Some(fresh.into_iter().sum()))
        };
        let stored: Option<usize> = self
            .guarded(|c| async move {
                tokio::spawn(steps(c)).await.unwrap_or_else(|e| {
                    Err((
                        redis::ErrorKind::Io,
                        "invalidation task failed",
                        e.to_string(),
                    )
                        .into())
                })
            })
            .await?;
        stored.ok_or(L2Error::Generation)
    }
}

/// Whether the marker read (`GEN/RUN`) holds generation `g`.
pub(super) fn holds(marker: Option<redis::Value>, g: &str) -> bool {
    match marker {
        Some(redis::Value::BulkString(b)) => b
            .split(|c| *c == b'/')
            .next()
            .is_some_and(|held| held == g.as_bytes()),
        _ => false,
    }
}

/// An epoch read: 0 when it was never moved, and a value no entry holds when it is not
/// a number (so nothing is served against it).
pub(super) fn epoch_value(v: redis::Value) -> u64 {
    match v {
        redis::Value::Nil => 0,
        v => redis::from_redis_value::<u64>(v).unwrap_or(u64::MAX),
    }
}

/// The `run_id` of the server, or on a cluster those of all primaries (sorted,
/// comma-separated): `INFO server` goes to every primary there.
pub(super) async fn server_run(c: &mut Conn) -> redis::RedisResult<String> {
    let info: redis::Value = redis::cmd("INFO").arg("server").query_async(c).await?;
    let one = |v: redis::Value| -> redis::RedisResult<String> {
        let text: String = redis::from_redis_value(v)?;
        text.lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|id| id.trim().to_owned())
            .ok_or_else(|| {
                (
                    redis::ErrorKind::UnexpectedReturnType,
                    "INFO server has no run_id",
                )
                    .into()
            })
    };
    match info {
        redis::Value::Map(nodes) => {
            let mut runs = nodes
                .into_iter()
                .map(|(_, v)| match v {
                    redis::Value::ServerError(e) => Err(e.into()),
                    v => one(v),
                })
                .collect::<redis::RedisResult<Vec<_>>>()?;
            runs.sort();
            Ok(runs.join(","))
        }
        v => one(v),
    }
}
