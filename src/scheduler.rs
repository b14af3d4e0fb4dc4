//! The scheduler: every `scheduler.tick_ms`, in every partition, times out due waiters
//! (`expire_due`) and moves due retries back into the delivery stream (`promote_due`).
//!
//! Any number of workers may run it at once: each script re-checks what it changes, so a
//! waiter times out once and a retry is promoted once. "Due" is decided by Redis TIME, so
//! a pod whose clock is off cannot fire a timeout early or late. The keyspace gauges are
//! sampled on a task of their own, so a slow `SCAN` never delays a timeout.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::domain::random_id;
use crate::store::keys::parse_deadline_member;
use crate::store::scripts::{self, DueCandidate, HistoryArgs};
use crate::store::{Conn, Keys, Partition, RedisPool, StoreError};
use crate::telemetry::metrics;

pub struct Scheduler {
    redis: RedisPool,
    keys: Keys,
    settings: Settings,
    /// Per partition: the candidates the next `expire_due` call is given. A call its
    /// time budget stopped early examined fewer than it was given: the next is given
    /// about what it examined (listing and sending candidates the script leaves costs
    /// both sides, the more so the busier Redis is); a call that examined all grows it
    /// back towards `scheduler.batch`.
    expire_batch: Vec<AtomicUsize>,
}

impl Scheduler {
    pub fn new(redis: RedisPool, keys: Keys, settings: Settings) -> Self {
        let expire_batch = (0..keys.partitions())
            .map(|_| AtomicUsize::new(settings.scheduler.batch))
            .collect();
        Self {
            redis,
            keys,
            settings,
            expire_batch,
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let tick = Duration::from_millis(self.settings.scheduler.tick_ms);
        // The gauges are sampled on a task of their own: a slow SCAN never delays a due
        // timeout.
        let sampler = tokio::spawn(sample_gauges(
            self.redis.clone(),
            self.keys.clone(),
            Duration::from_secs(self.settings.telemetry.gauge_sample_secs.max(1)),
            shutdown.clone(),
        ));
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            match self.tick().await {
                Ok(busy) => {
                    failures = 0;
                    // A full batch means more is due: go again at once.
                    if busy {
                        continue;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(tick) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, "scheduler tick failed");
                    crate::delivery::pause(&shutdown, failures).await;
                }
            }
        }
        sampler.abort();
    }

    /// One pass over all partitions; true when more may be due in some partition (a batch
    /// was full or a script's time budget was spent).
    ///
    /// An idle pass is one round trip: Redis' clock and, per partition, the earliest
    /// deadline and the earliest retry, pipelined (on a cluster: all sent at once). Only partitions with something due by
    /// that clock get further calls (reading whole batches of future deadlines on every
    /// tick cost Redis more than the work itself once many waiters were registered).
    pub async fn tick(&self) -> Result<bool, StoreError> {
        let mut conn = self.redis.get();
        let mut commands = vec![redis::cmd("TIME")];
        for partition in self.keys.all_partitions() {
            for key in [partition.deadlines(), partition.retries()] {
                let mut earliest = redis::cmd("ZRANGE");
                earliest.arg(key).arg(0).arg(0).arg("WITHSCORES");
                commands.push(earliest);
            }
        }
        let replies: Vec<redis::Value> = conn.query_each(commands).await?;
        let mut replies = replies.into_iter();
        let (secs, micros): (u64, u64) = parse(replies.next())?;
        let now_ms = secs * 1000 + micros / 1000;
        let due = |reply: Option<redis::Value>| -> Result<bool, StoreError> {
            let earliest: Vec<(String, f64)> = parse(reply)?;
            Ok(earliest.first().is_some_and(|(_, at)| *at <= now_ms as f64))
        };
        let batch = self.settings.scheduler.batch;
        let budget_us = self.settings.redis.script_budget_us;
        // The partitions with something due are worked on at once (Redis runs their
        // scripts one after the other; the round trips overlap), each on its own clone
        // of the connection.
        let mut work = Vec::new();
        for partition in self.keys.all_partitions() {
            let (deadline_due, retry_due) = (due(replies.next())?, due(replies.next())?);
            if !deadline_due && !retry_due {
                continue;
            }
            let mut conn = conn.clone();
            work.push(async move {
                let mut busy = false;
                if deadline_due {
                    busy |= self.expire(&mut conn, &partition, now_ms).await?;
                }
                if retry_due {
                    let (_, more) =
                        scripts::promote_due(&mut conn, &partition, batch, budget_us).await?;
                    busy |= more;
                }
                Ok::<bool, StoreError>(busy)
            });
        }
        let busy = futures_util::future::try_join_all(work).await?;
        Ok(busy.into_iter().any(|b| b))
    }

    /// Times out the waiters of a partition due by `now_ms` (Redis' clock); true when more
    /// may be due (a whole batch was, or the script's time budget left some).
    async fn expire(
        &self,
        conn: &mut Conn,
        partition: &Partition,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let batch = self.settings.scheduler.batch;
        let sized = &self.expire_batch[usize::from(partition.index)];
        let given = sized.load(Ordering::Relaxed).clamp(1, batch);
        let due: Vec<String> = redis::cmd("ZRANGE")
            .arg(partition.deadlines())
            .arg("-inf")
            .arg(now_ms)
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(given)
            .query_async(conn)
            .await?;
        let candidates: Vec<DueCandidate> = due
            .into_iter()
            .filter_map(|member| {
                let (tenant, field, event) = parse_deadline_member(&member)?;
                Some(DueCandidate {
                    member,
                    field,
                    tenant,
                    event,
                })
            })
            .collect();
        if candidates.is_empty() {
            return Ok(false);
        }
        // The script continues each registration's trace into its timeout delivery and
        // writes the "timed_out" history entries.
        let base = format!("msg_{}_t", random_id(20));
        let history = HistoryArgs::from_settings(&self.settings.history);
        let expired = scripts::expire_due(
            conn,
            partition,
            &base,
            &candidates,
            history,
            self.settings.redis.script_budget_us,
        )
        .await?;
        for (member, lateness_ms) in &expired.fired {
            tracing::debug!(partition = partition.index, member = %member, lateness_ms, "waiter timed out");
            metrics::timed_out(*lateness_ms);
        }
        let stopped = expired.examined < candidates.len();
        sized.store(
            if stopped {
                expired.examined + expired.examined / 4 + 1
            } else {
                given * 2
            }
            .clamp(1, batch),
            Ordering::Relaxed,
        );
        Ok(candidates.len() >= given || stopped)
    }
}

fn parse<T: redis::FromRedisValue>(reply: Option<redis::Value>) -> Result<T, StoreError> {
    let reply =
        reply.ok_or_else(|| StoreError::Reply("scheduler pipeline: too few replies".into()))?;
    redis::from_redis_value(reply)
        .map_err(|e| StoreError::Reply(format!("scheduler pipeline: {e}")))
}

/// Samples the keyspace gauges (saved notifications, stored bytes) every `every` until
/// `shutdown`. On a cluster with a master that does not answer, a round is skipped: its
/// `SCAN` of every master would only ask the client library to repair that node again.
async fn sample_gauges(redis: RedisPool, keys: Keys, every: Duration, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        let mut conn = redis.get();
        if conn.degraded() {
            tracing::debug!("a cluster master does not answer; the gauges wait for the next round");
        } else {
            if let Err(e) = metrics::sample_partitions(&mut conn, &keys).await {
                tracing::debug!(error = %e, "sampling the partition gauges failed");
            }
            match crate::store::usage::per_partition(&mut conn, &keys).await {
                Ok(Some(sums)) => metrics::stored_bytes(&sums),
                Ok(None) => tracing::debug!("keyspace too large to count stored bytes this time"),
                Err(e) => tracing::debug!(error = %e, "counting the stored bytes failed"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}
