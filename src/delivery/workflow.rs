//! Attempts of workflow jobs (src/workflow/mod.rs): what each kind sends, and what its
//! outcome writes back. The loop, signing, retry schedule and dead letters are the
//! delivery's own ([`super::Deliverer`]).
//!
//! | kind | sends | 2xx | failed for good |
//! |---|---|---|---|
//! | step | the run's history `0..=i` to the run's URL | ack | the run fails (`finish`): failure callback, parent told |
//! | callback | a call's answer to the run's URL | ack | the run fails |
//! | call | the request to the third party | its callback is enqueued (`chain`) | its callback is enqueued with the last answer |
//! | failure, plain | the body to its URL | ack | dead letter |
//! | invoke result | nothing: appended to the parent run | ack | (stays pending) |
//!
//! A step or callback of a run that ended (or is unknown) sends nothing and is
//! acknowledged: ending a run deletes its history, so its pending deliveries stop.

use std::time::{Duration, Instant};

use reqwest::header::{HeaderName, HeaderValue};

use super::http::{self, push_header, wait_result_step, Attempt, Exchange, Outbound};
use super::{record, signing, truncate, unknown_tenant, Deliverer};
use crate::domain::{RunId, TenantName};
use crate::store::scripts::{self, DeadLetterArgs, Delivered, RetryLaterArgs};
use crate::store::Partition;
use crate::waiter::{Job, WorkflowJob, WorkflowKind};
use crate::workflow::run::{self, RunRecord, RunState};
use crate::workflow::store::Submitted;
use crate::workflow::{self as wf};

impl Deliverer {
    fn scope<'a>(&'a self, tenant: &'a TenantName, trace: &'a str) -> wf::Scope<'a> {
        wf::Scope {
            keys: &self.keys,
            settings: &self.settings.workflow,
            tenant,
            trace,
        }
    }

    fn acknowledge_now(&self, partition: &Partition, entry_id: &str, body_ref: Option<String>) {
        if self.acks[usize::from(partition.index)]
            .send(Delivered {
                entry_id: entry_id.to_owned(),
                body_ref,
            })
            .is_err()
        {
            tracing::warn!(entry = %entry_id, "acknowledgements stopped; the entry stays pending");
        }
    }

    /// A workflow waiter's outcome, when its run is one of Herald's: appended to the run
    /// (its delivery follows from there) instead of sent. Returns false when the run is
    /// not Herald's (the waiter is delivered over HTTP as before) or on a Redis error
    /// (the entry stays pending and is tried again later).
    pub(super) async fn relay_wait(
        &self,
        partition: &Partition,
        entry_id: &str,
        job: &Job,
        body: &[u8],
        body_ref: Option<String>,
    ) -> Option<bool> {
        let run = RunId::parse(job.w.run_id.as_deref()?).ok()?;
        let tenant = TenantName::parse(&job.t).ok()?;
        let step = wait_result_step(job, body);
        let started = Instant::now();
        let submitted = wf::append_result(
            &mut self.redis.get(),
            self.scope(&tenant, &job.p),
            &run,
            &job.m,
            &step,
        )
        .await;
        match submitted {
            Ok(Submitted::Unknown) => Some(false),
            Ok(outcome) => {
                tracing::debug!(tenant = %job.t, run = %run, message_id = %job.m, ?outcome, "wait result appended to its run");
                let attempt = Attempt::Delivered { status: 200 };
                let summary = record::Summary::of(job, &attempt, started.elapsed());
                self.acknowledge_now(partition, entry_id, body_ref);
                record::finished(self, job, summary, 0, true).await;
                Some(true)
            }
            Err(e) => {
                tracing::warn!(tenant = %job.t, run = %run, error = %e, "could not append the wait result; it stays pending");
                Some(true)
            }
        }
    }

    /// One attempt of a workflow job.
    pub(super) async fn attempt_workflow(
        &self,
        partition: &Partition,
        entry_id: &str,
        mut job: Job,
        body: Vec<u8>,
        key: &str,
    ) {
        let Some(r) = job.r.clone() else { return };
        let tenant = TenantName::parse(&job.t).unwrap_or_else(|_| unknown_tenant());
        let settings = &self.settings.workflow;
        if r.kind == WorkflowKind::InvokeResult {
            self.relay_invoke_result(partition, entry_id, &job, &r, &tenant, &body)
                .await;
            return;
        }
        let run = RunId::parse(&r.run).ok();
        // Steps and callbacks go to a running run only; they need its record.
        let mut record: Option<RunRecord> = None;
        let mut entries = Vec::new();
        if matches!(r.kind, WorkflowKind::Step | WorkflowKind::Callback) {
            let Some(run) = &run else {
                self.acknowledge_now(partition, entry_id, None);
                return;
            };
            let upto = match r.kind {
                WorkflowKind::Step => Some(r.i.unwrap_or(0) as i64),
                _ => Some(0),
            };
            match wf::store::read(&mut self.redis.get(), &self.keys, &tenant, run, upto).await {
                Ok(Some((rec, list))) if rec.state == RunState::Running => {
                    record = Some(rec);
                    entries = list;
                }
                Ok(_) => {
                    tracing::debug!(tenant = %job.t, run = %run, message_id = %job.m, "run ended or unknown; delivery dropped");
                    self.acknowledge_now(partition, entry_id, None);
                    return;
                }
                Err(e) => {
                    tracing::warn!(run = %run, error = %e, "could not read the run; the delivery stays pending");
                    return;
                }
            }
        }
        let mut outbound = build(&job, &r, record.as_ref(), &entries, body.clone());
        record::trace_header(&mut outbound, &job);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let jti = format!("jwt_{}", crate::domain::random_id(20));
        let token = signing::sign(key, &outbound.url, &outbound.body, now, &jti);
        if let Ok(v) = HeaderValue::from_str(&token) {
            outbound
                .headers
                .push((HeaderName::from_static("upstash-signature"), v));
        }
        let method = r.method.clone().unwrap_or_else(|| "POST".to_owned());
        let max_body = if r.kind == WorkflowKind::Call {
            settings.max_call_response_bytes
        } else {
            settings.max_error_bytes
        };
        let url = outbound.url.clone();
        let started = Instant::now();
        let exchange = self
            .sender_for(&job.t)
            .await
            .send_with(
                outbound,
                &method,
                max_body,
                r.timeout_ms.map(Duration::from_millis),
            )
            .await;
        let max_retries = job.w.retries.unwrap_or(self.settings.delivery.max_retries);
        let last_attempt = job.a >= max_retries;

        if r.kind == WorkflowKind::Call {
            self.finish_call(
                partition,
                entry_id,
                job,
                &r,
                exchange,
                started,
                (&url, &method, &body),
                last_attempt,
            )
            .await;
            return;
        }

        let (response_body, answered_status) = match &exchange {
            Exchange::Answered { body, status, .. } => (body.clone(), *status),
            _ => (Vec::new(), 0),
        };
        let attempt = exchange.into_attempt();
        let summary = record::Summary::of(&job, &attempt, started.elapsed());
        let mut conn = self.redis.get();
        let result = match attempt {
            Attempt::Delivered { .. } => {
                self.acknowledge_now(partition, entry_id, None);
                Ok(())
            }
            failure => {
                let http::Failure {
                    status,
                    error,
                    retry_after,
                    final_failure,
                } = failure.failure().expect("handled above");
                job.a += 1;
                tracing::info!(tenant = %job.t, run = %r.run, message_id = %job.m, attempt = job.a, status, error = %truncate(&error, 200), "workflow delivery attempt failed");
                let job_json = serde_json::to_string(&job).unwrap_or_default();
                if final_failure || job.a > max_retries {
                    match (r.kind, &run, &record) {
                        (WorkflowKind::Step | WorkflowKind::Callback, Some(run), Some(rec)) => {
                            let status = if answered_status == 0 {
                                500
                            } else {
                                answered_status
                            };
                            self.fail_run(entry_id, &job, &tenant, run, rec, status, &response_body)
                                .await
                        }
                        _ => scripts::dead_letter(
                            &mut conn,
                            &DeadLetterArgs {
                                partition,
                                tenant: &tenant,
                                entry_id,
                                job_json: &job_json,
                                body: &body,
                                last_status: status,
                                last_error: truncate(&error, 1024),
                                retention_ms: self.dead_letter_retention_ms(),
                                body_ref: None,
                            },
                        )
                        .await
                        .map(|_| ()),
                    }
                } else {
                    let delay = self.retry_delay(job.a, retry_after);
                    scripts::retry_later(
                        &mut conn,
                        &RetryLaterArgs {
                            partition,
                            entry_id,
                            message_id: &job.m,
                            job_json: &job_json,
                            body: &body,
                            delay_ms: delay.as_millis() as u64,
                            body_ref: None,
                        },
                    )
                    .await
                    .map(|_| ())
                }
            }
        };
        if let Err(e) = &result {
            tracing::warn!(message_id = %job.m, error = %e, "could not record the workflow delivery outcome");
        }
        record::finished(self, &job, summary, max_retries, result.is_ok()).await;
    }

    /// A delivery to the run failed for good: the run fails, its failure callback (if it
    /// has one) is enqueued, and an invoking parent is told, in one `finish` call.
    #[allow(clippy::too_many_arguments)]
    async fn fail_run(
        &self,
        entry_id: &str,
        job: &Job,
        tenant: &TenantName,
        run: &RunId,
        record: &RunRecord,
        status: u16,
        response: &[u8],
    ) -> Result<(), crate::store::StoreError> {
        let mut conn = self.redis.get();
        let mut jobs = Vec::new();
        if let Some(failure) = &record.failure {
            let first = wf::store::first_entry(&mut conn, &self.keys, tenant, run).await?;
            let body = run::failure_body(
                &run::Failure {
                    status,
                    response,
                    retried: job.a.saturating_sub(1),
                    max_retries: job.w.retries.unwrap_or(0),
                },
                record,
                run.as_str(),
                &run::source_body(first.as_deref()),
            );
            let failure_job = wf::job(
                &wf::message_id(),
                tenant,
                run.as_str(),
                failure.clone(),
                &job.p,
                WorkflowJob {
                    kind: WorkflowKind::Failure,
                    run: run.to_string(),
                    i: None,
                    method: None,
                    timeout_ms: None,
                    callback: None,
                    step: None,
                },
            );
            jobs.push((failure_job, body));
        }
        let before = wf::end(
            &mut conn,
            self.scope(tenant, &job.p),
            run,
            (RunState::Failed, None),
            Some(entry_id),
            jobs,
        )
        .await?;
        tracing::warn!(tenant = %tenant, run = %run, status, was = ?before.map(RunState::as_str), "workflow run failed");
        crate::telemetry::metrics::dead_lettered(false);
        Ok(())
    }

    /// A call's attempt: its final answer (2xx, any answer on the last attempt, or no
    /// answer after the last attempt) becomes its one callback.
    #[allow(clippy::too_many_arguments)]
    async fn finish_call(
        &self,
        partition: &Partition,
        entry_id: &str,
        mut job: Job,
        r: &WorkflowJob,
        exchange: Exchange,
        started: Instant,
        (url, method, request_body): (&str, &str, &[u8]),
        last_attempt: bool,
    ) {
        let (status, headers, body, done, retry_after) = match &exchange {
            Exchange::Answered {
                status,
                headers,
                body,
                retry_after,
                ..
            } => (
                *status,
                headers.clone(),
                body.clone(),
                (200..300).contains(status) || last_attempt,
                *retry_after,
            ),
            Exchange::Unreachable { error } | Exchange::Refused { reason: error } => (
                // No answer: the workflow sees a gateway error with the reason.
                502,
                vec![("content-type".to_owned(), "text/plain".to_owned())],
                error.clone().into_bytes(),
                last_attempt || matches!(exchange, Exchange::Refused { .. }),
                None,
            ),
        };
        let attempt = exchange.into_attempt();
        let summary = record::Summary::of(&job, &attempt, started.elapsed());
        let max_retries = job.w.retries.unwrap_or(0);
        let mut conn = self.redis.get();
        let result = if done {
            let callback = r.callback.clone().unwrap_or_default();
            let callback_body = run::callback_body(&run::CallAnswer {
                status,
                headers: &headers,
                body: &body,
                retried: job.a,
                max_retries,
                source_message_id: &job.m,
                url,
                method,
            });
            let tenant = TenantName::parse(&job.t).unwrap_or_else(|_| unknown_tenant());
            let follow = wf::job(
                &wf::message_id(),
                &tenant,
                &r.run,
                callback,
                &job.p,
                WorkflowJob {
                    kind: WorkflowKind::Callback,
                    run: r.run.clone(),
                    i: None,
                    method: None,
                    timeout_ms: None,
                    callback: None,
                    step: r.step.clone(),
                },
            );
            wf::store::chain(&mut conn, partition, entry_id, &follow, &callback_body)
                .await
                .map(|_| ())
        } else {
            job.a += 1;
            let job_json = serde_json::to_string(&job).unwrap_or_default();
            let delay = self.retry_delay(job.a, retry_after);
            scripts::retry_later(
                &mut conn,
                &RetryLaterArgs {
                    partition,
                    entry_id,
                    message_id: &job.m,
                    job_json: &job_json,
                    body: request_body,
                    delay_ms: delay.as_millis() as u64,
                    body_ref: None,
                },
            )
            .await
            .map(|_| ())
        };
        if let Err(e) = &result {
            tracing::warn!(message_id = %job.m, error = %e, "could not record the call's outcome");
        }
        // A call's non-2xx final answer is its result, not a failure of the delivery.
        record::finished(self, &job, summary, u32::MAX, result.is_ok()).await;
    }

    /// A child run's result, appended to its parent as the invoke step's result.
    async fn relay_invoke_result(
        &self,
        partition: &Partition,
        entry_id: &str,
        job: &Job,
        r: &WorkflowJob,
        tenant: &TenantName,
        out: &[u8],
    ) {
        let Ok(parent) = RunId::parse(&r.run) else {
            self.acknowledge_now(partition, entry_id, None);
            return;
        };
        let mut step = match &r.step {
            Some(serde_json::Value::Object(s)) => s.clone(),
            _ => serde_json::Map::new(),
        };
        step.insert("stepType".into(), "Invoke".into());
        step.insert(
            "out".into(),
            String::from_utf8_lossy(out).into_owned().into(),
        );
        let step = serde_json::Value::Object(step);
        match wf::append_result(
            &mut self.redis.get(),
            self.scope(tenant, &job.p),
            &parent,
            &job.m,
            &step,
        )
        .await
        {
            Ok(outcome) => {
                tracing::debug!(parent = %parent, child = %job.e, ?outcome, "invoke result appended to the parent run");
                self.acknowledge_now(partition, entry_id, None);
            }
            Err(e) => {
                tracing::warn!(parent = %parent, error = %e, "could not append the invoke result; it stays pending");
            }
        }
    }
}

/// The request a workflow job owes (before signing).
fn build(
    job: &Job,
    r: &WorkflowJob,
    record: Option<&RunRecord>,
    entries: &[String],
    body: Vec<u8>,
) -> Outbound {
    let mut headers = Vec::new();
    let add_all = |headers: &mut Vec<(HeaderName, HeaderValue)>, map: &crate::domain::HeaderMap| {
        for (name, values) in map.iter() {
            if let Some(v) = values.first() {
                push_header(headers, name, v);
            }
        }
    };
    let (url, body) = match r.kind {
        WorkflowKind::Step => {
            let rec = record.expect("a step is built with its run's record");
            add_all(&mut headers, &rec.headers);
            (rec.url.clone(), run::steps_body(entries))
        }
        WorkflowKind::Callback => {
            if let Some(rec) = record {
                add_all(&mut headers, &rec.headers);
            }
            add_all(&mut headers, &job.w.headers);
            (job.w.url.clone(), body)
        }
        _ => {
            add_all(&mut headers, &job.w.headers);
            (job.w.url.clone(), body)
        }
    };
    let mut outbound = Outbound { url, headers, body };
    if !matches!(r.kind, WorkflowKind::Plain | WorkflowKind::Call) {
        outbound.set_header("content-type", "application/json");
    }
    if r.kind == WorkflowKind::Step {
        let rec = record.expect("a step is built with its run's record");
        outbound.set_header("upstash-workflow-sdk-version", "1");
        outbound.set_header("upstash-workflow-runid", &r.run);
        outbound.set_header("upstash-workflow-createdat", &rec.created.to_string());
        if let Some(label) = &rec.label {
            outbound.set_header("upstash-label", label);
        }
        if rec.invoke_count > 0 {
            outbound.set_header(
                "upstash-workflow-invoke-count",
                &rec.invoke_count.to_string(),
            );
        }
    }
    outbound.set_header("upstash-message-id", &job.m);
    outbound.set_header("upstash-retried", &job.a.to_string());
    outbound
}
