//! `GET /v2/waiters/{eventId}`: the event's active waiters (Upstash `Waiter[]`), a page at
//! a time: at most [`MAX_LISTED`] waiters and `server.max_read_bytes` bytes of them, oldest
//! first within the page; `Herald-Next-Cursor` names the next page (`?cursor=`).

use actix_web::{HttpRequest, HttpResponse};

use super::auth::Tenant;
use super::{path_param, State};
use crate::domain::EventId;
use crate::error::ApiError;
use crate::limits::RateClass;
use crate::store::scripts;
use crate::waiter::{Waiter, WaiterView};

/// Most waiters listed in one response.
pub const MAX_LISTED: usize = 1000;

/// Most waiters one `list_waiters` call reads: a response page takes up to ten calls,
/// each well under a millisecond of Redis time (lua/README.md, "Bounded").
const PER_CALL: usize = 100;

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
    // One page, bounded in count and in bytes (`server.max_read_bytes`); the next
    // page's cursor, if any, is in `Herald-Next-Cursor` (ask again with `?cursor=`).
    let cursor = super::query_param(&req, "cursor").unwrap_or_else(|| "0.0".to_owned());
    if cursor.len() > 64 || !cursor.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(ApiError::bad(
            "cursor must be a value of Herald-Next-Cursor",
        ));
    }
    let max_bytes = state.settings.server.max_read_bytes;
    let (mut cursor, mut values, mut bytes) = (cursor, Vec::new(), 0);
    let next = loop {
        // The first call returns its first waiter whatever its size (a page always makes
        // progress); the later ones only what fits in the bytes left.
        let want = PER_CALL.min(MAX_LISTED - values.len());
        let (next, page) = scripts::list_waiters(
            &mut conn,
            &key,
            &cursor,
            want,
            max_bytes.saturating_sub(bytes),
            !values.is_empty(),
        )
        .await?;
        // A call that returned fewer than it was asked for stopped on bytes: the page is
        // full (another call would read the next waiters only to leave them).
        let full = page.len() < want;
        bytes += page.iter().map(|(_, json)| json.len()).sum::<usize>();
        values.extend(page);
        match next {
            Some(next) if !full && values.len() < MAX_LISTED => cursor = next,
            next => break next,
        }
    };
    let mut waiters: Vec<Waiter> = values
        .iter()
        .filter_map(|(field, json)| Waiter::from_stored(field, json).ok())
        .collect();
    waiters.sort_by_key(|w| (w.created_at, w.id.clone()));
    waiters.truncate(MAX_LISTED);
    let views: Vec<WaiterView<'_>> = waiters.iter().map(Waiter::view).collect();
    let mut response = HttpResponse::Ok();
    if let Some(next) = next {
        response.insert_header(("Herald-Next-Cursor", next));
    }
    Ok(response.json(views))
}
