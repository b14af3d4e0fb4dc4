//! Once Redis is back, no request fails: Redis (standalone), the master (Sentinel) or a
//! cluster master is killed with SIGKILL and brought back; once it answers again, every
//! kind of request succeeds on its first try (none meets a connection Redis closed), and
//! deliveries and timeouts resume within a bound.
//!
//! The topology is the suite's (`TEST_REDIS_TOPOLOGY`): standalone restarts the server on
//! the same port from its AOF; Sentinel kills the master, waits until the sentinels have
//! promoted the replica, and restarts the old master (it rejoins as a replica); Cluster
//! kills a master, waits until its replica has taken over, and restarts it.

use std::time::{Duration, Instant};

use herald::config::RedisMode;
use serde_json::json;

use crate::support::cluster::Role;
use crate::support::redis::{poll_until, suite_topology};
use crate::support::{eventually, test_settings, Receiver, RedisServer, TestApp};

/// Requests of each route kind sent after the recovery.
const ROUNDS: usize = 100;

/// How long after Redis answers again a notified delivery and a due timeout may take to
/// arrive (the delivery readers and the scheduler reconnect in the background).
const RESUME_BOUND: Duration = Duration::from_secs(3);

/// Kills the Redis the app depends on (SIGKILL) and brings it back; returns once the
/// topology answers again (standalone: PING; Sentinel: the sentinels name a master that
/// answers and the old one is back; Cluster: every slot is served and the node is back).
fn kill_and_restore(redis: &mut RedisServer) {
    match redis {
        RedisServer::Standalone(server) => {
            server.kill();
            server.restart();
        }
        RedisServer::Sentinel(setup) => {
            let old = setup.master_port();
            setup.server_mut(old).kill();
            let switched = poll_until(Duration::from_secs(30), || {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| setup.master_port()))
                    .is_ok_and(|port| port != old)
            });
            assert!(switched, "the sentinels promoted the replica");
            setup.server_mut(old).restart();
            let demoted = poll_until(Duration::from_secs(30), || {
                setup
                    .servers
                    .iter()
                    .find(|s| s.port == old)
                    .unwrap()
                    .info("replication")
                    .get("role")
                    .map(String::as_str)
                    == Some("slave")
            });
            assert!(demoted, "the old master rejoined as a replica");
        }
        RedisServer::Cluster(cluster) => {
            let victim = cluster.masters()[0].port;
            let replica = cluster.replicas_of(victim)[0];
            cluster.node_mut(victim).kill();
            let promoted = poll_until(Duration::from_secs(30), || {
                cluster.role(cluster.node(replica)) == Role::Master
            });
            assert!(promoted, "the replica of the killed master took over");
            cluster.node_mut(victim).restart();
            cluster.await_healthy(Duration::from_secs(30));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_is_back_every_request_succeeds_first_time() {
    let topology = suite_topology();
    let mut redis = match topology {
        RedisMode::Standalone => {
            RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
        }
        _ => RedisServer::start(),
    };
    let mut settings = test_settings(&redis.url());
    settings.redis.response_timeout_ms = 2000;
    settings.redis.connect_timeout_ms = 500;
    let admin = settings.server.admin_token.clone();
    let mut app = TestApp::start(settings).await;
    app.http = crate::support::bounded_http_client(Duration::from_secs(4));
    let receiver = Receiver::start().await;

    // Every pooled connection and every reader has been used before the crash.
    for i in 0..20 {
        let event = format!("warm-{i}");
        let (status, body) = app
            .wait(&event, json!({"url": receiver.url("/warm")}))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(app.notify(&event, "w").await.0, 201);
    }
    receiver.expect("/warm", 20).await;

    eprintln!("killing");
    kill_and_restore(&mut redis);
    eprintln!("restored");
    let back = Instant::now();

    // Every request from now on must succeed on its first try: /readyz first, then a
    // notified waiter and one that times out (deliveries and timeouts resume within
    // RESUME_BOUND), then every route kind ROUNDS times.
    let mut failed: Vec<String> = Vec::new();
    let mut check = |what: &str, (status, body): (u16, serde_json::Value), ok: u16| {
        if status != ok {
            failed.push(format!("{what}: {status} {body}"));
        }
    };
    check("readyz", app.get("/readyz", "").await, 200);
    let wait = |event: &'static str, timeout: &'static str| {
        let url = receiver.url(&format!("/{event}"));
        let app = &app;
        async move {
            app.wait(event, json!({"url": url, "timeout": timeout}))
                .await
        }
    };
    check("wait", wait("resume", "1h").await, 200);
    check("broadcast notify", app.notify("resume", "r").await, 201);
    check("wait", wait("expire", "1s").await, 200);
    let resumed = eventually(RESUME_BOUND, || !receiver.at("/resume").is_empty()).await;
    let delivered_after = back.elapsed();
    let expired = eventually(Duration::from_secs(1) + RESUME_BOUND, || {
        !receiver.at("/expire").is_empty()
    })
    .await;
    let expired_after = back.elapsed();

    for i in 0..ROUNDS {
        let event = format!("after-{i}");
        let url = receiver.url("/after");
        check(
            "wait",
            app.wait(&event, json!({"url": url, "timeout": "1h"})).await,
            200,
        );
        check("broadcast notify", app.notify(&event, "x").await, 201);
        let lookback = format!("/v2/notify/run-{i}/lookback");
        check(
            "lookback notify",
            app.post(&lookback, &app.token, "y").await,
            201,
        );
        check(
            "waiters",
            app.get("/v2/waiters/after-0", &app.token).await,
            200,
        );
        let history = app.get("/v2/events/after-0/history", &app.token).await;
        check("history", history, 200);
        check("dlq", app.get("/v2/dlq", &app.token).await, 200);
        check("admin", app.get("/admin/tenants", &admin).await, 200);
        check("readyz", app.get("/readyz", "").await, 200);
    }
    println!(
        "{topology:?}: redis killed and back; requests failed after recovery: {} of {}; \
         first delivery {delivered_after:?} and first timeout {expired_after:?} after it was back",
        failed.len(),
        ROUNDS * 8 + 4,
    );
    assert!(
        failed.is_empty(),
        "{} requests failed after Redis was back: {:?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
    assert!(resumed, "a notified delivery within {RESUME_BOUND:?}");
    assert!(expired, "a due timeout within 1 s + {RESUME_BOUND:?}");
    receiver.expect("/after", ROUNDS).await;
    app.stop().await;
}
