//! `DELETE /v2/workflows/runs/{runId}`: cancel a run: drop its waiters and saved
//! notifications in every partition, and refuse its later waits and lookback notifies.

use actix_web::{HttpRequest, HttpResponse};

use super::auth::Tenant;
use super::{path_param, State};
use crate::domain::{EventId, RunId};
use crate::error::ApiError;
use crate::limits::RateClass;
use crate::store::scripts;

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
        // First call: tombstone (no new state for the run from now on) + list its events.
        let listed = scripts::cancel(&mut conn, &partition, &tenant, &run, ttl_ms, &[]).await?;
        if listed.remaining_events.is_empty() {
            continue;
        }
        let events: Vec<EventId> = listed
            .remaining_events
            .iter()
            .filter_map(|e| EventId::parse(e).ok())
            .collect();
        let cleared =
            scripts::cancel(&mut conn, &partition, &tenant, &run, ttl_ms, &events).await?;
        waiters += cleared.waiters;
        saved += cleared.saved;
    }
    tracing::info!(tenant = %tenant, run = %run, waiters, saved, "run cancelled");
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "workflowRunId": run.as_str(),
        "cancelled": true,
        "waitersRemoved": waiters,
        "savedRemoved": saved,
    })))
}
