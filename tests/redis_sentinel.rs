//! Redis Sentinel: the gateway finds the master through the sentinels, and follows a
//! failover (the master SIGKILLed, its replica promoted) with no failed request, no
//! stale read across instances, and the shared tier working again on the new master.

mod support;

use std::time::Duration;

use mes_sim::{self as sim, SimConfig};
use support::client::get;
use support::gateway::{
    shared_by_both, shared_tier_serves, spawn_gateway, without_index, write_shows,
};
use support::sentinel::{MASTER_NAME, SentinelSet};

/// The shipped config (no status index: these tests are about the shared tier and the
/// bus) in sentinel mode; the sentinels' URLs come in as `MESGATE_REDIS_URL` would.
fn sentinel_config() -> String {
    let shipped = std::fs::read_to_string("config/mesgate.toml").unwrap();
    assert!(shipped.contains("[redis]\n"));
    without_index(&shipped).replace(
        "[redis]\n",
        &format!("[redis]\nmode = \"sentinel\"\nmaster_name = \"{MASTER_NAME}\"\n"),
    )
}

/// How the master fails.
#[derive(Clone, Copy)]
enum Fault {
    /// SIGKILL: its connections close.
    Kill,
    /// SIGSTOP until the failover is done, then SIGCONT: its connections stay open and
    /// silent, then it answers again as a stale master.
    Hang,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_find_the_master_and_follow_a_failover_without_stale_reads() {
    failover(Fault::Kill).await;
}

/// The old master's connections neither close nor answer: the instances must leave it
/// for the master the sentinels name (the bus subscription too), not wait on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_master_is_left_for_the_new_one() {
    failover(Fault::Hang).await;
}

async fn failover(fault: Fault) {
    let mut set = SentinelSet::start().await;
    let sim = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        sim::spawn(l, SimConfig::instant())
    };
    let config = sentinel_config();
    let a = spawn_gateway(&config, &sim.base_url(), Some(&set.urls())).await;
    let b = spawn_gateway(&config, &sim.base_url(), Some(&set.urls())).await;

    // The shared tier through the master the sentinels named: A fills, B hits Redis.
    let (x, from) = shared_by_both(&a, &b, &sim).await;
    let list = format!("/api/orders?status={from}");
    let detail = format!("/api/orders/{x}");

    // Readers on both instances through the failover: every request answered.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = [a.url(&list), b.url(&detail)]
        .into_iter()
        .map(|url| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = get(&url).await;
                    assert_eq!(r.status, 200, "{url} during the failover");
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                n
            })
        })
        .collect();
    match fault {
        Fault::Kill => set.kill_master().await,
        Fault::Hang => set.hang_master_through_a_failover().await,
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.await.unwrap() > 0);
    }

    // A write on A after the failover: B shows it within the bound.
    let to = write_shows(&a, &b, x, &from).await;

    // And the shared tier works again, on the new master: A fills, B hits Redis.
    shared_tier_serves(&a, &b, to, 10).await;
    assert_eq!(set.master_port().await, set.replica.port());
}
