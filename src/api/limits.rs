//! `/admin/tenants/{name}/limits` and `/usage`: the operator's view and control of a
//! tenant's rate limits and quotas (admin token only).

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;

use super::auth::Admin;
use super::{path_param, read_body, State};
use crate::domain::TenantName;
use crate::error::ApiError;
use crate::limits::{self, Overrides};
use crate::store::limits as stored;

async fn limits_view(state: &State, name: &TenantName) -> Result<HttpResponse, ApiError> {
    let mut conn = state.redis.get();
    stored::require_tenant(&mut conn, &state.keys, name).await?;
    let overrides = stored::overrides(&mut conn, &state.keys, name).await?;
    Ok(HttpResponse::Ok().json(limits::limits_view(
        name,
        &state.settings.limits.defaults,
        &overrides,
        &state.settings.limit_caps(),
    )))
}

pub async fn get_limits(
    state: State,
    _: Admin,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let name = TenantName::parse(path_param(&req, "name"))?;
    limits_view(&state, &name).await
}

/// Replaces the tenant's overrides with the body's (limits it does not name go back to
/// the defaults). All are validated before anything is written.
pub async fn put_limits(
    state: State,
    _: Admin,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let name = TenantName::parse(path_param(&req, "name"))?;
    let raw = read_body(&req, payload, 64 * 1024).await?;
    let body: Value = serde_json::from_slice(&raw)
        .map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))?;
    let overrides = Overrides::from_json(
        &body,
        &state.settings.limits.defaults,
        &state.settings.limit_caps(),
    )?;
    stored::replace_overrides(&mut state.redis.get(), &state.keys, &name, &overrides).await?;
    state.limits.invalidate(&name);
    tracing::info!(tenant = %name, overrides = ?overrides.0, "tenant limits changed");
    limits_view(&state, &name).await
}

/// What the tenant uses now: its active waiters and what is left of each rate.
pub async fn usage(state: State, _: Admin, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let name = TenantName::parse(path_param(&req, "name"))?;
    let mut conn = state.redis.get();
    let usage = stored::usage(&mut conn, &state.keys, &name).await?;
    let limits = state.limits_of(&mut conn, &name).await?;
    Ok(HttpResponse::Ok().json(limits::usage_view(&name, &usage, &limits)))
}

/// `GET /v2/limits`: the calling tenant's own effective limits, overrides and usage —
/// the figures of `GET /admin/tenants/{name}/limits` and `/usage` in one answer.
pub async fn own(
    state: State,
    super::auth::Tenant(tenant): super::auth::Tenant,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.redis.get();
    state
        .check_rate(&mut conn, &tenant, crate::limits::RateClass::Read)
        .await?;
    let overrides = stored::overrides(&mut conn, &state.keys, &tenant).await?;
    let mut view = limits::limits_view(
        &tenant,
        &state.settings.limits.defaults,
        &overrides,
        &state.settings.limit_caps(),
    );
    let usage = stored::usage(&mut conn, &state.keys, &tenant).await?;
    let effective = state.limits_of(&mut conn, &tenant).await?;
    let mut usage = limits::usage_view(&tenant, &usage, &effective);
    if let Some(usage) = usage.as_object_mut() {
        usage.remove("tenant");
    }
    view["usage"] = usage;
    Ok(HttpResponse::Ok().json(view))
}
