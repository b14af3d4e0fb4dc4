//! Delivery workers: one reader task per partition stream (consumer group `herald`, each
//! on its own connection), a bounded number of concurrent HTTP attempts, and the outcome
//! of each attempt written back by one script: `ack` (2xx; many entries per call),
//! `retry_later` (a new scheduled attempt), or `dead_letter` (out of attempts, or refused
//! for good).
//!
//! At-least-once: an entry leaves the pending list only through one of those scripts.
//! A worker that dies mid-attempt leaves its entries pending; any worker takes them over
//! (`reclaim`) once they are idle for `delivery.reclaim_idle_secs`, unless they were
//! already handed out `delivery.max_deliveries` times: then they are dead-lettered. A live
//! worker's entries are never taken for a dead one's: it reads no more entries than it has
//! free attempt slots, and renews those that still wait for a slot ([`Deliverer::start`]).
//!
//! Fairness: besides the worker-wide bound (`delivery.concurrency`), each tenant holds at
//! most `delivery.tenant_concurrency` attempts of a worker ([`fairness`]).

pub mod fairness;
pub mod http;
pub mod ip_policy;
mod record;
pub mod retry;
pub mod signing;
mod workflow;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::streams::{
    StreamId, StreamPendingCountReply, StreamRangeReply, StreamReadOptions, StreamReadReply,
};
use redis::AsyncCommands;
use tokio::sync::{mpsc, Semaphore, TryAcquireError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use self::fairness::{defer_delay, TenantSlots};
use self::http::{Attempt, Sender};
use crate::config::Settings;
use crate::domain::TenantName;
use crate::history::Recorder;
use crate::limits::cache::LimitsCache;
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
    /// Tenants' limits (their outbound `allow_cidrs` and `allow_ports`).
    limits: LimitsCache,
    /// Senders of tenants with an outbound policy of their own, by that policy.
    tenant_senders: Mutex<HashMap<String, Sender>>,
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
            crate::domain::random_id(6)
        );
        let cache_ms = settings.limits.cache_ms;
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
            limits: LimitsCache::new(Duration::from_millis(cache_ms)),
            tenant_senders: Mutex::new(HashMap::new()),
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
            // Take no more than can start: wait until an attempt slot is free, then read at
            // most as many entries as slots are free. The read does not hold the slots: a
            // reader blocked on a quiet partition must not keep the slots another
            // partition's entries are waiting for (that delayed deliveries by up to
            // `block_ms`). Another partition's reader may take them meanwhile; what then
            // waits for a slot is kept renewed (`start`).
            let free = tokio::select! {
                permit = self.slots.acquire() => permit.map(drop),
                _ = shutdown.cancelled() => break,
            };
            if free.is_err() {
                break;
            }
            let count = self
                .slots
                .available_permits()
                .clamp(1, self.settings.delivery.read_batch.max(1));
            let result = if last_reclaim.elapsed() >= reclaim_every {
                last_reclaim = Instant::now();
                self.forget_idle_consumers(c, &partition).await;
                self.reclaim(c, &partition, count).await
            } else {
                self.read(c, &partition, count, block).await
            };
            let result = match result {
                Ok(entries) => self.start(c, &partition, entries, &shutdown).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(partition = partition.index, error = %e, "delivery read failed");
                    // Entries read and not started stay pending; they are taken over (and
                    // counted as handed out once more) after `reclaim_idle_secs`.
                    if e.is_unavailable() {
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

    /// Starts the entries a read returned, in order, each as soon as an attempt slot is
    /// free.
    ///
    /// An entry waiting for a slot is still pending with this consumer and ages in the
    /// pending list; without care, receivers that hang (every slot held until the request
    /// timeout) would let it pass `reclaim_idle_secs`, and another worker would take it
    /// over as abandoned: delivered twice, and dead-lettered as poison once handed out
    /// `max_deliveries` times although its receiver is healthy. So while entries wait,
    /// they are renewed (the `renew` script: idle time reset, owner checked, no delivery
    /// counted) every third of `reclaim_idle_secs`, and an entry that waited is renewed
    /// once more right before it starts, so its attempt begins as fresh as one started at
    /// once. An entry the renewal reports lost (another worker took it over while this one
    /// was cut off from Redis) is dropped here, not delivered. A failed renewal returns the
    /// error; the entries not started stay pending and are taken over later.
    async fn start(
        self: &Arc<Self>,
        conn: &mut Conn,
        partition: &Partition,
        entries: Vec<StreamId>,
        shutdown: &CancellationToken,
    ) -> Result<(), StoreError> {
        let renew_every =
            Duration::from_millis((self.settings.delivery.reclaim_idle_secs * 1000 / 3).max(100));
        let mut queued: VecDeque<StreamId> = entries.into();
        let mut renewed = Instant::now();
        while !queued.is_empty() {
            let slot = match self.slots.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(TryAcquireError::Closed) => return Ok(()),
                Err(TryAcquireError::NoPermits) => {
                    // Kept across renewals: the reader keeps its place in the queue.
                    let acquire = self.slots.clone().acquire_owned();
                    tokio::pin!(acquire);
                    let p = loop {
                        let due = renewed + renew_every;
                        tokio::select! {
                            p = &mut acquire => break p,
                            _ = tokio::time::sleep_until(due.into()) => {
                                self.renew(conn, partition, &mut queued, usize::MAX).await?;
                                renewed = Instant::now();
                                if queued.is_empty() {
                                    return Ok(());
                                }
                            }
                            // Entries not started stay pending and are taken over later.
                            _ = shutdown.cancelled() => return Ok(()),
                        }
                    };
                    let Ok(p) = p else { return Ok(()) };
                    self.renew(conn, partition, &mut queued, 1).await?;
                    if queued.is_empty() {
                        return Ok(());
                    }
                    p
                }
            };
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let Some(entry) = queued.pop_front() else {
                return Ok(());
            };
            let this = self.clone();
            let partition = partition.clone();
            self.tasks.spawn(async move {
                this.deliver(&partition, entry).await;
                drop(slot);
            });
        }
        Ok(())
    }

    /// Renews the first `first` of the queued entries (see [`Deliverer::start`]) and drops
    /// those this consumer no longer owns.
    async fn renew(
        &self,
        conn: &mut Conn,
        partition: &Partition,
        queued: &mut VecDeque<StreamId>,
        first: usize,
    ) -> Result<(), StoreError> {
        let n = first.min(queued.len());
        let ids: Vec<&str> = queued.iter().take(n).map(|e| e.id.as_str()).collect();
        let kept: HashSet<String> = scripts::renew(conn, partition, &self.consumer, &ids)
            .await?
            .into_iter()
            .collect();
        if kept.len() < n {
            let mut lost = Vec::new();
            let mut index = 0;
            queued.retain(|e| {
                let keep = index >= n || kept.contains(&e.id);
                if !keep {
                    lost.push(e.id.clone());
                }
                index += 1;
                keep
            });
            tracing::warn!(partition = partition.index, ids = ?lost, "queued deliveries were taken over by another worker; not delivered here");
        }
        Ok(())
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

    /// Removes the consumers of workers that are gone: idle longer than
    /// `delivery.consumer_idle_secs` and holding no pending entry (a live worker reads
    /// every `delivery.block_ms`, which resets its idle time; one removed by mistake is
    /// recreated by its next read). Best effort: an error is logged and ignored.
    async fn forget_idle_consumers(&self, conn: &mut Conn, partition: &Partition) {
        let idle_ms = self
            .settings
            .delivery
            .consumer_idle_secs
            .saturating_mul(1000);
        let info: Result<Vec<std::collections::HashMap<String, redis::Value>>, _> =
            redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(partition.deliveries())
                .arg(GROUP)
                .query_async(conn)
                .await;
        let Ok(consumers) = info else { return };
        for c in consumers {
            let field = |k: &str| {
                c.get(k)
                    .and_then(|v| redis::from_redis_value::<i64>(v.clone()).ok())
            };
            let name = c
                .get("name")
                .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
                .unwrap_or_default();
            if name.is_empty() || name == self.consumer {
                continue;
            }
            if field("pending") == Some(0) && field("idle").is_some_and(|i| i as u64 > idle_ms) {
                let removed: Result<i64, _> = redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(partition.deliveries())
                    .arg(GROUP)
                    .arg(&name)
                    .query_async(conn)
                    .await;
                if removed.is_ok() {
                    tracing::info!(partition = partition.index, consumer = %name, "removed the consumer of a worker that is gone");
                }
            }
        }
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

    /// The tenant's current signing key (cached for [`SIGNING_KEY_TTL`]), or why it cannot
    /// be read: a Redis error, or a tenant record without its keys. There is no unsigned
    /// fallback: the caller reschedules the delivery ([`Deliverer::attempt`]).
    async fn signing_key(&self, tenant: &str) -> Result<String, String> {
        let cached = |keys: &Mutex<HashMap<String, (String, Instant)>>| {
            keys.lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(tenant)
                .filter(|(_, at)| at.elapsed() < SIGNING_KEY_TTL)
                .map(|(key, _)| key.clone())
        };
        if let Some(key) = cached(&self.signing_keys) {
            return Ok(key);
        }
        let name = TenantName::parse(tenant).map_err(|e| e.to_string())?;
        let keys = tenants::signing_keys(&mut self.redis.get(), &self.keys, &name)
            .await
            .map_err(|e| e.to_string())?;
        self.signing_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tenant.to_owned(), (keys.current.clone(), Instant::now()));
        Ok(keys.current)
    }

    /// The sender for a tenant's deliveries: the worker's, or, for a tenant with outbound
    /// ranges or ports of its own (`allow_cidrs`, `allow_ports`), one with those (the
    /// tenant's ranges are opened for that tenant only). Falls back to the worker's on a
    /// Redis error (never more open than the operator's policy).
    async fn sender_for(&self, tenant: &str) -> Sender {
        let Ok(name) = TenantName::parse(tenant) else {
            return self.sender.clone();
        };
        let limits = match self
            .limits
            .get(&mut self.redis.get(), &self.keys, &self.settings, &name)
            .await
        {
            Ok(l) => l,
            Err(_) => return self.sender.clone(),
        };
        if limits.allow_cidrs.is_empty() && limits.allow_ports.is_empty() {
            return self.sender.clone();
        }
        let key = format!("{}|{}", limits.allow_cidrs, limits.allow_ports);
        if let Some(s) = self
            .tenant_senders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return s.clone();
        }
        let mut cidrs = self.settings.allow_cidrs().unwrap_or_default();
        cidrs.extend(limits.outbound_cidrs());
        let built = Sender::new(
            ip_policy::IpPolicy::new(cidrs),
            Duration::from_secs(self.settings.delivery.connect_timeout_secs),
            Duration::from_secs(self.settings.delivery.request_timeout_secs),
        )
        .map(|s| s.with_ports(limits.outbound_ports()));
        let Ok(sender) = built else {
            return self.sender.clone();
        };
        let mut senders = self
            .tenant_senders
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if senders.len() >= 256 {
            senders.clear();
        }
        senders.insert(key, sender.clone());
        sender
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
            tracing::debug!(tenant = %job.t, message = %job.m, deferrals = job.d, "tenant at its concurrency bound; delivery deferred");
            let max = Duration::from_secs(self.settings.delivery.request_timeout_secs);
            self.defer(partition, &entry.id, job, &body, body_ref.as_deref(), max)
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
        // A workflow waiter of a run Herald holds: its outcome joins the run's history.
        if job.r.is_none() && job.w.step.is_some() {
            if let Some(true) = self
                .relay_wait(partition, entry_id, &job, &body, body_ref.clone())
                .await
            {
                return;
            }
        }
        // Signing never fails open: without the tenant's key no request leaves. The delivery
        // goes back into the retry schedule like a deferral (no attempt counted: nothing
        // was sent, and `Upstash-Retried` keeps counting requests the receiver could have
        // seen), backing off from 100 ms up to `max_backoff_secs` while the key stays
        // unreadable.
        let key = match self.signing_key(&job.t).await {
            Ok(key) => key,
            Err(error) => {
                tracing::error!(tenant = %job.t, message_id = %job.m, deferrals = job.d, error = %error, "signing key unreadable; delivery rescheduled, not sent");
                let max = Duration::from_secs(self.settings.delivery.max_backoff_secs);
                self.defer(partition, entry_id, job, &body, body_ref.as_deref(), max)
                    .await;
                return;
            }
        };
        if job.r.is_some() {
            self.attempt_workflow(partition, entry_id, job, body, &key)
                .await;
            return;
        }
        let mut outbound = http::build(&job, &body);
        record::trace_header(&mut outbound, &job);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let jti = format!("jwt_{}", crate::domain::random_id(20));
        let token = signing::sign(&key, &outbound.url, &outbound.body, now, &jti);
        match reqwest::header::HeaderValue::from_str(&token) {
            Ok(v) => outbound.headers.push((
                reqwest::header::HeaderName::from_static("upstash-signature"),
                v,
            )),
            // Not reached (a JWT is base64url and dots); if it were, nothing leaves unsigned.
            Err(_) => {
                let max = Duration::from_secs(self.settings.delivery.max_backoff_secs);
                self.defer(partition, entry_id, job, &body, body_ref.as_deref(), max)
                    .await;
                return;
            }
        }
        let started = Instant::now();
        let attempt = self.sender_for(&job.t).await.send(outbound).await;
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
                let http::Failure {
                    status,
                    error,
                    retry_after,
                    final_failure,
                } = failure.failure().expect("handled above");
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
                    let delay = self.retry_delay(job.a, retry_after);
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
    /// When attempt `attempts + 1` is due: the receiver's `Retry-After` (at most
    /// `max_backoff_secs`), else the backoff schedule.
    fn retry_delay(&self, attempts: u32, retry_after: Option<Duration>) -> Duration {
        let max = Duration::from_secs(self.settings.delivery.max_backoff_secs);
        retry_after
            .map(|d| d.min(max))
            .unwrap_or_else(|| retry::backoff(attempts, self.settings.delivery.backoff_factor, max))
    }

    /// Puts a delivery back into the retry schedule for a moment (its tenant is at its
    /// concurrency bound, or its signing key cannot be read): no attempt is made or
    /// counted, and the entry leaves the pending list (a deferred entry held here would be
    /// taken over by another worker as idle). The delay doubles with each deferral of the
    /// delivery, up to `max`.
    async fn defer(
        &self,
        partition: &Partition,
        entry_id: &str,
        mut job: Job,
        body: &[u8],
        body_ref: Option<&str>,
        max: Duration,
    ) {
        let delay = defer_delay(job.d, max);
        job.d = job.d.saturating_add(1);
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
