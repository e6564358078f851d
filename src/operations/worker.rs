//! This instance's consumer of the operations queue: reads new entries and claims the
//! ones a dead consumer left, runs each attempt, records its outcome once, acknowledges.
//!
//! It owns delivery (at least once); the record's states are [`super::store`]'s and the
//! write itself is the [`Execute`]r's.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use redis::Value;
use tracing::{debug, warn};

use super::store::{GROUP, Start, Store};
use super::{Execute, Outcome};
use crate::config::OperationsConfig;
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
    consumer: String,
    claim_idle: Duration,
}

/// Starts the consumer loop in a task of its own.
pub fn spawn(store: Store, config: OperationsConfig, events: Events, exec: Weak<dyn Execute>) {
    let ctx = Arc::new(Ctx {
        store,
        events,
        consumer: format!("c-{}", &super::new_id()[..16]),
        claim_idle: config.claim_idle,
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
            claim(&ctx, c).await
        } else {
            read_new(&ctx, c).await
        };
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

/// One attempt at operation `op` (queue entry `entry`).
async fn attempt(ctx: Arc<Ctx>, exec: Weak<dyn Execute>, entry: String, op: String) {
    let Some(exec) = exec.upgrade() else { return };
    let (attempt, request) = match ctx.store.start(&op).await {
        Ok(Start::Run { attempt, request }) => (attempt, request),
        Ok(Start::Gone | Start::Final) => return done(&ctx, &entry).await,
        // Left pending: claimed again after `claim_idle`.
        Err(e) => return warn!(error = %e, tier = "shared", %op, "operation not started"),
    };
    let renew = tokio::spawn(renew(ctx.clone(), entry.clone()));
    let outcome: Outcome = exec.execute(request, attempt > 1).await;
    renew.abort();
    match ctx.store.finish(&op, &outcome).await {
        Ok(recorded) => {
            debug!(%op, attempt, status = outcome.status, recorded, "operation finished");
            if recorded {
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
