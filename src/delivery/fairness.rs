//! Per-tenant bound on the concurrent attempts of one worker process.
//!
//! The worker-wide semaphore alone lets one tenant whose endpoint hangs fill every slot
//! until its requests time out, stalling every other tenant. With this bound a tenant holds
//! at most `delivery.tenant_concurrency` attempts in flight.
//!
//! A delivery of a tenant at its bound waits for one of that tenant's attempts to end, but
//! only while its attempts are ending ([`FLOWING`]) and for [`MAX_WAIT`] at most: a
//! healthy tenant's burst then flows at its bound instead of being put back, and the
//! deliveries of a tenant whose endpoint hangs are put back into the retry schedule at
//! once (see [`defer_delay`]), so they hold no worker slot another tenant needs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::sync::Notify;
// Tokio's clock, so that tests can advance it.
use tokio::time::Instant;

/// A tenant at its bound counts as flowing while one of its attempts ended (or its first
/// began) this recently.
pub const FLOWING: Duration = Duration::from_millis(250);
/// Longest wait for a slot of a flowing tenant before the delivery is put back.
pub const MAX_WAIT: Duration = Duration::from_millis(500);

/// In-flight attempts per tenant.
#[derive(Clone)]
pub struct TenantSlots {
    limit: usize,
    tenants: Arc<Mutex<HashMap<String, TenantState>>>,
}

struct TenantState {
    in_flight: usize,
    /// When an attempt last ended, or the first of this run of attempts began.
    progress: Instant,
    ended: Arc<Notify>,
}

/// One tenant's slot, released when dropped.
pub struct TenantSlot {
    tenant: String,
    tenants: Arc<Mutex<HashMap<String, TenantState>>>,
}

impl TenantSlots {
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            tenants: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TenantState>> {
        self.tenants.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for `tenant`: at once, or after waiting for one of its attempts to end while
    /// it is flowing (at most `max_wait`; zero: only at once); None when the delivery
    /// should be put back.
    pub async fn acquire(&self, tenant: &str, max_wait: Duration) -> Option<TenantSlot> {
        let deadline = Instant::now() + max_wait;
        loop {
            let ended = match self.take_or_wait(tenant) {
                Ok(slot) => return Some(slot),
                Err(None) => return None,
                Err(Some(ended)) => ended,
            };
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return None;
            }
        }
    }

    /// A slot; or, at the bound, a future resolving when an attempt of the tenant ends
    /// (created under the lock, so no end is missed) if the tenant is flowing, else None.
    #[allow(clippy::type_complexity)]
    fn take_or_wait(
        &self,
        tenant: &str,
    ) -> Result<TenantSlot, Option<tokio::sync::futures::OwnedNotified>> {
        let mut tenants = self.lock();
        let state = tenants
            .entry(tenant.to_owned())
            .or_insert_with(|| TenantState {
                in_flight: 0,
                progress: Instant::now(),
                ended: Arc::new(Notify::new()),
            });
        if state.in_flight < self.limit {
            state.in_flight += 1;
            return Ok(TenantSlot {
                tenant: tenant.to_owned(),
                tenants: self.tenants.clone(),
            });
        }
        if state.progress.elapsed() > FLOWING {
            return Err(None);
        }
        Err(Some(state.ended.clone().notified_owned()))
    }

    /// Attempts of `tenant` in flight now.
    pub fn in_flight(&self, tenant: &str) -> usize {
        self.lock().get(tenant).map_or(0, |s| s.in_flight)
    }
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = tenants.get_mut(&self.tenant) {
            state.in_flight -= 1;
            state.progress = Instant::now();
            state.ended.notify_waiters();
            if state.in_flight == 0 {
                // Keep the map as small as the set of tenants with work in flight (a
                // waiter woken above finds a fresh state with room).
                tenants.remove(&self.tenant);
            }
        }
    }
}

/// How long a delivery put back for the `deferrals`-th time waits: 100 ms doubling, ±25%
/// jitter, at most `max` (for a tenant at its bound, the request timeout: by then every
/// attempt that held the tenant's slots has ended; for an unreadable signing key,
/// `delivery.max_backoff_secs`). Doubling keeps a hanging tenant's backlog from cycling
/// through Redis at a high rate.
pub fn defer_delay(deferrals: u32, max: Duration) -> Duration {
    let base = 100.0 * f64::from(1u32 << deferrals.min(16));
    let jitter = rand::rng().random_range(0.75..1.25);
    Duration::from_millis((base * jitter) as u64).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT_ONCE: Duration = Duration::ZERO;

    #[tokio::test]
    async fn a_tenant_holds_at_most_its_bound_and_slots_come_back() {
        let slots = TenantSlots::new(2);
        let a1 = slots.acquire("a", AT_ONCE).await.unwrap();
        let _a2 = slots.acquire("a", AT_ONCE).await.unwrap();
        assert!(
            slots.acquire("a", AT_ONCE).await.is_none(),
            "third slot refused"
        );
        let _b = slots
            .acquire("b", AT_ONCE)
            .await
            .expect("another tenant is not affected");
        drop(a1);
        assert_eq!(slots.in_flight("a"), 1);
        assert!(slots.acquire("a", AT_ONCE).await.is_some());
        assert_eq!(slots.in_flight("c"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flowing_tenant_waits_for_its_slot_and_a_stuck_one_does_not() {
        let slots = TenantSlots::new(1);
        let held = slots.acquire("a", AT_ONCE).await.unwrap();
        let (freed, waiting) = tokio::join!(
            async {
                tokio::task::yield_now().await;
                drop(held);
            },
            slots.acquire("a", Duration::from_secs(5)),
        );
        let () = freed;
        let slot = waiting.expect("the slot freed while waiting is taken");
        // No attempt of "a" ended for longer than FLOWING: put back at once, no wait.
        let stuck = TenantSlots::new(1);
        let _hung = stuck.acquire("a", AT_ONCE).await.unwrap();
        tokio::time::advance(FLOWING + Duration::from_millis(1)).await;
        let started = Instant::now();
        assert!(stuck.acquire("a", Duration::from_secs(5)).await.is_none());
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "no wait for a stuck tenant"
        );
        drop(slot);
    }

    #[test]
    fn deferral_delay_doubles_and_is_capped() {
        let max = Duration::from_secs(30);
        assert!(defer_delay(0, max) <= Duration::from_millis(125));
        assert!(defer_delay(3, max) >= Duration::from_millis(600));
        assert_eq!(defer_delay(20, max), max);
    }
}
