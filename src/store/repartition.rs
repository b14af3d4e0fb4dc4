//! `herald repartition --to N`: changes the number of partitions P offline.
//!
//! Every item is moved to the partition it belongs to under the new P: waiters (event
//! hashes), saved notifications, run indexes, deadlines, pending deliveries, retries and
//! dead letters, workflow runs (record and history, to the run's partition, with their
//! messages in the streams and retries), and the body keys they reference (with the first job or dead letter that
//! moves: all of a body's references belong to the same event, so they move together); run tombstones go to the run's new home partition; the tenants' waiter
//! counts (the `active_waiters` quota) and stored-bytes accounts are counted again from
//! the moved waiters, and rate
//! buckets are left to expire (a full bucket is no key). Each step moves
//! items one by one ("copy, then delete") and only items not yet where they belong, so an
//! interrupted run is finished by running it again. Idempotency records cannot be placed
//! (their key does not name the event) and are left to expire.
//!
//! While it runs, `<prefix>:meta` holds `repartition_to`, and no process starts.

use std::time::Duration;

use ::redis::{AsyncCommands, Value};

use super::keys::{parse_deadline_member, Keys, Partition, PartitionKey};
use super::{Conn, StoreError};
use crate::domain::{EventId, RunId, TenantName};
use crate::waiter::Job;

/// What a repartition moved.
#[derive(Debug, Default, Clone, Copy)]
pub struct Moved {
    pub waiter_sets: u64,
    pub saved: u64,
    pub run_entries: u64,
    pub tombstones: u64,
    pub deadlines: u64,
    pub deliveries: u64,
    pub retries: u64,
    pub dead_letters: u64,
    /// Workflow runs (record and history) moved to their run's new partition.
    pub workflow_runs: u64,
    /// Waiters counted into the new partitions' waiter counts.
    pub waiters_counted: u64,
}

impl Moved {
    fn total(&self) -> u64 {
        self.waiter_sets
            + self.saved
            + self.run_entries
            + self.tombstones
            + self.deadlines
            + self.deliveries
            + self.retries
            + self.dead_letters
            + self.workflow_runs
    }
}

const PAGE: usize = 500;

/// A stream entry as XRANGE returns it: id and (field, value) pairs.
type Entry = (String, Vec<(String, Vec<u8>)>);

/// Moves everything of the deployment `prefix` from the recorded P to `to`, then records
/// `to`. Refuses while a delivery worker has read a stream within `worker_idle`.
pub async fn repartition(
    conn: &mut Conn,
    prefix: &str,
    to: u16,
    worker_idle: Duration,
) -> Result<Moved, StoreError> {
    if to == 0 || to > 1024 {
        return Err(StoreError::Setup("--to must be between 1 and 1024".into()));
    }
    let meta = Keys::new(prefix, 1).meta();
    let recorded: Option<u16> = conn.hget(&meta, "partitions").await?;
    let from = recorded.ok_or_else(|| {
        StoreError::Setup(format!(
            "no Herald deployment with key prefix {prefix:?} in this Redis"
        ))
    })?;
    let in_progress: Option<u16> = conn.hget(&meta, "repartition_to").await?;
    match in_progress {
        Some(other) if other != to => {
            return Err(StoreError::Setup(format!(
                "an interrupted repartition to {other} partitions must be finished first (run it again with --to {other})"
            )))
        }
        None if from == to => return Ok(Moved::default()),
        _ => {}
    }
    let old = Keys::new(prefix, from.max(in_progress.unwrap_or(0)));
    refuse_while_workers_run(conn, &old, worker_idle).await?;
    let _: () = conn.hset(&meta, "repartition_to", to).await?;

    let new = Keys::new(prefix, to);
    let mut moved = Moved::default();
    // A key written during a scan may or may not be returned by it: repeat until a pass
    // finds nothing left to move (bounded).
    for _ in 0..4 {
        let pass = move_pass(conn, &old, &new).await?;
        add(&mut moved, &pass);
        if pass.total() == 0 {
            break;
        }
    }
    moved.waiters_counted = recount_waiters(conn, &new).await?;
    super::prepare(conn, &new).await?;
    let _: () = conn.hset(&meta, "partitions", to).await?;
    let _: () = conn.hdel(&meta, "repartition_to").await?;
    Ok(moved)
}

fn add(total: &mut Moved, pass: &Moved) {
    total.waiter_sets += pass.waiter_sets;
    total.saved += pass.saved;
    total.run_entries += pass.run_entries;
    total.tombstones += pass.tombstones;
    total.deadlines += pass.deadlines;
    total.deliveries += pass.deliveries;
    total.retries += pass.retries;
    total.dead_letters += pass.dead_letters;
    total.workflow_runs += pass.workflow_runs;
}

async fn refuse_while_workers_run(
    conn: &mut Conn,
    keys: &Keys,
    worker_idle: Duration,
) -> Result<(), StoreError> {
    for p in keys.all_partitions() {
        let consumers: Result<Vec<std::collections::HashMap<String, Value>>, _> =
            ::redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(p.deliveries())
                .arg(super::GROUP)
                .query_async(conn)
                .await;
        for consumer in consumers.unwrap_or_default() {
            let idle = match consumer.get("idle") {
                Some(Value::Int(ms)) => *ms as u128,
                _ => u128::MAX,
            };
            if idle < worker_idle.as_millis() {
                return Err(StoreError::Setup(format!(
                    "a delivery worker read partition {} {idle} ms ago: stop every Herald process (api and worker) first",
                    p.index
                )));
            }
        }
    }
    Ok(())
}

/// Every key of the deployment's partitions (all masters of a cluster).
async fn partition_keys(conn: &mut Conn, keys: &Keys) -> Result<Vec<String>, StoreError> {
    let mut found = conn
        .scan_keys(&keys.partition_pattern(), None)
        .await?
        .unwrap_or_default();
    found.sort();
    found.dedup();
    Ok(found)
}

async fn move_pass(conn: &mut Conn, old: &Keys, new: &Keys) -> Result<Moved, StoreError> {
    let mut moved = Moved::default();
    for key in partition_keys(conn, old).await? {
        let Some(parsed) = old.parse_partition_key(&key) else {
            continue;
        };
        let from = old.partition(parsed.partition());
        match parsed {
            PartitionKey::EventWaiters { tenant, event, .. } => {
                let to = new.partition_of(&tenant, &event);
                if to.index != from.index
                    && move_key(conn, &key, &to.event_waiters(&tenant, &event)).await?
                {
                    moved.waiter_sets += 1;
                }
            }
            PartitionKey::EventRuns { tenant, event, .. } => {
                let to = new.partition_of(&tenant, &event);
                if to.index != from.index {
                    move_key(conn, &key, &to.event_runs(&tenant, &event)).await?;
                }
            }
            PartitionKey::RunEvents { tenant, run, .. } => {
                move_run(conn, new, &from, &tenant, &run, &mut moved).await?;
            }
            PartitionKey::Cancelled { tenant, run, .. } => {
                let value: Option<Vec<u8>> = conn.get(&key).await?;
                let ttl: i64 = conn.pttl(&key).await?;
                // One tombstone per run, in its home partition (store/tombstones.rs);
                // those written in every partition by older versions collapse into it.
                let target = new.run_partition(&tenant, &run).cancelled(&tenant, &run);
                if let Some(value) = value {
                    let exists: bool = conn.exists(&target).await?;
                    if !exists {
                        set_with_ttl(conn, &target, &value, ttl).await?;
                        moved.tombstones += 1;
                    }
                }
                if key != target {
                    let _: () = conn.del(&key).await?;
                }
            }
            PartitionKey::WorkflowRun {
                tenant, run, steps, ..
            } => {
                let to = new.run_partition(&tenant, &run);
                let target = if steps {
                    to.workflow_steps(&tenant, &run)
                } else {
                    to.workflow_run(&tenant, &run)
                };
                if to.index != from.index && move_key(conn, &key, &target).await? && !steps {
                    moved.workflow_runs += 1;
                }
            }
            PartitionKey::Deadlines(_) => move_deadlines(conn, new, &from, &mut moved).await?,
            PartitionKey::Deliveries(_) => {
                moved.deliveries += move_stream(conn, &from, &from.deliveries(), |job| {
                    let to = job_partition(new, job)?;
                    Some((to.deliveries(), to))
                })
                .await?;
                if from.index >= new.partitions() {
                    let left: u64 = conn.xlen(from.deliveries()).await?;
                    if left == 0 {
                        let _: () = conn.del(from.deliveries()).await?;
                    }
                }
            }
            PartitionKey::Retries(_) => move_retries(conn, new, &from, &mut moved).await?,
            PartitionKey::DeadLetters { tenant, .. } => {
                moved.dead_letters += move_stream(conn, &from, &key, |job| {
                    let to = job_partition(new, job)?;
                    Some((to.dead_letters(&tenant), to))
                })
                .await?;
            }
            // Saved lists move with their run's index; idempotency records stay and
            // expire; the retry-job hash moves with the retry set; body keys move with
            // the jobs and dead letters referencing them; waiter counts are counted again
            // once everything moved.
            PartitionKey::WaiterCount { .. } | PartitionKey::Other(_) => {}
        }
    }
    Ok(moved)
}

/// Sets every tenant's waiter count of every partition to the waiters it holds (after the
/// moves, the old counts describe the old partitions), and its stored-bytes account
/// (`lua/shared/usage.lua`) to the bytes of those waiters: the accounts describe the old
/// partitions too, so they start again from the waiters (field `L`); what was charged
/// to buckets (items that leave by TTL) is not counted again and stops counting as
/// those items leave. Returns the waiters counted.
async fn recount_waiters(conn: &mut Conn, keys: &Keys) -> Result<u64, StoreError> {
    let all = partition_keys(conn, keys).await?;
    for key in &all {
        if let Some(PartitionKey::WaiterCount { .. }) = keys.parse_partition_key(key) {
            let _: () = conn.del(key).await?;
        }
    }
    let accounts: Option<Vec<String>> = conn.scan_keys(&keys.usage_pattern(), None).await?;
    for key in accounts.unwrap_or_default() {
        let _: () = conn.del(&key).await?;
    }
    super::usage::recount_waiters(conn, keys, &all).await?;
    let mut counted = 0;
    for key in &all {
        if let Some(PartitionKey::EventWaiters {
            partition, tenant, ..
        }) = keys.parse_partition_key(key)
        {
            let waiters: u64 = conn.hlen(key).await?;
            if waiters > 0 {
                let count = keys.partition(partition).waiter_count(&tenant);
                let _: () = conn.incr(count, waiters).await?;
                counted += waiters;
            }
        }
    }
    Ok(counted)
}

/// The partition a delivery job belongs to under `keys`, as it was placed: a waiter's
/// outcome with its event, a workflow run's message with its run (an invoke result with
/// the parent run it goes to), a plain workflow message with its message id
/// (`workflow::accept`). None for a job that names none of them validly.
fn job_partition(keys: &Keys, job: &Job) -> Option<Partition> {
    let tenant = TenantName::parse(&job.t).ok()?;
    match &job.r {
        Some(r) if !r.run.is_empty() => {
            Some(keys.run_partition(&tenant, &RunId::parse(&r.run).ok()?))
        }
        Some(_) => Some(keys.run_partition(&tenant, &RunId::parse(&job.m).ok()?)),
        None => Some(keys.partition_of(&tenant, &EventId::parse(&job.e).ok()?)),
    }
}

/// Copies `from` to `to` (value and TTL) and deletes `from`; false when `from` is gone.
async fn move_key(conn: &mut Conn, from: &str, to: &str) -> Result<bool, StoreError> {
    let dump: Option<Vec<u8>> = ::redis::cmd("DUMP").arg(from).query_async(conn).await?;
    let Some(dump) = dump else { return Ok(false) };
    let ttl: i64 = conn.pttl(from).await?;
    let _: () = ::redis::cmd("RESTORE")
        .arg(to)
        .arg(ttl.max(0))
        .arg(dump)
        .arg("REPLACE")
        .query_async(conn)
        .await?;
    let _: () = conn.del(from).await?;
    Ok(true)
}

async fn set_with_ttl(
    conn: &mut Conn,
    key: &str,
    value: &[u8],
    ttl: i64,
) -> Result<(), StoreError> {
    if ttl > 0 {
        let _: () = conn.pset_ex(key, value, ttl as u64).await?;
    } else {
        let _: () = conn.set(key, value).await?;
    }
    Ok(())
}

/// Moves a run's index entries (and the saved notifications they point to) whose event
/// belongs to another partition now.
async fn move_run(
    conn: &mut Conn,
    new: &Keys,
    from: &Partition,
    tenant: &TenantName,
    run: &RunId,
    moved: &mut Moved,
) -> Result<(), StoreError> {
    let key = from.run_events(tenant, run);
    let events: Vec<String> = conn.smembers(&key).await?;
    let ttl: i64 = conn.pttl(&key).await?;
    for event in events {
        let Ok(event_id) = EventId::parse(&event) else {
            continue;
        };
        let to = new.partition_of(tenant, &event_id);
        if to.index == from.index {
            continue;
        }
        if move_key(
            conn,
            &from.saved(tenant, run, &event_id),
            &to.saved(tenant, run, &event_id),
        )
        .await?
        {
            moved.saved += 1;
        }
        let target = to.run_events(tenant, run);
        let _: () = conn.sadd(&target, &event).await?;
        if ttl > 0 {
            let current: i64 = conn.pttl(&target).await?;
            if current < ttl {
                let _: () = conn.pexpire(&target, ttl).await?;
            }
        }
        let _: () = conn.srem(&key, &event).await?;
        moved.run_entries += 1;
    }
    Ok(())
}

async fn move_deadlines(
    conn: &mut Conn,
    new: &Keys,
    from: &Partition,
    moved: &mut Moved,
) -> Result<(), StoreError> {
    let key = from.deadlines();
    let mut start = 0isize;
    loop {
        let page: Vec<(String, f64)> = conn
            .zrange_withscores(&key, start, start + PAGE as isize - 1)
            .await?;
        if page.is_empty() {
            return Ok(());
        }
        let mut stayed = 0;
        for (member, score) in &page {
            let Some((tenant, _, event)) = parse_deadline_member(member) else {
                stayed += 1;
                continue;
            };
            let to = new.partition_of(&tenant, &event);
            if to.index == from.index {
                stayed += 1;
                continue;
            }
            let _: () = conn.zadd(to.deadlines(), member, *score).await?;
            let _: () = conn.zrem(&key, member).await?;
            moved.deadlines += 1;
        }
        start += stayed;
    }
}

/// Moves the body key `body_id` of `from` to `to` (value, reference counts and TTL), unless
/// it moved already (with another job or dead letter referencing it).
async fn move_body(
    conn: &mut Conn,
    from: &Partition,
    to: &Partition,
    body_id: &str,
) -> Result<(), StoreError> {
    move_key(conn, &from.body(body_id), &to.body(body_id)).await?;
    Ok(())
}

/// Re-adds the entries of `stream` (in partition `from`) that belong elsewhere to the
/// stream `target` names (from the job's tenant and event), with the body key an entry
/// references, then deletes them here. Returns how many moved.
async fn move_stream(
    conn: &mut Conn,
    from: &Partition,
    stream: &str,
    target: impl Fn(&Job) -> Option<(String, Partition)>,
) -> Result<u64, StoreError> {
    let mut moved = 0;
    let mut after = "-".to_owned();
    loop {
        let page: Vec<Entry> = ::redis::cmd("XRANGE")
            .arg(stream)
            .arg(&after)
            .arg("+")
            .arg("COUNT")
            .arg(PAGE)
            .query_async(conn)
            .await?;
        let Some((last, _)) = page.last() else {
            return Ok(moved);
        };
        after = format!("({last}");
        for (id, fields) in &page {
            let job = fields
                .iter()
                .find(|(k, _)| k == "j")
                .and_then(|(_, v)| serde_json::from_slice::<Job>(v).ok());
            let Some((to, to_partition)) = job.as_ref().and_then(&target) else {
                continue;
            };
            if to == stream {
                continue;
            }
            if let Some((_, body_id)) = fields.iter().find(|(k, _)| k == "br") {
                move_body(conn, from, &to_partition, &String::from_utf8_lossy(body_id)).await?;
            }
            let mut add = ::redis::cmd("XADD");
            add.arg(&to).arg("*");
            for (k, v) in fields {
                add.arg(k).arg(v);
            }
            let _: String = add.query_async(conn).await?;
            let _: () = conn.xdel(stream, &[id]).await?;
            moved += 1;
        }
    }
}

async fn move_retries(
    conn: &mut Conn,
    new: &Keys,
    from: &Partition,
    moved: &mut Moved,
) -> Result<(), StoreError> {
    let mut start = 0isize;
    loop {
        let page: Vec<(String, f64)> = conn
            .zrange_withscores(from.retries(), start, start + PAGE as isize - 1)
            .await?;
        if page.is_empty() {
            return Ok(());
        }
        let mut stayed = 0;
        for (message, due) in &page {
            let body_field = format!("{message}#b");
            let ref_field = format!("{message}#r");
            let (job_json, body, body_ref): (Option<String>, Option<Vec<u8>>, Option<String>) =
                ::redis::cmd("HMGET")
                    .arg(from.retry_jobs())
                    .arg(message)
                    .arg(&body_field)
                    .arg(&ref_field)
                    .query_async(conn)
                    .await?;
            let to = job_json
                .as_deref()
                .and_then(|j| serde_json::from_str::<Job>(j).ok())
                .and_then(|j| job_partition(new, &j));
            let (Some(to), Some(job_json)) = (to, job_json) else {
                stayed += 1;
                continue;
            };
            if to.index == from.index {
                stayed += 1;
                continue;
            }
            let held = match &body_ref {
                Some(r) => {
                    move_body(conn, from, &to, r).await?;
                    (ref_field.as_str(), r.clone().into_bytes())
                }
                None => (body_field.as_str(), body.unwrap_or_default()),
            };
            let _: () = conn
                .hset_multiple(
                    to.retry_jobs(),
                    &[(message.as_str(), job_json.into_bytes()), held],
                )
                .await?;
            let _: () = conn.zadd(to.retries(), message, *due).await?;
            let _: () = conn.zrem(from.retries(), message).await?;
            let _: () = conn
                .hdel(
                    from.retry_jobs(),
                    &[message.as_str(), body_field.as_str(), ref_field.as_str()],
                )
                .await?;
            moved.retries += 1;
        }
        start += stayed;
    }
}
