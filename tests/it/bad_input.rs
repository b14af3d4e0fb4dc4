//! Bad input gets a clear `{"error": …}` with the right status, and changes nothing in Redis.

use serde_json::json;

use crate::support::{test_settings, RedisServer, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_change_nothing() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.server.max_body_bytes = 1024;
    settings.waiters.max_timeout = "30d".into();
    let app = TestApp::start(settings).await;
    let ok_url = "http://127.0.0.1:9/x";
    // One registered waiter, so "nothing changed" also covers existing state.
    assert_eq!(app.wait("order-1", json!({"url": ok_url})).await.0, 200);
    let before = redis.digest();

    let long_id = "e".repeat(257);
    let cases: Vec<(&str, String, String, u16, &str)> = vec![
        (
            "bad event id",
            "/v2/wait/a%7Bb".to_string(),
            json!({"url": ok_url}).to_string(),
            400,
            "event id contains",
        ),
        (
            "over-long event id",
            format!("/v2/wait/{long_id}"),
            json!({"url": ok_url}).to_string(),
            400,
            "at most 256",
        ),
        (
            "bad json",
            "/v2/wait/order-1".into(),
            "{not json".into(),
            400,
            "invalid JSON",
        ),
        (
            "not an object",
            "/v2/wait/order-1".into(),
            "[1]".into(),
            400,
            "JSON object",
        ),
        (
            "missing url",
            "/v2/wait/order-1".into(),
            json!({}).to_string(),
            400,
            "url is required",
        ),
        (
            "bad url",
            "/v2/wait/order-1".into(),
            json!({"url": "ftp://x"}).to_string(),
            400,
            "http or https",
        ),
        (
            "bad timeout",
            "/v2/wait/order-1".into(),
            json!({"url": ok_url, "timeout": "10x"}).to_string(),
            400,
            "invalid timeout",
        ),
        (
            "zero timeout",
            "/v2/wait/order-1".into(),
            json!({"url": ok_url, "timeout": 0}).to_string(),
            400,
            "longer than zero",
        ),
        (
            "timeout over max",
            "/v2/wait/order-1".into(),
            json!({"url": ok_url, "timeout": "31d"}).to_string(),
            400,
            "maximum of 30d",
        ),
        (
            "bad timeoutBody",
            "/v2/wait/order-1".into(),
            json!({"url": ok_url, "timeoutBody": "%%%"}).to_string(),
            400,
            "base64",
        ),
        (
            "bad header value",
            "/v2/wait/order-1".into(),
            json!({"url": ok_url, "headers": {"X-A": "a\r\nB: c"}}).to_string(),
            400,
            "not a valid header value",
        ),
        (
            "step without run",
            "/v2/wait/order-1".into(),
            json!({"url": ok_url, "step": {"stepId": 1, "stepName": "w", "stepType": "Wait"}})
                .to_string(),
            400,
            "needs a run id",
        ),
        (
            "body too large",
            "/v2/notify/order-1".into(),
            "x".repeat(1025),
            413,
            "larger than 1024",
        ),
        (
            "bad event id on notify",
            "/v2/notify/a%20b".into(),
            "x".into(),
            400,
            "event id contains",
        ),
        (
            "bad run id on lookback",
            "/v2/notify/r%7B/order-1".into(),
            "x".into(),
            400,
            "run id contains",
        ),
        (
            "unknown route",
            "/v2/nothing".into(),
            "".into(),
            404,
            "no route",
        ),
    ];
    for (name, path, body, status, message) in cases {
        let (got, json) = app.post(&path, &app.token, body).await;
        assert_eq!(got, status, "{name}: {json}");
        let error = json["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no error field in {json}"));
        assert!(
            error.contains(message),
            "{name}: {error:?} should mention {message:?}"
        );
    }

    // Unknown, missing and malformed tokens.
    for token in ["hld_unknown", ""] {
        let (status, json) = app.post("/v2/notify/order-1", token, "x").await;
        assert_eq!(status, 401, "{json}");
        assert!(json["error"].as_str().unwrap().contains("token"));
    }
    let (status, _) = app
        .send(
            app.http
                .post(app.url("/v2/notify/order-1"))
                .header("authorization", "Basic abc"),
        )
        .await;
    assert_eq!(status, 401);
    let (status, _) = app.get("/v2/waiters/order-1", "nope").await;
    assert_eq!(status, 401);

    assert_eq!(redis.digest(), before, "a refused request changed Redis");
    assert_eq!(app.waiters("order-1").await.len(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_token_and_percent_decoded_ids_work() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    let (status, body) = app
        .send(
            app.http
                .post(app.url(&format!("/v2/wait/order%3A42?qstash_token={}", app.token)))
                .body(json!({"url": "http://127.0.0.1:9/x"}).to_string()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // The percent-decoded id is the id: "order:42".
    assert_eq!(app.waiters("order:42").await.len(), 1);
    app.stop().await;
}
