//! Per-tenant rate limits and quotas: they hold across api replicas, a refused request
//! changes nothing, every quota at its limit and over it, the operator's controls (admin
//! API and CLI), and the noisy-neighbour scenario's admitted counts.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use herald::app::Role;
use herald::config::{RedisMode, Settings};
use serde_json::{json, Value};

use crate::support::redis::suite_topology;
use crate::support::{test_settings, Receiver, RedisServer, TestApp};

#[path = "../../benches/limits/noisy.rs"]
mod noisy;

const ADMIN: &str = "test-admin-token";

/// Test settings whose limit changes are seen at once by every replica.
fn settings(redis: &RedisServer) -> Settings {
    let mut s = test_settings(&redis.url());
    s.limits.cache_ms = 0;
    s
}

async fn set_limits(app: &TestApp, tenant: &str, limits: Value) {
    let (status, body) = app
        .send(
            app.http
                .put(app.url(&format!("/admin/tenants/{tenant}/limits")))
                .bearer_auth(ADMIN)
                .body(limits.to_string()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn error_text(body: &Value) -> &str {
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{{\"error\"}} body: {body}"))
}

/// Notifies from `workers` tasks on each app until `window` has passed; returns
/// (admitted, refused, elapsed seconds from the first send to the last answer).
async fn flood_notifies(apps: &[&TestApp], workers: usize, window: Duration) -> (u64, u64, f64) {
    let started = Instant::now();
    let tasks = apps.iter().flat_map(|app| {
        (0..workers).map(move |w| async move {
            let (mut admitted, mut refused) = (0u64, 0u64);
            // Bounded: at most 5,000 requests per task.
            for i in 0..5000 {
                if started.elapsed() >= window {
                    break;
                }
                let (status, body) = app.notify(&format!("flood-{w}-{i}"), "x").await;
                match status {
                    201 => admitted += 1,
                    429 => refused += 1,
                    other => panic!("unexpected {other}: {body}"),
                }
            }
            (admitted, refused)
        })
    });
    let results = join_all(tasks).await;
    let elapsed = started.elapsed().as_secs_f64();
    let admitted = results.iter().map(|r| r.0).sum();
    let refused = results.iter().map(|r| r.1).sum();
    (admitted, refused, elapsed)
}

#[tokio::test]
async fn the_rate_limit_holds_across_two_api_replicas() {
    let redis = RedisServer::start();
    let first = TestApp::start_role(settings(&redis), Role::Api).await;
    let second = first.replica(Role::Api).await;
    let (per_sec, burst) = (50.0, 10.0);
    set_limits(
        &first,
        "acme",
        json!({"notify_per_sec": 50, "notify_burst": 10}),
    )
    .await;

    let (admitted, refused, elapsed) =
        flood_notifies(&[&first, &second], 8, Duration::from_secs(2)).await;
    let bound = (per_sec * elapsed + burst) * 1.01;
    eprintln!("rate: {admitted} admitted, {refused} refused in {elapsed:.2} s (bound {bound:.1})");
    assert!(
        (admitted as f64) <= bound,
        "{admitted} admitted in {elapsed:.2} s; the limit allows {bound:.1}"
    );
    assert!(
        admitted >= burst as u64,
        "the burst is admitted: {admitted}"
    );
    assert!(refused > 0, "the flood went over the limit");

    second.stop().await;
    first.stop().await;
}

#[tokio::test]
async fn the_waiter_quota_holds_across_two_api_replicas() {
    let redis = RedisServer::start();
    let first = TestApp::start_role(settings(&redis), Role::Api).await;
    let second = first.replica(Role::Api).await;
    set_limits(&first, "acme", json!({"active_waiters": 20})).await;
    // 60 waits on 60 events (spread over the partitions) from 8 tasks, 4 per replica.
    const IN_FLIGHT: usize = 8;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let tasks = (0..IN_FLIGHT).map(|t| {
        let (app, next) = (if t % 2 == 0 { &first } else { &second }, &next);
        async move {
            let mut statuses = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= 60 {
                    return statuses;
                }
                let url = json!({"url": "http://127.0.0.1:9/w"});
                statuses.push(app.wait(&format!("q-{i}"), url).await.0);
            }
        }
    });
    let statuses: Vec<u16> = join_all(tasks).await.into_iter().flatten().collect();
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 422).count();
    assert_eq!(admitted + refused, 60, "{statuses:?}");
    if suite_topology() == RedisMode::Cluster {
        // The other partitions' counts are read just before each wait's script: waits in
        // flight at that moment may each take one more place (docs/limits.md).
        assert!(
            (20..20 + IN_FLIGHT).contains(&admitted),
            "{admitted} admitted"
        );
    } else {
        assert_eq!(admitted, 20, "exact: the wait script sums every partition");
    }
    let usage = first.get("/admin/tenants/acme/usage", ADMIN).await.1;
    assert_eq!(usage["activeWaiters"], admitted, "{usage}");
    second.stop().await;
    first.stop().await;
}

#[tokio::test]
async fn a_refused_request_changes_nothing_and_leaves_other_classes_and_tenants_alone() {
    let redis = RedisServer::start();
    let app = TestApp::start(settings(&redis)).await;
    let receiver = Receiver::start().await;
    let other = app.tenant_token("globex").await;
    set_limits(
        &app,
        "acme",
        json!({"notify_per_sec": 1, "notify_burst": 2, "read_per_sec": 1, "read_burst": 3}),
    )
    .await;
    let (status, _) = app
        .wait("order-1", json!({"url": receiver.url("/w")}))
        .await;
    assert_eq!(status, 200);

    // Two notifies at once are the burst (a third may squeeze in if a second passed);
    // then they are refused, with the headers the Upstash SDKs read.
    let mut admitted = 0;
    for _ in 0..10 {
        match app.notify("nobody-waits", "x").await.0 {
            201 => admitted += 1,
            429 => break,
            other => panic!("{other}"),
        }
    }
    assert!((2..=3).contains(&admitted), "{admitted} admitted");
    let response = app
        .http
        .post(app.url("/v2/notify/order-1"))
        .bearer_auth(&app.token)
        .body("paid")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .unwrap_or_else(|| panic!("{name} is sent"))
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert_eq!(header("burst-ratelimit-limit"), 2);
    assert_eq!(header("burst-ratelimit-remaining"), 0);
    let reset = header("burst-ratelimit-reset");
    assert!(
        (now_secs()..=now_secs() + 3).contains(&reset),
        "reset {reset}"
    );
    assert!((1..=2).contains(&header("retry-after")));
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    let text = error_text(&body);
    assert!(
        text.contains("rate limit") && text.contains("notify"),
        "{text}"
    );

    // Nothing was written: the waiter still waits, nothing was delivered.
    let waiters = app.waiters("order-1").await;
    assert_eq!(waiters.len(), 1, "the refused notify took no waiter");
    // Lookback notifies share the notify bucket.
    let (status, _) = app.post("/v2/notify/wfr_1/order-1", &app.token, "x").await;
    assert_eq!(status, 429);

    // Other classes and other tenants have their own buckets.
    let (status, _) = app
        .wait("order-2", json!({"url": receiver.url("/w")}))
        .await;
    assert_eq!(status, 200, "wait is another class");
    let (status, _) = app.post("/v2/notify/anything", &other, "x").await;
    assert_eq!(status, 201, "another tenant is not limited by acme's flood");

    // Reads have a bucket of their own (one was used above by waiters()).
    let mut reads = 1;
    let mut refused = None;
    for path in ["/v2/keys", "/v2/waiters/order-1"].iter().cycle().take(10) {
        let (status, body) = app.get(path, &app.token).await;
        if status == 429 {
            refused = Some(body);
            break;
        }
        assert_eq!(status, 200, "{body}");
        reads += 1;
    }
    let refused = refused.expect("reads are limited too");
    assert!(error_text(&refused).contains("read"), "{refused}");
    assert!((3..=4).contains(&reads), "{reads} reads admitted");

    // Once the bucket refills, the notify goes through and takes the waiter.
    let admitted = crate::support::eventually_async(Duration::from_secs(5), || async {
        app.notify("order-1", "paid").await.0 == 201
    })
    .await;
    assert!(admitted);
    assert_eq!(receiver.expect("/w", 1).await[0].body_text(), "paid");
    app.stop().await;
}

#[tokio::test]
async fn active_waiters_quota_at_and_over_the_limit() {
    let redis = RedisServer::start();
    let app = TestApp::start(settings(&redis)).await;
    let receiver = Receiver::start().await;
    set_limits(&app, "acme", json!({"active_waiters": 3})).await;
    let wait = |event: String, timeout: &'static str| {
        let url = receiver.url("/w");
        let app = &app;
        async move {
            app.wait(&event, json!({"url": url, "timeout": timeout}))
                .await
        }
    };

    // At the limit: three waiters on three events (most likely three partitions), the
    // first with an Idempotency-Key.
    let keyed = || {
        app.send(
            app.http
                .post(app.url("/v2/wait/a-0"))
                .bearer_auth(&app.token)
                .header("Idempotency-Key", "k0")
                .body(json!({"url": receiver.url("/w"), "timeout": "10m"}).to_string()),
        )
    };
    let (status, first) = keyed().await;
    assert_eq!(status, 200, "{first}");
    for i in 1..3 {
        assert_eq!(wait(format!("a-{i}"), "10m").await.0, 200);
    }
    // A client retry of a registration finds it (no new waiter), even at the limit.
    let (status, again) = keyed().await;
    assert_eq!((status, &again["waiterId"]), (200, &first["waiterId"]));
    // Over the limit: 422 naming the quota, nothing written.
    let (status, body) = wait("a-3".into(), "10m").await;
    assert_eq!(status, 422, "{body}");
    let text = error_text(&body);
    assert!(
        text.contains("active_waiters") && text.contains("(3)"),
        "{text}"
    );
    assert!(app.waiters("a-3").await.is_empty(), "nothing half-written");
    let usage = app.get("/admin/tenants/acme/usage", ADMIN).await.1;
    assert_eq!(usage["activeWaiters"], 3, "{usage}");

    // Every way a waiter ends frees its place: notify, lookback notify, cancel, timeout.
    assert_eq!(app.notify("a-0", "x").await.0, 201);
    assert_eq!(wait("b-0".into(), "10m").await.0, 200);
    let run_wait = app
        .post(
            "/v2/wait/b-1",
            &app.token,
            json!({"url": receiver.url("/w"), "workflowRunId": "wfr_a"}).to_string(),
        )
        .await;
    assert_eq!(run_wait.0, 422, "still full: {}", run_wait.1);
    // A saved lookback notification is not a waiter: still full.
    assert_eq!(
        app.post("/v2/notify/wfr_x/a-1", &app.token, "x").await.0,
        201
    );
    assert_eq!(wait("b-1".into(), "10m").await.0, 422);
    assert_eq!(app.notify("a-1", "x").await.0, 201);
    let run_wait = app
        .post(
            "/v2/wait/b-1",
            &app.token,
            json!({"url": receiver.url("/w"), "workflowRunId": "wfr_a"}).to_string(),
        )
        .await;
    assert_eq!(run_wait.0, 200, "{}", run_wait.1);
    assert_eq!(
        app.post("/v2/notify/wfr_a/b-1", &app.token, "x").await.0,
        201
    );
    let run_wait = app
        .post(
            "/v2/wait/b-2",
            &app.token,
            json!({"url": receiver.url("/w"), "workflowRunId": "wfr_c"}).to_string(),
        )
        .await;
    assert_eq!(run_wait.0, 200, "{}", run_wait.1);
    let cancel = app
        .send(
            app.http
                .delete(app.url("/v2/workflows/runs/wfr_c"))
                .bearer_auth(&app.token),
        )
        .await;
    assert_eq!(cancel.0, 200);
    assert_eq!(wait("b-3".into(), "1s").await.0, 200);
    assert_eq!(wait("b-4".into(), "10m").await.0, 422, "full again");
    let freed = crate::support::eventually_async(Duration::from_secs(10), || async {
        app.get("/admin/tenants/acme/usage", ADMIN).await.1["activeWaiters"] == 2
    })
    .await;
    assert!(freed, "the timed-out waiter left the count");
    assert_eq!(wait("b-4".into(), "10m").await.0, 200);
    app.stop().await;
}

#[tokio::test]
async fn waiters_per_event_quota_at_and_over_the_limit() {
    let redis = RedisServer::start();
    let app = TestApp::start(settings(&redis)).await;
    let receiver = Receiver::start().await;
    set_limits(&app, "acme", json!({"waiters_per_event": 2})).await;
    for i in 0..2 {
        let (status, body) = app
            .wait("busy", json!({"url": receiver.url(&format!("/w{i}"))}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = app.wait("busy", json!({"url": receiver.url("/w2")})).await;
    assert_eq!(status, 422);
    let text = error_text(&body);
    assert!(
        text.contains("waiters_per_event") && text.contains("(2)"),
        "{text}"
    );
    assert_eq!(app.waiters("busy").await.len(), 2, "nothing half-written");
    // Another event is not affected.
    assert_eq!(
        app.wait("calm", json!({"url": receiver.url("/w")})).await.0,
        200
    );
    app.stop().await;
}

#[tokio::test]
async fn saved_per_run_event_quota_at_and_over_the_limit() {
    let redis = RedisServer::start();
    let app = TestApp::start(settings(&redis)).await;
    let receiver = Receiver::start().await;
    set_limits(&app, "acme", json!({"saved_per_run_event": 2})).await;
    for body in ["one", "two"] {
        let (status, reply) = app
            .post("/v2/notify/wfr_9/approved", &app.token, body)
            .await;
        assert_eq!((status, reply), (201, json!([])));
    }
    let (status, body) = app
        .post("/v2/notify/wfr_9/approved", &app.token, "three")
        .await;
    assert_eq!(status, 422);
    let text = error_text(&body);
    assert!(
        text.contains("saved_per_run_event") && text.contains("(2)"),
        "{text}"
    );
    // Another event of the run has its own room.
    assert_eq!(
        app.post("/v2/notify/wfr_9/other", &app.token, "x").await.0,
        201
    );

    // The run's waits consume the two saved notifications, in order: "three" was never saved.
    for expected in ["one", "two"] {
        let (status, reply) = app
            .post(
                "/v2/wait/approved",
                &app.token,
                json!({"url": receiver.url(&format!("/{expected}")), "workflowRunId": "wfr_9"})
                    .to_string(),
            )
            .await;
        assert_eq!((status, reply["status"].as_str()), (200, Some("notified")));
        assert_eq!(
            receiver.expect(&format!("/{expected}"), 1).await[0].body_text(),
            expected
        );
    }
    let (status, reply) = app
        .post(
            "/v2/wait/approved",
            &app.token,
            json!({"url": receiver.url("/third"), "workflowRunId": "wfr_9"}).to_string(),
        )
        .await;
    assert_eq!((status, reply["status"].as_str()), (200, Some("waiting")));
    app.stop().await;
}

#[tokio::test]
async fn notify_body_bytes_quota_at_and_over_the_limit() {
    let redis = RedisServer::start();
    let app = TestApp::start(settings(&redis)).await;
    let receiver = Receiver::start().await;
    set_limits(&app, "acme", json!({"notify_body_bytes": 16})).await;
    assert_eq!(
        app.wait("doc", json!({"url": receiver.url("/doc")}))
            .await
            .0,
        200
    );

    for path in ["/v2/notify/doc", "/v2/notify/wfr_2/doc"] {
        let (status, body) = app.post(path, &app.token, "x".repeat(17)).await;
        assert_eq!(status, 413, "{path}: {body}");
        let text = error_text(&body);
        assert!(
            text.contains("notify_body_bytes") && text.contains("(16)"),
            "{text}"
        );
    }
    assert_eq!(
        app.waiters("doc").await.len(),
        1,
        "the refused notify took nothing"
    );

    let (status, body) = app.post("/v2/notify/doc", &app.token, "x".repeat(16)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        receiver.expect("/doc", 1).await[0].body_text(),
        "x".repeat(16)
    );
    // The quota is the tenant's: another tenant may send more.
    let other = app.tenant_token("globex").await;
    assert_eq!(
        app.post("/v2/notify/doc", &other, "x".repeat(100)).await.0,
        201
    );
    app.stop().await;
}

#[tokio::test]
async fn max_timeout_quota_at_and_over_the_limit() {
    let redis = RedisServer::start();
    let app = TestApp::start(settings(&redis)).await;
    let receiver = Receiver::start().await;
    set_limits(&app, "acme", json!({"max_timeout": "1h"})).await;
    let url = receiver.url("/w");

    let (status, body) = app.wait("t-1", json!({"url": url, "timeout": "1h"})).await;
    assert_eq!(status, 200, "{body}");
    for timeout in [json!("1h1s"), json!(3601)] {
        let (status, body) = app
            .wait("t-2", json!({"url": url, "timeout": timeout}))
            .await;
        assert_eq!(status, 422, "{body}");
        let text = error_text(&body);
        assert!(
            text.contains("max_timeout") && text.contains("(1h)"),
            "{text}"
        );
    }
    assert!(app.waiters("t-2").await.is_empty(), "nothing half-written");
    // Beyond the server-wide cap it stays a plain 400.
    let (status, _) = app
        .wait("t-2", json!({"url": url, "timeout": "400d"}))
        .await;
    assert_eq!(status, 400);
    // No timeout given: the default (7 days) is shortened to the tenant's maximum.
    let (status, body) = app.wait("t-3", json!({"url": url})).await;
    assert_eq!(status, 200, "{body}");
    let deadline = body["deadline"].as_u64().unwrap();
    assert!(
        (now_secs() + 3590..=now_secs() + 3610).contains(&deadline),
        "deadline {deadline}"
    );
    app.stop().await;
}

#[tokio::test]
async fn operators_read_and_replace_a_tenants_limits() {
    let redis = RedisServer::start();
    let app = TestApp::start(settings(&redis)).await;
    let state = &app.running.as_ref().unwrap().state;
    let defaults = state.settings.limits.defaults.clone();
    let path = "/admin/tenants/acme/limits";

    let (status, _) = app.get(path, &app.token).await;
    assert_eq!(status, 401, "a tenant token is not the admin token");
    assert_eq!(app.get("/admin/tenants/nobody/limits", ADMIN).await.0, 404);
    let (status, view) = app.get(path, ADMIN).await;
    assert_eq!(status, 200);
    assert_eq!(view["limits"], serde_json::to_value(&defaults).unwrap());
    assert_eq!(view["overrides"], json!({}));

    let put = |body: String| {
        let app = &app;
        async move {
            app.send(app.http.put(app.url(path)).bearer_auth(ADMIN).body(body))
                .await
        }
    };
    let (status, view) = put(json!({"notify_per_sec": 5, "max_timeout": "2h"}).to_string()).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(
        view["overrides"],
        json!({"notify_per_sec": 5, "max_timeout": "2h"})
    );
    assert_eq!(view["limits"]["notify_per_sec"], 5);
    assert_eq!(view["limits"]["wait_per_sec"], defaults.wait_per_sec);

    // Bad input: 400 naming the problem, and nothing changes.
    for (body, needle) in [
        (json!({"notify_rate": 5}).to_string(), "unknown limit"),
        (json!({"notify_per_sec": -1}).to_string(), "notify_per_sec"),
        (json!({"notify_burst": 0}).to_string(), "notify_burst"),
        (
            json!({"saved_per_run_event": 5000}).to_string(),
            "saved_per_run_event",
        ),
        (
            json!({"notify_body_bytes": 1 << 30}).to_string(),
            "notify_body_bytes",
        ),
        (json!({"max_timeout": "1000d"}).to_string(), "max_timeout"),
        (
            json!({"notify_per_sec": 7, "wait_burst": "lots"}).to_string(),
            "wait_burst",
        ),
        (json!([1, 2]).to_string(), "JSON object"),
        ("{".to_owned(), "invalid JSON"),
    ] {
        let (status, body) = put(body.clone()).await;
        assert_eq!(status, 400, "{body}");
        assert!(error_text(&body).contains(needle), "{needle}: {body}");
    }
    assert_eq!(
        app.get(path, ADMIN).await.1["overrides"]["notify_per_sec"],
        5
    );

    // Replace: limits not named go back to their defaults.
    let (status, view) = put(json!({"read_burst": 9}).to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(view["overrides"], json!({"read_burst": 9}));
    assert_eq!(view["limits"]["notify_per_sec"], defaults.notify_per_sec);
    let (status, view) = put("{}".into()).await;
    assert_eq!((status, &view["overrides"]), (200, &json!({})));

    // Usage: waiters and what is left of each rate.
    let (status, _) = put(json!({"wait_per_sec": 1, "wait_burst": 4}).to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(
        app.wait("u-1", json!({"url": "http://127.0.0.1:9/w"}))
            .await
            .0,
        200
    );
    let (status, usage) = app.get("/admin/tenants/acme/usage", ADMIN).await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(usage["activeWaiters"], 1);
    assert_eq!(usage["rates"]["wait"]["burst"], 4);
    let left = usage["rates"]["wait"]["remaining"].as_u64().unwrap();
    assert!(
        left == 3 || left == 4,
        "one wait taken, maybe refilled: {usage}"
    );
    assert_eq!(usage["rates"]["notify"]["perSec"], defaults.notify_per_sec);
    assert_eq!(app.get("/admin/tenants/nobody/usage", ADMIN).await.0, 404);
    app.stop().await;
}

/// Runs `herald tenant …args` with only `env` set; returns (success, stdout, stderr).
/// Asynchronously: the in-process Herald's Redis connections run on this test's runtime.
async fn herald_tenant(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    command
        .arg("tenant")
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("herald finishes")
        .expect("herald runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_shows_and_changes_a_tenants_limits() {
    let redis = RedisServer::start();
    let app = TestApp::start(settings(&redis)).await;
    let overrides =
        || async { app.get("/admin/tenants/acme/limits", ADMIN).await.1["overrides"].clone() };

    // Through /admin (the default).
    let admin = [
        ("HERALD_URL", app.base.as_str()),
        ("HERALD_ADMIN_TOKEN", ADMIN),
    ];
    let (ok, out, err) = herald_tenant(
        &[
            "limits",
            "acme",
            "--set",
            "notify_per_sec=7",
            "--set",
            "max_timeout=3h",
        ],
        &admin,
    )
    .await;
    assert!(ok, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("notify_per_sec"))
        .unwrap();
    assert!(line.contains(" 7 ") && line.ends_with("override"), "{out}");
    assert!(out
        .lines()
        .any(|l| l.starts_with("wait_per_sec") && l.ends_with("default")));
    assert_eq!(
        overrides().await,
        json!({"notify_per_sec": 7, "max_timeout": "3h"})
    );
    let (ok, _, err) = herald_tenant(&["limits", "acme", "--unset", "max_timeout"], &admin).await;
    assert!(ok, "{err}");
    assert_eq!(overrides().await, json!({"notify_per_sec": 7}));
    let (ok, out, err) = herald_tenant(&["usage", "acme", "--json"], &admin).await;
    assert!(ok, "{err}");
    let usage: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(usage["rates"]["notify"]["perSec"], 7, "{usage}");

    // Straight to Redis (--redis), with the deployment's Redis settings in a file.
    let r = &app.running.as_ref().unwrap().state.settings.redis;
    let config = tempfile::NamedTempFile::new().unwrap();
    let mode = format!("{:?}", r.mode).to_lowercase();
    std::fs::write(
        config.path(),
        format!(
            "[redis]\nmode = {mode:?}\nurl = {:?}\nnodes = {:?}\nsentinel_master = {:?}\nkey_prefix = {:?}\n",
            r.url, r.nodes, r.sentinel_master, r.key_prefix
        ),
    )
    .unwrap();
    let path = config.path().to_str().unwrap();
    let direct = [("HERALD_CONFIG", path), ("HERALD_LOG__FILTER", "error")];
    let (ok, out, err) = herald_tenant(
        &["--redis", "limits", "acme", "--set", "wait_burst=9"],
        &direct,
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("wait_burst") && l.contains(" 9 ")),
        "{out}"
    );
    assert_eq!(
        overrides().await,
        json!({"notify_per_sec": 7, "wait_burst": 9})
    );
    let (ok, out, err) = herald_tenant(&["--redis", "usage", "acme"], &direct).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("active_waiters       0 of "), "{out}");

    // Bad input fails with a message and writes nothing, either way.
    for (args, env) in [
        (
            &["limits", "acme", "--set", "notify_per_sec=fast"][..],
            &admin[..],
        ),
        (&["limits", "acme", "--set", "nonsense=1"], &admin),
        (&["limits", "nobody", "--set", "notify_per_sec=1"], &admin),
        (&["limits", "acme", "--set", "notify_per_sec"], &admin),
        (
            &["--redis", "limits", "acme", "--set", "notify_per_sec=fast"],
            &direct,
        ),
        (
            &["--redis", "limits", "acme", "--unset", "nonsense"],
            &direct,
        ),
        (
            &["--redis", "limits", "nobody", "--set", "notify_per_sec=1"],
            &direct,
        ),
    ] {
        let (ok, _, err) = herald_tenant(args, env).await;
        assert!(!ok && !err.is_empty(), "{args:?} fails with a message");
    }
    assert_eq!(
        overrides().await,
        json!({"notify_per_sec": 7, "wait_burst": 9})
    );
    app.stop().await;
}

/// On Redis Cluster the rate is checked by `rate_limit.lua` and the wait script gets the
/// other partitions' count from the caller; both are exercised here directly.
#[tokio::test]
async fn the_cluster_admission_path_checks_the_same_limits() {
    use herald::domain::{EventId, TenantName};
    use herald::limits::RateClass;
    use herald::store::scripts::{self, ActiveQuota, WaitArgs, WaitReply};

    let redis = RedisServer::start();
    let app = TestApp::start(settings(&redis)).await;
    let state = &app.running.as_ref().unwrap().state;
    let mut conn = state.redis.get();
    let tenant = TenantName::parse("acme").unwrap();
    let bucket = state.keys.rate_bucket(&tenant, RateClass::Wait);
    for left in [1, 0] {
        let verdict = scripts::rate_limit(&mut conn, &bucket, 1, 2).await.unwrap();
        assert_eq!(verdict, Ok(left));
    }
    let refusal = scripts::rate_limit(&mut conn, &bucket, 1, 2)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(refusal.remaining, 0);
    assert!((1..=1000).contains(&refusal.retry_after_ms), "{refusal:?}");

    let event = EventId::parse("c-1").unwrap();
    let partition = state.keys.partition_of(&tenant, &event);
    let register = |id: &'static str, counted_elsewhere: u64| {
        let (partition, event, tenant) = (&partition, &event, &tenant);
        let mut conn = state.redis.get();
        async move {
            let waiter = format!(
                r#"{{"id":"{id}","url":"http://127.0.0.1:9/","timeoutUrl":"http://127.0.0.1:9/","eventId":"c-1","timeout":"60s"}}"#
            );
            scripts::wait(
                &mut conn,
                &WaitArgs {
                    partition,
                    tenant,
                    event,
                    run: None,
                    field: &format!("|{id}"),
                    op_id: Some(id),
                    waiter_json: &waiter,
                    timeout_ms: 60_000,
                    op_ttl_secs: 60,
                    run_ttl_ms: 60_000,
                    max_waiters: 0,
                    trace: "",
                    history: herald::store::scripts::HistoryArgs::defaults(),
                    rate: None,
                    active: ActiveQuota {
                        max: 3,
                        summed: &[],
                        counted_elsewhere,
                    },
                    stored_full: false,
                    tombstone: None,
                },
            )
            .await
            .unwrap()
        }
    };
    // 1 here + 1 counted elsewhere < 3: admitted; then 2 here + 1 elsewhere = 3: full.
    assert!(matches!(register("w1", 1).await, WaitReply::Waiting { .. }));
    assert!(matches!(register("w2", 1).await, WaitReply::Waiting { .. }));
    assert!(matches!(
        register("w3", 1).await,
        WaitReply::TenantFull { count: 3 }
    ));
    assert_eq!(app.waiters("c-1").await.len(), 2);
    app.stop().await;
}

/// The benchmark's noisy-neighbour scenario, short: the quiet tenant's requests are all
/// admitted alone and during the flood; the noisy tenant's stay within its limit.
#[tokio::test]
async fn a_noisy_tenant_does_not_take_a_quiet_tenants_admissions() {
    let redis = RedisServer::start();
    let app = TestApp::start_role(settings(&redis), Role::Api).await;
    let quiet_token = app.tenant_token("quiet").await;
    let (limit, burst) = (40, 10);
    set_limits(
        &app,
        "acme",
        json!({"notify_per_sec": limit, "notify_burst": burst}),
    )
    .await;
    let window = Duration::from_millis(1500);
    let quiet = noisy::Load {
        token: quiet_token,
        per_sec: 40,
        duration: window,
    };
    let flood = noisy::Load {
        token: app.token.clone(),
        per_sec: 400,
        duration: window,
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let report = noisy::run(&client, &app.base, &quiet, &flood, (limit, burst)).await;
    eprintln!("{}", serde_json::to_string(&report).unwrap());
    for phase in [&report.quiet_solo, &report.quiet_with_noise] {
        assert_eq!(phase.admitted, phase.sent, "quiet tenant: {phase:?}");
    }
    assert!(
        report.noisy.admitted as f64 <= report.noisy_bound * 1.01,
        "noisy tenant: {:?}, bound {}",
        report.noisy,
        report.noisy_bound
    );
    assert!(
        report.noisy.refused > 0 && report.noisy.other == 0,
        "{:?}",
        report.noisy
    );
    app.stop().await;
}
