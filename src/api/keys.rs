//! `GET /v2/keys` and `POST /v2/keys/rotate`: the tenant's signing keys.

use actix_web::HttpResponse;

use super::auth::Tenant;
use super::State;
use crate::error::ApiError;
use crate::limits::RateClass;
use crate::store::tenants;

pub async fn get(state: State, Tenant(tenant): Tenant) -> Result<HttpResponse, ApiError> {
    let mut conn = state.redis.get();
    state
        .check_rate(&mut conn, &tenant, RateClass::Read)
        .await?;
    let keys = tenants::signing_keys(&mut conn, &state.keys, &tenant).await?;
    Ok(HttpResponse::Ok().json(keys))
}

pub async fn rotate(state: State, Tenant(tenant): Tenant) -> Result<HttpResponse, ApiError> {
    let mut conn = state.redis.get();
    state
        .check_rate(&mut conn, &tenant, RateClass::Read)
        .await?;
    let keys = tenants::rotate_signing_keys(&mut conn, &state.keys, &tenant).await?;
    tracing::info!(tenant = %tenant, "signing keys rotated");
    Ok(HttpResponse::Ok().json(keys))
}
