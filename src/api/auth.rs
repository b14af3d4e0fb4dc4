//! Tenant authentication: `Authorization: Bearer <token>` or `?qstash_token=<token>`.
//!
//! Lookups are cached per process for `server.auth_cache_ms`, so a hot tenant costs no
//! Redis round trip per request; a revoked token stops working within that time.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest};
use sha2::{Digest, Sha256};

use super::State;
use crate::domain::TenantName;
use crate::error::ApiError;
use crate::store::tenants;

/// The authenticated tenant of a request. Every key a handler touches is built from it.
#[derive(Debug, Clone)]
pub struct Tenant(pub TenantName);

/// Token hash → (tenant, when cached). Bounded: cleared when it grows past 10,000.
pub struct TokenCache {
    ttl: Duration,
    entries: Mutex<HashMap<[u8; 32], (TenantName, Instant)>>,
}

impl TokenCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: &[u8; 32]) -> Option<TenantName> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.lock().ok()?;
        entries
            .get(key)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(t, _)| t.clone())
    }

    fn put(&self, key: [u8; 32], tenant: TenantName) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= 10_000 {
                entries.clear();
            }
            entries.insert(key, (tenant, Instant::now()));
        }
    }
}

fn token_of(req: &HttpRequest) -> Option<String> {
    if let Some(value) = req.headers().get("authorization") {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned());
    }
    req.query_string().split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == "qstash_token").then(|| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

impl FromRequest for Tenant {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<State>().cloned();
        let token = token_of(req);
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::Internal("no app state".into()))?;
            let token = token
                .filter(|t| !t.is_empty())
                .ok_or(ApiError::Unauthorized)?;
            let cache_key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            if let Some(tenant) = state.auth.get(&cache_key) {
                super::observe::record_tenant(tenant.as_str());
                return Ok(Tenant(tenant));
            }
            let mut conn = state.redis.get();
            let tenant = tenants::authenticate(&mut conn, &state.keys, &token)
                .await?
                .ok_or(ApiError::Unauthorized)?;
            state.auth.put(cache_key, tenant.clone());
            super::observe::record_tenant(tenant.as_str());
            Ok(Tenant(tenant))
        })
    }
}

/// The operator: `Authorization: Bearer <server.admin_token>`. /admin is disabled (404)
/// when no admin token is configured.
pub struct Admin;

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        use subtle::ConstantTimeEq;
        let result = (|| {
            let state = req
                .app_data::<State>()
                .ok_or_else(|| ApiError::Internal("no app state".into()))?;
            let expected = state.settings.server.admin_token.as_bytes();
            if expected.is_empty() {
                return Err(ApiError::NotFound(
                    "the admin API is disabled (server.admin_token is not set)".into(),
                ));
            }
            let given = token_of(req).ok_or(ApiError::Unauthorized)?;
            // Compare digests: constant time, and no length leak.
            let a = Sha256::digest(given.as_bytes());
            let b = Sha256::digest(expected);
            if bool::from(a.ct_eq(&b)) {
                Ok(Admin)
            } else {
                Err(ApiError::Unauthorized)
            }
        })();
        std::future::ready(result)
    }
}
