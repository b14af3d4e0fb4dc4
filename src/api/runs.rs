//! `DELETE /v2/workflows/runs/{runId}`: end a workflow run (`?cancel=false`, sent by the
//! SDK when the workflow returns) or cancel a run: a run Herald holds ends
//! (src/workflow/mod.rs); a cancel also drops the run's waiters and saved notifications in
//! every partition and refuses its later waits and lookback notifies.

use actix_web::{web, HttpRequest, HttpResponse};

use super::auth::Tenant;
use super::{path_param, query_param, read_body, State};
use crate::domain::{EventId, RunId, TenantName};
use crate::error::ApiError;
use crate::limits::RateClass;
use crate::store::scripts;
use crate::workflow::run::RunState;

/// Most cancel script calls per partition (each removes up to
/// [`scripts::CANCEL_MAX_WAITERS`] waiters); a bound, not an expected count.
const MAX_CANCEL_CALLS: usize = 100_000;

pub async fn cancel(
    state: State,
    Tenant(tenant): Tenant,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let run = RunId::parse(path_param(&req, "runId"))?;
    // `?cancel=false` is a workflow's end (its return value as the body); anything else
    // cancels the run.
    let ending = query_param(&req, "cancel").as_deref() == Some("false");
    let mut conn = state.redis.get();
    state
        .check_rate(&mut conn, &tenant, RateClass::Wait)
        .await?;
    let result = if ending {
        read_body(&req, payload, state.settings.workflow.max_message_bytes).await?
    } else {
        web::Bytes::new()
    };
    let after = if ending {
        RunState::Success
    } else {
        RunState::Canceled
    };
    let before = super::workflow::end_run(
        &state,
        &tenant,
        &run,
        after,
        (!result.is_empty()).then_some(&result[..]),
        &req,
    )
    .await?;
    if ending && before.is_some() {
        return Ok(HttpResponse::Ok().json(serde_json::json!({
            "workflowRunId": run.as_str(),
            "state": after.as_str(),
        })));
    }
    let (waiters, saved) = clear_waiters(&state, &tenant, &run).await?;
    tracing::info!(tenant = %tenant, run = %run, waiters, saved, "run cancelled");
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "workflowRunId": run.as_str(),
        "cancelled": true,
        "waitersRemoved": waiters,
        "savedRemoved": saved,
    })))
}

/// Drops a run's waiters and saved notifications in every partition and refuses its
/// later waits and lookback notifies (one tombstone, in the run's home partition, set
/// before any partition is swept: src/store/tombstones.rs). Returns (waiters, saved)
/// removed.
pub async fn clear_waiters(
    state: &State,
    tenant: &TenantName,
    run: &RunId,
) -> Result<(i64, i64), ApiError> {
    let ttl_ms = state.settings.waiters.saved_ttl_secs * 1000;
    let mut conn = state.redis.get();
    let (mut waiters, mut saved) = (0, 0);
    let home = state.keys.run_partition(tenant, run);
    // The home partition first: its first call sets the tombstone (no new state for the
    // run from now on), before any partition is swept.
    let partitions = std::iter::once(home.clone()).chain(
        state
            .keys
            .all_partitions()
            .filter(|p| p.index != home.index),
    );
    for partition in partitions {
        // First call: list the run's events here; then bounded calls (lua/cancel.lua)
        // until no event of the run is left.
        let mut events: Vec<EventId> = Vec::new();
        for call in 0..MAX_CANCEL_CALLS {
            let tombstone = (partition.index == home.index && call == 0).then_some(ttl_ms);
            let cleared =
                scripts::cancel(&mut conn, &partition, tenant, run, tombstone, &events).await?;
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
    Ok((waiters, saved))
}
