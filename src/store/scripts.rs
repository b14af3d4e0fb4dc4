//! One typed wrapper per Lua script in `lua/`. Call sites pass named fields; only this
//! module knows the order of KEYS and ARGV (documented in each script's header).
//!
//! Scripts run with EVALSHA; on `NOSCRIPT` (Redis restarted, failed over, or flushed its
//! script cache) the client loads the script and retries.
//!
//! Scripts that check a rate limit, count a tenant's waiters or enqueue deliveries are
//! joined with `lua/shared/quota.lua` and `lua/shared/delivery.lua` (the functions they
//! share) into one source.

use std::sync::LazyLock;

use redis::streams::StreamId;
use redis::{Script, ScriptInvocation, Value};
use tracing::Instrument;

use super::keys::{Partition, GROUP};
use super::redis::Conn;
use super::StoreError;
use crate::domain::{EventId, RunId, TenantName};

macro_rules! script {
    ($name:ident, $file:literal) => {
        pub static $name: LazyLock<Script> =
            LazyLock::new(|| Script::new(include_str!(concat!("../../lua/", $file))));
    };
    ($name:ident, $file:literal, with_shared) => {
        pub static $name: LazyLock<Script> = LazyLock::new(|| {
            Script::new(concat!(
                include_str!("../../lua/shared/quota.lua"),
                include_str!("../../lua/shared/usage.lua"),
                include_str!("../../lua/shared/delivery.lua"),
                include_str!(concat!("../../lua/", $file))
            ))
        });
    };
}

script!(WAIT, "wait.lua", with_shared);
script!(NOTIFY, "notify.lua", with_shared);
script!(NOTIFY_RUN, "notify_run.lua", with_shared);
script!(CANCEL, "cancel.lua", with_shared);
script!(EXPIRE_DUE, "expire_due.lua", with_shared);
script!(RATE_LIMIT, "rate_limit.lua", with_shared);
script!(ACK, "ack.lua", with_shared);
script!(RETRY_LATER, "retry_later.lua");
script!(PROMOTE_DUE, "promote_due.lua", with_shared);
script!(DEAD_LETTER, "dead_letter.lua", with_shared);
script!(RECLAIM, "reclaim.lua", with_shared);
script!(RENEW, "renew.lua");
script!(REDRIVE, "redrive.lua", with_shared);
script!(DELETE_DEAD_LETTER, "delete_dead_letter.lua", with_shared);
script!(LIST_WAITERS, "list_waiters.lua");
script!(TENANT_CREATE, "tenant_create.lua");
script!(ROTATE_SIGNING_KEYS, "rotate_signing_keys.lua");
script!(HISTORY_APPEND, "history_append.lua", with_shared);
script!(WORKFLOW_SUBMIT, "workflow/submit.lua", with_shared);
script!(WORKFLOW_FINISH, "workflow/finish.lua", with_shared);
script!(WORKFLOW_CHAIN, "workflow/chain.lua");

/// Every script, for loading at start-up (readiness) and for the load check in tests.
pub fn all() -> [(&'static str, &'static Script); 21] {
    [
        ("wait", &WAIT),
        ("notify", &NOTIFY),
        ("notify_run", &NOTIFY_RUN),
        ("cancel", &CANCEL),
        ("expire_due", &EXPIRE_DUE),
        ("ack", &ACK),
        ("retry_later", &RETRY_LATER),
        ("promote_due", &PROMOTE_DUE),
        ("dead_letter", &DEAD_LETTER),
        ("reclaim", &RECLAIM),
        ("renew", &RENEW),
        ("redrive", &REDRIVE),
        ("delete_dead_letter", &DELETE_DEAD_LETTER),
        ("rate_limit", &RATE_LIMIT),
        ("list_waiters", &LIST_WAITERS),
        ("tenant_create", &TENANT_CREATE),
        ("rotate_signing_keys", &ROTATE_SIGNING_KEYS),
        ("history_append", &HISTORY_APPEND),
        ("workflow/submit", &WORKFLOW_SUBMIT),
        ("workflow/finish", &WORKFLOW_FINISH),
        ("workflow/chain", &WORKFLOW_CHAIN),
    ]
}

/// Runs one script inside its own span, a child of the request or delivery span. Calls
/// outside both (the scheduler's periodic scripts) get no span: they would be a stream
/// of root spans, several per partition and tick, that explain nothing.
pub(crate) async fn invoke(
    conn: &mut Conn,
    name: &'static str,
    invocation: ScriptInvocation<'_>,
) -> Result<Value, StoreError> {
    let span = if tracing::Span::current().is_none() {
        tracing::Span::none()
    } else {
        tracing::info_span!(
            "redis script",
            otel.name = %format_args!("EVALSHA {name}"),
            otel.kind = "client",
            db.system = "redis",
            db.operation = name,
        )
    };
    // With `redis.wait_replicas` set, an API write also waits for the replicas.
    if let Some(confirm) = super::durability::confirm_for(name) {
        return super::durability::invoke_replicated(&invocation, &confirm)
            .instrument(span)
            .await;
    }
    invocation
        .invoke_async(conn)
        .instrument(span)
        .await
        .map_err(StoreError::from)
}

pub(crate) fn text(v: &Value) -> Result<String, StoreError> {
    match v {
        Value::BulkString(b) => Ok(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::Int(i) => Ok(i.to_string()),
        other => Err(StoreError::Reply(format!(
            "expected a string, got {other:?}"
        ))),
    }
}

pub(crate) fn int(v: &Value) -> Result<i64, StoreError> {
    match v {
        Value::Int(i) => Ok(*i),
        other => text(other)?
            .parse()
            .map_err(|_| StoreError::Reply(format!("expected an integer, got {other:?}"))),
    }
}

pub(crate) fn array(v: Value) -> Result<Vec<Value>, StoreError> {
    match v {
        Value::Array(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(StoreError::Reply(format!(
            "expected an array, got {other:?}"
        ))),
    }
}

/// A waiter taken by a notify: its hash field, its JSON, and the delivery's message id.
#[derive(Debug, Clone)]
pub struct Taken {
    pub field: String,
    /// "" past the call's reply budget (the waiter is known by its field only).
    pub waiter_json: String,
    pub message_id: String,
}

fn taken_triplets(items: &[Value]) -> Result<Vec<Taken>, StoreError> {
    items
        .chunks(3)
        .map(|c| match c {
            [f, w, m] => Ok(Taken {
                field: text(f)?,
                waiter_json: text(w)?,
                message_id: text(m)?,
            }),
            _ => Err(StoreError::Reply("taken waiters come in threes".into())),
        })
        .collect()
}

/// A rate-limit check made inside an operation's script (folded: no extra round trip).
#[derive(Debug, Clone)]
pub struct RateCheck {
    /// The bucket key ([`super::Keys::rate_bucket`]).
    pub bucket: String,
    pub per_sec: u32,
    pub burst: u32,
}

/// A request refused by a rate limit: what the 429 reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateRefusal {
    /// Requests still allowed at once (0 when refused).
    pub remaining: u64,
    /// When the bucket is full again, unix ms.
    pub reset_ms: u64,
    /// How long until a request is admitted, ms.
    pub retry_after_ms: u64,
}

/// Parses `{"limited", remaining, resetMs, retryAfterMs}` (the tail after the tag).
fn refusal(rest: &[Value]) -> Result<RateRefusal, StoreError> {
    match rest {
        [remaining, reset, retry] => Ok(RateRefusal {
            remaining: int(remaining)?.max(0) as u64,
            reset_ms: int(reset)?.max(0) as u64,
            retry_after_ms: int(retry)?.max(0) as u64,
        }),
        _ => Err(StoreError::Reply(format!(
            "a rate refusal has 3 values, got {rest:?}"
        ))),
    }
}

/// Adds the folded rate check's KEY (or a placeholder of the partition) to an invocation;
/// its ARGV are added by [`rate_args`].
fn rate_key(inv: &mut ScriptInvocation<'_>, partition: &Partition, rate: Option<&RateCheck>) {
    match rate {
        Some(r) => inv.key(&r.bucket),
        None => inv.key(partition.no_run()),
    };
}

fn rate_args(inv: &mut ScriptInvocation<'_>, rate: Option<&RateCheck>) {
    let (per_sec, burst) = rate.map(|r| (r.per_sec, r.burst)).unwrap_or((0, 0));
    inv.arg(per_sec).arg(burst);
}

/// Checks (and takes from) one of a tenant's rate limits on its own (`rate_limit.lua`):
/// where the check cannot be folded into the operation's script. Returns the requests
/// still allowed at once, or the refusal.
pub async fn rate_limit(
    conn: &mut Conn,
    bucket: &str,
    per_sec: u32,
    burst: u32,
) -> Result<Result<u64, RateRefusal>, StoreError> {
    let mut inv = RATE_LIMIT.prepare_invoke();
    inv.key(bucket).arg(per_sec).arg(burst);
    let items = array(invoke(conn, "rate_limit", inv).await?)?;
    match &items[..] {
        [admitted, rest @ ..] if int(admitted)? == 1 => Ok(Ok(refusal(rest)?.remaining)),
        [_, rest @ ..] => Ok(Err(refusal(rest)?)),
        _ => Err(StoreError::Reply(format!(
            "rate_limit: unexpected reply {items:?}"
        ))),
    }
}

/// The tenant's active-waiters quota, as the wait script checks it.
pub struct ActiveQuota<'a> {
    /// Most waiters of the tenant in all partitions (0 = unlimited).
    pub max: u64,
    /// The other partitions, whose counts the script sums (standalone Redis: exact).
    pub summed: &'a [Partition],
    /// Waiters the caller counted in the other partitions just before (Redis Cluster,
    /// where the script cannot read other slots).
    pub counted_elsewhere: u64,
}

/// How the operation's script writes the event's history (`history.*`; see
/// `add_history` in `lua/shared/delivery.lua`).
#[derive(Debug, Clone, Copy)]
pub struct HistoryArgs {
    /// Milliseconds the event's history is kept after its last entry (0 = no history).
    pub ttl_ms: u64,
    /// Entries it keeps.
    pub max_entries: usize,
}

impl HistoryArgs {
    pub fn from_settings(settings: &crate::config::HistorySettings) -> Self {
        Self {
            ttl_ms: settings.ttl_secs.saturating_mul(1000),
            max_entries: settings.max_entries,
        }
    }

    /// Those of the default configuration (parsed once: benchmarks call this per request).
    pub fn defaults() -> Self {
        static DEFAULTS: LazyLock<HistoryArgs> = LazyLock::new(|| {
            HistoryArgs::from_settings(&crate::config::Settings::defaults().history)
        });
        *DEFAULTS
    }

    fn add(&self, inv: &mut ScriptInvocation<'_>) {
        inv.arg(self.ttl_ms).arg(self.max_entries);
    }
}

pub struct WaitArgs<'a> {
    pub partition: &'a Partition,
    pub tenant: &'a TenantName,
    pub event: &'a EventId,
    pub run: Option<&'a RunId>,
    pub field: &'a str,
    /// The registration's idempotency id, when a client retry can repeat it (a workflow
    /// step, or an Idempotency-Key); None keeps no record.
    pub op_id: Option<&'a str>,
    /// Waiter JSON object without `deadline`/`createdAt` (the script adds them from TIME).
    pub waiter_json: &'a str,
    pub timeout_ms: u64,
    pub op_ttl_secs: u64,
    pub run_ttl_ms: u64,
    pub max_waiters: u64,
    /// W3C `traceparent` of the request (empty for none); validated by the caller.
    pub trace: &'a str,
    pub rate: Option<&'a RateCheck>,
    pub active: ActiveQuota<'a>,
    pub history: HistoryArgs,
    /// The tenant is at its `stored_bytes` quota: a registration is refused.
    pub stored_full: bool,
    /// The run's tombstone when the script can check it (src/store/tombstones.rs); None:
    /// the caller checks it.
    pub tombstone: Option<&'a str>,
}

#[derive(Debug)]
pub enum WaitReply {
    Waiting {
        waiter_json: String,
    },
    Consumed {
        message_id: String,
        waiter_json: String,
    },
    Cancelled,
    Full {
        count: i64,
    },
    TenantFull {
        count: i64,
    },
    /// The tenant is at its `stored_bytes` quota; nothing was written.
    StoredFull,
    Limited(RateRefusal),
}

pub async fn wait(conn: &mut Conn, a: &WaitArgs<'_>) -> Result<WaitReply, StoreError> {
    let p = a.partition;
    let (op_key, op_ttl_secs) = match a.op_id {
        Some(id) => (p.op(a.tenant, id), a.op_ttl_secs),
        None => (p.no_run(), 0),
    };
    let mut inv = WAIT.prepare_invoke();
    match a.run {
        Some(run) => inv
            .key(p.event_waiters(a.tenant, a.event))
            .key(p.saved(a.tenant, run, a.event))
            .key(p.deadlines())
            .key(p.deliveries())
            .key(&op_key)
            .key(p.run_events(a.tenant, run))
            .key(a.tombstone.map(str::to_owned).unwrap_or_else(|| p.no_run())),
        None => inv
            .key(p.event_waiters(a.tenant, a.event))
            .key(p.no_run())
            .key(p.deadlines())
            .key(p.deliveries())
            .key(&op_key)
            .key(p.no_run())
            .key(p.no_run()),
    };
    inv.key(p.waiter_count(a.tenant));
    rate_key(&mut inv, p, a.rate);
    inv.key(p.history(a.tenant, a.event));
    match a.run {
        Some(_) => inv.key(p.event_runs(a.tenant, a.event)),
        None => inv.key(p.no_run()),
    };
    inv.key(p.usage(a.tenant));
    for other in a.active.summed {
        inv.key(other.waiter_count(a.tenant));
    }
    inv.arg(a.field)
        .arg(a.waiter_json)
        .arg(a.timeout_ms)
        .arg(a.tenant.as_str())
        .arg(a.event.as_str())
        .arg(a.run.map(RunId::as_str).unwrap_or(""))
        .arg(op_ttl_secs)
        .arg(a.run_ttl_ms)
        .arg(a.max_waiters)
        .arg(a.trace);
    rate_args(&mut inv, a.rate);
    inv.arg(a.active.max).arg(a.active.counted_elsewhere);
    a.history.add(&mut inv);
    inv.arg(flag(a.stored_full));
    let items = array(invoke(conn, "wait", inv).await?)?;
    match (items.first().map(text).transpose()?.as_deref(), &items[..]) {
        (Some("waiting"), [_, w]) => Ok(WaitReply::Waiting {
            waiter_json: text(w)?,
        }),
        (Some("consumed"), [_, m, w]) => Ok(WaitReply::Consumed {
            message_id: text(m)?,
            waiter_json: text(w)?,
        }),
        (Some("cancelled"), _) => Ok(WaitReply::Cancelled),
        (Some("full"), [_, n]) => Ok(WaitReply::Full { count: int(n)? }),
        (Some("tenant_full"), [_, n]) => Ok(WaitReply::TenantFull { count: int(n)? }),
        (Some("stored_full"), _) => Ok(WaitReply::StoredFull),
        (Some("limited"), [_, rest @ ..]) => Ok(WaitReply::Limited(refusal(rest)?)),
        _ => Err(StoreError::Reply(format!(
            "wait: unexpected reply {items:?}"
        ))),
    }
}

pub struct NotifyArgs<'a> {
    pub partition: &'a Partition,
    pub tenant: &'a TenantName,
    pub event: &'a EventId,
    pub body: &'a [u8],
    /// The notify request's content type as a JSON literal (`"\"text/plain\""` or `null`).
    pub content_type_json: &'a str,
    pub message_id_base: &'a str,
    pub limit: usize,
    pub trace: &'a str,
    /// Checked by the first call of a broadcast only.
    pub rate: Option<&'a RateCheck>,
    /// A request's first call records "nobody_waiting" when it takes nobody.
    pub first_call: bool,
    pub history: HistoryArgs,
    /// The request's body id: the same for every call of one broadcast, so its jobs share
    /// one body key (see [`BODY_INLINE_MAX`]).
    pub body_id: &'a str,
    /// The tenant is at its `stored_bytes` quota: a first call finding nobody waiting
    /// writes nothing (no history entry).
    pub stored_full: bool,
    /// Bytes of waiter records the reply may carry (the rest come as "").
    pub reply_budget: usize,
    /// Microseconds of Redis time after which the call takes no further waiter
    /// (`redis.script_budget_us`; 0: the limit alone bounds it).
    pub time_budget_us: u64,
    /// Where the broadcast's previous call stopped ("0" on its first call; then the
    /// `next` of the previous reply).
    pub cursor: &'a str,
}

/// Bodies of at most this many bytes are kept in each delivery job; a longer body
/// delivered to more than one waiter by one notify call is stored once in a body key
/// of the partition and referenced by its jobs (lua/README.md, "Bodies"). Below it, the
/// body key and its reference (about 200 bytes of key and hash, plus the id in every
/// job) and the count kept on each acknowledgement cost more than the copies save.
pub const BODY_INLINE_MAX: usize = 1024;

pub enum NotifyReply {
    /// The waiters taken, and the cursor of the broadcast's next call (None: done).
    Taken {
        taken: Vec<Taken>,
        next: Option<String>,
    },
    /// Nobody waits and the tenant is at its `stored_bytes` quota; nothing was written.
    StoredFull,
    Limited(RateRefusal),
}

pub async fn notify(conn: &mut Conn, a: &NotifyArgs<'_>) -> Result<NotifyReply, StoreError> {
    let p = a.partition;
    let mut inv = NOTIFY.prepare_invoke();
    inv.key(p.event_waiters(a.tenant, a.event))
        .key(p.deadlines())
        .key(p.deliveries())
        .key(p.waiter_count(a.tenant));
    rate_key(&mut inv, p, a.rate);
    inv.arg(a.tenant.as_str())
        .arg(a.event.as_str())
        .arg(a.body)
        .arg(a.content_type_json)
        .arg(a.message_id_base)
        .arg(a.limit)
        .arg(a.trace);
    rate_args(&mut inv, a.rate);
    inv.key(p.history(a.tenant, a.event))
        .key(p.event_runs(a.tenant, a.event));
    a.history.add(&mut inv);
    inv.arg(if a.first_call { "1" } else { "0" });
    inv.key(p.body(a.body_id))
        .arg(a.body_id)
        .arg(BODY_INLINE_MAX);
    inv.key(p.usage(a.tenant))
        .arg(flag(a.stored_full))
        .arg(a.reply_budget)
        .arg(a.time_budget_us)
        .arg(a.cursor);
    let items = array(invoke(conn, "notify", inv).await?)?;
    if let [Value::BulkString(tag), rest @ ..] = &items[..] {
        if tag.as_slice() == b"limited" {
            return Ok(NotifyReply::Limited(refusal(rest)?));
        }
        if tag.as_slice() == b"stored_full" {
            return Ok(NotifyReply::StoredFull);
        }
    }
    let next = items
        .first()
        .map(text)
        .transpose()?
        .filter(|c| !c.is_empty());
    Ok(NotifyReply::Taken {
        taken: taken_triplets(items.get(1..).unwrap_or(&[]))?,
        next,
    })
}

pub struct NotifyRunArgs<'a> {
    pub partition: &'a Partition,
    pub tenant: &'a TenantName,
    pub event: &'a EventId,
    pub run: &'a RunId,
    /// The notify's idempotency id when the client sent an Idempotency-Key; None keeps
    /// no record (a retry without a key is a new notify anyway).
    pub op_id: Option<&'a str>,
    pub body: &'a [u8],
    pub content_type_json: &'a str,
    pub message_id_base: &'a str,
    pub saved_ttl_ms: u64,
    pub op_ttl_secs: u64,
    pub max_saved: u64,
    pub trace: &'a str,
    pub rate: Option<&'a RateCheck>,
    pub history: HistoryArgs,
    /// Most of the run's waiters taken by this call (`waiters.notify_batch`).
    pub limit: usize,
    /// A request's later call: deliver to the run's waiters left by the first, never save.
    pub more: bool,
    /// The tenant is at its `stored_bytes` quota: nothing is saved.
    pub stored_full: bool,
    /// Bytes of waiter records the reply may carry (the rest come as "").
    pub reply_budget: usize,
    /// Microseconds of Redis time after which the call takes no further waiter
    /// (`redis.script_budget_us`; 0: the limit alone bounds it).
    pub time_budget_us: u64,
    /// The run's tombstone when the script can check it (src/store/tombstones.rs); None:
    /// the caller checks it.
    pub tombstone: Option<&'a str>,
}

#[derive(Debug)]
pub enum NotifyRunReply {
    /// The run's waiters taken, and how many of them are left for a further call.
    Delivered {
        taken: Vec<Taken>,
        remaining: i64,
    },
    Saved {
        message_id: String,
    },
    Cancelled,
    Full {
        count: i64,
    },
    /// Nobody of the run waits and the tenant is at its `stored_bytes` quota.
    StoredFull,
    Limited(RateRefusal),
}

pub async fn notify_run(
    conn: &mut Conn,
    a: &NotifyRunArgs<'_>,
) -> Result<NotifyRunReply, StoreError> {
    let p = a.partition;
    let (op_key, op_ttl_secs) = match a.op_id {
        Some(id) => (p.op(a.tenant, id), a.op_ttl_secs),
        None => (p.no_run(), 0),
    };
    let mut inv = NOTIFY_RUN.prepare_invoke();
    inv.key(p.event_waiters(a.tenant, a.event))
        .key(p.saved(a.tenant, a.run, a.event))
        .key(p.deadlines())
        .key(p.deliveries())
        .key(op_key)
        .key(p.run_events(a.tenant, a.run))
        .key(a.tombstone.map(str::to_owned).unwrap_or_else(|| p.no_run()))
        .key(p.waiter_count(a.tenant));
    rate_key(&mut inv, p, a.rate);
    inv.arg(a.tenant.as_str())
        .arg(a.event.as_str())
        .arg(a.run.as_str())
        .arg(a.body)
        .arg(a.content_type_json)
        .arg(a.message_id_base)
        .arg(a.saved_ttl_ms)
        .arg(op_ttl_secs)
        .arg(a.max_saved)
        .arg(a.trace);
    rate_args(&mut inv, a.rate);
    inv.key(p.history(a.tenant, a.event))
        .key(p.event_runs(a.tenant, a.event));
    a.history.add(&mut inv);
    inv.arg(a.limit).arg(flag(a.more));
    inv.key(p.usage(a.tenant))
        .arg(flag(a.stored_full))
        .arg(a.reply_budget)
        .arg(a.time_budget_us);
    let items = array(invoke(conn, "notify_run", inv).await?)?;
    match (items.first().map(text).transpose()?.as_deref(), &items[..]) {
        (Some("delivered"), [_, remaining, rest @ ..]) => Ok(NotifyRunReply::Delivered {
            taken: taken_triplets(rest)?,
            remaining: int(remaining)?,
        }),
        (Some("saved"), [_, m]) => Ok(NotifyRunReply::Saved {
            message_id: text(m)?,
        }),
        (Some("cancelled"), _) => Ok(NotifyRunReply::Cancelled),
        (Some("full"), [_, n]) => Ok(NotifyRunReply::Full { count: int(n)? }),
        (Some("stored_full"), _) => Ok(NotifyRunReply::StoredFull),
        (Some("limited"), [_, rest @ ..]) => Ok(NotifyRunReply::Limited(refusal(rest)?)),
        _ => Err(StoreError::Reply(format!(
            "notify_run: unexpected reply {items:?}"
        ))),
    }
}

pub struct CancelReply {
    pub waiters: i64,
    pub saved: i64,
    pub remaining_events: Vec<String>,
}

/// Most waiters one `cancel` call removes.
pub const CANCEL_MAX_WAITERS: u64 = 200;
/// Most of a run's events one `cancel` call returns (and so the next call clears).
pub const CANCEL_MAX_EVENTS: u64 = 100;

/// One cancel call on one partition; `events` are the run's events to clear (none on the
/// first call, which lists them). With `tombstone_ttl_ms` (only in the run's home
/// partition, whose `cancelled` key is its tombstone: src/store/tombstones.rs) it sets the
/// tombstone first. Call again with the events returned until none are.
pub async fn cancel(
    conn: &mut Conn,
    partition: &Partition,
    tenant: &TenantName,
    run: &RunId,
    tombstone_ttl_ms: Option<u64>,
    events: &[EventId],
) -> Result<CancelReply, StoreError> {
    let mut inv = CANCEL.prepare_invoke();
    inv.key(partition.run_events(tenant, run))
        .key(partition.deadlines())
        .key(partition.cancelled(tenant, run))
        .key(partition.waiter_count(tenant))
        .key(partition.usage(tenant))
        .arg(tenant.as_str())
        .arg(run.as_str())
        .arg(tombstone_ttl_ms.unwrap_or(0))
        .arg(CANCEL_MAX_WAITERS)
        .arg(CANCEL_MAX_EVENTS);
    for event in events {
        inv.key(partition.event_waiters(tenant, event))
            .key(partition.event_runs(tenant, event))
            .key(partition.saved(tenant, run, event))
            .arg(event.as_str());
    }
    let items = array(invoke(conn, "cancel", inv).await?)?;
    Ok(CancelReply {
        waiters: items.first().map(int).transpose()?.unwrap_or(0),
        saved: items.get(1).map(int).transpose()?.unwrap_or(0),
        remaining_events: items
            .get(2..)
            .unwrap_or(&[])
            .iter()
            .map(text)
            .collect::<Result<_, _>>()?,
    })
}

/// A due waiter proposed to `expire_due`.
pub struct DueCandidate {
    pub member: String,
    pub field: String,
    pub tenant: TenantName,
    pub event: EventId,
}

/// What one `expire_due` call did.
pub struct Expired {
    /// Candidates examined, in order: all of them, or fewer when the time budget was
    /// spent (the rest are still due).
    pub examined: usize,
    /// (member, lateness ms) of each waiter timed out.
    pub fired: Vec<(String, i64)>,
}

/// Times out the candidates that are due by Redis' clock, until `time_budget_us` of
/// Redis time is spent (0: all of them).
pub async fn expire_due(
    conn: &mut Conn,
    partition: &Partition,
    message_id_base: &str,
    candidates: &[DueCandidate],
    history: HistoryArgs,
    time_budget_us: u64,
) -> Result<Expired, StoreError> {
    let mut inv = EXPIRE_DUE.prepare_invoke();
    inv.key(partition.deadlines())
        .key(partition.deliveries())
        .arg(message_id_base);
    history.add(&mut inv);
    inv.arg(time_budget_us);
    for c in candidates {
        inv.key(partition.event_waiters(&c.tenant, &c.event))
            .key(partition.waiter_count(&c.tenant))
            .key(partition.history(&c.tenant, &c.event))
            .key(partition.event_runs(&c.tenant, &c.event))
            .key(partition.usage(&c.tenant))
            .arg(&c.member)
            .arg(&c.field)
            .arg(c.tenant.as_str())
            .arg(c.event.as_str());
    }
    let items = array(invoke(conn, "expire_due", inv).await?)?;
    let Some((examined, pairs)) = items.split_first() else {
        return Err(StoreError::Reply("expire_due: empty reply".into()));
    };
    let fired = pairs
        .chunks(2)
        .map(|c| match c {
            [m, l] => Ok((text(m)?, int(l)?)),
            _ => Err(StoreError::Reply("expire_due replies in pairs".into())),
        })
        .collect::<Result<_, _>>()?;
    Ok(Expired {
        examined: usize::try_from(int(examined)?).unwrap_or(0),
        fired,
    })
}

/// A delivered entry to acknowledge: its id, and the body id it references (None for
/// a body inline in the entry).
#[derive(Debug, Clone)]
pub struct Delivered {
    pub entry_id: String,
    pub body_ref: Option<String>,
}

/// Acknowledges delivered entries (one or more) and releases the bodies they reference;
/// returns how many were still pending.
pub async fn ack(
    conn: &mut Conn,
    partition: &Partition,
    entries: &[Delivered],
) -> Result<i64, StoreError> {
    let mut inv = ACK.prepare_invoke();
    inv.key(partition.deliveries()).arg(GROUP);
    // One KEYS slot per distinct body; KEYS[1] is the stream, so indexes start at 2.
    let mut bodies: Vec<&str> = Vec::new();
    for e in entries {
        let index = match e.body_ref.as_deref() {
            None => 0,
            Some(r) => match bodies.iter().position(|known| *known == r) {
                Some(i) => i + 2,
                None => {
                    bodies.push(r);
                    inv.key(partition.body(r));
                    bodies.len() + 1
                }
            },
        };
        inv.arg(&e.entry_id).arg(index);
    }
    int(&invoke(conn, "ack", inv).await?)
}

pub struct RetryLaterArgs<'a> {
    pub partition: &'a Partition,
    pub entry_id: &'a str,
    pub message_id: &'a str,
    pub job_json: &'a str,
    /// The body inline (empty when `body_ref` names a body key).
    pub body: &'a [u8],
    pub delay_ms: u64,
    /// The body id the entry references (None for a body inline).
    pub body_ref: Option<&'a str>,
}

pub async fn retry_later(conn: &mut Conn, a: &RetryLaterArgs<'_>) -> Result<bool, StoreError> {
    let p = a.partition;
    let mut inv = RETRY_LATER.prepare_invoke();
    inv.key(p.deliveries())
        .key(p.retries())
        .key(p.retry_jobs())
        .arg(GROUP)
        .arg(a.entry_id)
        .arg(a.message_id)
        .arg(a.job_json)
        .arg(if a.body_ref.is_some() { &[] } else { a.body })
        .arg(a.delay_ms)
        .arg(a.body_ref.unwrap_or(""));
    Ok(int(&invoke(conn, "retry_later", inv).await?)? == 1)
}

/// Moves due retries back into the stream: at most `limit`, and none further once
/// `time_budget_us` of Redis time is spent. Returns (moved, more may be due).
pub async fn promote_due(
    conn: &mut Conn,
    partition: &Partition,
    limit: usize,
    time_budget_us: u64,
) -> Result<(i64, bool), StoreError> {
    let mut inv = PROMOTE_DUE.prepare_invoke();
    inv.key(partition.deliveries())
        .key(partition.retries())
        .key(partition.retry_jobs())
        .arg(limit)
        .arg(time_budget_us);
    match &array(invoke(conn, "promote_due", inv).await?)?[..] {
        [moved, more] => Ok((int(moved)?, int(more)? == 1)),
        other => Err(StoreError::Reply(format!(
            "promote_due: unexpected reply {other:?}"
        ))),
    }
}

pub struct DeadLetterArgs<'a> {
    pub partition: &'a Partition,
    pub tenant: &'a TenantName,
    pub entry_id: &'a str,
    pub job_json: &'a str,
    pub body: &'a [u8],
    pub last_status: u16,
    pub last_error: &'a str,
    /// How long the tenant's dead letters are kept (0 = until deleted or sent again).
    pub retention_ms: u64,
    /// The body id the entry references (None for a body inline).
    pub body_ref: Option<&'a str>,
}

/// Returns the dead letter's id, or None when the entry was no longer pending.
pub async fn dead_letter(
    conn: &mut Conn,
    a: &DeadLetterArgs<'_>,
) -> Result<Option<String>, StoreError> {
    let p = a.partition;
    let mut inv = DEAD_LETTER.prepare_invoke();
    inv.key(p.deliveries())
        .key(p.dead_letters(a.tenant))
        .key(body_key(p, a.body_ref))
        .key(p.usage(a.tenant))
        .arg(GROUP)
        .arg(a.entry_id)
        .arg(a.job_json)
        .arg(if a.body_ref.is_some() { &[] } else { a.body })
        .arg(a.last_status)
        .arg(a.last_error)
        .arg(a.retention_ms)
        .arg(a.body_ref.unwrap_or(""));
    match invoke(conn, "dead_letter", inv).await? {
        Value::Nil => Ok(None),
        v => Ok(Some(text(&v)?)),
    }
}

/// An idle pending entry proposed to `reclaim`.
pub struct ReclaimCandidate<'a> {
    pub entry_id: &'a str,
    /// The tenant whose dead letters receive the entry when it is poison; `None` when the
    /// caller saw it below the limit (then it is only ever taken over).
    pub poison_tenant: Option<&'a TenantName>,
    /// The body id a poison entry references (None for a body inline, or not poison).
    pub body_ref: Option<&'a str>,
}

pub struct ReclaimArgs<'a> {
    pub partition: &'a Partition,
    pub consumer: &'a str,
    pub min_idle_ms: u64,
    pub max_deliveries: u32,
    /// Recorded as the last error of a poison dead letter.
    pub note: &'a str,
    /// How long dead letters are kept (0 = until deleted or sent again).
    pub retention_ms: u64,
    pub candidates: &'a [ReclaimCandidate<'a>],
}

#[derive(Debug, Default)]
pub struct ReclaimReply {
    /// Entries now owned by the caller, to be delivered.
    pub claimed: Vec<StreamId>,
    /// (entry id, dead letter id) of the poison entries.
    pub dead: Vec<(String, String)>,
    /// Pending ids whose stream entry had been deleted.
    pub gone: Vec<String>,
}

pub async fn reclaim(conn: &mut Conn, a: &ReclaimArgs<'_>) -> Result<ReclaimReply, StoreError> {
    let p = a.partition;
    let mut inv = RECLAIM.prepare_invoke();
    inv.key(p.deliveries())
        .arg(GROUP)
        .arg(a.consumer)
        .arg(a.min_idle_ms)
        .arg(a.max_deliveries)
        .arg(a.note)
        .arg(a.retention_ms);
    // One KEYS slot per distinct dead-letter or body key; KEYS[1] is the stream, so
    // indexes start at 2.
    let mut declared: Vec<String> = Vec::new();
    let mut index_of = |inv: &mut ScriptInvocation<'_>, key: String| match declared
        .iter()
        .position(|known| *known == key)
    {
        Some(i) => i + 2,
        None => {
            inv.key(&key);
            declared.push(key);
            declared.len() + 1
        }
    };
    for c in a.candidates {
        let index = match c.poison_tenant {
            None => 0,
            Some(t) => {
                // Its tenant's stored bytes follow it (KEYS[index + 1]): declared together.
                let index = index_of(&mut inv, p.dead_letters(t));
                index_of(&mut inv, p.usage(t));
                index
            }
        };
        let body = match (c.poison_tenant, c.body_ref) {
            (Some(_), Some(r)) => index_of(&mut inv, p.body(r)),
            _ => 0,
        };
        inv.arg(c.entry_id).arg(index).arg(body);
    }
    let items = array(invoke(conn, "reclaim", inv).await?)?;
    let [claimed, dead, gone] = <[Value; 3]>::try_from(items)
        .map_err(|items| StoreError::Reply(format!("reclaim: unexpected reply {items:?}")))?;
    let claimed: redis::streams::StreamClaimReply = redis::from_redis_value(claimed)
        .map_err(|e| StoreError::Reply(format!("reclaim: claimed entries: {e}")))?;
    let dead = array(dead)?;
    Ok(ReclaimReply {
        claimed: claimed.ids,
        dead: dead
            .chunks(2)
            .map(|c| match c {
                [entry, letter] => Ok((text(entry)?, text(letter)?)),
                _ => Err(StoreError::Reply(
                    "reclaim: dead letters come in pairs".into(),
                )),
            })
            .collect::<Result<_, _>>()?,
        gone: array(gone)?.iter().map(text).collect::<Result<_, _>>()?,
    })
}

/// Resets the idle time of entries `consumer` read and has not started yet; returns the
/// ids it still owns (the others must not be delivered by it).
pub async fn renew(
    conn: &mut Conn,
    partition: &Partition,
    consumer: &str,
    entry_ids: &[&str],
) -> Result<Vec<String>, StoreError> {
    let mut inv = RENEW.prepare_invoke();
    inv.key(partition.deliveries()).arg(GROUP).arg(consumer);
    for id in entry_ids {
        inv.arg(*id);
    }
    array(invoke(conn, "renew", inv).await?)?
        .iter()
        .map(text)
        .collect()
}

/// The body key a script is passed: the referenced one, or (unused) a key of the partition.
fn body_key(partition: &Partition, body_ref: Option<&str>) -> String {
    match body_ref {
        Some(r) => partition.body(r),
        None => partition.no_run(),
    }
}

/// What [`redrive`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Redriven {
    /// Enqueued again: the new entry id.
    Enqueued(String),
    /// The tenant has no such dead letter (any more).
    NoLetter,
    /// The body key the dead letter references is gone; nothing was written.
    BodyGone,
}

/// Moves a dead letter back into its partition's delivery stream with `job_json` (the
/// letter's job, attempts reset); `body_ref` is the body id the letter references.
pub async fn redrive(
    conn: &mut Conn,
    partition: &Partition,
    tenant: &TenantName,
    dead_letter_id: &str,
    job_json: &str,
    body_ref: Option<&str>,
) -> Result<Redriven, StoreError> {
    let mut inv = REDRIVE.prepare_invoke();
    inv.key(partition.dead_letters(tenant))
        .key(partition.deliveries())
        .key(body_key(partition, body_ref))
        .key(partition.usage(tenant))
        .arg(dead_letter_id)
        .arg(job_json)
        .arg(body_ref.unwrap_or(""));
    match invoke(conn, "redrive", inv).await? {
        Value::Nil => Ok(Redriven::NoLetter),
        Value::Int(0) => Ok(Redriven::BodyGone),
        v => Ok(Redriven::Enqueued(text(&v)?)),
    }
}

/// Deletes a dead letter and releases the body key it references (`body_ref`); false
/// when the dead letter did not exist.
pub async fn delete_dead_letter(
    conn: &mut Conn,
    partition: &Partition,
    tenant: &TenantName,
    dead_letter_id: &str,
    body_ref: Option<&str>,
) -> Result<bool, StoreError> {
    let mut inv = DELETE_DEAD_LETTER.prepare_invoke();
    inv.key(partition.dead_letters(tenant))
        .key(body_key(partition, body_ref))
        .key(partition.usage(tenant))
        .arg(dead_letter_id)
        .arg(body_ref.unwrap_or(""));
    Ok(int(&invoke(conn, "delete_dead_letter", inv).await?)? == 1)
}

/// Appends delivery-attempt entries (oldest first) to an event's history and charges
/// them to the tenant (`lua/history_append.lua`); `usage` is the tenant's usage key of
/// the event's partition.
pub async fn history_append(
    conn: &mut Conn,
    key: &str,
    usage: &str,
    ttl_ms: u64,
    max_entries: usize,
    entries: &[String],
) -> Result<i64, StoreError> {
    let mut inv = HISTORY_APPEND.prepare_invoke();
    inv.key(key).key(usage).arg(ttl_ms).arg(max_entries);
    for e in entries {
        inv.arg(e);
    }
    int(&invoke(conn, "history_append", inv).await?)
}

fn flag(on: bool) -> &'static str {
    if on {
        "1"
    } else {
        "0"
    }
}

/// One page of an event's waiters (`lua/list_waiters.lua`): (field, waiter JSON) pairs
/// and the cursor of the next page (None: complete).
pub async fn list_waiters(
    conn: &mut Conn,
    key: &str,
    cursor: &str,
    max_count: usize,
    max_bytes: usize,
    strict: bool,
) -> Result<(Option<String>, Vec<(String, String)>), StoreError> {
    let mut inv = LIST_WAITERS.prepare_invoke();
    inv.key(key)
        .arg(cursor)
        .arg(max_count)
        .arg(max_bytes)
        .arg(flag(strict));
    let items = array(invoke(conn, "list_waiters", inv).await?)?;
    let mut it = items.iter();
    let next = it.next().map(text).transpose()?.filter(|c| !c.is_empty());
    let rest: Vec<&Value> = it.collect();
    let pairs = rest
        .chunks(2)
        .map(|c| match c {
            [f, w] => Ok((text(f)?, text(w)?)),
            _ => Err(StoreError::Reply("waiters come in pairs".into())),
        })
        .collect::<Result<_, _>>()?;
    Ok((next, pairs))
}

/// Writes a new tenant record (`lua/tenant_create.lua`); false when it existed.
pub async fn tenant_create(
    conn: &mut Conn,
    key: &str,
    fields: &[(&str, &str)],
) -> Result<bool, StoreError> {
    let mut inv = TENANT_CREATE.prepare_invoke();
    inv.key(key);
    for (k, v) in fields {
        inv.arg(*k).arg(*v);
    }
    Ok(int(&invoke(conn, "tenant_create", inv).await?)? == 1)
}

/// Rotates a tenant's signing keys (`lua/rotate_signing_keys.lua`): (current, next)
/// after, None when the tenant does not exist.
pub async fn rotate_signing_keys(
    conn: &mut Conn,
    key: &str,
    new_next: &str,
) -> Result<Option<(String, String)>, StoreError> {
    let mut inv = ROTATE_SIGNING_KEYS.prepare_invoke();
    inv.key(key).arg(new_next);
    let reply = array(invoke(conn, "rotate_signing_keys", inv).await?)?;
    match reply.as_slice() {
        [] => Ok(None),
        [c, n] => Ok(Some((text(c)?, text(n)?))),
        other => Err(StoreError::Reply(format!("rotate replied {other:?}"))),
    }
}
