//! Broadcast notify, the order example, timeouts, tenant isolation.

use std::time::Duration;

use herald::domain::{EventId, TenantName};
use serde_json::json;

use crate::support::{test_settings, Receiver, RedisServer, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_example_end_to_end() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    let receiver = Receiver::start().await;

    // The tenant's app processes order 42 and waits for its payment, 10 minutes at most.
    let (status, body) = app
        .wait(
            "order-42",
            json!({
                "url": receiver.url("/orders/42/paid"),
                "timeout": "10m",
                "timeoutUrl": receiver.url("/orders/42/expired"),
                "headers": {"X-Order": "42"}
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "waiting");
    let waiters = app.waiters("order-42").await;
    assert_eq!(waiters.len(), 1);
    let deadline = waiters[0]["deadline"].as_i64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (now + 595..=now + 605).contains(&deadline),
        "deadline {deadline} vs now {now}"
    );
    assert_eq!(waiters[0]["url"], receiver.url("/orders/42/paid"));
    assert_eq!(waiters[0]["timeoutUrl"], receiver.url("/orders/42/expired"));

    // The payment provider's webhook handler notifies.
    let (status, notified) = app
        .send(
            app.http
                .post(app.url("/v2/notify/order-42"))
                .bearer_auth(&app.token)
                .header("content-type", "application/json")
                .body(r#"{"paid":true,"amount":1299}"#),
        )
        .await;
    assert_eq!(status, 201);
    let notified = notified.as_array().unwrap();
    assert_eq!(notified.len(), 1);
    let message_id = notified[0]["messageId"].as_str().unwrap().to_owned();
    assert!(message_id.starts_with("msg_"));
    assert_eq!(
        notified[0]["waiter"]["url"],
        receiver.url("/orders/42/paid")
    );
    assert_eq!(notified[0]["deduplicated"], false);
    assert_eq!(notified[0]["error"], "");

    let got = receiver.expect("/orders/42/paid", 1).await;
    assert_eq!(got[0].body_text(), r#"{"paid":true,"amount":1299}"#);
    assert_eq!(got[0].header("content-type"), Some("application/json"));
    assert_eq!(
        got[0].header("upstash-message-id"),
        Some(message_id.as_str())
    );
    assert_eq!(got[0].header("upstash-retried"), Some("0"));
    assert_eq!(got[0].header("x-order"), Some("42"));
    assert!(got[0].header("upstash-signature").is_some());

    // Exactly one outcome: no waiter left, a second notify finds nobody.
    assert!(app.waiters("order-42").await.is_empty());
    let (status, again) = app.notify("order-42", "late").await;
    assert_eq!((status, again), (201, json!([])));
    assert!(receiver.at("/orders/42/expired").is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_every_waiter_once() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.waiters.notify_batch = 2; // three waiters take two script calls
    let app = TestApp::start(settings).await;
    let receiver = Receiver::start().await;
    for i in 0..3 {
        let (status, _) = app
            .wait("shipped", json!({"url": receiver.url(&format!("/w/{i}"))}))
            .await;
        assert_eq!(status, 200);
    }
    assert_eq!(app.waiters("shipped").await.len(), 3);
    let (status, body) = app.notify("shipped", "box 7").await;
    assert_eq!(status, 201);
    let ids: std::collections::HashSet<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["messageId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "three distinct message ids: {body}");
    for i in 0..3 {
        let got = receiver.expect(&format!("/w/{i}"), 1).await;
        assert_eq!(got[0].body_text(), "box 7");
    }
    // Nothing more arrives (give the worker a moment to misbehave), nobody waits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.all().len(), 3);
    assert!(app.waiters("shipped").await.is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_fires_once_and_a_late_notify_finds_nobody() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    let receiver = Receiver::start().await;
    let (status, _) = app
        .wait(
            "invoice-9",
            json!({
                "url": receiver.url("/paid"),
                "timeout": 1,
                "timeoutUrl": receiver.url("/expired"),
                "timeoutBody": "eyJleHBpcmVkIjp0cnVlfQ==",
                "timeoutHeaders": {"X-Reason": ["deadline"]}
            }),
        )
        .await;
    assert_eq!(status, 200);
    let got = receiver.expect("/expired", 1).await;
    assert_eq!(got[0].body_text(), r#"{"expired":true}"#);
    assert_eq!(got[0].header("x-reason"), Some("deadline"));
    assert_eq!(got[0].header("herald-outcome"), Some("timeout"));
    let (status, body) = app.notify("invoice-9", "too late").await;
    assert_eq!((status, body), (201, json!([])));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.at("/paid").is_empty());
    assert_eq!(receiver.at("/expired").len(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_cannot_see_or_notify_each_others_waiters() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    let receiver = Receiver::start().await;
    let other = app.tenant_token("globex").await;
    assert_eq!(
        app.wait("order-1", json!({"url": receiver.url("/acme")}))
            .await
            .0,
        200
    );

    let (status, seen) = app.get("/v2/waiters/order-1", &other).await;
    assert_eq!((status, seen), (200, json!([])));
    let (status, notified) = app.post("/v2/notify/order-1", &other, "spoof").await;
    assert_eq!((status, notified), (201, json!([])));
    let (status, _) = app
        .send(
            app.http
                .delete(app.url("/v2/workflows/runs/wfr_x"))
                .bearer_auth(&other),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        app.waiters("order-1").await.len(),
        1,
        "acme's waiter is untouched"
    );
    assert!(receiver.all().is_empty());

    // The same event id in globex is its own.
    assert_eq!(
        app.post(
            "/v2/wait/order-1",
            &other,
            json!({"url": receiver.url("/globex")}).to_string()
        )
        .await
        .0,
        200
    );
    let (_, notified) = app.post("/v2/notify/order-1", &other, "for globex").await;
    assert_eq!(notified.as_array().unwrap().len(), 1);
    receiver.expect("/globex", 1).await;
    assert!(receiver.at("/acme").is_empty());
    assert_eq!(app.waiters("order-1").await.len(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_the_same_waiter_twice_leaves_one() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    let body = json!({"url": "http://127.0.0.1:9/x", "timeout": "5m"}).to_string();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (status, reply) = app
            .send(
                app.http
                    .post(app.url("/v2/wait/order-5"))
                    .bearer_auth(&app.token)
                    .header("Idempotency-Key", "req-1")
                    .body(body.clone()),
            )
            .await;
        assert_eq!(status, 200);
        ids.push(reply["waiterId"].clone());
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    assert_eq!(app.waiters("order-5").await.len(), 1);
    // A workflow step (run id + step id) is idempotent by construction, both run-id spellings.
    let step = json!({"url": "http://127.0.0.1:9/wf", "step": {"stepId": 3, "stepName": "pay", "stepType": "Wait", "concurrent": 1}});
    for header in ["Upstash-Workflow-RunId", "Upstash-Workflow-Runid"] {
        let (status, _) = app
            .send(
                app.http
                    .post(app.url("/v2/wait/order-6"))
                    .bearer_auth(&app.token)
                    .header(header, "wfr_abc")
                    .body(step.to_string()),
            )
            .await;
        assert_eq!(status, 200);
    }
    assert_eq!(app.waiters("order-6").await.len(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_run_drops_its_waiters_and_saved_notifications() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    let receiver = Receiver::start().await;
    let wait_as = |run: &'static str, event: &'static str| {
        let req = app
            .http
            .post(app.url(&format!("/v2/wait/{event}")))
            .bearer_auth(&app.token)
            .header("Upstash-Workflow-RunId", run)
            .body(json!({"url": receiver.url(&format!("/{run}/{event}"))}).to_string());
        app.send(req)
    };
    for event in ["a", "b", "c"] {
        assert_eq!(wait_as("wfr_1", event).await.0, 200);
    }
    assert_eq!(wait_as("wfr_2", "a").await.0, 200);
    let (status, _) = app.post("/v2/notify/wfr_1/d", &app.token, "saved").await;
    assert_eq!(status, 201);

    let (status, body) = app
        .send(
            app.http
                .delete(app.url("/v2/workflows/runs/wfr_1"))
                .bearer_auth(&app.token),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["waitersRemoved"], 3);
    assert_eq!(body["savedRemoved"], 1);
    assert!(app.waiters("b").await.is_empty());
    assert_eq!(
        app.waiters("a").await.len(),
        1,
        "the other run keeps its waiter"
    );

    // The cancelled run can neither wait nor save any more.
    let (status, body) = wait_as("wfr_1", "e").await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("cancelled"));
    let (status, _) = app.post("/v2/notify/wfr_1/e", &app.token, "x").await;
    assert_eq!(status, 409);
    // Nothing was delivered for the cancelled run, even after its deadlines would pass.
    let (_, notified) = app.notify("a", "for run 2").await;
    assert_eq!(notified.as_array().unwrap().len(), 1);
    receiver.expect("/wfr_2/a", 1).await;
    assert!(receiver.all().iter().all(|r| !r.path.starts_with("/wfr_1")));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_follow_redis_time() {
    // The waiter's deadline is Redis TIME + timeout; listing shows it in unix seconds.
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    let (status, body) = app
        .wait(
            "t",
            json!({"url": "http://127.0.0.1:9/x", "timeout": "1h30m"}),
        )
        .await;
    assert_eq!(status, 200);
    let (secs, _): (u64, u64) = redis::cmd("TIME").query(&mut redis.client()).unwrap();
    let deadline = body["deadline"].as_u64().unwrap();
    assert!(
        (secs + 5390..=secs + 5401).contains(&deadline),
        "{deadline} vs {secs}"
    );
    app.stop().await;
}

/// Waiters stored before the compact form (with their id, event id and a timeoutUrl equal
/// to the url written out) are listed, notified, timed out and recorded as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_stored_in_the_earlier_full_form_are_still_served() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    let receiver = Receiver::start().await;
    let state = &app.running.as_ref().unwrap().state;
    let tenant = TenantName::parse("acme").unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut conn = redis.client();
    for (event, id, deadline_ms) in [
        ("legacy-paid", "wOld1", now_ms + 3_600_000),
        ("legacy-late", "wOld2", now_ms + 500),
    ] {
        let url = receiver.url(&format!("/{event}"));
        // Written out in the order the earlier version wrote it (the struct's, then the
        // wait script's deadline and createdAt).
        let waiter = format!(
            r#"{{"id":"{id}","url":"{url}","timeoutUrl":"{url}","eventId":"{event}","timeout":"1h","deadline":{},"createdAt":{now_ms}}}"#,
            deadline_ms / 1000
        );
        let event_id = EventId::parse(event).unwrap();
        let partition = state.keys.partition_of(&tenant, &event_id);
        let field = format!("|{id}");
        // One command at a time: the keys share a slot, but the test's cluster client
        // takes no pipelines.
        let _: () = redis::cmd("HSET")
            .arg(partition.event_waiters(&tenant, &event_id))
            .arg(&field)
            .arg(&waiter)
            .query(&mut conn)
            .unwrap();
        let _: () = redis::cmd("ZADD")
            .arg(partition.deadlines())
            .arg(deadline_ms)
            .arg(format!("acme|{field}|{event}"))
            .query(&mut conn)
            .unwrap();
        let _: () = redis::cmd("INCR")
            .arg(partition.waiter_count(&tenant))
            .query(&mut conn)
            .unwrap();
    }
    let listed = app.waiters("legacy-paid").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["timeoutUrl"], receiver.url("/legacy-paid"));

    let (status, notified) = app.notify("legacy-paid", "paid").await;
    assert_eq!(status, 201, "{notified}");
    assert_eq!(notified[0]["waiter"]["url"], receiver.url("/legacy-paid"));
    let got = receiver.expect("/legacy-paid", 1).await;
    assert_eq!(got[0].body_text(), "paid");
    let got = receiver.expect("/legacy-late", 1).await;
    assert_eq!(got[0].body_text(), "", "the timeout delivery");

    // History names the waiter in every entry, from the stored id.
    let (status, body) = app.get("/v2/events/legacy-late/history", &app.token).await;
    assert_eq!(status, 200, "{body}");
    let entries = body["entries"].as_array().unwrap();
    assert!(!entries.is_empty(), "{body}");
    for e in entries {
        assert_eq!(e["waiterId"], "wOld2", "{e}");
        assert_eq!(e["url"], receiver.url("/legacy-late"), "{e}");
    }
    app.stop().await;
}
