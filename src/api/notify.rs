//! `POST /v2/notify/{eventId}` (broadcast) and `POST /v2/notify/{runId}/{eventId}` (lookback).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use super::auth::Tenant;
use super::wait::{hash_id, random_id};
use super::{path_param, read_body, State};
use crate::domain::{EventId, RunId};
use crate::error::ApiError;
use crate::limits::{admission, LimitError, Limits, RateClass};
use crate::store::scripts::{
    self, HistoryArgs, NotifyArgs, NotifyReply, NotifyRunArgs, NotifyRunReply, Taken,
};
use crate::store::tombstones::Tombstone;
use crate::telemetry::metrics::{self, NotifyOutcome};
use crate::waiter::{NotifyResponse, Waiter};

/// Most notify script calls one broadcast makes (each takes `waiters.notify_batch`
/// waiters); what is left after that stays waiting and is reported in the log.
const MAX_BATCHES: usize = 10_000;

fn content_type_json(req: &HttpRequest) -> String {
    let ct = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok());
    serde_json::to_string(&ct).unwrap_or_else(|_| "null".into())
}

/// A message id base unique to one call: deliveries get `<base><n>`.
fn message_id_base() -> String {
    format!("msg_{}_", random_id(20))
}

fn parse_waiters(taken: &[Taken]) -> Result<Vec<Waiter>, ApiError> {
    taken
        .iter()
        .map(|t| {
            if t.waiter_json.is_empty() {
                // Past the reply budget: the waiter by its field only.
                let (run, id) = t.field.split_once('|').unwrap_or(("", &t.field));
                return Ok(Waiter {
                    id: id.to_owned(),
                    run_id: (!run.is_empty()).then(|| run.to_owned()),
                    ..Waiter::default()
                });
            }
            Waiter::from_stored(&t.field, &t.waiter_json)
        })
        .collect::<Result<_, _>>()
        .map_err(|e| ApiError::Internal(format!("stored waiter: {e}")))
}

/// What is left of a notify's reply budget (`server.max_read_bytes` of waiter records)
/// after the waiters of one call: none once a record was left out.
fn budget_after(budget: usize, taken: &[Taken]) -> usize {
    if taken.iter().any(|t| t.waiter_json.is_empty()) {
        return 0;
    }
    budget.saturating_sub(taken.iter().map(|t| t.waiter_json.len()).sum())
}

/// Metrics of a notify that took `taken` waiters (none: nobody waits); its history
/// entries were written by the script.
fn record_notified(taken: &[Taken]) {
    let outcome = if taken.is_empty() {
        NotifyOutcome::NobodyWaiting
    } else {
        NotifyOutcome::Delivered
    };
    metrics::notify(outcome, taken.len());
}

fn responses(taken: &[Taken], waiters: &[Waiter]) -> Result<HttpResponse, ApiError> {
    let body: Vec<NotifyResponse<'_>> = waiters
        .iter()
        .zip(taken)
        .map(|(w, t)| NotifyResponse {
            waiter: w.view(),
            message_id: &t.message_id,
            deduplicated: false,
            error: "",
            workflow_run_id: w.run_id.as_deref().unwrap_or(""),
            workflow_created_at: w.created_at,
            waiter_omitted: t.waiter_json.is_empty(),
        })
        .collect();
    Ok(HttpResponse::build(StatusCode::CREATED)
        .insert_header((
            "Herald-Notify-Outcome",
            if taken.is_empty() {
                "none"
            } else {
                "delivered"
            },
        ))
        .json(body))
}

/// Reads a notify body up to the server's cap and the tenant's `notify_body_bytes`.
async fn read_notify_body(
    state: &State,
    req: &HttpRequest,
    payload: web::Payload,
    limits: &Limits,
) -> Result<web::Bytes, ApiError> {
    let server_max = state.settings.server.max_body_bytes;
    let quota = usize::try_from(limits.notify_body_bytes).unwrap_or(usize::MAX);
    if quota >= server_max {
        return read_body(req, payload, server_max).await;
    }
    read_body(req, payload, quota).await.map_err(|e| match e {
        ApiError::PayloadTooLarge(_) => LimitError::BodyTooLarge {
            limit: limits.notify_body_bytes,
        }
        .into(),
        other => other,
    })
}

pub async fn broadcast(
    state: State,
    Tenant(tenant): Tenant,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let event = EventId::parse(path_param(&req, "eventId"))?;
    let mut conn = state.redis.get();
    let limits = state.limits_of(&mut conn, &tenant).await?;
    admission::still_refused(&state.limits, &tenant, RateClass::Notify, &limits)?;
    let body = read_notify_body(&state, &req, payload, &limits).await?;
    let partition = state.keys.partition_of(&tenant, &event);
    let ct = content_type_json(&req);
    let traceparent = super::observe::job_traceparent(&req);
    let admitted = admission::admit(
        &mut conn,
        &state.keys,
        &state.limits,
        &tenant,
        &limits,
        admission::Operation {
            class: RateClass::Notify,
            wait_in: None,
            stores: 0,
        },
    )
    .await?;
    let mut taken = Vec::new();
    // Every call of the broadcast references one stored body.
    let body_id = random_id(20);
    let mut budget = state.settings.server.max_read_bytes;
    let mut cursor = "0".to_owned();
    for batch in 0..MAX_BATCHES {
        let base = message_id_base();
        let reply = scripts::notify(
            &mut conn,
            &NotifyArgs {
                partition: &partition,
                tenant: &tenant,
                event: &event,
                body: &body,
                content_type_json: &ct,
                message_id_base: &base,
                limit: state.settings.waiters.notify_batch,
                trace: &traceparent,
                // The request is admitted once, by its first call.
                rate: admitted.rate.as_ref().filter(|_| batch == 0),
                first_call: batch == 0,
                history: HistoryArgs::from_settings(&state.settings.history),
                body_id: &body_id,
                stored_full: admitted.stored_full,
                reply_budget: budget,
                time_budget_us: state.settings.redis.script_budget_us,
                cursor: &cursor,
            },
        )
        .await?;
        let (batch_taken, next) = match reply {
            NotifyReply::Taken { taken, next } => (taken, next),
            NotifyReply::StoredFull => return Err(LimitError::stored_full(&tenant, &limits).into()),
            NotifyReply::Limited(refusal) => {
                return Err(admission::refused(
                    &state.limits,
                    &tenant,
                    RateClass::Notify,
                    &limits,
                    refusal,
                )
                .into())
            }
        };
        budget = budget_after(budget, &batch_taken);
        taken.extend(batch_taken);
        // Each call takes a waiter or moves the cursor on: the broadcast ends.
        match next {
            Some(next) if batch + 1 < MAX_BATCHES => cursor = next,
            Some(_) => tracing::warn!(
                tenant = %tenant, event_id = %event, notified = taken.len(),
                "broadcast stopped after {MAX_BATCHES} script calls; the waiters left still wait"
            ),
            None => break,
        }
    }
    tracing::debug!(tenant = %tenant, event_id = %event, notified = taken.len(), "broadcast");
    let waiters = parse_waiters(&taken)?;
    record_notified(&taken);
    responses(&taken, &waiters)
}

pub async fn lookback(
    state: State,
    Tenant(tenant): Tenant,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let run = RunId::parse(path_param(&req, "runId"))?;
    let event = EventId::parse(path_param(&req, "eventId"))?;
    let mut conn = state.redis.get();
    let limits = state.limits_of(&mut conn, &tenant).await?;
    admission::still_refused(&state.limits, &tenant, RateClass::Notify, &limits)?;
    let body = read_notify_body(&state, &req, payload, &limits).await?;
    let ct = content_type_json(&req);
    to_run(&state, &req, &tenant, &run, &event, &body, &ct, &limits).await
}

/// A lookback notify of (`run`, `event`) with `body`: delivered to the run's waiters on
/// the event, or saved for the run's next wait on it. Also the webhook hits of a run
/// (`api/workflow.rs`).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn to_run(
    state: &State,
    req: &HttpRequest,
    tenant: &crate::domain::TenantName,
    run: &RunId,
    event: &EventId,
    body: &[u8],
    ct: &str,
    limits: &Limits,
) -> Result<HttpResponse, ApiError> {
    let (tenant, run, event, limits) = (tenant.clone(), run.clone(), event.clone(), limits);
    let mut conn = state.redis.get();
    let settings = &state.settings;
    let partition = state.keys.partition_of(&tenant, &event);
    // A client retry with the same Idempotency-Key (or Upstash-Deduplication-Id) gets the
    // first reply and saves nothing twice; without one, each call is its own notify and
    // keeps no idempotency record (a saved notification's memory is a third smaller).
    let op_id = req
        .headers()
        .get("idempotency-key")
        .or_else(|| req.headers().get("upstash-deduplication-id"))
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 256)
        .map(|k| {
            format!(
                "n:{}",
                hash_id(&[tenant.as_str(), run.as_str(), event.as_str(), k])
            )
        });
    let base = message_id_base();
    let admitted = admission::admit(
        &mut conn,
        &state.keys,
        &state.limits,
        &tenant,
        limits,
        admission::Operation {
            class: RateClass::Notify,
            wait_in: None,
            stores: body.len() as u64,
        },
    )
    .await?;
    // The run's tombstone: checked by the script, or here before and after it (a
    // cluster, another slot: src/store/tombstones.rs).
    let tombstone = Tombstone::of(&state.keys, &tenant, &run);
    let folded = tombstone.folded(&conn, &partition);
    if !folded && tombstone.exists(&mut conn).await? {
        return Err(run_cancelled(&run));
    }
    let trace = super::observe::job_traceparent(req);
    let args = |more: bool, reply_budget: usize| NotifyRunArgs {
        partition: &partition,
        tenant: &tenant,
        event: &event,
        run: &run,
        // Later calls of a batched delivery keep no record: the first call's record
        // already answers a retry of the request.
        op_id: op_id.as_deref().filter(|_| !more),
        body,
        content_type_json: ct,
        message_id_base: "",
        saved_ttl_ms: settings.waiters.saved_ttl_secs * 1000,
        op_ttl_secs: settings.waiters.idempotency_ttl_secs,
        max_saved: limits.saved_per_run_event,
        trace: &trace,
        rate: admitted.rate.as_ref().filter(|_| !more),
        history: HistoryArgs::from_settings(&settings.history),
        limit: settings.waiters.notify_batch,
        more,
        stored_full: admitted.stored_full,
        tombstone: folded.then_some(tombstone.key.as_str()),
        reply_budget,
        time_budget_us: settings.redis.script_budget_us,
    };
    let first = NotifyRunArgs {
        message_id_base: &base,
        ..args(false, settings.server.max_read_bytes)
    };
    let reply = scripts::notify_run(&mut conn, &first).await?;
    match reply {
        NotifyRunReply::Delivered {
            mut taken,
            mut remaining,
        } => {
            // A run with more waiters on the event than one call takes: the rest in
            // bounded batches (each call is atomic for its batch; lua/notify_run.lua).
            let mut budget = budget_after(settings.server.max_read_bytes, &taken);
            for _ in 0..MAX_BATCHES {
                if remaining <= 0 {
                    break;
                }
                let base = message_id_base();
                let next = NotifyRunArgs {
                    message_id_base: &base,
                    ..args(true, budget)
                };
                match scripts::notify_run(&mut conn, &next).await? {
                    NotifyRunReply::Delivered {
                        taken: more,
                        remaining: left,
                    } if !more.is_empty() => {
                        budget = budget_after(budget, &more);
                        taken.extend(more);
                        remaining = left;
                    }
                    // Nothing left (or the run was cancelled meanwhile).
                    _ => break,
                }
            }
            let waiters = parse_waiters(&taken)?;
            record_notified(&taken);
            responses(&taken, &waiters)
        }
        NotifyRunReply::Saved { .. } if !folded && tombstone.exists(&mut conn).await? => {
            // Cancelled while it was saved: remove it, as the cancel's sweep would.
            Tombstone::undo(&mut conn, &partition, &tenant, &run, &event).await?;
            Err(run_cancelled(&run))
        }
        NotifyRunReply::Saved { message_id } => {
            tracing::debug!(tenant = %tenant, event_id = %event, run_id = %run, message_id = %message_id, "lookback saved");
            metrics::notify(NotifyOutcome::Saved, 0);
            Ok(HttpResponse::build(StatusCode::CREATED)
                .insert_header(("Herald-Notify-Outcome", "saved"))
                .insert_header(("Herald-Message-Id", message_id))
                .json(Vec::<()>::new()))
        }
        NotifyRunReply::Cancelled => Err(run_cancelled(&run)),
        NotifyRunReply::Full { count } => Err(LimitError::Quota {
            name: "saved_per_run_event",
            limit: limits.saved_per_run_event.to_string(),
            detail: format!("run {run} already has {count} saved notifications for event {event}"),
        }
        .into()),
        NotifyRunReply::StoredFull => Err(LimitError::stored_full(&tenant, limits).into()),
        NotifyRunReply::Limited(refusal) => {
            Err(
                admission::refused(&state.limits, &tenant, RateClass::Notify, limits, refusal)
                    .into(),
            )
        }
    }
}

fn run_cancelled(run: &RunId) -> ApiError {
    ApiError::Conflict(format!(
        "run {run} was cancelled; its notifications are not kept"
    ))
}
