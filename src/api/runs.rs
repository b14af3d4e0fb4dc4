//! `DELETE /v2/workflows/runs/{runId}`: cancel a run: drop its waiters and saved
//! notifications in every partition, and refuse its later waits and lookback notifies.

use actix_web::{HttpRequest, HttpResponse};

use super::auth::Tenant;
use super::{path_param, State};
use crate::domain::{EventId, RunId};
use crate::error::ApiError;
use crate::limits::RateClass;
use crate::store::scripts;

/// Most cancel script calls per partition (each removes up to
/// [`scripts::CANCEL_MAX_WAITERS`] waiters); a bound, not an expected count.
const MAX_CANCEL_CALLS: usize = 100_000;

pub async fn cancel(
    state: State,
    Tenant(tenant): Tenant,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let run = RunId::parse(path_param(&req, "runId"))?;
    let ttl_ms = state.settings.waiters.saved_ttl_secs * 1000;
    let mut conn = state.redis.get();
    state
        .check_rate(&mut conn, &tenant, RateClass::Wait)
        .await?;
    let (mut waiters, mut saved) = (0, 0);
    for partition in state.keys.all_partitions() {
        // First call: tombstone (no new state for the run from now on) + list its events;
        // then bounded calls (lua/cancel.lua) until no event of the run is left.
        let mut events: Vec<EventId> = Vec::new();
        for call in 0..MAX_CANCEL_CALLS {
            let cleared =
                scripts::cancel(&mut conn, &partition, &tenant, &run, ttl_ms, &events).await?;
            waiters += cleared.waiters;
            saved += cleared.saved;
            events = cleared
                .remaining_events
                .iter()
                .filter_map(|e| EventId::parse(e).ok())
                .collect();
            if events.is_empty() {
                break;
            }
            if call + 1 == MAX_CANCEL_CALLS {
                tracing::warn!(tenant = %tenant, run = %run, partition = partition.index, "cancel: state left after the last call; it expires with its TTL");
            }
        }
    }
    tracing::info!(tenant = %tenant, run = %run, waiters, saved, "run cancelled");
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "workflowRunId": run.as_str(),
        "cancelled": true,
        "waitersRemoved": waiters,
        "savedRemoved": saved,
    })))
}
