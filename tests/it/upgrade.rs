//! Upgrading a store of schema 1 (`herald migrate`, and at start): saved lists get their
//! unambiguous names, run waiters their index; an aliased list is left to expire.

use serde_json::json;

use crate::support::{test_settings, Receiver, RedisServer, TestApp};
use herald::domain::{EventId, RunId, TenantName};

async fn wait_as_run(app: &TestApp, run: &str, event: &str, url: &str) -> (u16, serde_json::Value) {
    app.send(
        app.http
            .post(app.url(&format!("/v2/wait/{event}")))
            .bearer_auth(&app.token)
            .header("Upstash-Workflow-RunId", run)
            .body(json!({"url": url, "timeout": "1h"}).to_string()),
    )
    .await
}

fn cmd(redis: &RedisServer, args: &[&str]) -> redis::Value {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query(&mut redis.client()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_one_store_is_migrated_at_start() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.redis.partitions = 1;
    let app = TestApp::start(settings.clone()).await;
    let receiver = Receiver::start().await;
    let keys = app.running.as_ref().unwrap().state.keys.clone();
    let p = keys.partition(0);
    let acme = TenantName::parse("acme").unwrap();
    let id = |s: &str| (RunId::parse(s).unwrap(), EventId::parse(s).unwrap());

    // Run waiters, then their index dropped: as schema 1 wrote them.
    for run in ["wfr:1", "wfr:2"] {
        assert_eq!(
            wait_as_run(&app, run, "paid", &receiver.url(&format!("/{run}")))
                .await
                .0,
            200
        );
    }
    let (_, paid) = id("paid");
    cmd(&redis, &["DEL", &p.event_runs(&acme, &paid)]);
    // Saved lists under their schema-1 names (`<run>:<event>`): one that only one
    // (run, event) pair of the store can mean, and one that two pairs can mean.
    for (run, event, body) in [
        ("a:b", "c", "for a:b"),
        ("r:y10", "z", "for r:y10"),
        ("r", "y10:z", "for r"),
    ] {
        let (status, _) = app
            .post(&format!("/v2/notify/{run}/{event}"), &app.token, body)
            .await;
        assert_eq!(status, 201);
    }
    let new = |run: &str, event: &str| {
        p.saved(
            &acme,
            &RunId::parse(run).unwrap(),
            &EventId::parse(event).unwrap(),
        )
    };
    let base = p.saved_prefix();
    cmd(
        &redis,
        &["RENAME", &new("a:b", "c"), &format!("{base}acme:a:b:c")],
    );
    // The aliased name: both notifications in one list, as schema 1 kept them.
    let aliased = format!("{base}acme:r:y10:z");
    cmd(&redis, &["RENAME", &new("r:y10", "z"), &aliased]);
    cmd(
        &redis,
        &["LMOVE", &new("r", "y10:z"), &aliased, "LEFT", "RIGHT"],
    );
    cmd(&redis, &["HDEL", &keys.meta(), "schema"]);
    app.stop().await;

    // The next start migrates.
    let app = TestApp::start(settings).await;
    let schema: i64 = redis::cmd("HGET")
        .arg(keys.meta())
        .arg("schema")
        .query(&mut redis.client())
        .unwrap();
    assert_eq!(schema, 2);
    // The old run waiters are found by a lookback notify.
    let (status, body) = app.post("/v2/notify/wfr:2/paid", &app.token, "paid").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 1, "{body}");
    assert_eq!(receiver.expect("/wfr:2", 1).await[0].body_text(), "paid");
    // The unambiguous list is consumed by its run.
    let (_, body) = wait_as_run(&app, "a:b", "c", &receiver.url("/ab")).await;
    assert_eq!(body["status"], "notified", "{body}");
    assert_eq!(receiver.expect("/ab", 1).await[0].body_text(), "for a:b");
    // The aliased list is consumed by neither run (its items cannot be told apart).
    for (run, event) in [("r", "y10:z"), ("r:y10", "z")] {
        let (_, body) = wait_as_run(&app, run, event, &receiver.url("/aliased")).await;
        assert_eq!(body["status"], "waiting", "{body}");
    }
    let left: i64 = redis::cmd("LLEN")
        .arg(&aliased)
        .query(&mut redis.client())
        .unwrap();
    assert_eq!(left, 2, "left to expire with its TTL");

    // Again: nothing more to do.
    let state = &app.running.as_ref().unwrap().state;
    let again = herald::store::migrate::migrate(&mut state.redis.get(), &keys)
        .await
        .unwrap();
    assert_eq!(again.saved_renamed, 0, "{again:?}");
    assert_eq!(again.run_waiters_indexed, 0, "{again:?}");
    assert_eq!(again.saved_ambiguous, 1, "{again:?}");
    app.stop().await;
}
