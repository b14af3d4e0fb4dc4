//! Event history: registrations, notifies, every attempt with its status, dead letters
//! and timeouts of an event, readable per tenant for `history.ttl_secs`.

use std::time::Duration;

use herald::domain::{EventId, TenantName};
use serde_json::{json, Value};

use crate::support::{eventually_async, test_settings, Receiver, RedisServer, TestApp};

async fn history(app: &TestApp, token: &str, event: &str) -> Vec<Value> {
    let (status, body) = app.get(&format!("/v2/events/{event}/history"), token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["eventId"], event);
    body["entries"].as_array().cloned().unwrap()
}

fn outcomes(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e["outcome"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until the history's outcomes (newest first) are `expected`.
async fn expect_history(app: &TestApp, event: &str, expected: &[&str]) -> Vec<Value> {
    let mut last = Vec::new();
    let got = eventually_async(Duration::from_secs(15), || {
        let app = &app;
        async move { outcomes(&history(app, &app.token, event).await) == expected }
    })
    .await;
    if !got {
        last = history(app, &app.token, event).await;
    }
    assert!(got, "history of {event}: {last:#?}, expected {expected:?}");
    history(app, &app.token, event).await
}

#[tokio::test]
async fn a_notified_waiter_shows_every_attempt() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    let receiver = Receiver::start().await;
    receiver.script("/flaky", &[503, 200], &[]);
    let (status, waited) = app
        .send(
            app.http
                .post(app.url("/v2/wait/order-1"))
                .bearer_auth(&app.token)
                .header("Upstash-Workflow-RunId", "wfr_1")
                .body(json!({"url": receiver.url("/flaky")}).to_string()),
        )
        .await;
    assert_eq!(status, 200, "{waited}");
    let (_, notified) = app.notify("order-1", "paid").await;
    let message = notified[0]["messageId"].as_str().unwrap();
    let entries = expect_history(
        &app,
        "order-1",
        &["delivered", "attempt_failed", "notified", "registered"],
    )
    .await;
    let waiter_id = waited["waiterId"].as_str().unwrap();
    for e in &entries {
        assert_eq!(e["waiterId"], waiter_id, "{e}");
        assert_eq!(e["workflowRunId"], "wfr_1", "{e}");
        assert_eq!(e["url"], receiver.url("/flaky"), "{e}");
    }
    assert_eq!(entries[3]["deadline"], waited["deadline"]);
    assert_eq!(entries[2]["messageId"], message);
    assert_eq!(entries[1]["status"], 503);
    assert_eq!(entries[1]["attempt"], 1);
    assert!(entries[1]["error"].as_str().unwrap().contains("503"));
    assert_eq!(entries[0]["status"], 200);
    assert_eq!(entries[0]["attempt"], 2);
    assert_eq!(entries[0]["messageId"], message);
    let ats: Vec<i64> = entries.iter().map(|e| e["at"].as_i64().unwrap()).collect();
    assert!(
        ats.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {ats:?}"
    );

    // Another tenant's event of the same id has its own (empty) history.
    let other = app.tenant_token("globex").await;
    assert!(history(&app, &other, "order-1").await.is_empty());
    // count limits the answer to the newest entries.
    let (_, two) = app
        .get("/v2/events/order-1/history?count=2", &app.token)
        .await;
    assert_eq!(
        outcomes(two["entries"].as_array().unwrap()),
        ["delivered", "attempt_failed"]
    );
    app.stop().await;
}

#[tokio::test]
async fn timeouts_dead_letters_and_missed_notifies_are_recorded() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.delivery.max_retries = 1;
    let app = TestApp::start(settings).await;
    let receiver = Receiver::start().await;
    receiver.script("/down", &[500], &[]);

    // Nobody waits: the notify is lost, and the history says so.
    assert_eq!(app.notify("nobody", "x").await.0, 201);
    expect_history(&app, "nobody", &["nobody_waiting"]).await;

    // Lookback notify before the wait: saved, then consumed by the wait.
    let (status, _) = app
        .post("/v2/notify/wfr_9/approval", &app.token, "yes")
        .await;
    assert_eq!(status, 201);
    let (_, waited) = app
        .send(
            app.http
                .post(app.url("/v2/wait/approval"))
                .bearer_auth(&app.token)
                .header("Upstash-Workflow-RunId", "wfr_9")
                .body(json!({"url": receiver.url("/approved")}).to_string()),
        )
        .await;
    assert_eq!(waited["status"], "notified");
    expect_history(&app, "approval", &["delivered", "consumed", "saved"]).await;

    // A timeout goes to timeoutUrl; that endpoint is down: dead-lettered after 1 retry.
    let (status, _) = app
        .wait(
            "late",
            json!({"url": receiver.url("/never"), "timeout": "1s", "timeoutUrl": receiver.url("/down")}),
        )
        .await;
    assert_eq!(status, 200);
    let entries = expect_history(
        &app,
        "late",
        &["dead_lettered", "attempt_failed", "timed_out", "registered"],
    )
    .await;
    assert_eq!(
        entries[2]["url"],
        receiver.url("/down"),
        "the timeout's url"
    );
    assert_eq!(entries[0]["status"], 500);
    assert_eq!(entries[0]["attempt"], 2);
    assert_eq!(entries[0]["messageId"], entries[2]["messageId"]);
    app.stop().await;
}

#[tokio::test]
async fn history_bad_input_is_refused_and_the_list_is_bounded() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.history.max_entries = 3;
    let app = TestApp::start(settings).await;
    for count in ["0", "x", "-1", "10001"] {
        let (status, body) = app
            .get(&format!("/v2/events/e/history?count={count}"), &app.token)
            .await;
        assert_eq!(status, 400, "count={count}: {body}");
        assert!(body["error"].as_str().unwrap().contains("count"));
    }
    let (status, body) = app.get("/v2/events/bad%7Bid/history", &app.token).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(app.get("/v2/events/e/history", "nope").await.0, 401);

    for _ in 0..5 {
        app.notify("capped", "x").await;
    }
    // The notifies' entries are written by their scripts; the waiter shows as registered.
    let (status, _) = app
        .wait("capped", json!({"url": "https://example.com/h"}))
        .await;
    assert_eq!(status, 200);
    let entries = expect_history(
        &app,
        "capped",
        &["registered", "nobody_waiting", "nobody_waiting"],
    )
    .await;
    assert_eq!(entries.len(), 3, "capped at history.max_entries");
    // Kept at least history.ttl_secs after the last entry, to the end of its usage
    // bucket (lua/shared/usage.lua: hour-wide for lifetimes of an hour or more).
    let mut conn = redis.client();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*:history:acme:capped")
        .query(&mut conn)
        .unwrap();
    assert_eq!(keys.len(), 1);
    let ttl: i64 = redis::cmd("TTL").arg(&keys[0]).query(&mut conn).unwrap();
    assert!((86_400..=86_400 + 3_600).contains(&ttl), "{ttl}");
    app.stop().await;
}

/// Entries written by the scripts carry the waiter's url exactly, JSON escapes included.
#[tokio::test]
async fn a_url_with_quotes_and_backslashes_is_recorded_as_given() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    let url = r#"https://example.com/a"b\c?d="e""#;
    let (status, body) = app.wait("quoted", json!({ "url": url })).await;
    assert_eq!(status, 200, "{body}");
    let entries = expect_history(&app, "quoted", &["registered"]).await;
    assert_eq!(entries[0]["url"], url);
    assert_eq!(entries[0]["waiterId"], body["waiterId"]);
    assert_eq!(entries[0]["deadline"], body["deadline"]);
    assert!(entries[0].get("workflowRunId").is_none(), "{}", entries[0]);
    // While it waits, the waiter is its own record: no history list is kept for it.
    let mut conn = redis.client();
    let lists: Vec<String> = redis::cmd("KEYS")
        .arg("*:history:acme:quoted")
        .query(&mut conn)
        .unwrap();
    assert!(lists.is_empty(), "{lists:?}");
    // Once notified, its registration is in the list, beside the notify.
    app.notify("quoted", "x").await;
    let state = &app.running.as_ref().unwrap().state;
    let (tenant, event) = (
        TenantName::parse("acme").unwrap(),
        EventId::parse("quoted").unwrap(),
    );
    let list = state
        .keys
        .partition_of(&tenant, &event)
        .history(&tenant, &event);
    let written: Vec<String> = redis::cmd("LRANGE")
        .arg(list)
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .unwrap();
    // The registration is kept as the waiter itself: "<hash field>\n<waiter JSON>".
    // (Delivery attempts may follow it in the list: example.com is not reachable here.)
    let records: Vec<&String> = written.iter().filter(|e| !e.starts_with('{')).collect();
    assert_eq!(records.len(), 1, "{written:?}");
    assert!(
        written
            .iter()
            .filter_map(|e| serde_json::from_str::<Value>(e).ok())
            .any(|e| e["outcome"] == "notified"),
        "{written:?}"
    );
    let waiter_id = body["waiterId"].as_str().unwrap();
    let (field, waiter) = records[0].split_once('\n').unwrap();
    assert_eq!(field, format!("|{waiter_id}"));
    let waiter: Value = serde_json::from_str(waiter).unwrap();
    assert_eq!(waiter["url"], url);
    assert_eq!(waiter["createdAt"], entries[0]["at"]);
    // ... and read back as the same entry (beside the notify and any delivery attempts:
    // example.com is not reachable from the tests).
    let after = history(&app, &app.token, "quoted").await;
    let registered: Vec<&Value> = after
        .iter()
        .filter(|e| e["outcome"] == "registered")
        .collect();
    assert_eq!(registered, [&entries[0]], "{after:#?}");
    app.stop().await;
}
