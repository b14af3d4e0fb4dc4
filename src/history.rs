//! Event history: the recent outcomes of one event of one tenant, so "why did my run not
//! resume?" has an answer — the waiter was registered (or not), a notify reached it (or
//! found nobody waiting, or was saved), its delivery landed with status 200, failed and
//! was retried, was dead-lettered, or the waiter timed out.
//!
//! Entries go to a list per (tenant, event) in the event's partition, newest first, kept
//! at least `history.ttl_secs` after the last entry (until the end of its usage bucket,
//! `lua/shared/usage.lua`) and capped at `history.max_entries` (LPUSH + LTRIM +
//! PEXPIREAT, charged to the tenant's stored bytes). Consumed, notified, nobody waiting, saved and timed out are
//! written by the operation's own script, in the same step as the state change
//! (`add_history` in `lua/shared/delivery.lua`). A waiter's registration is written when
//! it stops waiting (notified or timed out), as the waiter itself (`<field>\n<JSON>`);
//! while it waits, the waiter in its event hash is the record; [`read`] shows either as
//! the same "registered" entry. So an idle waiter costs no history list (with one waiter
//! per event, the list had cost more Redis memory than the waiter). Delivery attempts are
//! recorded from Rust through a [`Recorder`], which writes in the background
//! (`lua/history_append.lua`, many events per round trip), a few milliseconds after the outcome; entries it still
//! holds when a process is killed (not stopped) are lost. Writing history is best effort:
//! a failure is logged and never fails the delivery it describes.

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::HistorySettings;
use crate::domain::{EventId, TenantName};
use crate::store::{Conn, Keys, RedisPool, StoreError};
use crate::waiter::Waiter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A waiter was registered (`POST /v2/wait`).
    Registered,
    /// A wait consumed a saved lookback notification; its delivery is enqueued.
    Consumed,
    /// A notify took the waiter; its delivery is enqueued.
    Notified,
    /// A broadcast notify found nobody waiting (the event is not kept).
    NobodyWaiting,
    /// A lookback notify found the run not waiting yet: saved for its next wait.
    Saved,
    /// The waiter's deadline passed: its timeout delivery is enqueued.
    TimedOut,
    /// A delivery attempt got a 2xx.
    Delivered,
    /// A delivery attempt failed; another is scheduled.
    AttemptFailed,
    /// The delivery is in the dead letters (out of attempts, or refused for good).
    DeadLettered,
}

/// One history entry. Optional fields are left out when they do not apply.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// When it happened, unix milliseconds.
    pub at: i64,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiter_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Where the delivery goes (the waiter's url, or its timeoutUrl for timeouts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// HTTP status of a delivery attempt (0: no response).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Attempts made so far (1 for the first attempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Unix seconds: a registered waiter's deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<i64>,
}

impl Entry {
    pub fn new(outcome: Outcome) -> Self {
        Self {
            at: now_ms(),
            outcome,
            waiter_id: None,
            workflow_run_id: None,
            message_id: None,
            url: None,
            status: None,
            attempt: None,
            error: None,
            deadline: None,
        }
    }

    /// The waiter's id, run id and the url its delivery goes to.
    pub fn waiter(mut self, waiter: &Waiter, timeout: bool) -> Self {
        self.waiter_id = Some(waiter.id.clone());
        self.workflow_run_id = waiter.run_id.clone();
        self.url = Some(if timeout {
            waiter.timeout_url().to_owned()
        } else {
            waiter.url.clone()
        });
        self
    }

    pub fn message(mut self, message_id: &str) -> Self {
        self.message_id = Some(message_id.to_owned());
        self
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Entries handed to a [`Recorder`] and not yet written, at most (events); beyond, new
/// ones are dropped and counted (`herald_history_dropped_total`).
const QUEUE: usize = 65_536;
/// Events written by one round trip, at most.
const BATCH: usize = 512;

/// Appends history entries in the background. Callers hand entries over without waiting;
/// one writer task sends whatever gathered meanwhile in one round trip (one per partition
/// on Redis Cluster, all at once). So a request or a delivery pays no round trip for its
/// history, and a busy process writes many events' entries per round trip.
#[derive(Clone)]
pub struct Recorder {
    /// None when history is disabled.
    queue: Option<mpsc::Sender<Pending>>,
    keys: Keys,
    settings: HistorySettings,
}

/// The writer task of a [`Recorder`]; [`RecorderTask::finish`] ends it.
pub struct RecorderTask {
    closing: CancellationToken,
    handle: Option<tokio::task::JoinHandle<()>>,
}

/// One event's new entries (encoded, oldest first).
struct Pending {
    key: String,
    usage: String,
    entries: Vec<String>,
}

impl Recorder {
    /// The recorder and its writer task (none when history is disabled).
    pub fn start(redis: RedisPool, keys: Keys, settings: HistorySettings) -> (Self, RecorderTask) {
        let closing = CancellationToken::new();
        if settings.ttl_secs == 0 || settings.max_entries == 0 {
            let recorder = Self {
                queue: None,
                keys,
                settings,
            };
            let task = RecorderTask {
                closing,
                handle: None,
            };
            return (recorder, task);
        }
        let (queue, pending) = mpsc::channel(QUEUE);
        let handle = tokio::spawn(write_loop(
            redis,
            settings.clone(),
            pending,
            closing.clone(),
        ));
        let recorder = Self {
            queue: Some(queue),
            keys,
            settings,
        };
        let task = RecorderTask {
            closing,
            handle: Some(handle),
        };
        (recorder, task)
    }

    /// Appends entries (oldest first) to the event's history, soon.
    pub fn record(&self, tenant: &TenantName, event: &EventId, entries: &[Entry]) {
        let Some(queue) = &self.queue else { return };
        if entries.is_empty() {
            return;
        }
        // Only the newest max_entries can survive the trim: send no more than those.
        let skip = entries.len().saturating_sub(self.settings.max_entries);
        let partition = self.keys.partition_of(tenant, event);
        let pending = Pending {
            key: partition.history(tenant, event),
            usage: partition.usage(tenant),
            entries: entries[skip..]
                .iter()
                .filter_map(|e| serde_json::to_string(e).ok())
                .collect(),
        };
        if queue.try_send(pending).is_err() {
            crate::telemetry::metrics::history_dropped();
            tracing::debug!(tenant = %tenant, event_id = %event, "history queue full; entries dropped");
        }
    }
}

impl RecorderTask {
    /// Writes what is queued, then ends. Call it once nothing records any more.
    pub async fn finish(mut self) {
        self.closing.cancel();
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
    }
}

async fn write_loop(
    redis: RedisPool,
    settings: HistorySettings,
    mut pending: mpsc::Receiver<Pending>,
    closing: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            biased;
            first = pending.recv() => first,
            _ = closing.cancelled() => None,
        };
        let mut batch: Vec<Pending> = first.into_iter().collect();
        while batch.len() < BATCH {
            match pending.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            return; // closing (or every sender gone) and nothing left
        }
        write(&mut redis.get(), &settings, batch).await;
    }
}

/// Appends every event's entries of `batch` (`lua/history_append.lua`, which charges them
/// to the tenant's stored bytes): all calls in flight at once, pipelined on the
/// connection.
async fn write(conn: &mut Conn, settings: &HistorySettings, batch: Vec<Pending>) {
    let ttl_ms = settings.ttl_secs.saturating_mul(1000);
    let writes = batch.into_iter().map(|item| {
        let mut conn = conn.clone();
        async move {
            crate::store::scripts::history_append(
                &mut conn,
                &item.key,
                &item.usage,
                ttl_ms,
                settings.max_entries,
                &item.entries,
            )
            .await
        }
    });
    for written in futures_util::future::join_all(writes).await {
        if let Err(e) = written {
            tracing::warn!(error = %e, "could not record event history");
        }
    }
}

/// Waiters of the event read to show their "registered" entries, at most (one HSCAN
/// page: an event with more waiters shows some of them).
const WAITING_SHOWN: usize = 1000;

/// The newest `limit` entries, newest first (by their time). Entries that do not decode
/// are skipped. The event's current waiters are shown as their "registered" entries,
/// made from the waiter itself: a waiter's entry is written to the list only when it
/// stops waiting (see `registered_entry` in `lua/shared/delivery.lua`).
pub async fn read(
    conn: &mut Conn,
    keys: &Keys,
    tenant: &TenantName,
    event: &EventId,
    limit: usize,
) -> Result<Vec<Entry>, StoreError> {
    let partition = keys.partition_of(tenant, event);
    // Both keys are in the event's partition (one slot): one pipeline on every topology.
    type ScanPage = (String, Vec<(String, String)>);
    let (raw, (_, waiting)): (Vec<String>, ScanPage) = redis::pipe()
        .cmd("LRANGE")
        .arg(partition.history(tenant, event))
        .arg(0)
        .arg(limit.max(1) as i64 - 1)
        .cmd("HSCAN")
        .arg(partition.event_waiters(tenant, event))
        .arg(0)
        .arg("COUNT")
        .arg(WAITING_SHOWN)
        .query_async(conn)
        .await?;
    // The waiting ones first: within one millisecond, a registration that is still
    // waiting is newer than what the list holds (the stable sort keeps that order).
    let mut entries: Vec<Entry> = waiting
        .iter()
        .filter_map(|(field, json)| registered(field, json))
        .chain(raw.iter().filter_map(|r| decode(r)))
        .collect();
    // API and worker processes append concurrently: show them in time order.
    entries.sort_by_key(|e| std::cmp::Reverse(e.at));
    entries.truncate(limit.max(1));
    Ok(entries)
}

/// One list element: an entry's JSON, or a waiter's "registered" record as the scripts
/// write it when it stops waiting, `<hash field>\n<waiter JSON>`.
fn decode(raw: &str) -> Option<Entry> {
    if raw.starts_with('{') {
        return serde_json::from_str(raw).ok();
    }
    let (field, json) = raw.split_once('\n')?;
    registered(field, json)
}

/// A waiter's "registered" entry, made from its hash field and stored JSON.
fn registered(field: &str, json: &str) -> Option<Entry> {
    let waiter = Waiter::from_stored(field, json).ok()?;
    let mut entry = Entry::new(Outcome::Registered).waiter(&waiter, false);
    entry.at = waiter.created_at;
    entry.deadline = Some(waiter.deadline);
    Some(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_leave_out_what_does_not_apply() {
        let mut entry = Entry::new(Outcome::AttemptFailed).message("msg_1");
        entry.status = Some(503);
        entry.attempt = Some(1);
        let json = serde_json::to_value(&entry).unwrap();
        assert_eq!(json["outcome"], "attempt_failed");
        assert_eq!(json["messageId"], "msg_1");
        assert_eq!(json["status"], 503);
        assert!(json.get("waiterId").is_none() && json.get("error").is_none());
        let back: Entry = serde_json::from_value(json).unwrap();
        assert_eq!(back.outcome, Outcome::AttemptFailed);
    }
}
