//! Dead letters: the API (list with cursors and filters, retry, delete, tenant scope, bad
//! input), exact attempt counts and dead-letter contents for failing receivers, and crash
//! recovery (`reclaim`): idle entries taken over, poison entries dead-lettered.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use base64::Engine;
use herald::app::{self, Role};
use herald::domain::{EventId, TenantName};
use serde_json::{json, Value};

use crate::support::{eventually_async, test_settings, Receiver, RedisServer, TestApp};

async fn list(app: &TestApp, token: &str, query: &str) -> (u16, Value) {
    app.get(&format!("/v2/dlq{query}"), token).await
}

/// Every dead letter of the tenant, following cursors (bounded).
async fn list_all(app: &TestApp, token: &str, count: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    for _ in 0..100 {
        let (status, page) = list(app, token, &format!("?count={count}&cursor={cursor}")).await;
        assert_eq!(status, 200, "{page}");
        out.extend(page["messages"].as_array().unwrap().iter().cloned());
        match page["cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => return out,
        }
    }
    panic!("cursor never ended");
}

async fn await_dead_letters(app: &TestApp, token: &str, n: usize) -> Vec<Value> {
    let reached = eventually_async(Duration::from_secs(20), || async {
        list_all(app, token, 100).await.len() >= n
    })
    .await;
    let all = list_all(app, token, 100).await;
    assert!(reached, "expected {n} dead letters, got {all:?}");
    all
}

fn b64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_paged_filtered_retried_and_deleted_per_tenant() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.delivery.max_retries = 1;
    let app = TestApp::start(settings).await;
    let receiver = Receiver::start().await;
    receiver.script("/down", &[500], &[]);
    // Fails twice (dead-lettered), then accepts the redriven delivery.
    receiver.script("/later", &[500, 500, 200], &[]);

    let mut message_ids = Vec::new();
    for (event, path) in [("e1", "/later"), ("e2", "/down"), ("e3", "/down")] {
        assert_eq!(
            app.wait(event, json!({"url": receiver.url(path)})).await.0,
            200
        );
        let (status, notified) = app.notify(event, &format!("payload-{event}")).await;
        assert_eq!(status, 201, "{notified}");
        message_ids.push(notified[0]["messageId"].as_str().unwrap().to_owned());
        // One at a time, so the dead letters' order is known.
        await_dead_letters(&app, &app.token, message_ids.len()).await;
    }
    // A timeout outcome, to its own url.
    let (status, _) = app
        .wait(
            "e4",
            json!({"url": receiver.url("/never"), "timeout": "1s",
                   "timeoutUrl": receiver.url("/down/timeout"), "timeoutBody": "dGlja3RvY2s="}),
        )
        .await;
    assert_eq!(status, 200);
    let all = await_dead_letters(&app, &app.token, 4).await;
    assert_eq!(all.len(), 4, "{all:?}");

    // Contents, oldest first.
    for (i, letter) in all[..3].iter().enumerate() {
        let event = format!("e{}", i + 1);
        assert_eq!(letter["messageId"], message_ids[i].as_str());
        assert_eq!(letter["eventId"], event.as_str());
        assert_eq!(letter["outcome"], "event");
        assert_eq!(letter["workflowRunId"], Value::Null);
        assert_eq!(letter["attempts"], 2, "first attempt + 1 retry");
        assert_eq!(letter["lastStatus"], 500);
        assert!(
            letter["lastError"].as_str().unwrap().contains("HTTP 500"),
            "{letter}"
        );
        assert_eq!(b64(&letter["body"]), format!("payload-{event}").as_bytes());
        let created = letter["createdAt"].as_i64().unwrap();
        let dead = letter["deadLetteredAt"].as_i64().unwrap();
        assert!(created > 0 && created <= dead, "{letter}");
    }
    assert_eq!(all[0]["url"], receiver.url("/later"));
    let timeout = &all[3];
    assert_eq!(timeout["outcome"], "timeout");
    assert_eq!(timeout["eventId"], "e4");
    assert_eq!(timeout["url"], receiver.url("/down/timeout"));
    assert_eq!(b64(&timeout["body"]), b"ticktock");
    let stamps: Vec<i64> = all
        .iter()
        .map(|l| l["deadLetteredAt"].as_i64().unwrap())
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");

    // Pages of one follow the same order and end with a null cursor.
    let paged = list_all(&app, &app.token, 1).await;
    let ids = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|l| l["dlqId"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&paged), ids(&all));
    let (_, first) = list(&app, &app.token, "?count=3").await;
    assert_eq!(first["messages"].as_array().unwrap().len(), 3);
    assert!(first["cursor"].is_string());
    let (_, whole) = list(&app, &app.token, "").await;
    assert_eq!(whole["cursor"], Value::Null, "everything fits one page");

    // Filters.
    let (_, by_event) = list(&app, &app.token, "?eventId=e2").await;
    assert_eq!(
        ids(by_event["messages"].as_array().unwrap()),
        ids(&all[1..2])
    );
    let url_query = format!(
        "?url={}",
        url::form_urlencoded::byte_serialize(receiver.url("/down/timeout").as_bytes())
            .collect::<String>()
    );
    let (_, by_url) = list(&app, &app.token, &url_query).await;
    assert_eq!(ids(by_url["messages"].as_array().unwrap()), ids(&all[3..]));
    let (_, none) = list(&app, &app.token, "?eventId=nothing-here").await;
    assert_eq!(none, json!({"messages": [], "cursor": null}));

    // Bad input: 400 with an error, nothing changed.
    for query in [
        "?count=0",
        "?count=101",
        "?count=ten",
        "?cursor=zzz",
        "?cursor=99-1-0",
        "?eventId=a%7Bb",
        "?count=1&count=2",
    ] {
        let (status, body) = list(&app, &app.token, query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body["error"].is_string(), "{query}: {body}");
    }
    for bad in ["abc", "1-2", "1-2-3-4", "16-1-0", "1-x-0"] {
        let (status, body) = app
            .post(&format!("/v2/dlq/retry/{bad}"), &app.token, "")
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
        let (status, _) = app
            .send(
                app.http
                    .delete(app.url(&format!("/v2/dlq/{bad}")))
                    .bearer_auth(&app.token),
            )
            .await;
        assert_eq!(status, 400, "{bad}");
    }
    let (status, body) = app.post("/v2/dlq/retry/0-1-0", &app.token, "").await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].is_string());
    assert_eq!(list_all(&app, &app.token, 100).await.len(), 4);
    let (status, _) = app.get("/v2/dlq", "not-a-token").await;
    assert_eq!(status, 401);

    // Another tenant sees none of them and can touch none of them.
    let other = app.tenant_token("other").await;
    assert!(list_all(&app, &other, 100).await.is_empty());
    let victim = all[1]["dlqId"].as_str().unwrap();
    let (status, _) = app
        .post(&format!("/v2/dlq/retry/{victim}"), &other, "")
        .await;
    assert_eq!(status, 404);
    let (status, _) = app
        .send(
            app.http
                .delete(app.url(&format!("/v2/dlq/{victim}")))
                .bearer_auth(&other),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(list_all(&app, &app.token, 100).await.len(), 4);

    // Delete.
    let delete = |id: String| {
        app.send(
            app.http
                .delete(app.url(&format!("/v2/dlq/{id}")))
                .bearer_auth(&app.token),
        )
    };
    let (status, body) = delete(victim.to_owned()).await;
    assert_eq!((status, body), (200, json!({"deleted": true})));
    assert_eq!(delete(victim.to_owned()).await.0, 404);
    assert_eq!(list_all(&app, &app.token, 100).await.len(), 3);

    // Retry: same message id, attempts counted from 0 again, gone from the dead letters.
    let first_id = all[0]["dlqId"].as_str().unwrap();
    let (status, body) = app
        .post(&format!("/v2/dlq/retry/{first_id}"), &app.token, "")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"messageId": message_ids[0]}));
    let got = receiver.expect("/later", 3).await;
    assert_eq!(
        got[2].header("upstash-message-id"),
        Some(message_ids[0].as_str())
    );
    assert_eq!(got[2].header("upstash-retried"), Some("0"));
    assert_eq!(got[2].body_text(), "payload-e1");
    let remaining = list_all(&app, &app.token, 100).await;
    assert_eq!(ids(&remaining), ids(&[all[2].clone(), all[3].clone()]));
    let (status, _) = app
        .post(&format!("/v2/dlq/retry/{first_id}"), &app.token, "")
        .await;
    assert_eq!(status, 404, "a dead letter is sent again once");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_receivers_get_exact_attempts_and_dead_letters() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.delivery.max_retries = 2;
    settings.delivery.request_timeout_secs = 1;
    settings.delivery.connect_timeout_secs = 1;
    let app = TestApp::start(settings).await;
    let receiver = Receiver::start().await;
    receiver.script("/error", &[500], &[]);
    receiver.script_slow("/hang", &[200], Duration::from_secs(3));
    receiver.script("/busy", &[429], &[("Retry-After", "1")]);
    receiver.script("/refuse", &[489], &[("Upstash-NonRetryable-Error", "true")]);
    let started = Instant::now();
    for path in ["/error", "/hang", "/busy", "/refuse"] {
        let event = &path[1..];
        assert_eq!(
            app.wait(event, json!({"url": receiver.url(path)})).await.0,
            200
        );
        assert_eq!(app.notify(event, "x").await.0, 201);
    }
    let letters = await_dead_letters(&app, &app.token, 4).await;
    let by_event = |e: &str| {
        letters
            .iter()
            .find(|l| l["eventId"] == e)
            .unwrap_or_else(|| panic!("no dead letter for {e}: {letters:?}"))
            .clone()
    };
    let error = by_event("error");
    assert_eq!(
        (error["attempts"].clone(), error["lastStatus"].clone()),
        (json!(3), json!(500))
    );
    assert_eq!(error["lastError"], "HTTP 500: scripted");
    let hang = by_event("hang");
    assert_eq!(
        (hang["attempts"].clone(), hang["lastStatus"].clone()),
        (json!(3), json!(0))
    );
    let hang_error = hang["lastError"].as_str().unwrap().to_ascii_lowercase();
    assert!(
        hang_error.contains("timed out") || hang_error.contains("timeout"),
        "{hang_error}"
    );
    let busy = by_event("busy");
    assert_eq!(
        (busy["attempts"].clone(), busy["lastStatus"].clone()),
        (json!(3), json!(429))
    );
    // Two Retry-After waits of 1 s between the three attempts.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let refuse = by_event("refuse");
    assert_eq!(
        (refuse["attempts"].clone(), refuse["lastStatus"].clone()),
        (json!(1), json!(489))
    );

    // Exactly the attempts, no more: a last probe after everything settled.
    let probe = receiver.url("/probe");
    assert_eq!(app.wait("probe", json!({"url": probe})).await.0, 200);
    app.notify("probe", "x").await;
    receiver.expect("/probe", 1).await;
    assert_eq!(receiver.at("/error").len(), 3);
    assert_eq!(receiver.at("/hang").len(), 3);
    assert_eq!(receiver.at("/busy").len(), 3);
    assert_eq!(receiver.at("/refuse").len(), 1);
    for path in ["/error", "/hang", "/busy"] {
        let retried: Vec<_> = receiver
            .at(path)
            .iter()
            .map(|r| r.header("upstash-retried").unwrap().to_owned())
            .collect();
        assert_eq!(retried, ["0", "1", "2"], "{path}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reclaim_takes_over_idle_entries_and_dead_letters_poison_ones() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.delivery.request_timeout_secs = 1;
    settings.delivery.reclaim_idle_secs = 2;
    settings.delivery.max_deliveries = 3;
    // Deliveries are enqueued while no worker runs.
    let api = TestApp::start_role(settings.clone(), Role::Api).await;
    let receiver = Receiver::start().await;
    let mut message_ids = Vec::new();
    for event in ["idle", "poison"] {
        let url = receiver.url(&format!("/{event}"));
        assert_eq!(api.wait(event, json!({"url": url})).await.0, 200);
        let (_, notified) = api.notify(event, "x").await;
        message_ids.push(notified[0]["messageId"].as_str().unwrap().to_owned());
    }
    // A consumer that "dies" holding both; the poison entry was already taken over twice.
    let state = &api.running.as_ref().unwrap().state;
    let tenant = TenantName::parse("acme").unwrap();
    let stream = |e: &str| {
        state
            .keys
            .partition_of(&tenant, &EventId::parse(e).unwrap())
            .deliveries()
    };
    let mut conn = redis.client();
    for event in ["idle", "poison"] {
        let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("herald")
            .arg("ghost")
            .arg("COUNT")
            .arg(10)
            .arg("STREAMS")
            .arg(stream(event))
            .arg(">")
            .query(&mut conn)
            .unwrap();
        let ids: Vec<String> = read
            .keys
            .iter()
            .flat_map(|k| k.ids.iter().map(|i| i.id.clone()))
            .collect();
        assert_eq!(ids.len(), 1, "{event}: {ids:?}");
        if event == "poison" {
            for ghost in ["ghost-2", "ghost-3"] {
                let _: redis::Value = redis::cmd("XCLAIM")
                    .arg(stream(event))
                    .arg("herald")
                    .arg(ghost)
                    .arg(0)
                    .arg(&ids[0])
                    .query(&mut conn)
                    .unwrap();
            }
        }
    }
    let worker = app::start(settings, Role::Worker).await.unwrap();
    let got = receiver.expect("/idle", 1).await;
    assert_eq!(
        got[0].header("upstash-message-id"),
        Some(message_ids[0].as_str())
    );
    let letters = await_dead_letters(&api, &api.token, 1).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let poison = &letters[0];
    assert_eq!(poison["messageId"], message_ids[1].as_str());
    assert_eq!(poison["attempts"], 3);
    assert_eq!(poison["lastStatus"], 0);
    assert!(
        poison["lastError"].as_str().unwrap().contains("3 times"),
        "{poison}"
    );
    assert!(
        receiver.at("/poison").is_empty(),
        "a poison entry is not handed out again"
    );
    assert_eq!(receiver.at("/idle").len(), 1);
    // Nothing is left pending.
    for event in ["idle", "poison"] {
        let pending: (u64, Option<String>, Option<String>, redis::Value) = redis::cmd("XPENDING")
            .arg(stream(event))
            .arg("herald")
            .query(&mut conn)
            .unwrap();
        assert_eq!(pending.0, 0, "{event}: {pending:?}");
    }
    // Redrive of a poison letter: delivered, same message id.
    let (status, _) = api
        .post(
            &format!("/v2/dlq/retry/{}", poison["dlqId"].as_str().unwrap()),
            &api.token,
            "",
        )
        .await;
    assert_eq!(status, 200);
    let got = receiver.expect("/poison", 1).await;
    assert_eq!(
        got[0].header("upstash-message-id"),
        Some(message_ids[1].as_str())
    );
    let distinct: HashSet<_> = receiver.all().iter().map(|r| r.path.clone()).collect();
    assert_eq!(distinct.len(), 2);
    worker.stop().await;
    api.stop().await;
}

/// Milliseconds of Redis `TIME`, the clock of dead-letter ids and their retention.
fn redis_ms(redis: &RedisServer) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(&mut redis.client()).unwrap();
    secs * 1000 + micros / 1000
}

/// Awaits Redis `TIME` reaching `ms` (bounded: the caller's targets are seconds away).
async fn until_redis_ms(redis: &RedisServer, ms: u64) {
    for _ in 0..200 {
        if redis_ms(redis) >= ms {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("Redis TIME did not reach {ms}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_older_than_the_retention_are_dropped() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.delivery.max_retries = 0;
    settings.delivery.dead_letter_retention_secs = 3;
    let keys = herald::store::Keys::new(&settings.redis.key_prefix, settings.redis.partitions);
    let app = TestApp::start(settings).await;
    let receiver = Receiver::start().await;
    receiver.script("/down", &[500], &[]);
    // All three events in one partition: one dead-letter stream, trimmed by its own adds.
    let tenant = TenantName::parse("acme").unwrap();
    let partition_of = |e: &str| {
        keys.partition_of(&tenant, &EventId::parse(e).unwrap())
            .index
    };
    let events: Vec<String> = (0..10_000)
        .map(|i| format!("kept-{i}"))
        .filter(|e| partition_of(e) == partition_of("kept-0"))
        .take(3)
        .collect();
    let dead_letter = |event: String| {
        let (app, receiver) = (&app, &receiver);
        async move {
            let (status, _) = app
                .wait(&event, json!({"url": receiver.url("/down")}))
                .await;
            assert_eq!(status, 200);
            assert_eq!(app.notify(&event, "x").await.0, 201);
        }
    };

    dead_letter(events[0].clone()).await;
    let first = await_dead_letters(&app, &app.token, 1).await;
    let first_at = first[0]["deadLetteredAt"].as_u64().unwrap();
    until_redis_ms(&redis, first_at + 1_500).await;
    dead_letter(events[1].clone()).await;
    await_dead_letters(&app, &app.token, 2).await;
    // Older than the retention when the third comes: dropped by that add.
    until_redis_ms(&redis, first_at + 3_100).await;
    dead_letter(events[2].clone()).await;
    let listed = || async {
        let all = list_all(&app, &app.token, 100).await;
        all.iter()
            .map(|d| d["eventId"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let kept = eventually_async(Duration::from_secs(10), || async {
        listed().await == events[1..]
    })
    .await;
    assert!(
        kept,
        "expected {:?} only, got {:?}",
        &events[1..],
        listed().await
    );

    // And the stream itself expires the retention after its newest letter.
    let stream = keys
        .partition(partition_of(&events[0]))
        .dead_letters(&tenant);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&stream)
        .query(&mut redis.client())
        .unwrap();
    assert!(ttl > 0 && ttl <= 3_000, "PTTL {ttl}");
    let emptied = eventually_async(Duration::from_secs(10), || async {
        list_all(&app, &app.token, 100).await.is_empty()
    })
    .await;
    assert!(emptied, "dead letters outlived their retention");
    app.stop().await;
}
