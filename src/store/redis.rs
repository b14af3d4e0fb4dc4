//! Redis connections, for the three topologies `redis.mode` selects:
//!
//! - **standalone**: one server at `redis.url` (`rediss://` for TLS);
//! - **sentinel**: the master named `redis.sentinel_master`, looked up through the
//!   sentinels in `redis.nodes`. A connection that fails, or finds its server demoted to
//!   a replica (`READONLY`), is dropped and the next command asks the sentinels again, so
//!   a failover is followed;
//! - **cluster**: a Redis Cluster discovered from the seeds in `redis.nodes`. The client
//!   routes every command by key slot and follows `MOVED`/`ASK`/`TRYAGAIN` itself.
//!
//! Requests share a small set of multiplexed connections ([`RedisPool`]): each one carries
//! many concurrent commands and fails a command after the configured response timeout (so
//! a stalled Redis becomes a 503, not a hung request). In cluster mode the pool is one
//! cluster connection, itself multiplexed over one connection per node. Blocking stream
//! reads never use these: every consumer opens its own connection
//! ([`RedisPool::dedicated`]) whose response timeout covers the block time.
//!
//! **Connections heal before they are used** (standalone and sentinel: [`Healing`]). Each
//! connection watches its socket: when Redis closes it (restart, failover, `CLIENT KILL`,
//! an idle timeout of a proxy) the connection is marked closed at once and a background
//! task opens a new one (retrying with a backoff while Redis is away), so a request after
//! the outage finds a working connection instead of failing on the dead one. A command is
//! sent a second time, once, on a fresh connection only when it **cannot have reached
//! Redis**: its connection failed (closed, broken pipe, reset) and not one byte was
//! written to the socket after the command was handed to it; its bytes never left this
//! process, so Redis never saw it and sending it again is its first execution (scripts
//! included). A command that failed after bytes were written (a reply lost in the crash,
//! a response timeout) may have run: it is never repeated here; the caller gets the error
//! (HTTP 503, indeterminate), as before. See docs/operating.md, "Connections and retries".
//!
//! Why not deadpool-redis: its pool PINGs a connection on every checkout, one extra round
//! trip per request, while a multiplexed connection needs no checkout at all. Why not the
//! crate's `ConnectionManager`: it notices a closed connection only when a command fails
//! on it (with RESP2), so every pooled connection failed one request after a restart, and
//! its errors do not say whether the failed command was written.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt, Shared};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, FromRedisValue, Pipeline, RedisConnectionInfo,
    RedisError, RedisFuture, RedisResult, TlsMode, Value,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Notify};

use super::cluster::ClusterHandle;
use super::lanes::Lanes;
use crate::config::{RedisMode, RedisSettings};

/// One connection of any topology; commands are routed by the client library
/// (MOVED/ASK/TRYAGAIN are followed in cluster mode).
#[derive(Clone)]
pub enum Conn {
    /// Standalone or Sentinel: a pool slot shared by requests, or a task's own
    /// connection for blocking reads; either replaces itself once Redis closed it.
    Healing(Healing),
    /// Redis Cluster: replaced by a fresh connection when it stops answering.
    Cluster(ClusterHandle),
}

/// A node whose keys a `SCAN` walks: a cluster master (host, port), or `None` for the one
/// server of a standalone or Sentinel deployment.
type ScanNode = Option<(String, u16)>;

impl Conn {
    /// Redis Cluster: a script may touch the keys of one slot only.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    /// Redis Cluster with a master that did not answer the last probe: periodic fan-outs
    /// to every master (the gauges' `SCAN`s) wait for the next round.
    pub fn degraded(&self) -> bool {
        matches!(self, Conn::Cluster(c) if c.degraded())
    }

    /// Runs commands whose keys may lie in different slots (e.g. one per partition) and
    /// returns their replies in order: one pipeline on a single server; on a cluster each
    /// command on its own, all in flight at once, since a pipeline there must stay in one
    /// slot.
    pub async fn query_each<T: FromRedisValue>(
        &mut self,
        commands: Vec<Cmd>,
    ) -> RedisResult<Vec<T>> {
        if let Conn::Cluster(cluster) = self {
            let calls = commands.into_iter().map(|command| {
                let mut cluster = Conn::Cluster(cluster.clone());
                async move { command.query_async::<T>(&mut cluster).await }
            });
            return futures_util::future::try_join_all(calls).await;
        }
        let mut pipe = redis::pipe();
        for command in commands {
            pipe.add_command(command);
        }
        pipe.query_async(self).await
    }

    /// Runs `cmd` on every master (cluster: replies combined by `policy`), or on the one
    /// server. Scripts matter only where they run: a replica, possibly just restarted and
    /// not yet reconnected by the cluster client, is not asked.
    pub async fn on_masters(
        &mut self,
        cmd: Cmd,
        policy: redis::cluster_routing::ResponsePolicy,
    ) -> RedisResult<Value> {
        match self {
            Conn::Cluster(c) => {
                let masters = RoutingInfo::MultiNode((
                    redis::cluster_routing::MultipleNodeRoutingInfo::AllMasters,
                    Some(policy),
                ));
                c.route_command(cmd, masters).await
            }
            Conn::Healing(_) => cmd.query_async(self).await,
        }
    }

    /// Loads `script` on every master (cluster), or on the one server.
    pub async fn load_on_masters(&mut self, script: &redis::Script) -> RedisResult<()> {
        match self {
            Conn::Cluster(c) => {
                let _: String = script
                    .prepare_invoke()
                    .load_async(&mut MastersOnly(c.clone()))
                    .await?;
            }
            Conn::Healing(_) => {
                let _: String = script.prepare_invoke().load_async(self).await?;
            }
        }
        Ok(())
    }

    /// The nodes whose keys together are the whole keyspace: every master of a cluster
    /// (`SCAN` on a cluster connection walks one node only), else the one server.
    async fn scan_nodes(&mut self) -> RedisResult<Vec<ScanNode>> {
        let Conn::Cluster(c) = self else {
            return Ok(vec![None]);
        };
        let slots: Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(c).await?;
        let mut masters = super::cluster::masters_of(&slots);
        masters.sort();
        masters.dedup();
        Ok(masters.into_iter().map(Some).collect())
    }

    /// Every key matching `pattern` on every node (`SCAN … COUNT 1000` pages), or None
    /// when more than `max_examined` keys would have to be examined (SCAN is O(keyspace)).
    pub async fn scan_keys(
        &mut self,
        pattern: &str,
        max_examined: Option<usize>,
    ) -> RedisResult<Option<Vec<String>>> {
        const PAGE: usize = 1000;
        let mut found = Vec::new();
        let mut examined = 0usize;
        for node in self.scan_nodes().await? {
            let mut cursor = 0u64;
            loop {
                if max_examined.is_some_and(|max| examined >= max) {
                    return Ok(None);
                }
                let (next, batch) = self.scan_page(&node, cursor, pattern, PAGE).await?;
                examined += PAGE;
                found.extend(batch);
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(Some(found))
    }

    /// One page of `SCAN cursor MATCH pattern COUNT count` on `node`: the next cursor
    /// (0 = done) and the keys found.
    async fn scan_page(
        &mut self,
        node: &ScanNode,
        cursor: u64,
        pattern: &str,
        count: usize,
    ) -> RedisResult<(u64, Vec<String>)> {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count);
        let reply = match (node, &mut *self) {
            (Some((host, port)), Conn::Cluster(c)) => {
                let to = SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                };
                c.route_command(scan, RoutingInfo::SingleNode(to)).await?
            }
            _ => scan.query_async(self).await?,
        };
        Ok(redis::from_redis_value(reply)?)
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Healing(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Healing(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Healing(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A cluster connection that sends every command to all masters (`SCRIPT LOAD`, which
/// the client library would send to every node, replicas included).
struct MastersOnly(ClusterHandle);

impl ConnectionLike for MastersOnly {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let masters = RoutingInfo::MultiNode((
            redis::cluster_routing::MultipleNodeRoutingInfo::AllMasters,
            Some(redis::cluster_routing::ResponsePolicy::AllSucceeded),
        ));
        Box::pin(self.0.route_command(cmd.clone(), masters))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.0.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

/// Where connections come from.
enum Source {
    Single(Arc<Target>),
    /// Clients are made per use: each carries its own overall request timeout.
    Cluster,
}

#[derive(Clone)]
pub struct RedisPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    conns: Vec<Conn>,
    /// Connections of their own for writes that wait for replicas (`redis.wait_replicas`).
    lanes: Option<Lanes>,
    next: AtomicUsize,
    source: Source,
    settings: RedisSettings,
}

impl RedisPool {
    /// Opens the pool. Connections are made in the background (and on first use), so
    /// Herald starts (and reports not ready) while Redis is unreachable.
    pub fn open(settings: &RedisSettings) -> RedisResult<Self> {
        let size = settings.pool_size.max(1);
        let connect_timeout = Duration::from_millis(settings.connect_timeout_ms);
        let response_timeout = Duration::from_millis(settings.response_timeout_ms);
        let confirms = settings.wait_replicas > 0;
        let single = |target: Target| {
            let target = Arc::new(target);
            let conns = (0..size)
                .map(|_| Healing::open(&target, connect_timeout, response_timeout))
                .map(Conn::Healing)
                .collect();
            let lanes =
                confirms.then(|| Lanes::single(target.clone(), connect_timeout, response_timeout));
            (Source::Single(target), conns, lanes)
        };
        let (source, conns, lanes) = match settings.mode {
            RedisMode::Standalone => single(Target::Standalone(Box::new(redis::Client::open(
                settings.url.as_str(),
            )?))),
            RedisMode::Sentinel => {
                let state = Arc::new(SentinelState {
                    sentinel: Mutex::new(sentinel_client(settings)?),
                    master: settings.sentinel_master.clone(),
                    slots: std::sync::Mutex::new(Vec::new()),
                });
                SentinelState::watch(&state, settings, connect_timeout)?;
                single(Target::Sentinel(state))
            }
            RedisMode::Cluster => {
                let client = cluster_client(settings, response_timeout)?;
                let config = ClusterConfig::new()
                    .set_connection_timeout(connect_timeout)
                    .set_response_timeout(response_timeout);
                // One cluster connection: it already holds one multiplexed connection per
                // node, and every clone shares them. It is watched and replaced when it
                // stops answering (store/cluster.rs).
                let handle = ClusterHandle::new(client, config, connect_timeout + response_timeout);
                handle.watch(seed_clients(settings)?, response_timeout);
                let lanes = match (confirms, settings.nodes.first()) {
                    (true, Some(seed)) => Some(Lanes::cluster(
                        handle.clone(),
                        with_credentials(seed, settings)?.parse()?,
                        connect_timeout,
                        response_timeout,
                    )),
                    _ => None,
                };
                (Source::Cluster, vec![Conn::Cluster(handle)], lanes)
            }
        };
        let pool = Self {
            inner: Arc::new(PoolInner {
                conns,
                lanes,
                next: AtomicUsize::new(0),
                source,
                settings: settings.clone(),
            }),
        };
        Ok(pool)
    }

    /// The connections of writes that wait for replicas; `None` unless
    /// `redis.wait_replicas` is set.
    pub fn lanes(&self) -> Option<Lanes> {
        self.inner.lanes.clone()
    }

    /// A connection for one request (round robin over the pool).
    pub fn get(&self) -> Conn {
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.conns.len();
        self.inner.conns[i].clone()
    }

    /// A new connection owned by one task, for blocking reads: its response timeout is
    /// `block` plus the configured response timeout. It is connected before it is
    /// returned (an error if Redis cannot be reached) and heals like the pool's.
    pub async fn dedicated(&self, block: Duration) -> RedisResult<Conn> {
        let s = &self.inner.settings;
        let connect_timeout = Duration::from_millis(s.connect_timeout_ms);
        let response_timeout = block + Duration::from_millis(s.response_timeout_ms);
        match &self.inner.source {
            Source::Single(target) => {
                let conn = Healing::open(target, connect_timeout, response_timeout);
                conn.slot.live().await?;
                Ok(Conn::Healing(conn))
            }
            Source::Cluster => {
                let client = cluster_client(s, response_timeout)?;
                let config = ClusterConfig::new()
                    .set_connection_timeout(connect_timeout)
                    .set_response_timeout(response_timeout);
                let handle = ClusterHandle::new(client, config, connect_timeout + response_timeout);
                // Connected before it is returned, within a bound: the library itself
                // does not bound making the connection.
                let ping = redis::cmd("PING");
                let connected = tokio::time::timeout(
                    connect_timeout + Duration::from_millis(s.response_timeout_ms),
                    ping.query_async::<()>(&mut Conn::Cluster(handle.clone())),
                )
                .await
                .map_err(|_| RedisError::from(io::Error::from(io::ErrorKind::TimedOut)))?;
                connected?;
                Ok(Conn::Cluster(handle))
            }
        }
    }
}

/// `user:password` for a data node: from the settings, as the URL may name none.
fn node_credentials(settings: &RedisSettings) -> RedisConnectionInfo {
    let mut info = RedisConnectionInfo::default();
    if !settings.username.is_empty() {
        info = info.set_username(&settings.username);
    }
    if !settings.password.is_empty() {
        info = info.set_password(&settings.password);
    }
    info
}

/// A node URL with the configured credentials filled in where it names none.
fn with_credentials(url: &str, settings: &RedisSettings) -> RedisResult<String> {
    let invalid = |what: &str| {
        RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "invalid node URL",
            format!("{what}: {url}"),
        ))
    };
    let mut parsed = url::Url::parse(url).map_err(|_| invalid("not a URL"))?;
    if parsed.password().is_none() && !settings.password.is_empty() {
        if parsed.username().is_empty() && !settings.username.is_empty() {
            parsed
                .set_username(&settings.username)
                .map_err(|_| invalid("cannot carry a user name"))?;
        }
        parsed
            .set_password(Some(&settings.password))
            .map_err(|_| invalid("cannot carry a password"))?;
    }
    Ok(parsed.into())
}

fn uses_tls(settings: &RedisSettings) -> bool {
    settings.nodes.iter().any(|n| n.starts_with("rediss://"))
}

fn sentinel_client(settings: &RedisSettings) -> RedisResult<SentinelClient> {
    let sentinels = settings
        .nodes
        .iter()
        .map(|n| with_credentials(n, settings))
        .collect::<RedisResult<Vec<_>>>()?;
    let mut node =
        SentinelNodeConnectionInfo::default().set_redis_connection_info(node_credentials(settings));
    if uses_tls(settings) {
        node = node.set_tls_mode(TlsMode::Secure);
    }
    SentinelClient::build(
        sentinels,
        settings.sentinel_master.clone(),
        Some(node),
        SentinelServerType::Master,
    )
}

/// Clients for the configured cluster nodes (with credentials), for the probe's own
/// connections.
fn seed_clients(settings: &RedisSettings) -> RedisResult<Vec<redis::Client>> {
    settings
        .nodes
        .iter()
        .map(|n| redis::Client::open(with_credentials(n, settings)?))
        .collect()
}

/// A cluster client whose every request (retries included) ends within `overall`: the
/// response timeout of a `ClusterConfig` alone does not bound a request waiting for a
/// node connection under repair, which could then hang.
fn cluster_client(settings: &RedisSettings, overall: Duration) -> RedisResult<ClusterClient> {
    let mut builder = ClusterClient::builder(settings.nodes.clone())
        .overall_response_timeout(Some(overall))
        // A failover takes seconds: retry MOVED/TRYAGAIN/CLUSTERDOWN and lost nodes a few
        // times, but answer within about one response timeout overall.
        .retries(5)
        .min_retry_wait(20)
        .max_retry_wait(500);
    if !settings.username.is_empty() {
        builder = builder.username(&settings.username);
    }
    if !settings.password.is_empty() {
        builder = builder.password(&settings.password);
    }
    if uses_tls(settings) {
        builder = builder.tls(TlsMode::Secure);
    }
    builder.build()
}

/// How often the sentinels are asked whether the master moved.
const SENTINEL_POLL: Duration = Duration::from_millis(500);

/// How often a connection whose closing is not seen at once (TLS, Unix socket) is checked
/// with a PING, and how often a healthy connection's background task looks at it.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// Longest pause between two reconnection attempts while Redis is away.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// What a standalone or Sentinel connection connects to.
pub(super) enum Target {
    Standalone(Box<redis::Client>),
    /// Whatever server the sentinels currently call master.
    Sentinel(Arc<SentinelState>),
}

/// A connection that heals: a multiplexed connection to the server (for Sentinel: the
/// current master), replaced in the background once it is closed.
///
/// Clones share the connection. It is replaced when Redis closes it (seen at once on
/// plain TCP, by a PING every second on TLS and Unix sockets), when a command fails
/// because it is gone, and for Sentinel when a command finds the server demoted
/// (`READONLY`, ...) or the sentinels name another master (polled every 500 ms: after a
/// failover the old master may accept writes until the sentinels demote it, and those
/// writes would be lost). See the module documentation for which failed commands are
/// sent again.
#[derive(Clone)]
pub struct Healing {
    slot: Arc<Slot>,
}

struct Slot {
    target: Arc<Target>,
    config: AsyncConnectionConfig,
    connect_timeout: Duration,
    db: i64,
    state: std::sync::Mutex<SlotState>,
    /// Wakes the slot's background task: the connection closed or was dropped.
    wake: Arc<Notify>,
}

#[derive(Default)]
struct SlotState {
    live: Option<Live>,
    /// The connection attempt under way, shared by everyone who needs the connection.
    connecting: Option<Shared<BoxFuture<'static, RedisResult<Live>>>>,
}

#[derive(Clone)]
struct Live {
    /// `host:port` of the server.
    addr: String,
    conn: MultiplexedConnection,
    wire: Arc<Wire>,
}

/// What is known about a connection's socket.
#[derive(Default)]
struct Wire {
    /// The connection is gone: its driver ended (Redis closed it, reading or writing
    /// failed) or it was dropped after an error. A command handed to it now is never
    /// written.
    closed: AtomicBool,
    /// Bytes the socket has accepted so far.
    written: AtomicU64,
    /// Whether `closed` is set the moment the driver ends (own TCP connections); if not
    /// (TLS, Unix sockets), a PING every [`HEALTH_INTERVAL`] finds out, and `written`
    /// stays 0 so no failed command on it is ever sent again.
    watched: bool,
}

impl Wire {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }
}

impl Healing {
    /// A connection to `target`, opened by its background task (and by the first command
    /// if that comes first).
    pub(super) fn open(
        target: &Arc<Target>,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Self {
        let db = match &**target {
            Target::Standalone(client) => client.get_connection_info().redis_settings().db(),
            Target::Sentinel(_) => 0,
        };
        let slot = Arc::new(Slot {
            target: target.clone(),
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(Some(response_timeout)),
            connect_timeout,
            db,
            state: std::sync::Mutex::new(SlotState::default()),
            wake: Arc::new(Notify::new()),
        });
        if let Target::Sentinel(sentinel) = &**target {
            let mut slots = sentinel.slots.lock().expect("sentinel slots");
            slots.retain(|s| s.strong_count() > 0);
            slots.push(Arc::downgrade(&slot));
        }
        Slot::maintain(&slot);
        Healing { slot }
    }

    /// Sends `request`; once more on a fresh connection if it cannot have reached Redis.
    async fn send(&self, request: Request<'_>) -> RedisResult<Value> {
        let live = self.slot.live().await?;
        let written = live.wire.written();
        let mut result = request.send(&live).await;
        if let Err(e) = &result {
            if connection_lost(e) {
                self.slot.discard(&live);
                // Not one byte went out after the command was handed over: the command
                // did not leave this process, so Redis never saw it. (A watched wire
                // counts every byte the socket took; an unwatched one never qualifies.)
                if live.wire.watched && live.wire.written() == written {
                    tracing::debug!(server = %live.addr, error = %e, "redis connection was closed; sending the command on a new one");
                    crate::telemetry::metrics::redis_resent();
                    let fresh = self.slot.live().await?;
                    result = request.send(&fresh).await;
                    if result.as_ref().is_err_and(connection_lost) {
                        self.slot.discard(&fresh);
                    }
                }
            }
        }
        if let (Err(e), Target::Sentinel(_)) = (&result, &*self.slot.target) {
            if master_lost(e) {
                self.slot.discard_current();
            }
        }
        result
    }
}

/// One command or a pipeline, as `ConnectionLike` hands them over.
enum Request<'a> {
    One(&'a Cmd),
    Many(&'a Pipeline, usize, usize),
}

impl Request<'_> {
    async fn send(&self, live: &Live) -> RedisResult<Value> {
        let mut conn = live.conn.clone();
        match *self {
            Request::One(cmd) => conn.req_packed_command(cmd).await,
            Request::Many(pipeline, offset, count) => conn
                .req_packed_commands(pipeline, offset, count)
                .await
                .map(Value::Array),
        }
    }
}

/// The connection failed as a connection (closed, broken pipe, reset), not a command.
fn connection_lost(e: &RedisError) -> bool {
    e.is_connection_dropped()
}

impl Slot {
    /// The open connection, or a new one (one attempt at a time, shared by all callers).
    async fn live(&self) -> RedisResult<Live> {
        let attempt = {
            let mut state = self.state.lock().expect("slot state");
            if let Some(live) = &state.live {
                if !live.wire.is_closed() {
                    return Ok(live.clone());
                }
                state.live = None;
            }
            match &state.connecting {
                Some(attempt) => attempt.clone(),
                None => {
                    let attempt = connect(
                        self.target.clone(),
                        self.config.clone(),
                        self.connect_timeout,
                        self.wake.clone(),
                    )
                    .boxed()
                    .shared();
                    state.connecting = Some(attempt.clone());
                    attempt
                }
            }
        };
        let result = attempt.clone().await;
        let mut state = self.state.lock().expect("slot state");
        if state
            .connecting
            .as_ref()
            .is_some_and(|a| a.ptr_eq(&attempt))
        {
            state.connecting = None;
            if let Ok(live) = &result {
                state.live = Some(live.clone());
            }
        }
        result
    }

    /// Drops `live` (if it is still the slot's connection) and wakes the background task.
    fn discard(&self, live: &Live) {
        live.wire.closed.store(true, Ordering::SeqCst);
        let mut state = self.state.lock().expect("slot state");
        if state
            .live
            .as_ref()
            .is_some_and(|l| Arc::ptr_eq(&l.wire, &live.wire))
        {
            state.live = None;
        }
        drop(state);
        self.wake.notify_one();
    }

    /// Drops the slot's connection, whichever it is.
    fn discard_current(&self) {
        let live = self.state.lock().expect("slot state").live.clone();
        if let Some(live) = live {
            self.discard(&live);
        }
    }

    /// The server of the slot's open connection.
    fn addr(&self) -> Option<String> {
        let state = self.state.lock().expect("slot state");
        state.live.as_ref().map(|l| l.addr.clone())
    }

    /// Opens the connection and keeps it open: after it closes, a new one is opened at
    /// once, then every 50 ms doubling up to [`MAX_RECONNECT_DELAY`] while that fails.
    /// Ends when the slot is dropped. (Outside a Tokio runtime nothing is started: the
    /// next command then opens the connection.)
    fn maintain(slot: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(slot);
        let wake = slot.wake.clone();
        runtime.spawn(async move {
            let mut failures = 0u32;
            let mut was_lost = false;
            loop {
                let woken = wake.notified();
                let Some(slot) = weak.upgrade() else { return };
                let pause = match slot.check().await {
                    Ok(addr) => {
                        if was_lost {
                            tracing::info!(server = %addr, "redis connection re-established");
                        }
                        failures = 0;
                        was_lost = false;
                        HEALTH_INTERVAL
                    }
                    Err(e) => {
                        if !was_lost {
                            tracing::warn!(error = %e, "redis connection lost; reconnecting in the background");
                        }
                        was_lost = true;
                        failures += 1;
                        (Duration::from_millis(50) * 2u32.pow(failures.min(5)))
                            .min(MAX_RECONNECT_DELAY)
                    }
                };
                drop(slot);
                let _ = tokio::time::timeout(pause, woken).await;
            }
        });
    }

    /// Makes sure the connection is open (PINGs one whose closing is not seen at once);
    /// returns its server.
    async fn check(&self) -> RedisResult<String> {
        let live = self.live().await?;
        if !live.wire.watched {
            let ping: RedisResult<()> =
                redis::cmd("PING").query_async(&mut live.conn.clone()).await;
            if let Err(e) = ping {
                if connection_lost(&e) || e.is_timeout() {
                    self.discard(&live);
                }
                return Err(e);
            }
        }
        Ok(live.addr)
    }
}

/// Opens a connection to the target's server (for Sentinel: the master the sentinels
/// name). On plain TCP the socket is Herald's own, so it knows when the connection ends
/// and how many bytes it wrote; TLS and Unix sockets are opened by the client library.
async fn connect(
    target: Arc<Target>,
    config: AsyncConnectionConfig,
    connect_timeout: Duration,
    wake: Arc<Notify>,
) -> RedisResult<Live> {
    let client = match &*target {
        Target::Standalone(client) => (**client).clone(),
        Target::Sentinel(state) => {
            // Asking the sentinels is bounded too (the library bounds only connecting).
            let asked = tokio::time::timeout(connect_timeout * 2, async {
                state.sentinel.lock().await.async_get_client().await
            })
            .await
            .map_err(|_| RedisError::from(io::Error::from(io::ErrorKind::TimedOut)))?;
            asked.map_err(|e| failover_in_progress(e, &state.master))?
        }
    };
    let info = client.get_connection_info();
    let addr = info.addr().to_string();
    let ConnectionAddr::Tcp(host, port) = info.addr() else {
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        return Ok(Live {
            addr,
            conn,
            wire: Arc::new(Wire::default()),
        });
    };
    let wire = Arc::new(Wire {
        watched: true,
        ..Wire::default()
    });
    let opening = async {
        let socket = TcpStream::connect((host.as_str(), *port)).await?;
        socket.set_nodelay(true)?;
        let stream = CountingStream {
            inner: socket,
            wire: wire.clone(),
        };
        MultiplexedConnection::new_with_config(info.redis_settings(), stream, config).await
    };
    let (conn, driver) = tokio::time::timeout(connect_timeout, opening)
        .await
        .map_err(|_| RedisError::from(io::Error::from(io::ErrorKind::TimedOut)))??;
    let ended = wire.clone();
    // The driver reads replies all the time, so it ends as soon as Redis closes the
    // connection (or when every clone of `conn` is dropped).
    tokio::spawn(async move {
        driver.await;
        ended.closed.store(true, Ordering::SeqCst);
        wake.notify_one();
    });
    Ok(Live { addr, conn, wire })
}

/// A TCP socket that counts the bytes it accepted for writing.
struct CountingStream {
    inner: TcpStream,
    wire: Arc<Wire>,
}

impl CountingStream {
    fn count(&self, written: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = written {
            self.wire.written.fetch_add(*n as u64, Ordering::SeqCst);
        }
    }
}

impl AsyncRead for CountingStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountingStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.count(&written);
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.count(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl ConnectionLike for Healing {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(self.send(Request::One(cmd)))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            match self.send(Request::Many(pipeline, offset, count)).await? {
                Value::Array(replies) => Ok(replies),
                _ => unreachable!("a pipeline's replies are wrapped in an array"),
            }
        })
    }

    fn get_db(&self) -> i64 {
        self.slot.db
    }
}

/// The sentinels, and every connection that follows the master they name.
pub(super) struct SentinelState {
    sentinel: Mutex<SentinelClient>,
    /// `redis.sentinel_master`.
    master: String,
    /// Pool slots and readers' own connections, told to leave a master the sentinels no
    /// longer name.
    slots: std::sync::Mutex<Vec<Weak<Slot>>>,
}

impl SentinelState {
    /// Starts the task that polls the sentinels for the master's address; it ends when
    /// the last connection is dropped. (Outside a Tokio runtime nothing is started: errors
    /// alone then make the connections follow a failover.)
    fn watch(
        state: &Arc<Self>,
        settings: &RedisSettings,
        connect_timeout: Duration,
    ) -> RedisResult<()> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Ok(());
        };
        let sentinels = settings
            .nodes
            .iter()
            .map(|n| redis::Client::open(with_credentials(n, settings)?))
            .collect::<RedisResult<Vec<_>>>()?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(Duration::from_millis(settings.response_timeout_ms)));
        let master = settings.sentinel_master.clone();
        let state = Arc::downgrade(state);
        runtime.spawn(async move {
            let mut conns: Vec<Option<MultiplexedConnection>> = vec![None; sentinels.len()];
            loop {
                tokio::time::sleep(SENTINEL_POLL).await;
                let Some(state) = state.upgrade() else { return };
                if let Some(addr) = ask_master(&sentinels, &mut conns, &config, &master).await {
                    state.forget_all_but(&addr);
                }
            }
        });
        Ok(())
    }

    fn forget_all_but(&self, master: &str) {
        let slots: Vec<Arc<Slot>> = {
            let mut slots = self.slots.lock().expect("sentinel slots");
            slots.retain(|s| s.strong_count() > 0);
            slots.iter().filter_map(Weak::upgrade).collect()
        };
        for slot in slots {
            if slot.addr().is_some_and(|addr| addr != master) {
                tracing::warn!(master, "the sentinels named a new master; reconnecting");
                slot.discard_current();
            }
        }
    }
}

/// The master's `host:port` according to the first sentinel that answers.
async fn ask_master(
    sentinels: &[redis::Client],
    conns: &mut [Option<MultiplexedConnection>],
    config: &AsyncConnectionConfig,
    master: &str,
) -> Option<String> {
    for (client, conn) in sentinels.iter().zip(conns.iter_mut()) {
        if conn.is_none() {
            *conn = client
                .get_multiplexed_async_connection_with_config(config)
                .await
                .ok();
        }
        let Some(c) = conn.as_mut() else { continue };
        let reply: RedisResult<Option<(String, u16)>> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(master)
            .query_async(c)
            .await;
        match reply {
            Ok(Some((host, port))) => return Some(format!("{host}:{port}")),
            Ok(None) => {}
            Err(_) => *conn = None,
        }
    }
    None
}

/// The description of [`failover_in_progress`]'s error (its detail is the master's name).
pub(super) const FAILOVER_IN_PROGRESS: &str = "failover in progress";

/// The sentinels name no master for `master` (it is down and no replica is promoted yet):
/// the error says so, in words an operator reads in the log and a client in the 503.
fn failover_in_progress(e: RedisError, master: &str) -> RedisError {
    if e.kind() == redis::ErrorKind::MasterNameNotFoundBySentinel {
        RedisError::from((
            redis::ErrorKind::MasterNameNotFoundBySentinel,
            FAILOVER_IN_PROGRESS,
            master.to_owned(),
        ))
    } else {
        e
    }
}

/// The server is gone, or was demoted to a replica by a failover.
fn master_lost(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || matches!(e.code(), Some("READONLY" | "MASTERDOWN" | "LOADING"))
        // A script refused its first write on a replica.
        || e.to_string().contains("READONLY")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(password: &str) -> RedisSettings {
        let mut s = crate::config::Settings::defaults().redis;
        s.password = password.into();
        s
    }

    #[test]
    fn credentials_fill_in_only_urls_without_them() {
        assert_eq!(
            with_credentials("redis://s0:26379", &settings("pw")).unwrap(),
            "redis://:pw@s0:26379"
        );
        assert_eq!(
            with_credentials("rediss://u:own@s0:26379", &settings("pw")).unwrap(),
            "rediss://u:own@s0:26379"
        );
        assert_eq!(
            with_credentials("redis://s0:26379", &settings("")).unwrap(),
            "redis://s0:26379"
        );
    }
}
