//! The QStash side of the Upstash Workflow protocol (src/workflow/mod.rs): messages
//! (`POST /v2/batch`, `POST /v2/publish/{destination}`), a run's end and cancel
//! (`DELETE /v2/workflows/runs/{runId}`, `DELETE /v2/workflows/runs?workflowRunIds=…`),
//! the lazy fetch of a run's history (`GET /v2/workflows/runs/{runId}`) and webhook URLs
//! (`/v2/workflows/hooks/{userId}/{runId}/{eventId}`, any method, no token).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;

use super::auth::Tenant;
use super::{path_param, read_body, State};
use crate::domain::{EventId, RunId, TenantName};
use crate::error::ApiError;
use crate::limits::{LimitError, RateClass};
use crate::workflow::message::{Message, Request, MAX_BATCH};
use crate::workflow::run::{canonical_header, RunState};
use crate::workflow::{self, Accepted};

/// The reply element of one message.
fn reply_of(accepted: &Accepted) -> Value {
    match accepted {
        Accepted::Done { message_id, url } => {
            let mut v = serde_json::json!({ "messageId": message_id });
            if !url.is_empty() {
                v["url"] = url.clone().into();
            }
            v
        }
        Accepted::Deduplicated { message_id, url } => {
            serde_json::json!({ "messageId": message_id, "url": url, "deduplicated": true })
        }
        Accepted::Refused(error) => serde_json::json!({ "error": error }),
    }
}

/// Everything is parsed before anything is stored: a bad element changes nothing.
fn parse_all(messages: Vec<Message>) -> Result<Vec<Request>, ApiError> {
    let now = crate::history::now_ms();
    Ok(messages
        .into_iter()
        .map(|m| Request::parse(m, now))
        .collect::<Result<Vec<_>, _>>()?)
}

async fn accept_all(
    state: &State,
    tenant: &TenantName,
    req: &HttpRequest,
    requests: Vec<Request>,
) -> Result<Vec<Accepted>, ApiError> {
    let trace = super::observe::job_traceparent(req);
    let mut conn = state.redis.get();
    let storing: Vec<u64> = requests.iter().filter_map(Request::stores).collect();
    if !storing.is_empty() {
        // A tenant at its stored_bytes quota starts no run and adds no entry; nothing of
        // the request is written.
        let limits = state.limits_of(&mut conn, tenant).await?;
        let incoming = storing.iter().sum();
        if state
            .limits
            .stored_full(
                &mut conn,
                &state.keys,
                tenant,
                limits.stored_bytes,
                incoming,
            )
            .await?
        {
            return Err(LimitError::stored_full(tenant, &limits).into());
        }
    }
    let mut accepted = Vec::with_capacity(requests.len());
    for request in requests {
        accepted.push(
            workflow::accept(
                &mut conn,
                &state.keys,
                &state.settings.workflow,
                tenant,
                request,
                &trace,
            )
            .await?,
        );
    }
    Ok(accepted)
}

/// `POST /v2/batch`: a JSON array of `{destination, headers, body?}`; the reply is one
/// element per message, in order. A step for a run that ended or does not exist answers
/// 400 (the SDK then stops cleanly) when it is the only message.
pub async fn batch(
    state: State,
    Tenant(tenant): Tenant,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let raw = read_body(&req, payload, state.settings.workflow.max_message_bytes).await?;
    let json: Value = serde_json::from_slice(&raw)
        .map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))?;
    let items = json
        .as_array()
        .ok_or_else(|| ApiError::bad("the body must be a JSON array of messages"))?;
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(ApiError::bad(format!(
            "a batch holds 1 to {MAX_BATCH} messages"
        )));
    }
    let messages = items
        .iter()
        .enumerate()
        .map(|(i, v)| Message::from_batch_element(i, v))
        .collect::<Result<Vec<_>, _>>()?;
    let requests = parse_all(messages)?;
    let mut conn = state.redis.get();
    state
        .check_rate(&mut conn, &tenant, RateClass::Notify)
        .await?;
    let accepted = accept_all(&state, &tenant, &req, requests).await?;
    if let Some(error) = accepted.iter().find_map(|a| match a {
        Accepted::Refused(e) => Some(e.clone()),
        _ => None,
    }) {
        if accepted.len() == 1 {
            return Err(ApiError::BadRequest(error));
        }
    }
    Ok(HttpResponse::Ok().json(accepted.iter().map(reply_of).collect::<Vec<_>>()))
}

/// `POST /v2/publish/{destination}`: the destination is the raw path tail plus the query
/// string (the SDKs do not percent-encode it).
pub async fn publish(
    state: State,
    Tenant(tenant): Tenant,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let path = req.uri().path();
    let tail = path
        .strip_prefix("/v2/publish/")
        .ok_or_else(|| ApiError::bad("no destination"))?;
    let tail = percent_encoding::percent_decode_str(tail).decode_utf8_lossy();
    let destination = match req.uri().query() {
        Some(q) if !q.is_empty() => format!("{tail}?{q}"),
        _ => tail.into_owned(),
    };
    let raw = read_body(&req, payload, state.settings.workflow.max_message_bytes).await?;
    let headers = req
        .headers()
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())));
    let message = Message::from_publish(destination, headers, raw.to_vec())?;
    let requests = parse_all(vec![message])?;
    let mut conn = state.redis.get();
    state
        .check_rate(&mut conn, &tenant, RateClass::Notify)
        .await?;
    let accepted = accept_all(&state, &tenant, &req, requests).await?;
    match accepted.into_iter().next() {
        Some(Accepted::Refused(error)) => Err(ApiError::BadRequest(error)),
        Some(a) => Ok(HttpResponse::Created().json(reply_of(&a))),
        None => Err(ApiError::Internal("no reply".into())),
    }
}

/// Ends or cancels one run Herald holds. None: Herald holds no such run.
pub async fn end_run(
    state: &State,
    tenant: &TenantName,
    run: &RunId,
    state_after: RunState,
    result: Option<&[u8]>,
    req: &HttpRequest,
) -> Result<Option<RunState>, ApiError> {
    let trace = super::observe::job_traceparent(req);
    let scope = workflow::Scope {
        keys: &state.keys,
        settings: &state.settings.workflow,
        tenant,
        trace: &trace,
    };
    let before = workflow::end(
        &mut state.redis.get(),
        scope,
        run,
        (state_after, result),
        None,
        Vec::new(),
    )
    .await?;
    Ok(before)
}

/// `GET /v2/workflows/runs/{runId}`: the run's history (`RawStep[]`), for the JS SDK's
/// lazy fetch; 404 once the run has ended.
pub async fn history(
    state: State,
    Tenant(tenant): Tenant,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let run = RunId::parse(path_param(&req, "runId"))?;
    let mut conn = state.redis.get();
    state
        .check_rate(&mut conn, &tenant, RateClass::Wait)
        .await?;
    match workflow::store::read(&mut conn, &state.keys, &tenant, &run, None).await? {
        Some((record, entries)) if record.state == RunState::Running => Ok(HttpResponse::Ok()
            .content_type("application/json")
            .body(workflow::run::steps_body(&entries))),
        Some((record, _)) => Err(ApiError::NotFound(format!(
            "workflow run {run} has ended ({})",
            record.state.as_str()
        ))),
        None => Err(ApiError::NotFound(format!("no workflow run {run}"))),
    }
}

/// `DELETE /v2/workflows/runs?workflowRunIds=a&workflowRunIds=b` (`Client.cancel`):
/// cancels each run; `{"cancelled": n}` counts the runs that were running. Filters
/// (`workflowUrl`, `label`, dates, all runs) are not supported: 400.
pub async fn cancel_many(
    state: State,
    Tenant(tenant): Tenant,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let mut ids = Vec::new();
    for pair in req.query_string().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
        match k {
            "workflowRunIds" | "workflowRunId" => {
                for id in v.split(',').filter(|s| !s.is_empty()) {
                    ids.push(RunId::parse(id)?);
                }
            }
            // The SDK sends count and cursor; qstash_token is the token's query form.
            "count" => {
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ApiError::bad("count must be a whole number"));
                }
            }
            "cursor" | "qstash_token" => {}
            other => {
                return Err(ApiError::bad(format!(
                    "cancelling runs by {other} is not supported: pass workflowRunIds"
                )))
            }
        }
    }
    if ids.is_empty() {
        return Err(ApiError::bad(
            "pass the runs to cancel as workflowRunIds (cancelling by filter or all runs is not supported)",
        ));
    }
    if ids.len() > 1000 {
        return Err(ApiError::bad("at most 1000 runs per cancel"));
    }
    let mut cancelled = 0;
    for run in &ids {
        let before = end_run(&state, &tenant, run, RunState::Canceled, None, &req).await?;
        super::runs::clear_waiters(&state, &tenant, run).await?;
        if before == Some(RunState::Running) {
            cancelled += 1;
        }
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({ "cancelled": cancelled })))
}

/// `ANY /v2/workflows/hooks/{userId}/{runId}/{eventId}`: a webhook hit. No token: the URL
/// is the capability (its event id is random, made by the SDK's `createWebhook`). The
/// request becomes a lookback notify of (run, event), so a hit before the
/// `waitForWebhook` is kept for it.
pub async fn hook(
    state: State,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let tenant = TenantName::parse(path_param(&req, "userId"))
        .map_err(|_| ApiError::NotFound("no such webhook".into()))?;
    let run = RunId::parse(path_param(&req, "runId"))?;
    let event = EventId::parse(path_param(&req, "eventId"))?;
    let mut conn = state.redis.get();
    if crate::store::tenants::signing_keys(&mut conn, &state.keys, &tenant)
        .await
        .is_err()
    {
        return Err(ApiError::NotFound("no such webhook".into()));
    }
    let limits = state.limits_of(&mut conn, &tenant).await?;
    let body = read_body(&req, payload, state.settings.server.max_body_bytes).await?;
    let mut header = serde_json::Map::new();
    for (name, value) in req.headers() {
        if name == "authorization" {
            continue;
        }
        if let Ok(v) = value.to_str() {
            let entry = header
                .entry(canonical_header(name.as_str()))
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(values) = entry {
                values.push(v.into());
            }
        }
    }
    let url = match req.uri().query() {
        Some(q) => format!("{}?{q}", req.uri().path()),
        None => req.uri().path().to_owned(),
    };
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let proto = req.connection_info().scheme().to_owned();
    let mut record = serde_json::json!({
        "method": req.method().as_str(),
        "proto": proto,
        "host": host,
        "url": url,
        "header": header,
    });
    if req.method() != actix_web::http::Method::GET && req.method() != actix_web::http::Method::HEAD
    {
        record["body"] = crate::workflow::message::b64(&body).into();
    }
    let record = record.to_string();
    let ct = serde_json::to_string(&Some("application/json")).unwrap_or_default();
    super::notify::to_run(
        &state,
        &req,
        &tenant,
        &run,
        &event,
        record.as_bytes(),
        &ct,
        &limits,
    )
    .await
    .map(|_| {
        HttpResponse::build(StatusCode::OK)
            .json(serde_json::json!({ "workflowRunId": run.as_str(), "eventId": event.as_str() }))
    })
}
