//! The web console (`/console`, src/api/console.rs) and the two tenant routes it reads:
//! `GET /v2/limits` and `GET /v2/workflows/runs/{runId}/saved`. The console itself is
//! tested in a browser by tests/console.

use serde_json::{json, Value};

use crate::support::{test_settings, RedisServer, TestApp};

#[tokio::test]
async fn the_console_is_served_from_the_binary_with_a_self_only_csp() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    for (path, content_type) in [
        ("/console", "text/html"),
        ("/console/", "text/html"),
        ("/console/events", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/app.css", "text/css"),
        ("/console/icon.svg", "image/svg+xml"),
    ] {
        let response = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers();
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with(content_type),
            "{path}: {headers:?}"
        );
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.starts_with("default-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe") && !csp.contains('*'), "{csp}");
        assert_eq!(headers["x-content-type-options"], "nosniff");
    }
    let (status, body) = app.get("/console/nope.js", "").await;
    assert_eq!(status, 404, "{body}");
    // Another method: 405 with Allow, on both routes.
    for path in ["/console", "/console/app.js"] {
        let response = app.http.post(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 405, "{path}");
        assert_eq!(response.headers()["allow"], "GET");
    }
    app.stop().await;

    let mut settings = test_settings(&redis.url());
    settings.server.console = false;
    let app = TestApp::start(settings).await;
    for path in ["/console", "/console/app.js"] {
        let (status, body) = app.get(path, "").await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body["error"].as_str().unwrap().contains("server.console"));
    }
    app.stop().await;
}

#[tokio::test]
async fn a_tenant_reads_its_own_limits_and_usage_as_the_admin_sees_them() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.limits.defaults.wait_per_sec = 50;
    let app = TestApp::start(settings).await;
    let admin = "test-admin-token";
    let (status, _) = app
        .send(
            app.http
                .put(app.url("/admin/tenants/acme/limits"))
                .bearer_auth(admin)
                .body(json!({"active_waiters": 7}).to_string()),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = app
        .wait(
            "limits-e",
            json!({"url": "http://127.0.0.1:9/x", "timeout": "1h"}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, own) = app.get("/v2/limits", &app.token).await;
    assert_eq!(status, 200, "{own}");
    let (_, limits) = app.get("/admin/tenants/acme/limits", admin).await;
    let (_, usage) = app.get("/admin/tenants/acme/usage", admin).await;
    assert_eq!(own["tenant"], "acme");
    assert_eq!(own["limits"], limits["limits"]);
    assert_eq!(own["overrides"], limits["overrides"]);
    assert_eq!(own["limits"]["active_waiters"], 7);
    assert_eq!(own["usage"]["activeWaiters"], 1);
    assert_eq!(own["usage"]["activeWaiters"], usage["activeWaiters"]);
    assert_eq!(own["usage"]["maxActiveWaiters"], 7);
    assert_eq!(own["usage"]["rates"]["wait"]["perSec"], 50);
    assert_eq!(own["usage"]["rates"]["read"]["perSec"], 0);
    let (status, _) = app.get("/v2/limits", "wrong").await;
    assert_eq!(status, 401);
    app.stop().await;
}

async fn saved(app: &TestApp, run: &str, token: &str) -> Value {
    let (status, body) = app
        .get(&format!("/v2/workflows/runs/{run}/saved"), token)
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn a_runs_saved_notifications_are_listed_per_event_and_bounded() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    let lookback = |run: &str, event: &str, body: Vec<u8>, ct: &str| {
        app.http
            .post(app.url(&format!("/v2/notify/{run}/{event}")))
            .bearer_auth(&app.token)
            .header("content-type", ct.to_owned())
            .body(body)
    };
    for (event, body) in [
        ("approved", "one"),
        ("approved", "two\nlines"),
        ("shipped", "3"),
    ] {
        let (status, _) = app
            .send(lookback("wfr_a", event, body.into(), "text/plain"))
            .await;
        assert_eq!(status, 201);
    }
    let listed = saved(&app, "wfr_a", &app.token).await;
    assert_eq!(listed["workflowRunId"], "wfr_a");
    assert_eq!(listed["truncated"], false);
    let events = listed["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{listed}");
    assert_eq!(events[0]["eventId"], "approved");
    assert_eq!(events[0]["count"], 2);
    let items = events[0]["items"].as_array().unwrap();
    // Oldest first, as the run's waits consume them; bodies in base64.
    assert_eq!(items[0]["body"], "b25l");
    assert_eq!(items[1]["body"], "dHdvCmxpbmVz");
    assert_eq!(items[1]["bytes"], 9);
    assert_eq!(items[0]["contentType"], "text/plain");
    assert!(items[0]["expiresAt"].as_i64().unwrap() > items[0]["savedAt"].as_i64().unwrap());
    assert_eq!(events[1]["eventId"], "shipped");

    // A wait of the run consumes the oldest one; it leaves the list.
    let (status, body) = app
        .post(
            "/v2/wait/approved",
            &app.token,
            json!({"url": "http://127.0.0.1:9/x", "workflowRunId": "wfr_a"}).to_string(),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "notified");
    let listed = saved(&app, "wfr_a", &app.token).await;
    assert_eq!(listed["events"][0]["count"], 1);
    assert_eq!(listed["events"][0]["items"][0]["body"], "dHdvCmxpbmVz");

    // Another tenant sees nothing of it; an unknown run has nothing.
    let other = app.tenant_token("other").await;
    assert_eq!(saved(&app, "wfr_a", &other).await["events"], json!([]));
    assert_eq!(
        saved(&app, "wfr_none", &app.token).await["events"],
        json!([])
    );

    // Bodies are bounded in bytes: past the bound they are left out (null) and said so.
    for _ in 0..3 {
        let (status, _) = app
            .send(lookback(
                "wfr_big",
                "e",
                vec![b'x'; 100 * 1024],
                "application/octet-stream",
            ))
            .await;
        assert_eq!(status, 201);
    }
    let listed = saved(&app, "wfr_big", &app.token).await;
    assert_eq!(listed["truncated"], true);
    let items = listed["events"][0]["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert!(items[0]["body"].is_string() && items[1]["body"].is_string());
    assert!(items[2]["body"].is_null());
    assert_eq!(items[2]["bytes"], 100 * 1024);

    let (status, _) = app.get("/v2/workflows/runs/bad|id/saved", &app.token).await;
    assert_eq!(status, 400);
    app.stop().await;
}

#[tokio::test]
async fn with_an_operator_listener_the_console_is_served_on_both() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.server.operator_listen = "127.0.0.1:0".into();
    let app = TestApp::start(settings).await;
    let operator = format!(
        "http://{}",
        app.running.as_ref().unwrap().operator_addr.unwrap()
    );
    // Tenants sign in on server.listen, the operator where /admin and /metrics are.
    for base in [app.base.clone(), operator] {
        for path in ["/console", "/console/app.js"] {
            let r = app.http.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(r.status(), 200, "{base}{path}");
        }
    }
    app.stop().await;
}
