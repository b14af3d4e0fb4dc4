//! Fairness: a tenant whose endpoint hangs holds at most `delivery.tenant_concurrency`
//! of a worker's attempts, so another tenant's deliveries keep arriving.

use std::time::Duration;

use herald::app::Role;
use serde_json::json;

use crate::support::{eventually, test_settings, Receiver, RedisServer, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_whose_endpoint_hangs_does_not_stall_another() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.delivery.concurrency = 4;
    settings.delivery.tenant_concurrency = 2;
    settings.delivery.request_timeout_secs = 10;
    let app = TestApp::start(settings).await;
    let other = app.tenant_token("other").await;
    let receiver = Receiver::start().await;
    // Tenant acme's endpoint answers only after 4 s; without the per-tenant bound its
    // deliveries would fill all 4 slots of the worker for that long.
    let hang = Duration::from_secs(4);
    receiver.script_slow("/slow", &[200], hang);

    for i in 0..4 {
        let event = format!("slow-{i}");
        assert_eq!(
            app.wait(&event, json!({"url": receiver.url(&format!("/slow/{i}"))}))
                .await
                .0,
            200
        );
        assert_eq!(app.notify(&event, "a").await.0, 201);
    }
    assert!(
        eventually(Duration::from_secs(5), || receiver.all().len() >= 2).await,
        "acme's first deliveries started"
    );
    for i in 0..10 {
        let event = format!("fast-{i}");
        let url = receiver.url(&format!("/fast/{i}"));
        let (status, _) = app
            .post(
                &format!("/v2/wait/{event}"),
                &other,
                json!({ "url": url }).to_string(),
            )
            .await;
        assert_eq!(status, 200);
        let (status, _) = app.post(&format!("/v2/notify/{event}"), &other, "b").await;
        assert_eq!(status, 201);
    }
    let fast = |r: &Receiver| {
        r.all()
            .iter()
            .filter(|r| r.path.starts_with("/fast/"))
            .count()
    };
    let slow = |r: &Receiver| {
        r.all()
            .iter()
            .filter(|r| r.path.starts_with("/slow/"))
            .count()
    };
    assert!(
        eventually(Duration::from_secs(3), || fast(&receiver) == 10).await,
        "the other tenant's 10 deliveries arrive while acme's hang (got {})",
        fast(&receiver)
    );
    assert_eq!(
        receiver.answered("/slow"),
        0,
        "all of that happened while acme's first attempts still hung"
    );
    assert_eq!(slow(&receiver), 2, "acme holds at most 2 attempts at once");
    // acme's deferred deliveries are not lost: all 4 arrive, each once.
    assert!(
        eventually(Duration::from_secs(30), || receiver.answered("/slow") == 4).await,
        "acme's deliveries all completed (answered {})",
        receiver.answered("/slow")
    );
    let mut paths: Vec<String> = receiver
        .all()
        .iter()
        .filter(|r| r.path.starts_with("/slow/"))
        .map(|r| r.path.clone())
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        (0..4).map(|i| format!("/slow/{i}")).collect::<Vec<_>>()
    );
    for r in receiver
        .all()
        .iter()
        .filter(|r| r.path.starts_with("/slow/"))
    {
        assert_eq!(
            r.header("upstash-retried"),
            Some("0"),
            "a deferral is not an attempt"
        );
    }
    app.stop().await;
}

/// Deliveries a worker read but could not start yet (every attempt slot held by tenants
/// whose receivers hang) are not taken over by another worker as if their worker had died:
/// the healthy tenant's deliveries each arrive exactly once and none is dead-lettered as
/// poison.
///
/// Each worker has one slot and eight partition readers, so an entry read can wait behind
/// several hung attempts. CI runs a short variant (1 s request timeout, 2 s reclaim idle
/// time); `HERALD_FAULT_LONG=1` runs the production timeouts (30 s requests, 60 s reclaim
/// idle time: about half an hour).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_deliveries_are_not_taken_over_while_hung_tenants_fill_every_slot() {
    let long = std::env::var("HERALD_FAULT_LONG").is_ok_and(|v| v == "1");
    let (request_timeout, reclaim_idle) = if long { (30, 60) } else { (1, 2) };
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    // More partitions (readers) than slots: an entry read waits behind other partitions'.
    settings.redis.partitions = 8;
    settings.delivery.concurrency = 1;
    settings.delivery.tenant_concurrency = 1;
    settings.delivery.request_timeout_secs = request_timeout;
    settings.delivery.reclaim_idle_secs = reclaim_idle;
    // A second hand-out of a delivery is already poison: a take-over of a delivery that was
    // only queued shows up as a dead letter, not just as a duplicate.
    settings.delivery.max_deliveries = 2;
    // The hung tenants' deliveries come back at once, again and again, and never run out.
    settings.delivery.max_retries = 1_000;
    settings.delivery.max_backoff_secs = 1;
    let app = TestApp::start(settings).await;
    // Two workers (two consumers of the same group).
    let second = app.replica(Role::Worker).await;
    let receiver = Receiver::start().await;
    receiver.script_slow("/hang/", &[200], Duration::from_secs(3600));

    let wait_and_notify = |token: String, path: String, event: String| {
        let app = &app;
        let url = receiver.url(&path);
        async move {
            let (status, body) = app
                .post(
                    &format!("/v2/wait/{event}"),
                    &token,
                    json!({ "url": url }).to_string(),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            let (status, body) = app.post(&format!("/v2/notify/{event}"), &token, "x").await;
            assert_eq!(status, 201, "{body}");
        }
    };
    // Four tenants whose receivers never answer: they hold the slot of both workers, and a
    // batch read holds more of their deliveries than there are slots.
    for t in 0..4 {
        let token = app.tenant_token(&format!("hung{t}")).await;
        for i in 0..8 {
            wait_and_notify(token.clone(), format!("/hang/{t}/{i}"), format!("h{t}-{i}")).await;
        }
    }
    assert!(
        eventually(Duration::from_secs(10), || receiver.all().len() >= 2).await,
        "the hung tenants' attempts fill both workers"
    );
    let good = app.tenant_token("good").await;
    let n = 12;
    for i in 0..n {
        wait_and_notify(good.clone(), format!("/ok/{i}"), format!("ok-{i}")).await;
    }
    let ok_paths = |r: &Receiver| {
        r.all()
            .into_iter()
            .filter(|r| r.path.starts_with("/ok/"))
            .map(|r| {
                let message = r.header("upstash-message-id").unwrap_or("").to_owned();
                (r.path, message)
            })
            .collect::<Vec<_>>()
    };
    let distinct = |r: &Receiver| {
        ok_paths(r)
            .into_iter()
            .map(|(p, _)| p)
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    let limit = Duration::from_secs(if long { 1800 } else { 60 });
    assert!(
        eventually(limit, || distinct(&receiver) == n).await,
        "every healthy delivery arrives (got {} of {n})",
        distinct(&receiver)
    );
    // A delivery taken over from a worker that still holds it arrives a second time once
    // that worker gets a slot: keep the hung tenants filling the slots for three reclaim
    // periods (no condition to await: nothing must happen).
    tokio::time::sleep(Duration::from_secs(3 * reclaim_idle)).await;
    let received = ok_paths(&receiver);
    let mut per_message: std::collections::HashMap<String, usize> = Default::default();
    for (_, message) in &received {
        *per_message.entry(message.clone()).or_default() += 1;
    }
    let twice: Vec<_> = per_message.iter().filter(|(_, c)| **c > 1).collect();
    let (status, dlq) = app.get("/v2/dlq", &good).await;
    assert_eq!(status, 200, "{dlq}");
    let dead = dlq["messages"].as_array().map_or(0, Vec::len);
    assert!(
        twice.is_empty() && received.len() == n && dead == 0,
        "each healthy delivery arrives exactly once and none is dead-lettered as poison; \
         {} requests, {dead} dead letters, duplicated: {twice:?}",
        received.len()
    );
    second.stop().await;
    app.stop().await;
}
