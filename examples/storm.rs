//! The live-shift storm: operators poll hot status lists and open details while writers
//! change statuses (~10/s) and create orders (~3/s) through the gateway; after every
//! acknowledged write the writer checks its own read. Prints stale reads (must be 0) and
//! the upstream load the reads caused, from the simulator's counters.
//!
//! `cargo run --release --example storm -- --gateway URL --sim URL [--duration 30s]`;
//! point `--gateway` at the simulator itself to measure the load without a cache.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

const HOT: [(&str, u64); 5] = [
    ("MANUFACTURING_APPROVED", 40),
    ("SUBMITTED", 30),
    ("MANUFACTURING_STARTED", 15),
    ("PRICE_CALCULATED", 10),
    ("MANUFACTURING_COMPLETED", 5),
];

#[derive(Parser, Clone)]
struct Args {
    /// Where operators and writers send their requests.
    #[arg(long)]
    gateway: String,
    /// The simulator (truth and upstream counters).
    #[arg(long)]
    sim: String,
    /// How long to run.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Concurrent polling operators.
    #[arg(long, default_value_t = 32)]
    readers: usize,
    /// Status changes per second.
    #[arg(long, default_value_t = 10.0)]
    changes_per_sec: f64,
    /// Orders created per second.
    #[arg(long, default_value_t = 3.0)]
    creates_per_sec: f64,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    read_errors: AtomicU64,
    changes: AtomicU64,
    creates: AtomicU64,
    write_errors: AtomicU64,
    checks: AtomicU64,
    stale: AtomicU64,
    truth_lists: AtomicU64,
}

struct Shared {
    args: Args,
    client: HttpClient,
    c: Counters,
    latencies: std::sync::Mutex<Vec<u32>>,
    deadline: Instant,
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn status(&mut self) -> &'static str {
        let mut x = self.below(100);
        for (s, w) in HOT {
            if x < w {
                return s;
            }
            x -= w;
        }
        HOT[0].0
    }
}

async fn call(
    c: &HttpClient,
    method: Method,
    url: &str,
    body: Option<String>,
) -> Option<(u16, Value)> {
    let mut req = Request::builder().method(method).uri(url);
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .ok()?;
    let resp = c.request(req).await.ok()?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.ok()?.to_bytes();
    Some((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

fn ids(v: &Value) -> Vec<u64> {
    v["items"]
        .as_array()
        .map(|a| a.iter().filter_map(|o| o["id"].as_u64()).collect())
        .unwrap_or_default()
}

async fn reader(s: Arc<Shared>, mut rng: Rng) {
    while Instant::now() < s.deadline {
        let status = rng.status();
        let path = match rng.below(10) {
            0 => format!("/api/orders/{}", 4000 + rng.below(1000)),
            1 => "/api/orders/status-counts".into(),
            2 => format!("/api/orders?status={status}&page=2"),
            _ => format!("/api/orders?status={status}"),
        };
        let started = Instant::now();
        let ok = call(
            &s.client,
            Method::GET,
            &format!("{}{path}", s.args.gateway),
            None,
        )
        .await;
        let us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
        s.latencies.lock().unwrap().push(us);
        s.c.reads.fetch_add(1, Ordering::Relaxed);
        if !matches!(ok, Some((200, _))) {
            s.c.read_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Whether the gateway's page 1 of `status` agrees with the MES about `id`.
async fn page_agrees(s: &Shared, status: &str, id: u64) -> bool {
    let path = format!("/api/orders?status={status}");
    let gw = call(
        &s.client,
        Method::GET,
        &format!("{}{path}", s.args.gateway),
        None,
    )
    .await;
    let truth = call(
        &s.client,
        Method::GET,
        &format!("{}{path}", s.args.sim),
        None,
    )
    .await;
    s.c.truth_lists.fetch_add(1, Ordering::Relaxed);
    let (Some((_, gw)), Some((_, truth))) = (gw, truth) else {
        return true;
    };
    let truth = ids(&truth);
    let pos = truth.iter().position(|&x| x == id);
    let listed = ids(&gw).contains(&id);
    match pos {
        // Near the end of page 1 a concurrent write may legitimately push it off.
        Some(p) if p < 40 => listed,
        Some(_) => true,
        None => !listed,
    }
}

async fn change(s: &Shared, rng: &mut Rng) {
    let from = rng.status();
    let list = call(
        &s.client,
        Method::GET,
        &format!("{}/api/orders?status={from}", s.args.sim),
        None,
    )
    .await;
    s.c.truth_lists.fetch_add(1, Ordering::Relaxed);
    let candidates = list.map(|(_, v)| ids(&v)).unwrap_or_default();
    let Some(&id) = candidates.get(rng.below(candidates.len() as u64) as usize) else {
        return;
    };
    let mut to = rng.status();
    while to == from {
        to = rng.status();
    }
    let url = format!("{}/api/orders/{id}/status", s.args.gateway);
    let body = format!("{{\"status\":\"{to}\"}}");
    match call(&s.client, Method::PATCH, &url, Some(body)).await {
        Some((200, _)) => {}
        Some((409, _)) => return,
        _ => {
            s.c.write_errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    s.c.changes.fetch_add(1, Ordering::Relaxed);
    let detail = call(
        &s.client,
        Method::GET,
        &format!("{}/api/orders/{id}", s.args.gateway),
        None,
    )
    .await;
    let detail_ok = detail.is_some_and(|(_, v)| v["status"] == to);
    let checks = [
        detail_ok,
        page_agrees(s, to, id).await,
        page_agrees(s, from, id).await,
    ];
    s.c.checks.fetch_add(checks.len() as u64, Ordering::Relaxed);
    let stale = checks.iter().filter(|ok| !**ok).count() as u64;
    s.c.stale.fetch_add(stale, Ordering::Relaxed);
}

async fn create(s: &Shared) {
    let url = format!("{}/api/orders", s.args.gateway);
    let Some((201, order)) = call(&s.client, Method::POST, &url, Some("{}".into())).await else {
        s.c.write_errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    s.c.creates.fetch_add(1, Ordering::Relaxed);
    let id = order["id"].as_u64().unwrap_or(0);
    let ok = page_agrees(s, "SUBMITTED", id).await;
    s.c.checks.fetch_add(1, Ordering::Relaxed);
    s.c.stale.fetch_add(u64::from(!ok), Ordering::Relaxed);
}

async fn writer(s: Arc<Shared>, per_sec: f64, creates: bool, mut rng: Rng) {
    if per_sec <= 0.0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sec));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut running = Vec::new();
    while Instant::now() < s.deadline {
        tick.tick().await;
        // Each write and its checks run on their own, so slow checks do not lower the rate.
        let (s, mut rng) = (s.clone(), Rng(rng.next() | 1));
        running.push(tokio::spawn(async move {
            if creates {
                create(&s).await;
            } else {
                change(&s, &mut rng).await;
            }
        }));
    }
    for r in running {
        let _ = r.await;
    }
}

async fn sim_stats(c: &HttpClient, sim: &str) -> Value {
    call(c, Method::GET, &format!("{sim}/__sim/stats"), None)
        .await
        .map(|(_, v)| v)
        .unwrap_or(Value::Null)
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p) as usize] as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let before = sim_stats(&client, &args.sim).await;
    let started = Instant::now();
    let s = Arc::new(Shared {
        deadline: started + args.duration,
        args: args.clone(),
        client,
        c: Counters::default(),
        latencies: Default::default(),
    });
    let mut tasks = Vec::new();
    for i in 0..args.readers {
        tasks.push(tokio::spawn(reader(
            s.clone(),
            Rng(0x9E37_79B9 + i as u64 * 7919),
        )));
    }
    tasks.push(tokio::spawn(writer(
        s.clone(),
        args.changes_per_sec,
        false,
        Rng(77),
    )));
    tasks.push(tokio::spawn(writer(
        s.clone(),
        args.creates_per_sec,
        true,
        Rng(99),
    )));
    for t in tasks {
        let _ = t.await;
    }
    let secs = started.elapsed().as_secs_f64();
    let after = sim_stats(&s.client, &args.sim).await;
    report(&s, &before, &after, secs);
}

fn report(s: &Shared, before: &Value, after: &Value, secs: f64) {
    let delta = |k: &str| {
        after[k]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(before[k].as_u64().unwrap_or(0))
    };
    let c = &s.c;
    let own = c.truth_lists.load(Ordering::Relaxed);
    let lists = delta("list").saturating_sub(own);
    let mut lat = s.latencies.lock().unwrap().clone();
    lat.sort_unstable();
    let reads = c.reads.load(Ordering::Relaxed);
    println!(
        "| target | reads/s | read p50 ms | read p99 ms | read errors | changes | creates | write errors | own-read checks | stale reads | upstream list req/s | upstream detail req/s | upstream counts req/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {:.0} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} |",
        s.args.gateway,
        reads as f64 / secs,
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        c.read_errors.load(Ordering::Relaxed),
        c.changes.load(Ordering::Relaxed),
        c.creates.load(Ordering::Relaxed),
        c.write_errors.load(Ordering::Relaxed),
        c.checks.load(Ordering::Relaxed),
        c.stale.load(Ordering::Relaxed),
        lists as f64 / secs,
        delta("detail") as f64 / secs,
        delta("counts") as f64 / secs,
    );
}
