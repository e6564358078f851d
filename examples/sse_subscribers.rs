//! The event-stream benchmark's load client: N subscribers of `GET /mesgate/events` on one
//! gateway, W status changes per second sent through it for D seconds; for every `order`
//! event a subscriber receives, the time from the write's acknowledgement (its answer
//! reached the writer) to the event's arrival. Prints one markdown table row.
//!
//! `cargo run --release --example sse_subscribers -- --gateway URL [--subscribers 10000]
//! [--writes-per-sec 10] [--duration 30s] [--gateway-pid PID]`; loadtest/events-bench.sh
//! starts the simulator, Redis and mesgate and runs it.
//!
//! Every write changes a different order (`--first-order` on), so an event is matched to
//! its write by the order id alone. With `--gateway-pid`, the gateway's resident memory is
//! read before and after the subscribers connect and its CPU time over the write phase
//! (from `/proc`).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};

#[derive(Parser, Clone)]
struct Args {
    /// The gateway (`http://127.0.0.1:PORT`).
    #[arg(long)]
    gateway: String,
    /// Concurrent subscribers.
    #[arg(long, default_value_t = 10_000)]
    subscribers: usize,
    /// Subscribers connecting at once.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Status changes per second.
    #[arg(long, default_value_t = 10.0)]
    writes_per_sec: f64,
    /// How long writes are sent.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The first order written (one order per write, in sequence).
    #[arg(long, default_value_t = 1)]
    first_order: u64,
    /// Send the writes with `Prefer: respond-async` (the acknowledgement is the 202).
    #[arg(long)]
    respond_async: bool,
    /// How long to wait for the last deliveries after the last write.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// The gateway's process id, for its memory and CPU.
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// Clock ticks per second of `/proc/*/stat` (`getconf CLK_TCK`).
    #[arg(long, default_value_t = 100)]
    clk_tck: u64,
}

/// What the subscribers share.
#[derive(Default)]
struct Tally {
    connected: AtomicUsize,
    refused: AtomicUsize,
    failed: AtomicUsize,
    /// Streams that ended before the run did (dropped by the gateway, or broken).
    ended: AtomicUsize,
    deliveries: AtomicU64,
}

/// One subscriber's deliveries: (order id, arrival).
type Deliveries = Vec<(u64, Instant)>;

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let authority = args
        .gateway
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let tally = Arc::new(Tally::default());
    let (stop_tx, stop) = watch::channel(false);
    let rss_before = args.gateway_pid.and_then(rss_kib);

    // 1. Subscribers, `connect_concurrency` at a time.
    let gate = Arc::new(Semaphore::new(args.connect_concurrency));
    let started = Instant::now();
    let mut subs = Vec::with_capacity(args.subscribers);
    for _ in 0..args.subscribers {
        let permit = gate.clone().acquire_owned().await.expect("open");
        let (tally, stop, authority) = (tally.clone(), stop.clone(), authority.clone());
        subs.push(tokio::spawn(async move {
            subscriber(&authority, &tally, stop, permit).await
        }));
    }
    let settled = |t: &Tally| {
        t.connected.load(Ordering::Relaxed)
            + t.refused.load(Ordering::Relaxed)
            + t.failed.load(Ordering::Relaxed)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while settled(&tally) < args.subscribers && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let connected = tally.connected.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = args.gateway_pid.and_then(rss_kib);

    // 2. Writes, one order each, at a steady rate.
    let cpu_start = (args.gateway_pid.and_then(cpu_ticks), cpu_ticks_self());
    let phase = Instant::now();
    let acks = Arc::new(Mutex::new(HashMap::new()));
    let write_errors = Arc::new(AtomicUsize::new(0));
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let total = (args.writes_per_sec * args.duration.as_secs_f64()).round() as u64;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.writes_per_sec));
    let mut writes = Vec::new();
    for i in 0..total {
        tick.tick().await;
        let order = args.first_order + i;
        let (client, acks, errors) = (client.clone(), acks.clone(), write_errors.clone());
        let (base, respond_async) = (args.gateway.clone(), args.respond_async);
        writes.push(tokio::spawn(async move {
            match write(&client, &base, order, respond_async).await {
                Some(at) => {
                    acks.lock().expect("acks").insert(order, at);
                }
                None => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for w in writes {
        let _ = w.await;
    }
    let ok = acks.lock().expect("acks").len() as u64;
    let live = connected - tally.ended.load(Ordering::Relaxed);
    let expected = ok * connected as u64;
    let deadline = Instant::now() + args.grace;
    while tally.deliveries.load(Ordering::Relaxed) < ok * live as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let phase_secs = phase.elapsed().as_secs_f64();
    let cpu_end = (args.gateway_pid.and_then(cpu_ticks), cpu_ticks_self());
    let _ = stop_tx.send(true);

    // 3. Latencies: arrival − acknowledgement (an event may arrive before the answer: 0).
    let acks = acks.lock().expect("acks").clone();
    let mut lat = Vec::new();
    let (mut early, mut unmatched) = (0u64, 0u64);
    for s in subs {
        for (order, at) in s.await.unwrap_or_default() {
            match acks.get(&order) {
                Some(ack) if at < *ack => {
                    early += 1;
                    lat.push(0.0);
                }
                Some(ack) => lat.push((at - *ack).as_secs_f64() * 1000.0),
                None => unmatched += 1,
            }
        }
    }
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len().max(1)) - 1;
        lat.get(i).copied().unwrap_or(f64::NAN)
    };
    let cpu = |(a, b): (Option<u64>, Option<u64>)| match (a, b) {
        (Some(a), Some(b)) => format!(
            "{:.0}",
            (b - a) as f64 / args.clk_tck as f64 / phase_secs * 100.0
        ),
        _ => "-".into(),
    };
    let mib = |k: Option<u64>| k.map_or("-".into(), |k| format!("{:.0}", k as f64 / 1024.0));
    let per_sub = match (rss_before, rss_after) {
        (Some(b), Some(a)) if connected > 0 => {
            format!("{:.1}", a.saturating_sub(b) as f64 / connected as f64)
        }
        _ => "-".into(),
    };
    println!(
        "| subscribers (connected / refused / failed, connect s) | writes ok / sent (/s) | deliveries received / expected | dropped | p50 ms | p99 ms | max ms | before ack | RSS before → after MiB | KiB per subscriber | mesgate CPU % | client CPU % |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} ({connected} / {} / {}, {connect_secs:.1}) | {ok} / {total} ({}) | {} / {expected}{} | {} | {:.1} | {:.1} | {:.1} | {:.1}% | {} → {} | {per_sub} | {} | {} |",
        args.subscribers,
        tally.refused.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        args.writes_per_sec,
        lat.len(),
        if unmatched > 0 {
            format!(" (+{unmatched} unmatched)")
        } else {
            String::new()
        },
        tally.ended.load(Ordering::Relaxed),
        pct(0.50),
        pct(0.99),
        lat.last().copied().unwrap_or(f64::NAN),
        early as f64 * 100.0 / lat.len().max(1) as f64,
        mib(rss_before),
        mib(rss_after),
        cpu((cpu_start.0, cpu_end.0)),
        cpu((cpu_start.1, cpu_end.1)),
    );
    if write_errors.load(Ordering::Relaxed) > 0 {
        eprintln!(
            "sse_subscribers: {} writes failed",
            write_errors.load(Ordering::Relaxed)
        );
    }
}

/// One subscriber: connects (holding `permit` until the answer's head), then records the
/// arrival of every `order` event until told to stop or the stream ends.
async fn subscriber(
    authority: &str,
    tally: &Tally,
    mut stop: watch::Receiver<bool>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Deliveries {
    let mut body = match open(authority).await {
        Ok((StatusCode::OK, body)) => body,
        Ok(_) => {
            tally.refused.fetch_add(1, Ordering::Relaxed);
            return Vec::new();
        }
        Err(e) => {
            eprintln!("sse_subscribers: connect: {e}");
            tally.failed.fetch_add(1, Ordering::Relaxed);
            return Vec::new();
        }
    };
    tally.connected.fetch_add(1, Ordering::Relaxed);
    drop(permit);
    let mut got = Vec::new();
    let mut buf = Vec::<u8>::new();
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = stop.changed() => return got,
        };
        let Some(Ok(frame)) = frame else {
            tally.ended.fetch_add(1, Ordering::Relaxed);
            return got;
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let at = Instant::now();
        buf.extend_from_slice(&data);
        while let Some(end) = find(&buf, b"\n\n") {
            if let Some(order) = order_of(&buf[..end]) {
                got.push((order, at));
                tally.deliveries.fetch_add(1, Ordering::Relaxed);
            }
            buf.drain(..end + 2);
        }
    }
}

type Open = (StatusCode, hyper::body::Incoming);

async fn open(authority: &str) -> Result<Open, Box<dyn std::error::Error + Send + Sync>> {
    let stream = TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get("/mesgate/events")
        .header("host", authority)
        .body(Empty::<Bytes>::new())?;
    let resp = send.send_request(req).await?;
    let status = resp.status();
    Ok((status, resp.into_body()))
}

/// The order id of an `order` event record (`"order":ID` is its data's first key of that
/// name: serde_json writes the keys in order and `row` comes after `order`).
fn order_of(record: &[u8]) -> Option<u64> {
    find(record, b"event: order\n")?;
    let at = find(record, b"\"order\":")? + 8;
    let digits = record[at..].iter().take_while(|b| b.is_ascii_digit());
    let n = digits.count();
    std::str::from_utf8(&record[at..at + n]).ok()?.parse().ok()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Changes `order`'s status (to SHIPPED, or MANUFACTURING_STARTED when it is SHIPPED
/// already); the instant the successful answer arrived.
async fn write(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    base: &str,
    order: u64,
    respond_async: bool,
) -> Option<Instant> {
    for status in ["SHIPPED", "MANUFACTURING_STARTED"] {
        let mut req = Request::builder()
            .method(Method::PATCH)
            .uri(format!("{base}/api/orders/{order}/status"))
            .header("content-type", "application/json");
        if respond_async {
            req = req.header("prefer", "respond-async");
        }
        let body = Full::new(Bytes::from(format!("{{\"status\":\"{status}\"}}")));
        let resp = client.request(req.body(body).ok()?).await.ok()?;
        let code = resp.status();
        let _ = resp.into_body().collect().await;
        if code.is_success() {
            return Some(Instant::now());
        }
        if code != StatusCode::CONFLICT {
            eprintln!("sse_subscribers: order {order}: {code}");
            return None;
        }
    }
    None
}

/// Resident memory of `pid`, KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn cpu_ticks_self() -> Option<u64> {
    stat_ticks(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// Fields 14 and 15 of a `stat` line (after the parenthesized command name).
fn stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}
