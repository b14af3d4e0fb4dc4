//! The tenant's dead letters: `GET /v2/dlq` (cursor pages, oldest first, filters by event
//! id and url), `POST /v2/dlq/retry/{dlqId}` (send again, attempts reset, same message id),
//! `DELETE /v2/dlq/{dlqId}`.

use actix_web::{HttpRequest, HttpResponse};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Serialize;

use super::auth::Tenant;
use super::{path_param, State};
use crate::delivery::http;
use crate::domain::EventId;
use crate::error::ApiError;
use crate::limits::RateClass;
use crate::store::dead_letters::{self, DeadLetter, DeadLetterId, Redrive};
use crate::waiter::JobKind;

/// Dead letters per page unless `count` says otherwise, and the most `count` may ask for.
const DEFAULT_COUNT: usize = 50;
const MAX_COUNT: usize = 100;

/// The `DeadLetter` object of the API.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DeadLetterView {
    dlq_id: String,
    message_id: String,
    event_id: String,
    url: String,
    outcome: JobKind,
    workflow_run_id: Option<String>,
    attempts: u32,
    last_status: u16,
    last_error: String,
    created_at: i64,
    dead_lettered_at: i64,
    /// Base64 of the body the failed attempts sent (the event body as delivered, the
    /// timeout body, or the workflow step format).
    body: String,
}

impl From<DeadLetter> for DeadLetterView {
    fn from(d: DeadLetter) -> Self {
        let sent = http::build(&d.job, &d.body).body;
        DeadLetterView {
            dlq_id: d.id.to_string(),
            url: d.url().to_owned(),
            attempts: d.attempts(),
            message_id: d.job.m,
            event_id: d.job.e,
            outcome: d.job.k,
            workflow_run_id: d.job.w.run_id,
            last_status: d.last_status,
            last_error: d.last_error,
            created_at: d.job.q,
            dead_lettered_at: d.dead_lettered_at,
            body: STANDARD.encode(sent),
        }
    }
}

#[derive(Debug, Default)]
struct ListQuery {
    cursor: Option<String>,
    count: Option<String>,
    event_id: Option<String>,
    url: Option<String>,
}

fn parse_query(query: &str) -> Result<ListQuery, ApiError> {
    let mut q = ListQuery::default();
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let slot = match name.as_ref() {
            "cursor" => &mut q.cursor,
            "count" => &mut q.count,
            "eventId" => &mut q.event_id,
            "url" => &mut q.url,
            _ => continue,
        };
        if slot.replace(value.into_owned()).is_some() {
            return Err(ApiError::bad(format!(
                "query parameter {name} is given twice"
            )));
        }
    }
    Ok(q)
}

pub async fn list(
    state: State,
    Tenant(tenant): Tenant,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let q = parse_query(req.query_string())?;
    state
        .check_rate(&mut state.redis.get(), &tenant, RateClass::Read)
        .await?;
    let count = match q.count.as_deref() {
        None => DEFAULT_COUNT,
        Some(c) => c
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_COUNT).contains(n))
            .ok_or_else(|| {
                ApiError::bad(format!(
                    "count must be a whole number from 1 to {MAX_COUNT}"
                ))
            })?,
    };
    let partitions = state.keys.partitions();
    // An empty cursor is the first page, as clients echo `cursor` back verbatim.
    let after = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(DeadLetterId::parse(c, partitions).map_err(|_| {
            ApiError::bad("cursor is not one this API returned (send it back verbatim)")
        })?),
    };
    let event = q.event_id.as_deref().map(EventId::parse).transpose()?;
    // An event lives in one partition: only that one is read.
    let scanned: Vec<_> = match &event {
        Some(e) => vec![state.keys.partition_of(&tenant, e)],
        None => state.keys.all_partitions().collect(),
    };
    let page = dead_letters::list(
        &mut state.redis.get(),
        &tenant,
        &scanned,
        after.as_ref(),
        dead_letters::PageBound {
            count,
            bytes: state.settings.server.max_read_bytes,
            letter_bytes: state.settings.server.max_body_bytes + 64 * 1024,
        },
        |d| {
            event.as_ref().is_none_or(|e| d.job.e == e.as_str())
                && q.url.as_deref().is_none_or(|u| d.url() == u)
        },
    )
    .await?;
    let messages: Vec<DeadLetterView> = page.letters.into_iter().map(Into::into).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "messages": messages,
        "cursor": page.cursor.map(|c| c.to_string()),
    })))
}

fn dlq_id(state: &State, req: &HttpRequest) -> Result<DeadLetterId, ApiError> {
    Ok(DeadLetterId::parse(
        path_param(req, "dlqId"),
        state.keys.partitions(),
    )?)
}

fn unknown(id: &DeadLetterId) -> ApiError {
    ApiError::NotFound(format!("no dead letter {id}"))
}

pub async fn retry(
    state: State,
    Tenant(tenant): Tenant,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = dlq_id(&state, &req)?;
    state
        .check_rate(&mut state.redis.get(), &tenant, RateClass::Read)
        .await?;
    let message_id =
        match dead_letters::redrive(&mut state.redis.get(), &state.keys, &tenant, &id).await? {
            Redrive::Sent(message_id) => message_id,
            Redrive::NoLetter => return Err(unknown(&id)),
            Redrive::BodyGone => {
                return Err(ApiError::Conflict(format!(
                    "dead letter {id} cannot be sent again: its stored body has expired"
                )))
            }
        };
    tracing::info!(tenant = %tenant, dead_letter = %id, message = %message_id, "dead letter sent again");
    Ok(HttpResponse::Ok().json(serde_json::json!({ "messageId": message_id })))
}

pub async fn delete(
    state: State,
    Tenant(tenant): Tenant,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = dlq_id(&state, &req)?;
    state
        .check_rate(&mut state.redis.get(), &tenant, RateClass::Read)
        .await?;
    if !dead_letters::delete(&mut state.redis.get(), &state.keys, &tenant, &id).await? {
        return Err(unknown(&id));
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({ "deleted": true })))
}
