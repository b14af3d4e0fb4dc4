//! Upgrades of a store written by an older Herald (`herald migrate`, and once at start).
//!
//! The store's schema is `schema` in `<prefix>:meta`. Schema 2 (this version):
//! - **Saved lists are named `saved:<tenant>:<run>|<event>`.** Schema 1 joined run and
//!   event with `:`, which ids may hold, so two (run, event) pairs could name one list
//!   (see [`super::keys`], "Unambiguous names"). A schema-1 list is renamed when exactly
//!   one split of its name is a (run, event) pair that the store knows: the event hashes to
//!   the list's partition and is in that run's event set. A name with two such splits is
//!   the aliasing itself: its items cannot be told apart, so it is left alone (it expires
//!   with its TTL, `waiters.saved_ttl_secs`) and counted as ambiguous.
//! - **Run waiters are indexed** (`evrun:<tenant>:<event>`, a ZSET of the run waiters'
//!   fields): lookback notify, a run's wait and cancel find a run's waiters there only, so
//!   a run waiter registered by schema 1 is added to its event's index.
//!
//! - **Stored-bytes accounts** (`lua/shared/usage.lua`): the waiters' bytes of every account
//!   (field `L`) are counted again from the waiters, since processes of older versions
//!   register and remove waiters without keeping the accounts.
//!
//! Every step is idempotent: running the migration again (or from two processes at once)
//! changes nothing more. Herald runs it at start when the recorded schema is older, and
//! `herald migrate` runs it on demand: once more after a rolling upgrade, for the waiters
//! that processes of the older version registered meanwhile (docs/operating.md, "Upgrades").

use ::redis::AsyncCommands;

use super::keys::{Keys, PartitionKey};
use super::{Conn, StoreError};
use crate::domain::{EventId, RunId, TenantName};

/// The schema this version writes.
pub const SCHEMA: u32 = 2;

/// Fields indexed per command.
const INDEX_BATCH: usize = 500;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// Schema-1 saved lists renamed to their schema-2 name.
    pub saved_renamed: u64,
    /// Schema-1 saved lists whose name two (run, event) pairs share: left to expire.
    pub saved_ambiguous: u64,
    /// Schema-1 saved lists that match no run's event set (left to expire).
    pub saved_unresolved: u64,
    /// Run waiters added to their event's run index.
    pub run_waiters_indexed: u64,
    /// Bytes of waiters the stored-bytes accounts hold after their recount (field `L`:
    /// processes of versions without accounts neither charge nor release waiters).
    pub waiter_bytes_recounted: u64,
}

/// The schema recorded in the store (1 when none is: a store of a version before schema
/// records, or a fresh one).
pub async fn recorded(conn: &mut Conn, keys: &Keys) -> Result<u32, StoreError> {
    let schema: Option<u32> = conn.hget(keys.meta(), "schema").await?;
    Ok(schema.unwrap_or(1))
}

/// Migrates when the recorded schema is older than [`SCHEMA`]; returns what it did.
pub async fn ensure(conn: &mut Conn, keys: &Keys) -> Result<Option<Migrated>, StoreError> {
    if recorded(conn, keys).await? >= SCHEMA {
        return Ok(None);
    }
    let done = migrate(conn, keys).await?;
    tracing::info!(?done, schema = SCHEMA, "store migrated");
    Ok(Some(done))
}

/// Runs every step and records [`SCHEMA`].
pub async fn migrate(conn: &mut Conn, keys: &Keys) -> Result<Migrated, StoreError> {
    let mut done = Migrated::default();
    let mut found = conn
        .scan_keys(&keys.partition_pattern(), None)
        .await?
        .unwrap_or_default();
    found.sort();
    found.dedup();
    for key in &found {
        if let Some(PartitionKey::EventWaiters {
            partition,
            tenant,
            event,
        }) = keys.parse_partition_key(key)
        {
            done.run_waiters_indexed +=
                index_run_waiters(conn, keys, partition, &tenant, &event).await?;
        } else if let Some((partition, tenant, rest)) = legacy_saved(keys, key) {
            rename_saved(conn, keys, key, partition, &tenant, rest, &mut done).await?;
        }
    }
    done.waiter_bytes_recounted = super::usage::recount_waiters(conn, keys, &found).await?;
    let _: () = conn.hset(keys.meta(), "schema", SCHEMA).await?;
    Ok(done)
}

/// A schema-1 saved list's partition, tenant and `<run>:<event>` part.
fn legacy_saved<'k>(keys: &Keys, key: &'k str) -> Option<(u16, TenantName, &'k str)> {
    let partition = keys.partition_of_key(key)?;
    let rest = key.strip_prefix(&keys.partition(partition).saved_prefix())?;
    let (tenant, rest) = rest.split_once(':')?;
    if rest.contains('|') {
        return None;
    }
    Some((partition, TenantName::parse(tenant).ok()?, rest))
}

/// The (run, event) splits of a schema-1 `<run>:<event>` part whose event lives in
/// `partition`.
fn splits(keys: &Keys, partition: u16, tenant: &TenantName, rest: &str) -> Vec<(RunId, EventId)> {
    rest.match_indices(':')
        .filter_map(|(i, _)| {
            let run = RunId::parse(&rest[..i]).ok()?;
            let event = EventId::parse(&rest[i + 1..]).ok()?;
            (keys.partition_of(tenant, &event).index == partition).then_some((run, event))
        })
        .collect()
}

async fn rename_saved(
    conn: &mut Conn,
    keys: &Keys,
    key: &str,
    partition: u16,
    tenant: &TenantName,
    rest: &str,
    done: &mut Migrated,
) -> Result<(), StoreError> {
    let p = keys.partition(partition);
    let mut known = Vec::new();
    for (run, event) in splits(keys, partition, tenant, rest) {
        let member: bool = conn
            .sismember(p.run_events(tenant, &run), event.as_str())
            .await?;
        if member {
            known.push((run, event));
        }
    }
    let [(run, event)] = &known[..] else {
        if known.is_empty() {
            done.saved_unresolved += 1;
        } else {
            done.saved_ambiguous += 1;
        }
        tracing::warn!(
            key,
            pairs = known.len(),
            "saved list of schema 1 left to expire"
        );
        return Ok(());
    };
    let target = p.saved(tenant, run, event);
    let old_ttl: i64 = conn.pttl(key).await?;
    // The old items are older than any the new name holds: they go in front, in order.
    // (LMOVE one at a time: the list is at most `saved_per_run_event` long; a concurrent
    // migration moves each item once.)
    for _ in 0..1_000_000 {
        let moved: Option<Vec<u8>> = ::redis::cmd("LMOVE")
            .arg(key)
            .arg(&target)
            .arg("RIGHT")
            .arg("LEFT")
            .query_async(conn)
            .await?;
        if moved.is_none() {
            break;
        }
    }
    let ttl: i64 = conn.pttl(&target).await?;
    if old_ttl > 0 && (ttl == -1 || ttl < old_ttl) {
        let _: () = conn.pexpire(&target, old_ttl).await?;
    }
    done.saved_renamed += 1;
    Ok(())
}

/// Adds the run waiters of one event hash to the event's run index.
async fn index_run_waiters(
    conn: &mut Conn,
    keys: &Keys,
    partition: u16,
    tenant: &TenantName,
    event: &EventId,
) -> Result<u64, StoreError> {
    let p = keys.partition(partition);
    let hash = p.event_waiters(tenant, event);
    let index = p.event_runs(tenant, event);
    let mut cursor = 0u64;
    let mut added = 0u64;
    for _ in 0..10_000_000 {
        let (next, page): (u64, Vec<String>) = ::redis::cmd("HSCAN")
            .arg(&hash)
            .arg(cursor)
            .arg("COUNT")
            .arg(INDEX_BATCH)
            .query_async(conn)
            .await?;
        // Pairs of field, value: a run waiter's field does not start with `|`.
        let fields: Vec<&String> = page
            .iter()
            .step_by(2)
            .filter(|f| !f.starts_with('|'))
            .collect();
        if !fields.is_empty() {
            let mut zadd = ::redis::cmd("ZADD");
            zadd.arg(&index);
            for f in &fields {
                zadd.arg(0).arg(f.as_str());
            }
            let n: u64 = zadd.query_async(conn).await?;
            added += n;
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    Ok(added)
}
