//! Every Herald script is fast at the limits: the largest state the default limits allow
//! one tenant — an event with `waiters_per_event` waiters, a (run, event) with
//! `saved_per_run_event` saved notifications, a full history — and then every operation
//! on it, with Redis `SLOWLOG` recording commands over 1 ms (`slowlog-log-slower-than
//! 1000`). No Herald script may appear in it.
//!
//! The operations: a wait on the full event (registered, then refused as full), lookback
//! notifies saving up to the cap (and refused past it) while the event holds the others'
//! waiters, waits consuming saved notifications, a lookback notify finding its run's one
//! waiter among all the others, a cancel of a run waiting there, a broadcast to all of
//! them (in `waiters.notify_batch` batches), the scheduler timing out `scheduler.batch`
//! waiters at once, and the deliveries' own scripts.
//!
//! On the suite's topology: SLOWLOG is per server, so on a Redis Cluster every master's is
//! read (`TEST_REDIS_TOPOLOGY=cluster`, as `scripts/test` runs it). Run it with
//! `cargo test --release --test it -- slowlog:: --nocapture`: it prints each script's
//! calls, how many were over 1 ms, the median, the 99th percentile and the slowest.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;

use crate::support::redis::RedisProcess;
use crate::support::{test_settings, Receiver, RedisServer, TestApp};

/// `slowlog-log-slower-than`, microseconds: the bound every script call must meet.
const SLOWER_THAN_US: u64 = 1000;
/// The share of a script's calls allowed over the bound. On a loaded machine the OS
/// preempts Redis now and then, and an O(1) script then shows a few ms; a script whose
/// work grows with the state is over the bound in most calls, not in 5 %.
const SLOW_SHARE: f64 = 0.05;

/// The servers whose SLOWLOG holds the scripts: the one server, or every master.
fn masters(redis: &RedisServer) -> Vec<&RedisProcess> {
    match redis {
        RedisServer::Standalone(p) => vec![p],
        RedisServer::Cluster(c) => c.masters(),
        RedisServer::Sentinel(s) => vec![s.master()],
    }
}

fn slowlog(conn: &mut redis::Connection) -> Vec<(u64, String)> {
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query(conn)
        .unwrap();
    let mut out = Vec::new();
    for entry in entries {
        let redis::Value::Array(fields) = entry else {
            continue;
        };
        let micros: u64 = redis::from_redis_value(fields[2].clone()).unwrap_or(0);
        let args: Vec<String> = redis::from_redis_value(fields[3].clone()).unwrap_or_default();
        out.push((micros, args.join(" ")));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_script_takes_over_a_millisecond_at_the_default_limits() {
    let redis = RedisServer::start();
    let mut conns: Vec<redis::Connection> = masters(&redis).iter().map(|m| m.client()).collect();
    for conn in &mut conns {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("slowlog-max-len")
            .arg(1_000_000)
            .exec(conn)
            .unwrap();
    }
    let settings = test_settings(&redis.url());
    let limits = settings.limits.defaults.clone();
    let per_event = limits.waiters_per_event as usize;
    let per_run_event = limits.saved_per_run_event as usize;
    let timeout_batch = settings.scheduler.batch;
    let app = TestApp::start(settings).await;
    let receiver = Receiver::start().await;
    let sha_names: HashMap<String, &str> = herald::store::scripts::all()
        .iter()
        .map(|(name, script)| (script.get_hash().to_owned(), *name))
        .collect();
    let wait = |event: &'static str, run: Option<String>, timeout: u64, path: String| {
        let mut request = app
            .http
            .post(app.url(&format!("/v2/wait/{event}")))
            .bearer_auth(&app.token)
            .body(json!({"url": receiver.url(&path), "timeout": timeout}).to_string());
        if let Some(run) = run {
            request = request.header("Upstash-Workflow-RunId", run);
        }
        app.send(request)
    };

    // The state: `big` holds one waiter short of the limit, one of them run wfr_in's.
    let statuses: Vec<u16> = futures_util::stream::iter(0..per_event - 1)
        .map(|i| {
            let run = (i == 0).then(|| "wfr_in".to_owned());
            let wait = &wait;
            async move { wait("big", run, 3600, format!("/big/{i}")).await.0 }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 200), "building the state");

    // Every call is logged (threshold 0) so that each script's share of slow calls is
    // known: see SLOW_SHARE.
    for conn in &mut conns {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("slowlog-log-slower-than")
            .arg(0)
            .exec(conn)
            .unwrap();
        redis::cmd("SLOWLOG").arg("RESET").exec(conn).unwrap();
    }

    // The last waiter the event may have, then refusals.
    let (status, body) = wait("big", None, 3600, "/big/last".into()).await;
    assert_eq!(status, 200, "{body}");
    for _ in 0..5 {
        let (status, body) = wait("big", None, 3600, "/big/over".into()).await;
        assert_eq!(status, 422, "{body}");
    }
    // Lookback notifies of a run with no waiter on the full event: saved up to the cap.
    for i in 0..=per_run_event {
        let (status, body) = app
            .post("/v2/notify/wfr_saved/big", &app.token, format!("s{i}"))
            .await;
        let want = if i < per_run_event { 201 } else { 422 };
        assert_eq!(status, want, "{body}");
    }
    // Waits consuming them (nothing registered, so the full event does not refuse them).
    for i in 0..5 {
        let (status, body) = wait("big", Some("wfr_saved".into()), 3600, format!("/c/{i}")).await;
        assert_eq!(
            (status, &body["status"]),
            (200, &json!("notified")),
            "{body}"
        );
    }
    // A lookback notify finding its run's one waiter among all the others.
    let (status, body) = app.post("/v2/notify/wfr_in/big", &app.token, "in").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body.as_array().map(Vec::len), Some(1), "{body}");
    // A run waiting there (in the slot just freed) is cancelled.
    let (status, body) = wait("big", Some("wfr_c".into()), 3600, "/big/c".into()).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .send(
            app.http
                .delete(app.url("/v2/workflows/runs/wfr_c"))
                .bearer_auth(&app.token),
        )
        .await;
    assert_eq!(
        (status, &body["waitersRemoved"]),
        (200, &json!(1)),
        "{body}"
    );
    // A broadcast to all of them.
    let (status, body) = app.notify("big", "all").await;
    assert_eq!(status, 201);
    assert_eq!(body.as_array().map(Vec::len), Some(per_event - 1));
    // Twenty scheduler batches of timeouts due at once.
    let statuses: Vec<u16> = futures_util::stream::iter(0..20 * timeout_batch)
        .map(|i| {
            let wait = &wait;
            async move { wait("short", None, 1, format!("/short/{i}")).await.0 }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 200));
    // The timeouts fire (deliveries, acks and retries go on meanwhile).
    let fired = crate::support::eventually_async(Duration::from_secs(60), || async {
        app.waiters("short").await.is_empty()
    })
    .await;
    assert!(fired, "the short waiters time out");

    // Per script: calls, calls over the bound, the slowest (with its command).
    let mut per_script: HashMap<&str, (usize, usize, u64, String)> = HashMap::new();
    let mut durations: HashMap<&str, Vec<u64>> = HashMap::new();
    for (micros, command) in conns.iter_mut().flat_map(slowlog) {
        let mut words = command.split(' ');
        let verb = words.next().unwrap_or("").to_ascii_lowercase();
        let Some(sha) = words.next().filter(|_| verb == "evalsha" || verb == "eval") else {
            continue;
        };
        let name = sha_names.get(sha).copied().unwrap_or("(unknown script)");
        durations.entry(name).or_default().push(micros);
        let entry = per_script.entry(name).or_insert((0, 0, 0, String::new()));
        entry.0 += 1;
        if micros > SLOWER_THAN_US {
            entry.1 += 1;
        }
        if micros > entry.2 {
            entry.2 = micros;
            entry.3 = command.chars().take(160).collect();
        }
    }
    let mut names: Vec<&&str> = per_script.keys().collect();
    names.sort();
    let mut too_slow = Vec::new();
    for name in names {
        let (calls, slow, max, example) = &per_script[*name];
        let mut sorted = durations.remove(*name).unwrap_or_default();
        sorted.sort_unstable();
        let p = |q: f64| sorted[((sorted.len() - 1) as f64 * q) as usize];
        let line = format!(
            "{name}: {calls} calls, {slow} over {SLOWER_THAN_US} µs, median {} µs, p99 {} µs, \
             slowest {max} µs ({example})",
            p(0.5),
            p(0.99)
        );
        eprintln!("{line}");
        if *slow as f64 > SLOW_SHARE * *calls as f64 {
            too_slow.push(line);
        }
    }
    assert!(
        too_slow.is_empty(),
        "scripts over {SLOWER_THAN_US} µs at the default limits:\n{}",
        too_slow.join("\n")
    );
    app.stop().await;
}
