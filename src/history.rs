//! Event history: the recent outcomes of one event of one tenant, so "why did my run not
//! resume?" has an answer — the waiter was registered (or not), a notify reached it (or
//! found nobody waiting, or was saved), its delivery landed with status 200, failed and
//! was retried, was dead-lettered, or the waiter timed out.
//!
//! Entries are appended from Rust after each outcome (LPUSH + LTRIM + PEXPIRE in one
//! pipeline) to a list per (tenant, event) in the event's partition, newest first, kept
//! `history.ttl_secs` after the last entry and capped at `history.max_entries`. Writing
//! history is best effort: a failure is logged and never fails the request or delivery
//! it describes (the state change is already done).

use serde::{Deserialize, Serialize};

use crate::config::HistorySettings;
use crate::domain::{EventId, TenantName};
use crate::store::{Conn, Keys, StoreError};

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
    pub fn waiter(mut self, waiter: &crate::waiter::Waiter, timeout: bool) -> Self {
        self.waiter_id = Some(waiter.id.clone());
        self.workflow_run_id = waiter.run_id.clone();
        self.url = Some(if timeout {
            waiter.timeout_url.clone()
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

/// Appends entries (oldest first) to the event's history; logs and swallows failures.
pub async fn record(
    conn: &mut Conn,
    keys: &Keys,
    settings: &HistorySettings,
    tenant: &TenantName,
    event: &EventId,
    entries: &[Entry],
) {
    let mut pipe = redis::pipe();
    if add(&mut pipe, keys, settings, tenant, event, entries) {
        write(conn, pipe).await;
    }
}

/// Appends one entry to each of several events' histories, in one round trip.
pub async fn record_each(
    conn: &mut Conn,
    keys: &Keys,
    settings: &HistorySettings,
    items: &[(&TenantName, &EventId, Entry)],
) {
    let mut pipe = redis::pipe();
    let mut any = false;
    for (tenant, event, entry) in items {
        any |= add(
            &mut pipe,
            keys,
            settings,
            tenant,
            event,
            std::slice::from_ref(entry),
        );
    }
    if any {
        write(conn, pipe).await;
    }
}

/// Adds LPUSH + LTRIM + PEXPIRE of the event's history to `pipe`; false when nothing is
/// to be written (history disabled, no entries).
fn add(
    pipe: &mut redis::Pipeline,
    keys: &Keys,
    settings: &HistorySettings,
    tenant: &TenantName,
    event: &EventId,
    entries: &[Entry],
) -> bool {
    if settings.ttl_secs == 0 || settings.max_entries == 0 || entries.is_empty() {
        return false;
    }
    // Only the newest max_entries can survive the trim: push no more than those.
    let skip = entries.len().saturating_sub(settings.max_entries);
    let encoded: Vec<String> = entries[skip..]
        .iter()
        .filter_map(|e| serde_json::to_string(e).ok())
        .collect();
    let key = keys.partition_of(tenant, event).history(tenant, event);
    pipe.cmd("LPUSH")
        .arg(&key)
        .arg(&encoded)
        .ignore()
        .cmd("LTRIM")
        .arg(&key)
        .arg(0)
        .arg(settings.max_entries as i64 - 1)
        .ignore()
        .cmd("PEXPIRE")
        .arg(&key)
        .arg(settings.ttl_secs.saturating_mul(1000))
        .ignore();
    true
}

async fn write(conn: &mut Conn, pipe: redis::Pipeline) {
    let written: Result<(), StoreError> =
        pipe.query_async::<()>(conn).await.map_err(StoreError::from);
    if let Err(e) = written {
        tracing::warn!(error = %e, "could not record event history");
    }
}

/// The newest `limit` entries, newest first (by their time). Entries that do not decode
/// are skipped.
pub async fn read(
    conn: &mut Conn,
    keys: &Keys,
    tenant: &TenantName,
    event: &EventId,
    limit: usize,
) -> Result<Vec<Entry>, StoreError> {
    let key = keys.partition_of(tenant, event).history(tenant, event);
    let raw: Vec<String> = redis::cmd("LRANGE")
        .arg(&key)
        .arg(0)
        .arg(limit.max(1) as i64 - 1)
        .query_async(conn)
        .await?;
    let mut entries: Vec<Entry> = raw
        .iter()
        .filter_map(|r| serde_json::from_str(r).ok())
        .collect();
    // API and worker processes append concurrently: show them in time order.
    entries.sort_by_key(|e| std::cmp::Reverse(e.at));
    Ok(entries)
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
