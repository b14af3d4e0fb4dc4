//! The tenant's stored-bytes account (`limits.stored_bytes`, lua/README.md "Stored
//! bytes"): after a mixed workload it agrees with what Redis reports for the tenant's
//! keys (`MEMORY USAGE`, within the tolerance docs/limits.md states), and it returns to
//! exactly zero once everything has been delivered, deleted or has expired: no drift.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{eventually_async, test_settings, Receiver, RedisServer, TestApp};

/// The tenant's data keys (not its account, counters or rate buckets) and the sum of
/// their MEMORY USAGE.
fn memory_of(redis: &RedisServer, tenant: &str) -> (Vec<String>, u64) {
    const KINDS: [&str; 10] = [
        "ev:",
        "evrun:",
        "saved:",
        "run:",
        "cancelled:",
        "op:",
        "history:",
        "dlq:",
        "wf:",
        "wfsteps:",
    ];
    let data: Vec<String> = redis
        .keys(&format!("*:{tenant}*"))
        .into_iter()
        .filter(|k| {
            KINDS
                .iter()
                .any(|kind| k.contains(&format!("}}:{kind}{tenant}")))
        })
        .collect();
    let bytes = redis.memory_usage(&data);
    (data, bytes)
}

async fn post_json(
    app: &TestApp,
    path: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> (u16, Value) {
    let mut request = app
        .http
        .post(app.url(path))
        .bearer_auth(&app.token)
        .header("content-type", "application/json")
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    app.send(request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_matches_memory_usage_and_returns_to_zero() {
    let redis = RedisServer::start();
    let receiver = Receiver::start().await;
    receiver.script("/fails", &[500; 50], &[]);
    let mut settings = test_settings(&redis.url());
    // Everything that leaves by TTL leaves within seconds.
    settings.history.ttl_secs = 3;
    settings.waiters.saved_ttl_secs = 3;
    settings.waiters.idempotency_ttl_secs = 3;
    settings.delivery.dead_letter_retention_secs = 2;
    settings.delivery.max_retries = 0;
    settings.workflow.run_ttl_secs = 4;
    settings.workflow.finished_ttl_secs = 2;
    let app = TestApp::start(settings).await;
    let pad = |n: usize| "h".repeat(n);

    // Plain waiters of several sizes: some notified, some timing out, some failing.
    for i in 0..30 {
        let url = if i % 10 == 0 {
            receiver.url("/fails")
        } else {
            receiver.url("/ok")
        };
        let timeout = if i % 3 == 0 { "2s" } else { "1h" };
        let (s, b) = post_json(
            &app,
            &format!("/v2/wait/plain-{}", i % 6),
            &[],
            json!({"url": url, "timeout": timeout, "headers": {"x-pad": [pad(100 * i)]}}),
        )
        .await;
        assert_eq!(s, 200, "{b}");
    }
    // Repeatable waits (idempotency records) and run waiters.
    for i in 0..10 {
        let key = format!("k-{i}");
        let (s, b) = post_json(
            &app,
            &format!("/v2/wait/idem-{i}"),
            &[("Idempotency-Key", &key)],
            json!({"url": receiver.url("/ok"), "timeout": "1h"}),
        )
        .await;
        assert_eq!(s, 200, "{b}");
        let run = format!("wfr_{}", i % 4);
        let (s, b) = post_json(&app, &format!("/v2/wait/run-ev-{i}"), &[("Upstash-Workflow-RunId", &run)],
            json!({"url": receiver.url("/ok"), "timeout": "1h", "step": {"stepId": i, "stepName": format!("s{i}"), "stepType": "Wait"}})).await;
        assert_eq!(s, 200, "{b}");
    }
    // Lookback notifications saved for runs nobody of which waits, some consumed.
    for i in 0..12 {
        let (s, b) = app
            .post(
                &format!("/v2/notify/wfr_s{}/saved-{}", i % 3, i % 4),
                &app.token,
                pad(500 + 50 * i),
            )
            .await;
        assert_eq!(s, 201, "{b}");
    }
    let (s, b) = post_json(
        &app,
        "/v2/wait/saved-0",
        &[("Upstash-Workflow-RunId", "wfr_s0")],
        json!({"url": receiver.url("/ok"), "timeout": "1h"}),
    )
    .await;
    assert_eq!((s, b["status"].as_str()), (200, Some("notified")), "{b}");
    // Broadcasts: to waiters, and to nobody (history only).
    for i in 0..6 {
        let (s, _) = app
            .post(&format!("/v2/notify/plain-{i}"), &app.token, pad(300))
            .await;
        assert_eq!(s, 201);
        let (s, _) = app
            .post(&format!("/v2/notify/nobody-{i}"), &app.token, "x")
            .await;
        assert_eq!(s, 201);
    }
    // A cancelled run (tombstone; its waiters and saved notification go).
    let (s, b) = app
        .send(
            app.http
                .delete(app.url("/v2/workflows/runs/wfr_1"))
                .bearer_auth(&app.token),
        )
        .await;
    assert!(s == 200 || s == 202, "{s} {b}");
    // Workflow runs left running (record and history until their TTL).
    for i in 0..3 {
        let body = json!([{ "destination": receiver.url("/ok"), "headers": {
            "upstash-workflow-init": "true", "upstash-workflow-runid": format!("wfr_w{i}"),
            "upstash-workflow-url": receiver.url("/ok"), "content-type": "application/json"},
            "body": pad(2000) }]);
        let (s, b) = app.post("/v2/batch", &app.token, body.to_string()).await;
        assert_eq!(s, 200, "{b}");
    }
    // Dead letters: the /fails waiters notified above (plain-0's).
    let dead = eventually_async(Duration::from_secs(20), || async {
        app.get("/v2/dlq", &app.token).await.1["messages"]
            .as_array()
            .is_some_and(|m| !m.is_empty())
    })
    .await;
    assert!(dead, "a dead letter was written");

    let account = app.stored_bytes("acme").await;
    let (keys, memory) = memory_of(&redis, "acme");
    let ratio = account as f64 / memory as f64;
    println!("stored-bytes account {account} B; MEMORY USAGE of the tenant's {} keys {memory} B; ratio {ratio:.2}", keys.len());
    assert!(
        (0.5..=2.0).contains(&ratio),
        "account {account} vs MEMORY USAGE {memory} ({ratio:.2})"
    );

    // Everything leaves: the waiters are notified or time out, the dead letters are
    // deleted, and the rest expires; the account comes back to exactly zero.
    for i in 0..10 {
        let (s, _) = app
            .post(&format!("/v2/notify/idem-{i}"), &app.token, "x")
            .await;
        assert_eq!(s, 201);
        let (s, _) = app
            .post(&format!("/v2/notify/run-ev-{i}"), &app.token, "x")
            .await;
        assert_eq!(s, 201);
    }
    for i in 0..6 {
        app.post(&format!("/v2/notify/plain-{i}"), &app.token, "x")
            .await;
    }
    // A run's set of events (kept for cancel an hour past its waiters' deadlines) goes
    // with a cancel; the tombstone then expires.
    for run in ["wfr_0", "wfr_2", "wfr_3"] {
        let (s, b) = app
            .send(
                app.http
                    .delete(app.url(&format!("/v2/workflows/runs/{run}")))
                    .bearer_auth(&app.token),
            )
            .await;
        assert!(s == 200 || s == 202, "{s} {b}");
    }
    let (_, letters) = app.get("/v2/dlq", &app.token).await;
    for letter in letters["messages"].as_array().unwrap() {
        let id = letter["dlqId"].as_str().unwrap();
        let (s, _) = app
            .send(
                app.http
                    .delete(app.url(&format!("/v2/dlq/{id}")))
                    .bearer_auth(&app.token),
            )
            .await;
        assert!(s == 200 || s == 404, "{s}");
    }
    let zero = eventually_async(Duration::from_secs(30), || async {
        app.stored_bytes("acme").await == 0
    })
    .await;
    let last = app.stored_bytes("acme").await;
    let (left, memory) = memory_of(&redis, "acme");
    assert!(
        zero,
        "the account is {last} bytes after everything left; keys left: {left:?} ({memory} B)"
    );
    assert_eq!(
        left,
        Vec::<String>::new(),
        "every data key of the tenant is gone"
    );
    println!(
        "after everything left: account 0 B; tenant data keys left: {} ({memory} B)",
        left.len()
    );
    app.stop().await;
}

/// Processes of a version without accounts register and remove waiters without keeping
/// them (a rolling upgrade): `herald migrate` counts the waiters again.
#[tokio::test]
async fn migrate_recounts_the_waiters_of_every_account() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    for i in 0..5 {
        let (s, b) = post_json(&app, &format!("/v2/wait/kept-{i}"), &[],
            json!({"url": "http://127.0.0.1:9/", "timeout": "1h", "headers": {"x": ["y".repeat(100 * i)]}})).await;
        assert_eq!(s, 200, "{b}");
    }
    let registered = app.stored_bytes("acme").await;
    // As an older process would: one waiter removed, and its bytes never released; the
    // account of another partition lost.
    let mut conn = redis.client();
    let keys = redis.keys("*:ev:acme:kept-4");
    let removed: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(&keys[0])
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("DEL").arg(&keys[0]).query(&mut conn).unwrap();
    let accounts = redis.keys("*:usage:acme");
    let _: () = redis::cmd("HDEL")
        .arg(&accounts[0])
        .arg("L")
        .query(&mut conn)
        .unwrap();
    let state = &app.running.as_ref().unwrap().state;
    let done = herald::store::migrate::migrate(&mut state.redis.get(), &state.keys)
        .await
        .unwrap();
    let after = app.stored_bytes("acme").await;
    let (field, waiter) = &removed[0];
    let gone = herald::store::usage::waiter_bytes(
        &herald::domain::TenantName::parse("acme").unwrap(),
        &herald::domain::EventId::parse("kept-4").unwrap(),
        field,
        waiter,
    );
    println!(
        "recounted {} B of waiters: {registered} B before, {after} B after a {gone} B waiter left unreleased",
        done.waiter_bytes_recounted
    );
    assert_eq!(done.waiter_bytes_recounted, after);
    assert_eq!(after, registered - gone);
    app.stop().await;
}
