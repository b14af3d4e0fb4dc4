//! Redis storage: key names ([`keys`]), connections for every topology ([`redis`]; the
//! watched and replaced cluster connection, [`cluster`]; the connections of their own that
//! writes waiting for replicas take, [`lanes`]), one
//! typed wrapper per Lua script ([`scripts`]), tenant records ([`tenants`]), dead letters
//! ([`dead_letters`]), the offline change of the partition count ([`repartition`]) and the
//! upgrade of a store written by an older version ([`migrate`]), and the opt-in wait for
//! replicas after an API write ([`durability`]), and the read of a tenant's stored bytes
//! ([`usage`]).

pub mod cluster;
pub mod dead_letters;
pub mod durability;
pub mod keys;
pub mod lanes;
pub mod limits;
pub mod migrate;
pub mod redis;
pub mod repartition;
pub mod scripts;
pub mod tenants;
pub mod tombstones;
pub mod usage;

use ::redis::{AsyncCommands, RedisError};

pub use self::keys::{Keys, Partition, GROUP};
pub use self::redis::{Conn, RedisPool};

/// Storage failures. Connection problems and a Redis that refuses writes (OOM, read-only
/// replica, loading) are "unavailable" (HTTP 503); anything else is a bug (HTTP 500).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis unavailable: {0}")]
    Unavailable(RedisError),
    /// Sentinel: the master is down and the sentinels have not promoted a replica yet.
    #[error("master {master} is down (failover in progress)")]
    FailoverInProgress { master: String },
    #[error("redis error: {0}")]
    Redis(RedisError),
    #[error("unexpected script reply: {0}")]
    Reply(String),
    #[error("{0}")]
    Setup(String),
    /// The write was applied on the master, but fewer than `wanted` replicas confirmed
    /// it in time (`redis.wait_replicas`): it may or may not survive a failover.
    #[error("not confirmed by {wanted} replica(s) within {timeout_ms} ms ({detail})")]
    NotReplicated {
        wanted: u32,
        timeout_ms: u64,
        detail: String,
    },
}

impl StoreError {
    /// Redis cannot be reached or cannot take the command right now (HTTP 503): worth
    /// trying again.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_) | StoreError::FailoverInProgress { .. }
        )
    }
}

impl From<RedisError> for StoreError {
    fn from(e: RedisError) -> Self {
        if e.kind() == ::redis::ErrorKind::MasterNameNotFoundBySentinel
            && e.to_string().starts_with(self::redis::FAILOVER_IN_PROGRESS)
        {
            crate::telemetry::metrics::redis_error(true);
            return StoreError::FailoverInProgress {
                master: e.detail().unwrap_or_default().to_owned(),
            };
        }
        let unavailable = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_cluster_error()
            // No node of the cluster (or no master of the sentinels) reachable right now.
            || matches!(
                e.kind(),
                ::redis::ErrorKind::ClusterConnectionNotFound
                    | ::redis::ErrorKind::MasterNameNotFoundBySentinel
            )
            || matches!(
                e.code(),
                Some(
                    "LOADING"
                        | "TRYAGAIN"
                        | "CLUSTERDOWN"
                        | "MASTERDOWN"
                        | "READONLY"
                        | "OOM"
                        | "BUSY"
                        | "NOREPLICAS"
                        | "MISCONF"
                )
            )
            // A write refused inside a script reports the script error with OOM inside.
            || e.to_string().contains("OOM command not allowed");
        crate::telemetry::metrics::redis_error(unavailable);
        if unavailable {
            StoreError::Unavailable(e)
        } else {
            StoreError::Redis(e)
        }
    }
}

/// Records `partitions` at first start and refuses to run with another value: the
/// partition of every key depends on it.
pub async fn check_partitions(
    conn: &mut Conn,
    keys: &Keys,
    initialize: bool,
) -> Result<(), StoreError> {
    let meta = keys.meta();
    // No meta record: a Redis that was never initialised for this prefix, or one that
    // lost Herald's data (restored empty, or the wrong instance). Running on it would
    // look healthy while every waiter, run and tenant is gone: refuse unless told to
    // initialise (`redis.initialize`).
    let known: bool = conn.exists(&meta).await?;
    if !known && !initialize {
        return Err(StoreError::Setup(format!(
            "this Redis holds no Herald data under the prefix {:?} (no {meta}): either it was \
             never initialised, or it lost Herald's data (restored empty, or the wrong \
             instance). Herald refuses to start on it. For a new installation start once \
             with redis.initialize = true (HERALD_REDIS__INITIALIZE=true); if data was \
             expected here, restore it first",
            keys.prefix()
        )));
    }
    let migrating: Option<u16> = conn.hget(&meta, "repartition_to").await?;
    if let Some(to) = migrating {
        return Err(StoreError::Setup(format!(
            "`herald repartition --to {to}` has not finished; run it again before starting Herald"
        )));
    }
    let _: bool = conn.hset_nx(&meta, "partitions", keys.partitions()).await?;
    if !known {
        let _: bool = conn
            .hset_nx(&meta, "initialized_at", crate::history::now_ms())
            .await?;
        tracing::warn!(
            prefix = keys.prefix(),
            "initialised an empty Redis for Herald (redis.initialize)"
        );
    }
    let recorded: u16 = conn.hget(&meta, "partitions").await?;
    if recorded != keys.partitions() {
        return Err(StoreError::Setup(format!(
            "redis.partitions is {} but this Redis was set up with {recorded}; \
             change it back, or migrate with `herald repartition` (see the operating guide)",
            keys.partitions()
        )));
    }
    Ok(())
}

/// Loads every script (so the first request does not pay for it) and makes sure every
/// partition stream has the consumer group.
pub async fn prepare(conn: &mut Conn, keys: &Keys) -> Result<(), StoreError> {
    for (_, script) in scripts::all() {
        let _: String = script.prepare_invoke().load_async(conn).await?;
    }
    for p in keys.all_partitions() {
        let created: Result<(), RedisError> = ::redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(p.deliveries())
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(conn)
            .await;
        match created {
            Ok(()) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Logs a loud warning unless Redis refuses writes instead of evicting keys when full.
pub async fn warn_unless_noeviction(conn: &mut Conn) {
    let policy: Result<Vec<String>, _> = ::redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(conn)
        .await;
    match policy {
        Ok(v) if v.get(1).map(String::as_str) == Some("noeviction") => {}
        Ok(v) => tracing::warn!(
            policy = v.get(1).map(String::as_str).unwrap_or("?"),
            "Redis maxmemory-policy is not noeviction: Redis may evict waiters and deliveries when full. Set maxmemory-policy noeviction."
        ),
        Err(e) => tracing::warn!(error = %e, "could not read maxmemory-policy (CONFIG GET refused?); make sure it is noeviction"),
    }
}
