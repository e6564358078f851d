//! The accept loop: connection settings (HTTP/1.1 and h2c, header limits and timeouts)
//! and graceful shutdown.
//!
//! It knows nothing of caching; every request goes to [`crate::gateway::Gateway::handle`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::gateway::Gateway;

/// Serves `gateway` on `listener` until `shutdown` resolves, then drains open connections
/// for at most `timeouts.drain`.
pub async fn run(
    listener: TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let builder = connection_builder(gateway.config());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => serve(&builder, &graceful, stream, remote, gateway.clone()),
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    gateway.start_draining();
    info!(connections = graceful.count(), "draining");
    let deadline = gateway.config().timeouts.drain;
    if tokio::time::timeout(deadline, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("drain deadline passed, closing remaining connections");
    }
    Ok(())
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

fn serve(
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    stream: TcpStream,
    remote: SocketAddr,
    gateway: Gateway,
) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| {
        let gateway = gateway.clone();
        async move { Ok::<_, Infallible>(gateway.handle(req, remote).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let conn = graceful.watch(conn.into_owned());
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, %remote, "connection ended with an error");
        }
    });
}
