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
//! many concurrent commands, reconnects by itself, and fails a command after the
//! configured response timeout (so a stalled Redis becomes a 503, not a hung request).
//! In cluster mode the pool is one cluster connection, itself multiplexed over one
//! connection per node. Blocking stream reads never use these: every consumer opens its
//! own connection ([`RedisPool::dedicated`]) whose response timeout covers the block time.
//!
//! Why not deadpool-redis: its pool PINGs a connection on every checkout, one extra round
//! trip per request, while a multiplexed connection needs no checkout at all.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Cmd, FromRedisValue, Pipeline, RedisConnectionInfo, RedisError,
    RedisFuture, RedisResult, TlsMode, Value,
};
use tokio::sync::Mutex;

use crate::config::{RedisMode, RedisSettings};

/// One connection of any topology; commands are routed by the client library
/// (MOVED/ASK/TRYAGAIN are followed in cluster mode).
#[derive(Clone)]
pub enum Conn {
    /// Shared, reconnecting connection of a standalone Redis.
    Managed(ConnectionManager),
    /// A task's own connection (blocking reads); re-opened by its owner on failure.
    Direct(MultiplexedConnection),
    /// Shared connection to the current master of a Sentinel-monitored Redis.
    Sentinel(SentinelConn),
    Cluster(ClusterConnection),
}

/// A node whose keys a `SCAN` walks: a cluster master (host, port), or `None` for the one
/// server of a standalone or Sentinel deployment.
type ScanNode = Option<(String, u16)>;

impl Conn {
    /// Redis Cluster: a script may touch the keys of one slot only.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
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
                let mut cluster = cluster.clone();
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

    /// The nodes whose keys together are the whole keyspace: every master of a cluster
    /// (`SCAN` on a cluster connection walks one node only), else the one server.
    async fn scan_nodes(&mut self) -> RedisResult<Vec<ScanNode>> {
        let Conn::Cluster(c) = self else {
            return Ok(vec![None]);
        };
        let slots: Vec<Value> = redis::cmd("CLUSTER").arg("SLOTS").query_async(c).await?;
        // Each range is [start, end, [host, port, id, …] of its master, replicas…].
        let mut masters: Vec<(String, u16)> = slots
            .iter()
            .filter_map(|range| match range {
                Value::Array(items) => match items.get(2) {
                    Some(Value::Array(node)) => match (node.first(), node.get(1)) {
                        (Some(Value::BulkString(host)), Some(Value::Int(port))) => Some((
                            String::from_utf8_lossy(host).into_owned(),
                            u16::try_from(*port).ok()?,
                        )),
                        _ => None,
                    },
                    _ => None,
                },
                _ => None,
            })
            .collect();
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
            Conn::Managed(c) => c.req_packed_command(cmd),
            Conn::Direct(c) => c.req_packed_command(cmd),
            Conn::Sentinel(c) => c.req_packed_command(cmd),
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
            Conn::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Direct(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Managed(c) => c.get_db(),
            Conn::Direct(c) => c.get_db(),
            Conn::Sentinel(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Where connections come from (one per pool, so the size difference does not matter).
#[allow(clippy::large_enum_variant)]
enum Source {
    Standalone(redis::Client),
    Sentinel(Arc<Mutex<SentinelClient>>),
    Cluster(ClusterClient),
}

#[derive(Clone)]
pub struct RedisPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    conns: Vec<Conn>,
    next: AtomicUsize,
    source: Source,
    settings: RedisSettings,
}

impl RedisPool {
    /// Opens the pool. Connections are made lazily, so Herald starts (and reports not
    /// ready) while Redis is unreachable.
    pub fn open(settings: &RedisSettings) -> RedisResult<Self> {
        let size = settings.pool_size.max(1);
        let connect_timeout = Duration::from_millis(settings.connect_timeout_ms);
        let response_timeout = Duration::from_millis(settings.response_timeout_ms);
        let (source, conns) = match settings.mode {
            RedisMode::Standalone => {
                let client = redis::Client::open(settings.url.as_str())?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(response_timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                let conns = (0..size)
                    .map(|_| {
                        ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                    })
                    .map(|r| r.map(Conn::Managed))
                    .collect::<Result<Vec<_>, _>>()?;
                (Source::Standalone(client), conns)
            }
            RedisMode::Sentinel => {
                let client = Arc::new(Mutex::new(sentinel_client(settings)?));
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(response_timeout));
                let state = Arc::new(SentinelState {
                    sentinel: client.clone(),
                    config,
                    slots: (0..size).map(|_| Mutex::new(None)).collect(),
                });
                SentinelState::watch(&state, settings)?;
                let conns = (0..size)
                    .map(|slot| {
                        Conn::Sentinel(SentinelConn {
                            state: state.clone(),
                            slot,
                        })
                    })
                    .collect();
                (Source::Sentinel(client), conns)
            }
            RedisMode::Cluster => {
                let client = cluster_client(settings)?;
                let config = ClusterConfig::new()
                    .set_connection_timeout(connect_timeout)
                    .set_response_timeout(response_timeout);
                // One cluster connection: it already holds one multiplexed connection per
                // node, and every clone shares them.
                let conn = client.get_pending_async_connection_with_config(config);
                (Source::Cluster(client), vec![Conn::Cluster(conn)])
            }
        };
        Ok(Self {
            inner: Arc::new(PoolInner {
                conns,
                next: AtomicUsize::new(0),
                source,
                settings: settings.clone(),
            }),
        })
    }

    /// A connection for one request (round robin over the pool).
    pub fn get(&self) -> Conn {
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.conns.len();
        self.inner.conns[i].clone()
    }

    /// A new connection owned by one task, for blocking reads: its response timeout is
    /// `block` plus the configured response timeout.
    pub async fn dedicated(&self, block: Duration) -> RedisResult<Conn> {
        let s = &self.inner.settings;
        let connect_timeout = Duration::from_millis(s.connect_timeout_ms);
        let response_timeout = block + Duration::from_millis(s.response_timeout_ms);
        match &self.inner.source {
            Source::Standalone(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(response_timeout));
                let conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                Ok(Conn::Direct(conn))
            }
            Source::Sentinel(sentinel) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(response_timeout));
                let conn = sentinel
                    .lock()
                    .await
                    .get_async_connection_with_config(&config)
                    .await?;
                Ok(Conn::Direct(conn))
            }
            Source::Cluster(client) => {
                let config = ClusterConfig::new()
                    .set_connection_timeout(connect_timeout)
                    .set_response_timeout(response_timeout);
                let conn = client.get_async_connection_with_config(config).await?;
                Ok(Conn::Cluster(conn))
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

fn cluster_client(settings: &RedisSettings) -> RedisResult<ClusterClient> {
    let mut builder = ClusterClient::builder(settings.nodes.clone())
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

/// A connection to whatever server the sentinels currently call master.
///
/// Clones share the connection (one of the pool's slots). It is opened on first use and
/// dropped when a command fails in a way that means the server is gone or no longer the
/// master, or when the sentinels name another master (polled every 500 ms: after a
/// failover the old master may accept writes until the sentinels demote it, and those
/// writes would be lost). The command after that asks the sentinels again. A failing
/// command is not retried here: its caller reports 503 (nothing was acknowledged).
#[derive(Clone)]
pub struct SentinelConn {
    state: Arc<SentinelState>,
    slot: usize,
}

struct SentinelState {
    sentinel: Arc<Mutex<SentinelClient>>,
    config: AsyncConnectionConfig,
    /// Per pool slot: the master's `host:port` and the connection to it.
    slots: Vec<Mutex<Option<(String, MultiplexedConnection)>>>,
}

impl SentinelState {
    /// Starts the task that polls the sentinels for the master's address; it ends when
    /// the pool is dropped. (Outside a Tokio runtime nothing is started: errors alone
    /// then make the connections follow a failover.)
    fn watch(state: &Arc<Self>, settings: &RedisSettings) -> RedisResult<()> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Ok(());
        };
        let sentinels = settings
            .nodes
            .iter()
            .map(|n| redis::Client::open(with_credentials(n, settings)?))
            .collect::<RedisResult<Vec<_>>>()?;
        let config = state.config.clone();
        let master = settings.sentinel_master.clone();
        let state = Arc::downgrade(state);
        runtime.spawn(async move {
            let mut conns: Vec<Option<MultiplexedConnection>> = vec![None; sentinels.len()];
            loop {
                tokio::time::sleep(SENTINEL_POLL).await;
                let Some(state) = state.upgrade() else { return };
                if let Some(addr) = ask_master(&sentinels, &mut conns, &config, &master).await {
                    state.forget_all_but(&addr).await;
                }
            }
        });
        Ok(())
    }

    async fn forget_all_but(&self, master: &str) {
        for slot in &self.slots {
            let mut slot = slot.lock().await;
            if slot.as_ref().is_some_and(|(addr, _)| addr != master) {
                tracing::warn!(master, "the sentinels named a new master; reconnecting");
                slot.take();
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

impl SentinelConn {
    async fn connection(&self) -> RedisResult<MultiplexedConnection> {
        let mut slot = self.state.slots[self.slot].lock().await;
        if let Some((_, conn)) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let client = self.state.sentinel.lock().await.async_get_client().await?;
        let addr = client.get_connection_info().addr().to_string();
        let conn = client
            .get_multiplexed_async_connection_with_config(&self.state.config)
            .await?;
        *slot = Some((addr, conn.clone()));
        Ok(conn)
    }

    /// Drops the slot's connection after `error` if it means the master moved or died.
    async fn observe<T>(&self, result: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &result {
            if master_lost(e) {
                self.state.slots[self.slot].lock().await.take();
            }
        }
        result
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

impl ConnectionLike for SentinelConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = async { self.connection().await?.req_packed_command(cmd).await }.await;
            self.observe(result).await
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = async {
                self.connection()
                    .await?
                    .req_packed_commands(pipeline, offset, count)
                    .await
            }
            .await;
            self.observe(result).await
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
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
