//! The HTTP API: the Upstash-compatible tenant surface and the operator surface.
//! [`configure`] is the only place routes are listed.

pub mod admin;
pub mod auth;
pub mod console;
pub mod dlq;
pub mod health;
pub mod history;
pub mod keys;
pub mod limits;
pub mod notify;
pub mod observe;
pub mod openapi;
pub mod prometheus;
pub mod runs;
pub mod saved;
pub mod wait;
pub mod waiters;
pub mod workflow;

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;

use crate::config::Settings;
use crate::error::ApiError;
use crate::store::{Keys, RedisPool};

/// Shared by every request handler.
pub struct AppState {
    pub settings: Settings,
    pub redis: RedisPool,
    pub keys: Keys,
    pub auth: auth::TokenCache,
    pub auth_throttle: auth::AuthThrottle,
    pub limits: crate::limits::cache::LimitsCache,
}

impl AppState {
    /// The tenant's effective limits (cached for `limits.cache_ms`).
    pub async fn limits_of(
        &self,
        conn: &mut crate::store::Conn,
        tenant: &crate::domain::TenantName,
    ) -> Result<Arc<crate::limits::Limits>, ApiError> {
        Ok(self
            .limits
            .get(conn, &self.keys, &self.settings, tenant)
            .await?)
    }

    /// Checks a request's rate limit on its own (routes without a script of their own).
    pub async fn check_rate(
        &self,
        conn: &mut crate::store::Conn,
        tenant: &crate::domain::TenantName,
        class: crate::limits::RateClass,
    ) -> Result<(), ApiError> {
        let limits = self.limits_of(conn, tenant).await?;
        crate::limits::admission::check_now(conn, &self.keys, &self.limits, tenant, &limits, class)
            .await?;
        Ok(())
    }
}

pub type State = web::Data<Arc<AppState>>;

/// Worker processes serve only the operator probes.
pub fn configure_health_only(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/metrics", web::get().to(prometheus::metrics))
        .default_service(web::to(not_found));
}

/// A workflow run's webhook URL (`createWebhook`): any of the methods below.
pub const HOOK: &str = "/v2/workflows/hooks/{userId}/{runId}/{eventId}";

/// The tenant surface (and `/openapi.json`).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/openapi.json", web::get().to(openapi::document))
        .route("/console", web::get().to(console::page))
        .route("/console/{file:.*}", web::get().to(console::file))
        .route("/v2/wait/{eventId}", web::post().to(wait::wait))
        .route("/v2/notify/{eventId}", web::post().to(notify::broadcast))
        .route(
            "/v2/notify/{runId}/{eventId}",
            web::post().to(notify::lookback),
        )
        .route("/v2/waiters/{eventId}", web::get().to(waiters::list))
        .route("/v2/events/{eventId}/history", web::get().to(history::get))
        .route("/v2/workflows/runs/{runId}", web::delete().to(runs::cancel))
        .route(
            "/v2/workflows/runs/{runId}",
            web::get().to(workflow::history),
        )
        .route(
            "/v2/workflows/runs/{runId}/saved",
            web::get().to(saved::list),
        )
        .route(
            "/v2/workflows/runs",
            web::delete().to(workflow::cancel_many),
        )
        .route("/v2/batch", web::post().to(workflow::batch))
        .route(
            "/v2/publish/{destination:.*}",
            web::post().to(workflow::publish),
        )
        .route(HOOK, web::get().to(workflow::hook))
        .route(HOOK, web::post().to(workflow::hook))
        .route(HOOK, web::put().to(workflow::hook))
        .route(HOOK, web::patch().to(workflow::hook))
        .route(HOOK, web::delete().to(workflow::hook))
        .route("/v2/keys", web::get().to(keys::get))
        .route("/v2/keys/rotate", web::post().to(keys::rotate))
        .route("/v2/limits", web::get().to(limits::own))
        .route("/v2/dlq", web::get().to(dlq::list))
        .route("/v2/dlq/retry/{dlqId}", web::post().to(dlq::retry))
        .route("/v2/dlq/{dlqId}", web::delete().to(dlq::delete))
        .default_service(web::to(not_found));
}

/// The operator surface: probes, metrics and `/admin`. On `server.listen` too unless
/// `server.operator_listen` is set (then only there). The console is served on both
/// surfaces: on the operator listener it is where the operator signs in.
pub fn configure_operator(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/metrics", web::get().to(prometheus::metrics))
        .route("/console", web::get().to(console::page))
        .route("/console/{file:.*}", web::get().to(console::file))
        .route("/admin/tenants", web::post().to(admin::create_tenant))
        .route("/admin/tenants", web::get().to(admin::list_tenants))
        .route(
            "/admin/tenants/{name}/token",
            web::post().to(admin::rotate_token),
        )
        .route(
            "/admin/tenants/{name}/token",
            web::delete().to(admin::revoke_token),
        )
        .route(
            "/admin/tenants/{name}/limits",
            web::get().to(limits::get_limits),
        )
        .route(
            "/admin/tenants/{name}/limits",
            web::put().to(limits::put_limits),
        )
        .route("/admin/tenants/{name}/usage", web::get().to(limits::usage))
        .default_service(web::to(not_found));
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    // A registered path asked with another method: 405 and the methods it takes.
    if let Some(pattern) = req.match_pattern() {
        // A tail segment `{name:.*}` is documented as `{name}`.
        let allowed = openapi::methods_of(&pattern.replace(":.*}", "}"));
        if !allowed.is_empty() {
            return Err(ApiError::MethodNotAllowed {
                method: req.method().to_string(),
                allowed: allowed.join(", "),
            });
        }
    }
    Err(ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}

/// Reads the request body up to `limit` bytes; a larger one is refused with 413 before
/// it is read in full, and one that does not arrive within `server.read_timeout_ms` gets
/// 408 (a client trickling bytes holds no connection or memory for long).
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, ApiError> {
    if let Some(len) = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
    }
    let timeout_ms = req
        .app_data::<State>()
        .map(|s| s.settings.server.read_timeout_ms)
        .unwrap_or(30_000);
    let read = async {
        let mut body = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk
                .map_err(|e| ApiError::bad(format!("could not read the request body: {e}")))?;
            if body.len() + chunk.len() > limit {
                return Err(ApiError::PayloadTooLarge(limit));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    tokio::time::timeout(std::time::Duration::from_millis(timeout_ms), read)
        .await
        .map_err(|_| ApiError::RequestTimeout(timeout_ms))?
}

/// A percent-decoded query parameter (the first one of that name).
pub fn query_param(req: &HttpRequest, name: &str) -> Option<String> {
    req.query_string().split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// A percent-decoded path segment, as the route matched it.
pub fn path_param<'a>(req: &'a HttpRequest, name: &str) -> &'a str {
    req.match_info().get(name).unwrap_or("")
}

pub fn json_ok<T: serde::Serialize>(
    status: actix_web::http::StatusCode,
    value: &T,
) -> HttpResponse {
    HttpResponse::build(status).json(value)
}
