//! Tenant authentication: `Authorization: Bearer <token>` or `?qstash_token=<token>`;
//! the operator's admin token only from the `Authorization` header (a query string ends
//! up in access logs and browser histories).
//!
//! Lookups are cached per process for `server.auth_cache_ms` (500 ms by default), so a
//! hot tenant costs two Redis round trips per second per process; a revoked or rotated token
//! stops working on every replica within that time, and at once on the process that
//! revoked or rotated it ([`TokenCache::forget_tenant`]).
//!
//! Failed authentications are throttled per client address ([`AuthThrottle`]): after
//! `server.auth_failures_per_minute` failures within a minute, that address gets 429
//! until the minute is over, before any token is looked up.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
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

/// Token hash → (tenant, when looked up). Bounded: cleared when it grows past 10,000.
pub struct TokenCache {
    ttl: Duration,
    entries: Mutex<HashMap<[u8; 32], (TenantName, Instant)>>,
    /// Tenants whose token this process revoked or rotated, and when: a lookup that
    /// started before then is not cached (it may have read the old token).
    forgotten: Mutex<HashMap<TenantName, Instant>>,
}

impl TokenCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
            forgotten: Mutex::new(HashMap::new()),
        }
    }

    /// Drops every cached token of `tenant`: its token was revoked or rotated through this
    /// process, which refuses the old one from its next request on. (Other processes
    /// within `server.auth_cache_ms`.)
    pub fn forget_tenant(&self, tenant: &TenantName) {
        let now = Instant::now();
        if let Ok(mut forgotten) = self.forgotten.lock() {
            forgotten.retain(|_, at| at.elapsed() < self.ttl);
            forgotten.insert(tenant.clone(), now);
        }
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|_, (t, _)| t != tenant);
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

    /// Caches `key` → `tenant`, found by a lookup that started at `looked_up`.
    fn put(&self, key: [u8; 32], tenant: TenantName, looked_up: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let stale = self
            .forgotten
            .lock()
            .ok()
            .and_then(|f| f.get(&tenant).copied())
            .is_some_and(|at| looked_up <= at);
        if stale {
            return;
        }
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= 10_000 {
                entries.clear();
            }
            entries.insert(key, (tenant, looked_up));
        }
    }
}

fn bearer_of(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

fn token_of(req: &HttpRequest) -> Option<String> {
    if req.headers().contains_key("authorization") {
        return bearer_of(req);
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
        let client = state
            .as_ref()
            .and_then(|s| client_address(req, &s.settings.server.client_ip_header));
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::Internal("no app state".into()))?;
            let Some(token) = token.filter(|t| !t.is_empty()) else {
                state.auth_throttle.check(client)?;
                state.auth_throttle.failed(client);
                return Err(ApiError::Unauthorized);
            };
            let cache_key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            // A token this process just found valid passes even from a throttled address
            // (clients behind one proxy address are not all locked out by one guesser);
            // anything else from that address is refused before it is looked up.
            if let Some(tenant) = state.auth.get(&cache_key) {
                super::observe::record_tenant(tenant.as_str());
                return Ok(Tenant(tenant));
            }
            state.auth_throttle.check(client)?;
            let looked_up = Instant::now();
            let mut conn = state.redis.get();
            let Some(tenant) = tenants::authenticate(&mut conn, &state.keys, &token).await? else {
                state.auth_throttle.failed(client);
                return Err(ApiError::Unauthorized);
            };
            state.auth.put(cache_key, tenant.clone(), looked_up);
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
            let client = client_address(req, &state.settings.server.client_ip_header);
            state.auth_throttle.check(client)?;
            // The header only: never `?qstash_token=`.
            let given = bearer_of(req).unwrap_or_default();
            // Compare digests: constant time, and no length leak.
            let a = Sha256::digest(given.as_bytes());
            let b = Sha256::digest(expected);
            if !given.is_empty() && bool::from(a.ct_eq(&b)) {
                Ok(Admin)
            } else {
                state.auth_throttle.failed(client);
                Err(ApiError::Unauthorized)
            }
        })();
        std::future::ready(result)
    }
}

/// The client address of a request: the first address in `header` when one is configured
/// (`server.client_ip_header`, e.g. `x-forwarded-for` behind an ingress that sets it),
/// else the connection's peer.
pub fn client_address(req: &HttpRequest, header: &str) -> Option<IpAddr> {
    if !header.is_empty() {
        return req
            .headers()
            .get(header)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse().ok());
    }
    req.peer_addr().map(|a| a.ip())
}

/// Most client addresses the throttle remembers (about 64 bytes each): past it, entries
/// whose minute is over are dropped, and if none is, the oldest half.
const THROTTLE_ENTRIES: usize = 50_000;

/// Failed authentications per client address in the current minute. Bounded memory
/// ([`THROTTLE_ENTRIES`]); per process (each api replica counts its own).
pub struct AuthThrottle {
    per_minute: u32,
    entries: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

const WINDOW: Duration = Duration::from_secs(60);

impl AuthThrottle {
    /// `per_minute` 0: no throttling.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// 429 when the address has used up its failures in the current minute.
    pub fn check(&self, client: Option<IpAddr>) -> Result<(), ApiError> {
        let (Some(ip), true) = (client, self.per_minute > 0) else {
            return Ok(());
        };
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(&ip) {
            Some((failures, since)) if *failures >= self.per_minute && since.elapsed() < WINDOW => {
                let retry = (WINDOW - since.elapsed()).as_secs().max(1);
                Err(ApiError::RateLimited {
                    message: format!(
                        "too many failed authentications from this address; try again in {retry} s"
                    ),
                    limit: self.per_minute,
                    remaining: 0,
                    reset_secs: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs() + retry)
                        .unwrap_or(0),
                    retry_after_secs: retry,
                })
            }
            _ => Ok(()),
        }
    }

    /// Counts a failed authentication of the address.
    pub fn failed(&self, client: Option<IpAddr>) {
        let (Some(ip), true) = (client, self.per_minute > 0) else {
            return;
        };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= THROTTLE_ENTRIES && !entries.contains_key(&ip) {
            entries.retain(|_, (_, since)| since.elapsed() < WINDOW);
            if entries.len() >= THROTTLE_ENTRIES {
                let mut ages: Vec<Instant> = entries.values().map(|(_, s)| *s).collect();
                ages.sort();
                let cut = ages[ages.len() / 2];
                entries.retain(|_, (_, since)| *since > cut);
            }
        }
        let entry = entries.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_refused_after_its_failures_and_memory_stays_bounded() {
        let t = AuthThrottle::new(3);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert!(t.check(Some(ip)).is_ok());
            t.failed(Some(ip));
        }
        assert!(matches!(
            t.check(Some(ip)),
            Err(ApiError::RateLimited { .. })
        ));
        assert!(t.check(Some("10.0.0.2".parse().unwrap())).is_ok());
        for i in 0..(THROTTLE_ENTRIES as u32 + 10) {
            t.failed(Some(IpAddr::from(i.to_be_bytes())));
        }
        assert!(t.len() <= THROTTLE_ENTRIES, "{}", t.len());
        assert!(AuthThrottle::new(0).check(Some(ip)).is_ok());
    }
}
