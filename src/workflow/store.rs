//! One typed wrapper per script of `lua/workflow/`, and the reads of a run.

use redis::Value;

use super::run::{RunRecord, RunState, FIELDS};
use crate::domain::{RunId, TenantName};
use crate::store::scripts::{self, array, int, text};
use crate::store::{Conn, Keys, Partition, StoreError, GROUP};
use crate::waiter::Job;

/// What `lua/workflow/submit.lua` did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    Created,
    /// A plain message's job is enqueued.
    Enqueued,
    /// Init of a run id that exists: nothing written.
    Exists,
    Appended(i64),
    /// The dedupe key was seen: nothing written.
    Duplicate(i64),
    Unknown,
    Ended(RunState),
}

/// What to submit.
pub struct SubmitArgs<'a> {
    pub partition: &'a Partition,
    pub tenant: &'a TenantName,
    /// None for a plain message (no run: only the job is enqueued).
    pub run: Option<&'a RunId>,
    pub init_fields: Option<&'a serde_json::Map<String, serde_json::Value>>,
    pub entry: Option<String>,
    pub dedupe: &'a str,
    pub job: &'a Job,
    pub body: &'a [u8],
    pub delay_ms: u64,
    pub ttl_ms: u64,
}

pub async fn submit(conn: &mut Conn, a: &SubmitArgs<'_>) -> Result<Submitted, StoreError> {
    let mut inv = scripts::WORKFLOW_SUBMIT.prepare_invoke();
    match a.run {
        Some(run) => {
            inv.key(a.partition.workflow_run(a.tenant, run))
                .key(a.partition.workflow_steps(a.tenant, run));
        }
        None => {
            inv.key(a.partition.no_run()).key(a.partition.no_run());
        }
    }
    inv.key(a.partition.deliveries())
        .key(a.partition.retries())
        .key(a.partition.retry_jobs());
    let mode = match (a.run, a.init_fields) {
        (None, _) => "plain",
        (Some(_), Some(_)) => "init",
        (Some(_), None) => "step",
    };
    inv.arg(mode)
        .arg(a.entry.as_deref().unwrap_or(""))
        .arg(a.dedupe)
        .arg(serde_json::to_string(a.job).expect("a job serializes"))
        .arg(a.delay_ms)
        .arg(
            a.init_fields
                .map(|f| serde_json::Value::Object(f.clone()).to_string())
                .unwrap_or_default(),
        )
        .arg(a.ttl_ms)
        .arg(&a.job.m)
        .arg(a.body);
    inv.key(a.partition.usage(a.tenant));
    let reply = array(scripts::invoke(conn, "workflow/submit", inv).await?)?;
    let (status, index) = match reply.as_slice() {
        [s, i] => (text(s)?, int(i)?),
        other => return Err(StoreError::Reply(format!("submit replied {other:?}"))),
    };
    Ok(match status.as_str() {
        "created" => Submitted::Created,
        "enqueued" => Submitted::Enqueued,
        "exists" => Submitted::Exists,
        "appended" => Submitted::Appended(index),
        "duplicate" => Submitted::Duplicate(index),
        "unknown" => Submitted::Unknown,
        s => Submitted::Ended(
            RunState::parse(s).ok_or_else(|| StoreError::Reply(format!("submit: state {s}")))?,
        ),
    })
}

/// What ends a run.
pub struct FinishArgs<'a> {
    pub partition: &'a Partition,
    pub tenant: &'a TenantName,
    pub run: &'a RunId,
    pub state: RunState,
    pub result: Option<&'a [u8]>,
    pub ttl_ms: u64,
    /// The delivery that ended it, acknowledged in the same script.
    pub entry_id: Option<&'a str>,
    /// Enqueued only if this call ends the run.
    pub jobs: &'a [(Job, Vec<u8>)],
}

/// Ends a run; returns its state before (None: no such run).
pub async fn finish(conn: &mut Conn, a: &FinishArgs<'_>) -> Result<Option<RunState>, StoreError> {
    let mut inv = scripts::WORKFLOW_FINISH.prepare_invoke();
    inv.key(a.partition.workflow_run(a.tenant, a.run))
        .key(a.partition.workflow_steps(a.tenant, a.run))
        .key(a.partition.deliveries())
        .key(a.partition.usage(a.tenant))
        .arg(a.state.as_str())
        .arg(a.result.unwrap_or(b""))
        .arg(a.ttl_ms)
        .arg(GROUP)
        .arg(a.entry_id.unwrap_or(""));
    for (job, body) in a.jobs {
        inv.arg(serde_json::to_string(job).expect("a job serializes"))
            .arg(body.as_slice());
    }
    let before = text(&scripts::invoke(conn, "workflow/finish", inv).await?)?;
    Ok(RunState::parse(&before))
}

/// Acknowledges `entry_id` and enqueues `job` in one script; false when the entry was no
/// longer pending (nothing enqueued).
pub async fn chain(
    conn: &mut Conn,
    partition: &Partition,
    entry_id: &str,
    job: &Job,
    body: &[u8],
) -> Result<bool, StoreError> {
    let mut inv = scripts::WORKFLOW_CHAIN.prepare_invoke();
    inv.key(partition.deliveries())
        .arg(GROUP)
        .arg(entry_id)
        .arg(serde_json::to_string(job).expect("a job serializes"))
        .arg(body);
    Ok(int(&scripts::invoke(conn, "workflow/chain", inv).await?)? == 1)
}

/// A run's record and the first `upto + 1` entries of its history (all with None), in one
/// round trip (both keys share the run's slot).
pub async fn read(
    conn: &mut Conn,
    keys: &Keys,
    tenant: &TenantName,
    run: &RunId,
    upto: Option<i64>,
) -> Result<Option<(RunRecord, Vec<String>)>, StoreError> {
    let p = keys.run_partition(tenant, run);
    let mut pipe = redis::pipe();
    pipe.cmd("HMGET")
        .arg(p.workflow_run(tenant, run))
        .arg(&FIELDS[..]);
    pipe.cmd("LRANGE")
        .arg(p.workflow_steps(tenant, run))
        .arg(0)
        .arg(upto.unwrap_or(-1));
    let (values, entries): (Vec<Option<String>>, Vec<String>) = pipe.query_async(conn).await?;
    Ok(RunRecord::read(&values).map(|r| (r, entries)))
}

/// The first entry of a run's history (its initial payload).
pub async fn first_entry(
    conn: &mut Conn,
    keys: &Keys,
    tenant: &TenantName,
    run: &RunId,
) -> Result<Option<String>, StoreError> {
    let p = keys.run_partition(tenant, run);
    let v: Value = redis::cmd("LINDEX")
        .arg(p.workflow_steps(tenant, run))
        .arg(0)
        .query_async(conn)
        .await?;
    Ok(match v {
        Value::Nil => None,
        other => Some(text(&other)?),
    })
}
