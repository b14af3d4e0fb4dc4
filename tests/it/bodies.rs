//! A notify's body is stored once per notify, not once per delivery: a broadcast's
//! delivery jobs, their retries and their dead letters reference one body key of the
//! partition; the key is gone once the last delivery is acknowledged, and outlives every
//! dead letter that references it (redrive, listing, `herald repartition`). Jobs and dead
//! letters holding their body inline (the older form, and small or single deliveries)
//! still deliver and redrive.

use std::time::Duration;

use base64::Engine;
use herald::app::{self, Role};
use herald::domain::{EventId, TenantName};
use herald::store::Keys;
use serde_json::{json, Value};

use crate::support::{eventually_async, test_settings, Receiver, RedisServer, TestApp};

/// A body of `len` bytes that is not one repeated byte (so no layer could shrink it).
fn body_of(len: usize) -> String {
    let mut s = String::with_capacity(len + 16);
    let mut i = 0u64;
    while s.len() < len {
        s.push_str(&format!("{i:08x}"));
        i += 1;
    }
    s.truncate(len);
    s
}

fn keys_matching(redis: &RedisServer, pattern: &str) -> Vec<String> {
    redis.keys(pattern)
}

/// What the deployment's keys take in Redis (MEMORY USAGE of each, all samples).
fn stored_bytes(redis: &RedisServer, prefix: &str) -> u64 {
    redis.memory_usage(&keys_matching(redis, &format!("{prefix}:*")))
}

fn body_keys(redis: &RedisServer, prefix: &str) -> Vec<String> {
    keys_matching(redis, &format!("{prefix}:*:body:*"))
}

async fn dead_letters(app: &TestApp, n: usize) -> Vec<Value> {
    let list = || async {
        let (status, page) = app.get("/v2/dlq?count=100", &app.token).await;
        assert_eq!(status, 200, "{page}");
        page["messages"].as_array().unwrap().clone()
    };
    let reached = eventually_async(Duration::from_secs(20), || async {
        list().await.len() >= n
    })
    .await;
    let all = list().await;
    assert!(reached, "expected {n} dead letters, got {all:?}");
    all
}

fn b64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap())
        .unwrap()
}

async fn no_body_keys_left(redis: &RedisServer, prefix: &str) {
    let gone = eventually_async(Duration::from_secs(15), || async {
        body_keys(redis, prefix).is_empty()
    })
    .await;
    assert!(gone, "body keys left: {:?}", body_keys(redis, prefix));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_stores_its_body_once_and_drops_it_after_the_last_delivery() {
    let redis = RedisServer::start();
    let settings = test_settings(&redis.url());
    let prefix = settings.redis.key_prefix.clone();
    // Deliveries are enqueued while no worker runs, so what they store can be measured.
    let api = TestApp::start_role(settings.clone(), Role::Api).await;
    let receiver = Receiver::start().await;
    // Two receivers fail once: their jobs are retried (scheduled, then promoted) first.
    for i in 0..2 {
        receiver.script(&format!("/r/{i:02}"), &[500, 200], &[]);
    }
    const WAITERS: usize = 20;
    for i in 0..WAITERS {
        let url = receiver.url(&format!("/r/{i:02}"));
        assert_eq!(api.wait("bulk", json!({ "url": url })).await.0, 200);
    }
    let before = stored_bytes(&redis, &prefix);
    let body = body_of(64 * 1024);
    let (status, notified) = api.notify("bulk", &body).await;
    assert_eq!(status, 201, "{notified}");
    assert_eq!(notified.as_array().unwrap().len(), WAITERS);
    let added = stored_bytes(&redis, &prefix).saturating_sub(before);
    assert!(
        added < 2 * body.len() as u64,
        "a {} byte body to {WAITERS} waiters added {added} bytes: stored more than once",
        body.len()
    );

    let worker = app::start(settings, Role::Worker).await.unwrap();
    for i in 0..WAITERS {
        let attempts = if i < 2 { 2 } else { 1 };
        let got = receiver.expect(&format!("/r/{i:02}"), attempts).await;
        for attempt in &got {
            assert_eq!(attempt.body_text(), body, "waiter {i}");
        }
    }
    // Acknowledged: nothing of the body is left.
    no_body_keys_left(&redis, &prefix).await;
    worker.stop().await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_delivery_keeps_the_body_after_the_others_succeeded_and_redrives() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.delivery.max_retries = 0;
    let prefix = settings.redis.key_prefix.clone();
    let app = TestApp::start(settings).await;
    let receiver = Receiver::start().await;
    // Each fails once (dead-lettered at once: no retries), then accepts the redriven delivery.
    for i in 0..2 {
        receiver.script(&format!("/fail/{i}"), &[500, 200], &[]);
    }
    for i in 0..4 {
        let url = receiver.url(&format!("/ok/{i}"));
        assert_eq!(app.wait("mixed", json!({ "url": url })).await.0, 200);
    }
    for i in 0..2 {
        let url = receiver.url(&format!("/fail/{i}"));
        assert_eq!(app.wait("mixed", json!({ "url": url })).await.0, 200);
    }
    let body = body_of(64 * 1024);
    let (status, notified) = app.notify("mixed", &body).await;
    assert_eq!(status, 201, "{notified}");
    for i in 0..4 {
        receiver.expect(&format!("/ok/{i}"), 1).await;
    }
    let letters = dead_letters(&app, 2).await;
    assert_eq!(letters.len(), 2, "{letters:?}");
    for letter in &letters {
        assert_eq!(
            b64(&letter["body"]),
            body.as_bytes(),
            "listed with its body"
        );
    }
    // The dead letters reference the body: they hold no copy of it.
    let dlq: Vec<String> = keys_matching(&redis, &format!("{prefix}:*:dlq:acme"));
    let mut conn = redis.client();
    for key in &dlq {
        let used: u64 = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .arg("SAMPLES")
            .arg(0)
            .query(&mut conn)
            .unwrap();
        assert!(used < body.len() as u64, "{key} holds {used} bytes");
    }

    // Sent again after every other delivery of the notify was acknowledged.
    for letter in &letters {
        let id = letter["dlqId"].as_str().unwrap();
        let (status, reply) = app
            .post(&format!("/v2/dlq/retry/{id}"), &app.token, "")
            .await;
        assert_eq!(status, 200, "{reply}");
    }
    for i in 0..2 {
        let got = receiver.expect(&format!("/fail/{i}"), 2).await;
        assert_eq!(got[1].body_text(), body, "redriven delivery {i}");
    }
    // Every delivery acknowledged, no dead letter left: the body is gone.
    no_body_keys_left(&redis, &prefix).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_and_dead_letters_holding_their_body_inline_still_deliver_and_redrive() {
    let redis = RedisServer::start();
    let settings = test_settings(&redis.url());
    let api = TestApp::start_role(settings.clone(), Role::Api).await;
    let receiver = Receiver::start().await;
    // One delivery of this notify: its entry is the model of the older form.
    let url = receiver.url("/old");
    assert_eq!(api.wait("old", json!({ "url": url })).await.0, 200);
    assert_eq!(api.notify("old", "template").await.0, 201);
    let state = &api.running.as_ref().unwrap().state;
    let partition = state.keys.partition_of(
        &TenantName::parse("acme").unwrap(),
        &EventId::parse("old").unwrap(),
    );
    let mut conn = redis.client();
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(partition.deliveries())
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    assert_eq!(entries.ids.len(), 1);
    let template: Value =
        serde_json::from_str(&entries.ids[0].get::<String>("j").unwrap()).unwrap();
    let _: () = redis::cmd("XDEL")
        .arg(partition.deliveries())
        .arg(&entries.ids[0].id)
        .query(&mut conn)
        .unwrap();
    let job = |message: &str| {
        let mut j = template.clone();
        j["m"] = json!(message);
        j.to_string()
    };
    let body = body_of(8 * 1024);
    // As older versions wrote them: the body in every stream entry, retry job and dead letter.
    let _: String = redis::cmd("XADD")
        .arg(partition.deliveries())
        .arg("*")
        .arg("j")
        .arg(job("msg_old_stream"))
        .arg("b")
        .arg(&body)
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(partition.retry_jobs())
        .arg("msg_old_retry")
        .arg(job("msg_old_retry"))
        .arg("msg_old_retry#b")
        .arg(&body)
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("ZADD")
        .arg(partition.retries())
        .arg(0)
        .arg("msg_old_retry")
        .query(&mut conn)
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(partition.dead_letters(&TenantName::parse("acme").unwrap()))
        .arg("*")
        .arg("j")
        .arg(job("msg_old_dead"))
        .arg("b")
        .arg(&body)
        .arg("s")
        .arg(500)
        .arg("r")
        .arg("HTTP 500: down")
        .arg("at")
        .arg(1)
        .query(&mut conn)
        .unwrap();

    let worker = app::start(settings, Role::Worker).await.unwrap();
    let letters = dead_letters(&api, 1).await;
    assert_eq!(b64(&letters[0]["body"]), body.as_bytes());
    let id = letters[0]["dlqId"].as_str().unwrap();
    let (status, reply) = api
        .post(&format!("/v2/dlq/retry/{id}"), &api.token, "")
        .await;
    assert_eq!(status, 200, "{reply}");
    let got = receiver.expect("/old", 3).await;
    let mut messages: Vec<&str> = got
        .iter()
        .map(|r| {
            assert_eq!(r.body_text(), body);
            r.header("upstash-message-id").unwrap()
        })
        .collect();
    messages.sort();
    assert_eq!(
        messages,
        ["msg_old_dead", "msg_old_retry", "msg_old_stream"]
    );
    worker.stop().await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_deliveries_of_a_broadcast_are_dead_lettered_with_their_body() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.delivery.reclaim_idle_secs = 2;
    settings.delivery.max_deliveries = 3;
    let prefix = settings.redis.key_prefix.clone();
    let api = TestApp::start_role(settings.clone(), Role::Api).await;
    let receiver = Receiver::start().await;
    for i in 0..2 {
        let url = receiver.url(&format!("/poison/{i}"));
        assert_eq!(api.wait("poison", json!({ "url": url })).await.0, 200);
    }
    let body = body_of(16 * 1024);
    assert_eq!(api.notify("poison", &body).await.0, 201);
    // Consumers that "die" holding both entries, three times over.
    let state = &api.running.as_ref().unwrap().state;
    let stream = state
        .keys
        .partition_of(
            &TenantName::parse("acme").unwrap(),
            &EventId::parse("poison").unwrap(),
        )
        .deliveries();
    let mut conn = redis.client();
    let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("herald")
        .arg("ghost")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query(&mut conn)
        .unwrap();
    let ids: Vec<String> = read.keys[0].ids.iter().map(|i| i.id.clone()).collect();
    assert_eq!(ids.len(), 2);
    for ghost in ["ghost-2", "ghost-3"] {
        let _: redis::Value = redis::cmd("XCLAIM")
            .arg(&stream)
            .arg("herald")
            .arg(ghost)
            .arg(0)
            .arg(&ids[0])
            .arg(&ids[1])
            .query(&mut conn)
            .unwrap();
    }
    let worker = app::start(settings, Role::Worker).await.unwrap();
    let letters = dead_letters(&api, 2).await;
    assert_eq!(letters.len(), 2, "{letters:?}");
    for letter in &letters {
        assert_eq!(letter["attempts"], 3, "{letter}");
        assert_eq!(b64(&letter["body"]), body.as_bytes());
    }
    assert!(
        receiver.all().is_empty(),
        "poison entries are not handed out"
    );
    // One is sent again and delivered; the other is deleted: then nothing holds the body.
    let first = letters[0]["dlqId"].as_str().unwrap();
    let (status, reply) = api
        .post(&format!("/v2/dlq/retry/{first}"), &api.token, "")
        .await;
    assert_eq!(status, 200, "{reply}");
    let url = letters[0]["url"].as_str().unwrap();
    let path = url.rsplit_once(&receiver.port.to_string()).unwrap().1;
    let got = receiver.expect(path, 1).await;
    assert_eq!(got[0].body_text(), body);
    assert!(
        !body_keys(&redis, &prefix).is_empty(),
        "the other dead letter holds it"
    );
    let second = letters[1]["dlqId"].as_str().unwrap();
    let (status, reply) = api
        .send(
            api.http
                .delete(api.url(&format!("/v2/dlq/{second}")))
                .bearer_auth(&api.token),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    no_body_keys_left(&redis, &prefix).await;
    worker.stop().await;
    api.stop().await;
}

/// An event id whose partition differs under `from` and `to` partitions.
fn moving_event(prefix: &str, from: u16, to: u16, stem: &str) -> String {
    let tenant = TenantName::parse("acme").unwrap();
    (0..100)
        .map(|i| format!("{stem}-{i}"))
        .find(|e| {
            let e = EventId::parse(e).unwrap();
            Keys::new(prefix, from).partition_of(&tenant, &e).index
                != Keys::new(prefix, to).partition_of(&tenant, &e).index
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repartition_moves_referenced_bodies_with_their_jobs_and_dead_letters() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.redis.partitions = 4;
    settings.delivery.max_retries = 0;
    let prefix = settings.redis.key_prefix.clone();
    let dead_event = moving_event(&prefix, 4, 7, "dead");
    let pending_event = moving_event(&prefix, 4, 7, "pending");
    let receiver = Receiver::start().await;
    for i in 0..2 {
        receiver.script(&format!("/fail/{i}"), &[500, 200], &[]);
    }
    let dead_body = body_of(16 * 1024);
    let pending_body = body_of(24 * 1024);

    // Two dead letters of one broadcast.
    let app = TestApp::start(settings.clone()).await;
    for i in 0..2 {
        let url = receiver.url(&format!("/fail/{i}"));
        assert_eq!(app.wait(&dead_event, json!({ "url": url })).await.0, 200);
    }
    assert_eq!(app.notify(&dead_event, &dead_body).await.0, 201);
    dead_letters(&app, 2).await;
    app.stop().await;
    // Three deliveries of another one, pending.
    let api = TestApp::start_role(settings.clone(), Role::Api).await;
    for i in 0..3 {
        let url = receiver.url(&format!("/p/{i}"));
        assert_eq!(api.wait(&pending_event, json!({ "url": url })).await.0, 200);
    }
    assert_eq!(api.notify(&pending_event, &pending_body).await.0, 201);
    api.stop().await;

    let pool = herald::store::RedisPool::open(&settings.redis).unwrap();
    herald::store::repartition::repartition(&mut pool.get(), &prefix, 7, Duration::ZERO)
        .await
        .unwrap();
    let mut after = settings;
    after.redis.partitions = 7;
    let app = TestApp::start(after).await;
    for i in 0..3 {
        let got = receiver.expect(&format!("/p/{i}"), 1).await;
        assert_eq!(got[0].body_text(), pending_body, "pending delivery {i}");
    }
    let letters = dead_letters(&app, 2).await;
    for letter in &letters {
        assert_eq!(b64(&letter["body"]), dead_body.as_bytes());
        let id = letter["dlqId"].as_str().unwrap();
        let (status, reply) = app
            .post(&format!("/v2/dlq/retry/{id}"), &app.token, "")
            .await;
        assert_eq!(status, 200, "{reply}");
    }
    for i in 0..2 {
        let got = receiver.expect(&format!("/fail/{i}"), 2).await;
        assert_eq!(got[1].body_text(), dead_body, "redriven delivery {i}");
    }
    no_body_keys_left(&redis, &prefix).await;
    app.stop().await;
}
