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

/// The keys of (tenant `acme`, event) on the app's prefix.
fn acme_partition(app: &TestApp, event: &str) -> herald::store::Partition {
    let keys = &app.running.as_ref().unwrap().state.keys;
    keys.partition_of(
        &herald::domain::TenantName::parse("acme").unwrap(),
        &herald::domain::EventId::parse(event).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_with_colons_never_share_a_saved_notification() {
    // Schema 1 joined tenant, run and event of the saved list with `:`: run `r:y10` +
    // event `z` and run `r` + event `y10:z` named one list, and run `r` consumed the
    // notification meant for run `r:y10` (a break of I3).
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    // One partition: both pairs land in it whatever their hash (the aliasing needs it).
    settings.redis.partitions = 1;
    let app = TestApp::start(settings).await;
    let receiver = Receiver::start().await;
    let (status, _) = app
        .post("/v2/notify/r:y10/z", &app.token, "for r:y10")
        .await;
    assert_eq!(status, 201);
    let (status, body) = wait_as_run(&app, "r", "y10:z", &receiver.url("/r")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["status"], "waiting",
        "run r took run r:y10's notification"
    );
    let (_, body) = wait_as_run(&app, "r:y10", "z", &receiver.url("/ry10")).await;
    assert_eq!(body["status"], "notified", "{body}");
    assert_eq!(
        receiver.expect("/ry10", 1).await[0].body_text(),
        "for r:y10"
    );
    // And the other way round: a lookback notify to (r, y10:z) reaches run r only.
    let (_, body) = wait_as_run(&app, "r:y10", "z", &receiver.url("/ry10-2")).await;
    assert_eq!(body["status"], "waiting");
    let (status, body) = app.post("/v2/notify/r/y10:z", &app.token, "for r").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 1, "{body}");
    assert_eq!(receiver.expect("/r", 1).await[0].body_text(), "for r");
    assert!(receiver.at("/ry10-2").is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_more_waiters_than_one_batch_gets_every_one() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.waiters.notify_batch = 3;
    let app = TestApp::start(settings).await;
    let receiver = Receiver::start().await;
    for i in 0..8 {
        let (status, _) =
            wait_as_run(&app, "wfr_many", "go", &receiver.url(&format!("/m{i}"))).await;
        assert_eq!(status, 200);
    }
    assert_eq!(
        wait_as_run(&app, "wfr_other", "go", &receiver.url("/o"))
            .await
            .0,
        200
    );
    let (status, body) = app.post("/v2/notify/wfr_many/go", &app.token, "all").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 8, "{body}");
    for i in 0..8 {
        assert_eq!(
            receiver.expect(&format!("/m{i}"), 1).await[0].body_text(),
            "all"
        );
    }
    let left = app.waiters("go").await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["url"], receiver.url("/o"));
    // A broadcast still takes the other run's waiter, and its index entry went with it.
    let (_, body) = app.notify("go", "rest").await;
    assert_eq!(body.as_array().unwrap().len(), 1);
    let p = acme_partition(&app, "go");
    let acme = herald::domain::TenantName::parse("acme").unwrap();
    let event = herald::domain::EventId::parse("go").unwrap();
    let index: i64 = redis::cmd("EXISTS")
        .arg(p.event_runs(&acme, &event))
        .query(&mut redis.client())
        .unwrap();
    assert_eq!(
        index, 0,
        "the run index is empty once every run waiter is gone"
    );
    app.stop().await;
}

/// Every script call Redis logged (the server logs all: `slowlog-log-slower-than 0`) since
/// the last `SLOWLOG RESET`, as (script SHA, microseconds); then resets the log.
fn script_calls(redis: &RedisServer) -> Vec<(String, i64)> {
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query(&mut redis.client())
        .unwrap();
    let _: () = redis::cmd("SLOWLOG")
        .arg("RESET")
        .query(&mut redis.client())
        .unwrap();
    let text = |v: Option<&redis::Value>| match v {
        Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        _ => String::new(),
    };
    entries
        .iter()
        .filter_map(|e| {
            let redis::Value::Array(parts) = e else {
                return None;
            };
            let Some(redis::Value::Int(micros)) = parts.get(2) else {
                return None;
            };
            let Some(redis::Value::Array(args)) = parts.get(3) else {
                return None;
            };
            (text(args.first()).eq_ignore_ascii_case("evalsha"))
                .then(|| (text(args.get(1)), *micros))
        })
        .collect()
}

fn median_of(calls: &[(String, i64)], script: &redis::Script) -> (usize, i64) {
    let mut micros: Vec<i64> = calls
        .iter()
        .filter(|(sha, _)| sha == script.get_hash())
        .map(|(_, us)| *us)
        .collect();
    micros.sort_unstable();
    (
        micros.len(),
        micros.get(micros.len() / 2).copied().unwrap_or(0),
    )
}

/// Lookback notifies to fresh runs (saved), their waits (consumed), waits then lookback
/// notifies (delivered), and cancels of runs with one waiter, all on `event`.
async fn run_costs(app: &TestApp, receiver: &Receiver, event: &str, rounds: usize) {
    for i in 0..rounds {
        let (status, _) = app
            .post(
                &format!("/v2/notify/fresh-{event}-{i}/{event}"),
                &app.token,
                "yes",
            )
            .await;
        assert_eq!(status, 201);
        let (_, body) = wait_as_run(
            app,
            &format!("fresh-{event}-{i}"),
            event,
            &receiver.url("/fresh"),
        )
        .await;
        assert_eq!(body["status"], "notified", "{body}");
        let (_, body) = wait_as_run(
            app,
            &format!("late-{event}-{i}"),
            event,
            &receiver.url("/late"),
        )
        .await;
        assert_eq!(body["status"], "waiting", "{body}");
        let (_, body) = app
            .post(
                &format!("/v2/notify/late-{event}-{i}/{event}"),
                &app.token,
                "ok",
            )
            .await;
        assert_eq!(body.as_array().unwrap().len(), 1, "{body}");
        let (_, body) = wait_as_run(
            app,
            &format!("gone-{event}-{i}"),
            event,
            &receiver.url("/gone"),
        )
        .await;
        assert_eq!(body["status"], "waiting", "{body}");
        let (status, body) = app
            .send(
                app.http
                    .delete(app.url(&format!("/v2/workflows/runs/gone-{event}-{i}")))
                    .bearer_auth(&app.token),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["waitersRemoved"], 1, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_costs_its_own_waiters_not_the_events() {
    // Lookback notify, a run's wait and its cancel touch only that run's entries. Each is
    // timed by Redis itself (SLOWLOG of every call) on an event nobody else waits on and
    // on one with 50,000 other runs' waiters; the medians must stay close (schema 1
    // scanned the whole event hash: about 100 times slower there). Medians, not single
    // calls: a loaded machine can stall any one call.
    let redis = RedisServer::start_with(&[
        "--slowlog-log-slower-than",
        "0",
        "--slowlog-max-len",
        "100000",
    ]);
    let mut settings = test_settings(&redis.url());
    settings.limits.defaults.waiters_per_event = 0;
    let app = TestApp::start(settings).await;
    let receiver = Receiver::start().await;
    let acme = herald::domain::TenantName::parse("acme").unwrap();
    let event = herald::domain::EventId::parse("approval").unwrap();
    let p = acme_partition(&app, "approval");
    assert_eq!(
        wait_as_run(&app, "seed", "approval", &receiver.url("/seed"))
            .await
            .0,
        200
    );
    // Other runs' waiters, written in one call as a wait writes them (hash + run index);
    // the big run's with deadlines, run set and count too, so cancel has all to remove.
    let seeded: i64 = redis::cmd("EVAL")
        .arg(
            r#"
            local json = redis.call('HVALS', KEYS[1])[1]
            for i = 1, 50000 do
              redis.call('HSET', KEYS[1], 'other-' .. i .. '|w', json)
              redis.call('ZADD', KEYS[2], 0, 'other-' .. i .. '|w')
            end
            for i = 1, 20000 do
              local field = 'big|w' .. i
              redis.call('HSET', KEYS[1], field, json)
              redis.call('ZADD', KEYS[2], 0, field)
              redis.call('ZADD', KEYS[3], 4102444800000, ARGV[1] .. '|' .. field .. '|' .. ARGV[2])
            end
            redis.call('SADD', KEYS[4], ARGV[2])
            redis.call('INCRBY', KEYS[5], 20000)
            return redis.call('HLEN', KEYS[1])
            "#,
        )
        .arg(5)
        .arg(p.event_waiters(&acme, &event))
        .arg(p.event_runs(&acme, &event))
        .arg(p.deadlines())
        .arg(p.run_events(&acme, &herald::domain::RunId::parse("big").unwrap()))
        .arg(p.waiter_count(&acme))
        .arg("acme")
        .arg("approval")
        .query(&mut redis.client())
        .unwrap();
    assert_eq!(seeded, 70_001);

    let rounds = 15;
    let _ = script_calls(&redis);
    run_costs(&app, &receiver, "quiet", rounds).await;
    let quiet = script_calls(&redis);
    run_costs(&app, &receiver, "approval", rounds).await;
    let crowded = script_calls(&redis);
    use herald::store::scripts::{CANCEL, NOTIFY_RUN, WAIT};
    for (name, script) in [
        ("notify_run", &NOTIFY_RUN),
        ("wait", &WAIT),
        ("cancel", &CANCEL),
    ] {
        let (n_quiet, alone) = median_of(&quiet, script);
        let (n_crowded, among) = median_of(&crowded, script);
        assert!(
            n_quiet >= rounds && n_crowded >= rounds,
            "{name}: {n_quiet}, {n_crowded} calls"
        );
        assert!(
            among <= 5 * alone.max(20),
            "{name}: median {among} µs among 70,000 other waiters, {alone} µs alone"
        );
    }

    // A run with 20,000 waiters on the event is cancelled in bounded calls.
    let (status, body) = app
        .send(
            app.http
                .delete(app.url("/v2/workflows/runs/big"))
                .bearer_auth(&app.token),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["waitersRemoved"], 20_000, "{body}");
    let calls = script_calls(&redis);
    let (cancel_calls, _) = median_of(&calls, &CANCEL);
    let per_call = herald::store::scripts::CANCEL_MAX_WAITERS as usize;
    assert!(
        cancel_calls >= 20_000 / per_call,
        "{cancel_calls} cancel calls for 20,000 waiters (at most {per_call} each)"
    );

    let left: i64 = redis::cmd("HLEN")
        .arg(p.event_waiters(&acme, &event))
        .query(&mut redis.client())
        .unwrap();
    assert_eq!(left, 50_001, "other runs' waiters stay");
    let deadlines: i64 = redis::cmd("ZCARD")
        .arg(p.deadlines())
        .query(&mut redis.client())
        .unwrap();
    assert_eq!(deadlines, 1, "only the seed waiter's deadline is left");
    app.stop().await;
}

/// Expired saved notifications do not count against `limits.saved_per_run_event`: once
/// they expire, a lookback notify of the same (run, event) is saved again. (Found by the
/// model's long run: the list kept its expired items until its key expired, at the end of
/// its usage bucket, up to an hour later with the default saved ttl, and refused new ones
/// meanwhile.) Time passing is the items' expiry rewritten into the past.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_saved_notifications_leave_room_for_new_ones() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.limits.defaults.saved_per_run_event = 3;
    let prefix = settings.redis.key_prefix.clone();
    let app = TestApp::start(settings).await;
    for i in 0..3 {
        let (status, body) = app
            .post("/v2/notify/wfr_q/evt", &app.token, format!("s{i}"))
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = app.post("/v2/notify/wfr_q/evt", &app.token, "over").await;
    assert_eq!(status, 422, "{body}");
    // The three expire: "<expiresMs>\n…" becomes a time in the past.
    let saved = redis.keys(&format!("{prefix}:*saved:acme:wfr_q|evt"));
    assert_eq!(saved.len(), 1, "{saved:?}");
    let mut conn = redis.client();
    let items: Vec<Vec<u8>> = redis::cmd("LRANGE")
        .arg(&saved[0])
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .unwrap();
    assert_eq!(items.len(), 3);
    for (i, item) in items.iter().enumerate() {
        let newline = item.iter().position(|b| *b == b'\n').unwrap();
        let mut expired = b"1000".to_vec();
        expired.extend_from_slice(&item[newline..]);
        redis::cmd("LSET")
            .arg(&saved[0])
            .arg(i)
            .arg(expired)
            .exec(&mut conn)
            .unwrap();
    }
    let (status, body) = app.post("/v2/notify/wfr_q/evt", &app.token, "later").await;
    assert_eq!(
        status, 201,
        "refused by expired saved notifications: {body}"
    );
    // Only the new one is left for the run's next wait.
    let wait = || {
        app.send(
            app.http
                .post(app.url("/v2/wait/evt"))
                .bearer_auth(&app.token)
                .header("Upstash-Workflow-RunId", "wfr_q")
                .body(json!({"url": "http://127.0.0.1:9/x", "timeout": "1h"}).to_string()),
        )
    };
    let (status, body) = wait().await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("notified")),
        "{body}"
    );
    let (status, body) = wait().await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("waiting")),
        "{body}"
    );
    app.stop().await;
}
