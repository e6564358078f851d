//! The status index end to end, with the shipped `config/mesgate.toml`, the MES simulator
//! and a real Redis: pages of ready partitions are answered from the index (`X-Cache:
//! HIT-INDEX`) with the MES's own bytes and no MES list request; status changes and creates
//! move their order in the index before the 200 (and in other instances' over the bus);
//! the index keeps answering while the MES is down; writes during the preload lose nothing;
//! requests the index cannot vouch for take the ordinary path.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use mes_sim::{self as sim, SimConfig, SimHandle};
use mesgate::index::service::{LiveIndex, PartitionState};
use support::client::{Resp, get, get_with, newest, other_status, patch_status, send};
use support::gateway::{TestGateway, spawn_gateway, wait_indexed};
use support::redis::RedisServer;

/// The statuses the shipped config preloads, hottest first.
const PRELOADED: [&str; 6] = [
    "MANUFACTURING_APPROVED",
    "SUBMITTED",
    "PRICE_CALCULATED",
    "MANUFACTURING_STARTED",
    "MANUFACTURING_COMPLETED",
    "SHIPPED",
];

/// A status the shipped config does not preload (history): the ordinary cache path.
const NOT_PRELOADED: &str = "DELIVERED";

const HIT_INDEX: &str = "HIT-INDEX";
const INDEX_CACHE_STATUS: &str = "mesgate; hit; detail=index";
const INDEX_WITHOUT_MES: &str = "mesgate; hit; detail=index-mes-unreachable";

/// The shipped config, with the audit off: its page-1 requests to the MES would move the
/// list counters these tests assert on (the audit has tests of its own, index_audit.rs).
fn shipped_config() -> String {
    let text = std::fs::read_to_string("config/mesgate.toml").expect("config/mesgate.toml");
    assert!(text.contains("[route.index]\n"));
    text.replace("[route.index]\n", "[route.index]\naudit = \"0s\"\n")
}

async fn start_sim(config: SimConfig) -> SimHandle {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    sim::spawn(l, config)
}

/// The live index of the shipped order list.
fn order_index(gw: &TestGateway) -> Arc<LiveIndex> {
    gw.gateway
        .indexes()
        .get("order-list")
        .expect("the shipped order-list route has an index")
        .clone()
}

fn all_ready(ix: &LiveIndex) -> bool {
    ix.states().iter().all(|(_, s)| *s == PartitionState::Ready)
}

/// A gateway with the shipped config in front of `sim`, on `redis`, its index ready; and
/// when it became ready.
async fn ready_gateway(sim: &SimHandle, redis: &RedisServer) -> (TestGateway, Instant) {
    let gw = spawn_gateway(&shipped_config(), &sim.base_url(), Some(&redis.url())).await;
    let ix = order_index(&gw);
    let states: Vec<&str> = ix.states().iter().map(|(p, _)| *p).collect();
    assert_eq!(
        states, PRELOADED,
        "the shipped config preloads these statuses"
    );
    wait_indexed(&gw).await;
    (gw, Instant::now())
}

/// For the MES list counts: the index audit (the shipped config leaves it at its default,
/// every 5 s after the preload) asks the MES for page 1 of each ready partition, so a count
/// taken more than 5 s after readiness may see it.
fn audit_note(ready: Instant) -> String {
    format!(
        "{} ms after the index was ready (the index audit asks the MES every 5 s)",
        ready.elapsed().as_millis()
    )
}

/// `/api/orders?status=S[&page=P][&size=N]`.
fn list_path(status: &str, page: Option<usize>, size: Option<usize>) -> String {
    let mut p = format!("/api/orders?status={status}");
    if let Some(page) = page {
        p.push_str(&format!("&page={page}"));
    }
    if let Some(size) = size {
        p.push_str(&format!("&size={size}"));
    }
    p
}

/// The simulator's own answer to `path`, asked directly (this counts as a MES request).
async fn from_sim(sim_base: &str, path: &str) -> Resp {
    get(&format!("{sim_base}{path}")).await
}

/// Where two bodies first differ, for a readable failure.
fn first_difference(ours: &[u8], theirs: &[u8]) -> String {
    let at = ours
        .iter()
        .zip(theirs)
        .position(|(a, b)| a != b)
        .unwrap_or(ours.len().min(theirs.len()));
    let snip = |b: &[u8]| {
        let from = at.saturating_sub(40);
        let to = (at + 80).min(b.len());
        String::from_utf8_lossy(&b[from.min(to)..to]).into_owned()
    };
    format!(
        "lengths {} vs {}, first difference at byte {at}:\n  gateway   …{}…\n  simulator …{}…",
        ours.len(),
        theirs.len(),
        snip(ours),
        snip(theirs)
    )
}

fn assert_same_body(ours: &Resp, theirs: &Resp, what: &str) {
    assert!(
        ours.body == theirs.body,
        "{what}: the gateway's body is not the simulator's: {}",
        first_difference(&ours.body, &theirs.body)
    );
}

/// A 200 from the index, byte for byte the simulator's answer `theirs`.
fn assert_index_hit(ours: &Resp, theirs: &Resp, what: &str) {
    assert_index_hit_marked(ours, theirs, what, INDEX_CACHE_STATUS);
}

/// [`assert_index_hit`] with this `Cache-Status`.
fn assert_index_hit_marked(ours: &Resp, theirs: &Resp, what: &str, cache_status: &str) {
    assert_eq!(theirs.status, 200, "{what}: the simulator's answer");
    assert_eq!(ours.status, 200, "{what}");
    assert_eq!(ours.x_cache(), HIT_INDEX, "{what}");
    assert_eq!(ours.header("cache-status"), cache_status, "{what}");
    assert_same_body(ours, theirs, what);
}

/// An order to move and its preloaded status: the newest order of all when its status is
/// preloaded (then it is first wherever it goes), else the newest MANUFACTURING_APPROVED.
async fn order_to_move(sim: &SimHandle) -> (u64, String, bool) {
    let (id, status) = newest(sim).await;
    if PRELOADED.contains(&status.as_str()) {
        return (id, status, true);
    }
    let status = "MANUFACTURING_APPROVED";
    let r = from_sim(&sim.base_url(), &list_path(status, None, Some(1))).await;
    (r.item_ids()[0], status.to_owned(), false)
}

#[tokio::test]
async fn composed_pages_equal_the_mes_for_statuses_pages_and_sizes() {
    let redis = RedisServer::start().await;
    let sim = start_sim(SimConfig::instant()).await;
    let base = sim.base_url();
    let (gw, ready) = ready_gateway(&sim, &redis).await;
    let ix = order_index(&gw);

    // What to ask, and the simulator's answers, fetched first (they are MES list requests).
    let mut cases = Vec::new();
    for status in ["MANUFACTURING_APPROVED", "SUBMITTED", "SHIPPED"] {
        let total = from_sim(&base, &list_path(status, None, Some(1)))
            .await
            .json()["total"]
            .as_u64()
            .unwrap() as usize;
        assert!(total > 0, "{status} has orders");
        for size in [None, Some(1), Some(7), Some(200)] {
            let past_end = total.div_ceil(size.unwrap_or(50)) + 1;
            let mut pages = vec![None, Some(1), Some(2), Some(past_end)];
            if size.is_none() {
                pages.push(Some(past_end + 100));
            }
            for page in pages {
                let path = list_path(status, page, size);
                let theirs = from_sim(&base, &path).await;
                let past = page.is_some_and(|p| p >= past_end);
                cases.push((path, theirs, past));
            }
        }
    }
    assert!(cases.len() >= 45, "{} pages compared", cases.len());

    let lists = sim.stats().list;
    let hits = ix.stats().hits.load(std::sync::atomic::Ordering::Relaxed);
    let mut ours = Vec::new();
    for (path, _, _) in &cases {
        ours.push(get(&gw.url(path)).await);
    }
    assert_eq!(
        sim.stats().list,
        lists,
        "no MES list request after the preload; {}",
        audit_note(ready)
    );
    assert_eq!(
        ix.stats().hits.load(std::sync::atomic::Ordering::Relaxed) - hits,
        cases.len() as u64,
        "every page was counted as an index hit"
    );
    for ((path, theirs, past), ours) in cases.iter().zip(&ours) {
        assert_index_hit(ours, theirs, path);
        assert_eq!(ours.header("content-type"), theirs.header("content-type"));
        if *past {
            assert!(ours.item_ids().is_empty(), "{path} is past the end");
            assert!(ours.json()["total"].as_u64().unwrap() > 0, "{path}");
        } else {
            assert!(!ours.item_ids().is_empty(), "{path} lists orders");
        }
    }

    // HEAD: the same headers as the GET, no body.
    for status in ["MANUFACTURING_APPROVED", "SUBMITTED", "SHIPPED"] {
        for path in [
            list_path(status, None, None),
            list_path(status, Some(2), Some(7)),
        ] {
            let got = get(&gw.url(&path)).await;
            let head = send(Method::HEAD, &gw.url(&path), &[], Bytes::new()).await;
            assert_eq!(head.status, 200, "HEAD {path}");
            assert_eq!(head.x_cache(), HIT_INDEX, "HEAD {path}");
            assert_eq!(head.header("cache-status"), INDEX_CACHE_STATUS);
            assert!(head.body.is_empty(), "HEAD {path} has no body");
            assert_eq!(
                head.header("content-length"),
                got.body.len().to_string(),
                "HEAD {path}: the GET's length"
            );
        }
    }
    assert_eq!(
        sim.stats().list,
        lists,
        "HEAD asked the MES nothing either; {}",
        audit_note(ready)
    );
}

#[tokio::test]
async fn a_status_change_moves_the_order_with_no_list_fetched_again() {
    let redis = RedisServer::start().await;
    let sim = start_sim(SimConfig::instant()).await;
    let base = sim.base_url();
    let (gw, ready) = ready_gateway(&sim, &redis).await;
    let (x, a, x_is_newest) = order_to_move(&sim).await;
    let b = other_status(&a);
    let (a1, a2, b1) = (
        list_path(&a, None, None),
        list_path(&a, Some(2), None),
        list_path(b, None, None),
    );
    let old_detail = from_sim(&base, &format!("/api/orders/{x}")).await.json();

    // Before: the index's pages are the simulator's, x first on A's page 1.
    let before_a1 = get(&gw.url(&a1)).await;
    assert_index_hit(&before_a1, &from_sim(&base, &a1).await, &a1);
    let before_a2 = get(&gw.url(&a2)).await;
    assert_index_hit(&before_a2, &from_sim(&base, &a2).await, &a2);
    let before_b1 = get(&gw.url(&b1)).await;
    assert_index_hit(&before_b1, &from_sim(&base, &b1).await, &b1);
    assert_eq!(before_a1.item_ids()[0], x, "x is the newest of {a}");
    assert!(!before_b1.item_ids().contains(&x));
    assert_eq!(before_a1.item_ids().len(), 50, "{a} has a full page 1");
    assert!(before_a2.item_ids().len() >= 2, "{a} has a page 2");

    let stats = sim.stats();
    let r = patch_status(&gw.url(""), x, b).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["status"], b);
    assert!(
        r.json()["version"].as_u64().unwrap() > old_detail["version"].as_u64().unwrap(),
        "the answer carries a newer version"
    );

    // Right after the 200, through the index only.
    let after_a1 = get(&gw.url(&a1)).await;
    let after_a2 = get(&gw.url(&a2)).await;
    let after_b1 = get(&gw.url(&b1)).await;
    let now = sim.stats();
    assert_eq!(now.status_change - stats.status_change, 1);
    assert_eq!(
        now.list,
        stats.list,
        "no list page was fetched again for the write or the reads after it; {}",
        audit_note(ready)
    );

    let (ids_a1, ids_a2, ids_b1) = (
        after_a1.item_ids(),
        after_a2.item_ids(),
        after_b1.item_ids(),
    );
    assert!(!ids_a1.contains(&x), "{a} page 1 no longer lists x");
    assert!(ids_b1.contains(&x), "{b} page 1 lists x");
    if x_is_newest {
        assert_eq!(ids_b1[0], x, "x, the newest order, is first in {b}");
    }
    let mut shifted = before_a1.item_ids()[1..].to_vec();
    shifted.push(before_a2.item_ids()[0]);
    assert_eq!(ids_a1, shifted, "{a} page 1 moved up by one");
    assert_eq!(
        ids_a2[0],
        before_a2.item_ids()[1],
        "{a} page 2 moved up too"
    );
    // The moved row is the MES's answer, byte for byte.
    let row = std::str::from_utf8(&r.body).unwrap();
    assert!(
        std::str::from_utf8(&after_b1.body).unwrap().contains(row),
        "{b} page 1 holds the write's answer as the MES sent it"
    );
    // And every page is the simulator's, byte for byte.
    assert_index_hit(&after_a1, &from_sim(&base, &a1).await, &a1);
    assert_index_hit(&after_a2, &from_sim(&base, &a2).await, &a2);
    assert_index_hit(&after_b1, &from_sim(&base, &b1).await, &b1);
    assert_eq!(
        after_a1.json()["total"].as_u64().unwrap() + 1,
        before_a1.json()["total"].as_u64().unwrap()
    );
    assert_eq!(
        after_b1.json()["total"].as_u64().unwrap(),
        before_b1.json()["total"].as_u64().unwrap() + 1
    );
}

#[tokio::test]
async fn a_create_tops_submitted_page_one() {
    let redis = RedisServer::start().await;
    let sim = start_sim(SimConfig::instant()).await;
    let base = sim.base_url();
    let (gw, ready) = ready_gateway(&sim, &redis).await;
    let page = list_path("SUBMITTED", None, None);
    let before = get(&gw.url(&page)).await;
    assert_index_hit(&before, &from_sim(&base, &page).await, &page);

    let stats = sim.stats();
    let r = send(
        Method::POST,
        &gw.url("/api/orders"),
        &[("content-type", "application/json")],
        Bytes::from(r#"{"customer":"Index Test GmbH","quantity":3}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let created = r.json();
    assert_eq!(created["status"], "SUBMITTED");
    let id = created["id"].as_u64().unwrap();

    let after = get(&gw.url(&page)).await;
    let now = sim.stats();
    assert_eq!(now.create - stats.create, 1);
    assert_eq!(
        now.list,
        stats.list,
        "no list page was fetched again; {}",
        audit_note(ready)
    );
    assert_eq!(after.item_ids()[0], id, "the new order tops SUBMITTED");
    assert_eq!(after.item_ids()[1..], before.item_ids()[..49]);
    assert_eq!(
        after.json()["total"].as_u64().unwrap(),
        before.json()["total"].as_u64().unwrap() + 1
    );
    assert!(
        std::str::from_utf8(&after.body)
            .unwrap()
            .contains(std::str::from_utf8(&r.body).unwrap()),
        "page 1 holds the create's answer as the MES sent it"
    );
    assert_index_hit(&after, &from_sim(&base, &page).await, &page);
}

#[tokio::test]
async fn another_instance_applies_the_move_from_the_bus() {
    let redis = RedisServer::start().await;
    let sim = start_sim(SimConfig::instant()).await;
    let base = sim.base_url();
    let (a, ready) = ready_gateway(&sim, &redis).await;
    let (b, _) = ready_gateway(&sim, &redis).await;
    let (x, from, _) = order_to_move(&sim).await;
    let to = other_status(&from);
    let (from_page, to_page) = (list_path(&from, None, None), list_path(to, None, None));
    // B answers the old state from its index.
    let before = get(&b.url(&from_page)).await;
    assert_index_hit(&before, &from_sim(&base, &from_page).await, &from_page);
    assert!(before.item_ids().contains(&x));

    let r = patch_status(&a.url(""), x, to).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let want_to = from_sim(&base, &to_page).await;
    let want_from = from_sim(&base, &from_page).await;
    assert!(want_to.item_ids().contains(&x));

    let lists = sim.stats().list;
    let bx = order_index(&b);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut polls = 0;
    let got = loop {
        let got = get(&b.url(&to_page)).await;
        polls += 1;
        assert_eq!(got.status, 200);
        assert_eq!(
            got.x_cache(),
            HIT_INDEX,
            "B keeps answering {to_page} from its index (poll {polls})"
        );
        if got.body == want_to.body {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "B never applied the move from the bus within 3 s ({polls} polls): {}",
            first_difference(&got.body, &want_to.body)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_index_hit(&got, &want_to, &to_page);
    let got_from = get(&b.url(&from_page)).await;
    assert_index_hit(&got_from, &want_from, &from_page);
    assert!(!got_from.item_ids().contains(&x));
    // A, the writer, agrees.
    assert_index_hit(&get(&a.url(&to_page)).await, &want_to, &to_page);
    assert_eq!(
        sim.stats().list,
        lists,
        "no MES list request while B caught up; {}",
        audit_note(ready)
    );
    assert!(
        bx.stats()
            .applied
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1,
        "B applied the delta"
    );
}

// Two workers: the new simulator at the end generates its orders synchronously (about
// 150 ms in a debug build, several times that on a loaded machine); on the one thread of a
// plain #[tokio::test] that stalled the bus's heartbeats past `bus_deadline`, the instance
// cut itself off and reloaded its index, and the last read was a MISS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_keeps_answering_while_the_mes_is_down() {
    let redis = RedisServer::start().await;
    let sim = start_sim(SimConfig::instant()).await;
    let base = sim.base_url();
    let addr = sim.addr();
    let (gw, _) = ready_gateway(&sim, &redis).await;
    let paths = [
        list_path("MANUFACTURING_APPROVED", None, None),
        list_path("MANUFACTURING_APPROVED", Some(2), Some(7)),
        list_path("SHIPPED", Some(3), Some(200)),
        list_path("SUBMITTED", Some(1), Some(1)),
    ];
    let mut before = Vec::new();
    for p in &paths {
        before.push(from_sim(&base, p).await);
    }

    sim.shutdown().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the simulator is down"
    );

    for (p, theirs) in paths.iter().zip(&before) {
        let ours = get(&gw.url(p)).await;
        assert_index_hit(&ours, theirs, p);
    }
    // A page the index does not hold, never cached: the MES's failure, as a problem.
    let down = get(&gw.url(&list_path(NOT_PRELOADED, None, None))).await;
    assert_eq!(down.status, 502, "{}", String::from_utf8_lossy(&down.body));
    assert_eq!(down.header("content-type"), "application/problem+json");
    let problem = down.json();
    assert_eq!(problem["type"], "urn:mesgate:problem:upstream-unreachable");
    assert_eq!(problem["status"], 502);
    assert_ne!(down.x_cache(), HIT_INDEX);
    assert!(gw.gateway.snapshot().mes_unreachable, "the metrics say so");
    // And the indexed pages still answer after that failure, marked as answered while
    // the MES is unreachable.
    for (p, theirs) in paths.iter().zip(&before) {
        let again = get(&gw.url(p)).await;
        assert_index_hit_marked(&again, theirs, p, INDEX_WITHOUT_MES);
    }
    // The MES back on its address: its first answer clears the mark.
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    let _sim = sim::spawn(l, SimConfig::instant());
    let back = get(&gw.url(&list_path(NOT_PRELOADED, None, None))).await;
    assert_eq!(back.status, 200, "{}", String::from_utf8_lossy(&back.body));
    let after = get(&gw.url(&paths[0])).await;
    assert_index_hit(&after, &before[0], &paths[0]);
    assert!(!gw.gateway.snapshot().mes_unreachable);
}

/// Every id of a partition, read from the gateway's index page by page (200 a page).
async fn all_ids(gw: &TestGateway, status: &str) -> Vec<u64> {
    let mut ids = Vec::new();
    for page in 1.. {
        let r = get(&gw.url(&list_path(status, Some(page), Some(200)))).await;
        assert_eq!(r.x_cache(), HIT_INDEX, "{status} page {page}");
        let got = r.item_ids();
        ids.extend(&got);
        if got.len() < 200 {
            assert_eq!(ids.len() as u64, r.json()["total"].as_u64().unwrap());
            return ids;
        }
    }
    unreachable!()
}

#[tokio::test]
async fn writes_during_the_preload_lose_nothing() {
    writes_during_the_preload(false, Duration::ZERO).await;
    writes_during_the_preload(true, Duration::ZERO).await;
    // Writes that take a while in the MES: some are in flight across page fetches and
    // across the scan's verdict.
    writes_during_the_preload(true, Duration::from_millis(20)).await;
}

/// ~20 status changes between preloaded statuses through the gateway while it preloads
/// from a slow MES (`mvcc`: list reads answer from a snapshot taken on arrival; each
/// write takes `write_latency` in the MES); once ready, every page 1..=3 of every
/// preloaded status is the simulator's.
async fn writes_during_the_preload(mvcc: bool, write_latency: Duration) {
    let redis = RedisServer::start().await;
    let tag = format!("mvcc={mvcc} write_latency={write_latency:?}");
    let mut config = SimConfig::instant();
    config.write_latency = write_latency;
    let sim = start_sim(config).await;
    sim.set_mvcc(mvcc);
    let base = sim.base_url();

    // Orders to move, taken from each preloaded status's first two pages of 200.
    let mut ids_of = Vec::new();
    for status in PRELOADED {
        let mut ids = from_sim(&base, &list_path(status, Some(1), Some(200)))
            .await
            .item_ids();
        ids.extend(
            from_sim(&base, &list_path(status, Some(2), Some(200)))
                .await
                .item_ids(),
        );
        assert!(ids.len() >= 60, "{status} has orders to move");
        ids_of.push(ids);
    }
    let mut moves = Vec::new();
    for i in 0..20 {
        let from = i % PRELOADED.len();
        let ids = &ids_of[from];
        // Across the partition: around page boundaries of 50 and 200 too.
        let id = ids[(i / PRELOADED.len() * 53 + i * 7) % ids.len()];
        let to = PRELOADED[(from + 1 + i % 4) % PRELOADED.len()];
        assert!(!moves.iter().any(|(m, _)| *m == id));
        moves.push((id, to));
    }

    sim.set_list_latency(Duration::from_millis(30), Duration::ZERO);
    let started = Instant::now();
    let gw = spawn_gateway(&shipped_config(), &base, Some(&redis.url())).await;
    let ix = order_index(&gw);
    assert!(!all_ready(&ix), "the preload is running");
    let url = gw.url("");
    let tasks: Vec<_> = moves
        .iter()
        .enumerate()
        .map(|(k, &(id, to))| {
            let (url, ix) = (url.clone(), ix.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(25 * k as u64)).await;
                let r = patch_status(&url, id, to).await;
                (r, !all_ready(&ix))
            })
        })
        .collect();
    let results = tokio::time::timeout(
        Duration::from_secs(20),
        futures_util::future::join_all(tasks),
    )
    .await
    .expect("the writes were answered within 20 s");
    let mut during = 0;
    for (res, &(id, to)) in results.into_iter().zip(&moves) {
        let (r, loading) = res.expect("write task");
        assert_eq!(
            r.status,
            200,
            "PATCH {id} -> {to}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.json()["status"], to);
        assert_eq!(sim.order_status(id).as_deref(), Some(to));
        during += usize::from(loading);
    }
    assert!(
        during >= moves.len() / 2,
        "{tag}: only {during} of {} writes were answered while the preload ran",
        moves.len()
    );
    wait_indexed(&gw).await;
    let took = started.elapsed();
    sim.set_list_latency(Duration::ZERO, Duration::ZERO);

    let mut compared = 0;
    for status in PRELOADED {
        for size in [None, Some(200)] {
            for page in 1..=3 {
                let path = list_path(status, Some(page), size);
                let ours = get(&gw.url(&path)).await;
                let theirs = from_sim(&base, &path).await;
                assert_index_hit(&ours, &theirs, &format!("{tag} {path}"));
                compared += 1;
            }
        }
    }
    // Every moved order is in its new status, nowhere else, in the whole partitions.
    let mut held = Vec::new();
    for status in PRELOADED {
        held.push(all_ids(&gw, status).await);
    }
    for &(id, to) in &moves {
        for (status, ids) in PRELOADED.iter().zip(&held) {
            assert_eq!(
                ids.contains(&id),
                *status == to,
                "{tag}: order {id} (moved to {to}) in {status}"
            );
        }
    }
    println!(
        "{tag}: preload with writes took {took:?}, {during} of {} writes during it, \
         {compared} pages compared, {} rescans",
        moves.len(),
        ix.stats()
            .rescans
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    gw.stop().await;
}

#[tokio::test]
async fn requests_the_index_cannot_vouch_for_take_the_ordinary_path() {
    let redis = RedisServer::start().await;
    let sim = start_sim(SimConfig::instant()).await;
    let (gw, ready) = ready_gateway(&sim, &redis).await;
    let status = "MANUFACTURING_APPROVED";
    let env = (&gw, &sim, ready);

    // Each case: the gateway's answer (one MES list request, or none), then the MES's own.
    async fn case(
        (gw, sim, ready): (&TestGateway, &SimHandle, Instant),
        path: &str,
        headers: &[(&str, &str)],
        asked: u64,
    ) -> (Resp, Resp) {
        let lists = sim.stats().list;
        let ours = get_with(&gw.url(path), headers).await;
        assert_eq!(
            sim.stats().list - lists,
            asked,
            "{path} {headers:?}: MES list requests; {}",
            audit_note(ready)
        );
        let theirs = from_sim(&sim.base_url(), path).await;
        assert_eq!(ours.status, theirs.status, "{path} {headers:?}");
        assert_same_body(&ours, &theirs, path);
        (ours, theirs)
    }

    // An unknown parameter: the route's unknown_query policy (bypass).
    let path = format!("{}&foo=1", list_path(status, None, None));
    let (r, _) = case(env, &path, &[], 1).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.x_cache(), "BYPASS", "{path}");
    assert_eq!(
        r.header("cache-status"),
        "mesgate; fwd=bypass; detail=unknown-query"
    );

    // Over the MES's largest page, and a page 0: the MES's own 400.
    for path in [
        list_path(status, None, Some(500)),
        list_path(status, Some(0), None),
    ] {
        let (r, _) = case(env, &path, &[], 1).await;
        assert_eq!(r.status, 400, "{path}");
        assert_ne!(r.x_cache(), HIT_INDEX, "{path}");
        assert_eq!(r.x_cache(), "MISS", "{path}");
        assert!(
            r.json()["error"].is_string(),
            "{path}: the MES's error body"
        );
    }

    // Credentials: the route's credentials policy (bypass), every time.
    let path = list_path(status, None, None);
    for headers in [
        [("authorization", "Bearer operator-7")],
        [("cookie", "session=abc")],
    ] {
        for _ in 0..2 {
            let (r, _) = case(env, &path, &headers, 1).await;
            assert_eq!(r.status, 200);
            assert_eq!(r.x_cache(), "BYPASS", "{headers:?}");
            assert_eq!(
                r.header("cache-status"),
                "mesgate; fwd=bypass; detail=credentials"
            );
        }
    }

    // A status not preloaded: the ordinary cache, a miss then a local hit.
    let path = list_path(NOT_PRELOADED, None, None);
    let (r, _) = case(env, &path, &[], 1).await;
    assert_eq!((r.status.as_u16(), r.x_cache()), (200, "MISS"));
    let (r, _) = case(env, &path, &[], 0).await;
    assert_eq!((r.status.as_u16(), r.x_cache()), (200, "HIT-L1"));

    // The plain page still comes from the index.
    let (r, theirs) = case(env, &list_path(status, None, None), &[], 0).await;
    assert_index_hit(&r, &theirs, "plain page");
}

/// Waits (bounded) until `gw` has copied every preloaded partition to Redis.
async fn wait_copied(gw: &TestGateway) {
    let ix = order_index(gw);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ix.stats().copied.load(std::sync::atomic::Ordering::Relaxed) < PRELOADED.len() as u64 {
        assert!(
            Instant::now() < deadline,
            "the index was never copied to redis"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every preloaded status's pages 1 and 2 (and a page of 7) from `gw`'s index are the MES's.
async fn assert_all_pages_equal_the_mes(gw: &TestGateway, sim: &SimHandle, who: &str) {
    for status in PRELOADED {
        for (page, size) in [(None, None), (Some(2), None), (Some(3), Some(7))] {
            let path = list_path(status, page, size);
            let ours = get(&gw.url(&path)).await;
            let theirs = from_sim(&sim.base_url(), &path).await;
            assert_index_hit(&ours, &theirs, &format!("{who} {path}"));
        }
    }
}

#[tokio::test]
async fn a_new_instance_warms_from_redis_with_no_mes_list_request() {
    let redis = RedisServer::start().await;
    let sim = start_sim(SimConfig::instant()).await;
    let (a, _) = ready_gateway(&sim, &redis).await;
    wait_copied(&a).await;
    assert!(
        order_index(&a)
            .stats()
            .preload_pages
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "the first instance preloads from the MES"
    );

    // Writes through A after the copy: moved in the copy too, not only in A's mirror.
    let (x, from, _) = order_to_move(&sim).await;
    let to = other_status(&from);
    assert_eq!(patch_status(&a.url(""), x, to).await.status, 200);
    // And one to history (a status not kept): it leaves the copy's sets.
    let shipped = from_sim(&sim.base_url(), &list_path("SHIPPED", None, Some(2))).await;
    let y = *shipped.item_ids().iter().find(|&&i| i != x).unwrap();
    assert_eq!(patch_status(&a.url(""), y, NOT_PRELOADED).await.status, 200);

    let lists = sim.stats().list;
    let (b, _) = ready_gateway(&sim, &redis).await;
    let bx = order_index(&b);
    assert_eq!(
        sim.stats().list,
        lists,
        "the second instance asked the MES for no list page"
    );
    assert_eq!(
        bx.stats().warmed.load(std::sync::atomic::Ordering::Relaxed),
        PRELOADED.len() as u64,
        "every partition came from redis"
    );
    assert_eq!(
        bx.stats()
            .preload_pages
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_all_pages_equal_the_mes(&b, &sim, "B").await;
    let moved = get(&b.url(&list_path(to, None, Some(200)))).await;
    assert!(
        moved.item_ids().contains(&x),
        "B lists {x} in {to}, as A moved it"
    );
    let shipped = get(&b.url(&list_path("SHIPPED", None, Some(200)))).await;
    assert!(
        !shipped.item_ids().contains(&y),
        "B does not list {y}, gone to history"
    );
}

#[tokio::test]
async fn a_redis_that_lost_the_copy_is_loaded_again_from_the_mes() {
    let mut redis = RedisServer::start().await;
    let sim = start_sim(SimConfig::instant()).await;
    let (a, _) = ready_gateway(&sim, &redis).await;
    wait_copied(&a).await;
    let ax = order_index(&a);

    // Redis dies: a write on A meanwhile is applied to A's mirror and queued for the copy.
    redis.stop();
    let (x, from, _) = order_to_move(&sim).await;
    let to = other_status(&from);
    assert_eq!(patch_status(&a.url(""), x, to).await.status, 200);
    redis.restart().await;

    // The bus comes back empty-handed: A loads from the MES again and copies it out.
    let deadline = Instant::now() + Duration::from_secs(20);
    while ax.stats().copied.load(std::sync::atomic::Ordering::Relaxed) < 2 * PRELOADED.len() as u64
    {
        assert!(
            Instant::now() < deadline,
            "A never copied its index to the new redis"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_indexed(&a).await;
    assert_all_pages_equal_the_mes(&a, &sim, "A").await;

    let lists = sim.stats().list;
    let (b, _) = ready_gateway(&sim, &redis).await;
    assert_eq!(sim.stats().list, lists, "B warmed from the new copy");
    assert_all_pages_equal_the_mes(&b, &sim, "B").await;
    let moved = get(&b.url(&list_path(to, None, Some(200)))).await;
    assert!(
        moved.item_ids().contains(&x),
        "the write made while redis was down is in the copy"
    );
}

#[tokio::test]
async fn the_cached_detail_becomes_the_writes_answer_with_no_mes_request() {
    let redis = RedisServer::start().await;
    let sim = start_sim(SimConfig::instant()).await;
    let (gw, _) = ready_gateway(&sim, &redis).await;
    let (x, from, _) = order_to_move(&sim).await;
    let to = other_status(&from);
    let detail = format!("/api/orders/{x}");
    assert_eq!(get(&gw.url(&detail)).await.x_cache(), "MISS");
    assert_eq!(get(&gw.url(&detail)).await.x_cache(), "HIT-L1");

    let details = sim.stats().detail;
    let r = patch_status(&gw.url(""), x, to).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        sim.stats().detail,
        details,
        "the write's answer is the detail: not fetched again"
    );
    let after = get(&gw.url(&detail)).await;
    assert_eq!(after.status, 200);
    assert_eq!(after.x_cache(), "HIT-L1", "the detail stays cached");
    assert_eq!(after.body, r.body, "it is the write's answer");
    assert_eq!(after.json()["status"], to);
    let theirs = from_sim(&sim.base_url(), &detail).await;
    assert_same_body(&after, &theirs, &detail);
    assert_eq!(after.header("content-type"), theirs.header("content-type"));
    let m = gw.gateway.invalidator().stats();
    assert_eq!(
        m.refreshed_from_answer
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn unfiltered_pages_are_patched_from_the_writes_answer_with_no_mes_request() {
    let redis = RedisServer::start().await;
    let sim = start_sim(SimConfig::instant()).await;
    let (gw, _) = ready_gateway(&sim, &redis).await;
    let (x, from, _) = order_to_move(&sim).await;
    let to = other_status(&from);
    // The unfiltered list, newest first: x is on page 1 when it is the newest order.
    let pages = ["/api/orders", "/api/orders?page=2", "/api/orders?size=200"];
    for p in pages {
        assert_eq!(get(&gw.url(p)).await.x_cache(), "MISS", "{p}");
        assert_eq!(get(&gw.url(p)).await.x_cache(), "HIT-L1", "{p}");
    }
    let lists = sim.stats().list;
    assert_eq!(patch_status(&gw.url(""), x, to).await.status, 200);
    assert_eq!(
        sim.stats().list,
        lists,
        "no list fetched again: the index's partitions move, the unfiltered pages are patched"
    );
    for p in pages {
        let ours = get(&gw.url(p)).await;
        assert_eq!(ours.status, 200, "{p}");
        assert_eq!(ours.x_cache(), "HIT-L1", "{p} stays cached");
        assert_same_body(&ours, &from_sim(&sim.base_url(), p).await, p);
    }
    let first = get(&gw.url("/api/orders?size=200")).await;
    let item = first.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"] == x)
        .cloned()
        .expect("x is among the 200 newest orders");
    assert_eq!(item["status"], to, "x shows its new status in place");
}

#[tokio::test]
async fn a_write_while_redis_hangs_is_in_the_other_instances_index_once_it_is_back() {
    let redis = RedisServer::start().await;
    let sim = start_sim(SimConfig::instant()).await;
    let (a, _) = ready_gateway(&sim, &redis).await;
    wait_copied(&a).await;
    let (b, _) = ready_gateway(&sim, &redis).await;
    let (x, from, _) = order_to_move(&sim).await;
    let to = other_status(&from);
    let to_page = list_path(to, None, Some(200));
    assert_eq!(get(&b.url(&to_page)).await.x_cache(), HIT_INDEX);

    // A hung Redis: A's write reaches the MES and A's mirror; its put in the copy and its
    // bus message wait. B, cut off, answers from the MES meanwhile.
    redis.pause();
    assert_eq!(patch_status(&a.url(""), x, to).await.status, 200);
    let deadline = Instant::now() + Duration::from_millis(1500);
    loop {
        let got = get(&b.url(&to_page)).await;
        if got.status == 200 && got.x_cache() != HIT_INDEX && got.item_ids().contains(&x) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B still stale 1.5 s after the write ({})",
            got.x_cache()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await; // the hang lasts: retries back off
    redis.resume();

    // Back: B warms its index from the copy again; from then on it never leaves x out.
    let bx = order_index(&b);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut served = 0;
    while served < 50 {
        let got = get(&b.url(&to_page)).await;
        assert_eq!(got.status, 200);
        if got.x_cache() == HIT_INDEX {
            assert!(
                got.item_ids().contains(&x),
                "B's index left out the write made while redis hung ({} index answers before)",
                served
            );
            served += 1;
        }
        assert!(
            Instant::now() < deadline,
            "B's index never answered again: {:?}",
            bx.states()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn an_instance_cut_off_from_the_bus_loads_nothing_until_it_hears_it_again() {
    let redis = RedisServer::start().await;
    let sim = start_sim(SimConfig::instant()).await;
    // Audit rounds every 200 ms: the index's loop would have many chances to load.
    let config = shipped_config().replace("audit = \"0s\"", "audit = \"200ms\"");
    let a = spawn_gateway(&config, &sim.base_url(), Some(&redis.url())).await;
    wait_indexed(&a).await;
    wait_copied(&a).await;
    let b = spawn_gateway(&config, &sim.base_url(), Some(&redis.url())).await;
    wait_indexed(&b).await;
    let bx = order_index(&b);
    let (x, from, _) = order_to_move(&sim).await;
    let to = other_status(&from);
    let to_page = list_path(to, None, Some(200));

    redis.pause();
    assert_eq!(patch_status(&a.url(""), x, to).await.status, 200);
    // B hears nothing (not A's delta either): whatever its loop does meanwhile, no
    // partition may become ready again from the MES while deltas can still be missed.
    let until = Instant::now() + Duration::from_secs(3);
    let mut polls = 0;
    while Instant::now() < until {
        let got = get(&b.url(&to_page)).await;
        polls += 1;
        assert_eq!(got.status, 200);
        let cut_off_for = Duration::from_secs(3) - until.saturating_duration_since(Instant::now());
        if cut_off_for > Duration::from_millis(1000) {
            assert!(
                bx.states().iter().all(|(_, s)| *s != PartitionState::Ready),
                "B's index is ready while it is cut off from the bus (poll {polls}): {:?}",
                bx.states()
            );
            assert_ne!(got.x_cache(), HIT_INDEX);
            assert!(got.item_ids().contains(&x), "B fresh from the MES");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis.resume();
    wait_indexed(&b).await;
    let got = get(&b.url(&to_page)).await;
    assert_index_hit(&got, &from_sim(&sim.base_url(), &to_page).await, &to_page);
}
