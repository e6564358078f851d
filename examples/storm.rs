//! The live-shift storm: operators poll hot status lists and open details while writers
//! change statuses (~10/s) and create orders (~3/s) through the gateway; after every
//! acknowledged write the writer checks its own read. Prints stale reads (must be 0) and
//! the upstream load the reads caused, from the simulator's counters.
//!
//! `cargo run --release --example storm -- --gateway URL --sim URL [--duration 30s]`;
//! point `--gateway` at the simulator itself to measure the load without a cache, or at
//! any other HTTP cache in front of the simulator (loadtest/storm.sh runs nginx
//! proxy_cache) to count its stale reads. `--label` names the row of the table.
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
    /// Name of the target in the table's first column (default: the `--gateway` URL).
    #[arg(long)]
    label: Option<String>,
    /// Describe the first N stale reads on stderr.
    #[arg(long, default_value_t = 0)]
    show_stale: u64,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    read_errors: AtomicU64,
    changes: AtomicU64,
    creates: AtomicU64,
    write_errors: AtomicU64,
    /// Judged read-your-write checks (fresh or stale).
    checks: AtomicU64,
    stale: AtomicU64,
    unjudged: AtomicU64,
    /// Stale reads described on stderr so far.
    shown: AtomicU64,
    truth_lists: AtomicU64,
}

struct Shared {
    args: Args,
    client: HttpClient,
    c: Counters,
    latencies: std::sync::Mutex<Vec<u32>>,
    started: Instant,
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
    call_traced(c, method, url, body)
        .await
        .map(|(status, v, _)| (status, v))
}

/// Like `call`, plus the answer's cache headers (`x-cache`, `cache-status`, `age`,
/// `x-cache-status`) as one string, to describe a stale read.
async fn call_traced(
    c: &HttpClient,
    method: Method,
    url: &str,
    body: Option<String>,
) -> Option<(u16, Value, String)> {
    let mut req = Request::builder().method(method).uri(url);
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .ok()?;
    let resp = c.request(req).await.ok()?;
    let status = resp.status().as_u16();
    let trace = ["x-cache", "cache-status", "age", "x-cache-status"]
        .iter()
        .filter_map(|h| {
            let v = resp.headers().get(*h)?.to_str().ok()?;
            Some(format!("{h}: {v}"))
        })
        .collect::<Vec<_>>()
        .join("; ");
    let bytes = resp.into_body().collect().await.ok()?.to_bytes();
    Some((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        trace,
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

/// What one read-your-write check found.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// The gateway's answer reflects the write.
    Fresh,
    /// The gateway's answer predates the write: a stale read.
    Stale,
    /// Not judged: a concurrent write changed the truth while the gateway was read, the
    /// order sits near the end of the page, or a request failed.
    Unjudged,
}

/// Whether page 1 of a status must list `id`, from the MES's page: `None` when the order is
/// near the end of the page, where a concurrent write may legitimately push it off.
fn expected(truth: &Value, id: u64) -> Option<bool> {
    match ids(truth).iter().position(|&x| x == id) {
        Some(p) if p < 40 => Some(true),
        Some(_) => None,
        None => Some(false),
    }
}

async fn truth_page(s: &Shared, path: &str) -> Option<Value> {
    s.c.truth_lists.fetch_add(1, Ordering::Relaxed);
    let url = format!("{}{path}", s.args.sim);
    call(&s.client, Method::GET, &url, None)
        .await
        .and_then(|(st, v)| (st == 200).then_some(v))
}

/// Whether the gateway's page 1 of `status` agrees with the MES about `id`. The MES is read
/// before and after the gateway: only when both agree (nothing moved the order in between)
/// is the gateway's answer judged, so a concurrent write is never counted as a stale read.
async fn page_check(s: &Shared, status: &str, id: u64, what: &str) -> Verdict {
    let path = format!("/api/orders?status={status}");
    let before = truth_page(s, &path).await;
    let gw = call_traced(
        &s.client,
        Method::GET,
        &format!("{}{path}", s.args.gateway),
        None,
    )
    .await;
    let after = truth_page(s, &path).await;
    let (Some(before), Some((200, gw, trace)), Some(after)) = (before, gw, after) else {
        return Verdict::Unjudged;
    };
    let (Some(want), Some(again)) = (expected(&before, id), expected(&after, id)) else {
        return Verdict::Unjudged;
    };
    if want != again {
        return Verdict::Unjudged;
    }
    if ids(&gw).contains(&id) == want {
        return Verdict::Fresh;
    }
    let listed = if want { "lacks" } else { "still lists" };
    s.report_stale(format!(
        "{what}: page 1 of {status} {listed} order {id} [{trace}]"
    ));
    Verdict::Stale
}

/// Whether the gateway's detail of `id` shows at least `version` (the write's own; a later
/// write only raises it, so no second look at the MES is needed), or, when either answer
/// has no version, the new status.
async fn detail_check(s: &Shared, id: u64, version: Option<u64>, to: &str) -> Verdict {
    let url = format!("{}/api/orders/{id}", s.args.gateway);
    let Some((200, gw, trace)) = call_traced(&s.client, Method::GET, &url, None).await else {
        return Verdict::Unjudged;
    };
    let fresh = match (gw["version"].as_u64(), version) {
        (Some(seen), Some(written)) => seen >= written,
        _ => gw["status"] == to,
    };
    if !fresh {
        s.report_stale(format!(
            "change to {to}: detail of order {id} shows version {} status {} (the write made version {version:?}) [{trace}]",
            gw["version"], gw["status"]
        ));
        return Verdict::Stale;
    }
    Verdict::Fresh
}

impl Shared {
    fn count(&self, verdicts: &[Verdict]) {
        let c = &self.c;
        for v in verdicts {
            match v {
                Verdict::Fresh => c.checks.fetch_add(1, Ordering::Relaxed),
                Verdict::Stale => {
                    c.stale.fetch_add(1, Ordering::Relaxed);
                    c.checks.fetch_add(1, Ordering::Relaxed)
                }
                Verdict::Unjudged => c.unjudged.fetch_add(1, Ordering::Relaxed),
            };
        }
    }

    /// Prints the first `--show-stale` stale reads on stderr, to investigate them.
    fn report_stale(&self, what: String) {
        let n = self.c.shown.fetch_add(1, Ordering::Relaxed);
        if n < self.args.show_stale {
            eprintln!(
                "storm: stale read through {} at {:.3}s: {what}",
                self.label(),
                self.started.elapsed().as_secs_f64()
            );
        }
    }

    fn label(&self) -> &str {
        self.args.label.as_deref().unwrap_or(&self.args.gateway)
    }
}

async fn change(s: &Shared, rng: &mut Rng) {
    let from = rng.status();
    let list = truth_page(s, &format!("/api/orders?status={from}")).await;
    let candidates = list.map(|v| ids(&v)).unwrap_or_default();
    let Some(&id) = candidates.get(rng.below(candidates.len() as u64) as usize) else {
        return;
    };
    let mut to = rng.status();
    while to == from {
        to = rng.status();
    }
    let url = format!("{}/api/orders/{id}/status", s.args.gateway);
    let body = format!("{{\"status\":\"{to}\"}}");
    let version = match call(&s.client, Method::PATCH, &url, Some(body)).await {
        Some((200, order)) => order["version"].as_u64(),
        Some((409, _)) => return,
        _ => {
            s.c.write_errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    s.c.changes.fetch_add(1, Ordering::Relaxed);
    let what = format!("change {from} -> {to}");
    s.count(&[
        detail_check(s, id, version, to).await,
        page_check(s, to, id, &what).await,
        page_check(s, from, id, &what).await,
    ]);
}

async fn create(s: &Shared) {
    let url = format!("{}/api/orders", s.args.gateway);
    let Some((201, order)) = call(&s.client, Method::POST, &url, Some("{}".into())).await else {
        s.c.write_errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    s.c.creates.fetch_add(1, Ordering::Relaxed);
    let id = order["id"].as_u64().unwrap_or(0);
    s.count(&[page_check(s, "SUBMITTED", id, "create").await]);
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
        started,
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
        "| target | reads/s | read p50 ms | read p99 ms | read errors | changes | creates | write errors | own-read checks | not judged | stale reads | stale % | upstream list req/s | upstream detail req/s | upstream counts req/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let checks = c.checks.load(Ordering::Relaxed);
    let stale = c.stale.load(Ordering::Relaxed);
    println!(
        "| {} | {:.0} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
        s.label(),
        reads as f64 / secs,
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        c.read_errors.load(Ordering::Relaxed),
        c.changes.load(Ordering::Relaxed),
        c.creates.load(Ordering::Relaxed),
        c.write_errors.load(Ordering::Relaxed),
        checks,
        c.unjudged.load(Ordering::Relaxed),
        stale,
        100.0 * stale as f64 / checks.max(1) as f64,
        lists as f64 / secs,
        delta("detail") as f64 / secs,
        delta("counts") as f64 / secs,
    );
}
