//! Randomized consistency check: two gateway instances on one Redis in front of the MVCC
//! simulator, concurrent readers and writers for a bounded time. Zero read-your-writes
//! violations on the writing instance; cross-instance convergence is reported.
//!
//! See the figures with `cargo test --test consistency -- --nocapture`.

mod support;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use mes_sim::{self as sim, SimConfig, SimHandle};
use support::client::{Resp, get, send};
use support::gateway::{TestGateway, spawn_gateway, wait_indexed, without_index};
use support::redis::RedisServer;

const HOT: [&str; 4] = [
    "MANUFACTURING_APPROVED",
    "SUBMITTED",
    "MANUFACTURING_STARTED",
    "PRICE_CALCULATED",
];

/// A small deterministic generator (xorshift), seeded per task, so a failing run can be
/// replayed from the seed it prints.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Default)]
struct Report {
    writes: u64,
    reads: u64,
    violations: Vec<String>,
    convergence_ms: Vec<u64>,
    /// Indexed runs: pages that differed from the MES's after the load stopped, and how
    /// many pages were answered from the index then.
    final_mismatches: Vec<String>,
    final_index_hits: u64,
    /// MES list requests during the load.
    mes_lists: u64,
}

struct World {
    sim: SimHandle,
    a: TestGateway,
    b: TestGateway,
    report: Mutex<Report>,
    deadline: Instant,
}

/// Writes a run makes at least, however slow the machine: fewer would mean nothing.
const MIN_WRITES: u64 = 20;

impl World {
    /// Whether the load goes on: until the deadline, and then until [`MIN_WRITES`].
    fn going(&self) -> bool {
        Instant::now() < self.deadline || self.report.lock().unwrap().writes < MIN_WRITES
    }
}

fn ids(r: &Resp) -> Vec<u64> {
    r.item_ids()
}

/// One run at a time: the runs are timed (convergence within 2 s) on a 2-core box, and
/// three of them at once starve each other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run(duration: Duration, switch_off_previous_lookup: bool, indexed: bool) -> Report {
    let _turn = ONE_AT_A_TIME.lock().await;
    let redis = RedisServer::start().await;
    let mut cfg = SimConfig::instant();
    cfg.list_base = Duration::from_millis(3);
    cfg.detail_latency = Duration::from_millis(1);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = sim::spawn(l, cfg);
    let shipped = std::fs::read_to_string("config/mesgate.toml").unwrap();
    let config = if indexed {
        shipped
    } else {
        without_index(&shipped)
    };
    let a = spawn_gateway(&config, &sim.base_url(), Some(&redis.url())).await;
    let b = spawn_gateway(&config, &sim.base_url(), Some(&redis.url())).await;
    if indexed {
        wait_indexed(&a).await;
        wait_indexed(&b).await;
    }
    if switch_off_previous_lookup {
        for g in [&a, &b] {
            let s = g.gateway.invalidator().switches();
            s.previous_lookup.store(false, Ordering::Relaxed);
        }
    }
    let mut pool = Vec::new();
    for s in HOT {
        let r = get(&format!("{}/api/orders?status={s}&size=20", sim.base_url())).await;
        pool.extend(ids(&r));
    }
    let world = Arc::new(World {
        sim,
        a,
        b,
        report: Mutex::default(),
        deadline: Instant::now() + duration,
    });
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("seed {seed}");
    let mut tasks = Vec::new();
    for i in 0..4 {
        let (w, p) = (world.clone(), pool.clone());
        tasks.push(tokio::spawn(reader(w, p, Rng(seed.wrapping_add(i)))));
    }
    let half = pool.len() / 2;
    for (i, part) in [pool[..half].to_vec(), pool[half..].to_vec()]
        .into_iter()
        .enumerate()
    {
        let w = world.clone();
        tasks.push(tokio::spawn(writer(
            w,
            part,
            Rng(seed.wrapping_mul(7 + i as u64)),
        )));
    }
    let lists_before = world.sim.stats().list;
    for t in tasks {
        t.await.unwrap();
    }
    let mes_lists = world.sim.stats().list - lists_before;
    let w = Arc::try_unwrap(world).ok().expect("tasks done");
    let mut report = w.report.into_inner().unwrap();
    report.mes_lists = mes_lists;
    if indexed {
        final_pages(&w.sim, [&w.a, &w.b], &mut report).await;
    }
    report
}

/// After the load: every page 1 and 2 of every hot status, on both instances, equals the
/// MES's, byte for byte (bus deltas may still be on their way: bounded retries).
async fn final_pages(sim: &SimHandle, gws: [&TestGateway; 2], report: &mut Report) {
    for s in HOT {
        for page in [1, 2] {
            let path = format!("/api/orders?status={s}&page={page}");
            for gw in gws {
                let mut tries = 0;
                loop {
                    let truth = get(&format!("{}{path}", sim.base_url())).await;
                    let got = get(&gw.url(&path)).await;
                    if got.body == truth.body {
                        report.final_index_hits += u64::from(got.x_cache() == "HIT-INDEX");
                        break;
                    }
                    tries += 1;
                    if tries == 50 {
                        report
                            .final_mismatches
                            .push(format!("{path} ({})", got.x_cache()));
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

async fn reader(w: Arc<World>, pool: Vec<u64>, mut rng: Rng) {
    while w.going() {
        let gw = if rng.below(2) == 0 { &w.a } else { &w.b };
        let path = match rng.below(5) {
            0 => format!("/api/orders/{}", pool[rng.below(pool.len())]),
            1 => "/api/orders/status-counts".into(),
            2 => "/api/orders".into(),
            n => format!(
                "/api/orders?status={}&page={}",
                HOT[rng.below(HOT.len())],
                n - 2
            ),
        };
        assert_eq!(get(&gw.url(&path)).await.status, 200, "{path}");
        w.report.lock().unwrap().reads += 1;
    }
}

async fn writer(w: Arc<World>, pool: Vec<u64>, mut rng: Rng) {
    while w.going() {
        let id = pool[rng.below(pool.len())];
        let from = w.sim.order_status(id).unwrap();
        let to = HOT[rng.below(HOT.len())];
        if to == from {
            continue;
        }
        let url = w.a.url(&format!("/api/orders/{id}/status"));
        let body = Bytes::from(format!("{{\"status\":\"{to}\"}}"));
        let r = send(
            Method::PATCH,
            &url,
            &[("content-type", "application/json")],
            body,
        )
        .await;
        assert_eq!(r.status, 200);
        let acked = Instant::now();
        let other = tokio::spawn(converge(w.clone(), id, to, acked));
        let found = check_own_read(&w, id, &from, to).await;
        let waited = other.await.unwrap();
        let mut rep = w.report.lock().unwrap();
        rep.writes += 1;
        rep.violations.extend(found);
        rep.convergence_ms.extend(waited);
    }
}

/// Read-your-writes on the writing instance, right after the acknowledgement.
async fn check_own_read(w: &World, id: u64, from: &str, to: &str) -> Vec<String> {
    let mut v = Vec::new();
    let detail = get(&w.a.url(&format!("/api/orders/{id}"))).await;
    if detail.json()["status"] != to {
        v.push(format!(
            "detail {id} shows {} after ->{to} ({})",
            detail.json()["status"],
            detail.x_cache()
        ));
    }
    let old = get(&w.a.url(&format!("/api/orders?status={from}"))).await;
    if ids(&old).contains(&id) {
        v.push(format!(
            "{from} page 1 still lists {id} after ->{to} ({})",
            old.x_cache()
        ));
    }
    let new = get(&w.a.url(&format!("/api/orders?status={to}"))).await;
    let truth = get(&format!("{}/api/orders?status={to}", w.sim.base_url())).await;
    // Only where no concurrent write can push it off page 1 in between.
    let top = ids(&truth).iter().take(40).any(|&x| x == id);
    if top && !ids(&new).contains(&id) {
        v.push(format!(
            "{to} page 1 lacks {id} after ->{from}->{to} ({})",
            new.x_cache()
        ));
    }
    v
}

/// How long until the other instance shows the write (bounded at 2 s).
async fn converge(w: Arc<World>, id: u64, to: &'static str, acked: Instant) -> Option<u64> {
    let limit = acked + Duration::from_secs(2);
    while Instant::now() < limit {
        if get(&w.b.url(&format!("/api/orders/{id}"))).await.json()["status"] == to {
            return Some(acked.elapsed().as_millis() as u64);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_your_writes_violation_under_concurrent_load() {
    let r = run(Duration::from_secs(4), false, false).await;
    let mut conv = r.convergence_ms.clone();
    conv.sort_unstable();
    println!(
        "writes {} reads {} violations {} | cross-instance convergence p50 {} ms p99 {} ms max {} ms ({} of {} converged)",
        r.writes,
        r.reads,
        r.violations.len(),
        percentile(&conv, 0.5),
        percentile(&conv, 0.99),
        conv.last().copied().unwrap_or(0),
        conv.len(),
        r.writes
    );
    assert!(r.writes >= MIN_WRITES, "{} writes", r.writes);
    assert!(r.violations.is_empty(), "{:#?}", r.violations);
    assert_eq!(
        conv.len() as u64,
        r.writes,
        "every write reached the other instance"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_catches_a_gateway_without_the_previous_status_lookup() {
    let r = run(Duration::from_secs(3), true, false).await;
    println!(
        "with the previous-status lookup off: {} violations in {} writes",
        r.violations.len(),
        r.writes
    );
    assert!(
        !r.violations.is_empty(),
        "the randomized check cannot fail: it proves nothing"
    );
}

/// The same load with the status index on (the shipped config): zero read-your-writes
/// violations on indexed and ordinary pages alike, and once the load stops every hot page
/// on both instances is the MES's, byte for byte, answered from the index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_violation_with_the_status_index_and_pages_equal_the_mes_after() {
    let r = run(Duration::from_secs(4), false, true).await;
    println!(
        "indexed: writes {} reads {} violations {} | MES list requests during the load {} | final pages from the index {} of 16, mismatches {:?}",
        r.writes,
        r.reads,
        r.violations.len(),
        r.mes_lists,
        r.final_index_hits,
        r.final_mismatches
    );
    assert!(r.writes >= MIN_WRITES, "{} writes", r.writes);
    assert!(r.violations.is_empty(), "{:#?}", r.violations);
    assert!(r.final_mismatches.is_empty(), "{:?}", r.final_mismatches);
    assert_eq!(r.final_index_hits, 16, "every hot page from the index");
}
