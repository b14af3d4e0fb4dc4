//! Prometheus metrics, served as text at `/metrics`.
//!
//! Call sites use the small functions here (one line each), so metric names and labels
//! are defined in one place. Labels are bounded: route patterns (never raw paths),
//! methods, status codes, outcomes, and partition numbers (at most `redis.partitions`);
//! never event ids, run ids, tenants or URLs.
//!
//! The recorder is process-wide (the `metrics` facade has one global recorder), so
//! several Herald instances in one process (tests) share it.

use std::sync::OnceLock;
use std::time::Duration;

use ::metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::store::{Conn, Keys, Partition, StoreError};

/// Latency buckets in seconds: 1 ms to 1 day (deliveries can be retried for a day).
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 1800.0, 3600.0, 21600.0, 86400.0,
];
/// Fan-out buckets: waiters reached by one notify.
const FANOUT_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0, 100000.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process' recorder, installed on first use.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("herald_notify_fanout_waiters".into()),
                    FANOUT_BUCKETS,
                )
            })
            .expect("bucket lists are not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if ::metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics stays empty");
        }
        describe();
        handle
    })
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    let handle = handle();
    handle.run_upkeep();
    handle.render()
}

fn describe() {
    describe_counter!(
        "herald_http_requests_total",
        "HTTP requests answered, by method, route pattern and status."
    );
    describe_histogram!(
        "herald_http_request_duration_seconds",
        "Time to answer an HTTP request, by method and route pattern."
    );
    describe_counter!(
        "herald_waits_total",
        "Wait requests by outcome: waiting (registered) or consumed (a saved notification)."
    );
    describe_counter!(
        "herald_notifies_total",
        "Notify requests by outcome: delivered (waiters taken), saved (lookback) or nobody_waiting."
    );
    describe_histogram!(
        "herald_notify_fanout_waiters",
        "Waiters one notify reached."
    );
    describe_counter!(
        "herald_history_dropped_total",
        "Event history entries dropped because the history writer's queue was full."
    );
    describe_gauge!(
        "herald_waiters",
        "Registered waiters (deadline set size), by partition; sampled by the scheduler."
    );
    describe_gauge!(
        "herald_saved_notifications",
        "Saved lookback notifications, by partition; sampled by the scheduler."
    );
    describe_gauge!(
        "herald_stored_bytes",
        "Bytes all tenants keep stored (the stored_bytes accounts), by partition; sampled by the scheduler."
    );
    describe_counter!(
        "herald_stored_bytes_refused_total",
        "Writes refused because their tenant is at its stored_bytes quota."
    );
    describe_gauge!(
        "herald_stream_length",
        "Entries in the delivery stream, by partition."
    );
    describe_gauge!(
        "herald_stream_pending",
        "Delivery entries handed to a worker and not yet finished, by partition."
    );
    describe_gauge!(
        "herald_stream_lag",
        "Delivery entries not yet read by any worker (consumer group lag), by partition."
    );
    describe_gauge!(
        "herald_delivery_retries_scheduled",
        "Deliveries waiting for their next attempt, by partition."
    );
    describe_counter!(
        "herald_delivery_attempts_total",
        "Delivery attempts by kind (event, timeout) and outcome (delivered, failed, unreachable, refused)."
    );
    describe_histogram!(
        "herald_delivery_attempt_duration_seconds",
        "Time of one delivery attempt (connect, send, response), by outcome."
    );
    describe_histogram!(
        "herald_notify_to_delivery_seconds",
        "From the outcome (notify, or the deadline for timeouts) to the 2xx of its delivery, by kind."
    );
    describe_counter!("herald_timeouts_total", "Waiters timed out.");
    describe_histogram!(
        "herald_timeout_lateness_seconds",
        "How late a timeout fired: fired time minus deadline (Redis clock)."
    );
    describe_counter!(
        "herald_dead_letters_total",
        "Deliveries dead-lettered, by reason: exhausted (out of attempts) or refused (non-retryable)."
    );
    describe_counter!(
        "herald_redis_errors_total",
        "Redis command failures, by kind: unavailable (connection, timeout, OOM, …) or error."
    );
    describe_counter!(
        "herald_redis_resent_total",
        "Redis commands sent again on a new connection because their connection had closed before they were written."
    );
    describe_counter!(
        "herald_redis_connection_replaced_total",
        "Redis Cluster connections replaced because they stopped answering or the cluster's masters changed."
    );
}

/// The method as a label: HTTP allows any token as a method, so anything but the
/// standard ones is `OTHER` (a client must not be able to mint label values).
fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT",
    ];
    KNOWN.into_iter().find(|m| *m == method).unwrap_or("OTHER")
}

/// `route` is the matched pattern (or `unmatched`), never the raw path.
pub fn http_request(method: &str, route: &str, status: u16, elapsed: Duration) {
    let (method, route) = (method_label(method), route.to_owned());
    counter!("herald_http_requests_total", "method" => method, "route" => route.clone(), "status" => status.to_string())
        .increment(1);
    histogram!("herald_http_request_duration_seconds", "method" => method, "route" => route)
        .record(elapsed.as_secs_f64());
}

/// A wait registered a waiter (`consumed == false`) or consumed a saved notification.
pub fn wait(consumed: bool) {
    let outcome = if consumed { "consumed" } else { "waiting" };
    counter!("herald_waits_total", "outcome" => outcome).increment(1);
}

#[derive(Debug, Clone, Copy)]
pub enum NotifyOutcome {
    Delivered,
    Saved,
    NobodyWaiting,
}

pub fn notify(outcome: NotifyOutcome, waiters: usize) {
    let outcome = match outcome {
        NotifyOutcome::Delivered => "delivered",
        NotifyOutcome::Saved => "saved",
        NotifyOutcome::NobodyWaiting => "nobody_waiting",
    };
    counter!("herald_notifies_total", "outcome" => outcome).increment(1);
    histogram!("herald_notify_fanout_waiters").record(waiters as f64);
}

/// One delivery attempt: `kind` event/timeout, `outcome` delivered/failed/unreachable/refused.
pub fn delivery_attempt(kind: &'static str, outcome: &'static str, elapsed: Duration) {
    counter!("herald_delivery_attempts_total", "kind" => kind, "outcome" => outcome).increment(1);
    histogram!("herald_delivery_attempt_duration_seconds", "outcome" => outcome)
        .record(elapsed.as_secs_f64());
}

/// A delivery landed `latency_ms` after its outcome happened.
pub fn notify_to_delivery(kind: &'static str, latency_ms: i64) {
    histogram!("herald_notify_to_delivery_seconds", "kind" => kind)
        .record(latency_ms.max(0) as f64 / 1000.0);
}

pub fn timed_out(lateness_ms: i64) {
    counter!("herald_timeouts_total").increment(1);
    histogram!("herald_timeout_lateness_seconds").record(lateness_ms.max(0) as f64 / 1000.0);
}

/// `refused`: dead-lettered at once (non-retryable); otherwise out of attempts.
pub fn dead_lettered(refused: bool) {
    let reason = if refused { "refused" } else { "exhausted" };
    counter!("herald_dead_letters_total", "reason" => reason).increment(1);
}

/// History entries dropped because the writer's queue was full.
pub fn history_dropped() {
    counter!("herald_history_dropped_total").increment(1);
}

pub fn redis_error(unavailable: bool) {
    let kind = if unavailable { "unavailable" } else { "error" };
    counter!("herald_redis_errors_total", "kind" => kind).increment(1);
}

/// A command sent again on a new connection: its own had closed before it was written.
pub fn redis_resent() {
    counter!("herald_redis_resent_total").increment(1);
}

/// The cluster connection was replaced by a fresh one (store/cluster.rs).
pub fn redis_connection_replaced() {
    counter!("herald_redis_connection_replaced_total").increment(1);
}

/// Sets `herald_stored_bytes`: every tenant's stored bytes, per partition (index).
pub fn stored_bytes(per_partition: &[u64]) {
    for (index, bytes) in per_partition.iter().enumerate() {
        gauge!("herald_stored_bytes", "partition" => index.to_string()).set(*bytes as f64);
    }
}

/// A write refused because its tenant is at its `stored_bytes` quota.
pub fn stored_bytes_refused() {
    counter!("herald_stored_bytes_refused_total").increment(1);
}

/// Most keys examined by one sample of the saved notifications (SCAN is O(keyspace)).
const SAVED_SCAN_LIMIT: usize = 100_000;

/// Samples the per-partition gauges: waiters (ZCARD of the deadline set), stream length,
/// pending and lag (XINFO GROUPS), scheduled retries; and the saved notifications (SCAN of
/// the saved lists on every node).
pub async fn sample_partitions(conn: &mut Conn, keys: &Keys) -> Result<(), StoreError> {
    for partition in keys.all_partitions() {
        sample_partition(conn, &partition).await?;
    }
    sample_saved(conn, keys).await
}

async fn sample_partition(conn: &mut Conn, partition: &Partition) -> Result<(), StoreError> {
    let (waiters, length, retries, groups): (u64, u64, u64, redis::Value) = redis::pipe()
        .cmd("ZCARD")
        .arg(partition.deadlines())
        .cmd("XLEN")
        .arg(partition.deliveries())
        .cmd("ZCARD")
        .arg(partition.retries())
        .cmd("XINFO")
        .arg("GROUPS")
        .arg(partition.deliveries())
        .query_async(conn)
        .await?;
    let label = partition.index.to_string();
    gauge!("herald_waiters", "partition" => label.clone()).set(waiters as f64);
    gauge!("herald_stream_length", "partition" => label.clone()).set(length as f64);
    gauge!("herald_delivery_retries_scheduled", "partition" => label.clone()).set(retries as f64);
    if let Some((pending, lag)) = group_counts(&groups) {
        gauge!("herald_stream_pending", "partition" => label.clone()).set(pending as f64);
        if let Some(lag) = lag {
            gauge!("herald_stream_lag", "partition" => label).set(lag as f64);
        }
    }
    Ok(())
}

/// `pending` and `lag` of the `herald` group in an XINFO GROUPS reply (lag is nil when
/// Redis cannot tell, e.g. after entries were deleted).
fn group_counts(reply: &redis::Value) -> Option<(i64, Option<i64>)> {
    let redis::Value::Array(groups) = reply else {
        return None;
    };
    for group in groups {
        let fields: Vec<(String, redis::Value)> = match group {
            redis::Value::Array(items) => items
                .chunks(2)
                .filter_map(|c| match c {
                    [k, v] => redis::from_redis_value_ref::<String>(k)
                        .ok()
                        .map(|k| (k, v.clone())),
                    _ => None,
                })
                .collect(),
            redis::Value::Map(items) => items
                .iter()
                .filter_map(|(k, v)| {
                    redis::from_redis_value_ref::<String>(k)
                        .ok()
                        .map(|k| (k, v.clone()))
                })
                .collect(),
            _ => continue,
        };
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| redis::from_redis_value_ref::<i64>(v).ok())
        };
        let is_ours = fields.iter().any(|(k, v)| {
            k == "name"
                && redis::from_redis_value_ref::<String>(v).is_ok_and(|n| n == crate::store::GROUP)
        });
        if is_ours {
            return Some((get("pending").unwrap_or(0), get("lag")));
        }
    }
    None
}

async fn sample_saved(conn: &mut Conn, keys: &Keys) -> Result<(), StoreError> {
    let Some(found) = conn
        .scan_keys(&keys.saved_pattern(), Some(SAVED_SCAN_LIMIT))
        .await?
    else {
        // A partial count would be wrong; keep the previous sample.
        tracing::debug!("keyspace too large to count saved notifications this time");
        return Ok(());
    };
    let mut per_partition = vec![0u64; keys.partitions() as usize];
    count_saved(conn, keys, &found, &mut per_partition).await?;
    for (index, count) in per_partition.into_iter().enumerate() {
        gauge!("herald_saved_notifications", "partition" => index.to_string()).set(count as f64);
    }
    Ok(())
}

/// Adds the lengths of the saved lists `found` to their partitions' counts. On a cluster
/// every pipeline stays in one partition's slot.
async fn count_saved(
    conn: &mut Conn,
    keys: &Keys,
    found: &[String],
    per_partition: &mut [u64],
) -> Result<(), StoreError> {
    for (partition, keys_of_partition) in keys.by_partition(found) {
        let mut pipe = redis::pipe();
        for key in &keys_of_partition {
            pipe.cmd("LLEN").arg(*key);
        }
        let lengths: Vec<u64> = pipe.query_async(conn).await?;
        if let Some(slot) = per_partition.get_mut(partition as usize) {
            *slot += lengths.iter().sum::<u64>();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_the_standard_ones_share_one_label() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("DELETE"), "DELETE");
        assert_eq!(method_label("FROB123"), "OTHER");
        assert_eq!(method_label("get"), "OTHER");
    }

    #[test]
    fn group_counts_reads_resp2_arrays() {
        use redis::Value::{Array, BulkString, Int, Nil};
        let s = |t: &str| BulkString(t.as_bytes().to_vec());
        let reply = Array(vec![Array(vec![
            s("name"),
            s("herald"),
            s("consumers"),
            Int(1),
            s("pending"),
            Int(3),
            s("last-delivered-id"),
            s("1-0"),
            s("entries-read"),
            Int(5),
            s("lag"),
            Int(2),
        ])]);
        assert_eq!(group_counts(&reply), Some((3, Some(2))));
        let no_lag = Array(vec![Array(vec![
            s("name"),
            s("herald"),
            s("pending"),
            Int(0),
            s("lag"),
            Nil,
        ])]);
        assert_eq!(group_counts(&no_lag), Some((0, None)));
        assert_eq!(group_counts(&Array(vec![])), None);
    }
}
