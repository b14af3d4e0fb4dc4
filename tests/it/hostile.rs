//! Hostile tenants (and clients) against a shared Herald: each attack, and a figure that
//! shows the other tenants unaffected. Runs on the suite's topology (standalone, and Redis
//! Cluster in scripts/test).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::process::HeraldProcess;
use crate::support::{test_settings, RedisServer, TestApp};

/// A client address as the proxy in front of Herald reports it.
fn from(app: &TestApp, ip: &str, path: &str, token: &str) -> reqwest::RequestBuilder {
    app.http
        .get(app.url(path))
        .bearer_auth(token)
        .header("x-forwarded-for", ip)
}

#[tokio::test]
async fn failed_authentications_are_throttled_per_address_and_others_proceed() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.server.auth_failures_per_minute = 5;
    settings.server.client_ip_header = "x-forwarded-for".into();
    let app = TestApp::start(settings).await;
    let mut statuses = Vec::new();
    for i in 0..20 {
        let (status, _) = app
            .send(from(
                &app,
                "10.0.0.66",
                "/v2/waiters/e",
                &format!("guess-{i}"),
            ))
            .await;
        statuses.push(status);
    }
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(&statuses[..5], &[401; 5], "{statuses:?}");
    assert_eq!(
        refused, 15,
        "every guess after the 5th is refused unseen: {statuses:?}"
    );
    // The right token from that address is refused too for the rest of the minute; the
    // tenant from its own address is not.
    let (status, _) = app
        .send(from(&app, "10.0.0.66", "/v2/waiters/e", &app.token))
        .await;
    assert_eq!(status, 429);
    let mut ok = 0;
    for _ in 0..20 {
        let (status, _) = app
            .send(from(&app, "10.0.0.7", "/v2/waiters/e", &app.token))
            .await;
        ok += usize::from(status == 200);
    }
    println!(
        "auth throttle: attacker 20 guesses -> {refused} refused with 429; victim 20/20 -> {ok} ok"
    );
    assert_eq!(ok, 20);
    app.stop().await;
}

#[tokio::test]
async fn the_admin_token_is_never_taken_from_the_query_string() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    let admin = "test-admin-token";
    let (status, _) = app
        .send(
            app.http
                .get(app.url(&format!("/admin/tenants?qstash_token={admin}"))),
        )
        .await;
    assert_eq!(status, 401);
    let (status, _) = app
        .send(app.http.get(app.url("/admin/tenants")).bearer_auth(admin))
        .await;
    assert_eq!(status, 200);
    app.stop().await;
}

#[tokio::test]
async fn a_revoked_or_rotated_token_stops_at_once_where_it_changed_and_within_a_second_elsewhere() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    // Long enough that "at once" cannot be the cache expiring.
    settings.server.auth_cache_ms = 900;
    let app = TestApp::start(settings).await;
    let replica = app.replica(herald::app::Role::Api).await;
    // Both replicas have the token cached.
    for a in [&app, &replica] {
        let (status, _) = a.get("/v2/waiters/e", &app.token).await;
        assert_eq!(status, 200);
    }
    let (status, _) = app
        .send(
            app.http
                .delete(app.url("/admin/tenants/acme/token"))
                .bearer_auth("test-admin-token"),
        )
        .await;
    assert!((200..300).contains(&status), "{status}");
    let revoked = Instant::now();
    // The process that revoked it refuses it on the very next request.
    let (status, _) = app.get("/v2/waiters/e", &app.token).await;
    assert_eq!(status, 401, "the revoking process still accepted the token");
    let mut stopped = [None, None];
    while revoked.elapsed() < Duration::from_secs(10) && stopped.iter().any(Option::is_none) {
        for (i, a) in [&app, &replica].iter().enumerate() {
            if stopped[i].is_none() && a.get("/v2/waiters/e", &app.token).await.0 == 401 {
                stopped[i] = Some(revoked.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("revocation: refused after {stopped:?} on the two replicas");
    for s in stopped {
        let s = s.expect("the token stops working");
        assert!(s <= Duration::from_secs(1), "{s:?}");
    }
    // Rotated through the other process: refused there at once, the new token works.
    let token = app.tenant_token("acme").await;
    assert_eq!(replica.get("/v2/waiters/e", &token).await.0, 200, "cached");
    let (status, rotated) = replica
        .post("/admin/tenants/acme/token", "test-admin-token", "")
        .await;
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(
        replica.get("/v2/waiters/e", &token).await.0,
        401,
        "rotated here"
    );
    let new_token = rotated["token"].as_str().unwrap();
    assert_eq!(replica.get("/v2/waiters/e", new_token).await.0, 200);
    replica.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn a_trickling_request_gets_408_and_other_tenants_proceed() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.server.read_timeout_ms = 500;
    let app = TestApp::start(settings).await;
    let other = app.tenant_token("initech").await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let token = app.token.clone();
    let digest = redis.digest();
    let slow = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "POST /v2/notify/slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 1000\r\n\r\nab"
        )
        .unwrap();
        let started = Instant::now();
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        (started.elapsed(), reply)
    });
    // Meanwhile another tenant is served normally.
    let mut ok = 0;
    for _ in 0..10 {
        let (status, _) = app
            .send(
                app.http
                    .post(app.url("/v2/notify/other"))
                    .bearer_auth(&other)
                    .body("x"),
            )
            .await;
        ok += usize::from(status == 201);
    }
    let (took, reply) = slow.await.unwrap();
    println!(
        "trickling body: answered after {took:?}: {}; other tenant 10 notifies -> {ok} ok",
        reply.lines().next().unwrap_or("")
    );
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(ok, 10);
    // Nothing was stored for the slow request (the other tenant's notifies found nobody
    // waiting and wrote only their history).
    let mut conn = redis.client();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*slow*").query(&mut conn).unwrap();
    assert!(keys.is_empty(), "{keys:?} ({digest})");
    app.stop().await;
}

#[tokio::test]
async fn oversized_steps_and_header_maps_are_refused_and_nothing_is_written() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    let digest = redis.digest();
    let deep = (0..20).fold(json!(1), |v, _| json!([v]));
    let cases = [
        json!({"url": "http://127.0.0.1:1/x", "workflowRunId": "wfr_1",
               "step": {"stepId": 1, "stepName": "s", "x": "a".repeat(20_000)}}),
        json!({"url": "http://127.0.0.1:1/x", "workflowRunId": "wfr_1",
               "step": {"stepId": 1, "stepName": "s", "x": deep}}),
        json!({"url": "http://127.0.0.1:1/x", "headers": {"X-Big": "a".repeat(20_000)}}),
        json!({"url": "http://127.0.0.1:1/x", "timeoutHeaders": {"X-Big": ["a".repeat(9_000), "b".repeat(9_000)]}}),
    ];
    for body in cases {
        let (status, reply) = app.wait("e-big", body).await;
        assert_eq!(status, 400, "{reply}");
        assert!(
            reply["error"].as_str().unwrap().contains("at most"),
            "{reply}"
        );
    }
    assert_eq!(redis.digest(), digest, "nothing was written");
    app.stop().await;
}

/// VmHWM (peak resident set) of a process, KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_bounded_in_bytes_however_large_the_event() {
    let redis = RedisServer::start();
    let settings = test_settings(&redis.url());
    let mut env = vec![
        (
            "HERALD_REDIS__KEY_PREFIX",
            settings.redis.key_prefix.clone(),
        ),
        ("HERALD_SERVER__MAX_READ_BYTES", (1 << 20).to_string()),
        ("HERALD_SERVER__ADMIN_TOKEN", "adm".into()),
        ("HERALD_LIMITS__READ_PER_SEC", "0".into()),
        // 200 reads of a megabyte each queue in Redis for a while on this machine.
        ("HERALD_REDIS__RESPONSE_TIMEOUT_MS", "20000".into()),
    ];
    match settings.redis.mode {
        herald::config::RedisMode::Standalone => {
            env.push(("HERALD_REDIS__URL", settings.redis.url.clone()))
        }
        mode => {
            env.push(("HERALD_REDIS__MODE", format!("{mode:?}").to_lowercase()));
            env.push(("HERALD_REDIS__NODES", format!("{:?}", settings.redis.nodes)));
            env.push((
                "HERALD_REDIS__SENTINEL_MASTER",
                settings.redis.sentinel_master.clone(),
            ));
        }
    }
    let mut herald = HeraldProcess::start(&env).await;
    // Above the 20 s response timeout this Herald is given.
    let http = crate::support::bounded_http_client(Duration::from_secs(60));
    let created: Value = http
        .post(format!("{}/admin/tenants", herald.base))
        .bearer_auth("adm")
        .body(r#"{"name":"big"}"#)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    // The largest waiters a tenant can register: timeout bodies near the 1 MiB body cap.
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(vec![7u8; 600 * 1024]);
    let count = 24;
    for i in 0..count {
        let r = http
            .post(format!("{}/v2/wait/big-event", herald.base))
            .bearer_auth(&token)
            .body(json!({"url": format!("http://127.0.0.1:1/{i}"), "timeoutBody": body, "timeout": "1h"}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Every waiter exactly once, a bounded page at a time.
    let mut seen = std::collections::HashSet::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    for _ in 0..100 {
        let mut url = format!("{}/v2/waiters/big-event", herald.base);
        if let Some(c) = &cursor {
            url.push_str(&format!("?cursor={c}"));
        }
        let r = http.get(url).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), 200);
        cursor = r
            .headers()
            .get("herald-next-cursor")
            .map(|v| v.to_str().unwrap().to_owned());
        let page: Vec<Value> = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert!(
            page.len() <= 2,
            "a page holds about 1 MiB of waiters: {}",
            page.len()
        );
        pages += 1;
        for w in page {
            seen.insert(w["url"].as_str().unwrap().to_owned());
        }
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(seen.len(), count, "{pages} pages");
    // 200 parallel first-page reads: the process's peak memory grows by about 200 pages.
    let before = peak_rss_kib(herald.pid());
    let reads: Vec<_> = (0..200)
        .map(|_| {
            let (http, url, token) = (
                http.clone(),
                format!("{}/v2/waiters/big-event", herald.base),
                token.clone(),
            );
            tokio::spawn(async move {
                let r = http.get(url).bearer_auth(token).send().await?;
                let status = r.status().as_u16();
                let text = if status == 200 {
                    String::new()
                } else {
                    r.text().await?
                };
                Ok::<_, reqwest::Error>((status, text))
            })
        })
        .collect();
    let mut refused = Vec::new();
    for r in reads {
        let (status, text) = r.await.unwrap().expect("every read is answered");
        if status != 200 {
            refused.push(format!("{status} {text}"));
        }
    }
    if !refused.is_empty() {
        let logged: Vec<String> = herald
            .logs()
            .into_iter()
            .filter(|l| l.contains("\"WARN\"") || l.contains("\"ERROR\""))
            .collect();
        panic!(
            "{} of 200 parallel reads refused: {:?}\nherald warned: {:?}",
            refused.len(),
            &refused[..refused.len().min(3)],
            &logged[logged.len().saturating_sub(10)..]
        );
    }
    let after = peak_rss_kib(herald.pid());
    println!(
        "bounded reads: {count} waiters of 800 KiB in {pages} pages; 200 parallel reads: peak RSS {before} -> {after} KiB (+{} MiB; unbounded, each read would load all {} MiB)",
        (after.saturating_sub(before)) / 1024,
        count * 800 / 1024
    );
    assert!(
        after.saturating_sub(before) < 1024 * 1024,
        "peak RSS grew by {} KiB",
        after - before
    );
    herald.stop().await;
}

#[tokio::test]
async fn the_operator_surface_can_live_on_its_own_listener() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.server.operator_listen = "127.0.0.1:0".into();
    let app = TestApp::start(settings).await;
    let operator = format!(
        "http://{}",
        app.running
            .as_ref()
            .unwrap()
            .operator_addr
            .expect("an operator listener")
    );
    for path in ["/admin/tenants", "/metrics", "/healthz"] {
        let (status, _) = app
            .send(app.http.get(app.url(path)).bearer_auth("test-admin-token"))
            .await;
        assert_eq!(status, 404, "{path} is not on the tenant listener");
        let r = app
            .http
            .get(format!("{operator}{path}"))
            .bearer_auth("test-admin-token")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path} is on the operator listener");
    }
    let (status, _) = app.get("/v2/waiters/e", &app.token).await;
    assert_eq!(status, 200);
    let r = app
        .http
        .get(format!("{operator}/v2/waiters/e"))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "tenant routes are not on the operator listener"
    );
    app.stop().await;
}

#[tokio::test]
async fn concurrent_signing_key_rotations_lose_no_key() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    let rotations: Vec<_> = (0..20)
        .map(|_| {
            let (http, url, token) = (
                app.http.clone(),
                app.url("/v2/keys/rotate"),
                app.token.clone(),
            );
            tokio::spawn(async move {
                let r = http.post(url).bearer_auth(token).send().await.unwrap();
                let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
                (
                    v["current"].as_str().unwrap().to_owned(),
                    v["next"].as_str().unwrap().to_owned(),
                )
            })
        })
        .collect();
    let mut replies = Vec::new();
    for r in rotations {
        replies.push(r.await.unwrap());
    }
    // Applied one after the other: every reply's next key became exactly one later
    // reply's current key (or is the final next key); no two replies share a current key.
    let currents: std::collections::HashSet<&String> = replies.iter().map(|(c, _)| c).collect();
    assert_eq!(
        currents.len(),
        replies.len(),
        "two rotations promoted the same key: {replies:?}"
    );
    let (_, now) = app.get("/v2/keys", &app.token).await;
    for (_, next) in &replies {
        assert!(
            currents.contains(next) || now["next"] == next.as_str(),
            "the key {next} handed out by a rotation was lost"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn consumers_of_gone_workers_are_removed() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.delivery.consumer_idle_secs = 1;
    settings.delivery.reclaim_idle_secs = 4;
    let keys = herald::store::Keys::new(&settings.redis.key_prefix, settings.redis.partitions);
    let app = TestApp::start(settings).await;
    let stream = keys.partition(0).deliveries();
    let mut conn = redis.client();
    // The consumer of a worker that is gone.
    let _: i64 = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(&stream)
        .arg("herald")
        .arg("ghost-worker")
        .query(&mut conn)
        .unwrap();
    let names = |conn: &mut crate::support::redis::InspectConn| -> Vec<String> {
        let info: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&stream)
            .arg("herald")
            .query(conn)
            .unwrap();
        info.iter()
            .filter_map(|c| redis::from_redis_value::<String>(c.get("name")?.clone()).ok())
            .collect()
    };
    assert!(names(&mut conn).contains(&"ghost-worker".to_owned()));
    let gone = crate::support::eventually(Duration::from_secs(15), || {
        !names(&mut conn).contains(&"ghost-worker".to_owned())
    })
    .await;
    assert!(
        gone,
        "the idle consumer is still there: {:?}",
        names(&mut conn)
    );
    app.stop().await;
}

#[tokio::test]
async fn a_redis_without_herald_data_is_refused_unless_initialised() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.redis.initialize = false;
    let refused = herald::app::start(settings.clone(), herald::app::Role::All).await;
    let error = format!("{:#}", refused.err().expect("refused"));
    assert!(error.contains("holds no Herald data"), "{error}");
    settings.redis.initialize = true;
    let app = TestApp::start(settings.clone()).await;
    app.stop().await;
    // Initialised: later starts need no override.
    settings.redis.initialize = false;
    let app = TestApp::start(settings.clone()).await;
    app.stop().await;
    // The data is lost (an empty restore): refused again.
    let mut conn = redis.client();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*", settings.redis.key_prefix))
        .query(&mut conn)
        .unwrap();
    for k in keys {
        let _: i64 = redis::cmd("DEL").arg(&k).query(&mut conn).unwrap();
    }
    let refused = herald::app::start(settings, herald::app::Role::All).await;
    assert!(refused.is_err());
}

#[tokio::test]
async fn outbound_ranges_opened_for_one_tenant_are_opened_for_it_only() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.delivery.allow_cidrs = Vec::new();
    settings.limits.cache_ms = 0;
    let app = TestApp::start(settings).await;
    let other = app.tenant_token("initech").await;
    let receiver = crate::support::Receiver::start().await;
    let put = |body: Value| {
        app.http
            .put(app.url("/admin/tenants/acme/limits"))
            .bearer_auth("test-admin-token")
            .body(body.to_string())
    };
    let (status, reply) = app.send(put(json!({"allow_cidrs": "127.0.0.0/8"}))).await;
    assert_eq!(status, 200, "{reply}");
    let (status, reply) = app.send(put(json!({"allow_cidrs": "127.0.0.0/99"}))).await;
    assert_eq!(status, 400, "{reply}");
    for (token, path) in [(&app.token, "/acme"), (&other, "/initech")] {
        let (status, _) = app
            .post(
                "/v2/wait/outbound",
                token,
                json!({"url": receiver.url(path), "retries": 0}).to_string(),
            )
            .await;
        assert_eq!(status, 200);
        let (status, _) = app.post("/v2/notify/outbound", token, "x").await;
        assert_eq!(status, 201);
    }
    receiver.expect("/acme", 1).await;
    let refused = crate::support::eventually_async(Duration::from_secs(10), || async {
        let (_, page) = app.get("/v2/dlq", &other).await;
        page["messages"].as_array().is_some_and(|m| !m.is_empty())
    })
    .await;
    assert!(
        refused,
        "the other tenant's delivery to loopback is refused"
    );
    let (_, page) = app.get("/v2/dlq", &other).await;
    assert!(page.to_string().contains("blocked"), "{page}");
    assert!(receiver.at("/initech").is_empty());
    // A port allow list: the receiver's port is not on it.
    let (status, _) = app
        .send(put(
            json!({"allow_cidrs": "127.0.0.0/8", "allow_ports": "1"}),
        ))
        .await;
    assert_eq!(status, 200);
    app.post(
        "/v2/wait/ported",
        &app.token,
        json!({"url": receiver.url("/ported"), "retries": 0}).to_string(),
    )
    .await;
    app.post("/v2/notify/ported", &app.token, "x").await;
    let refused = crate::support::eventually_async(Duration::from_secs(10), || async {
        let (_, page) = app.get("/v2/dlq?eventId=ported", &app.token).await;
        page.to_string().contains("port")
    })
    .await;
    assert!(refused);
    assert!(receiver.at("/ported").is_empty());
    app.stop().await;
}

/// Keys of the test's prefix whose name holds `fragment`.
fn keys_with(redis: &RedisServer, fragment: &str) -> Vec<String> {
    redis.keys(&format!("*{fragment}*"))
}

#[tokio::test]
async fn a_tenant_at_its_stored_bytes_quota_gets_422_for_each_write_while_another_proceeds() {
    let redis = RedisServer::start();
    let receiver = crate::support::Receiver::start().await;
    let mut settings = test_settings(&redis.url());
    // A delivered waiter's record stays in the event's history (charged) until it expires.
    settings.history.ttl_secs = 2;
    let app = TestApp::start(settings).await;
    let globex = app.tenant_token("globex").await;
    let (status, body) = app
        .send(
            app.http
                .put(app.url("/admin/tenants/acme/limits"))
                .bearer_auth("test-admin-token")
                .body(json!({"stored_bytes": 32768}).to_string()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let waiter = |pad: &str| json!({"url": receiver.url("/acme"), "timeout": "1h", "headers": {"x-pad": [pad]}});
    let pad = "p".repeat(4000);

    // Fill: waiters of about 4 KiB each, until the quota refuses one.
    let mut filled = 0;
    let refusal = loop {
        assert!(filled < 40, "the quota never refused");
        let (status, body) = app.wait(&format!("fill-{filled}"), waiter(&pad)).await;
        if status == 422 {
            break body;
        }
        assert_eq!(status, 200, "{body}");
        filled += 1;
    };
    let text = refusal["error"].as_str().unwrap();
    assert!(
        text.contains("stored_bytes") && text.contains("32768"),
        "{text}"
    );
    let at_quota = app.stored_bytes("acme").await;
    println!("stored_bytes 32768: {filled} waiters of ~4 KiB admitted, then 422; account {at_quota} bytes");
    assert!((7..=9).contains(&filled), "{filled} waiters admitted");
    assert!(at_quota >= 32768 * 9 / 10, "{at_quota}");

    // Each kind of write that would store more: 422, nothing written.
    let attempts: Vec<(&str, u16, Value)> = vec![
        {
            let (s, b) = app.wait("new-event", waiter("small")).await;
            ("wait", s, b)
        },
        {
            let (s, b) = app
                .send(
                    app.http
                        .post(app.url("/v2/wait/new-idem"))
                        .bearer_auth(&app.token)
                        .header("Idempotency-Key", "k1")
                        .header("content-type", "application/json")
                        .body(waiter("small").to_string()),
                )
                .await;
            ("wait with Idempotency-Key", s, b)
        },
        {
            let (s, b) = app
                .post("/v2/notify/run-1/new-event", &app.token, "saved?")
                .await;
            ("lookback notify (would save)", s, b)
        },
        {
            let (s, b) = app.post("/v2/notify/nobody-here", &app.token, "x").await;
            ("broadcast notify (nobody waiting: history)", s, b)
        },
        {
            let body = json!([{ "destination": receiver.url("/wf"), "headers": {
                "upstash-workflow-init": "true", "upstash-workflow-runid": "wfr_full",
                "upstash-workflow-url": receiver.url("/wf"), "content-type": "application/json"},
                "body": "{}" }]);
            let (s, b) = app.post("/v2/batch", &app.token, body.to_string()).await;
            ("workflow trigger", s, b)
        },
    ];
    for (what, status, body) in &attempts {
        assert_eq!(*status, 422, "{what}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("stored_bytes"),
            "{what}: {body}"
        );
    }
    for fragment in ["new-event", "new-idem", "nobody-here", "wfr_full", "run-1"] {
        assert_eq!(
            keys_with(&redis, fragment),
            Vec::<String>::new(),
            "{fragment}"
        );
    }
    assert_eq!(
        app.stored_bytes("acme").await,
        at_quota,
        "refused writes changed nothing"
    );

    // Another tenant proceeds with every kind meanwhile.
    let other_waiter = json!({"url": receiver.url("/globex"), "timeout": "1h"});
    let mut ok = 0;
    for i in 0..5 {
        let (s, _) = app
            .send(
                app.http
                    .post(app.url(&format!("/v2/wait/g-{i}")))
                    .bearer_auth(&globex)
                    .header("content-type", "application/json")
                    .body(other_waiter.to_string()),
            )
            .await;
        ok += usize::from(s == 200);
        let (s, b) = app
            .post(&format!("/v2/notify/g-run/g-{i}"), &globex, "x")
            .await;
        assert!(s == 200 || s == 201, "{s} {b}");
        ok += 1;
        let (s, b) = app.post("/v2/notify/g-nobody", &globex, "x").await;
        assert_eq!(s, 201, "nobody waiting: {b}");
        ok += 1;
    }
    println!("while acme is at its quota, globex: {ok} of 15 writes admitted");
    assert_eq!(ok, 15);

    // A notify that delivers acme's waiters is not refused; the space comes back once the
    // delivered waiter's history record expires.
    let (status, body) = app.notify("fill-0", "go").await;
    assert_eq!(status, 201);
    assert_eq!(
        body.as_array().map(Vec::len),
        Some(1),
        "one waiter delivered"
    );
    receiver.expect("/acme", 1).await;
    let freed = crate::support::eventually_async(Duration::from_secs(15), || async {
        app.stored_bytes("acme").await + 4000 < at_quota
    })
    .await;
    let after = app.stored_bytes("acme").await;
    assert!(freed, "{after} of {at_quota} after delivering one waiter");
    let (status, body) = app.wait("new-event", waiter("small")).await;
    assert_eq!(status, 200, "space freed: {body}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_run_without_state_writes_one_small_record_and_still_refuses_it() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    let partitions = app.running.as_ref().unwrap().state.keys.partitions() as usize;
    let data_keys = |redis: &RedisServer| redis.keys("*:cancelled:*");
    let before = data_keys(&redis).len();
    for i in 0..20 {
        let (status, body) = app
            .send(
                app.http
                    .delete(app.url(&format!("/v2/workflows/runs/wfr_gone-{i}")))
                    .bearer_auth(&app.token),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let tombstones = data_keys(&redis);
    println!(
        "20 cancels of runs without state: {} tombstones ({partitions} partitions; one per partition each before)",
        tombstones.len() - before
    );
    assert_eq!(tombstones.len() - before, 20, "{tombstones:?}");
    let mut conn = redis.client();
    for key in &tombstones {
        let bytes: u64 = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .query(&mut conn)
            .unwrap();
        assert!(bytes <= 128, "{key}: {bytes} bytes");
    }
    // The one tombstone refuses the run's waits and lookback notifies on events of every
    // partition.
    for e in 0..(partitions * 3) {
        let (status, body) = app
            .send(
                app.http
                    .post(app.url(&format!("/v2/wait/ev-{e}")))
                    .bearer_auth(&app.token)
                    .header("Upstash-Workflow-RunId", "wfr_gone-0")
                    .body(json!({"url": "http://127.0.0.1:9/", "timeout": "1h"}).to_string()),
            )
            .await;
        assert_eq!(status, 409, "ev-{e}: {body}");
        let (status, body) = app
            .post(&format!("/v2/notify/wfr_gone-1/ev-{e}"), &app.token, "x")
            .await;
        assert_eq!(status, 409, "ev-{e}: {body}");
    }
    assert!(keys_with(&redis, ":ev:").is_empty() && keys_with(&redis, ":saved:").is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_racing_a_cancel_leave_nothing_of_the_run() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    let events = 48;
    for round in 0..5 {
        let run = format!("wfr_race-{round}");
        let waits = (0..events).map(|e| {
            let (app, run) = (&app, &run);
            async move {
                if e % 2 == 0 {
                    app.send(
                        app.http
                            .post(app.url(&format!("/v2/wait/race-{e}")))
                            .bearer_auth(&app.token)
                            .header("Upstash-Workflow-RunId", run.as_str())
                            .body(
                                json!({"url": "http://127.0.0.1:9/", "timeout": "1h"}).to_string(),
                            ),
                    )
                    .await
                    .0
                } else {
                    app.post(&format!("/v2/notify/{run}/race-{e}"), &app.token, "x")
                        .await
                        .0
                }
            }
        });
        let cancel = app.send(
            app.http
                .delete(app.url(&format!("/v2/workflows/runs/{run}")))
                .bearer_auth(&app.token),
        );
        let (statuses, (cancelled, _)) =
            tokio::join!(futures_util::future::join_all(waits), cancel);
        assert_eq!(cancelled, 200);
        assert!(
            statuses.iter().all(|s| [200, 201, 409].contains(s)),
            "{statuses:?}"
        );
        // Whatever each answered, nothing of the run is left once the cancel returned.
        let left: Vec<String> = keys_with(&redis, &format!("{run}|"))
            .into_iter()
            .chain(keys_with(&redis, &format!(":run:acme:{run}")))
            .collect();
        assert_eq!(left, Vec::<String>::new(), "round {round}: {statuses:?}");
        for e in (0..events).step_by(2) {
            let waiters = app.waiters(&format!("race-{e}")).await;
            assert!(waiters.is_empty(), "round {round}, race-{e}: {waiters:?}");
        }
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_reply_carries_at_most_max_read_bytes_of_waiter_records() {
    let redis = RedisServer::start();
    let receiver = crate::support::Receiver::start().await;
    let mut settings = test_settings(&redis.url());
    settings.server.max_read_bytes = 64 * 1024;
    let app = TestApp::start(settings).await;
    let pad = "v".repeat(8 * 1024);
    let waiters = 40;
    for i in 0..waiters {
        let body =
            json!({"url": receiver.url("/big"), "timeout": "1h", "headers": {"x-pad": [pad]}});
        // Half are one run's waiters (the lookback path), half plain (the broadcast path).
        let mut request = app
            .http
            .post(app.url(if i % 2 == 0 {
                "/v2/wait/wide"
            } else {
                "/v2/wait/wide-run"
            }))
            .bearer_auth(&app.token)
            .body(body.to_string());
        if i % 2 == 1 {
            request = request.header("Upstash-Workflow-RunId", "wfr_wide");
        }
        let (status, body) = app.send(request).await;
        assert_eq!(status, 200, "{body}");
    }
    for path in ["/v2/notify/wide", "/v2/notify/wfr_wide/wide-run"] {
        let response = app
            .http
            .post(app.url(path))
            .bearer_auth(&app.token)
            .body("go")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let bytes = response.bytes().await.unwrap();
        let reply: Value = serde_json::from_slice(&bytes).unwrap();
        let entries = reply.as_array().unwrap();
        let omitted = entries
            .iter()
            .filter(|e| e["waiterOmitted"] == true)
            .count();
        println!(
            "{path}: {} waiters of ~8 KiB notified; reply {} bytes, {omitted} shown by message id only",
            entries.len(),
            bytes.len()
        );
        assert_eq!(entries.len(), waiters / 2, "every waiter is in the reply");
        assert!(omitted >= 10, "{omitted} left out");
        assert!(bytes.len() < 64 * 1024 + 20 * 400, "{} bytes", bytes.len());
        assert!(entries
            .iter()
            .all(|e| e["messageId"].as_str().is_some_and(|m| !m.is_empty())));
    }
    receiver.expect("/big", waiters).await;
    app.stop().await;
}
