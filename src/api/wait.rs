//! `POST /v2/wait/{eventId}`: register a waiter, or consume a saved lookback notification.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::auth::Tenant;
use super::{json_ok, path_param, read_body, State};
use crate::domain::{parse_duration, EventId, HeaderMap, RunId};
use crate::error::ApiError;
use crate::limits::{admission, LimitError, Limits, RateClass};
use crate::store::keys::waiter_field;
use crate::store::scripts::{self, HistoryArgs, WaitArgs, WaitReply};
use crate::store::tombstones::Tombstone;
use crate::waiter::Waiter;

/// The largest per-waiter retry count a tenant may ask for.
pub const MAX_RETRIES: u32 = 20;

pub fn validate_url(field: &str, value: &str) -> Result<(), ApiError> {
    let url = reqwest::Url::parse(value)
        .map_err(|e| ApiError::bad(format!("{field} is not a valid URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ApiError::bad(format!(
            "{field} must be an http or https URL"
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ApiError::bad(format!("{field} has no host")));
    }
    if value.len() > 2048 {
        return Err(ApiError::bad(format!(
            "{field} is longer than 2048 characters"
        )));
    }
    Ok(())
}

fn string_field<'a>(body: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad(format!("{name} must be a string"))),
    }
}

/// The run id: `Upstash-Workflow-RunId` header (any spelling) or body `workflowRunId`.
pub fn run_id_of(
    req: &HttpRequest,
    body: Option<&Map<String, Value>>,
) -> Result<Option<RunId>, ApiError> {
    let from_header = req
        .headers()
        .get("upstash-workflow-runid")
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::bad("Upstash-Workflow-RunId is not valid text"))
        })
        .transpose()?;
    let from_body = match body {
        Some(b) => string_field(b, "workflowRunId")?,
        None => None,
    };
    from_header
        .or(from_body)
        .map(|r| RunId::parse(r).map_err(ApiError::from))
        .transpose()
}

/// The wait's timeout: at most `waiters.max_timeout` (400 beyond) and the tenant's
/// `max_timeout` quota (422 beyond); a wait naming none gets the default, shortened to
/// the tenant's quota.
fn timeout_ms(
    body: &Map<String, Value>,
    default_ms: u64,
    max_ms: u64,
    max_text: &str,
    limits: &Limits,
) -> Result<(u64, String), ApiError> {
    let quota_ms = limits.max_timeout_ms();
    let (ms, text) = match body.get("timeout") {
        None | Some(Value::Null) => (default_ms.min(quota_ms), None),
        Some(Value::String(s)) => (parse_duration(s)?, Some(s.clone())),
        Some(Value::Number(n)) => {
            let secs = n.as_u64().ok_or_else(|| {
                ApiError::bad("timeout must be a whole, positive number of seconds")
            })?;
            (secs.saturating_mul(1000), Some(format!("{secs}s")))
        }
        Some(_) => {
            return Err(ApiError::bad(
                "timeout must be a string like \"10m\" or a number of seconds",
            ))
        }
    };
    if ms == 0 {
        return Err(ApiError::bad("timeout must be longer than zero"));
    }
    if ms > max_ms {
        return Err(ApiError::bad(format!(
            "timeout is longer than the maximum of {max_text}"
        )));
    }
    if ms > quota_ms {
        return Err(LimitError::Quota {
            name: "max_timeout",
            limit: limits.max_timeout.clone(),
            detail: format!(
                "the timeout {} is longer",
                text.as_deref().unwrap_or_default()
            ),
        }
        .into());
    }
    Ok((ms, text.unwrap_or_else(|| format!("{}s", ms / 1000))))
}

fn retries_of(req: &HttpRequest, body: &Map<String, Value>) -> Result<Option<u32>, ApiError> {
    let raw = match req.headers().get("upstash-retries") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .ok_or_else(|| ApiError::bad("Upstash-Retries must be a whole number"))?,
        ),
        None => match body.get("retries") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| ApiError::bad("retries must be a whole number"))?,
            ),
        },
    };
    match raw {
        Some(n) if n > MAX_RETRIES => Err(ApiError::bad(format!(
            "retries must be at most {MAX_RETRIES}"
        ))),
        other => Ok(other),
    }
}

/// A short, stable id from parts (SHA-256, 96 bits, hex).
pub fn hash_id(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..12])
}

pub use crate::domain::random_id;

pub async fn wait(
    state: State,
    Tenant(tenant): Tenant,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let event = EventId::parse(path_param(&req, "eventId"))?;
    let settings = &state.settings;
    let mut conn = state.redis.get();
    let limits = state.limits_of(&mut conn, &tenant).await?;
    admission::still_refused(&state.limits, &tenant, RateClass::Wait, &limits)?;
    let raw = read_body(&req, payload, settings.server.max_body_bytes).await?;
    let json: Value = serde_json::from_slice(&raw)
        .map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))?;
    let body = json
        .as_object()
        .ok_or_else(|| ApiError::bad("the body must be a JSON object"))?;

    let url = string_field(body, "url")?.ok_or_else(|| ApiError::bad("url is required"))?;
    validate_url("url", url)?;
    let timeout_url = string_field(body, "timeoutUrl")?.unwrap_or(url);
    if timeout_url != url {
        validate_url("timeoutUrl", timeout_url)?;
    }
    let timeout_body = string_field(body, "timeoutBody")?;
    if let Some(b) = timeout_body {
        base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|_| ApiError::bad("timeoutBody must be base64 (standard alphabet)"))?;
    }
    let timeout_headers = HeaderMap::from_json(
        "timeoutHeaders",
        body.get("timeoutHeaders").unwrap_or(&Value::Null),
    )?;
    let mut headers = HeaderMap::from_json("headers", body.get("headers").unwrap_or(&Value::Null))?;
    let (timeout_ms, timeout_text) = timeout_ms(
        body,
        settings.default_timeout_ms(),
        settings.max_timeout_ms(),
        &settings.waiters.max_timeout,
        &limits,
    )?;
    let step = match body.get("step") {
        None | Some(Value::Null) => None,
        Some(Value::Object(s)) => {
            if !s.get("stepId").is_some_and(Value::is_number)
                || !s.get("stepName").is_some_and(Value::is_string)
            {
                return Err(ApiError::bad(
                    "step must have a numeric stepId and a string stepName",
                ));
            }
            let step = Value::Object(s.clone());
            let bytes = step.to_string().len();
            if bytes > crate::domain::MAX_STEP_BYTES
                || crate::domain::json_depth(&step) > crate::domain::MAX_STEP_DEPTH
            {
                return Err(ApiError::bad(format!(
                    "step is {bytes} bytes deep {}; at most {} bytes and {} levels",
                    crate::domain::json_depth(&step),
                    crate::domain::MAX_STEP_BYTES,
                    crate::domain::MAX_STEP_DEPTH
                )));
            }
            Some(Value::Object(s.clone()))
        }
        Some(_) => return Err(ApiError::bad("step must be an object")),
    };
    let run = run_id_of(&req, Some(body))?;
    let retries = retries_of(&req, body)?;

    // Registration is idempotent: a workflow step's waiter id comes from (run, step id),
    // a plain waiter's from Idempotency-Key when given, so a client retry finds the first
    // registration instead of making a second waiter.
    let idempotency_key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty());
    let waiter_id = match (&step, &run, idempotency_key) {
        (Some(step), Some(run), _) => {
            let step_id = step.get("stepId").map(Value::to_string).unwrap_or_default();
            hash_id(&[tenant.as_str(), "step", run.as_str(), &step_id, event.as_str()])
        }
        (Some(_), None, _) => {
            return Err(ApiError::bad(
                "a workflow waiter (with step) needs a run id: Upstash-Workflow-RunId header or workflowRunId",
            ))
        }
        (None, run, Some(key)) => hash_id(&[
            tenant.as_str(),
            "idem",
            run.as_ref().map(RunId::as_str).unwrap_or(""),
            key,
            event.as_str(),
        ]),
        (None, _, None) => random_id(24),
    };
    let repeatable = step.is_some() || idempotency_key.is_some();
    // The Upstash SDK sends the delivery headers only as timeoutHeaders; both outcomes
    // of a workflow waiter go to the same endpoint with the same headers.
    if headers.is_empty() && step.is_some() {
        headers = timeout_headers.clone();
    }

    let traceparent = super::observe::job_traceparent(&req);
    let waiter = Waiter {
        id: waiter_id.clone(),
        url: url.to_owned(),
        headers,
        timeout_url: timeout_url.to_owned(),
        timeout_body: timeout_body.map(str::to_owned),
        timeout_headers,
        step,
        run_id: run.as_ref().map(|r| r.as_str().to_owned()),
        timeout: timeout_text,
        retries,
        traceparent: Some(traceparent.clone()).filter(|t| !t.is_empty()),
        deadline: 0,
        created_at: 0,
    };
    let waiter_json = serde_json::to_string(&waiter.for_storage())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let partition = state.keys.partition_of(&tenant, &event);
    let field = waiter_field(run.as_ref(), &waiter_id);
    // Only a registration a client can repeat (same step, same Idempotency-Key) needs an
    // idempotency record: a random waiter id is never sent twice. Keeping none saves a
    // key per waiter (about a third of an idle waiter's memory) and two commands.
    let op_id = repeatable.then(|| format!("w:{waiter_id}"));
    let admitted = admission::admit(
        &mut conn,
        &state.keys,
        &state.limits,
        &tenant,
        &limits,
        admission::Operation {
            class: RateClass::Wait,
            wait_in: Some(&partition),
            stores: waiter_json.len() as u64,
        },
    )
    .await?;
    // The run's tombstone: checked by the script, or here before and after it (a
    // cluster, another slot: src/store/tombstones.rs).
    let tombstone = run.as_ref().map(|r| Tombstone::of(&state.keys, &tenant, r));
    let folded = tombstone.as_ref().filter(|t| t.folded(&conn, &partition));
    let checked_here = tombstone.as_ref().filter(|t| !t.folded(&conn, &partition));
    if let Some(t) = checked_here {
        if t.exists(&mut conn).await? {
            return Err(run_cancelled(run.as_ref()));
        }
    }
    let reply = scripts::wait(
        &mut conn,
        &WaitArgs {
            partition: &partition,
            tenant: &tenant,
            event: &event,
            run: run.as_ref(),
            field: &field,
            op_id: op_id.as_deref(),
            waiter_json: &waiter_json,
            timeout_ms,
            op_ttl_secs: settings.waiters.idempotency_ttl_secs,
            run_ttl_ms: settings.waiters.saved_ttl_secs * 1000,
            max_waiters: limits.waiters_per_event,
            trace: &traceparent,
            rate: admitted.rate.as_ref(),
            active: admitted.active_quota(),
            history: HistoryArgs::from_settings(&settings.history),
            stored_full: admitted.stored_full,
            tombstone: folded.map(|t| t.key.as_str()),
        },
    )
    .await?;
    if let (WaitReply::Waiting { .. }, Some(t), Some(run)) = (&reply, checked_here, &run) {
        if t.exists(&mut conn).await? {
            // Cancelled while it registered: remove it, as the cancel's sweep would.
            Tombstone::undo(&mut conn, &partition, &tenant, run, &event).await?;
            return Err(run_cancelled(Some(run)));
        }
    }
    match reply {
        WaitReply::Waiting { waiter_json } => {
            let stored: Waiter = serde_json::from_str(&waiter_json)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            tracing::debug!(tenant = %tenant, event_id = %event, waiter = %waiter_id, "waiter registered");
            crate::telemetry::metrics::wait(false);
            Ok(json_ok(
                StatusCode::OK,
                &serde_json::json!({
                    "waiterId": waiter_id,
                    "status": "waiting",
                    "deadline": stored.deadline,
                }),
            ))
        }
        WaitReply::Consumed { message_id, .. } => {
            tracing::debug!(tenant = %tenant, event_id = %event, waiter = %waiter_id, message_id = %message_id, "saved notification consumed");
            crate::telemetry::metrics::wait(true);
            Ok(json_ok(
                StatusCode::OK,
                &serde_json::json!({
                    "waiterId": waiter_id,
                    "status": "notified",
                    "messageId": message_id,
                }),
            ))
        }
        WaitReply::Cancelled => Err(run_cancelled(run.as_ref())),
        WaitReply::Full { count } => Err(LimitError::Quota {
            name: "waiters_per_event",
            limit: limits.waiters_per_event.to_string(),
            detail: format!("event {event} already has {count} waiters"),
        }
        .into()),
        WaitReply::TenantFull { count } => Err(LimitError::Quota {
            name: "active_waiters",
            limit: limits.active_waiters.to_string(),
            detail: format!("tenant {tenant} already has {count} active waiters"),
        }
        .into()),
        WaitReply::StoredFull => Err(LimitError::stored_full(&tenant, &limits).into()),
        WaitReply::Limited(refusal) => {
            Err(
                admission::refused(&state.limits, &tenant, RateClass::Wait, &limits, refusal)
                    .into(),
            )
        }
    }
}

fn run_cancelled(run: Option<&RunId>) -> ApiError {
    ApiError::Conflict(format!(
        "run {} was cancelled; it cannot wait any more",
        run.map(|r| r.to_string()).unwrap_or_default()
    ))
}
