//! Admitting a request: its class's rate limit and, for a wait, the tenant's waiter count.
//!
//! - **Standalone Redis (and Sentinel)**: both checks are folded into the operation's own
//!   script — the tenant's bucket and the other partitions' waiter counts are extra KEYS —
//!   so they cost no round trip and are exact.
//! - **Redis Cluster**: a script may touch one slot, and the tenant's bucket lives in its
//!   home partition, not the event's. The rate check (`rate_limit.lua`) and, for a wait,
//!   the reads of the other partitions' counts are sent together just before the
//!   operation: one extra round trip. The waiter quota is then approximate: waits of the
//!   same tenant running at that moment in other partitions are not seen, so it can be
//!   exceeded by at most their number.
//!
//! Routes without a script of their own (reads, key management, cancel) check their rate
//! with `rate_limit.lua` on every topology ([`check_now`]).
//!
//! Every refusal is remembered by the process until its Retry-After ([`LimitsCache`]):
//! meanwhile the tenant's requests of that class are refused without asking Redis.

use ::redis::AsyncCommands;
use futures_util::future::try_join_all;

use super::cache::LimitsCache;
use super::{LimitError, Limits, Rate, RateClass};
use crate::domain::TenantName;
use crate::store::scripts::{self, ActiveQuota, RateCheck, RateRefusal};
use crate::store::{Conn, Keys, Partition, StoreError};

/// What the operation's script still has to check.
#[derive(Debug, Default)]
pub struct Admitted {
    /// The folded rate check (None: checked already, or the class is unlimited).
    pub rate: Option<RateCheck>,
    /// The other partitions whose counts the wait script sums (standalone).
    summed: Vec<Partition>,
    /// Waiters counted in the other partitions (cluster).
    counted_elsewhere: u64,
    max_active: u64,
    /// The tenant is at its `stored_bytes` quota: the script refuses what would store more.
    pub stored_full: bool,
}

impl Admitted {
    /// The tenant's waiter quota for the wait script.
    pub fn active_quota(&self) -> ActiveQuota<'_> {
        ActiveQuota {
            max: self.max_active,
            summed: &self.summed,
            counted_elsewhere: self.counted_elsewhere,
        }
    }
}

/// The refusal of a script that checked `class` folded (its reply was "limited").
pub fn refused(
    cache: &LimitsCache,
    tenant: &TenantName,
    class: RateClass,
    limits: &Limits,
    refusal: RateRefusal,
) -> LimitError {
    cache.remember_refusal(tenant, class, refusal);
    let rate = limits.rate(class).unwrap_or(Rate {
        per_sec: 0,
        burst: 0,
    });
    LimitError::rate_limited(tenant, class, rate, refusal)
}

/// A refusal this process remembers (see [`LimitsCache::refusal`]): handlers check it
/// first, so a flood over its limit is refused before its body is even read.
pub fn still_refused(
    cache: &LimitsCache,
    tenant: &TenantName,
    class: RateClass,
    limits: &Limits,
) -> Result<(), LimitError> {
    match (limits.rate(class), cache.refusal(tenant, class)) {
        (Some(rate), Some(refusal)) => Err(LimitError::rate_limited(tenant, class, rate, refusal)),
        _ => Ok(()),
    }
}

/// What an operation that runs a script asks to be admitted for.
pub struct Operation<'a> {
    pub class: RateClass,
    /// The event's partition for a wait (which checks the tenant's waiter count too),
    /// None for a notify.
    pub wait_in: Option<&'a Partition>,
    /// About what the operation would store (see [`LimitsCache::stored_full`]).
    pub stores: u64,
}

/// Admits an operation that runs a script.
pub async fn admit(
    conn: &mut Conn,
    keys: &Keys,
    cache: &LimitsCache,
    tenant: &TenantName,
    limits: &Limits,
    op: Operation<'_>,
) -> Result<Admitted, LimitError> {
    let Operation {
        class,
        wait_in,
        stores: incoming,
    } = op;
    still_refused(cache, tenant, class, limits)?;
    let stored_full = cache
        .stored_full(conn, keys, tenant, limits.stored_bytes, incoming)
        .await?;
    let rate = limits.rate(class);
    let max_active = if wait_in.is_some() {
        limits.active_waiters
    } else {
        0
    };
    let others: Vec<Partition> = match wait_in {
        Some(p) if max_active > 0 => keys
            .all_partitions()
            .filter(|o| o.index != p.index)
            .collect(),
        _ => Vec::new(),
    };
    if !conn.is_cluster() {
        return Ok(Admitted {
            rate: rate.map(|r| RateCheck {
                bucket: keys.rate_bucket(tenant, class),
                per_sec: r.per_sec,
                burst: r.burst,
            }),
            summed: others,
            counted_elsewhere: 0,
            max_active,
            stored_full,
        });
    }
    let check = async {
        match rate {
            Some(r) => {
                let mut c = conn.clone();
                let bucket = keys.rate_bucket(tenant, class);
                scripts::rate_limit(&mut c, &bucket, r.per_sec, r.burst)
                    .await
                    .map(|verdict| verdict.map(|_| ()).map_err(|refusal| (r, refusal)))
            }
            None => Ok(Ok(())),
        }
    };
    let count = try_join_all(others.iter().map(|p| {
        let mut c = conn.clone();
        async move {
            let n: Option<i64> = c.get(p.waiter_count(tenant)).await?;
            Ok::<_, StoreError>(n.unwrap_or(0).max(0) as u64)
        }
    }));
    let (verdict, counts) = futures_util::try_join!(check, count)?;
    if let Err((r, refusal)) = verdict {
        cache.remember_refusal(tenant, class, refusal);
        return Err(LimitError::rate_limited(tenant, class, r, refusal));
    }
    Ok(Admitted {
        rate: None,
        summed: Vec::new(),
        counted_elsewhere: counts.iter().sum(),
        max_active,
        stored_full,
    })
}

/// Checks a request's rate on its own (routes without a script of their own).
pub async fn check_now(
    conn: &mut Conn,
    keys: &Keys,
    cache: &LimitsCache,
    tenant: &TenantName,
    limits: &Limits,
    class: RateClass,
) -> Result<(), LimitError> {
    let Some(rate) = limits.rate(class) else {
        return Ok(());
    };
    still_refused(cache, tenant, class, limits)?;
    let bucket = keys.rate_bucket(tenant, class);
    match scripts::rate_limit(conn, &bucket, rate.per_sec, rate.burst).await? {
        Ok(_) => Ok(()),
        Err(refusal) => {
            cache.remember_refusal(tenant, class, refusal);
            Err(LimitError::rate_limited(tenant, class, rate, refusal))
        }
    }
}
