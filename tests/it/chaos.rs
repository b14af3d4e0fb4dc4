//! Chaos on Redis Cluster: masters killed (SIGKILL) one after another under mixed load —
//! waits, broadcast and lookback notifies, waits that time out, workflow runs. After each
//! kill the replica takes over and the old node is restarted from its directory until it
//! is a replica with its link up; then the next master is killed.
//!
//! Asserted: no acknowledged write lost, no request without an answer within its bound
//! (the load's client gives each 5 s), every acknowledged timeout delivered, every
//! triggered run completed.
//!
//! CI runs three kills. The long variant, 30 kills, is documented in docs/operating.md:
//! `HERALD_CHAOS_KILLS=30 cargo test --release --test it chaos:: -- --nocapture`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::cluster::{RedisCluster, Role};
use crate::support::redis::poll_until;
use crate::support::{eventually, Receiver, TestApp};
use crate::topology::{cluster_settings, load, lost};
use crate::workflow::{trigger, Endpoint};

/// Kills a master, waits for its replica's promotion, restarts the old node and waits
/// until it follows as a replica with its link up; returns the outage as seen from the
/// cluster (kill to promotion).
fn kill_one_master(cluster: &mut RedisCluster, round: usize) -> Duration {
    let masters = cluster.masters();
    let victim = masters[round % masters.len()].port;
    let replica = cluster.replicas_of(victim)[0];
    let killed = Instant::now();
    cluster.node_mut(victim).kill();
    let promoted = poll_until(Duration::from_secs(30), || {
        cluster.role(cluster.node(replica)) == Role::Master
    });
    assert!(
        promoted,
        "round {round}: the replica of the killed master took over"
    );
    let outage = killed.elapsed();
    cluster.node_mut(victim).restart();
    cluster.await_healthy(Duration::from_secs(30));
    outage
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_kills_in_a_row_under_mixed_load_lose_nothing_and_every_run_completes() {
    let kills: usize = std::env::var("HERALD_CHAOS_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(3);
    let mut cluster = RedisCluster::start(3, 1, 1000);
    let mut settings = cluster_settings(&cluster);
    // Workflow steps that meet an outage are retried within seconds, not minutes.
    settings.delivery.backoff_factor = 0.05;
    settings.delivery.max_backoff_secs = 1;
    let app = Arc::new(TestApp::start(settings).await);
    let receiver = Receiver::start().await;
    let endpoint = Endpoint::start_with_retries(&app, 3, 30).await;
    let stop = Arc::new(AtomicBool::new(false));
    let running = tokio::spawn(load(
        app.clone(),
        receiver.url(""),
        6,
        1_000_000,
        stop.clone(),
    ));

    let mut runs: Vec<String> = Vec::new();
    let mut timeouts: Vec<String> = Vec::new();
    let mut outages = Vec::new();
    for round in 0..kills {
        // Before each kill: runs started and waits that time out during or after it.
        for i in 0..5 {
            let run = format!("wfr_chaos-{round}-{i}");
            let body = trigger(&endpoint.url(), &run, json!({"upstash-retries": "30"}));
            let request = app
                .http
                .post(app.url("/v2/batch"))
                .bearer_auth(&app.token)
                .body(body.to_string());
            if matches!(app.try_send(request).await, Ok((200, _))) {
                runs.push(run);
            }
            let path = format!("/expired/{round}/{i}");
            let wait = json!({"url": receiver.url("/never"), "timeout": "2s",
                "timeoutUrl": receiver.url(&path)});
            let request = app
                .http
                .post(app.url(&format!("/v2/wait/chaos-{round}-{i}")))
                .bearer_auth(&app.token)
                .body(wait.to_string());
            if matches!(app.try_send(request).await, Ok((200, _))) {
                timeouts.push(path);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        outages.push(tokio::task::block_in_place(|| {
            kill_one_master(&mut cluster, round)
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let ledger = running.await.unwrap();
    let (waiting_lost, saved_lost, notified_lost) = lost(&app, &receiver, &ledger).await;
    // One snapshot of the receiver per check (it holds every delivery of the load).
    let delivered = || -> HashSet<String> { receiver.all().into_iter().map(|r| r.path).collect() };
    let expired = eventually(Duration::from_secs(30), || {
        let got = delivered();
        timeouts.iter().all(|p| got.contains(p))
    })
    .await;
    let completed = eventually(Duration::from_secs(60), || {
        let done = endpoint.flow.done.lock().unwrap();
        runs.iter().all(|r| done.contains(r))
    })
    .await;
    let acked = ledger.waiting.len() + ledger.saved.len() + ledger.notified.len();
    let got = delivered();
    let missing_timeouts: Vec<&String> = timeouts.iter().filter(|p| !got.contains(*p)).collect();
    let unfinished: Vec<&String> = {
        let done = endpoint.flow.done.lock().unwrap();
        runs.iter().filter(|r| !done.contains(*r)).collect()
    };
    println!(
        "chaos: {kills} master kills (outages {outages:?}); acknowledged {acked} writes, lost {}; \
         {} requests refused, {} without an answer within 5 s; {} timeouts, {} not delivered; \
         {} runs, {} not completed",
        waiting_lost.len() + saved_lost.len() + notified_lost.len(),
        ledger.failures.len(),
        ledger.stalled.len(),
        timeouts.len(),
        missing_timeouts.len(),
        runs.len(),
        unfinished.len(),
    );
    assert!(acked > 100, "the load ran: {acked} acknowledged");
    assert!(
        waiting_lost.is_empty() && saved_lost.is_empty() && notified_lost.is_empty(),
        "acknowledged writes lost: {} waits, {} saved, {} notified",
        waiting_lost.len(),
        saved_lost.len(),
        notified_lost.len()
    );
    assert!(
        ledger.stalled.is_empty(),
        "{} requests got no answer within 5 s",
        ledger.stalled.len()
    );
    assert!(expired, "timeouts never delivered: {missing_timeouts:?}");
    assert!(completed, "runs not completed: {unfinished:?}");
    assert!(runs.len() >= kills * 4, "runs were started: {}", runs.len());
    Arc::try_unwrap(app).ok().unwrap().stop().await;
}
