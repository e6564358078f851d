//! This instance's consumer of the operations queue: reads new entries and claims the
//! ones a dead consumer left, runs each attempt, records its outcome once, acknowledges.
//!
//! It owns delivery (at least once); the record's states are [`super::store`]'s and the
//! write itself is the [`Execute`]r's.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use redis::Value;
use tracing::{debug, warn};

use super::store::{GROUP, Start, Store};
use super::{Execute, OperationStats, Outcome};
use crate::config::OperationsConfig;
use crate::error::GatewayError;
use crate::events::{Event, Events, items, text};
use crate::l2::L2Error;

/// How long one blocking read waits for new entries (also how soon a worker notices that
/// its gateway is gone).
const BLOCK: Duration = Duration::from_millis(1000);

/// Entries taken per read.
const BATCH: usize = 16;

/// What every attempt needs.
struct Ctx {
    store: Store,
    events: Events,
    stats: Arc<OperationStats>,
    consumer: String,
    claim_idle: Duration,
    max_attempts: u32,
    retry_backoff: Duration,
}

/// Starts the consumer loop in a task of its own.
pub fn spawn(
    store: Store,
    config: OperationsConfig,
    events: Events,
    stats: Arc<OperationStats>,
    exec: Weak<dyn Execute>,
) {
    let ctx = Arc::new(Ctx {
        store,
        events,
        stats,
        consumer: format!("c-{}", &super::new_id()[..16]),
        claim_idle: config.claim_idle,
        max_attempts: config.max_attempts,
        retry_backoff: config.retry_backoff,
    });
    tokio::spawn(run(ctx, exec));
}

async fn run(ctx: Arc<Ctx>, exec: Weak<dyn Execute>) {
    let mut conn = None;
    let mut last_claim: Option<Instant> = None;
    while exec.strong_count() > 0 {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match connect(&ctx).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    debug!(error = %e, tier = "shared", "operations queue not reachable");
                    tokio::time::sleep(BLOCK / 2).await;
                    continue;
                }
            },
        };
        let claim_due = last_claim.is_none_or(|t| t.elapsed() >= ctx.claim_idle / 2);
        let got = if claim_due {
            last_claim = Some(Instant::now());
            claim(&ctx, c).await.inspect(|got| {
                let n = got.len() as u64;
                ctx.stats.claimed.fetch_add(n, Ordering::Relaxed);
            })
        } else {
            read_new(&ctx, c).await
        };
        // Entries are deleted when done: the length is what is not finished yet.
        if let Ok(n) = redis::cmd("XLEN")
            .arg(ctx.store.queue_key())
            .query_async::<u64>(c)
            .await
        {
            ctx.stats.queued.store(n, Ordering::Relaxed);
        }
        match got {
            Ok(entries) => {
                for (entry, op) in entries {
                    tokio::spawn(attempt(ctx.clone(), exec.clone(), entry, op));
                }
            }
            Err(e) if no_queue_yet(&e) => tokio::time::sleep(BLOCK).await,
            Err(e) => {
                warn!(error = %e, tier = "shared", "operations queue read failed");
                conn = None;
                tokio::time::sleep(BLOCK / 2).await;
            }
        }
    }
}

/// A connection of its own (the blocking read would hold up every other command).
async fn connect(ctx: &Ctx) -> Result<crate::redis_master::Conn, L2Error> {
    ctx.store.l2().dedicated(BLOCK).await
}

/// Whether `e` only says that no operation was ever queued (the first one makes the
/// queue and its group).
fn no_queue_yet(e: &L2Error) -> bool {
    matches!(e, L2Error::Redis(r) if r.code() == Some("NOGROUP"))
}

async fn read_new(
    ctx: &Ctx,
    c: &mut crate::redis_master::Conn,
) -> Result<Vec<(String, String)>, L2Error> {
    let v: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg(&ctx.consumer)
        .arg("COUNT")
        .arg(BATCH)
        .arg("BLOCK")
        .arg(BLOCK.as_millis() as u64)
        .arg("STREAMS")
        .arg(ctx.store.queue_key())
        .arg(">")
        .query_async(c)
        .await?;
    // [[queue, [entry…]]], or nil when nothing came.
    let mut out = Vec::new();
    for stream in items(&v) {
        if let Some(list) = items(stream).get(1) {
            out.extend(entries(list));
        }
    }
    Ok(out)
}

/// Entries delivered to a consumer that has not acknowledged them for `claim_idle`: it
/// died (or lost Redis) with them. A running attempt renews its claim, so it is not here.
async fn claim(
    ctx: &Ctx,
    c: &mut crate::redis_master::Conn,
) -> Result<Vec<(String, String)>, L2Error> {
    let v: Value = redis::cmd("XAUTOCLAIM")
        .arg(ctx.store.queue_key())
        .arg(GROUP)
        .arg(&ctx.consumer)
        .arg(ctx.claim_idle.as_millis() as u64)
        .arg("0-0")
        .arg("COUNT")
        .arg(BATCH)
        .query_async(c)
        .await?;
    // [next cursor, [entry…], [deleted id…]]
    Ok(items(&v).get(1).map(entries).unwrap_or_default())
}

/// `[[id, [field, value…]]…]` → (entry id, operation id).
fn entries(list: &Value) -> Vec<(String, String)> {
    let one = |e: &Value| {
        let e = items(e);
        let id = text(e.first()?)?;
        let fields = items(e.get(1)?);
        let op = fields
            .chunks(2)
            .find(|kv| text(&kv[0]).as_deref() == Some("op"))
            .and_then(|kv| text(kv.get(1)?))?;
        Some((id, op))
    };
    items(list).iter().filter_map(one).collect()
}

/// Operation `op` (queue entry `entry`): its attempts, then its outcome recorded once.
async fn attempt(ctx: Arc<Ctx>, exec: Weak<dyn Execute>, entry: String, op: String) {
    let Some(exec) = exec.upgrade() else { return };
    let renew = tokio::spawn(renew(ctx.clone(), entry.clone()));
    let outcome = attempts(&ctx, &*exec, &entry, &op).await;
    renew.abort();
    let Some(outcome) = outcome else { return };
    match ctx.store.finish(&op, &outcome).await {
        Ok(recorded) => {
            debug!(%op, status = outcome.status, recorded, "operation finished");
            if recorded {
                let counter = match outcome.state() {
                    super::State::Succeeded => &ctx.stats.succeeded,
                    _ => &ctx.stats.failed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let state = outcome.state().as_str();
                let at = format!("{}{op}", super::PATH);
                let e = Event::operation(&op, state, outcome.status, &outcome.body, &at);
                ctx.events.publish(e).await;
            }
            done(&ctx, &entry).await;
        }
        // Left pending: a later attempt finds the write applied (see write::confirm).
        Err(e) => warn!(error = %e, tier = "shared", %op, "operation outcome not recorded"),
    }
}

/// Runs attempts until there is an outcome to record: an MES found unreachable (nothing
/// was sent) is tried again after a backoff, up to `operations.max_attempts` in all.
/// `None`: nothing to record (already final or gone, or Redis did not answer: the entry
/// stays pending and is claimed again).
async fn attempts(ctx: &Ctx, exec: &dyn Execute, entry: &str, op: &str) -> Option<Outcome> {
    loop {
        let (attempt, request) = match ctx.store.start(op).await {
            Ok(Start::Run { attempt, request }) => (attempt, request),
            Ok(Start::Gone | Start::Final) => {
                done(ctx, entry).await;
                return None;
            }
            Err(e) => {
                warn!(error = %e, tier = "shared", %op, "operation not started");
                return None;
            }
        };
        let id = super::OperationId(op.into());
        let outcome: Outcome = exec.execute(id, request, attempt > 1).await;
        if !mes_unreachable(&outcome) || attempt >= u64::from(ctx.max_attempts) {
            return Some(outcome);
        }
        let wait = backoff(ctx.retry_backoff, attempt);
        debug!(%op, attempt, wait_ms = wait.as_millis() as u64, "MES unreachable; operation retried");
        ctx.stats.retried.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(wait).await;
    }
}

/// Whether the attempt found the MES unreachable: mesgate's own problem answer, the
/// request never reached it.
fn mes_unreachable(o: &Outcome) -> bool {
    let kind = GatewayError::UpstreamConnect(String::new());
    let json: Option<serde_json::Value> = serde_json::from_slice(&o.body).ok();
    let want = format!("urn:mesgate:problem:{}", kind.as_str());
    o.status == kind.status().as_u16()
        && json.is_some_and(|j| j["type"].as_str() == Some(want.as_str()))
}

/// The wait after attempt `n` (1 for the first): `base`, doubling, at most 30 s.
fn backoff(base: Duration, n: u64) -> Duration {
    let doubled = base.saturating_mul(1 << (n.saturating_sub(1)).min(16) as u32);
    doubled.min(Duration::from_secs(30))
}

/// Keeps the entry ours while the attempt runs (a slow MES is not a dead consumer).
async fn renew(ctx: Arc<Ctx>, entry: String) {
    loop {
        tokio::time::sleep(ctx.claim_idle / 3).await;
        let cmd = redis::cmd("XCLAIM")
            .arg(ctx.store.queue_key())
            .arg(GROUP)
            .arg(&ctx.consumer)
            .arg(0)
            .arg(&entry)
            .arg("JUSTID")
            .to_owned();
        let l2 = ctx.store.l2();
        let r = l2
            .guarded(|mut c| async move { cmd.query_async::<Value>(&mut c).await })
            .await;
        if let Err(e) = r {
            debug!(error = %e, %entry, "operation claim not renewed");
        }
    }
}

/// Acknowledges and drops the entry: the record holds the outcome.
async fn done(ctx: &Ctx, entry: &str) {
    let queue = ctx.store.queue_key();
    let mut pipe = redis::pipe();
    pipe.cmd("XACK").arg(&queue).arg(GROUP).arg(entry).ignore();
    pipe.cmd("XDEL").arg(&queue).arg(entry).ignore();
    let r = ctx
        .store
        .l2()
        .guarded(|mut c| async move { pipe.query_async::<()>(&mut c).await })
        .await;
    if let Err(e) = r {
        warn!(error = %e, tier = "shared", %entry, "operation entry not acknowledged");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn backoff_doubles_from_the_base_up_to_30_s() {
        let base = Duration::from_millis(500);
        let waits: Vec<_> = (1..=8).map(|n| backoff(base, n).as_millis()).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
    }

    #[test]
    fn entries_are_read_from_stream_replies() {
        let list = Value::Array(vec![
            Value::Array(vec![
                bulk("1-0"),
                Value::Array(vec![bulk("op"), bulk("abc")]),
            ]),
            // Deleted meanwhile (XCLAIM shows it with nil fields): skipped.
            Value::Array(vec![bulk("2-0"), Value::Nil]),
        ]);
        assert_eq!(entries(&list), vec![("1-0".into(), "abc".into())]);
        assert!(entries(&Value::Nil).is_empty());
    }
}
