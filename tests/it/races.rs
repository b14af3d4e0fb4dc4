//! Races: notifies colliding with deadlines (I1: each waiter ends exactly once, and a
//! notify reports exactly the waiters it delivered to, I2), and waits colliding with
//! lookback notifies (I3: a saved notification is consumed at most once).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::json;

use crate::support::{test_settings, Receiver, RedisServer, TestApp};

#[tokio::test]
async fn a_thousand_waiters_end_exactly_once_when_notifies_and_deadlines_collide() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.scheduler.tick_ms = 5;
    settings.delivery.concurrency = 128;
    let app = TestApp::start(settings).await;
    let receiver = Receiver::start().await;
    const EVENTS: usize = 500; // two waiters each: 1,000 waiters

    let registered_at = Instant::now();
    let registrations = (0..EVENTS * 2).map(|i| {
        let event = format!("race-{}", i / 2);
        let url = receiver.url(&format!("/w/{i}"));
        let app = &app;
        async move { app.wait(&event, json!({"url": url, "timeout": 2})).await.0 }
    });
    let statuses = join_all(registrations).await;
    assert!(statuses.iter().all(|s| *s == 200), "all registered");
    let registration_took = registered_at.elapsed();

    // Fire the notifies around the deadlines (2 s after registration), spread over 0.6 s.
    let notify_at = registered_at + Duration::from_millis(1700);
    tokio::time::sleep_until(notify_at.into()).await;
    let notifies = (0..EVENTS).map(|e| {
        let app = &app;
        async move {
            tokio::time::sleep(Duration::from_micros((e as u64 * 1200) % 600_000)).await;
            let (status, body) = app.notify(&format!("race-{e}"), "paid").await;
            assert_eq!(status, 201);
            body.as_array()
                .unwrap()
                .iter()
                .map(|n| n["waiter"]["url"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    });
    let reported: Vec<String> = join_all(notifies).await.into_iter().flatten().collect();

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
        "race: registration took {registration_took:?}; {} events, {timeouts} timeouts",
        EVENTS * 2 - timeouts
    );
    app.stop().await;
}

#[tokio::test]
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
    for (r, statuses) in join_all(pairs).await.into_iter().enumerate() {
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
    join_all(races).await;

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
