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
        // Redis lost its script cache (restart, failover): reload; ready once that worked
        // (requests do not depend on it: a script missing on a node is loaded on its
        // first call).
        Ok(_) => match crate::store::prepare(&mut conn, &state.keys).await {
            Ok(()) => HttpResponse::Ok().json(serde_json::json!({ "status": "ready" })),
            Err(e) => HttpResponse::ServiceUnavailable().json(
                serde_json::json!({ "error": format!("scripts were not loaded; reloading failed: {e}") }),
            ),
        },
        Err(e) => HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({ "error": format!("redis unavailable: {e}") })),
    }
}
