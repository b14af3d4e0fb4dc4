//! The Upstash Workflow runtime: unmodified `serve()` workflows of the official SDKs run
//! on Herald (the QStash side of the protocol: `../shared` reference
//! "workflow-runtime").
//!
//! - **Messages** (`POST /v2/batch`, `POST /v2/publish/{url}`) are parsed in [`message`]
//!   into a plain message, a run's first message, a step, or a third-party call, and
//!   accepted by [`accept`]: one `lua/workflow/submit.lua` call each.
//! - **A run** is a record and a history ([`run`]) in the run's partition
//!   ([`crate::store::Keys::run_partition`]): both keys share the slot of the stream its
//!   deliveries go through, so accepting a step and scheduling its delivery is one script.
//!   Entries are numbered in acceptance order; the delivery of entry `i` carries entries
//!   `0..=i` (`RawStep[]`), built from the history when it is sent, so a run that ended
//!   meanwhile sends nothing more.
//! - **Deliveries** go through the same streams, workers, retry schedule, signing, SSRF
//!   guard, history and metrics as waiter deliveries (`src/delivery/workflow.rs`); the
//!   job says what it is ([`crate::waiter::WorkflowKind`]).
//! - **A wait** (`context.waitForEvent`, `waitForWebhook`) is an ordinary waiter. When it
//!   resolves (notify or timeout), its delivery job is not sent over HTTP if its run is
//!   one of Herald's: the worker appends the wait's result to the run (dedupe key
//!   `s:<stepId>`, so a redelivery appends nothing) and that entry's delivery follows.
//!   A waiter of a run Herald does not hold (a client that only uses wait/notify) is
//!   delivered as before.
//! - **The end** (`DELETE /v2/workflows/runs/{id}`, a cancel, or a delivery to the run
//!   failing for good) is one `lua/workflow/finish.lua` call, which also enqueues what the
//!   end owes: the failure callback, and the result for an invoking parent (appended to
//!   the parent by a worker, like a wait's result).
//!
//! Every run state change is one script; a duplicate submission (the SDKs are
//! at-least-once) finds its dedupe key and changes nothing.

pub mod message;
pub mod run;
pub mod store;

use crate::config::WorkflowSettings;
use crate::domain::{random_id, RunId, TenantName};
use crate::store::{Conn, Keys, StoreError};
use crate::waiter::{Hop, Job, JobKind, Waiter, WorkflowJob, WorkflowKind};

use self::message::{Request, DEFAULT_RETRIES};
use self::run::{RawStep, RunRecord, RunState};
use self::store::{SubmitArgs, Submitted};

/// Where a runtime call works: the keys, the settings, the tenant, and the trace of the
/// request (or delivery) that caused it.
#[derive(Clone, Copy)]
pub struct Scope<'a> {
    pub keys: &'a Keys,
    pub settings: &'a WorkflowSettings,
    pub tenant: &'a TenantName,
    pub trace: &'a str,
}

/// What accepting a message came to (one element of the batch reply).
#[derive(Debug)]
pub enum Accepted {
    /// Stored (or, for a repeated step, already stored): its message id.
    Done { message_id: String, url: String },
    /// A first message for a run id that exists: nothing started.
    Deduplicated { message_id: String, url: String },
    /// A step for a run that is unknown or ended: nothing stored (400 for the SDK).
    Refused(String),
}

/// A new message id.
pub fn message_id() -> String {
    format!("msg_{}", random_id(24))
}

fn now_ms() -> i64 {
    crate::history::now_ms()
}

/// A workflow delivery job: `url`/`headers`/`retries` are its target (the run's URL and
/// headers are read when a step is sent, so a step job leaves them empty).
pub fn job(
    message_id: &str,
    tenant: &TenantName,
    run: &str,
    target: Hop,
    trace: &str,
    r: WorkflowJob,
) -> Job {
    let now = now_ms();
    Job {
        m: message_id.to_owned(),
        k: JobKind::Workflow,
        t: tenant.to_string(),
        e: run.to_owned(),
        n: now,
        q: now,
        a: 0,
        d: 0,
        p: trace.to_owned(),
        c: None,
        w: Waiter {
            url: target.url,
            headers: target.headers,
            retries: target.retries,
            run_id: (!run.is_empty()).then(|| run.to_owned()),
            ..Waiter::default()
        },
        r: Some(r),
    }
}

pub fn step_job(
    message_id: &str,
    tenant: &TenantName,
    run: &RunId,
    retries: Option<u32>,
    trace: &str,
) -> Job {
    job(
        message_id,
        tenant,
        run.as_str(),
        Hop {
            retries,
            ..Hop::default()
        },
        trace,
        WorkflowJob {
            kind: WorkflowKind::Step,
            run: run.to_string(),
            i: None,
            method: None,
            timeout_ms: None,
            callback: None,
            step: None,
        },
    )
}

/// Accepts one message: one `submit` script call.
pub async fn accept(
    conn: &mut Conn,
    keys: &Keys,
    settings: &WorkflowSettings,
    tenant: &TenantName,
    request: Request,
    trace: &str,
) -> Result<Accepted, StoreError> {
    let ttl_ms = settings.run_ttl_secs.saturating_mul(1000);
    let id = message_id();
    match request {
        Request::Plain(p) => {
            let partition = keys.run_partition(tenant, &RunId::parse(&id).expect("a valid id"));
            let job = job(
                &id,
                tenant,
                "",
                Hop {
                    url: p.url.clone(),
                    headers: p.headers,
                    retries: Some(p.retries),
                },
                trace,
                WorkflowJob {
                    kind: WorkflowKind::Plain,
                    run: String::new(),
                    i: None,
                    method: Some(p.method),
                    timeout_ms: p.timeout_ms,
                    callback: None,
                    step: None,
                },
            );
            store::submit(
                conn,
                &SubmitArgs {
                    partition: &partition,
                    tenant,
                    run: None,
                    init_fields: None,
                    entry: None,
                    dedupe: "",
                    job: &job,
                    body: &p.body,
                    delay_ms: p.delay_ms,
                    ttl_ms,
                },
            )
            .await?;
            Ok(Accepted::Done {
                message_id: id,
                url: p.url,
            })
        }
        Request::Init(init) => {
            let partition = keys.run_partition(tenant, &init.run);
            let fields = RunRecord::new_fields(
                &init.url,
                init.label.as_deref(),
                &init.headers,
                Some(init.retries.unwrap_or(DEFAULT_RETRIES)),
                init.failure.as_ref(),
                init.invoker.as_ref(),
                init.invoke_count,
            );
            let job = step_job(&id, tenant, &init.run, None, trace);
            let entry = RawStep::step(&id, &init.initial_body).to_json();
            let submitted = store::submit(
                conn,
                &SubmitArgs {
                    partition: &partition,
                    tenant,
                    run: Some(&init.run),
                    init_fields: Some(&fields),
                    entry: Some(entry),
                    dedupe: "",
                    job: &job,
                    body: b"",
                    delay_ms: init.delay_ms,
                    ttl_ms,
                },
            )
            .await?;
            Ok(match submitted {
                Submitted::Exists => Accepted::Deduplicated {
                    message_id: id,
                    url: init.url,
                },
                _ => Accepted::Done {
                    message_id: id,
                    url: init.url,
                },
            })
        }
        Request::Step(step) => {
            let partition = keys.run_partition(tenant, &step.run);
            let job = step_job(&id, tenant, &step.run, step.retries, trace);
            let entry = RawStep::step(&id, &step.body).to_json();
            let submitted = store::submit(
                conn,
                &SubmitArgs {
                    partition: &partition,
                    tenant,
                    run: Some(&step.run),
                    init_fields: None,
                    entry: Some(entry),
                    dedupe: &step.dedupe,
                    job: &job,
                    body: b"",
                    delay_ms: step.delay_ms,
                    ttl_ms,
                },
            )
            .await?;
            Ok(refused(submitted, &step.run).unwrap_or(Accepted::Done {
                message_id: id,
                url: String::new(),
            }))
        }
        Request::Call(call) => {
            let partition = keys.run_partition(tenant, &call.run);
            let job = job(
                &id,
                tenant,
                call.run.as_str(),
                Hop {
                    url: call.url.clone(),
                    headers: call.headers,
                    retries: Some(call.retries),
                },
                trace,
                WorkflowJob {
                    kind: WorkflowKind::Call,
                    run: call.run.to_string(),
                    i: None,
                    method: Some(call.method),
                    timeout_ms: call.timeout_ms,
                    callback: Some(call.callback),
                    step: Some(call.step),
                },
            );
            let submitted = store::submit(
                conn,
                &SubmitArgs {
                    partition: &partition,
                    tenant,
                    run: Some(&call.run),
                    init_fields: None,
                    entry: None,
                    dedupe: &call.dedupe,
                    job: &job,
                    body: &call.body,
                    delay_ms: call.delay_ms,
                    ttl_ms,
                },
            )
            .await?;
            Ok(refused(submitted, &call.run).unwrap_or(Accepted::Done {
                message_id: id,
                url: call.url,
            }))
        }
    }
}

fn refused(submitted: Submitted, run: &RunId) -> Option<Accepted> {
    match submitted {
        Submitted::Unknown => Some(Accepted::Refused(format!(
            "workflow run {run} does not exist"
        ))),
        Submitted::Ended(state) => Some(Accepted::Refused(format!(
            "workflow run {run} has ended ({})",
            state.as_str()
        ))),
        _ => None,
    }
}

/// Appends a server-made entry (a wait's result, a child run's result) to a run: the
/// step JSON, keyed `s:<stepId>`. Returns what the script did.
pub async fn append_result(
    conn: &mut Conn,
    scope: Scope<'_>,
    run: &RunId,
    message_id: &str,
    step: &serde_json::Value,
) -> Result<Submitted, StoreError> {
    let Scope {
        keys,
        settings,
        tenant,
        trace,
    } = scope;
    let step_id = step.get("stepId").and_then(|s| s.as_i64()).unwrap_or(0);
    let body = step.to_string();
    let partition = keys.run_partition(tenant, run);
    let job = step_job(message_id, tenant, run, None, trace);
    store::submit(
        conn,
        &SubmitArgs {
            partition: &partition,
            tenant,
            run: Some(run),
            init_fields: None,
            entry: Some(RawStep::step(message_id, body.as_bytes()).to_json()),
            dedupe: &format!("s:{step_id}"),
            job: &job,
            body: b"",
            delay_ms: 0,
            ttl_ms: settings.run_ttl_secs.saturating_mul(1000),
        },
    )
    .await
}

/// Ends a run as `state` (`result`: its return value), acknowledging `entry_id` and
/// enqueueing `jobs` plus, for an invoked run, its result for the parent. Returns the
/// state before (None: no such run).
pub async fn end(
    conn: &mut Conn,
    scope: Scope<'_>,
    run: &RunId,
    (state, result): (RunState, Option<&[u8]>),
    entry_id: Option<&str>,
    mut jobs: Vec<(Job, Vec<u8>)>,
) -> Result<Option<RunState>, StoreError> {
    let Scope {
        keys,
        settings,
        tenant,
        trace,
    } = scope;
    let partition = keys.run_partition(tenant, run);
    if let Some((record, _)) = store::read(conn, keys, tenant, run, Some(-1)).await? {
        if record.state != RunState::Running {
            // Ended already: only the acknowledgement is owed.
            jobs.clear();
        } else if let Some(invoker) = &record.invoker {
            let result_text = result.map(|r| String::from_utf8_lossy(r).into_owned());
            let out = run::invoke_out(state, result_text.as_deref());
            jobs.push((
                job(
                    &message_id(),
                    tenant,
                    run.as_str(),
                    Hop::default(),
                    trace,
                    WorkflowJob {
                        kind: WorkflowKind::InvokeResult,
                        run: invoker.workflow_run_id.clone(),
                        i: None,
                        method: None,
                        timeout_ms: None,
                        callback: None,
                        step: Some(invoker.step.clone()),
                    },
                ),
                out.into_bytes(),
            ));
        }
    }
    store::finish(
        conn,
        &store::FinishArgs {
            partition: &partition,
            tenant,
            run,
            state,
            result,
            ttl_ms: settings.finished_ttl_secs.saturating_mul(1000),
            entry_id,
            jobs: &jobs,
        },
    )
    .await
}
