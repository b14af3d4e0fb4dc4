//! Per-tenant bound on the concurrent attempts of one worker process.
//!
//! The worker-wide semaphore alone lets one tenant whose endpoint hangs fill every slot
//! until its requests time out, stalling every other tenant. With this bound a tenant holds
//! at most `delivery.tenant_concurrency` slots; its further deliveries are put back into
//! the retry schedule for a moment (see [`defer_delay`]) instead of waiting for a slot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;

/// In-flight attempts per tenant.
#[derive(Clone)]
pub struct TenantSlots {
    limit: usize,
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
}

/// One tenant's slot, released when dropped.
pub struct TenantSlot {
    tenant: String,
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
}

impl TenantSlots {
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            in_flight: Arc::default(),
        }
    }

    /// A slot for `tenant`, or None when it is at its bound.
    pub fn try_acquire(&self, tenant: &str) -> Option<TenantSlot> {
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let count = map.entry(tenant.to_owned()).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(TenantSlot {
            tenant: tenant.to_owned(),
            in_flight: self.in_flight.clone(),
        })
    }

    /// Attempts of `tenant` in flight now.
    pub fn in_flight(&self, tenant: &str) -> usize {
        let map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        map.get(tenant).copied().unwrap_or(0)
    }
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = map.get_mut(&self.tenant) {
            *count -= 1;
            if *count == 0 {
                // Keep the map as small as the set of tenants with work in flight.
                map.remove(&self.tenant);
            }
        }
    }
}

/// How long a delivery put back for the `deferrals`-th time waits: 100 ms doubling, ±25%
/// jitter, at most `max` (the request timeout: by then every attempt that held the tenant's
/// slots has ended). Doubling keeps a hanging tenant's backlog from cycling through Redis
/// at a high rate.
pub fn defer_delay(deferrals: u32, max: Duration) -> Duration {
    let base = 100.0 * f64::from(1u32 << deferrals.min(16));
    let jitter = rand::rng().random_range(0.75..1.25);
    Duration::from_millis((base * jitter) as u64).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_holds_at_most_its_bound_and_slots_come_back() {
        let slots = TenantSlots::new(2);
        let a1 = slots.try_acquire("a").unwrap();
        let _a2 = slots.try_acquire("a").unwrap();
        assert!(slots.try_acquire("a").is_none(), "third slot refused");
        let _b = slots
            .try_acquire("b")
            .expect("another tenant is not affected");
        drop(a1);
        assert_eq!(slots.in_flight("a"), 1);
        assert!(slots.try_acquire("a").is_some());
        assert_eq!(slots.in_flight("c"), 0);
    }

    #[test]
    fn deferral_delay_doubles_and_is_capped() {
        let max = Duration::from_secs(30);
        assert!(defer_delay(0, max) <= Duration::from_millis(125));
        assert!(defer_delay(3, max) >= Duration::from_millis(600));
        assert_eq!(defer_delay(20, max), max);
    }
}
