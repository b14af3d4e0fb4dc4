//! `GET /v2/waiters/{eventId}`: the event's active waiters (Upstash `Waiter[]`).

use actix_web::{HttpRequest, HttpResponse};

use super::auth::Tenant;
use super::{path_param, State};
use crate::domain::EventId;
use crate::error::ApiError;
use crate::limits::RateClass;
use crate::store::StoreError;
use crate::waiter::{Waiter, WaiterView};

/// Most waiters listed in one response.
pub const MAX_LISTED: usize = 1000;

pub async fn list(
    state: State,
    Tenant(tenant): Tenant,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let event = EventId::parse(path_param(&req, "eventId"))?;
    let key = state
        .keys
        .partition_of(&tenant, &event)
        .event_waiters(&tenant, &event);
    let mut conn = state.redis.get();
    state
        .check_rate(&mut conn, &tenant, RateClass::Read)
        .await?;
    let mut values: Vec<(String, String)> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
            .arg(&key)
            .arg(cursor)
            .arg("COUNT")
            .arg(MAX_LISTED)
            .query_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        values.extend(batch);
        cursor = next;
        if cursor == 0 || values.len() >= MAX_LISTED {
            break;
        }
    }
    let mut waiters: Vec<Waiter> = values
        .iter()
        .filter_map(|(field, json)| Waiter::from_stored(field, json).ok())
        .collect();
    waiters.sort_by_key(|w| (w.created_at, w.id.clone()));
    waiters.truncate(MAX_LISTED);
    let views: Vec<WaiterView<'_>> = waiters.iter().map(Waiter::view).collect();
    Ok(HttpResponse::Ok().json(views))
}
