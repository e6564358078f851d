//! The status index against the real simulator: pages composed from the mirror are the
//! simulator's bytes exactly (statuses, pages 1, 2, last and past the end, sizes 1 to 200),
//! the writes' answers keep them so, and a preload scan with writes between its pages ends
//! exact or asks again, never exact with an order lost or a stale status.

mod support;

use bytes::Bytes;
use http::Method;
use mes_sim::{self as sim, SimConfig, SimHandle};
use mesgate::index::{
    Applied, BodyShape, Mirror, Rescan, Row, RowShape, Scan, ScanRequest, Verdict, compose,
};
use support::client::{get, send};

const STATUSES: [&str; 8] = [
    "SUBMITTED",
    "PRICE_CALCULATED",
    "MANUFACTURING_APPROVED",
    "MANUFACTURING_STARTED",
    "MANUFACTURING_COMPLETED",
    "SHIPPED",
    "DELIVERED",
    "CANCELLED",
];

/// Statuses compared page by page: small, mid-sized and the big history.
const COMPARED: [&str; 4] = [
    "SUBMITTED",
    "MANUFACTURING_APPROVED",
    "SHIPPED",
    "DELIVERED",
];

const SIZES: [usize; 4] = [1, 7, 50, 200];

async fn start_sim() -> SimHandle {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    sim::spawn(l, SimConfig::instant())
}

async fn list(sim: &SimHandle, status: &str, page: usize, size: usize) -> Bytes {
    let url = format!(
        "{}/api/orders?status={status}&page={page}&size={size}",
        sim.base_url()
    );
    let r = get(&url).await;
    assert_eq!(r.status, 200, "{url}");
    r.body
}

async fn set_status(sim: &SimHandle, id: u64, status: &str) -> Row {
    let url = format!("{}/api/orders/{id}/status", sim.base_url());
    let body = Bytes::from(format!(r#"{{"status":"{status}"}}"#));
    let r = send(Method::PATCH, &url, &[], body).await;
    assert_eq!(r.status, 200, "PATCH {id} -> {status}");
    Row::parse(&RowShape::default(), r.body).unwrap()
}

async fn create(sim: &SimHandle) -> Row {
    let url = format!("{}/api/orders", sim.base_url());
    let r = send(Method::POST, &url, &[], Bytes::new()).await;
    assert_eq!(r.status, 201);
    Row::parse(&RowShape::default(), r.body).unwrap()
}

/// Fetches the scan's request from the simulator and feeds the answer in.
async fn fetch(sim: &SimHandle, scan: &mut Scan, mirror: &mut Mirror, req: ScanRequest) -> bool {
    let body = list(sim, scan.partition(), req.page, req.size).await;
    let list = BodyShape::default().parse(&body).unwrap();
    let received = scan.receive(mirror, &RowShape::default(), &list).unwrap();
    received.last
}

/// A preload of `status` with no writes around: one pass, exact.
async fn preload(sim: &SimHandle, mirror: &mut Mirror, status: &str) {
    let mut scan = Scan::new(status, 200, 100);
    while let Some(req) = scan.request(mirror) {
        fetch(sim, &mut scan, mirror, req).await;
    }
    assert_eq!(scan.verdict(mirror), Verdict::Exact, "{status}");
}

/// Every compared status, size and page (1, 2, last, past the end): the mirror's page
/// composed is the simulator's body, byte for byte.
async fn assert_pages_match(sim: &SimHandle, mirror: &Mirror) -> usize {
    let mut compared = 0;
    for status in COMPARED {
        let total = mirror.len(status).unwrap();
        for size in SIZES {
            let last = total.div_ceil(size).max(1);
            let mut pages = vec![1, 2, last, last + 1];
            pages.sort_unstable();
            pages.dedup();
            for page in pages {
                let ours = compose(&mirror.page(status, page, size).unwrap(), page, size);
                let theirs = list(sim, status, page, size).await;
                assert!(
                    ours == theirs,
                    "{status} page {page} size {size}:\nours   {}\ntheirs {}",
                    String::from_utf8_lossy(&ours),
                    String::from_utf8_lossy(&theirs)
                );
                compared += 1;
            }
        }
    }
    compared
}

#[tokio::test]
async fn composed_pages_are_the_simulators_bytes_before_and_after_writes() {
    let sim = start_sim().await;
    let mut mirror = Mirror::new(STATUSES, 10_000);
    for status in STATUSES {
        preload(&sim, &mut mirror, status).await;
    }
    assert_eq!(mirror.entities(), 5_000);
    assert!(mirror.len("DELIVERED").unwrap() > 2_000, "a deep partition");
    let compared = assert_pages_match(&sim, &mirror).await;
    assert!(compared >= 60, "{compared} pages compared");

    // Writes through the API; their answers alone keep the mirror true.
    let approved = BodyShape::default()
        .parse(&list(&sim, "MANUFACTURING_APPROVED", 1, 200).await)
        .unwrap();
    for item in approved.items.iter().step_by(37).take(5) {
        let id = Row::parse(&RowShape::default(), item.clone()).unwrap().id;
        let answer = set_status(&sim, id, "SHIPPED").await;
        let applied = mirror.apply(answer);
        assert_eq!(
            applied,
            Applied::Moved {
                from: "MANUFACTURING_APPROVED".into()
            }
        );
    }
    let delivered = mirror.page("DELIVERED", 3, 7).unwrap().items[2].clone();
    let id = Row::parse(&RowShape::default(), delivered).unwrap().id;
    mirror.apply(set_status(&sim, id, "SUBMITTED").await);
    for _ in 0..3 {
        assert_eq!(mirror.apply(create(&sim).await), Applied::Inserted);
    }
    assert_pages_match(&sim, &mirror).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn a_list_body_read_and_composed_again_is_the_same_bytes() {
    let sim = start_sim().await;
    for (status, page, size) in [
        ("SHIPPED", 1, 200),
        ("SUBMITTED", 2, 7),
        ("CANCELLED", 99, 50),
    ] {
        let body = list(&sim, status, page, size).await;
        let read = BodyShape::default().parse(&body).unwrap();
        let again = mesgate::index::Page {
            items: read.items,
            total: read.total,
        };
        assert_eq!(compose(&again, read.page, read.size), body);
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn a_preload_with_orders_leaving_page_one_asks_again_then_ends_exact() {
    let sim = start_sim().await;
    let mut mirror = Mirror::new(["SHIPPED", "MANUFACTURING_APPROVED"], 10_000);
    let status = "SHIPPED";
    let mut scan = Scan::new(status, 200, 100);
    let req = scan.request(&mirror).unwrap();
    assert!(!fetch(&sim, &mut scan, &mut mirror, req).await);
    // Two orders of page 1 are delivered through mesgate before page 2 is fetched; the
    // orders at the top of page 2 slide onto page 1, and are on no page.
    let page1 = mirror.page(status, 1, 200).unwrap();
    for at in [0, 150] {
        let id = Row::parse(&RowShape::default(), page1.items[at].clone())
            .unwrap()
            .id;
        mirror.apply(set_status(&sim, id, "DELIVERED").await);
    }
    while let Some(req) = scan.request(&mirror) {
        fetch(&sim, &mut scan, &mut mirror, req).await;
    }
    let verdict = scan.verdict(&mirror);
    let Verdict::Rescan(Rescan::Missing { held, total }) = verdict else {
        panic!("two orders were skipped, the verdict is {verdict:?}");
    };
    assert_eq!(held + 2, total);
    // Again, into the same mirror: exact, and byte for byte the simulator's pages.
    let mut rescan = Scan::new(status, 200, 100);
    while let Some(req) = rescan.request(&mirror) {
        fetch(&sim, &mut rescan, &mut mirror, req).await;
    }
    assert_eq!(rescan.verdict(&mirror), Verdict::Exact);
    let total = mirror.len(status).unwrap();
    for page in 1..=total.div_ceil(200) {
        let ours = compose(&mirror.page(status, page, 200).unwrap(), page, 200);
        assert_eq!(ours, list(&sim, status, page, 200).await, "page {page}");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn a_preload_with_new_orders_arriving_and_a_write_in_flight_never_ends_wrong() {
    let sim = start_sim().await;
    let mut mirror = Mirror::new(["SUBMITTED"], 10_000);
    let status = "SUBMITTED";
    // Page 1 of size 50 so the partition takes several pages.
    let mut scan = Scan::new(status, 50, 100);
    let req = scan.request(&mirror).unwrap();
    fetch(&sim, &mut scan, &mut mirror, req).await;
    // New orders arrive between pages (shifting later pages down: duplicates).
    for _ in 0..4 {
        mirror.apply(create(&sim).await);
    }
    let mut pending = None;
    while let Some(req) = scan.request(&mirror) {
        if pending.is_none() {
            // A write lands while this page is in flight; its answer is applied after.
            let id = mirror.page(status, 1, 1).unwrap().items[0].clone();
            let id = Row::parse(&RowShape::default(), id).unwrap().id;
            pending = Some(set_status(&sim, id, "CANCELLED").await);
        }
        fetch(&sim, &mut scan, &mut mirror, req).await;
    }
    // The writes sent before the last answer arrived settle before the verdict (A2).
    mirror.apply(pending.unwrap());
    let mut verdict = scan.verdict(&mirror);
    assert!(
        matches!(verdict, Verdict::Recheck { .. }),
        "the write touched the partition after the last request: {verdict:?}"
    );
    for _ in 0..5 {
        match verdict {
            Verdict::Exact => break,
            Verdict::Recheck { .. } | Verdict::Rescan(Rescan::Missing { .. }) => {
                let req = scan.probe(&mirror);
                fetch(&sim, &mut scan, &mut mirror, req).await;
                verdict = scan.verdict(&mirror);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(verdict, Verdict::Exact);
    let total = mirror.len(status).unwrap();
    let ours = compose(&mirror.page(status, 1, 200).unwrap(), 1, 200);
    assert_eq!(ours, list(&sim, status, 1, 200).await);
    assert!(total <= 200, "the whole partition was compared");
    sim.shutdown().await;
}
