//! The detached flight of one key: find the result in Redis, or take the key's lease and
//! compute (renewing the lease while the MES works), or wait for the holder's result and
//! take over if its lease runs out; then keep the result and hand it to every waiter.
//! Also the task that follows the compute channel.
//!
//! Redis failing at any step means computing here, without a lease: the flight is then
//! this instance's single-flight only.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use http::header::{self, HeaderValue};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use tokio::sync::broadcast;
use tracing::{debug, warn};

use super::shared::{Notice, Shared};
use super::{COMPUTE_MS, Computer, Done, How, Inner, Job, l1_key};
use crate::entry::Entry;
use crate::error::GatewayError;
use crate::flight::Leader;
use crate::outcome::NoStoreReason;
use crate::upstream::error_chain;

/// What the look in Redis decided.
enum Next {
    /// The flight is over (a result found, or the wait ran out).
    Over(Done),
    /// Compute, holding the lease (`Some(token)`) or without Redis (`None`).
    Compute(Option<String>),
}

/// Runs the flight of `job` to its end and hands the result to its waiters.
pub(super) async fn run(c: Computer, leader: Leader<Done>, job: Job) {
    let done = match settle(&c, &job).await {
        Next::Over(done) => done,
        Next::Compute(token) => compute(&c, job_ref(&job), token, job.parts, job.body).await,
    };
    if let Done::Kept { entry, .. } = &done {
        // Before the flight is released, so a request that finds no flight finds this.
        c.keep_local(&job.key, &job.route, entry);
    }
    leader.finish(done);
}

/// The parts of a job the computation needs besides the request itself.
struct JobRef {
    key: Arc<str>,
    rule: Arc<crate::config::ComputeRule>,
    remote: std::net::SocketAddr,
}

fn job_ref(job: &Job) -> JobRef {
    JobRef {
        key: job.key.clone(),
        rule: job.rule.clone(),
        remote: job.remote,
    }
}

async fn settle(c: &Computer, job: &Job) -> Next {
    let Some(shared) = &c.inner.shared else {
        return Next::Compute(None);
    };
    // Subscribed before the first look, so a result stored after it is heard of.
    let mut notices = c.inner.notices.subscribe();
    let poll = (job.rule.lease / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut held_elsewhere = false;
    let mut failures = 0;
    loop {
        match shared.get(&job.key).await {
            Ok(Some(e)) => return found(c, e, held_elsewhere),
            Ok(None) => {}
            Err(e) if gives_up(&e, &mut failures) => return degraded(&e),
            Err(_) => {
                wait_notice(&mut notices, &job.key, poll, job.deadline).await;
                continue;
            }
        }
        let token = c.token();
        match shared.acquire(&job.key, &token, job.rule.lease).await {
            Ok(true) => return leased(c, shared, job, token, held_elsewhere).await,
            Ok(false) => held_elsewhere = true,
            Err(e) if gives_up(&e, &mut failures) => return degraded(&e),
            Err(_) => {}
        }
        if Instant::now() >= job.deadline {
            let e = GatewayError::UpstreamTimeout("response_timeout (route)");
            return Next::Over(Done::Failed(Arc::new(e)));
        }
        wait_notice(&mut notices, &job.key, poll, job.deadline).await;
    }
}

/// The lease is ours: unless a result was stored between the look and the lease, compute.
async fn leased(c: &Computer, shared: &Shared, job: &Job, token: String, took_over: bool) -> Next {
    if let Ok(Some(e)) = shared.get(&job.key).await {
        let _ = shared.release(&job.key, &token).await;
        return found(c, e, took_over);
    }
    if took_over {
        c.inner.stats.count_takeover();
    }
    Next::Compute(Some(token))
}

fn found(c: &Computer, entry: Entry, waited: bool) -> Next {
    let how = if waited {
        c.inner.stats.count_joined_remote();
        How::Remote
    } else {
        c.inner.stats.count_stored_hit();
        How::Stored
    };
    Next::Over(Done::Kept {
        entry: Arc::new(entry),
        how,
    })
}

/// Whether a Redis error means Redis is down (the breaker is open, or the errors go on):
/// only then does the flight compute without a lease. A single slow answer is waited
/// out, since computing besides a holder costs the MES a whole computation.
fn gives_up(e: &crate::l2::L2Error, failures: &mut u32) -> bool {
    *failures += 1;
    matches!(e, crate::l2::L2Error::Skipped) || *failures >= MAX_FAILURES
}

/// Redis errors in one flight after which it computes without a lease.
const MAX_FAILURES: u32 = 3;

fn degraded(e: &crate::l2::L2Error) -> Next {
    warn!(error = %e, tier = "shared", "compute: redis failed, computing on this instance");
    Next::Compute(None)
}

/// Waits until the compute channel names `key`, or `poll` passes (a missed message, a
/// lease that ran out), or the deadline.
async fn wait_notice(
    rx: &mut broadcast::Receiver<Arc<str>>,
    key: &str,
    poll: Duration,
    deadline: Instant,
) {
    let until = (Instant::now() + poll).min(deadline);
    loop {
        match tokio::time::timeout_at(until.into(), rx.recv()).await {
            Ok(Ok(k)) if &*k == key => return,
            Ok(Ok(_)) => {}
            Ok(Err(broadcast::error::RecvError::Lagged(_))) | Err(_) => return,
            Ok(Err(broadcast::error::RecvError::Closed)) => {
                tokio::time::sleep_until(until.into()).await;
                return;
            }
        }
    }
}

/// Asks the MES, renewing the lease meanwhile; keeps a result the rule keeps (in Redis,
/// releasing the lease and telling everyone in the same step) or releases the lease.
async fn compute(
    c: &Computer,
    job: JobRef,
    token: Option<String>,
    parts: http::request::Parts,
    body: bytes::Bytes,
) -> Done {
    c.inner.stats.count_started();
    let started = Instant::now();
    let shared = c.inner.shared.as_ref().filter(|_| token.is_some());
    // Stopped when this function ends in any way (a panic, an abort included): a lease
    // renewed by an orphaned task would keep every waiter from taking over.
    let renewal = match (shared, &token) {
        (Some(s), Some(t)) => {
            let task = renew(s.clone(), job.key.clone(), t.clone(), job.rule.lease);
            Some(AbortOnDrop(tokio::spawn(task)))
        }
        _ => None,
    };
    let req = Request::from_parts(parts, Either::Right(Full::new(body)));
    let answer = fetch(c, req, job.remote, job.rule.max_body).await;
    drop(renewal);
    let ms = started.elapsed().as_millis() as u64;
    let done = verdict(c, &job, answer, ms);
    if let (Some(s), Some(t)) = (shared, &token) {
        let stored = match &done {
            Done::Kept { entry, .. } => s.store(&job.key, entry, job.rule.ttl, t).await,
            _ => s.release(&job.key, t).await,
        };
        if let Err(e) = stored {
            warn!(error = %e, tier = "shared", "compute: could not store or release in redis");
        }
    }
    done
}

/// The answer as a flight's end: kept, handed on unkept, or failed.
fn verdict(
    c: &Computer,
    job: &JobRef,
    answer: Result<(StatusCode, http::HeaderMap, bytes::Bytes), GatewayError>,
    ms: u64,
) -> Done {
    let (status, mut headers, body) = match answer {
        Ok(a) => a,
        Err(e) => return Done::Failed(Arc::new(e)),
    };
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(COMPUTE_MS, HeaderValue::from(ms));
    let ttl_ms = job.rule.ttl.as_millis() as u64;
    let entry = Arc::new(Entry {
        status,
        headers,
        body,
        stored_at_ms: c.inner.clock.now_ms(),
        ttl_ms,
        epochs: Vec::new(),
    });
    let no_store = if !job.rule.statuses.contains(&status) {
        Some(NoStoreReason::Status)
    } else if entry.headers.contains_key(header::SET_COOKIE) {
        Some(NoStoreReason::SetCookie)
    } else if serde_json::from_slice::<serde::de::IgnoredAny>(&entry.body).is_err() {
        // Not JSON: the MES answered something other than a result.
        Some(NoStoreReason::Status)
    } else {
        None
    };
    match no_store {
        None => Done::Kept {
            entry,
            how: How::Computed,
        },
        Some(r) => Done::Unkept(entry, r),
    }
}

type Answer = (StatusCode, http::HeaderMap, bytes::Bytes);

/// Forwards to the MES and buffers its answer (at most `max` bytes).
async fn fetch(
    c: &Computer,
    req: Request<crate::upstream::UpstreamBody>,
    remote: std::net::SocketAddr,
    max: usize,
) -> Result<Answer, GatewayError> {
    let resp = c.inner.pass.forward(req, remote).await?;
    let (parts, body) = resp.into_parts();
    let read = Limited::new(body, max).collect();
    match tokio::time::timeout(c.inner.default_wait, read).await {
        Ok(Ok(b)) => Ok((parts.status, parts.headers, b.to_bytes())),
        Ok(Err(e)) => Err(GatewayError::UpstreamProtocol(error_chain(&*e))),
        Err(_) => Err(GatewayError::UpstreamTimeout("total")),
    }
}

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps the lease alive while the MES computes: every third of its lifetime.
async fn renew(shared: Shared, key: Arc<str>, token: String, lease: Duration) {
    let mut every = tokio::time::interval(lease / 3);
    every.tick().await;
    loop {
        every.tick().await;
        match shared.renew(&key, &token, lease).await {
            Ok(true) => {}
            Ok(false) => {
                warn!(key = &*key, "compute: lease lost while computing");
                return;
            }
            Err(e) => debug!(error = %e, "compute: lease renewal failed"),
        }
    }
}

/// Follows the compute channel while the computer lives: results stored elsewhere wake
/// this instance's waiting flights, purges drop local copies.
pub(super) async fn follow(inner: Weak<Inner>) {
    loop {
        let Some(shared) = inner.upgrade().and_then(|i| i.shared.clone()) else {
            return;
        };
        match shared.subscribe().await {
            Ok(mut stream) => {
                while let Some(raw) = stream.next().await {
                    let Some(i) = inner.upgrade() else { return };
                    match Notice::decode(&raw) {
                        Some(Notice::Done(k)) => {
                            let _ = i.notices.send(k.into());
                        }
                        Some(Notice::Purge(k)) => i.l1.remove(&l1_key(&k)),
                        None => {}
                    }
                }
            }
            Err(e) => debug!(error = %e, "compute: channel subscription failed"),
        }
        // Waiters poll meanwhile; try again shortly.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A per-process id for lease tokens: the pid and the start time.
pub(super) fn instance_id() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{t:x}", std::process::id())
}
