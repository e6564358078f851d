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
//! its write by the order id alone; a subscriber's first delivery of an order is the one
//! measured, a second one (an event appended twice: its first append timed out but
//! landed) is counted apart.
//!
//! A subscriber is a raw TCP connection: one read per wake-up, timed once, and a scan of
//! the bytes read for the `order` events' ids (no HTTP client, no chunk decoding: every
//! chunk of the stream holds whole SSE records, so a chunk-size line never splits one).
//! The client shares the machine with the gateway, so its cost per delivery is kept
//! small: what it spends is CPU the gateway does not get. With `--gateway-pid`, the gateway's resident memory is
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
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

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
    /// Deliveries of an order a subscriber had already received.
    duplicates: AtomicU64,
}

/// One subscriber's deliveries: (order id, arrival), first arrivals only. Shared with
/// `main`, which takes them after stopping the subscriber's task (so the subscriber waits
/// on its socket alone, nothing else per read).
type Deliveries = Arc<Mutex<Vec<(u64, Instant)>>>;

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let authority = args
        .gateway
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let tally = Arc::new(Tally::default());
    let rss_before = args.gateway_pid.and_then(rss_kib);

    // 1. Subscribers, `connect_concurrency` at a time.
    let gate = Arc::new(Semaphore::new(args.connect_concurrency));
    let started = Instant::now();
    let mut subs = Vec::with_capacity(args.subscribers);
    for _ in 0..args.subscribers {
        let permit = gate.clone().acquire_owned().await.expect("open");
        let (tally, authority) = (tally.clone(), authority.clone());
        let got = Deliveries::default();
        let first = args.first_order;
        let task = tokio::spawn({
            let got = got.clone();
            async move { subscriber(&authority, &tally, &got, first, permit).await }
        });
        subs.push((task, got));
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
    for (task, _) in &subs {
        task.abort();
    }

    // 3. Latencies: arrival − acknowledgement (an event may arrive before the answer: 0).
    let acks = acks.lock().expect("acks").clone();
    let mut lat = Vec::new();
    let (mut early, mut unmatched) = (0u64, 0u64);
    for (task, got) in subs {
        let _ = task.await;
        let got = std::mem::take(&mut *got.lock().expect("deliveries"));
        for (order, at) in got {
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
        "| subscribers (connected / refused / failed, connect s) | writes ok / sent (/s) | deliveries received / expected (duplicates) | dropped | p50 ms | p99 ms | max ms | before ack | RSS before → after MiB | KiB per subscriber | mesgate CPU % | client CPU % |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} ({connected} / {} / {}, {connect_secs:.1}) | {ok} / {total} ({}) | {} / {expected}{} ({}) | {} | {:.1} | {:.1} | {:.1} | {:.1}% | {} → {} | {per_sub} | {} | {} |",
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
        tally.duplicates.load(Ordering::Relaxed),
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
/// first arrival of every `order` event in `got` until its task is stopped or the stream
/// ends. The orders written start at `first`.
async fn subscriber(
    authority: &str,
    tally: &Tally,
    got: &Mutex<Vec<(u64, Instant)>>,
    first: u64,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let (mut stream, mut buf) = match open(authority).await {
        Ok(Some(open)) => open,
        Ok(None) => {
            tally.refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Err(e) => {
            eprintln!("sse_subscribers: connect: {e}");
            tally.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    tally.connected.fetch_add(1, Ordering::Relaxed);
    drop(permit);
    // Orders received, by their offset from `first` (the writes' orders are consecutive).
    let mut seen = Vec::<bool>::new();
    loop {
        // Whole records first: the bytes after the last blank line wait for the rest.
        if let Some(end) = rfind(&buf, b"\n\n") {
            let at = Instant::now();
            let mut fresh = 0;
            // Text (it is: SSE is UTF-8, the chunk-size lines are hex), so that std's
            // substring search can skip through it instead of a byte-by-byte scan.
            let text = std::str::from_utf8(&buf[..end + 2]).unwrap_or_default();
            for order in orders(text) {
                if first_time(&mut seen, order.wrapping_sub(first)) {
                    got.lock().expect("deliveries").push((order, at));
                    fresh += 1;
                } else {
                    tally.duplicates.fetch_add(1, Ordering::Relaxed);
                }
            }
            tally.deliveries.fetch_add(fresh, Ordering::Relaxed);
            buf.drain(..end + 2);
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        match stream.read_buf(&mut buf).await {
            Ok(n) if n > 0 => {}
            _ => {
                tally.ended.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// Whether the order at `offset` is seen here first (marking it seen). An offset past
/// any write (not one of ours) counts as first: the latencies leave it unmatched.
fn first_time(seen: &mut Vec<bool>, offset: u64) -> bool {
    let Ok(i) = usize::try_from(offset) else {
        return true;
    };
    if i >= 1 << 20 {
        return true;
    }
    if i >= seen.len() {
        seen.resize(i + 1, false);
    }
    !std::mem::replace(&mut seen[i], true)
}

/// A connected stream and the bytes read after its head; `None`: not a 200.
async fn open(authority: &str) -> std::io::Result<Option<(TcpStream, Vec<u8>)>> {
    let mut stream = TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    let req = format!("GET /mesgate/events HTTP/1.1\r\nhost: {authority}\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(4096);
    let head = loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            break end + 4;
        }
        if stream.read_buf(&mut buf).await? == 0 || buf.len() > 64 << 10 {
            return Err(std::io::Error::other("no answer head"));
        }
    };
    if !buf.starts_with(b"HTTP/1.1 200 ") {
        return Ok(None);
    }
    buf.drain(..head);
    Ok(Some((stream, buf)))
}

/// The order ids of the `order` events in `text` (`"order":ID` is the first key of that
/// name in an order event's data: serde_json writes the keys in order, `row` after it).
/// A chunk-size line never splits a record: every chunk holds whole records.
fn orders(text: &str) -> impl Iterator<Item = u64> + '_ {
    const MARK: &str = "event: order\ndata: ";
    text.match_indices(MARK).filter_map(|(at, _)| {
        let data = &text[at + MARK.len()..];
        let id = &data[data.find("\"order\":")? + 8..];
        let n = id.bytes().take_while(u8::is_ascii_digit).count();
        id[..n].parse().ok()
    })
}

/// The first `needle` in `hay`: a scan for its first byte, then a compare.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (first, rest) = needle.split_first()?;
    let mut from = 0;
    while from + needle.len() <= hay.len() {
        let i = from
            + hay[from..=hay.len() - needle.len()]
                .iter()
                .position(|b| b == first)?;
        if &hay[i + 1..i + needle.len()] == rest {
            return Some(i);
        }
        from = i + 1;
    }
    None
}

/// The last `needle` in `hay`.
fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    (0..=hay.len().checked_sub(needle.len())?)
        .rev()
        .find(|&i| &hay[i..i + needle.len()] == needle)
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
