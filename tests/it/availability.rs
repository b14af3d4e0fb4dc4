//! Redis down: 503 with `{"error"}`, never a panic; recovery when it is back; the
//! partition count is guarded.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{test_settings, RedisServer, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_503_and_recovers() {
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut settings = test_settings(&redis.url());
    settings.redis.response_timeout_ms = 500;
    settings.redis.connect_timeout_ms = 300;
    let app = TestApp::start(settings).await;
    assert_eq!(
        app.wait("e", json!({"url": "http://127.0.0.1:9/x"}))
            .await
            .0,
        200
    );

    // Paused (SIGSTOP): requests fail fast with 503 within the response timeout.
    redis.signal("STOP");
    let started = Instant::now();
    let (status, body) = app.notify("e", "x").await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("unavailable"));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(app.get("/readyz", "").await.0, 503);
    redis.signal("CONT");

    // Killed: 503; restarted from its AOF: the acknowledged waiter is still there.
    redis.kill();
    let (status, _) = app.wait("e2", json!({"url": "http://127.0.0.1:9/x"})).await;
    assert_eq!(status, 503);
    redis.restart();
    let recovered = crate::support::eventually_async(Duration::from_secs(10), || async {
        app.get("/readyz", "").await.0 == 200
    })
    .await;
    assert!(recovered, "ready again after redis is back");
    let waiters = app.waiters("e").await;
    assert_eq!(
        waiters.len(),
        1,
        "the acknowledged waiter survived the crash"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_partition_count_refuses_to_start() {
    let redis = RedisServer::start();
    let settings = test_settings(&redis.url());
    let app = TestApp::start(settings.clone()).await;
    app.stop().await;
    let mut other = settings;
    other.redis.partitions = 8;
    let err = herald::app::start(other, herald::app::Role::All)
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("partitions"), "{err:#}");
}
