//! The workflow runtime (src/workflow/) at the protocol level: a small workflow endpoint
//! written here the way the SDKs behave (each delivery carries the history so far; the
//! endpoint publishes the next step with `/v2/batch`, or ends the run with `DELETE
//! ?cancel=false`) against a live Herald and a real Redis of the suite's topology. The
//! real SDKs run in `tests/workflow/` (scripts/test).
//!
//! What is checked here is what the SDK suite cannot see: exactly one delivery per
//! history entry and the prefix each carries, duplicate submissions, state left behind,
//! the statuses of late messages, failure, cancel, and a worker killed mid-run.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use redis::Commands;
use serde_json::{json, Value};

use crate::support::{eventually, test_settings, Receiver, RedisServer, TestApp};

/// One delivery the endpoint got: its history and headers.
#[derive(Debug, Clone)]
struct Hit {
    entries: Vec<Value>,
    run: String,
    message_id: String,
    headers: Vec<(String, String)>,
}

impl Hit {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The decoded body of entry `i` (JSON).
    fn step(&self, i: usize) -> Value {
        let b64 = self.entries[i]["body"].as_str().unwrap();
        serde_json::from_slice(&STANDARD.decode(b64).unwrap()).unwrap_or(Value::Null)
    }
}

#[derive(Clone)]
pub(crate) struct Flow {
    herald: String,
    /// The tenant token it calls Herald with (replaced when a test restarts Herald, which
    /// issues a new one).
    token: Arc<Mutex<String>>,
    /// Run steps before the end.
    steps: usize,
    /// Register a wait for this event as step 1 (then end after its result).
    wait_for: Option<String>,
    /// Publish every step twice (an at-least-once SDK).
    twice: bool,
    hits: Arc<Mutex<Vec<Hit>>>,
    ended: Arc<Mutex<Vec<u16>>>,
    /// Runs whose end Herald acknowledged.
    pub(crate) done: Arc<Mutex<std::collections::HashSet<String>>>,
    /// `Upstash-Retries` of the steps it publishes (Herald's default when `None`).
    retries: Option<u32>,
}

impl Flow {
    fn token(&self) -> String {
        self.token.lock().unwrap().clone()
    }
}

/// A workflow endpoint that behaves like the SDKs' `serve()`.
pub(crate) struct Endpoint {
    port: u16,
    pub(crate) flow: Flow,
}

async fn serve_step(req: HttpRequest, body: web::Bytes, flow: web::Data<Flow>) -> HttpResponse {
    let entries: Vec<Value> = serde_json::from_slice(&body).unwrap_or_default();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let run = req
        .headers()
        .get("upstash-workflow-runid")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let hit = Hit {
        entries: entries.clone(),
        run: run.clone(),
        message_id: req
            .headers()
            .get("upstash-message-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned(),
        headers,
    };
    flow.hits.lock().unwrap().push(hit);
    let url = format!("http://{}{}", req.connection_info().host(), req.path());
    let http = crate::support::http_client();
    let k = entries.len();
    let step_headers = json!({
        "upstash-workflow-runid": run,
        "upstash-workflow-init": "false",
        "upstash-workflow-url": url,
        "upstash-workflow-sdk-version": "1",
        "upstash-forward-upstash-workflow-sdk-version": "1",
        "content-type": "application/json",
    });
    let mut step_headers = step_headers;
    if let Some(retries) = flow.retries {
        step_headers["upstash-retries"] = json!(retries.to_string());
    }
    if let (Some(event), 1) = (&flow.wait_for, k) {
        let wait = json!({
            "url": url, "timeout": "1h", "timeoutUrl": url,
            "timeoutHeaders": {"Upstash-Workflow-RunId": [run]},
            "step": {"stepId": 1, "stepName": "w", "stepType": "Wait", "concurrent": 1},
        });
        let r = http
            .post(format!("{}/v2/wait/{event}", flow.herald))
            .bearer_auth(flow.token())
            .header("Upstash-Workflow-RunId", &run)
            .body(wait.to_string())
            .send()
            .await;
        return match r {
            Ok(r) if r.status().is_success() => HttpResponse::Ok().finish(),
            _ => HttpResponse::InternalServerError().finish(),
        };
    }
    let last = if flow.wait_for.is_some() {
        1
    } else {
        flow.steps
    };
    if k <= last {
        let step = json!({
            "stepId": k, "stepName": format!("s{k}"), "stepType": "Run",
            "out": format!("{k}"), "concurrent": 1,
        });
        let batch =
            json!([{ "destination": url, "headers": step_headers, "body": step.to_string() }]);
        for _ in 0..if flow.twice { 2 } else { 1 } {
            // Like the SDK: a publish that fails fails the delivery (500), which Herald
            // retries.
            let r = http
                .post(format!("{}/v2/batch", flow.herald))
                .bearer_auth(flow.token())
                .body(batch.to_string())
                .send()
                .await;
            if !r.is_ok_and(|r| r.status().is_success()) {
                return HttpResponse::InternalServerError().finish();
            }
        }
    } else {
        let r = http
            .delete(format!(
                "{}/v2/workflows/runs/{run}?cancel=false",
                flow.herald
            ))
            .bearer_auth(flow.token())
            .body("\"done\"")
            .send()
            .await;
        let status = r.map(|r| r.status().as_u16()).unwrap_or(0);
        flow.ended.lock().unwrap().push(status);
        if status != 200 {
            return HttpResponse::InternalServerError().finish();
        }
        flow.done.lock().unwrap().insert(run.clone());
    }
    HttpResponse::Ok().json(json!({"workflowRunId": run, "finishCondition": "success"}))
}

impl Endpoint {
    async fn start(app: &TestApp, steps: usize) -> Self {
        Self::start_with(app, steps, None, false).await
    }

    async fn start_with(app: &TestApp, steps: usize, wait_for: Option<&str>, twice: bool) -> Self {
        Self::start_full(app, steps, wait_for, twice, None).await
    }

    /// An endpoint whose steps each carry `Upstash-Retries: retries`.
    pub(crate) async fn start_with_retries(app: &TestApp, steps: usize, retries: u32) -> Self {
        Self::start_full(app, steps, None, false, Some(retries)).await
    }

    async fn start_full(
        app: &TestApp,
        steps: usize,
        wait_for: Option<&str>,
        twice: bool,
        retries: Option<u32>,
    ) -> Self {
        let flow = Flow {
            herald: app.base.clone(),
            token: Arc::new(Mutex::new(app.token.clone())),
            steps,
            wait_for: wait_for.map(str::to_owned),
            twice,
            hits: Arc::default(),
            ended: Arc::default(),
            done: Arc::default(),
            retries,
        };
        let data = web::Data::new(flow.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(64 << 20))
                .default_service(web::to(serve_step))
        })
        .listen(listener)
        .unwrap()
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .run();
        tokio::spawn(server);
        Endpoint { port, flow }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}/api/wf", self.port)
    }

    fn hits(&self) -> Vec<Hit> {
        self.flow.hits.lock().unwrap().clone()
    }

    async fn ended(&self, limit: Duration) -> bool {
        eventually(limit, || !self.flow.ended.lock().unwrap().is_empty()).await
    }
}

/// The first message of a run, as `Client.trigger` sends it.
pub(crate) fn trigger(url: &str, run: &str, extra: Value) -> Value {
    let mut headers = json!({
        "upstash-workflow-init": "true",
        "upstash-workflow-runid": run,
        "upstash-workflow-url": url,
        "upstash-workflow-sdk-version": "1",
        "upstash-forward-upstash-workflow-sdk-version": "1",
        "upstash-forward-x-k": "v",
        "upstash-forward-host": "junk",
        "content-type": "application/json",
    });
    for (k, v) in extra.as_object().unwrap() {
        headers[k] = v.clone();
    }
    json!([{ "destination": url, "headers": headers, "body": "{\"n\":1}" }])
}

async fn batch(app: &TestApp, body: &Value) -> (u16, Value) {
    app.post("/v2/batch", &app.token, body.to_string()).await
}

/// The run's keys and their TTLs (ms; -1: none).
fn run_keys(redis: &RedisServer, run: &str) -> Vec<(String, i64)> {
    let mut conn = redis.client();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("*{run}*"))
        .query(&mut conn)
        .unwrap();
    keys.into_iter()
        .map(|k| {
            let ttl: i64 = conn.pttl(&k).unwrap();
            (k, ttl)
        })
        .collect()
}

#[tokio::test]
async fn a_run_gets_one_delivery_per_entry_each_carrying_the_history_so_far() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    let endpoint = Endpoint::start(&app, 3).await;
    let run = "wfr_prefix-1";
    let (status, reply) = batch(&app, &trigger(&endpoint.url(), run, json!({}))).await;
    assert_eq!(status, 200, "{reply}");
    assert!(reply[0]["messageId"].as_str().is_some(), "{reply}");
    assert!(
        endpoint.ended(Duration::from_secs(20)).await,
        "the run did not end"
    );
    assert_eq!(*endpoint.flow.ended.lock().unwrap(), vec![200]);

    let hits = endpoint.hits();
    assert_eq!(hits.len(), 4, "one delivery per entry: {hits:?}");
    for (i, hit) in hits.iter().enumerate() {
        assert_eq!(
            hit.entries.len(),
            i + 1,
            "delivery {i} carries entries 0..={i}"
        );
        assert_eq!(hit.run, run);
        assert_eq!(hit.header("upstash-workflow-sdk-version"), Some("1"));
        assert_eq!(hit.header("content-type"), Some("application/json"));
        // Run-level user headers on every delivery; hop headers are not replayed.
        assert_eq!(hit.header("x-k"), Some("v"), "{:?}", hit.headers);
        assert_ne!(hit.header("host"), Some("junk"));
        assert!(hit.header("upstash-signature").is_some());
        // The delivered entry is the last one, named by Upstash-Message-Id.
        assert_eq!(hit.entries[i]["messageId"], hit.message_id.as_str());
        if i > 0 {
            assert_eq!(
                hit.entries[..i],
                hits[i - 1].entries[..],
                "a prefix grows by one"
            );
            assert_eq!(hit.step(i)["stepId"], i);
        }
    }
    assert_eq!(
        hits[0].step(0),
        json!({"n": 1}),
        "entry 0 is the initial body"
    );

    // Ended: late steps get 400, the lazy fetch 404, the end again 200; the history is
    // gone and the record expires.
    let late = json!([{ "destination": endpoint.url(), "headers": {
        "upstash-workflow-runid": run, "upstash-workflow-init": "false" },
        "body": "{\"stepId\":9,\"stepName\":\"x\",\"stepType\":\"Run\",\"out\":\"1\",\"concurrent\":1}" }]);
    let (status, body) = batch(&app, &late).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = app
        .get(&format!("/v2/workflows/runs/{run}"), &app.token)
        .await;
    assert_eq!(status, 404);
    let again = app
        .send(
            app.http
                .delete(app.url(&format!("/v2/workflows/runs/{run}?cancel=false")))
                .bearer_auth(&app.token),
        )
        .await;
    assert_eq!(again.0, 200, "{}", again.1);
    // Left: the ended run's record and the history of its deliveries (`herald history
    // <runId>`), both expiring; the run's history of entries is gone.
    let keys = run_keys(&redis, run);
    assert!(keys.iter().any(|(k, _)| k.contains(":wf:")), "{keys:?}");
    assert!(
        !keys.iter().any(|(k, _)| k.contains(":wfsteps:")),
        "{keys:?}"
    );
    for (key, ttl) in &keys {
        assert!(
            // History lists live to the end of their usage bucket (lua/shared/usage.lua).
            *ttl > 0 && *ttl <= 86_400_000 + 3_600_000,
            "{key} expires within a day and an hour: {ttl}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_repeated_trigger_or_step_changes_nothing() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    let endpoint = Endpoint::start_with(&app, 2, None, true).await;
    let run = "wfr_twice";
    let first = trigger(&endpoint.url(), run, json!({}));
    let (status, reply) = batch(&app, &first).await;
    assert_eq!(status, 200, "{reply}");
    let (status, reply) = batch(&app, &first).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply[0]["deduplicated"], true, "{reply}");
    assert!(endpoint.ended(Duration::from_secs(20)).await);
    // Every step was published twice; each entry was still delivered once.
    let hits = endpoint.hits();
    let lengths: Vec<usize> = hits.iter().map(|h| h.entries.len()).collect();
    assert_eq!(lengths, vec![1, 2, 3], "{hits:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_wait_of_a_run_resolves_into_its_history() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    let event = "order-wf-1";
    let endpoint = Endpoint::start_with(&app, 0, Some(event), false).await;
    let run = "wfr_waits";
    let (status, reply) = batch(&app, &trigger(&endpoint.url(), run, json!({}))).await;
    assert_eq!(status, 200, "{reply}");
    // The run's first step registered the wait.
    let mut waiting = false;
    for _ in 0..200 {
        if !app.waiters(event).await.is_empty() {
            waiting = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(waiting, "the wait was not registered");
    let (status, _) = app.notify(event, "{\"paid\":true}").await;
    assert_eq!(status, 201);
    assert!(endpoint.ended(Duration::from_secs(20)).await);
    let hits = endpoint.hits();
    assert_eq!(hits.len(), 2, "{hits:?}");
    let wait = hits[1].step(1);
    assert_eq!(wait["stepType"], "Wait", "{wait}");
    assert_eq!(wait["waitTimeout"], false);
    assert_eq!(wait["waitEventId"], event);
    let out = STANDARD.decode(wait["out"].as_str().unwrap()).unwrap();
    assert_eq!(out, b"{\"paid\":true}");
    assert_eq!(hits[1].header("x-k"), Some("v"));
    app.stop().await;
}

#[tokio::test]
async fn a_run_whose_endpoint_keeps_failing_fails_once_with_its_failure_callback() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    let receiver = Receiver::start().await;
    receiver.script("/wf", &[500], &[]);
    let run = "wfr_fails";
    let url = receiver.url("/wf");
    let body = trigger(
        &url,
        run,
        json!({
            "upstash-retries": "1",
            "upstash-failure-callback": receiver.url("/failed"),
            "upstash-failure-callback-forward-upstash-workflow-is-failure": "true",
            "upstash-failure-callback-retries": "0",
        }),
    );
    let (status, reply) = batch(&app, &body).await;
    assert_eq!(status, 200, "{reply}");
    let failed = receiver.expect("/failed", 1).await;
    assert_eq!(receiver.at("/wf").len(), 2, "1 attempt + 1 retry");
    let f = &failed[0];
    assert_eq!(f.header("upstash-workflow-is-failure"), Some("true"));
    assert_eq!(f.header("upstash-workflow-runid"), Some(run));
    assert_eq!(f.header("upstash-workflow-sdk-version"), None);
    let v: Value = serde_json::from_slice(&f.body).unwrap();
    assert_eq!(v["status"], 500, "{v}");
    assert_eq!(v["workflowRunId"], run);
    assert_eq!(v["url"], url.as_str());
    assert_eq!(
        STANDARD.decode(v["sourceBody"].as_str().unwrap()).unwrap(),
        b"{\"n\":1}"
    );
    assert_eq!(
        STANDARD.decode(v["body"].as_str().unwrap()).unwrap(),
        b"scripted"
    );
    // Failed: nothing more is accepted for it.
    let step = json!([{ "destination": url, "headers": {
        "upstash-workflow-runid": run, "upstash-workflow-init": "false" },
        "body": "{\"stepId\":1,\"stepName\":\"x\",\"stepType\":\"Run\",\"out\":\"1\",\"concurrent\":1}" }]);
    assert_eq!(batch(&app, &step).await.0, 400);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.at("/failed").len(), 1, "one failure callback");
    app.stop().await;
}

#[tokio::test]
async fn a_cancelled_run_sends_nothing_more() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    let receiver = Receiver::start().await;
    let run = "wfr_cancel";
    let body = trigger(&receiver.url("/wf"), run, json!({"upstash-delay": "1s"}));
    assert_eq!(batch(&app, &body).await.0, 200);
    let (status, reply) = app
        .send(
            app.http
                .delete(app.url(&format!("/v2/workflows/runs?workflowRunIds={run}")))
                .bearer_auth(&app.token),
        )
        .await;
    assert_eq!(
        (status, reply.clone()),
        (200, json!({"cancelled": 1})),
        "{reply}"
    );
    // The delayed first delivery comes due and sends nothing: bounded wait past it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(receiver.all().is_empty(), "{:?}", receiver.all());
    let (status, reply) = app
        .send(
            app.http
                .delete(app.url(&format!("/v2/workflows/runs?workflowRunIds={run}")))
                .bearer_auth(&app.token),
        )
        .await;
    assert_eq!((status, reply["cancelled"].clone()), (200, json!(0)));
    let (status, reply) = app
        .send(
            app.http
                .delete(app.url("/v2/workflows/runs?label=x"))
                .bearer_auth(&app.token),
        )
        .await;
    assert_eq!(status, 400, "{reply}");
    app.stop().await;
}

#[tokio::test]
async fn bad_messages_are_refused_whole_and_change_nothing() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    let digest = redis.digest();
    for body in [
        json!({}),
        json!([]),
        json!([{ "headers": {} }]),
        json!([{ "destination": "ftp://x" }]),
        json!([{ "destination": "http://x/y", "headers": {
            "upstash-workflow-runid": "wfr_a", "upstash-workflow-init": "false" }, "body": "not json" }]),
        json!([{ "destination": "http://x/y", "headers": {"upstash-delay": "soon"} }]),
        // The second element is bad: the first is not stored either.
        json!([{ "destination": "http://x/y" }, { "destination": "nope" }]),
    ] {
        let (status, reply) = batch(&app, &body).await;
        assert_eq!(status, 400, "{body} -> {reply}");
        assert!(reply["error"].as_str().is_some(), "{reply}");
    }
    let (status, _) = app.post("/v2/batch", "wrong-token", "[]").await;
    assert_eq!(status, 401);
    assert_eq!(redis.digest(), digest, "nothing was written");
    app.stop().await;
}

/// A worker process killed mid-run (twice) and Redis restarted (AOF, fsync always) while
/// runs are in flight: every run completes, no entry is ever appended twice (each
/// delivery's history is the steps 0, 1, 2… once each), and an entry delivered more than
/// once (at-least-once: its worker died before acknowledging it, or Redis restarted in
/// between) is counted and printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_survive_a_killed_worker_and_a_redis_restart() {
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut settings = test_settings(&redis.url());
    settings.delivery.request_timeout_secs = 2;
    settings.delivery.reclaim_idle_secs = 3;
    settings.redis.response_timeout_ms = 1000;
    settings.redis.connect_timeout_ms = 300;
    let prefix = settings.redis.key_prefix.clone();
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
response_timeout_ms = 1000
connect_timeout_ms = 300
[delivery]
allow_cidrs = ["127.0.0.0/8"]
backoff_factor = 0.001
block_ms = 200
request_timeout_secs = 2
reclaim_idle_secs = 3
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
    let api = TestApp::start_role(settings, herald::app::Role::Api).await;
    let steps = 4;
    let endpoint = Endpoint::start(&api, steps).await;
    let runs: Vec<String> = (0..30).map(|i| format!("wfr_fault-{i}")).collect();
    let mut worker = crate::faults::WorkerProcess::spawn(&config);
    for run in &runs {
        let (status, reply) = batch(&api, &trigger(&endpoint.url(), run, json!({}))).await;
        assert_eq!(status, 200, "{reply}");
    }
    let progressed = |n: usize| {
        let hits = endpoint.flow.hits.clone();
        async move { eventually(Duration::from_secs(30), || hits.lock().unwrap().len() >= n).await }
    };
    assert!(progressed(20).await, "runs progress");
    worker.kill();
    worker = crate::faults::WorkerProcess::spawn(&config);
    assert!(progressed(50).await, "runs progress after the first kill");
    redis.kill();
    redis.restart();
    assert!(
        progressed(80).await,
        "runs progress after the Redis restart"
    );
    worker.kill();
    worker = crate::faults::WorkerProcess::spawn(&config);
    let all_done = eventually(Duration::from_secs(60), || {
        endpoint.flow.done.lock().unwrap().len() == runs.len()
    })
    .await;
    let hits = endpoint.hits();
    let mut deliveries: std::collections::HashMap<(String, usize), usize> = Default::default();
    for hit in &hits {
        *deliveries
            .entry((hit.run.clone(), hit.entries.len()))
            .or_default() += 1;
        for (i, _) in hit.entries.iter().enumerate().skip(1) {
            assert_eq!(
                hit.step(i)["stepId"],
                i,
                "{}: entries are each step once, in order",
                hit.run
            );
        }
    }
    let missing: Vec<(String, usize)> = runs
        .iter()
        .flat_map(|r| (1..=steps + 1).map(move |k| (r.clone(), k)))
        .filter(|k| !deliveries.contains_key(k))
        .collect();
    let repeated = deliveries.values().filter(|n| **n > 1).count();
    println!(
        "workflow faults: {} runs, {} deliveries, {} entries delivered more than once, {} missing",
        runs.len(),
        hits.len(),
        repeated,
        missing.len()
    );
    assert!(
        all_done,
        "runs not completed: {} of {}",
        endpoint.flow.done.lock().unwrap().len(),
        runs.len()
    );
    assert!(missing.is_empty(), "entries never delivered: {missing:?}");
    drop(worker);
    api.stop().await;
}

/// `herald repartition` moves workflow runs (record and history) to their run's new
/// partition, and their messages with them: runs waiting for an event before the change
/// resume from it after, with their history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_runs_resume_after_a_repartition() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.redis.partitions = 4;
    let app = TestApp::start(settings.clone()).await;
    let event = "order-wf-moved";
    let endpoint = Endpoint::start_with(&app, 0, Some(event), false).await;
    let runs: Vec<String> = (0..12).map(|i| format!("wfr_moved-{i}")).collect();
    for run in &runs {
        let (status, reply) = batch(&app, &trigger(&endpoint.url(), run, json!({}))).await;
        assert_eq!(status, 200, "{reply}");
    }
    // Every run's first step registered its wait.
    let mut waiting = 0;
    for _ in 0..200 {
        waiting = app.waiters(event).await.len();
        if waiting == runs.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        waiting,
        runs.len(),
        "the runs' waits were not all registered"
    );
    // The endpoint calls Herald at the address it was given: the new Herald listens there.
    let listen: std::net::SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();
    app.stop().await;

    let pool = herald::store::RedisPool::open(&settings.redis).unwrap();
    let prefix = settings.redis.key_prefix.clone();
    let moved =
        herald::store::repartition::repartition(&mut pool.get(), &prefix, 7, Duration::ZERO)
            .await
            .unwrap();
    assert!(moved.workflow_runs > 0, "{moved:?}");
    let mut after = settings;
    after.redis.partitions = 7;
    after.server.listen = listen;
    let app = TestApp::start(after).await;
    *endpoint.flow.token.lock().unwrap() = app.token.clone();
    let (status, body) = app.notify(event, "{\"paid\":true}").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body.as_array().map(Vec::len), Some(runs.len()), "{body}");
    let done = eventually(Duration::from_secs(30), || {
        endpoint.flow.done.lock().unwrap().len() == runs.len()
    })
    .await;
    assert!(done, "runs ended: {:?}", endpoint.flow.done.lock().unwrap());
    for run in &runs {
        let hits: Vec<Hit> = endpoint
            .hits()
            .into_iter()
            .filter(|h| &h.run == run)
            .collect();
        assert_eq!(hits.len(), 2, "{run}: {hits:?}");
        let wait = hits[1].step(1);
        assert_eq!(wait["stepType"], "Wait", "{run}: {wait}");
        assert_eq!(wait["waitEventId"], event);
    }
    // Nothing is left in the partitions the runs were in before.
    let keys = herald::store::Keys::new(&prefix, 7);
    let left: Vec<String> = redis
        .keys(&format!("{}:*wf*", prefix))
        .into_iter()
        .filter(|k| k.contains("}:wf:") || k.contains("}:wfsteps:"))
        .filter(|k| {
            let moved_run = runs.iter().find(|r| k.ends_with(&format!(":{r}")));
            moved_run.is_some_and(|r| {
                let run = herald::domain::RunId::parse(r).unwrap();
                let tenant = herald::domain::TenantName::parse("acme").unwrap();
                let home = keys.run_partition(&tenant, &run);
                !k.contains(&format!("{{p{}}}", home.index))
            })
        })
        .collect();
    assert!(
        left.is_empty(),
        "run keys outside their run's partition: {left:?}"
    );
    app.stop().await;
}
