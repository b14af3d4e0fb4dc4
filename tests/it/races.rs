//! Races: notifies colliding with deadlines (I1: each waiter ends exactly once, and a
//! notify reports exactly the waiters it delivered to, I2), and waits colliding with
//! lookback notifies (I3: a saved notification is consumed at most once).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;

use crate::support::{test_settings, Receiver, RedisServer, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_waiters_end_exactly_once_when_notifies_and_deadlines_collide() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.scheduler.tick_ms = 5;
    settings.delivery.concurrency = 128;
    let app = TestApp::start(settings).await;
    let receiver = Receiver::start().await;
    const EVENTS: usize = 500; // two waiters each: 1,000 waiters

    // Each event: register its two waiters (2 s timeout), then notify it within ±150 ms
    // of its own deadline, so notifies and timeouts collide whatever the machine's load.
    // At most 100 events are in flight at once.
    let started = Instant::now();
    let per_event = futures_util::stream::iter(0..EVENTS).map(|e| {
        let app = &app;
        let receiver = &receiver;
        async move {
            let event = format!("race-{e}");
            let registered = Instant::now();
            for w in 0..2 {
                let url = receiver.url(&format!("/w/{}", e * 2 + w));
                let (status, body) = app.wait(&event, json!({"url": url, "timeout": 2})).await;
                assert_eq!(status, 200, "{body}");
            }
            let offset_ms = (e as u64 * 37) % 300;
            let at = registered + Duration::from_millis(1850 + offset_ms);
            tokio::time::sleep_until(at.into()).await;
            let (status, body) = app.notify(&event, "paid").await;
            assert_eq!(status, 201, "{body}");
            body.as_array()
                .unwrap()
                .iter()
                .map(|n| n["waiter"]["url"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    });
    let reported: Vec<String> = per_event
        .buffer_unordered(100)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .flatten()
        .collect();
    let took = started.elapsed();

    // Every waiter gets exactly one outcome; wait (bounded) for all 1,000.
    let all_arrived = crate::support::eventually(Duration::from_secs(30), || {
        receiver.all().len() >= EVENTS * 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await; // let any duplicate show up
    let requests = receiver.all();
    assert!(
        all_arrived,
        "only {} of {} outcomes arrived",
        requests.len(),
        EVENTS * 2
    );
    let mut outcomes: HashMap<String, Vec<String>> = HashMap::new();
    for r in &requests {
        outcomes
            .entry(r.path.clone())
            .or_default()
            .push(r.header("herald-outcome").unwrap_or("?").to_owned());
    }
    assert_eq!(outcomes.len(), EVENTS * 2, "every waiter has an outcome");
    let twice: Vec<_> = outcomes.iter().filter(|(_, o)| o.len() != 1).collect();
    assert!(
        twice.is_empty(),
        "waiters with more than one outcome: {twice:?}"
    );
    // I2: the notify responses list exactly the waiters that got the event.
    let mut delivered_event: Vec<String> = outcomes
        .iter()
        .filter(|(_, o)| o[0] == "event")
        .map(|(p, _)| receiver.url(p))
        .collect();
    let mut reported = reported;
    delivered_event.sort();
    reported.sort();
    assert_eq!(
        delivered_event, reported,
        "notify responses match event deliveries"
    );
    let timeouts = outcomes.values().filter(|o| o[0] == "timeout").count();
    eprintln!(
        "race: {took:?}; {} events, {timeouts} timeouts",
        EVENTS * 2 - timeouts
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_notification_is_consumed_by_at_most_one_wait() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    let receiver = Receiver::start().await;
    const RUNS: usize = 300;

    let wait = |run: String, key: &'static str| {
        let req = app
            .http
            .post(app.url("/v2/wait/pay"))
            .bearer_auth(&app.token)
            .header("Upstash-Workflow-RunId", run.clone())
            .header("Idempotency-Key", key)
            .body(json!({"url": receiver.url(&format!("/{run}")), "timeout": "5m"}).to_string());
        app.send(req)
    };

    // Part 1: saved first, then two concurrent waits per run: exactly one consumes it.
    for r in 0..RUNS {
        assert_eq!(
            app.post(&format!("/v2/notify/wfr_s{r}/pay"), &app.token, "s")
                .await
                .0,
            201
        );
    }
    let pairs = (0..RUNS).map(|r| async move {
        let (a, b) = tokio::join!(
            wait(format!("wfr_s{r}"), "first"),
            wait(format!("wfr_s{r}"), "second")
        );
        [
            a.1["status"].as_str().unwrap().to_owned(),
            b.1["status"].as_str().unwrap().to_owned(),
        ]
    });
    let results: Vec<[String; 2]> = futures_util::stream::iter(pairs)
        .buffered(50)
        .collect()
        .await;
    for (r, statuses) in results.into_iter().enumerate() {
        let notified = statuses.iter().filter(|s| *s == "notified").count();
        assert_eq!(notified, 1, "run {r}: {statuses:?}");
    }

    // Part 2: lookback notify and wait at the same time: one delivery per run either way.
    let races = (0..RUNS).map(|r| {
        let app = &app;
        async move {
            let run = format!("wfr_r{r}");
            let path = format!("/v2/notify/{run}/pay");
            let (_, _) = tokio::join!(app.post(&path, &app.token, "r"), wait(run.clone(), "only"));
        }
    });
    futures_util::stream::iter(races)
        .buffer_unordered(50)
        .collect::<Vec<()>>()
        .await;

    let expected = RUNS * 2;
    let arrived =
        crate::support::eventually(Duration::from_secs(20), || receiver.all().len() >= expected)
            .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let requests = receiver.all();
    assert!(arrived, "{} of {expected} deliveries", requests.len());
    let mut per_run: HashMap<&str, usize> = HashMap::new();
    for r in &requests {
        *per_run.entry(r.path.as_str()).or_default() += 1;
    }
    assert_eq!(per_run.len(), expected);
    assert!(
        per_run.values().all(|n| *n == 1),
        "a run got two deliveries: {:?}",
        per_run.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    // Whatever was not consumed is still waiting (part 1: one waiter per run).
    assert_eq!(app.waiters("pay").await.len(), RUNS);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_schedulers_fire_each_timeout_once() {
    let redis = RedisServer::start();
    let settings = test_settings(&redis.url());
    let api = TestApp::start_role(settings.clone(), herald::app::Role::Api).await;
    let mut fast = settings.clone();
    fast.scheduler.tick_ms = 1;
    let w1 = herald::app::start(fast.clone(), herald::app::Role::Worker)
        .await
        .unwrap();
    let w2 = herald::app::start(fast.clone(), herald::app::Role::Worker)
        .await
        .unwrap();
    let w3 = herald::app::start(fast, herald::app::Role::Worker)
        .await
        .unwrap();
    let receiver = Receiver::start().await;
    const WAITERS: usize = 300;
    let registrations = futures_util::stream::iter(0..WAITERS).map(|i| {
        let api = &api;
        let url = receiver.url(&format!("/t/{i}"));
        async move {
            api.wait(
                &format!("tick-{}", i % 7),
                json!({"url": url, "timeout": 1}),
            )
            .await
            .0
        }
    });
    let statuses: Vec<u16> = registrations.buffer_unordered(50).collect().await;
    assert!(statuses.iter().all(|s| *s == 200));
    let arrived =
        crate::support::eventually(Duration::from_secs(20), || receiver.all().len() >= WAITERS)
            .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let requests = receiver.all();
    assert!(arrived, "{} of {WAITERS} timeouts", requests.len());
    let mut per_waiter: HashMap<&str, usize> = HashMap::new();
    for r in &requests {
        assert_eq!(r.header("herald-outcome"), Some("timeout"));
        *per_waiter.entry(r.path.as_str()).or_default() += 1;
    }
    assert_eq!(per_waiter.len(), WAITERS);
    assert!(
        per_waiter.values().all(|n| *n == 1),
        "a timeout fired twice"
    );
    for w in [w1, w2, w3] {
        w.stop().await;
    }
    api.stop().await;
}
