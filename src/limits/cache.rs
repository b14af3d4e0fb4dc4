//! What each api process keeps about tenants' limits:
//!
//! - their effective limits, for `limits.cache_ms`, so a request pays no round trip to
//!   learn them (an override changed elsewhere is seen within that time);
//! - their recent rate refusals: a bucket that refused cannot admit before the refusal's
//!   `Retry-After` (its arrival time only moves forward), so until then the process
//!   refuses that tenant's requests of that class itself. A flood far over its limit then
//!   costs Redis about one call per refusal window, not one per request;
//! - their stored bytes (the `stored_bytes` quota), read at most every
//!   [`STORED_FRESH`] (or `limits.cache_ms`, if shorter) and counted up locally by the
//!   requests admitted meanwhile; read again on every request once the tenant is within a
//!   tenth of its quota.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Limits, RateClass};
use crate::config::Settings;
use crate::domain::TenantName;
use crate::store::scripts::RateRefusal;
use crate::store::{self, Conn, Keys, StoreError};

/// Most entries of each map; cleared when full (a cache, not a record).
const MAX_ENTRIES: usize = 10_000;

/// Longest a tenant's stored bytes are taken from the cache.
pub const STORED_FRESH: Duration = Duration::from_secs(1);

pub struct LimitsCache {
    ttl: Duration,
    /// Tenant → (effective limits, when loaded).
    entries: Mutex<HashMap<TenantName, (Arc<Limits>, Instant)>>,
    /// (tenant, class) → (the refusal, until when the bucket cannot admit).
    refusals: Mutex<HashMap<(TenantName, RateClass), (RateRefusal, Instant)>>,
    /// Tenant → (stored bytes read, plus what was admitted since; when read).
    stored: Mutex<HashMap<TenantName, (u64, Instant)>>,
}

impl LimitsCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
            refusals: Mutex::new(HashMap::new()),
            stored: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the tenant is at its `stored_bytes` quota (`quota`, 0 = unlimited), for a
    /// write about to store about `incoming` bytes (counted into the cached figure when
    /// admitted). The figure is read from Redis ([`store::usage::stored_bytes`]) when it
    /// is older than [`STORED_FRESH`] or `limits.cache_ms`, or within a tenth of the
    /// quota; so a tenant passes its quota by at most what this process admits in that
    /// time below the last tenth, plus what the other replicas admit meanwhile.
    pub async fn stored_full(
        &self,
        conn: &mut Conn,
        keys: &Keys,
        tenant: &TenantName,
        quota: u64,
        incoming: u64,
    ) -> Result<bool, StoreError> {
        if quota == 0 {
            return Ok(false);
        }
        let fresh = STORED_FRESH.min(self.ttl);
        let near = quota - quota / 10;
        if let Ok(mut stored) = self.stored.lock() {
            if let Some((bytes, at)) = stored.get_mut(tenant) {
                if at.elapsed() < fresh && *bytes < near {
                    *bytes += incoming;
                    return Ok(false);
                }
            }
        }
        let bytes = store::usage::stored_bytes(conn, keys, tenant).await?;
        let full = bytes >= quota;
        if let Ok(mut stored) = self.stored.lock() {
            if stored.len() >= MAX_ENTRIES {
                stored.clear();
            }
            let counted = if full { bytes } else { bytes + incoming };
            stored.insert(tenant.clone(), (counted, Instant::now()));
        }
        Ok(full)
    }

    /// A refusal still in force for the tenant's class, with its Retry-After counted down.
    pub fn refusal(&self, tenant: &TenantName, class: RateClass) -> Option<RateRefusal> {
        let refusals = self.refusals.lock().ok()?;
        let (refusal, until) = refusals.get(&(tenant.clone(), class))?;
        let left = until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())?;
        Some(RateRefusal {
            remaining: 0,
            retry_after_ms: (left.as_micros() as u64).div_ceil(1000),
            ..*refusal
        })
    }

    /// Remembers a refusal Redis made, for its Retry-After less a millisecond: Redis
    /// rounds Retry-After up to whole milliseconds, and the reply took time to arrive, so
    /// this never outlasts the bucket's real refusal by more than that round trip.
    pub fn remember_refusal(&self, tenant: &TenantName, class: RateClass, refusal: RateRefusal) {
        let lasts = refusal.retry_after_ms.saturating_sub(1);
        if lasts == 0 {
            return;
        }
        if let Ok(mut refusals) = self.refusals.lock() {
            if refusals.len() >= MAX_ENTRIES {
                refusals.clear();
            }
            refusals.insert(
                (tenant.clone(), class),
                (refusal, Instant::now() + Duration::from_millis(lasts)),
            );
        }
    }

    /// The tenant's effective limits: the configured defaults with its overrides applied.
    pub async fn get(
        &self,
        conn: &mut Conn,
        keys: &Keys,
        settings: &Settings,
        tenant: &TenantName,
    ) -> Result<Arc<Limits>, StoreError> {
        if let Some(hit) = self.cached(tenant) {
            return Ok(hit);
        }
        let overrides = store::limits::overrides(conn, keys, tenant).await?;
        let limits = Arc::new(
            settings
                .limits
                .defaults
                .with_overrides(&overrides, &settings.limit_caps()),
        );
        if !self.ttl.is_zero() {
            if let Ok(mut entries) = self.entries.lock() {
                if entries.len() >= MAX_ENTRIES {
                    entries.clear();
                }
                entries.insert(tenant.clone(), (limits.clone(), Instant::now()));
            }
        }
        Ok(limits)
    }

    fn cached(&self, tenant: &TenantName) -> Option<Arc<Limits>> {
        let entries = self.entries.lock().ok()?;
        entries
            .get(tenant)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(limits, _)| limits.clone())
    }

    /// Forgets a tenant's limits and refusals (after this process changed its limits).
    pub fn invalidate(&self, tenant: &TenantName) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(tenant);
        }
        if let Ok(mut refusals) = self.refusals.lock() {
            refusals.retain(|(t, _), _| t != tenant);
        }
        if let Ok(mut stored) = self.stored.lock() {
            stored.remove(tenant);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(retry_after_ms: u64) -> RateRefusal {
        RateRefusal {
            remaining: 0,
            reset_ms: 1_000_000,
            retry_after_ms,
        }
    }

    #[test]
    fn a_refusal_is_remembered_until_its_retry_after() {
        let cache = LimitsCache::new(Duration::from_secs(5));
        let acme = TenantName::parse("acme").unwrap();
        assert_eq!(cache.refusal(&acme, RateClass::Notify), None);
        cache.remember_refusal(&acme, RateClass::Notify, refusal(60_000));
        let left = cache.refusal(&acme, RateClass::Notify).unwrap();
        assert!((59_000..60_000).contains(&left.retry_after_ms), "{left:?}");
        assert_eq!(left.reset_ms, 1_000_000);
        assert_eq!(cache.refusal(&acme, RateClass::Wait), None, "per class");
        let other = TenantName::parse("globex").unwrap();
        assert_eq!(cache.refusal(&other, RateClass::Notify), None, "per tenant");
        cache.invalidate(&acme);
        assert_eq!(cache.refusal(&acme, RateClass::Notify), None);
    }

    #[test]
    fn a_refusal_shorter_than_its_rounding_is_not_remembered() {
        let cache = LimitsCache::new(Duration::from_secs(5));
        let acme = TenantName::parse("acme").unwrap();
        for ms in [0, 1] {
            cache.remember_refusal(&acme, RateClass::Read, refusal(ms));
            assert_eq!(cache.refusal(&acme, RateClass::Read), None);
        }
    }
}
