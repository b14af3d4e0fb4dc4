//! The `workflow` scenario: R runs of a three-step Upstash Workflow driven through
//! Herald's workflow runtime by a workflow endpoint in this process that behaves like the
//! SDKs' `serve()`.
//!
//! The workflow, entry by entry (entry `k` of a run's history is delivered with entries
//! `0..=k`):
//!
//! 0. the trigger (`POST /v2/batch`, `Upstash-Workflow-Init: true`); its delivery makes
//!    the endpoint publish step 1, `process` (`Run`);
//! 1. `process`; its delivery registers a wait (`waitForEvent`) on the run's own event
//!    (`POST /v2/wait/{event}` with the step and `Upstash-Workflow-RunId`), and the load
//!    generator notifies that event as soon as the endpoint has registered it;
//! 2. the wait's result, made by Herald from the notify; its delivery publishes step 3,
//!    `confirm` (`Run`);
//! 3. `confirm`; its delivery ends the run (`DELETE /v2/workflows/runs/{run}?cancel=false`).
//!
//! At most C runs are in flight: a new run is triggered when one ends (closed loop).
//! Like the SDKs, the endpoint makes its call to Herald (publish, wait, end) before it
//! answers the delivery.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use herald::api::wait::random_id;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};

use crate::client::Api;
use crate::clock::{self, ms_between};
use crate::procs;
use crate::scenarios::{Check, CpuMeter, Ctx, NOTIFY_BODY};
use crate::stats::{rate, summary};

/// Entries of a run's history: trigger, `process`, the wait's result, `confirm`.
const ENTRIES: usize = 4;

/// What the load generator knows of one run.
#[derive(Default)]
struct Run {
    /// When the request that makes entry `k` was sent (trigger, publish, notify).
    sent: [AtomicU64; ENTRIES],
    /// When the notify of the run's event was answered (accepted).
    notify_accepted: AtomicU64,
    /// When entry `k` was first delivered, and how many times it was.
    arrived: [AtomicU64; ENTRIES],
    deliveries: [AtomicU32; ENTRIES],
    /// The message id of entry `k`, from its delivery (later prefixes must repeat it).
    ids: [OnceLock<String>; ENTRIES],
    /// When the end of the run was accepted (0: not ended).
    ended: AtomicU64,
}

/// State shared by the driver (main runtime) and the endpoint (its own thread).
struct Flow {
    /// Herald, on a connection pool of the endpoint's runtime.
    api: Api,
    /// The endpoint's URL (the runs' workflow URL).
    url: String,
    /// Run ids are `<runs><i>`, events `<events><i>`.
    runs: String,
    events: String,
    state: Vec<Run>,
    /// A permit per run that may start: given back when a run ends (or fails).
    slots: Arc<Semaphore>,
    /// Runs whose wait is registered, for the notifier.
    waiting: mpsc::UnboundedSender<usize>,
    /// Every delivery, duplicates and unexpected ones included.
    deliveries: AtomicUsize,
    /// How long the endpoint took to answer each delivery (its call to Herald), ms.
    reply_ms: Mutex<Vec<f64>>,
    problems: Mutex<Vec<String>>,
}

impl Flow {
    fn problem(&self, what: String) {
        let mut problems = self.problems.lock().expect("problems");
        // A systematic fault would repeat for every run: the first few say enough.
        if problems.len() < 20 {
            problems.push(what);
        }
    }

    fn run_id(&self, i: usize) -> String {
        format!("{}{i}", self.runs)
    }

    /// The batch headers of a step of run `run`, as the JS SDK sends them.
    fn step_message(&self, run: &str, init: bool, body: &str) -> String {
        json!([{
            "destination": self.url,
            "headers": {
                "content-type": "application/json",
                "upstash-method": "POST",
                "upstash-workflow-init": if init { "true" } else { "false" },
                "upstash-workflow-runid": run,
                "upstash-workflow-url": self.url,
                "upstash-workflow-sdk-version": "1",
                "upstash-forward-upstash-workflow-sdk-version": "1",
                "upstash-feature-set": "LazyFetch,InitialBody,WF_DetectTrigger,WF_TriggerOnConfig",
            },
            "body": body,
        }])
        .to_string()
    }
}

#[derive(Deserialize)]
struct RawStep {
    #[serde(rename = "messageId")]
    message_id: String,
    body: String,
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> &'a str {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The decoded body of a history entry (JSON).
fn decoded(entry: &RawStep) -> Value {
    STANDARD
        .decode(&entry.body)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

/// Whether the newest entry of a delivery of `k + 1` entries is the one the workflow
/// made at that point.
fn expected_entry(k: usize, i: usize, event: &str, step: &Value) -> bool {
    match k {
        0 => *step == json!({ "order": i }),
        1 => step["stepId"] == 1 && step["stepName"] == "process",
        2 => {
            step["stepType"] == "Wait"
                && step["waitTimeout"] == false
                && step["waitEventId"] == event
                && step["out"]
                    .as_str()
                    .and_then(|o| STANDARD.decode(o).ok())
                    .is_some_and(|o| o == NOTIFY_BODY.as_bytes())
        }
        _ => step["stepId"] == 3 && step["stepName"] == "confirm",
    }
}

/// A delivery to the workflow endpoint: record it, check its history, take the next step.
async fn deliver(req: HttpRequest, body: web::Bytes, flow: web::Data<Arc<Flow>>) -> HttpResponse {
    let at = clock::now_ns();
    let flow = flow.get_ref().clone();
    flow.deliveries.fetch_add(1, Ordering::Relaxed);
    let run_id = header(&req, "upstash-workflow-runid").to_owned();
    let Some(i) = run_id
        .strip_prefix(&flow.runs)
        .and_then(|i| i.parse::<usize>().ok())
        .filter(|i| *i < flow.state.len())
    else {
        flow.problem(format!("a delivery for an unknown run {run_id:?}"));
        return HttpResponse::Ok().finish();
    };
    let entries: Vec<RawStep> = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => {
            flow.problem(format!(
                "{run_id}: a delivery whose body is not RawStep[]: {e}"
            ));
            return HttpResponse::Ok().finish();
        }
    };
    let n = entries.len();
    if n == 0 || n > ENTRIES {
        flow.problem(format!("{run_id}: a delivery of {n} entries"));
        return HttpResponse::Ok().finish();
    }
    let k = n - 1;
    let run = &flow.state[i];
    if run.deliveries[k].fetch_add(1, Ordering::AcqRel) > 0 {
        // Counted as a duplicate; the SDK would replay, and Herald de-duplicate, the step.
        return HttpResponse::Ok().finish();
    }
    run.arrived[k].store(at, Ordering::Release);
    // The prefix: earlier entries as they were delivered; the newest is the one named by
    // Upstash-Message-Id, and it is what the workflow made at this point.
    let newest = &entries[k];
    let _ = run.ids[k].set(newest.message_id.clone());
    let event = format!("{}{i}", flow.events);
    let prefix_ok = (0..k).all(|j| run.ids[j].get() == Some(&entries[j].message_id));
    if !prefix_ok
        || header(&req, "upstash-message-id") != newest.message_id
        || header(&req, "upstash-workflow-sdk-version") != "1"
        || !expected_entry(k, i, &event, &decoded(newest))
    {
        flow.problem(format!(
            "{run_id}: delivery of entry {k} is not the history so far (prefix {prefix_ok}, \
             message id {:?}, entry {:?})",
            header(&req, "upstash-message-id"),
            decoded(newest)
        ));
    }

    let started = Instant::now();
    let done = match k {
        0 => {
            let step = json!({
                "stepId": 1, "stepName": "process", "stepType": "Run",
                "out": json!({ "processed": i }).to_string(), "concurrent": 1,
            });
            run.sent[1].store(clock::now_ns(), Ordering::Release);
            flow.api
                .batch(&flow.step_message(&run_id, false, &step.to_string()))
                .await
                .map(|_| ())
        }
        1 => {
            let wait = json!({
                "url": flow.url, "timeout": "1h", "timeoutUrl": flow.url,
                "timeoutHeaders": {
                    "Upstash-Workflow-RunId": [run_id], "Upstash-Workflow-Runid": [run_id],
                },
                "step": {
                    "stepId": 2, "stepName": "await-confirmation", "stepType": "Wait",
                    "concurrent": 1,
                },
            });
            match flow
                .api
                .wait(&event, &wait.to_string(), Some(&run_id))
                .await
            {
                Ok(reply) if reply["status"] == "waiting" => {
                    let _ = flow.waiting.send(i);
                    Ok(())
                }
                Ok(reply) => Err(anyhow::anyhow!("wait {event}: {reply}")),
                Err(e) => Err(e),
            }
        }
        2 => {
            let step = json!({
                "stepId": 3, "stepName": "confirm", "stepType": "Run",
                "out": json!({ "confirmed": i }).to_string(), "concurrent": 1,
            });
            run.sent[3].store(clock::now_ns(), Ordering::Release);
            flow.api
                .batch(&flow.step_message(&run_id, false, &step.to_string()))
                .await
                .map(|_| ())
        }
        _ => match flow.api.end_run(&run_id, "\"confirmed\"").await {
            Ok(()) => {
                run.ended.store(clock::now_ns(), Ordering::Release);
                flow.slots.add_permits(1);
                Ok(())
            }
            Err(e) => Err(e),
        },
    };
    flow.reply_ms
        .lock()
        .expect("reply times")
        .push(started.elapsed().as_secs_f64() * 1000.0);
    if let Err(e) = done {
        // The run cannot go on: let another one start, and count this one as lost.
        flow.problem(format!("{run_id}, after entry {k}: {e:#}"));
        flow.slots.add_permits(1);
    }
    HttpResponse::Ok().json(json!({ "workflowRunId": run_id, "finishCondition": "success" }))
}

/// The workflow endpoint: an HTTP server on a free loopback port, one thread.
struct Endpoint {
    server: actix_web::dev::ServerHandle,
}

impl Endpoint {
    fn start(listener: std::net::TcpListener, flow: Arc<Flow>) -> anyhow::Result<Self> {
        let data = web::Data::new(flow);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(16 << 20))
                .default_service(web::to(deliver))
        })
        .listen(listener)?
        .workers(1)
        .backlog(4096)
        .max_connection_rate(4096)
        .disable_signals()
        .shutdown_timeout(1)
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok(Self { server: handle })
    }

    async fn stop(self) {
        self.server.stop(false).await;
    }
}

/// How long without any run ending before the driver gives up on the rest.
const STALL: Duration = Duration::from_secs(30);

/// R runs of the three-step workflow with one waitForEvent, at most C in flight.
pub async fn workflow(ctx: &Ctx) -> Value {
    let (r, c) = (ctx.p.workflow_runs, ctx.p.workflow_concurrency.max(1));
    let mut check = Check::default();
    let listener = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| {
        let port = l.local_addr()?.port();
        Ok((l, port))
    }) {
        Ok(l) => l,
        Err(e) => {
            check.expect(false, || format!("workflow endpoint: {e}"));
            return check.finish(json!({ "scenario": "workflow" }));
        }
    };
    let (listener, port) = listener;
    let tag = random_id(6);
    let (waiting_tx, mut waiting_rx) = mpsc::unbounded_channel();
    let flow = Arc::new(Flow {
        api: ctx.api.own_pool(),
        url: format!("http://127.0.0.1:{port}/api/workflow"),
        runs: format!("wfr_bench{tag}-"),
        events: format!("wfev{tag}-"),
        state: (0..r).map(|_| Run::default()).collect(),
        slots: Arc::new(Semaphore::new(c)),
        waiting: waiting_tx,
        deliveries: AtomicUsize::new(0),
        reply_ms: Mutex::new(Vec::new()),
        problems: Mutex::new(Vec::new()),
    });
    let endpoint = match Endpoint::start(listener, flow.clone()) {
        Ok(e) => e,
        Err(e) => {
            check.expect(false, || format!("workflow endpoint: {e:#}"));
            return check.finish(json!({ "scenario": "workflow" }));
        }
    };

    // The notifier: each run's event as soon as its wait is registered. (It holds the
    // flow, hence the channel's sender: it is stopped once every run has ended.)
    let notifier = {
        let (api, flow) = (ctx.api.clone(), flow.clone());
        tokio::spawn(async move {
            while let Some(i) = waiting_rx.recv().await {
                let (api, flow) = (api.clone(), flow.clone());
                tokio::spawn(async move {
                    let event = format!("{}{i}", flow.events);
                    let run = &flow.state[i];
                    run.sent[2].store(clock::now_ns(), Ordering::Release);
                    match api.notify(&event, NOTIFY_BODY).await {
                        Ok(1) => run
                            .notify_accepted
                            .store(clock::now_ns(), Ordering::Release),
                        Ok(n) => flow.problem(format!("notify {event} reached {n} waiters")),
                        Err(e) => {
                            flow.problem(format!("notify {event}: {e:#}"));
                            flow.slots.add_permits(1);
                        }
                    }
                });
            }
        })
    };

    let cpu = CpuMeter::start(ctx, ctx.herald_pid);
    let machine_before = procs::machine_cpu_ticks();
    let started = Instant::now();
    let first_ns = clock::now_ns();
    let mut triggered = 0;
    let mut triggers = Vec::with_capacity(r);
    for i in 0..r {
        match tokio::time::timeout(STALL, flow.slots.acquire()).await {
            Ok(Ok(permit)) => permit.forget(),
            _ => {
                check.expect(false, || {
                    format!(
                        "no run ended for {} s: {i} of {r} runs triggered",
                        STALL.as_secs()
                    )
                });
                break;
            }
        }
        let (api, flow) = (ctx.api.clone(), flow.clone());
        triggers.push(tokio::spawn(async move {
            let run = flow.run_id(i);
            let message = flow.step_message(&run, true, &json!({ "order": i }).to_string());
            flow.state[i].sent[0].store(clock::now_ns(), Ordering::Release);
            let reply = api.batch(&message).await;
            match reply {
                Ok(reply)
                    if reply[0]["messageId"].is_string() && reply[0]["deduplicated"] != true => {}
                Ok(reply) => {
                    flow.problem(format!("trigger {run}: {reply}"));
                    flow.slots.add_permits(1);
                }
                Err(e) => {
                    flow.problem(format!("trigger {run}: {e:#}"));
                    flow.slots.add_permits(1);
                }
            }
        }));
        triggered += 1;
    }
    for t in triggers {
        let _ = t.await;
    }
    // Every permit back: every run ended (or failed).
    let all_back = tokio::time::timeout(
        STALL + Duration::from_secs(r as u64 / 100),
        flow.slots.acquire_many(c as u32),
    )
    .await
    .is_ok_and(|p| p.is_ok());
    let elapsed_s = started.elapsed().as_secs_f64();
    let cpu_us_per_run = cpu.per_op(ctx, r);
    // How busy the cores were meanwhile (0..1 of all of them; everything on the machine):
    // near 1 means the run is bound by the CPU, well below it by waiting.
    let machine_busy = match (machine_before, procs::machine_cpu_ticks()) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
            json!(((b1 - b0) as f64 / (t1 - t0) as f64 * 100.0).round() / 100.0)
        }
        _ => Value::Null,
    };
    // Late duplicates show up in the count.
    let mut last = flow.deliveries.load(Ordering::Relaxed);
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = flow.deliveries.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    endpoint.stop().await;
    notifier.abort();

    // What happened to each run.
    let (mut ended, mut missing, mut duplicates) = (0, 0, 0);
    let mut last_end_ns = first_ns;
    let (mut step_ms, mut run_ms) = (Vec::new(), Vec::new());
    let (mut trigger_ms, mut process_ms, mut confirm_ms) = (Vec::new(), Vec::new(), Vec::new());
    let (mut wait_accepted_ms, mut wait_sent_ms) = (Vec::new(), Vec::new());
    for run in &flow.state[..triggered] {
        let end = run.ended.load(Ordering::Acquire);
        if end > 0 {
            ended += 1;
            last_end_ns = last_end_ns.max(end);
            run_ms.push(ms_between(run.sent[0].load(Ordering::Acquire), end));
        }
        for k in 0..ENTRIES {
            match run.deliveries[k].load(Ordering::Acquire) {
                0 => missing += 1,
                d => duplicates += d as usize - 1,
            }
            let arrived = run.arrived[k].load(Ordering::Acquire);
            let from = match k {
                2 => run.notify_accepted.load(Ordering::Acquire),
                _ => run.sent[k].load(Ordering::Acquire),
            };
            if arrived == 0 || from == 0 {
                continue;
            }
            let ms = ms_between(from, arrived);
            step_ms.push(ms);
            match k {
                0 => trigger_ms.push(ms),
                1 => process_ms.push(ms),
                2 => {
                    wait_accepted_ms.push(ms);
                    wait_sent_ms.push(ms_between(run.sent[2].load(Ordering::Acquire), arrived));
                }
                _ => confirm_ms.push(ms),
            }
        }
    }
    let lost = r - ended;
    check.expect(all_back && ended == r, || {
        format!("{ended} of {r} runs ended ({triggered} triggered)")
    });
    check.expect(missing == 0, || {
        format!(
            "{missing} of {} history entries never delivered",
            r * ENTRIES
        )
    });
    check.expect(duplicates == 0, || {
        format!("{duplicates} entries delivered more than once")
    });
    for p in flow.problems.lock().expect("problems").drain(..) {
        check.expect(false, || p);
    }
    let reply_ms = std::mem::take(&mut *flow.reply_ms.lock().expect("reply times"));
    let deliveries = flow.deliveries.load(Ordering::Relaxed);
    check.finish(json!({
        "scenario": "workflow",
        "runs": r,
        "concurrency": c,
        "steps_per_run": "trigger, process (Run), waitForEvent, confirm (Run), end",
        "runs_per_s": rate(ended, ms_between(first_ns, last_end_ns) / 1000.0),
        "elapsed_s": (elapsed_s * 1000.0).round() / 1000.0,
        "step_latency_ms": summary(step_ms),
        "step_latency_by_entry_ms": {
            "trigger": summary(trigger_ms),
            "process": summary(process_ms),
            "wait_result_from_notify_accepted": summary(wait_accepted_ms),
            "wait_result_from_notify_sent": summary(wait_sent_ms),
            "confirm": summary(confirm_ms),
        },
        "run_duration_ms": summary(run_ms),
        "endpoint_reply_ms": summary(reply_ms),
        "cpu_us_per_run": cpu_us_per_run,
        "machine_cpu_busy": machine_busy,
        "deliveries": deliveries,
        "expected_deliveries": r * ENTRIES,
        "ended": ended,
        "lost": lost,
        "missing_entries": missing,
        "duplicates": duplicates,
    }))
}
