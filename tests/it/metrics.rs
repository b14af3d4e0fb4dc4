//! `/metrics`: scraped as Prometheus text after real traffic; names follow Prometheus
//! conventions and no label holds an event id, run id, tenant or URL.

use std::collections::HashMap;
use std::time::Duration;

use herald::domain::{EventId, TenantName};
use serde_json::json;

use crate::support::{eventually_async, test_settings, Receiver, RedisServer, TestApp};

/// Series name with labels → value, from the text exposition format.
fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(app: &TestApp) -> (String, HashMap<String, f64>) {
    let response = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = response.text().await.unwrap();
    let parsed = parse(&text);
    (text, parsed)
}

fn at_least(series: &HashMap<String, f64>, name: &str, min: f64) -> bool {
    series.get(name).is_some_and(|v| *v >= min)
}

#[tokio::test]
async fn metrics_are_scraped_after_real_traffic() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.delivery.max_retries = 0;
    settings.telemetry.gauge_sample_secs = 1;
    let prefix = settings.redis.key_prefix.clone();
    let partitions = settings.redis.partitions;
    let app = TestApp::start(settings).await;
    let receiver = Receiver::start().await;
    receiver.script("/down", &[500], &[]);
    let waiting_url = receiver.url("/metrics-secret-path");

    // Traffic: delivered notify, one that finds nobody, a saved lookback, a failed and
    // dead-lettered delivery, a timeout, a waiter that stays.
    app.wait("metrics-e1", json!({"url": receiver.url("/ok")}))
        .await;
    app.notify("metrics-e1", "x").await;
    app.notify("metrics-nobody", "x").await;
    app.post("/v2/notify/wfr_metrics/metrics-saved", &app.token, "x")
        .await;
    app.wait("metrics-dead", json!({"url": receiver.url("/down")}))
        .await;
    app.notify("metrics-dead", "x").await;
    app.wait(
        "metrics-late",
        json!({"url": receiver.url("/never"), "timeout": "1s", "timeoutUrl": receiver.url("/late")}),
    )
    .await;
    app.wait("metrics-stays", json!({"url": waiting_url})).await;
    // A client cannot mint label values with methods or paths of its own.
    let odd = app
        .http
        .request(
            reqwest::Method::from_bytes(b"FROBNICATE").unwrap(),
            app.url("/no-such-route/metrics-e1"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(odd.status(), 404);
    receiver.expect("/ok", 1).await;
    receiver.expect("/down", 1).await;
    receiver.expect("/late", 1).await;

    let keys = herald::store::Keys::new(&prefix, partitions);
    let acme = TenantName::parse("acme").unwrap();
    let stays = keys
        .partition_of(&acme, &EventId::parse("metrics-stays").unwrap())
        .index;
    let saved = keys
        .partition_of(&acme, &EventId::parse("metrics-saved").unwrap())
        .index;

    let last = std::cell::RefCell::new(String::new());
    let all_there = eventually_async(Duration::from_secs(20), || {
        let (app, last) = (&app, &last);
        async move {
            let (text, m) = scrape(app).await;
            *last.borrow_mut() = text;
            at_least(&m, r#"herald_http_requests_total{method="POST",route="/v2/notify/{eventId}",status="201"}"#, 3.0)
                && at_least(&m, r#"herald_http_requests_total{method="POST",route="/v2/wait/{eventId}",status="200"}"#, 4.0)
                && at_least(&m, r#"herald_http_requests_total{method="OTHER",route="unmatched",status="404"}"#, 1.0)
                && m.keys().any(|k| k.starts_with(r#"herald_http_request_duration_seconds_bucket{method="POST",route="/v2/notify/{eventId}""#))
                && at_least(&m, r#"herald_notifies_total{outcome="delivered"}"#, 2.0)
                && at_least(&m, r#"herald_notifies_total{outcome="nobody_waiting"}"#, 1.0)
                && at_least(&m, r#"herald_notifies_total{outcome="saved"}"#, 1.0)
                && at_least(&m, r#"herald_notify_fanout_waiters_bucket{le="1"}"#, 1.0)
                && at_least(&m, r#"herald_waits_total{outcome="waiting"}"#, 4.0)
                && at_least(&m, r#"herald_delivery_attempts_total{kind="event",outcome="delivered"}"#, 1.0)
                && at_least(&m, r#"herald_delivery_attempts_total{kind="event",outcome="failed"}"#, 1.0)
                && at_least(&m, r#"herald_delivery_attempts_total{kind="timeout",outcome="delivered"}"#, 1.0)
                && at_least(&m, r#"herald_delivery_attempt_duration_seconds_count{outcome="delivered"}"#, 2.0)
                && at_least(&m, r#"herald_notify_to_delivery_seconds_count{kind="event"}"#, 1.0)
                && at_least(&m, "herald_timeouts_total", 1.0)
                && at_least(&m, "herald_timeout_lateness_seconds_count", 1.0)
                && at_least(&m, r#"herald_dead_letters_total{reason="exhausted"}"#, 1.0)
                // Gauges, sampled by the scheduler (other Heralds of this test process set
                // them too, so wait until ours is the last sample).
                && at_least(&m, &format!(r#"herald_waiters{{partition="{stays}"}}"#), 1.0)
                && at_least(&m, &format!(r#"herald_saved_notifications{{partition="{saved}"}}"#), 1.0)
                // The saved notification (and its history) are stored bytes of its partition.
                && at_least(&m, &format!(r#"herald_stored_bytes{{partition="{saved}"}}"#), 100.0)
                && m.contains_key(r#"herald_stream_length{partition="0"}"#)
                && m.contains_key(r#"herald_stream_pending{partition="0"}"#)
                && m.contains_key(r#"herald_stream_lag{partition="0"}"#)
                && m.contains_key(r#"herald_delivery_retries_scheduled{partition="0"}"#)
        }
    })
    .await;
    let last = last.into_inner();
    assert!(all_there, "missing series in:\n{last}");

    // Conventions: every series is herald_*, base units, and HELP/TYPE are given.
    for line in last
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(line.starts_with("herald_"), "{line}");
    }
    assert!(last.contains("# TYPE herald_http_requests_total counter"));
    assert!(last.contains("# HELP herald_waiters "));
    // No unbounded label: no event id, run id, tenant, URL or path of this test.
    for needle in [
        "metrics-e1",
        "metrics-stays",
        "wfr_metrics",
        "acme",
        "secret-path",
        "127.0.0.1",
    ] {
        assert!(!last.contains(needle), "{needle} is in a label:\n{last}");
    }

    // Redis errors are counted.
    drop(redis);
    let (status, _) = app.notify("metrics-e1", "x").await;
    assert_eq!(status, 503, "{:?}", app.notify("metrics-e1", "x").await);
    let (text, m) = scrape(&app).await;
    assert!(
        at_least(&m, r#"herald_redis_errors_total{kind="unavailable"}"#, 1.0),
        "{text}"
    );
    app.stop().await;
}

#[tokio::test]
async fn worker_processes_serve_metrics_and_sample_the_gauges() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.telemetry.gauge_sample_secs = 1;
    let app = TestApp::start_role(settings, herald::app::Role::Worker).await;
    let sampled = eventually_async(Duration::from_secs(10), || async {
        let (_, m) = scrape(&app).await;
        m.keys().any(|k| k.starts_with("herald_stream_length{"))
    })
    .await;
    assert!(sampled, "{}", scrape(&app).await.0);
    // Only the operator surface: the tenant API is not served by workers.
    assert_eq!(app.get("/v2/waiters/e", &app.token).await.0, 404);
    assert_eq!(app.get("/openapi.json", "").await.0, 404);
    app.stop().await;
}
