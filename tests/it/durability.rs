//! `redis.wait_replicas`: an acknowledged write is on a replica too.
//!
//! - A replica that stops acknowledging (SIGSTOP) makes writes answer 503 within the
//!   `WAIT` timeout, never 2xx; after SIGCONT a retry with the same Idempotency-Key is
//!   acknowledged and the write is on the replica.
//! - The forced failovers that lose acknowledged writes without the setting (forced
//!   Sentinel failover of a live master, cluster takeover; docs/operating.md) lose none
//!   with it (CI runs them short).
//!
//! The `#[ignore]`d `measure_*` tests print the figures of docs/operating.md's table with
//! the setting on: `cargo test --test it durability::measure_ -- --ignored --nocapture`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::cluster::RedisCluster;
use crate::support::redis::{poll_until, RedisProcess};
use crate::support::sentinel::{SentinelSetup, MASTER_NAME};
use crate::support::{test_settings, Receiver, TestApp};
use crate::topology::{cluster_settings, measure_killed_master, Measured};

const WAIT_TIMEOUT_MS: u64 = 300;

fn with_wait(mut settings: herald::config::Settings, replicas: u32) -> herald::config::Settings {
    settings.redis.wait_replicas = replicas;
    settings.redis.wait_timeout_ms = WAIT_TIMEOUT_MS;
    settings
}

/// Stops (SIGSTOP) a process until dropped (SIGCONT), so a failing test leaves no
/// stopped server behind.
struct Stopped<'a>(&'a RedisProcess);

impl<'a> Stopped<'a> {
    fn stop(p: &'a RedisProcess) -> Self {
        p.signal("STOP");
        Stopped(p)
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        self.0.signal("CONT");
    }
}

fn replica_link_up(replica: &RedisProcess) -> bool {
    replica
        .info("replication")
        .get("master_link_status")
        .is_some_and(|s| s == "up")
}

/// Keys of the replica holding `pattern` (read on the replica itself).
fn replica_keys(replica: &RedisProcess, pattern: &str) -> Vec<String> {
    redis::cmd("KEYS")
        .arg(pattern)
        .query(&mut replica.client())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_stops_acknowledging_makes_writes_answer_503_within_the_timeout() {
    let master = RedisProcess::start(&["--appendonly", "no"]);
    let replica = RedisProcess::start(&[
        "--appendonly",
        "no",
        "--replicaof",
        "127.0.0.1",
        &master.port.to_string(),
    ]);
    assert!(
        poll_until(Duration::from_secs(20), || replica_link_up(&replica)),
        "the replica synced"
    );
    let mut settings = with_wait(test_settings(&master.url()), 1);
    settings.redis.response_timeout_ms = 2000;
    let app = TestApp::start(settings).await;
    let receiver = Receiver::start().await;

    // With the replica up, a write is acknowledged and is on the replica already.
    let (status, body) = app
        .wait("before", json!({"url": receiver.url("/before")}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        replica_keys(&replica, "*:ev:acme:before").len(),
        1,
        "an acknowledged wait is on the replica when it is acknowledged"
    );

    let stopped = Stopped::stop(&replica);
    let wait_request = || {
        app.http
            .post(app.url("/v2/wait/during"))
            .bearer_auth(&app.token)
            .header("Idempotency-Key", "k-during")
            .body(json!({"url": receiver.url("/during")}).to_string())
    };
    let started = Instant::now();
    let (status, body) = app.send(wait_request()).await;
    let took = started.elapsed();
    assert_eq!(status, 503, "{body}");
    let message = body["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("may or may not persist") && message.contains("Idempotency-Key"),
        "{message}"
    );
    assert!(
        took < Duration::from_millis(WAIT_TIMEOUT_MS + 1500),
        "answered within the WAIT timeout (took {took:?})"
    );
    // Every kind of API write is refused while the replica does not confirm.
    let (status, body) = app.notify("before", "paid").await;
    assert_eq!(status, 503, "broadcast notify: {body}");
    let (status, body) = app
        .post("/v2/notify/wfr_1/approved", &app.token, "yes")
        .await;
    assert_eq!(status, 503, "lookback notify: {body}");
    drop(stopped);

    // The replica is back: the client's retry (same Idempotency-Key) is acknowledged and
    // is on the replica; the refused notify left the first waiter (or delivered it).
    assert!(
        poll_until(Duration::from_secs(20), || replica_link_up(&replica)),
        "the replica resumed"
    );
    let (status, body) = app.send(wait_request()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        replica_keys(&replica, "*:ev:acme:during").len(),
        1,
        "the retried wait is on the replica"
    );
    let (status, body) = app
        .post("/v2/notify/wfr_2/approved", &app.token, "yes")
        .await;
    assert_eq!(status, 201, "{body}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_timeout_not_below_the_response_timeout_is_refused() {
    let mut settings = with_wait(herald::config::Settings::defaults(), 1);
    settings.redis.wait_timeout_ms = settings.redis.response_timeout_ms;
    let error = settings.validate().unwrap_err().to_string();
    assert!(error.contains("redis.wait_timeout_ms"), "{error}");
    settings.redis.wait_replicas = 0;
    assert!(settings.validate().is_ok(), "ignored when off");
}

/// `SENTINEL FAILOVER` of a live master under load (docs/operating.md: 158 of 1,602
/// acknowledged writes lost without `wait_replicas`).
async fn sentinel_forced_failover(replicas: u32) -> Measured {
    sentinel_forced_failover_of(1, replicas).await
}

/// The same with `servers` replicas of the master.
async fn sentinel_forced_failover_of(servers: usize, replicas: u32) -> Measured {
    let mut setup = SentinelSetup::start_with_replicas(servers);
    let mut settings = with_wait(test_settings(&setup.url()), replicas);
    settings.redis.response_timeout_ms = 1000;
    settings.delivery.concurrency = 128;
    let app = Arc::new(TestApp::start(settings).await);
    let receiver = Receiver::start().await;
    measure_killed_master(
        &format!(
            "sentinel, SENTINEL FAILOVER of a live master, {servers} replica(s), wait_replicas {replicas}"
        ),
        app,
        &receiver,
        &mut setup,
        |s| {
            let _: () = redis::cmd("SENTINEL")
                .arg("FAILOVER")
                .arg(MASTER_NAME)
                .query(&mut s.sentinels[0].client())
                .unwrap();
        },
        |s| {
            // SENTINEL FAILOVER answers before the switch: first see it happen (the
            // first server was the master).
            let switched = poll_until(Duration::from_secs(30), || {
                s.master_port() != s.servers[0].port
            });
            assert!(switched, "the sentinels promoted the replica");
            let settled = poll_until(Duration::from_secs(30), || {
                s.servers
                    .iter()
                    .filter(|p| {
                        p.info("replication").get("role").map(String::as_str) == Some("master")
                    })
                    .count()
                    == 1
                    && s.servers
                        .iter()
                        .all(|p| p.port == s.master_port() || replica_link_up(p))
            });
            assert!(settled, "one master, its replicas in sync");
        },
    )
    .await
}

/// `CLUSTER FAILOVER TAKEOVER` on a replica of a live master under load.
async fn cluster_takeover(replicas: u32) -> Measured {
    let mut cluster = RedisCluster::start(3, 1, 1000);
    let app = Arc::new(TestApp::start(with_wait(cluster_settings(&cluster), replicas)).await);
    let receiver = Receiver::start().await;
    measure_killed_master(
        &format!("cluster, CLUSTER FAILOVER TAKEOVER, wait_replicas {replicas}"),
        app,
        &receiver,
        &mut cluster,
        |c| {
            let master = c.masters()[0].port;
            let replica = c.replicas_of(master)[0];
            let _: () = redis::cmd("CLUSTER")
                .arg("FAILOVER")
                .arg("TAKEOVER")
                .query(&mut c.node(replica).client())
                .unwrap();
        },
        |c| {
            c.await_healthy(Duration::from_secs(30));
            // The old master follows the new one again (so writes are confirmed again).
            let followed = poll_until(Duration::from_secs(30), || {
                c.masters().iter().all(|m| {
                    m.info("replication")
                        .get("slave0")
                        .is_some_and(|s| s.contains("state=online"))
                })
            });
            assert!(followed, "every master has a replica in sync");
        },
    )
    .await
}

fn assert_nothing_lost(m: &Measured) {
    assert!(m.acked > 100, "the load ran: {} acknowledged", m.acked);
    assert_eq!(m.lost, 0, "acknowledged writes lost (of {})", m.acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_sentinel_failover_loses_no_acknowledged_write_with_wait_replicas() {
    assert_nothing_lost(&sentinel_forced_failover(1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_takeover_loses_no_acknowledged_write_with_wait_replicas() {
    assert_nothing_lost(&cluster_takeover(1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: a forced Sentinel failover, without then with wait_replicas"]
async fn measure_sentinel_forced_failover_with_and_without_wait_replicas() {
    for replicas in [0, 1] {
        sentinel_forced_failover(replicas).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: a forced Sentinel failover with two replicas and wait_replicas"]
async fn measure_sentinel_forced_failover_with_two_replicas() {
    sentinel_forced_failover_of(2, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: a cluster takeover, without then with wait_replicas"]
async fn measure_cluster_takeover_with_and_without_wait_replicas() {
    for replicas in [0, 1] {
        cluster_takeover(replicas).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: a killed (SIGKILL) Sentinel-monitored master with wait_replicas"]
async fn measure_sentinel_killed_master_with_wait_replicas() {
    // Two replicas: with one, the promoted master would have none left to confirm.
    let mut setup = SentinelSetup::start_with_replicas(2);
    let mut settings = with_wait(test_settings(&setup.url()), 1);
    settings.redis.response_timeout_ms = 1000;
    settings.delivery.concurrency = 128;
    let app = Arc::new(TestApp::start(settings).await);
    let receiver = Receiver::start().await;
    measure_killed_master(
        "sentinel, master killed, wait_replicas 1",
        app,
        &receiver,
        &mut setup,
        crate::topology::kill_sentinel_master,
        crate::topology::await_sentinel_promotion,
    )
    .await;
}

/// A cluster master killed (SIGKILL) under load with `wait_replicas` 1 and two replicas
/// per master (with one, the promoted master would have none left until the old one
/// rejoins).
async fn cluster_killed_master(replicas: u32) -> Measured {
    let mut cluster = RedisCluster::start(3, 2, 1000);
    let app = Arc::new(TestApp::start(with_wait(cluster_settings(&cluster), replicas)).await);
    let receiver = Receiver::start().await;
    measure_killed_master(
        &format!("cluster, master killed, two replicas per master, wait_replicas {replicas}"),
        app,
        &receiver,
        &mut cluster,
        |c| {
            let master = c.masters()[0].port;
            c.node_mut(master).kill();
        },
        |c| {
            let promoted = poll_until(Duration::from_secs(30), || c.masters().len() == 3);
            assert!(promoted, "a replica took over");
            c.await_healthy(Duration::from_secs(30));
            let followed = poll_until(Duration::from_secs(30), || {
                c.masters().iter().all(|m| {
                    m.info("replication")
                        .get("slave0")
                        .is_some_and(|s| s.contains("state=online"))
                })
            });
            assert!(followed, "the promoted master has a replica in sync");
        },
    )
    .await
}

/// Was the known issue: with the setting on, the cluster connection stopped answering
/// after the failover (every `WAIT` on the shared connection held it). Now nothing
/// acknowledged is lost and no request goes unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_cluster_master_loses_no_acknowledged_write_and_nothing_hangs_with_wait_replicas()
{
    let m = cluster_killed_master(1).await;
    assert_nothing_lost(&m);
    assert_eq!(m.stalled, 0, "requests without an answer within 5 s");
    assert!(
        m.refused_until < Duration::from_secs(10),
        "{} requests refused, the last {:?} after the kill",
        m.refused,
        m.refused_until
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: a killed (SIGKILL) cluster master, without then with wait_replicas"]
async fn measure_cluster_killed_master_with_and_without_wait_replicas() {
    for replicas in [0, 1] {
        cluster_killed_master(replicas).await;
    }
}
