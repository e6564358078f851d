//! The accept loop: connection settings (HTTP/1.1 and h2c, header limits and timeouts),
//! closing idle connections, the connection cap with its refusal, backoff when accept
//! fails, and graceful shutdown.
//!
//! It knows nothing of caching; every request goes to [`crate::gateway::Gateway::handle`],
//! except event streams ([`crate::events::Events::subscribe`]: a body of their own).
//! Which connection is idle and which makes way at the cap is [`crate::connections`]'.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::Either;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot, watch};
use tracing::{debug, info, warn};

use crate::client_body::ClientBody;
use crate::config::{Config, Timeouts};
use crate::connections::{self, Busy, Connections, Slot};
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::pass::Body;

/// Refusals being written at once; past it a refused connection is just closed.
const REFUSALS: usize = 32;

/// Serves `gateway` on `listener` until `shutdown` resolves, then drains open connections
/// for at most `timeouts.drain`.
pub async fn run(
    listener: TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let config = gateway.config();
    let builder = connection_builder(config);
    let cap = config
        .limits
        .max_connections
        .unwrap_or_else(|| connections::derived_cap(connections::nofile_limit()));
    let conns = Connections::new(cap);
    info!(max_connections = cap, "connection cap");
    // Event streams hold their connections under this cap: they get a share of it.
    gateway.events().default_cap(cap);
    let refusals = Arc::new(Semaphore::new(REFUSALS));
    let (stop, stopped) = watch::channel(false);
    let mut backoff = Backoff::default();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    backoff.reset();
                    match conns.admit().await {
                        Some(slot) => {
                            let ctx = ConnCtx { gateway: gateway.clone(), slot, stopped: stopped.clone() };
                            serve(&builder, stream, remote, ctx);
                        }
                        None => refuse(stream, cap, &refusals),
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    let wait = backoff.next();
                    warn!(error = %e, retry_ms = wait.as_millis() as u64, "accept failed");
                    tokio::time::sleep(wait).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    gateway.start_draining();
    info!(connections = conns.open(), "draining");
    let _ = stop.send(true);
    let deadline = gateway.config().timeouts.drain;
    if tokio::time::timeout(deadline, conns.all_closed())
        .await
        .is_err()
    {
        warn!("drain deadline passed, closing remaining connections");
    }
    Ok(())
}

/// Exponential backoff of a failing accept: 10 ms doubling to 1 s, reset by a success.
#[derive(Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let wait = Duration::from_millis(10 << self.failures.min(7));
        self.failures += 1;
        wait.min(Duration::from_secs(1))
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

fn connection_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.timeouts.client_header)
        // A client that half-closes after its request (HTTP/1.1 allows it) still gets
        // its answer, instead of the connection being torn down with the write in flight.
        .half_close(true)
        .max_buf_size(config.limits.max_header_bytes)
        .max_headers(config.limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(config.limits.max_header_bytes as u32);
    builder
}

/// What a connection's task holds.
struct ConnCtx {
    gateway: Gateway,
    slot: Slot,
    stopped: watch::Receiver<bool>,
}

fn serve(
    builder: &auto::Builder<TokioExecutor>,
    stream: TcpStream,
    remote: SocketAddr,
    ctx: ConnCtx,
) {
    let _ = stream.set_nodelay(true);
    let timeouts: Timeouts = ctx.gateway.config().timeouts;
    let activity = ctx.slot.activity().clone();
    let gateway = ctx.gateway;
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let gateway = gateway.clone();
        // Held until the answer's body is sent: the connection is not idle before.
        let busy = activity.begin();
        let req = req.map(|b| ClientBody::new(b, timeouts.client_body));
        async move {
            // Event streams have a body of their own (open-ended), so they are answered
            // here, beside the gateway's one `Body` type.
            let resp =
                if req.uri().path() == crate::events::PATH && req.method() == http::Method::GET {
                    let (headers, query) = (req.headers(), req.uri().query());
                    // Boxed: see `Gateway::dispatch` (the hit path's future stays small).
                    let events = Box::pin(gateway.events().subscribe(headers, query)).await;
                    events.map(Either::Right)
                } else {
                    gateway.handle(req, remote).await.map(Either::Left)
                };
            Ok::<_, Infallible>(resp.map(|body| Tracked { body, _busy: busy }))
        }
    });
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .into_owned();
    let (slot, stopped) = (ctx.slot, ctx.stopped);
    let close = watch_closing(slot.activity().clone(), stopped, timeouts);
    tokio::spawn(async move {
        tokio::pin!(conn, close);
        let mut closing = false;
        loop {
            tokio::select! {
                done = conn.as_mut() => {
                    if let Err(e) = done {
                        debug!(error = %e, %remote, "connection ended with an error");
                    }
                    break;
                }
                why = close.as_mut(), if !closing => {
                    // Lets an answer in progress finish; an idle connection closes at once.
                    debug!(%remote, why = why.unwrap_or("watch ended"), "closing connection");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
        drop(slot);
    });
}

/// Why a connection should close, from a task of its own: idle too long, chosen to make
/// way at the cap, or shutdown. The connection's task then waits on one channel, cheap to
/// poll each time its socket wakes it, instead of polling three watches per request. The
/// watch ends with the connection (its receiver dropped).
fn watch_closing(
    activity: Arc<connections::Activity>,
    mut stopped: watch::Receiver<bool>,
    timeouts: Timeouts,
) -> oneshot::Receiver<&'static str> {
    let (mut tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (first, idle) = (timeouts.client_header, timeouts.client_idle);
        let why = tokio::select! {
            () = tx.closed() => return,
            () = activity.expired(first, idle) => "idle",
            () = activity.evicted() => "making way at max_connections",
            _ = stopped.changed() => "shutdown",
        };
        let _ = tx.send(why);
    });
    rx
}

/// Answers `503` and closes: every connection under the cap is in the middle of a request.
fn refuse(mut stream: TcpStream, cap: usize, refusals: &Arc<Semaphore>) {
    warn!(
        max_connections = cap,
        "connection refused: every connection is busy"
    );
    // Writing the refusal must not hold descriptors without bound either.
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return;
    };
    let problem = GatewayError::TooManyConnections(cap).to_response();
    let status = problem.status();
    let body = problem.into_body();
    tokio::spawn(async move {
        let body = http_body_util::BodyExt::collect(body)
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/problem+json\r\ncache-control: no-store\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let write = async {
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(&body).await?;
            stream.shutdown().await
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
        drop(permit);
    });
}

/// An answer's body that keeps its connection marked busy until it is sent (or dropped).
struct Tracked {
    body: Either<Body, crate::events::sse::EventBody>,
    _busy: Busy,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
