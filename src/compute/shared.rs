//! What compute routes keep in Redis: results, the lease of a computation under way, and
//! the channel that tells every instance a result is stored (or a key purged).
//!
//! Every operation goes through the shared tier's breaker and op timeout
//! ([`L2::guarded`]), and every error is the caller's cue to go on without Redis. Keys
//! carry the deployment's hash tag, `{prefix}:c:r:KEY` (result), `{prefix}:c:l:KEY`
//! (lease), and are not tied to the shared tier's generation: a result is a pure
//! function of its key, so one that comes back with an old snapshot is still true.

use bytes::Bytes;

use crate::entry::Entry;
use crate::l2::{L2, L2Error};

// Stores the result, lets go of the lease if it is still ours, tells everyone.
// KEYS: result, lease. ARGV: entry, keep ms, our token, channel, message.
const STORE: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
";

// Lets go of the lease if it is still ours and tells the waiters to look again.
// KEYS: lease. ARGV: our token, channel, message.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
";

// Extends the lease if it is still ours: 1, or 0 when it ran out or another holds it.
// KEYS: lease. ARGV: our token, lease ms.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// A message on the compute channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A computation for the key ended: its result is stored, or it failed and the
    /// lease is free (look again).
    Done(String),
    /// The key was purged: drop it from the local tier.
    Purge(String),
}

impl Notice {
    fn encode(&self) -> String {
        match self {
            Self::Done(k) => format!("done {k}"),
            Self::Purge(k) => format!("purge {k}"),
        }
    }

    /// Parses a channel message; anything else is `None` (ignored).
    pub fn decode(raw: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(raw).ok()?;
        let (kind, key) = text.split_once(' ')?;
        match kind {
            "done" => Some(Self::Done(key.to_owned())),
            "purge" => Some(Self::Purge(key.to_owned())),
            _ => None,
        }
    }
}

/// The compute keys of one deployment in Redis. Cheap to clone.
#[derive(Clone)]
pub struct Shared {
    l2: L2,
    /// `STORE`, `RELEASE`, `RENEW`.
    scripts: std::sync::Arc<[redis::Script; 3]>,
}

impl Shared {
    /// Over the shared tier's connection, breaker and prefix.
    pub fn new(l2: L2) -> Self {
        let scripts = [STORE, RELEASE, RENEW].map(redis::Script::new);
        Self {
            l2,
            scripts: std::sync::Arc::new(scripts),
        }
    }

    fn result_key(&self, key: &str) -> String {
        format!("{{{}:c:{key}}}:r", self.l2.prefix())
    }

    fn lease_key(&self, key: &str) -> String {
        format!("{{{}:c:{key}}}:l", self.l2.prefix())
    }

    /// The channel of [`Notice`]s.
    pub fn channel(&self) -> String {
        format!("{{{}}}:c:bus", self.l2.prefix())
    }

    /// The stored result of `key`, if any (bytes that are not an entry read as none).
    pub async fn get(&self, key: &str) -> Result<Option<Entry>, L2Error> {
        let cmd = redis::cmd("GET").arg(self.result_key(key)).to_owned();
        let raw: Option<Vec<u8>> = self
            .l2
            .guarded(|mut c| async move { cmd.query_async(&mut c).await })
            .await?;
        Ok(raw.and_then(|b| Entry::decode(Bytes::from(b)).ok()))
    }

    /// Takes the lease of `key` for `lease` if nobody holds it (`SET NX PX`).
    pub async fn acquire(
        &self,
        key: &str,
        token: &str,
        lease: std::time::Duration,
    ) -> Result<bool, L2Error> {
        let cmd = redis::cmd("SET")
            .arg(self.lease_key(key))
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(millis(lease))
            .to_owned();
        let set: Option<String> = self
            .l2
            .guarded(|mut c| async move { cmd.query_async(&mut c).await })
            .await?;
        Ok(set.is_some())
    }

    /// Extends our lease; `Ok(false)` when it is no longer ours.
    pub async fn renew(
        &self,
        key: &str,
        token: &str,
        lease: std::time::Duration,
    ) -> Result<bool, L2Error> {
        let mut inv = self.scripts[2].key(self.lease_key(key));
        inv.arg(token).arg(millis(lease));
        let n: i64 = self
            .l2
            .guarded(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        Ok(n == 1)
    }

    /// Stores a result for `keep`, releases our lease and announces it, in one step.
    pub async fn store(
        &self,
        key: &str,
        entry: &Entry,
        keep: std::time::Duration,
        token: &str,
    ) -> Result<(), L2Error> {
        let mut inv = self.scripts[0].key(self.result_key(key));
        inv.key(self.lease_key(key))
            .arg(entry.encode().to_vec())
            .arg(millis(keep))
            .arg(token)
            .arg(self.channel())
            .arg(Notice::Done(key.to_owned()).encode());
        self.l2
            .guarded(|mut c| async move { inv.invoke_async::<i64>(&mut c).await })
            .await
            .map(drop)
    }

    /// Releases our lease without a result and tells the waiters to look again.
    pub async fn release(&self, key: &str, token: &str) -> Result<(), L2Error> {
        let mut inv = self.scripts[1].key(self.lease_key(key));
        inv.arg(token)
            .arg(self.channel())
            .arg(Notice::Done(key.to_owned()).encode());
        self.l2
            .guarded(|mut c| async move { inv.invoke_async::<i64>(&mut c).await })
            .await
            .map(drop)
    }

    /// Deletes the result of `key` and tells every instance to drop it locally.
    pub async fn purge(&self, key: &str) -> Result<(), L2Error> {
        let del = redis::cmd("DEL").arg(self.result_key(key)).to_owned();
        self.l2
            .guarded(|mut c| async move { del.query_async::<i64>(&mut c).await })
            .await?;
        let publish = redis::cmd("PUBLISH")
            .arg(self.channel())
            .arg(Notice::Purge(key.to_owned()).encode())
            .to_owned();
        self.l2
            .guarded(|mut c| async move { publish.query_async::<i64>(&mut c).await })
            .await
            .map(drop)
    }

    /// Subscribes to the compute channel (a connection of its own).
    pub async fn subscribe(
        &self,
    ) -> Result<std::pin::Pin<Box<dyn futures_util::Stream<Item = Vec<u8>> + Send>>, L2Error> {
        self.l2.subscribe(&self.channel()).await
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_round_trip_and_garbage_is_ignored() {
        for n in [Notice::Done("ab".into()), Notice::Purge("cd".into())] {
            assert_eq!(Notice::decode(n.encode().as_bytes()), Some(n));
        }
        for raw in [&b"done"[..], b"nope ab", b"\xff\xfe ab"] {
            assert_eq!(Notice::decode(raw), None);
        }
    }
}
