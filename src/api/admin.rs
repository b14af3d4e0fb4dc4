//! `/admin/tenants`: the operator's tenant management (admin token only).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::auth::Admin;
use super::{path_param, read_body, State};
use crate::domain::TenantName;
use crate::error::ApiError;
use crate::store::tenants;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    name: String,
}

pub async fn create_tenant(
    state: State,
    _: Admin,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let raw = read_body(&req, payload, 64 * 1024).await?;
    let body: CreateTenant = serde_json::from_slice(&raw)
        .map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))?;
    let name = TenantName::parse(&body.name)?;
    let created = tenants::create(&mut state.redis.get(), &state.keys, &name).await?;
    tracing::info!(tenant = %name, "tenant created");
    Ok(HttpResponse::build(StatusCode::CREATED).json(created))
}

pub async fn list_tenants(state: State, _: Admin) -> Result<HttpResponse, ApiError> {
    let list = tenants::list(&mut state.redis.get(), &state.keys).await?;
    Ok(HttpResponse::Ok().json(list))
}

pub async fn rotate_token(
    state: State,
    _: Admin,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let name = TenantName::parse(path_param(&req, "name"))?;
    let token = tenants::rotate_token(&mut state.redis.get(), &state.keys, &name).await?;
    state.auth.forget_tenant(&name);
    tracing::info!(tenant = %name, "tenant token rotated");
    Ok(HttpResponse::Ok().json(serde_json::json!({ "name": name, "token": token })))
}

pub async fn revoke_token(
    state: State,
    _: Admin,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let name = TenantName::parse(path_param(&req, "name"))?;
    tenants::revoke_token(&mut state.redis.get(), &state.keys, &name).await?;
    state.auth.forget_tenant(&name);
    tracing::info!(tenant = %name, "tenant token revoked");
    Ok(HttpResponse::NoContent().finish())
}
