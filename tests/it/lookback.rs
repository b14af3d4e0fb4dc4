//! Lookback notify (`/v2/notify/{runId}/{eventId}`) in both orders, FIFO, TTL, retries.

use serde_json::json;

use crate::support::{test_settings, Receiver, RedisServer, TestApp};

async fn wait_as_run(app: &TestApp, run: &str, event: &str, url: &str) -> (u16, serde_json::Value) {
    app.send(
        app.http
            .post(app.url(&format!("/v2/wait/{event}")))
            .bearer_auth(&app.token)
            .header("Upstash-Workflow-RunId", run)
            .body(json!({"url": url, "timeout": "5m"}).to_string()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_before_wait_is_saved_and_consumed_by_the_next_wait() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    let receiver = Receiver::start().await;
    let response = app
        .http
        .post(app.url("/v2/notify/wfr_7/payment"))
        .bearer_auth(&app.token)
        .header("content-type", "text/plain")
        .body("first")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["herald-notify-outcome"], "saved");
    assert_eq!(response.text().await.unwrap(), "[]");
    let (_, _) = app
        .post("/v2/notify/wfr_7/payment", &app.token, "second")
        .await;
    // Saved notifications are not waiters.
    assert!(app.waiters("payment").await.is_empty());

    let (status, body) = wait_as_run(&app, "wfr_7", "payment", &receiver.url("/one")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "notified");
    let got = receiver.expect("/one", 1).await;
    assert_eq!(
        got[0].body_text(),
        "first",
        "FIFO: the oldest saved notification first"
    );
    assert_eq!(got[0].header("content-type"), Some("text/plain"));
    assert_eq!(
        got[0].header("upstash-message-id"),
        body["messageId"].as_str()
    );
    assert!(app.waiters("payment").await.is_empty());

    // The next wait of the run gets the second one; a third waits.
    assert_eq!(
        wait_as_run(&app, "wfr_7", "payment", &receiver.url("/two"))
            .await
            .1["status"],
        "notified"
    );
    assert_eq!(receiver.expect("/two", 1).await[0].body_text(), "second");
    assert_eq!(
        wait_as_run(&app, "wfr_7", "payment", &receiver.url("/three"))
            .await
            .1["status"],
        "waiting"
    );
    // Another run's wait never sees this run's notifications.
    assert_eq!(
        wait_as_run(&app, "wfr_8", "payment", &receiver.url("/other"))
            .await
            .1["status"],
        "waiting"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_before_notify_is_delivered_to_that_run_only() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    let receiver = Receiver::start().await;
    assert_eq!(
        wait_as_run(&app, "wfr_a", "approved", &receiver.url("/a"))
            .await
            .0,
        200
    );
    assert_eq!(
        wait_as_run(&app, "wfr_b", "approved", &receiver.url("/b"))
            .await
            .0,
        200
    );
    let response = app
        .http
        .post(app.url("/v2/notify/wfr_a/approved"))
        .bearer_auth(&app.token)
        .body(r#"{"by":"alice"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["herald-notify-outcome"], "delivered");
    let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body.as_array().unwrap().len(), 1);
    assert_eq!(body[0]["workflowRunId"], "wfr_a");
    assert_eq!(body[0]["waiter"]["url"], receiver.url("/a"));
    assert_eq!(
        receiver.expect("/a", 1).await[0].body_text(),
        r#"{"by":"alice"}"#
    );
    let left = app.waiters("approved").await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["url"], receiver.url("/b"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_notifications_expire_and_retries_do_not_save_twice() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.waiters.saved_ttl_secs = 1;
    let app = TestApp::start(settings).await;
    let receiver = Receiver::start().await;
    // The same Idempotency-Key twice saves once.
    for _ in 0..2 {
        let (status, _) = app
            .send(
                app.http
                    .post(app.url("/v2/notify/wfr_i/evt"))
                    .bearer_auth(&app.token)
                    .header("Idempotency-Key", "n-1")
                    .body("once"),
            )
            .await;
        assert_eq!(status, 201);
    }
    assert_eq!(
        wait_as_run(&app, "wfr_i", "evt", &receiver.url("/i1"))
            .await
            .1["status"],
        "notified"
    );
    assert_eq!(
        wait_as_run(&app, "wfr_i", "evt", &receiver.url("/i2"))
            .await
            .1["status"],
        "waiting"
    );

    // A saved notification older than its TTL is not consumed.
    let (status, _) = app.post("/v2/notify/wfr_t/evt", &app.token, "stale").await;
    assert_eq!(status, 201);
    let key_gone = crate::support::eventually_async(std::time::Duration::from_secs(5), || async {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*saved*wfr_t*")
            .query(&mut redis.client())
            .unwrap();
        keys.is_empty()
    })
    .await;
    assert!(key_gone, "the saved notification's key expires");
    assert_eq!(
        wait_as_run(&app, "wfr_t", "evt", &receiver.url("/t"))
            .await
            .1["status"],
        "waiting"
    );
    assert!(receiver.at("/t").is_empty());
    app.stop().await;
}
