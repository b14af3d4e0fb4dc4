//! `/healthz` (the process is alive) and `/readyz` (Redis answers and the scripts are loaded).

use std::time::Duration;

use actix_web::HttpResponse;
use redis::cluster_routing::{LogicalAggregateOp, ResponsePolicy};

use super::State;
use crate::store::scripts;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

pub async fn readyz(state: State) -> HttpResponse {
    // Never longer than two response timeouts: a probe that hangs is worse than a 503.
    let limit = Duration::from_millis(state.settings.redis.response_timeout_ms.saturating_mul(2));
    match tokio::time::timeout(limit, scripts_loaded(&state)).await {
        Ok(Ok(())) => HttpResponse::Ok().json(serde_json::json!({ "status": "ready" })),
        Ok(Err(e)) => HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({ "error": format!("redis unavailable: {e}") })),
        Err(_) => HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({ "error": "redis unavailable: no answer in time" })),
    }
}

/// Checks that every master has every script; loads them where Redis lost its script
/// cache (restart, failover), so the probe answers ready at once after that. (Requests do
/// not depend on it: a script missing on a node is loaded on its first call.)
async fn scripts_loaded(state: &State) -> redis::RedisResult<()> {
    let mut conn = state.redis.get();
    let mut exists = redis::cmd("SCRIPT");
    exists.arg("EXISTS");
    for (_, script) in scripts::all() {
        exists.arg(script.get_hash());
    }
    let and = ResponsePolicy::AggregateLogical(LogicalAggregateOp::And);
    let loaded: Vec<i64> = redis::from_redis_value(conn.on_masters(exists, and).await?)?;
    if loaded.iter().all(|l| *l == 1) {
        return Ok(());
    }
    for (_, script) in scripts::all() {
        conn.load_on_masters(script).await?;
    }
    Ok(())
}
