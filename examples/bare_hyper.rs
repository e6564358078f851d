//! `bare_hyper`: the throughput ceiling for `loadtest/bench-hit.sh`.
//!
//! A minimal hyper 1.x server that answers every request with one fixed response (status
//! 200, headers and body read from files at start), so the benchmark can compare the
//! gateway's L1 hits against a server doing nothing but HTTP/1.1 on the same stack:
//! tokio multi-thread runtime, one task per connection, `TCP_NODELAY`, and per request
//! only a `Bytes` clone of the body and a clone of the header map.
//!
//! ```text
//! cargo run --release --example bare_hyper -- \
//!     --listen 127.0.0.1:18081 --body body.json --headers headers.txt [--auto]
//! ```
//!
//! The headers file holds `name: value` lines (blank lines and `#` comments skipped). Leave
//! out `Date`, `Content-Length` and hop-by-hop headers: hyper adds `Date` and
//! `Content-Length` itself, as it does for the gateway. `--auto` serves through
//! `hyper_util`'s auto (HTTP/1.1 + h2c) builder, the one the gateway uses, instead of the
//! plain HTTP/1.1 builder.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

struct Args {
    listen: SocketAddr,
    body: PathBuf,
    headers: Option<PathBuf>,
    auto: bool,
}

const USAGE: &str = "usage: bare_hyper --listen ADDR --body FILE [--headers FILE] [--auto]";

fn parse_args() -> anyhow::Result<Args> {
    let mut listen = None;
    let mut body = None;
    let mut headers = None;
    let mut auto = false;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--listen" => listen = Some(value()?.parse().context("--listen")?),
            "--body" => body = Some(PathBuf::from(value()?)),
            "--headers" => headers = Some(PathBuf::from(value()?)),
            "--auto" => auto = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(Args {
        listen: listen.context(USAGE)?,
        body: body.context(USAGE)?,
        headers,
        auto,
    })
}

fn read_headers(text: &str) -> anyhow::Result<HeaderMap> {
    let mut map = HeaderMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .with_context(|| format!("headers line {}: no ':' in {line:?}", n + 1))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .with_context(|| format!("headers line {}: bad name", n + 1))?;
        let value = HeaderValue::from_str(value.trim())
            .with_context(|| format!("headers line {}: bad value", n + 1))?;
        map.append(name, value);
    }
    Ok(map)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let body = Bytes::from(
        std::fs::read(&args.body).with_context(|| format!("reading {}", args.body.display()))?,
    );
    let headers = match &args.headers {
        Some(p) => read_headers(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )?,
        None => HeaderMap::new(),
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(args, body, headers))
}

async fn serve(args: Args, body: Bytes, headers: HeaderMap) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    // One line on stdout, like mes-sim, for scripts that wait for it.
    println!(
        "bare_hyper listening on http://{} ({} body bytes, {} headers, {})",
        listener.local_addr()?,
        body.len(),
        headers.len(),
        if args.auto { "auto" } else { "http1" }
    );
    let mut auto = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    auto.http1();
    let http1 = hyper::server::conn::http1::Builder::new();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("bare_hyper: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (body, headers) = (body.clone(), headers.clone());
        let service = service_fn(move |_req: Request<Incoming>| {
            let mut resp = Response::new(Full::new(body.clone()));
            *resp.headers_mut() = headers.clone();
            async move { Ok::<_, Infallible>(resp) }
        });
        let io = TokioIo::new(stream);
        if args.auto {
            let conn = auto.serve_connection(io, service).into_owned();
            tokio::spawn(async move {
                let _ = conn.await;
            });
        } else {
            let conn = http1.serve_connection(io, service);
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    }
}
