//! Tenant limit overrides (`<prefix>:limits:<tenant>`, HASH: limit name → value) and the
//! usage the limits are checked against (waiter counts, rate buckets).

use ::redis::AsyncCommands;
use futures_util::future::try_join_all;

use super::{Conn, Keys, StoreError};
use crate::domain::TenantName;
use crate::limits::{Overrides, RateClass};
use crate::store::tenants::TenantError;

pub async fn overrides(
    conn: &mut Conn,
    keys: &Keys,
    tenant: &TenantName,
) -> Result<Overrides, StoreError> {
    Ok(Overrides(conn.hgetall(keys.tenant_limits(tenant)).await?))
}

/// Fails with NotFound unless the tenant exists.
pub async fn require_tenant(
    conn: &mut Conn,
    keys: &Keys,
    tenant: &TenantName,
) -> Result<(), TenantError> {
    let exists: bool = conn.exists(keys.tenant(tenant)).await?;
    if exists {
        Ok(())
    } else {
        Err(TenantError::NotFound(tenant.to_string()))
    }
}

/// Replaces all of a tenant's overrides at once (limits not named use the defaults).
pub async fn replace_overrides(
    conn: &mut Conn,
    keys: &Keys,
    tenant: &TenantName,
    overrides: &Overrides,
) -> Result<(), TenantError> {
    require_tenant(conn, keys, tenant).await?;
    let key = keys.tenant_limits(tenant);
    let mut pipe = ::redis::pipe();
    pipe.atomic().del(&key).ignore();
    if !overrides.0.is_empty() {
        let fields: Vec<(&String, &String)> = overrides.0.iter().collect();
        pipe.hset_multiple(&key, &fields).ignore();
    }
    pipe.exec_async(conn).await?;
    Ok(())
}

/// Sets some overrides and removes others, keeping the rest (`herald tenant limits`).
pub async fn update_overrides(
    conn: &mut Conn,
    keys: &Keys,
    tenant: &TenantName,
    set: &Overrides,
    unset: &[String],
) -> Result<(), TenantError> {
    require_tenant(conn, keys, tenant).await?;
    let key = keys.tenant_limits(tenant);
    let mut pipe = ::redis::pipe();
    pipe.atomic();
    if !unset.is_empty() {
        pipe.hdel(&key, unset).ignore();
    }
    if !set.0.is_empty() {
        let fields: Vec<(&String, &String)> = set.0.iter().collect();
        pipe.hset_multiple(&key, &fields).ignore();
    }
    pipe.exec_async(conn).await?;
    Ok(())
}

/// What a tenant uses now.
#[derive(Debug, Clone)]
pub struct Usage {
    /// Redis TIME, µs.
    pub now_us: u64,
    /// Waiters registered, summed over the partitions.
    pub active_waiters: u64,
    /// Bytes the tenant keeps stored (the `stored_bytes` quota; [`super::usage`]).
    pub stored_bytes: u64,
    /// Each rate bucket's theoretical arrival time (µs), None when the bucket is full.
    pub buckets: Vec<(RateClass, Option<u64>)>,
}

pub async fn usage(
    conn: &mut Conn,
    keys: &Keys,
    tenant: &TenantName,
) -> Result<Usage, TenantError> {
    require_tenant(conn, keys, tenant).await?;
    // Single-key commands, sent together: they may live on different cluster nodes.
    let counts = try_join_all(keys.all_partitions().map(|p| {
        let mut c = conn.clone();
        async move {
            let n: Option<i64> = c.get(p.waiter_count(tenant)).await?;
            Ok::<_, StoreError>(n.unwrap_or(0).max(0) as u64)
        }
    }));
    let buckets = try_join_all(RateClass::ALL.map(|class| {
        let mut c = conn.clone();
        async move {
            let tat: Option<u64> = c.get(keys.rate_bucket(tenant, class)).await?;
            Ok::<_, StoreError>((class, tat))
        }
    }));
    let mut c = conn.clone();
    let time = async move {
        let (secs, micros): (u64, u64) = ::redis::cmd("TIME").query_async(&mut c).await?;
        Ok::<_, StoreError>(secs * 1_000_000 + micros)
    };
    let mut c = conn.clone();
    let stored = super::usage::stored_bytes(&mut c, keys, tenant);
    let (counts, buckets, now_us, stored_bytes) =
        futures_util::try_join!(counts, buckets, time, stored)?;
    Ok(Usage {
        now_us,
        active_waiters: counts.iter().sum(),
        stored_bytes,
        buckets,
    })
}
