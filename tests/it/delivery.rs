//! Delivery: retries with the same message id, dead letters, 489, Retry-After, the
//! workflow step format, header handling, and the SSRF guard's loopback canary.

use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::json;

use crate::support::{test_settings, Receiver, RedisServer, TestApp};

/// A stream entry: id and (field, value) pairs.
type Entry = (String, Vec<(String, Vec<u8>)>);

fn dead_letters(redis: &RedisServer) -> Vec<Entry> {
    let mut conn = redis.client();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*:dlq:*").query(&mut conn).unwrap();
    let mut out = Vec::new();
    for k in keys {
        let entries: Vec<Entry> = redis::cmd("XRANGE")
            .arg(&k)
            .arg("-")
            .arg("+")
            .query(&mut conn)
            .unwrap();
        out.extend(entries);
    }
    out
}

fn field(entry: &[(String, Vec<u8>)], name: &str) -> String {
    entry
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_retried_with_the_same_message_id() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    let receiver = Receiver::start().await;
    receiver.script("/flaky", &[500, 503, 200], &[]);
    assert_eq!(
        app.wait("e", json!({"url": receiver.url("/flaky")}))
            .await
            .0,
        200
    );
    let (_, notified) = app.notify("e", "payload").await;
    let message_id = notified[0]["messageId"].as_str().unwrap().to_owned();
    let got = receiver.expect("/flaky", 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.at("/flaky").len(), 3, "no attempt after the 2xx");
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.header("upstash-message-id"), Some(message_id.as_str()));
        assert_eq!(r.header("upstash-retried"), Some(i.to_string().as_str()));
        assert_eq!(r.body_text(), "payload");
    }
    assert!(dead_letters(&redis).is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_attempts_goes_to_the_dead_letters() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.delivery.max_retries = 2;
    let app = TestApp::start(settings).await;
    let receiver = Receiver::start().await;
    receiver.script("/down", &[500], &[]);
    receiver.script(
        "/refuses",
        &[489],
        &[("Upstash-NonRetryable-Error", "true")],
    );
    assert_eq!(
        app.wait("e1", json!({"url": receiver.url("/down")}))
            .await
            .0,
        200
    );
    // Per-waiter override: no retries at all.
    let (status, _) = app
        .send(
            app.http
                .post(app.url("/v2/wait/e2"))
                .bearer_auth(&app.token)
                .header("Upstash-Retries", "0")
                .body(json!({"url": receiver.url("/once-down")}).to_string()),
        )
        .await;
    assert_eq!(status, 200);
    receiver.script("/once-down", &[502], &[]);
    assert_eq!(
        app.wait("e3", json!({"url": receiver.url("/refuses")}))
            .await
            .0,
        200
    );
    for e in ["e1", "e2", "e3"] {
        app.notify(e, "x").await;
    }
    receiver.expect("/down", 3).await; // 1 attempt + 2 retries
    receiver.expect("/once-down", 1).await;
    receiver.expect("/refuses", 1).await;
    let all_dead =
        crate::support::eventually(Duration::from_secs(10), || dead_letters(&redis).len() == 3)
            .await;
    assert!(all_dead, "{:?}", dead_letters(&redis));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.at("/down").len(),
        3,
        "exactly the configured attempts"
    );
    assert_eq!(receiver.at("/once-down").len(), 1);
    assert_eq!(
        receiver.at("/refuses").len(),
        1,
        "489 + NonRetryable is not retried"
    );
    let letters = dead_letters(&redis);
    let statuses: std::collections::BTreeSet<String> =
        letters.iter().map(|(_, e)| field(e, "s")).collect();
    assert_eq!(
        statuses,
        ["489", "500", "502"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    for (_, entry) in &letters {
        assert_eq!(field(entry, "b"), "x", "the dead letter keeps the body");
        assert!(field(entry, "r").contains("HTTP"));
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    let receiver = Receiver::start().await;
    receiver.script("/busy", &[429, 200], &[("Retry-After", "1")]);
    assert_eq!(
        app.wait("e", json!({"url": receiver.url("/busy")})).await.0,
        200
    );
    let started = Instant::now();
    app.notify("e", "x").await;
    receiver.expect("/busy", 2).await;
    // backoff_factor makes the computed backoff ~12 ms; Retry-After: 1 must win.
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_waiters_get_the_upstash_step_format_with_deduplicated_headers() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    let receiver = Receiver::start().await;
    let wf = receiver.url("/api/workflow");
    let wait_body = json!({
        "url": wf,
        "timeout": "20s",
        "timeoutUrl": wf,
        "timeoutHeaders": {
            "Upstash-Workflow-Init": ["false"],
            "Upstash-Workflow-RunId": ["wfr_abc"],
            "Upstash-Workflow-Runid": ["wfr_abc"],
            "Upstash-Workflow-Url": [wf],
            "Upstash-Forward-Upstash-Workflow-Sdk-Version": ["1"],
            "content-type": ["application/json"],
            "Upstash-Workflow-CallType": ["step"],
            "Host": ["evil.example"]
        },
        "step": {"stepId": 2, "stepType": "Wait", "stepName": "wait for payment", "concurrent": 1}
    });
    let (status, body) = app
        .send(
            app.http
                .post(app.url("/v2/wait/order-42"))
                .bearer_auth(&app.token)
                .header("Upstash-Workflow-RunId", "wfr_abc")
                .header("Upstash-Workflow-Runid", "wfr_abc")
                .body(wait_body.to_string()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, notified) = app.notify("order-42", r#"{"ok":true}"#).await;
    assert_eq!(notified[0]["workflowRunId"], "wfr_abc");
    let got = receiver.expect("/api/workflow", 1).await;
    let r = &got[0];
    assert_eq!(
        r.headers.get("upstash-workflow-runid").map(Vec::len),
        Some(1),
        "run id sent once"
    );
    assert_eq!(r.header("upstash-workflow-runid"), Some("wfr_abc"));
    assert_eq!(
        r.header("upstash-workflow-sdk-version"),
        Some("1"),
        "Upstash-Forward- prefix stripped"
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_ne!(r.header("host"), Some("evil.example"));
    let steps: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let steps = steps.as_array().unwrap();
    assert_eq!(steps.len(), 2);
    let b64 = base64::engine::general_purpose::STANDARD;
    let last: serde_json::Value =
        serde_json::from_slice(&b64.decode(steps[1]["body"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(last["stepId"], 2);
    assert_eq!(last["stepName"], "wait for payment");
    assert_eq!(last["stepType"], "Wait");
    assert_eq!(last["waitEventId"], "order-42");
    assert_eq!(last["timeout"], "20s");
    assert_eq!(last["waitTimeout"], false);
    assert_eq!(
        b64.decode(last["out"].as_str().unwrap()).unwrap(),
        br#"{"ok":true}"#
    );
    assert_eq!(steps[1]["messageId"], notified[0]["messageId"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_is_refused_unless_allow_listed() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.delivery.allow_cidrs = vec![];
    let app = TestApp::start(settings).await;
    let canary = Receiver::start().await;
    for (event, url) in [
        ("c1", canary.url("/canary")),
        ("c2", format!("http://localhost:{}/canary", canary.port)),
        (
            "c3",
            format!("http://[::ffff:127.0.0.1]:{}/canary", canary.port),
        ),
        ("c4", format!("http://2130706433:{}/canary", canary.port)),
    ] {
        assert_eq!(app.wait(event, json!({"url": url})).await.0, 200, "{url}");
        app.notify(event, "x").await;
    }
    let refused =
        crate::support::eventually(Duration::from_secs(10), || dead_letters(&redis).len() == 4)
            .await;
    assert!(refused, "{:?}", dead_letters(&redis));
    for (_, entry) in dead_letters(&redis) {
        assert!(
            field(&entry, "r").contains("blocked"),
            "{}",
            field(&entry, "r")
        );
        let job: serde_json::Value = serde_json::from_str(&field(&entry, "j")).unwrap();
        assert_eq!(job["a"], 1, "refused for good at the first attempt: {job}");
    }
    assert!(canary.all().is_empty(), "the canary received a connection");
    app.stop().await;
}

/// A connection refused is retried, whatever the URL contains: the failure is classified
/// by its type, not by matching words in its message (which holds the URL). The recorded
/// error leaves out the URL's query string.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_whatever_the_url_contains() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.delivery.max_retries = 2;
    let app = TestApp::start(settings).await;
    // Nothing listens there: every attempt's connection is refused.
    let port = crate::support::redis::free_port();
    for (event, url) in [
        ("in-path", format!("http://127.0.0.1:{port}/blocked:/hook")),
        (
            "in-query",
            format!("http://127.0.0.1:{port}/hook?next=blocked:1&sig=query-secret"),
        ),
    ] {
        assert_eq!(app.wait(event, json!({"url": url})).await.0, 200, "{url}");
        assert_eq!(app.notify(event, "x").await.0, 201);
    }
    let all_dead =
        crate::support::eventually(Duration::from_secs(20), || dead_letters(&redis).len() == 2)
            .await;
    assert!(all_dead, "{:?}", dead_letters(&redis));
    for (_, entry) in dead_letters(&redis) {
        let job: serde_json::Value = serde_json::from_str(&field(&entry, "j")).unwrap();
        assert_eq!(
            job["a"],
            3,
            "1 attempt + 2 retries, not dead-lettered at once: {job} {}",
            field(&entry, "r")
        );
        assert!(
            !field(&entry, "r").contains("query-secret"),
            "{}",
            field(&entry, "r")
        );
    }
    app.stop().await;
}

/// The job of message `message_id` while it sits in the retry schedule, if it does.
fn scheduled_job(
    redis: &RedisServer,
    keys: &herald::store::Keys,
    message_id: &str,
) -> Option<serde_json::Value> {
    let mut conn = redis.client();
    keys.all_partitions().find_map(|p| {
        let job: Option<String> = redis::cmd("HGET")
            .arg(p.retry_jobs())
            .arg(message_id)
            .query(&mut conn)
            .unwrap();
        job.map(|j| serde_json::from_str(&j).unwrap())
    })
}

/// Whether `token` is an HS256 JWT signed with `key`.
fn signed_with(token: &str, key: &str) -> bool {
    use hmac::{Hmac, Mac};
    let Some((input, signature)) = token.rsplit_once('.') else {
        return false;
    };
    let Ok(signature) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature) else {
        return false;
    };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    mac.verify_slice(&signature).is_ok()
}

/// Signing never fails open: while a tenant's signing key cannot be read (its fields are
/// gone, or Redis refuses the read of its record), its deliveries wait in the retry schedule, without an
/// attempt counted; once the key is back they leave signed with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_never_leaves_unsigned_when_the_signing_key_cannot_be_read() {
    // Standalone whatever the suite's topology: the second case changes the server's ACL.
    let redis = RedisServer::start_with(&[]);
    let settings = test_settings(&redis.url());
    let keys = herald::store::Keys::new(&settings.redis.key_prefix, settings.redis.partitions);
    let app = TestApp::start(settings).await;
    let receiver = Receiver::start().await;
    let other = app.tenant_token("other").await;
    let cases = [
        ("acme", app.token.clone(), "fields-gone"),
        ("other", other, "read-refused"),
    ];
    for (tenant, token, case) in cases {
        let tenant_key = keys.tenant(&herald::domain::TenantName::parse(tenant).unwrap());
        let mut conn = redis.client();
        let (current, next): (String, String) = redis::cmd("HMGET")
            .arg(&tenant_key)
            .arg("signing_current")
            .arg("signing_next")
            .query(&mut conn)
            .unwrap();
        let path = format!("/signed/{case}");
        let (status, _) = app
            .post(
                &format!("/v2/wait/{case}"),
                &token,
                json!({ "url": receiver.url(&path) }).to_string(),
            )
            .await;
        assert_eq!(status, 200);
        if case == "fields-gone" {
            let _: () = redis::cmd("HDEL")
                .arg(&tenant_key)
                .arg("signing_current")
                .arg("signing_next")
                .query(&mut conn)
                .unwrap();
        } else {
            // HMGET refused but on partition keys (an ACL selector): the record's read
            // fails, the scripts (which use HMGET too) still run.
            let prefix = &keys.meta()[..keys.meta().len() - ":meta".len()];
            let _: () = redis::cmd("ACL")
                .arg("SETUSER")
                .arg("default")
                .arg("-hmget")
                .arg(format!("(+hmget ~{prefix}:{{p*)"))
                .query(&mut conn)
                .unwrap();
        }
        let (status, notified) = app.post(&format!("/v2/notify/{case}"), &token, "x").await;
        assert_eq!(status, 201, "{notified}");
        let message_id = notified[0]["messageId"].as_str().unwrap().to_owned();
        // Put back into the retry schedule, again and again, without an attempt counted.
        let rescheduled = crate::support::eventually(Duration::from_secs(10), || {
            scheduled_job(&redis, &keys, &message_id).is_some_and(|j| j["d"].as_u64() >= Some(2))
        })
        .await;
        assert!(
            rescheduled,
            "{case}: the delivery is rescheduled while the key cannot be read; received: {:?}",
            receiver.at(&path)
        );
        assert!(
            receiver.at(&path).is_empty(),
            "{case}: nothing leaves unsigned: {:?}",
            receiver.at(&path)
        );
        assert_eq!(scheduled_job(&redis, &keys, &message_id).unwrap()["a"], 0);
        if case == "fields-gone" {
            let _: () = redis::cmd("HSET")
                .arg(&tenant_key)
                .arg("signing_current")
                .arg(&current)
                .arg("signing_next")
                .arg(&next)
                .query(&mut conn)
                .unwrap();
        } else {
            let _: () = redis::cmd("ACL")
                .arg("SETUSER")
                .arg("default")
                .arg("+hmget")
                .arg("clearselectors")
                .query(&mut conn)
                .unwrap();
        }
        let got = receiver.expect(&path, 1).await;
        let signature = got[0].header("upstash-signature").unwrap_or("");
        assert!(
            signed_with(signature, &current),
            "{case}: signed with the tenant's current key: {signature:?}"
        );
        assert_eq!(
            got[0].header("upstash-retried"),
            Some("0"),
            "{case}: no attempt was counted"
        );
    }
    assert!(dead_letters(&redis).is_empty());
    app.stop().await;
}
