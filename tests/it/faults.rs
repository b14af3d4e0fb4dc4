//! Fault tests against real processes, bounded in count and time, every process stopped by
//! its PID:
//!
//! - kill -9 of a worker *process* (`herald serve --role worker`) mid-delivery under load;
//! - kill -9 and restart of redis-server (`appendonly yes`, `appendfsync always`) under load;
//! - SIGSTOP of redis-server: 503 within the response timeout, recovery after SIGCONT.
//!
//! CI runs a short variant. `HERALD_FAULT_LONG=1` runs the long one (20 worker kills, 10
//! Redis crashes); `HERALD_FAULT_CYCLES=N` sets both counts. Figures are printed (run with
//! `--nocapture` to see them).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald::app::Role;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::support::{eventually, eventually_async, test_settings, Receiver, RedisServer, TestApp};

/// Cycles of a fault test: `HERALD_FAULT_CYCLES`, else the long or the CI count.
fn cycles(long: usize, short: usize) -> usize {
    if let Some(n) = std::env::var("HERALD_FAULT_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    if std::env::var("HERALD_FAULT_LONG").is_ok_and(|v| v == "1") {
        long
    } else {
        short
    }
}

/// A `herald serve --role worker` child process, killed (by PID) when dropped.
pub(crate) struct WorkerProcess {
    child: Child,
}

impl WorkerProcess {
    pub(crate) fn spawn(config: &Path) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["serve", "--role", "worker", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .env_remove("REDIS_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the herald binary");
        WorkerProcess { child }
    }

    /// kill -9.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Message ids of every entry pending in the delivery streams (handed to a consumer and
/// not acknowledged).
fn pending_message_ids(redis: &RedisServer, prefix: &str, partitions: u16) -> HashSet<String> {
    let keys = herald::store::Keys::new(prefix, partitions);
    let mut conn = redis.client();
    let mut out = HashSet::new();
    for p in keys.all_partitions() {
        let stream = p.deliveries();
        let pending: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&stream)
            .arg("herald")
            .arg("-")
            .arg("+")
            .arg(100_000)
            .query(&mut conn)
            .unwrap();
        for entry in pending.ids {
            let range: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(&stream)
                .arg(&entry.id)
                .arg(&entry.id)
                .query(&mut conn)
                .unwrap();
            for e in range.ids {
                let job: Value = serde_json::from_str(&e.get::<String>("j").unwrap()).unwrap();
                out.insert(job["m"].as_str().unwrap().to_owned());
            }
        }
    }
    out
}

/// Deliveries received per message id, and the message ids seen per path.
fn tally(receiver: &Receiver) -> (HashMap<String, usize>, HashMap<String, HashSet<String>>) {
    let mut per_message: HashMap<String, usize> = HashMap::new();
    let mut per_path: HashMap<String, HashSet<String>> = HashMap::new();
    for r in receiver.all() {
        let id = r.header("upstash-message-id").unwrap_or("").to_owned();
        *per_message.entry(id.clone()).or_default() += 1;
        per_path.entry(r.path.clone()).or_default().insert(id);
    }
    (per_message, per_path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_processes_killed_mid_delivery_lose_nothing() {
    let cycles = cycles(20, 5);
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.delivery.request_timeout_secs = 1;
    settings.delivery.reclaim_idle_secs = 2;
    // Entries in flight at several kills in a row must still be delivered, not poison.
    settings.delivery.max_deliveries = 1000;
    let prefix = settings.redis.key_prefix.clone();
    let partitions = settings.redis.partitions;
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("worker.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
listen = "127.0.0.1:0"
shutdown_grace_secs = 1
[redis]
url = "{url}"
key_prefix = "{prefix}"
[delivery]
allow_cidrs = ["127.0.0.0/8"]
backoff_factor = 0.001
block_ms = 200
concurrency = 16
request_timeout_secs = 1
reclaim_idle_secs = 2
max_deliveries = 1000
[scheduler]
tick_ms = 50
[log]
filter = "error"
"#,
            url = redis.url()
        ),
    )
    .unwrap();
    let api = Arc::new(TestApp::start_role(settings, Role::Api).await);
    let receiver = Receiver::start().await;
    // Slow enough that a kill always finds attempts in flight.
    receiver.script_slow("/w/", &[200], Duration::from_millis(50));

    // Load: waits and notifies from two loops; every acknowledged notify is recorded.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = CancellationToken::new();
    let mut loads = Vec::new();
    for lane in 0..2 {
        let (api, acked, stop, url) = (
            api.clone(),
            acked.clone(),
            stop.clone(),
            receiver.url("/w/"),
        );
        loads.push(tokio::spawn(async move {
            for i in 0..100_000 {
                if stop.is_cancelled() {
                    break;
                }
                let event = format!("k{lane}-{i}");
                let (status, body) = api
                    .wait(&event, json!({ "url": format!("{url}{event}") }))
                    .await;
                assert_eq!(status, 200, "{body}");
                let (status, body) = api.notify(&event, "load").await;
                assert_eq!(status, 201, "{body}");
                acked
                    .lock()
                    .unwrap()
                    .push(body[0]["messageId"].as_str().unwrap().to_owned());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }

    let mut worker = WorkerProcess::spawn(&config);
    let mut in_flight_at_kills: HashSet<String> = HashSet::new();
    let mut kills = 0;
    for _ in 0..cycles {
        let before = receiver.all().len();
        assert!(
            eventually(Duration::from_secs(20), || receiver.all().len()
                >= before + 20)
            .await,
            "deliveries flow through the new worker"
        );
        worker.kill();
        kills += 1;
        in_flight_at_kills.extend(pending_message_ids(&redis, &prefix, partitions));
        worker = WorkerProcess::spawn(&config);
    }
    stop.cancel();
    for l in loads {
        l.await.unwrap();
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    let drained = eventually(Duration::from_secs(60), || {
        let (per_message, _) = tally(&receiver);
        acked.iter().all(|m| per_message.contains_key(m))
    })
    .await;
    let (per_message, per_path) = tally(&receiver);
    let lost: Vec<&String> = acked
        .iter()
        .filter(|m| !per_message.contains_key(*m))
        .collect();
    let duplicated: Vec<&String> = per_message
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(m, _)| m)
        .collect();
    println!(
        "worker kill -9: {kills} cycles, {} deliveries acknowledged, {} lost, {} duplicated ({} in flight at the kills)",
        acked.len(),
        lost.len(),
        duplicated.len(),
        in_flight_at_kills.len()
    );
    assert!(drained && lost.is_empty(), "lost deliveries: {lost:?}");
    for m in &duplicated {
        assert!(
            in_flight_at_kills.contains(*m),
            "{m} was delivered twice but was not in flight at a kill"
        );
    }
    for (path, ids) in &per_path {
        assert_eq!(ids.len(), 1, "{path} got several message ids: {ids:?}");
    }
    drop(worker);
    if let Ok(api) = Arc::try_unwrap(api) {
        api.stop().await;
    }
}

/// What the load saw: acknowledged waits (event ids) and acknowledged notifies (message
/// ids per event); anything else was refused or is indeterminate.
#[derive(Default)]
struct Ledger {
    waits: Vec<String>,
    notified: HashMap<String, Vec<String>>,
    failed: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_crashes_lose_no_acknowledged_wait_or_notify() {
    let cycles = cycles(10, 3);
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut settings = test_settings(&redis.url());
    settings.delivery.request_timeout_secs = 1;
    settings.delivery.reclaim_idle_secs = 2;
    settings.redis.response_timeout_ms = 1000;
    settings.redis.connect_timeout_ms = 300;
    let app = Arc::new(TestApp::start(settings).await);
    let receiver = Receiver::start().await;

    let ledger: Arc<Mutex<Ledger>> = Arc::default();
    let stop = CancellationToken::new();
    let mut loads = Vec::new();
    for lane in 0..2 {
        let (app, ledger, stop, url) = (
            app.clone(),
            ledger.clone(),
            stop.clone(),
            receiver.url("/r/"),
        );
        loads.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let send = |req: reqwest::RequestBuilder| async move {
                match req.send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let text = r.text().await.unwrap_or_default();
                        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
                    }
                    Err(_) => (0, Value::Null),
                }
            };
            for i in 0..100_000 {
                if stop.is_cancelled() {
                    break;
                }
                let event = format!("c{lane}-{i}");
                let wait = http
                    .post(app.url(&format!("/v2/wait/{event}")))
                    .bearer_auth(&app.token)
                    .body(json!({ "url": format!("{url}{event}"), "timeout": "1h" }).to_string());
                let (status, _) = send(wait).await;
                if status != 200 {
                    ledger.lock().unwrap().failed += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                ledger.lock().unwrap().waits.push(event.clone());
                let notify = http
                    .post(app.url(&format!("/v2/notify/{event}")))
                    .bearer_auth(&app.token)
                    .body("crash");
                match send(notify).await {
                    (201, body) => {
                        let ids = body
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|n| n["messageId"].as_str().unwrap().to_owned())
                            .collect();
                        ledger.lock().unwrap().notified.insert(event, ids);
                    }
                    _ => ledger.lock().unwrap().failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }

    for _ in 0..cycles {
        let before = ledger.lock().unwrap().notified.len();
        assert!(
            eventually(Duration::from_secs(20), || ledger
                .lock()
                .unwrap()
                .notified
                .len()
                >= before + 20)
            .await,
            "the load gets through after the restart"
        );
        redis.kill();
        // The outage: requests meanwhile fail (503) or are indeterminate.
        tokio::time::sleep(Duration::from_millis(200)).await;
        redis.restart();
    }
    stop.cancel();
    for l in loads {
        l.await.unwrap();
    }
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    // Acknowledged waits whose notify was not acknowledged: notify them now. The waiter is
    // either still registered (delivered now) or was taken by a notify whose reply was
    // lost (its delivery was enqueued then).
    for event in ledger
        .waits
        .iter()
        .filter(|e| !ledger.notified.contains_key(*e))
    {
        let ok = eventually_async(Duration::from_secs(10), || async {
            app.notify(event, "sweep").await.0 == 201
        })
        .await;
        assert!(ok, "notify {event} after the crashes");
    }
    let delivered_paths =
        || -> HashSet<String> { receiver.all().into_iter().map(|r| r.path).collect() };
    let complete = eventually(Duration::from_secs(60), || {
        let paths = delivered_paths();
        ledger
            .waits
            .iter()
            .all(|e| paths.contains(&format!("/r/{e}")))
    })
    .await;
    let paths = delivered_paths();
    let lost_waits: Vec<&String> = ledger
        .waits
        .iter()
        .filter(|e| !paths.contains(&format!("/r/{e}")))
        .collect();
    let (per_message, per_path) = tally(&receiver);
    let acked_ids: Vec<&String> = ledger.notified.values().flatten().collect();
    let lost_notifies: Vec<&&String> = acked_ids
        .iter()
        .filter(|m| !per_message.contains_key(**m))
        .collect();
    let empty_acked = ledger.notified.values().filter(|v| v.is_empty()).count();
    let duplicated = per_message.values().filter(|n| **n > 1).count();
    println!(
        "redis kill -9 (appendfsync always): {cycles} cycles, {} waits and {} notifies acknowledged, \
         {} requests failed or indeterminate, lost: {} waits, {} notified deliveries; {} duplicated deliveries",
        ledger.waits.len(),
        ledger.notified.len(),
        ledger.failed,
        lost_waits.len(),
        lost_notifies.len(),
        duplicated
    );
    assert!(
        complete && lost_waits.is_empty(),
        "lost waits: {lost_waits:?}"
    );
    assert!(
        lost_notifies.is_empty(),
        "lost notified deliveries: {lost_notifies:?}"
    );
    assert_eq!(
        empty_acked, 0,
        "an acknowledged wait was always found by its acknowledged notify"
    );
    for (path, ids) in &per_path {
        assert_eq!(ids.len(), 1, "{path}: one outcome per waiter, got {ids:?}");
    }
    if let Ok(app) = Arc::try_unwrap(app) {
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_redis_answers_503_within_the_timeout_and_recovers() {
    let redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut settings = test_settings(&redis.url());
    settings.redis.response_timeout_ms = 500;
    settings.redis.connect_timeout_ms = 300;
    let app = TestApp::start(settings).await;
    let receiver = Receiver::start().await;
    assert_eq!(
        app.wait("paused", json!({"url": receiver.url("/paused")}))
            .await
            .0,
        200
    );

    /// Sends SIGCONT even when an assertion fails, so the server can be stopped.
    struct Resume<'a>(&'a RedisServer);
    impl Drop for Resume<'_> {
        fn drop(&mut self) {
            self.0.signal("CONT");
        }
    }
    redis.signal("STOP");
    let resume = Resume(&redis);
    for _ in 0..3 {
        let started = Instant::now();
        let (status, body) = app.notify("paused", "x").await;
        let took = started.elapsed();
        assert_eq!(status, 503, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("unavailable"),
            "{body}"
        );
        // The response timeout (500 ms) plus scheduling slack on a busy machine.
        assert!(took < Duration::from_millis(1500), "503 took {took:?}");
    }
    let (status, _) = app
        .wait("later", json!({"url": receiver.url("/later")}))
        .await;
    assert_eq!(status, 503);
    assert_eq!(app.get("/readyz", "").await.0, 503);
    drop(resume);

    let resumed = Instant::now();
    assert!(
        eventually_async(Duration::from_secs(10), || async {
            app.get("/readyz", "").await.0 == 200
        })
        .await,
        "ready again after SIGCONT"
    );
    let recovery = resumed.elapsed();
    // The notifies sent during the pause may have run once Redis resumed (a 503 is
    // indeterminate); a notify now finds the waiter or finds it taken. Either way the
    // waiter gets exactly one delivery.
    let (status, _) = app.notify("paused", "x").await;
    assert_eq!(status, 201);
    receiver.expect("/paused", 1).await;
    assert_eq!(
        app.wait("after", json!({"url": receiver.url("/after")}))
            .await
            .0,
        200
    );
    assert_eq!(app.notify("after", "y").await.0, 201);
    receiver.expect("/after", 1).await;
    assert_eq!(receiver.at("/paused").len(), 1, "one outcome per waiter");
    println!(
        "redis SIGSTOP: 503 within the 500 ms response timeout; ready {recovery:?} after SIGCONT"
    );
    app.stop().await;
}

/// Resident memory of this process (Herald runs in it), in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A raw HTTP endpoint answering 500 and then either streaming a 1 GiB body as fast as it
/// can ("flood") or one byte a second ("drip"). Returns its port and the bytes of body it
/// managed to write.
async fn abusive_endpoint(mode: &'static str) -> (u16, Arc<Mutex<u64>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let written: Arc<Mutex<u64>> = Arc::default();
    let total = written.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let total = total.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                if mode == "flood" {
                    let head =
                        "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 1073741824\r\n\r\n";
                    if socket.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = vec![b'x'; 64 * 1024];
                    for _ in 0..(1 << 14) {
                        if socket.write_all(&chunk).await.is_err() {
                            return;
                        }
                        *total.lock().unwrap() += chunk.len() as u64;
                    }
                } else {
                    let head =
                        "HTTP/1.1 500 Internal Server Error\r\ntransfer-encoding: chunked\r\n\r\n";
                    if socket.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    for _ in 0..30 {
                        if socket.write_all(b"1\r\nx\r\n").await.is_err() {
                            return;
                        }
                        *total.lock().unwrap() += 1;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            });
        }
    });
    (port, written)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_or_dripping_responses_fail_cleanly_with_bounded_memory() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.delivery.max_retries = 0;
    settings.delivery.request_timeout_secs = 2;
    let app = TestApp::start(settings).await;
    let (flood_port, flooded) = abusive_endpoint("flood").await;
    let (drip_port, dripped) = abusive_endpoint("drip").await;
    let rss_before = rss_kib();
    let started = Instant::now();
    for (event, port) in [("flood", flood_port), ("drip", drip_port)] {
        let url = format!("http://127.0.0.1:{port}/{event}");
        assert_eq!(app.wait(event, json!({ "url": url })).await.0, 200);
        assert_eq!(app.notify(event, "x").await.0, 201);
    }
    let letters = || async {
        let (_, page) = app.get("/v2/dlq", &app.token).await;
        page["messages"].as_array().cloned().unwrap_or_default()
    };
    let done = eventually_async(Duration::from_secs(15), || async {
        letters().await.len() == 2
    })
    .await;
    let letters = letters().await;
    assert!(done, "both deliveries end in the dead letters: {letters:?}");
    let took = started.elapsed();
    let grown_kib = rss_kib().saturating_sub(rss_before);
    for letter in &letters {
        assert_eq!(letter["lastStatus"], 500, "{letter}");
        let error = letter["lastError"].as_str().unwrap();
        assert!(
            error.len() <= 1100,
            "the excerpt is capped: {} bytes",
            error.len()
        );
    }
    let flooded = *flooded.lock().unwrap();
    let dripped = *dripped.lock().unwrap();
    println!(
        "response abuse: 1 GiB offered, {} KiB written before Herald hung up; drip: {dripped} bytes; \
         both dead-lettered in {took:?}; RSS grew {grown_kib} KiB",
        flooded / 1024
    );
    assert!(
        flooded < 64 << 20,
        "Herald stopped reading early ({flooded} bytes written)"
    );
    assert!(
        dripped <= 5,
        "the drip was cut off by the request timeout ({dripped} bytes)"
    );
    assert!(grown_kib < 64 * 1024, "memory grew by {grown_kib} KiB");
    app.stop().await;
}
