//! Delivery workers: one reader task per partition stream (consumer group `herald`, each
//! on its own connection), a bounded number of concurrent HTTP attempts, and the outcome
//! of each attempt written back by one script: `ack` (2xx; many entries per call),
//! `retry_later` (a new scheduled attempt), or `dead_letter` (out of attempts, or refused
//! for good).
//!
//! At-least-once: an entry leaves the pending list only through one of those scripts.
//! A worker that dies mid-attempt leaves its entries pending; any worker takes them over
//! (`reclaim`) once they are idle for `delivery.reclaim_idle_secs`, unless they were
//! already handed out `delivery.max_deliveries` times: then they are dead-lettered.
//!
//! Fairness: besides the worker-wide bound (`delivery.concurrency`), each tenant holds at
//! most `delivery.tenant_concurrency` attempts of a worker ([`fairness`]).

pub mod fairness;
pub mod http;
pub mod ip_policy;
mod record;
pub mod retry;
pub mod signing;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::streams::{
    StreamId, StreamPendingCountReply, StreamRangeReply, StreamReadOptions, StreamReadReply,
};
use redis::AsyncCommands;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use self::fairness::{defer_delay, TenantSlots};
use self::http::{Attempt, Sender};
use crate::config::Settings;
use crate::domain::TenantName;
use crate::history::Recorder;
use crate::store::scripts::{
    self, DeadLetterArgs, Delivered, ReclaimArgs, ReclaimCandidate, RetryLaterArgs,
};
use crate::store::{tenants, Conn, Keys, Partition, RedisPool, StoreError, GROUP};
use crate::waiter::Job;

/// How long a tenant's signing key is cached by a worker.
const SIGNING_KEY_TTL: Duration = Duration::from_secs(5);

/// Most entries acknowledged by one `ack` call.
const ACK_BATCH: usize = 256;

/// Bodies stored once (body keys) a worker keeps after reading them: the deliveries of one
/// broadcast arrive together, and a body key's body never changes (its id is never reused).
const BODY_CACHE: usize = 8;

pub struct Deliverer {
    pub(crate) redis: RedisPool,
    pub(crate) keys: Keys,
    pub(crate) settings: Settings,
    pub(crate) history: Recorder,
    sender: Sender,
    /// Bounds concurrent attempts of this process.
    slots: Arc<Semaphore>,
    /// Bounds concurrent attempts of this process per tenant.
    tenant_slots: TenantSlots,
    consumer: String,
    signing_keys: Mutex<HashMap<String, (String, Instant)>>,
    tasks: TaskTracker,
    /// Per partition, entries delivered (2xx) and not yet acknowledged.
    acks: Vec<mpsc::UnboundedSender<Delivered>>,
    ack_queues: Mutex<Vec<mpsc::UnboundedReceiver<Delivered>>>,
    /// Bodies read from body keys, most recent last (key, body).
    bodies: Mutex<VecDeque<(String, Arc<Vec<u8>>)>>,
}

impl Deliverer {
    /// `delivery.dead_letter_retention_secs`, for the scripts that write dead letters.
    fn dead_letter_retention_ms(&self) -> u64 {
        self.settings
            .delivery
            .dead_letter_retention_secs
            .saturating_mul(1000)
    }

    pub fn new(
        redis: RedisPool,
        keys: Keys,
        settings: Settings,
        sender: Sender,
        history: Recorder,
    ) -> Arc<Self> {
        let consumer = format!(
            "{}-{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "herald".into()),
            std::process::id(),
            crate::api::wait::random_id(6)
        );
        let (acks, ack_queues) = keys
            .all_partitions()
            .map(|_| mpsc::unbounded_channel())
            .unzip();
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(settings.delivery.concurrency)),
            tenant_slots: TenantSlots::new(settings.delivery.tenant_concurrency),
            redis,
            keys,
            settings,
            history,
            sender,
            consumer,
            signing_keys: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
            acks,
            ack_queues: Mutex::new(ack_queues),
            bodies: Mutex::new(VecDeque::new()),
        })
    }

    /// Runs one reader per partition until `shutdown`; then waits for in-flight attempts
    /// (the caller bounds that wait by the shutdown grace time).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let queues = std::mem::take(&mut *self.ack_queues.lock().expect("ack queues"));
        let ackers = TaskTracker::new();
        let ackers_stop = CancellationToken::new();
        for (partition, queue) in self.keys.all_partitions().zip(queues) {
            ackers.spawn(
                self.clone()
                    .acknowledge(partition, queue, ackers_stop.clone()),
            );
        }
        ackers.close();
        let readers = TaskTracker::new();
        for partition in self.keys.all_partitions() {
            let this = self.clone();
            let stop = shutdown.clone();
            readers.spawn(async move { this.read_partition(partition, stop).await });
        }
        readers.close();
        readers.wait().await;
        self.tasks.close();
        self.tasks.wait().await;
        // Every attempt is over: acknowledge what is queued, then stop.
        ackers_stop.cancel();
        ackers.wait().await;
    }

    /// Acknowledges the delivered entries of one partition, many per call: ids gather while
    /// the previous call is in flight, so a busy worker makes few calls and an idle one
    /// acknowledges each entry at once. A failed call leaves its entries pending; they are
    /// reclaimed and delivered again later (a duplicate, never a loss).
    async fn acknowledge(
        self: Arc<Self>,
        partition: Partition,
        mut queue: mpsc::UnboundedReceiver<Delivered>,
        stop: CancellationToken,
    ) {
        let mut ids = Vec::with_capacity(ACK_BATCH);
        loop {
            let received = tokio::select! {
                n = queue.recv_many(&mut ids, ACK_BATCH) => n,
                _ = stop.cancelled() => {
                    queue.close();
                    queue.recv_many(&mut ids, ACK_BATCH).await
                }
            };
            if received == 0 {
                return;
            }
            if let Err(e) = scripts::ack(&mut self.redis.get(), &partition, &ids).await {
                tracing::warn!(partition = partition.index, count = ids.len(), error = %e, "could not acknowledge deliveries");
            }
            ids.clear();
        }
    }

    async fn read_partition(self: Arc<Self>, partition: Partition, shutdown: CancellationToken) {
        let block = Duration::from_millis(self.settings.delivery.block_ms);
        let reclaim_every =
            Duration::from_secs((self.settings.delivery.reclaim_idle_secs / 4).max(1));
        let mut last_reclaim = Instant::now();
        let mut conn: Option<Conn> = None;
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match self.redis.dedicated(block).await {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(partition = partition.index, error = %e, "delivery reader cannot connect");
                        pause(&shutdown, failures).await;
                        continue;
                    }
                },
            };
            // Read without holding attempt slots: a reader blocked on a quiet partition
            // must not keep the slots another partition's entries are waiting for (that
            // delayed deliveries by up to `block_ms`). Each entry read then waits for a
            // slot, so a reader holds at most `read_batch` entries not yet started.
            let batch = self.settings.delivery.read_batch;
            let result = if last_reclaim.elapsed() >= reclaim_every {
                last_reclaim = Instant::now();
                self.reclaim(c, &partition, batch).await
            } else {
                self.read(c, &partition, batch, block).await
            };
            match result {
                Ok(entries) => {
                    failures = 0;
                    for entry in entries {
                        let permit = tokio::select! {
                            p = self.slots.clone().acquire_owned() => p,
                            // Entries not started stay pending and are reclaimed later.
                            _ = shutdown.cancelled() => break,
                        };
                        let Ok(permit) = permit else { break };
                        let this = self.clone();
                        let partition = partition.clone();
                        self.tasks.spawn(async move {
                            this.deliver(&partition, entry).await;
                            drop(permit);
                        });
                    }
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(partition = partition.index, error = %e, "delivery read failed");
                    if matches!(e, StoreError::Unavailable(_)) {
                        conn = None;
                    }
                    if e.to_string().contains("NOGROUP") {
                        let _ = crate::store::prepare(&mut self.redis.get(), &self.keys).await;
                    }
                    pause(&shutdown, failures).await;
                }
            }
        }
    }

    async fn read(
        &self,
        conn: &mut Conn,
        partition: &Partition,
        count: usize,
        block: Duration,
    ) -> Result<Vec<StreamId>, StoreError> {
        let options = StreamReadOptions::default()
            .group(GROUP, &self.consumer)
            .count(count)
            .block(block.as_millis() as usize);
        let reply: Option<StreamReadReply> = conn
            .xread_options(&[partition.deliveries()], &[">"], &options)
            .await?;
        Ok(reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default())
    }

    /// Takes over entries another consumer left idle too long (it crashed or hung), and
    /// dead-letters those already handed out `delivery.max_deliveries` times (poison).
    ///
    /// XPENDING proposes the candidates (it reports delivery counts, XAUTOCLAIM does not);
    /// the `reclaim` script re-checks and moves each one atomically.
    async fn reclaim(
        &self,
        conn: &mut Conn,
        partition: &Partition,
        count: usize,
    ) -> Result<Vec<StreamId>, StoreError> {
        let stream = partition.deliveries();
        let idle_ms = self.settings.delivery.reclaim_idle_secs * 1000;
        let max_deliveries = self.settings.delivery.max_deliveries;
        let pending: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&stream)
            .arg(GROUP)
            .arg("IDLE")
            .arg(idle_ms)
            .arg("-")
            .arg("+")
            .arg(count)
            .query_async(conn)
            .await?;
        if pending.ids.is_empty() {
            return Ok(Vec::new());
        }
        // The tenant of a poison entry names its dead-letter stream: read it from the job
        // (and the body key it references, which its dead letter keeps).
        let mut poison: HashMap<String, (TenantName, Option<String>)> = HashMap::new();
        for p in &pending.ids {
            if p.times_delivered >= max_deliveries as usize {
                let range: StreamRangeReply = conn.xrange(&stream, &p.id, &p.id).await?;
                let entry = range.ids.first();
                let tenant = entry
                    .and_then(|e| e.get::<String>("j"))
                    .and_then(|j| serde_json::from_str::<Job>(&j).ok())
                    .and_then(|job| TenantName::parse(&job.t).ok())
                    .unwrap_or_else(unknown_tenant);
                let body_ref = entry.and_then(|e| e.get::<String>("br"));
                poison.insert(p.id.clone(), (tenant, body_ref));
            }
        }
        let candidates: Vec<ReclaimCandidate<'_>> = pending
            .ids
            .iter()
            .map(|p| {
                let found = poison.get(&p.id);
                ReclaimCandidate {
                    entry_id: &p.id,
                    poison_tenant: found.map(|(t, _)| t),
                    body_ref: found.and_then(|(_, r)| r.as_deref()),
                }
            })
            .collect();
        let note = format!(
            "handed to a worker {max_deliveries} times without an outcome (each worker died or hung)"
        );
        let reply = scripts::reclaim(
            conn,
            &ReclaimArgs {
                partition,
                consumer: &self.consumer,
                min_idle_ms: idle_ms,
                max_deliveries,
                note: &note,
                retention_ms: self.dead_letter_retention_ms(),
                candidates: &candidates,
            },
        )
        .await?;
        if !reply.claimed.is_empty() {
            tracing::info!(
                partition = partition.index,
                count = reply.claimed.len(),
                "reclaimed idle deliveries"
            );
        }
        for (entry, letter) in &reply.dead {
            tracing::warn!(partition = partition.index, entry = %entry, dead_letter = %letter, "poison delivery dead-lettered");
        }
        if !reply.gone.is_empty() {
            tracing::error!(partition = partition.index, ids = ?reply.gone, "pending deliveries whose stream entry is gone");
        }
        Ok(reply.claimed)
    }

    async fn signing_key(&self, tenant: &str) -> Option<String> {
        if let Some((key, at)) = self.signing_keys.lock().ok()?.get(tenant) {
            if at.elapsed() < SIGNING_KEY_TTL {
                return Some(key.clone());
            }
        }
        let name = TenantName::parse(tenant).ok()?;
        let keys = tenants::signing_keys(&mut self.redis.get(), &self.keys, &name)
            .await
            .ok()?;
        self.signing_keys
            .lock()
            .ok()?
            .insert(tenant.to_owned(), (keys.current.clone(), Instant::now()));
        Some(keys.current)
    }

    /// The body of a body key: from the worker's cache, or read (and cached). None when
    /// the key holds no body.
    async fn stored_body(
        &self,
        partition: &Partition,
        body_ref: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let key = partition.body(body_ref);
        if let Some((_, body)) = self
            .bodies
            .lock()
            .expect("body cache")
            .iter()
            .find(|(k, _)| *k == key)
        {
            return Ok(Some(body.as_ref().clone()));
        }
        let body: Option<Vec<u8>> = self.redis.get().hget(&key, "b").await?;
        if let Some(body) = &body {
            let mut cache = self.bodies.lock().expect("body cache");
            if cache.len() >= BODY_CACHE {
                cache.pop_front();
            }
            cache.push_back((key, Arc::new(body.clone())));
        }
        Ok(body)
    }

    /// One attempt of one entry, and its outcome written back.
    async fn deliver(&self, partition: &Partition, entry: StreamId) {
        let job_json: Option<String> = entry.get("j");
        let body_ref: Option<String> = entry.get("br");
        let body: Option<Vec<u8>> = match &body_ref {
            None => Some(entry.get("b").unwrap_or_default()),
            Some(r) => match self.stored_body(partition, r).await {
                Ok(body) => body,
                Err(e) => {
                    // The entry stays pending and is reclaimed later.
                    tracing::warn!(partition = partition.index, id = %entry.id, error = %e, "could not read the delivery's body");
                    return;
                }
            },
        };
        let job = job_json
            .as_deref()
            .and_then(|j| serde_json::from_str::<Job>(j).ok());
        let (Some(job), Some(body)) = (job, body) else {
            tracing::error!(partition = partition.index, id = %entry.id, "undecodable delivery entry (or its body is gone); dead-lettering");
            let tenant = unknown_tenant();
            let args = DeadLetterArgs {
                partition,
                tenant: &tenant,
                entry_id: &entry.id,
                job_json: job_json.as_deref().unwrap_or(""),
                body: &[],
                last_status: 0,
                last_error: "undecodable entry",
                retention_ms: self.dead_letter_retention_ms(),
                body_ref: body_ref.as_deref(),
            };
            let _ = scripts::dead_letter(&mut self.redis.get(), &args).await;
            return;
        };
        let tenant_slot = self.tenant_slots.acquire(&job.t, fairness::MAX_WAIT).await;
        let Some(_tenant_slot) = tenant_slot else {
            self.defer(partition, &entry.id, job, &body, body_ref.as_deref())
                .await;
            return;
        };
        let span = crate::telemetry::trace::delivery_span(&job);
        self.attempt(partition, &entry.id, job, body, body_ref)
            .instrument(span)
            .await;
    }

    /// One attempt of a decoded job, inside its span, and its outcome written back.
    /// `body_ref` is the body key the entry references (None for a body inline).
    async fn attempt(
        &self,
        partition: &Partition,
        entry_id: &str,
        mut job: Job,
        body: Vec<u8>,
        body_ref: Option<String>,
    ) {
        let mut outbound = http::build(&job, &body);
        record::trace_header(&mut outbound, &job);
        if let Some(key) = self.signing_key(&job.t).await {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let jti = format!("jwt_{}", crate::api::wait::random_id(20));
            let token = signing::sign(&key, &outbound.url, &outbound.body, now, &jti);
            if let Ok(v) = reqwest::header::HeaderValue::from_str(&token) {
                outbound.headers.push((
                    reqwest::header::HeaderName::from_static("upstash-signature"),
                    v,
                ));
            }
        }
        let started = Instant::now();
        let attempt = self.sender.send(outbound).await;
        let elapsed_ms = started.elapsed().as_millis();
        let summary = record::Summary::of(&job, &attempt, started.elapsed());
        let max_retries = job.w.retries.unwrap_or(self.settings.delivery.max_retries);
        let mut conn = self.redis.get();
        let result = match attempt {
            Attempt::Delivered { status } => {
                tracing::debug!(tenant = %job.t, event_id = %job.e, message_id = %job.m, status, elapsed_ms, "delivered");
                if self.acks[usize::from(partition.index)]
                    .send(Delivered {
                        entry_id: entry_id.to_owned(),
                        body_ref: body_ref.clone(),
                    })
                    .is_err()
                {
                    tracing::warn!(message_id = %job.m, "acknowledgements stopped; the entry stays pending");
                }
                Ok(())
            }
            failure => {
                let (status, error, retry_after, final_failure) = match failure {
                    Attempt::Failed {
                        status,
                        excerpt,
                        retry_after,
                        non_retryable,
                    } => (
                        status,
                        format!("HTTP {status}: {excerpt}"),
                        retry_after,
                        non_retryable,
                    ),
                    Attempt::Unreachable { error } => (0, error, None, false),
                    Attempt::Refused { reason } => (0, reason, None, true),
                    Attempt::Delivered { .. } => unreachable!("handled above"),
                };
                job.a += 1;
                let out_of_attempts = job.a > max_retries;
                tracing::info!(
                    tenant = %job.t, event_id = %job.e, message_id = %job.m, attempt = job.a, status,
                    error = %truncate(&error, 200), "delivery attempt failed"
                );
                let job_json = serde_json::to_string(&job).unwrap_or_default();
                if final_failure || out_of_attempts {
                    let tenant = TenantName::parse(&job.t).unwrap_or_else(|_| unknown_tenant());
                    scripts::dead_letter(
                        &mut conn,
                        &DeadLetterArgs {
                            partition,
                            tenant: &tenant,
                            entry_id,
                            job_json: &job_json,
                            body: &body,
                            last_status: status,
                            last_error: truncate(&error, 1024),
                            retention_ms: self.dead_letter_retention_ms(),
                            body_ref: body_ref.as_deref(),
                        },
                    )
                    .await
                    .map(|id| {
                        tracing::warn!(tenant = %job.t, event_id = %job.e, message_id = %job.m, dead_letter = ?id, "delivery dead-lettered");
                    })
                } else {
                    let max = Duration::from_secs(self.settings.delivery.max_backoff_secs);
                    let delay = retry_after.map(|d| d.min(max)).unwrap_or_else(|| {
                        retry::backoff(job.a, self.settings.delivery.backoff_factor, max)
                    });
                    scripts::retry_later(
                        &mut conn,
                        &RetryLaterArgs {
                            partition,
                            entry_id,
                            message_id: &job.m,
                            job_json: &job_json,
                            body: &body,
                            delay_ms: delay.as_millis() as u64,
                            body_ref: body_ref.as_deref(),
                        },
                    )
                    .await
                    .map(|_| ())
                }
            }
        };
        if let Err(e) = &result {
            // The entry stays pending and is reclaimed later: a duplicate, never a loss.
            tracing::warn!(message_id = %job.m, error = %e, "could not record the delivery outcome");
        }
        record::finished(self, &job, summary, max_retries, result.is_ok()).await;
    }
}

impl Deliverer {
    /// Puts a delivery of a tenant at its concurrency bound back into the retry schedule
    /// for a moment: no attempt is made or counted, and the entry leaves the pending list
    /// (a deferred entry held here would be taken over by another worker as idle).
    async fn defer(
        &self,
        partition: &Partition,
        entry_id: &str,
        mut job: Job,
        body: &[u8],
        body_ref: Option<&str>,
    ) {
        let max = Duration::from_secs(self.settings.delivery.request_timeout_secs);
        let delay = defer_delay(job.d, max);
        job.d = job.d.saturating_add(1);
        tracing::debug!(tenant = %job.t, message = %job.m, deferrals = job.d, "tenant at its concurrency bound; delivery deferred");
        let job_json = serde_json::to_string(&job).unwrap_or_default();
        let result = scripts::retry_later(
            &mut self.redis.get(),
            &RetryLaterArgs {
                partition,
                entry_id,
                message_id: &job.m,
                job_json: &job_json,
                body,
                delay_ms: delay.as_millis() as u64,
                body_ref,
            },
        )
        .await;
        if let Err(e) = result {
            tracing::warn!(message = %job.m, error = %e, "could not defer the delivery; it stays pending");
        }
    }
}

/// Where dead letters of an entry whose tenant cannot be read go: a name no real tenant
/// can have, so no tenant ever sees them (operators find them under `dlq:-undecodable`).
fn unknown_tenant() -> TenantName {
    TenantName::reserved_undecodable()
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Backs off after consecutive failures (50 ms doubling up to 2 s), or returns at shutdown.
pub async fn pause(shutdown: &CancellationToken, failures: u32) {
    let ms = (50u64 << failures.min(6)).min(2000);
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
        _ = shutdown.cancelled() => {}
    }
}
