//! `GET /v2/events/{eventId}/history`: the recent outcomes of one of the tenant's events
//! (see [`crate::history`]), newest first.

use actix_web::{HttpRequest, HttpResponse};

use super::auth::Tenant;
use super::{path_param, State};
use crate::domain::EventId;
use crate::error::ApiError;
use crate::limits::RateClass;

pub async fn get(
    state: State,
    Tenant(tenant): Tenant,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let event = EventId::parse(path_param(&req, "eventId"))?;
    state
        .check_rate(&mut state.redis.get(), &tenant, RateClass::Read)
        .await?;
    let max = state.settings.history.max_entries;
    // `count`: most entries returned (default and cap: history.max_entries).
    let count = super::query_param(&req, "count");
    let count = match count.as_deref() {
        None => max,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| ApiError::bad("count must be a whole number from 1 to 10000"))?
            .min(max),
    };
    let entries = if max == 0 {
        Vec::new()
    } else {
        crate::history::read(&mut state.redis.get(), &state.keys, &tenant, &event, count).await?
    };
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "eventId": event.as_str(),
        "retentionSecs": state.settings.history.ttl_secs,
        "entries": entries,
    })))
}
