//! Redis connections.
//!
//! Requests share a small set of multiplexed connections ([`RedisPool`]): each one carries
//! many concurrent commands, reconnects by itself, and fails a command after the
//! configured response timeout (so a stalled Redis becomes a 503, not a hung request).
//! Blocking stream reads never use these: every consumer opens its own connection
//! ([`RedisPool::dedicated`]) whose response timeout covers the block time.
//!
//! Why not deadpool-redis: its pool PINGs a connection on every checkout, one extra round
//! trip per request, while a multiplexed connection needs no checkout at all.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::config::RedisSettings;

/// One connection of either topology; commands are routed by the client library
/// (MOVED/ASK/TRYAGAIN are followed in cluster mode).
#[derive(Clone)]
pub enum Conn {
    /// Shared, reconnecting connection of a standalone Redis.
    Managed(ConnectionManager),
    /// A task's own connection (blocking reads); re-opened by its owner on failure.
    Direct(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Redis Cluster: a script may touch the keys of one slot only.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Managed(c) => c.req_packed_command(cmd),
            Conn::Direct(c) => c.req_packed_command(cmd),
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
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Managed(c) => c.get_db(),
            Conn::Direct(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

#[derive(Clone)]
pub struct RedisPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    conns: Vec<Conn>,
    next: AtomicUsize,
    settings: RedisSettings,
}

impl RedisPool {
    /// Opens the pool. Connections are made lazily, so Herald starts (and reports not
    /// ready) while Redis is unreachable.
    pub fn open(settings: &RedisSettings) -> redis::RedisResult<Self> {
        let client = redis::Client::open(settings.url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(settings.connect_timeout_ms)))
            .set_response_timeout(Some(Duration::from_millis(settings.response_timeout_ms)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conns = (0..settings.pool_size.max(1))
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), config.clone()))
            .map(|r| r.map(Conn::Managed))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            inner: Arc::new(PoolInner {
                conns,
                next: AtomicUsize::new(0),
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
    pub async fn dedicated(&self, block: Duration) -> redis::RedisResult<Conn> {
        let s = &self.inner.settings;
        let client = redis::Client::open(s.url.as_str())?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(s.connect_timeout_ms)))
            .set_response_timeout(Some(block + Duration::from_millis(s.response_timeout_ms)));
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(Conn::Direct(conn))
    }
}
