//! `/healthz` (the process is alive) and `/readyz` (Redis answers and the scripts are loaded).

use actix_web::HttpResponse;

use super::State;
use crate::store::scripts;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

pub async fn readyz(state: State) -> HttpResponse {
    let mut conn = state.redis.get();
    let mut cmd = redis::cmd("SCRIPT");
    cmd.arg("EXISTS");
    for (_, script) in scripts::all() {
        cmd.arg(script.get_hash());
    }
    match cmd.query_async::<Vec<i64>>(&mut conn).await {
        Ok(loaded) if loaded.iter().all(|l| *l == 1) => {
            HttpResponse::Ok().json(serde_json::json!({ "status": "ready" }))
        }
        Ok(_) => {
            // Redis lost its script cache (restart, failover): reload, report not ready once.
            let _ = crate::store::prepare(&mut conn, &state.keys).await;
            HttpResponse::ServiceUnavailable()
                .json(serde_json::json!({ "error": "scripts were not loaded; reloading" }))
        }
        Err(e) => HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({ "error": format!("redis unavailable: {e}") })),
    }
}
