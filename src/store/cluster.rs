//! The request path's Redis Cluster connection, kept working through failures of the
//! cluster ([`ClusterHandle`]).
//!
//! The client library keeps one multiplexed connection per node and repairs them itself,
//! but measured under a master's SIGKILL (tests/it/recovery.rs on a cluster), its repair
//! could stop: a "reconnect to the initial nodes" started while the killed node refused
//! connections never finished, and from then on every command of that cluster connection
//! timed out, also long after the node was back and the cluster healthy. It has no
//! periodic topology check and no public refresh. So Herald watches the connection from
//! outside and replaces it:
//!
//! - **N timeouts in a row**: a command through the handle that times out counts; one that
//!   gets any answer (even a Redis error) resets the count. At [`TIMEOUTS_BEFORE_SWAP`] in
//!   a row a fresh cluster connection is swapped in (at most one swap per
//!   [`MIN_SWAP_INTERVAL`]).
//! - **A probe every [`PROBE_INTERVAL`]** ([`ClusterHandle::watch`]): the masters are read
//!   with `CLUSTER SLOTS` over plain connections of the probe's own (not the cluster
//!   connection, so a probe never triggers the library's repair), and each master gets a
//!   `PING`. When every master answers, the cluster is healthy, and the handle's connection
//!   must answer a `PING` routed to each master too; if it does not, or if the set of
//!   masters changed since the last probe (a failover, a node back as a replica), a fresh
//!   connection is swapped in, one that starts from the current slot map.
//! - While a master does not answer (an outage, until its replica is promoted),
//!   [`ClusterHandle::degraded`] is true: periodic fan-outs (`SCAN` of every master for the
//!   gauges) are skipped instead of asking the library to repair a node that is down, over
//!   and over.
//!
//! A swap never cuts a command short: the fresh connection is made in the background and
//! swapped in only once it is connected; commands in flight finish on the connection they
//! started on (clones keep it alive); new commands take the new one.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// Timeouts in a row after which the connection is replaced.
pub const TIMEOUTS_BEFORE_SWAP: u32 = 3;
/// How often the probe looks at the cluster.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Swaps are at least this far apart (a cluster that is down for everyone gains nothing
/// from a new connection per request).
pub const MIN_SWAP_INTERVAL: Duration = Duration::from_secs(1);

/// A cluster connection that is replaced when it stops answering (see the module
/// documentation). Clones share it.
#[derive(Clone)]
pub struct ClusterHandle {
    shared: Arc<Shared>,
}

struct Shared {
    current: RwLock<ClusterConnection>,
    client: ClusterClient,
    config: ClusterConfig,
    timeouts_in_a_row: AtomicU32,
    last_swap: std::sync::Mutex<Instant>,
    /// A fresh connection is being made.
    swapping: AtomicBool,
    /// How long making a fresh connection may take.
    connect_bound: Duration,
    degraded: AtomicBool,
}

impl ClusterHandle {
    /// A handle whose connection is made on first use (Herald starts while the cluster is
    /// unreachable); a replacement must be connected within `connect_bound`.
    pub fn new(client: ClusterClient, config: ClusterConfig, connect_bound: Duration) -> Self {
        let conn = client.get_pending_async_connection_with_config(config.clone());
        ClusterHandle {
            shared: Arc::new(Shared {
                current: RwLock::new(conn),
                client,
                config,
                timeouts_in_a_row: AtomicU32::new(0),
                last_swap: std::sync::Mutex::new(Instant::now() - MIN_SWAP_INTERVAL),
                swapping: AtomicBool::new(false),
                connect_bound,
                degraded: AtomicBool::new(false),
            }),
        }
    }

    /// The connection commands go on now.
    pub fn current(&self) -> ClusterConnection {
        self.shared
            .current
            .read()
            .expect("cluster connection")
            .clone()
    }

    /// A master did not answer the last probe: skip periodic fan-outs.
    pub fn degraded(&self) -> bool {
        self.shared.degraded.load(Ordering::Relaxed)
    }

    /// Replaces the connection with a fresh one, made in the background and swapped in
    /// only once it is connected (within the connect bound; if it cannot be made, the
    /// current one stays and a later trigger tries again). Nothing happens when a swap
    /// began less than [`MIN_SWAP_INTERVAL`] ago or is under way. Returns whether one began.
    pub fn swap(&self, why: &str) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        {
            let mut last = self.shared.last_swap.lock().expect("last swap");
            if last.elapsed() < MIN_SWAP_INTERVAL || self.shared.swapping.load(Ordering::SeqCst) {
                return false;
            }
            *last = Instant::now();
            self.shared.swapping.store(true, Ordering::SeqCst);
        }
        let shared = self.shared.clone();
        let why = why.to_owned();
        runtime.spawn(async move {
            let made = tokio::time::timeout(
                shared.connect_bound,
                shared
                    .client
                    .get_async_connection_with_config(shared.config.clone()),
            )
            .await;
            match made {
                Ok(Ok(fresh)) => {
                    *shared.current.write().expect("cluster connection") = fresh;
                    shared.timeouts_in_a_row.store(0, Ordering::Relaxed);
                    crate::telemetry::metrics::redis_connection_replaced();
                    tracing::warn!(reason = %why, "replaced the redis cluster connection");
                }
                Ok(Err(e)) => tracing::info!(reason = %why, error = %e, "could not make a fresh redis cluster connection yet; keeping the current one"),
                Err(_) => tracing::info!(reason = %why, "a fresh redis cluster connection took too long; keeping the current one"),
            }
            shared.swapping.store(false, Ordering::SeqCst);
        });
        true
    }

    /// Counts a command's outcome: a timeout, or any answer.
    fn note<T>(&self, result: &RedisResult<T>) {
        match result {
            Err(e) if e.is_timeout() => {
                let n = self
                    .shared
                    .timeouts_in_a_row
                    .fetch_add(1, Ordering::Relaxed)
                    + 1;
                if n >= TIMEOUTS_BEFORE_SWAP {
                    self.swap(&format!("{n} commands in a row timed out"));
                }
            }
            Err(e) if e.is_io_error() || e.is_connection_dropped() => {}
            _ => self.shared.timeouts_in_a_row.store(0, Ordering::Relaxed),
        }
    }

    /// Sends `cmd` as `routing` says, counting the outcome.
    pub async fn route_command(&self, cmd: Cmd, routing: RoutingInfo) -> RedisResult<Value> {
        let result = self.current().route_command(cmd, routing).await;
        self.note(&result);
        result
    }

    /// Starts the probe (see the module documentation); it ends when the last clone of
    /// the handle is dropped. `seeds` are the configured node URLs; `timeout` bounds each
    /// probe command. Outside a Tokio runtime nothing is started.
    pub fn watch(&self, seeds: Vec<redis::Client>, timeout: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak: Weak<Shared> = Arc::downgrade(&self.shared);
        runtime.spawn(async move {
            let mut probe = Probe::new(seeds, timeout);
            // The masters the connection last worked with (or, before the first healthy
            // probe, the first ones seen).
            let mut known: Option<Vec<(String, u16)>> = None;
            let mut failed_probes = 0u32;
            loop {
                tokio::time::sleep(PROBE_INTERVAL).await;
                let Some(shared) = weak.upgrade() else { return };
                let handle = ClusterHandle { shared };
                let Some(seen) = probe.masters().await else {
                    handle.shared.degraded.store(true, Ordering::Relaxed);
                    continue;
                };
                let all_answer = probe.all_answer(&seen).await;
                tracing::debug!(masters = ?seen, all_answer, "cluster probe");
                handle.shared.degraded.store(!all_answer, Ordering::Relaxed);
                if !all_answer {
                    known.get_or_insert(seen);
                    continue;
                }
                if known.as_ref().is_some_and(|k| *k != seen) {
                    tracing::info!(masters = ?seen, "the cluster's masters changed");
                    handle.swap("the cluster's masters changed");
                    failed_probes = 0;
                } else if handle.answers_on(&seen, timeout).await {
                    failed_probes = 0;
                } else {
                    failed_probes += 1;
                    if failed_probes >= 2 {
                        handle.swap("every master answers, but the cluster connection does not");
                        failed_probes = 0;
                    }
                }
                known = Some(seen);
            }
        });
    }

    /// Whether the connection answers a `PING` routed to each of `masters` within
    /// `timeout`.
    async fn answers_on(&self, masters: &[(String, u16)], timeout: Duration) -> bool {
        let conn = self.current();
        let pings = masters.iter().map(|(host, port)| {
            let mut conn = conn.clone();
            let to = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                host: host.clone(),
                port: *port,
            });
            async move {
                matches!(
                    tokio::time::timeout(timeout, conn.route_command(redis::cmd("PING"), to)).await,
                    Ok(Ok(_))
                )
            }
        });
        futures_util::future::join_all(pings)
            .await
            .into_iter()
            .all(|ok| ok)
    }
}

impl ConnectionLike for ClusterHandle {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.current().req_packed_command(cmd).await;
            self.note(&result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self
                .current()
                .req_packed_commands(pipeline, offset, count)
                .await;
            self.note(&result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

/// The probe's own plain connections: to the seeds (for `CLUSTER SLOTS`) and to each
/// master (for `PING`), each command bounded by `timeout`.
struct Probe {
    seeds: Vec<redis::Client>,
    conns: std::collections::HashMap<String, MultiplexedConnection>,
    config: AsyncConnectionConfig,
    timeout: Duration,
}

impl Probe {
    fn new(seeds: Vec<redis::Client>, timeout: Duration) -> Self {
        Probe {
            seeds,
            conns: Default::default(),
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout)),
            timeout,
        }
    }

    /// A connection to `client`'s node, kept for the next probes.
    async fn conn(&mut self, client: &redis::Client) -> Option<MultiplexedConnection> {
        let addr = client.get_connection_info().addr().to_string();
        if let Some(c) = self.conns.get(&addr) {
            return Some(c.clone());
        }
        let opened = tokio::time::timeout(
            self.timeout,
            client.get_multiplexed_async_connection_with_config(&self.config),
        )
        .await;
        let c = opened.ok()?.ok()?;
        self.conns.insert(addr, c.clone());
        Some(c)
    }

    async fn query<T: redis::FromRedisValue>(
        &mut self,
        client: &redis::Client,
        cmd: &Cmd,
    ) -> Option<T> {
        let addr = client.get_connection_info().addr().to_string();
        let mut c = self.conn(client).await?;
        match tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut c)).await {
            Ok(Ok(v)) => Some(v),
            _ => {
                self.conns.remove(&addr);
                None
            }
        }
    }

    /// The masters serving slots, sorted, as the first seed that answers sees them.
    async fn masters(&mut self) -> Option<Vec<(String, u16)>> {
        let seeds = self.seeds.clone();
        for seed in &seeds {
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("SLOTS");
            let slots: Option<Value> = self.query(seed, &cmd).await;
            if let Some(slots) = slots {
                let mut masters = masters_of(&slots);
                masters.sort();
                masters.dedup();
                if !masters.is_empty() {
                    return Some(masters);
                }
            }
        }
        None
    }

    /// Whether every one of `masters` answers a `PING`.
    async fn all_answer(&mut self, masters: &[(String, u16)]) -> bool {
        let Some(seed) = self.seeds.first().map(|s| s.get_connection_info().clone()) else {
            return false;
        };
        for (host, port) in masters {
            let addr = super::lanes::node_addr(seed.addr(), host, *port);
            let Ok(client) = redis::Client::open(seed.clone().set_addr(addr)) else {
                return false;
            };
            if self
                .query::<String>(&client, &redis::cmd("PING"))
                .await
                .is_none()
            {
                return false;
            }
        }
        true
    }
}

/// The master (host, port) of each range of a `CLUSTER SLOTS` reply.
pub fn masters_of(slots: &Value) -> Vec<(String, u16)> {
    slot_ranges(slots)
        .into_iter()
        .map(|(_, _, host, port)| (host, port))
        .collect()
}

/// The ranges of a `CLUSTER SLOTS` reply, `[start, end, [host, port, id, …], replicas…]`
/// each, as `(first slot, last slot, master host, master port)`, sorted.
pub fn slot_ranges(slots: &Value) -> Vec<(u16, u16, String, u16)> {
    let Value::Array(ranges) = slots else {
        return Vec::new();
    };
    let mut map: Vec<(u16, u16, String, u16)> = ranges
        .iter()
        .filter_map(|range| {
            let Value::Array(items) = range else {
                return None;
            };
            let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(node))) =
                (items.first(), items.get(1), items.get(2))
            else {
                return None;
            };
            let (Some(Value::BulkString(host)), Some(Value::Int(port))) =
                (node.first(), node.get(1))
            else {
                return None;
            };
            Some((
                u16::try_from(*first).ok()?,
                u16::try_from(*last).ok()?,
                String::from_utf8_lossy(host).into_owned(),
                u16::try_from(*port).ok()?,
            ))
        })
        .collect();
    map.sort();
    map
}
