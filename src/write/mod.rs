//! The write path: forward a write detached from the client, then plan its invalidation
//! from the rule and apply it before the answer leaves.
//!
//! It plans; applying (L1, Redis, bus, retries) is [`crate::consistency`]'s.

mod confirm;
pub mod refresh;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::client_body::{ClientBody, ClientBodyError};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Either, Full, Limited};
use serde_json::Value;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::config::InvalidateRule;
use crate::consistency::Invalidator;
use crate::consistency::bus::Delta;
use crate::consistency::names::push_unique;
use crate::consistency::{Name, Point, WriteMark};
use crate::error::GatewayError;
use crate::events::{Event, Events};
use crate::family::{Source, json_field};
use crate::index::service::Indexes;
use crate::operations::OperationId;
use crate::pass::{Body, Pass};
use crate::read::Reader;
use crate::upstream::error_chain;
use refresh::{Answer, Refresher};

/// The write path of one gateway. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    pass: Pass,
    invalidator: Invalidator,
    reader: Reader,
    refresher: Refresher,
    indexes: Indexes,
    events: Events,
}

/// What one successful write invalidates.
#[derive(Default)]
pub struct Plan {
    /// Names to bump (families, and whole groups for fallbacks).
    pub names: Vec<Name>,
    /// The entity written, opened (see [`crate::consistency::Invalidator::begin_write`]).
    pub mark: Option<WriteMark>,
    /// Whether the previous families were unknown and whole groups were taken instead.
    pub fallback: bool,
}

/// What a write's placeholders can read.
struct WriteFacts<'a> {
    params: &'a [(String, String)],
    request: Option<Value>,
    response: Option<Value>,
}

impl WriteFacts<'_> {
    fn lookup(&self, source: Source, field: &str) -> Option<String> {
        match source {
            Source::Path => self
                .params
                .iter()
                .find(|(n, _)| n == field)
                .map(|(_, v)| v.clone()),
            Source::Request => json_field(self.request.as_ref()?, field),
            Source::Response => json_field(self.response.as_ref()?, field),
            Source::Query | Source::Item => None,
        }
    }
}

impl Writer {
    /// A write path forwarding through `pass`, invalidating through `invalidator`, and
    /// refreshing through `reader`.
    pub fn new(
        pass: Pass,
        invalidator: Invalidator,
        reader: Reader,
        indexes: Indexes,
        events: Events,
    ) -> Self {
        Self {
            events,
            pass,
            invalidator,
            refresher: Refresher::new(reader.clone()),
            reader,
            indexes,
        }
    }

    /// Buffers the write's body (to read its fields), then forwards and invalidates in a
    /// task of its own: a client that goes away cannot cancel either.
    pub async fn write(
        &self,
        req: Request<ClientBody>,
        remote: SocketAddr,
        rule: Arc<InvalidateRule>,
        params: Vec<(String, String)>,
    ) -> Response<Body> {
        match buffer(req, &rule).await {
            Ok(req) => self.write_buffered(req, remote, rule, params).await,
            Err(resp) => resp,
        }
    }

    /// [`Writer::write`] of a request whose body is already buffered (an asynchronous
    /// write that could not be recorded is answered this way).
    pub async fn write_buffered(
        &self,
        req: Request<Bytes>,
        remote: SocketAddr,
        rule: Arc<InvalidateRule>,
        params: Vec<(String, String)>,
    ) -> Response<Body> {
        let gw = self.clone();
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let _ = tx.send(gw.execute(req, remote, &rule, &params, false).await);
        });
        rx.await
            .unwrap_or_else(|_| problem(&GatewayError::FetchLost))
    }

    /// The write itself (forward, index move, invalidation, before it returns), run in a
    /// task of its own by [`Writer::write_buffered`] and by an accepted operation's
    /// consumer. `retried`: an earlier attempt may
    /// have reached the MES, so a conflict is checked against the entity's state
    /// ([`Writer::confirm`]).
    pub async fn execute(
        &self,
        req: Request<Bytes>,
        remote: SocketAddr,
        rule: &InvalidateRule,
        params: &[(String, String)],
        retried: bool,
    ) -> Response<Body> {
        let request: Option<Value> = serde_json::from_slice(req.body()).ok();
        let operation = req.extensions().get::<OperationId>().cloned();
        // Kept for the check of a retried write's conflict (it reads the entity with them).
        let headers = retried.then(|| req.headers().clone());
        let req = req.map(|b| Either::Right(Full::new(b)));
        let index = rule
            .index
            .as_ref()
            .and_then(|n| self.indexes.get(n))
            .cloned();
        // Held until the answer is applied: a preload's verdict waits for it (A2, index::scan).
        let ticket = index.as_ref().map(|ix| ix.write_sent());
        let resp = match self.pass.forward(req, remote).await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, kind = e.as_str(), "write forward failed");
                return problem(&e);
            }
        };
        let confirmed = match headers {
            Some(h) if resp.status() == http::StatusCode::CONFLICT => {
                let facts = WriteFacts {
                    params,
                    request: request.clone(),
                    response: None,
                };
                self.confirm(rule, &facts, h, remote).await
            }
            _ => None,
        };
        let (parts, bytes) = match confirmed {
            Some(done) => done,
            None if !rule.applies_to(resp.status()) => return resp.map(Either::Right),
            None => {
                let (parts, body) = resp.into_parts();
                let bytes = Limited::new(body, rule.max_body).collect().await.ok();
                (parts, bytes.map(|c| c.to_bytes()))
            }
        };
        let facts = WriteFacts {
            params,
            request,
            response: bytes.as_ref().and_then(|b| serde_json::from_slice(b).ok()),
        };
        let inv = &self.invalidator;
        // Ticked before anything is looked up: every fetch that starts from here on sees
        // this write, and what it gives outlives this write's bump (promise 2b).
        let ack = inv.acknowledge();
        // The answer is the entity's new state: the index moves it now, here and in its
        // copy in Redis, before the bus message (the write is not answered yet, so either
        // state may be read until the 200 leaves).
        let created = parts.status == http::StatusCode::CREATED;
        let applied = match (&index, &bytes) {
            (Some(ix), Some(b)) => ix.apply_answer(b, created).await,
            _ => None,
        };
        let delta = match (&index, &bytes, &applied) {
            (Some(ix), Some(b), Some(_)) => Some(Delta {
                index: ix.route().to_string(),
                row: String::from_utf8_lossy(b).into_owned(),
                created,
            }),
            _ => None,
        };
        // An answer older than a state the index already holds (another write of the
        // same entity overtook it) represents nothing.
        let outdated = applied == Some(crate::index::Applied::Older);
        drop(ticket);
        let plan = self.plan(rule, &facts, ack).await;
        debug!(names = ?plan.names, fallback = plan.fallback, "invalidating");
        if rule.refresh.is_zero() {
            inv.apply_acked(plan.names, plan.mark, ack, delta, |_| Vec::new())
                .await;
        } else {
            // Fetched before the invalidation, so the old entries are served meanwhile
            // (the write is not answered yet), and stored after it (see refresh.rs); the
            // entry the write's answer represents is taken from it, not fetched.
            let answer = match &bytes {
                Some(body) if parts.status == http::StatusCode::OK && !outdated => Some(Answer {
                    path: rule
                        .represents
                        .as_ref()
                        .and_then(|t| t.render(&|s, f| facts.lookup(s, f))),
                    headers: parts.headers.clone(),
                    body: body.clone(),
                    // Begun before every other write acknowledged earlier and not yet
                    // bumped: its answer may be newer than this one.
                    tick: inv.watermark_besides(ack),
                    patches: index.clone().filter(|_| applied.is_some()),
                }),
                _ => None,
            };
            let fetched = self
                .refresher
                .fetch(&plan.names, rule.refresh, answer)
                .await;
            inv.apply_acked(plan.names, plan.mark, ack, delta, |moved| {
                self.refresher.install(fetched, moved)
            })
            .await;
        }
        // In the stream before the answer leaves: a client that saw the answer and then
        // subscribes with an earlier id is sure to be told.
        let previous = match &applied {
            Some(crate::index::Applied::Moved { from }) => Some(from.as_ref()),
            _ => None,
        };
        let event = bytes.as_ref().filter(|_| !outdated);
        let operation = operation.as_ref().map(|o| &*o.0);
        if let Some(e) = event.and_then(|b| Event::order(b, created, previous, operation)) {
            self.events.publish(e).await;
        }
        match bytes {
            Some(b) => Response::from_parts(parts, Either::Left(Full::new(b))),
            None => problem(&GatewayError::UpstreamProtocol(
                "the MES answer to a write could not be read in full; the write may have \
                 been applied, and what it touches was invalidated"
                    .into(),
            )),
        }
    }

    /// The families a successful write makes wrong. A family that cannot be rendered
    /// (a field missing from the bodies) becomes its whole group: never less than needed.
    async fn plan(&self, rule: &InvalidateRule, facts: &WriteFacts<'_>, ack: u64) -> Plan {
        let lookup = |s: Source, f: &str| facts.lookup(s, f);
        let mut plan = Plan::default();
        let mut rendered = Vec::new();
        for t in &rule.families {
            let name = match t.render(&lookup) {
                Some(family) => {
                    let name = Name::family(&family);
                    rendered.push(family);
                    name
                }
                None => Name::group(&t.group()),
            };
            push_unique(&mut plan.names, name);
        }
        let entity = rule.entity.as_ref().and_then(|t| t.render(&lookup));
        let inv = &self.invalidator;
        // Opened before the families are looked up (promise 2a).
        plan.mark = entity.as_deref().map(|e| inv.begin_write(e, ack));
        let known = match &entity {
            Some(e) => inv.known(e).await,
            None => Vec::new(),
        };
        inv.reached(Point::Planned).await;
        if let Some(e) = entity {
            // Where the entity is now (its new status among the rule's families): the
            // next write of it must find that family even when no fill listed it there
            // yet. (The other families only widen that write's invalidation.)
            self.reader.remember(&[(e, rendered)]).await;
        }
        if known.is_empty() && inv.previous_lookup() && !rule.fallback.is_empty() {
            plan.fallback = true;
            inv.count_fallback();
            for g in &rule.fallback {
                push_unique(&mut plan.names, Name::group(g));
            }
        }
        for k in known {
            push_unique(&mut plan.names, Name::family(&k));
        }
        plan
    }
}

/// Reads a write's body into memory, up to its rule's `max_body`.
pub async fn buffer(
    req: Request<ClientBody>,
    rule: &InvalidateRule,
) -> Result<Request<Bytes>, Response<Body>> {
    let (parts, body) = req.into_parts();
    match Limited::new(body, rule.max_body).collect().await {
        Ok(c) => Ok(Request::from_parts(parts, c.to_bytes())),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(problem(&GatewayError::BodyTooLarge(rule.max_body)))
        }
        Err(e) => {
            let fault = e.downcast_ref::<ClientBodyError>();
            let err = fault.map_or_else(
                || GatewayError::BadBody(error_chain(&*e)),
                |f| f.to_gateway(),
            );
            Err(problem(&err))
        }
    }
}

fn problem(e: &GatewayError) -> Response<Body> {
    e.to_response().map(Either::Left)
}
