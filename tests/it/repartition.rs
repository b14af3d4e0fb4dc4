//! `herald repartition`: changing P moves waiters, saved notifications, tombstones and
//! retries to their new partitions; nothing acknowledged is lost, and Herald refuses to
//! start with the old P afterwards.

use std::time::Duration;

use serde_json::json;

use crate::support::{test_settings, Receiver, RedisServer, TestApp};

async fn wait_as_run(app: &TestApp, run: &str, event: &str, url: &str) -> (u16, serde_json::Value) {
    app.send(
        app.http
            .post(app.url(&format!("/v2/wait/{event}")))
            .bearer_auth(&app.token)
            .header("Upstash-Workflow-RunId", run)
            .body(json!({"url": url, "timeout": "1h"}).to_string()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_partition_count_keeps_every_waiter_saved_notification_and_retry() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.redis.partitions = 4;
    settings.delivery.backoff_factor = 0.2; // first retry after about 2.4 s
    let app = TestApp::start(settings.clone()).await;
    let receiver = Receiver::start().await;
    receiver.script("/retried", &[500, 200], &[]);
    for i in 0..40 {
        let (status, body) = app
            .wait(
                &format!("order-{i}"),
                json!({"url": receiver.url(&format!("/w/{i}")), "timeout": "1h"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    for i in 0..20 {
        let (status, _) = app
            .post(
                &format!("/v2/notify/wfr_{i}/approved"),
                &app.token,
                format!("saved-{i}"),
            )
            .await;
        assert_eq!(status, 201);
    }
    assert_eq!(
        wait_as_run(&app, "wfr_gone", "step", &receiver.url("/c"))
            .await
            .0,
        200
    );
    let (status, _) = app
        .send(
            app.http
                .delete(app.url("/v2/workflows/runs/wfr_gone"))
                .bearer_auth(&app.token),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        app.wait("retry-me", json!({"url": receiver.url("/retried")}))
            .await
            .0,
        200
    );
    app.notify("retry-me", "again").await;
    receiver.expect("/retried", 1).await; // failed once: now in the retry set
    app.stop().await;

    let pool = herald::store::RedisPool::open(&settings.redis).unwrap();
    let prefix = settings.redis.key_prefix.clone();
    // The worker read its streams a moment ago: refused.
    let refused = herald::store::repartition::repartition(
        &mut pool.get(),
        &prefix,
        7,
        Duration::from_secs(30),
    )
    .await;
    assert!(
        format!("{:?}", refused.err()).contains("worker"),
        "refused while a worker may run"
    );
    let moved =
        herald::store::repartition::repartition(&mut pool.get(), &prefix, 7, Duration::ZERO)
            .await
            .unwrap();
    assert!(moved.waiter_sets > 0 && moved.deadlines > 0, "{moved:?}");

    // The old P is refused now; the new one serves everything.
    let err = herald::app::start(settings.clone(), herald::app::Role::All)
        .await
        .err();
    assert!(format!("{err:?}").contains("partitions"), "{err:?}");
    let mut after = settings;
    after.redis.partitions = 7;
    let app = TestApp::start(after).await;
    // The tenant's waiter count (its active_waiters quota) follows its waiters.
    let waiting = || async {
        app.get("/admin/tenants/acme/usage", "test-admin-token")
            .await
            .1["activeWaiters"]
            .clone()
    };
    assert_eq!(waiting().await, 40);
    for i in 0..40 {
        assert_eq!(
            app.waiters(&format!("order-{i}")).await.len(),
            1,
            "order-{i}"
        );
    }
    for i in 0..20 {
        let (status, body) = wait_as_run(
            &app,
            &format!("wfr_{i}"),
            "approved",
            &receiver.url(&format!("/s/{i}")),
        )
        .await;
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some("notified")),
            "wfr_{i}: {body}"
        );
    }
    let (status, _) = wait_as_run(&app, "wfr_gone", "other-step", &receiver.url("/c")).await;
    assert_eq!(
        status, 409,
        "the cancelled run stays cancelled in every partition"
    );
    for i in 0..40 {
        let (status, body) = app.notify(&format!("order-{i}"), "paid").await;
        assert_eq!(status, 201);
        assert_eq!(body.as_array().unwrap().len(), 1);
    }
    for i in 0..40 {
        receiver.expect(&format!("/w/{i}"), 1).await;
    }
    assert_eq!(waiting().await, 0);
    for i in 0..20 {
        assert_eq!(
            receiver.expect(&format!("/s/{i}"), 1).await[0].body_text(),
            format!("saved-{i}")
        );
    }
    receiver.expect("/retried", 2).await; // the retry survived the move
    app.stop().await;
}
