//! Connections of their own for writes that wait for replicas (`redis.wait_replicas`):
//! "lanes".
//!
//! Redis holds every later command of a client while that client is blocked in `WAIT`.
//! On the shared multiplexed connections every request, health check and slot query
//! would then queue behind a `WAIT` that cannot be satisfied (a promoted master without
//! an in-sync replica holds it for its whole timeout), so one master without replicas
//! slowed everything to a crawl. A confirmed write therefore takes a lane: a connection
//! used by one write at a time and by nothing else.
//!
//! - **Standalone and Sentinel**: [`LANES_PER_NODE`] healing connections to the server
//!   (for Sentinel: to the master the sentinels name, followed through failovers).
//! - **Cluster**: [`LANES_PER_NODE`] per master, opened on first use. The master of a
//!   write's slot comes from a slot map read with `CLUSTER SLOTS` through the request
//!   path's cluster connection; a `MOVED` reply (the slot moved in a failover) updates it
//!   and the write is sent once more to the new master: a `MOVED` write did not run.
//!
//! The whole write (waiting for a free lane, the script, `WAIT`) ends within
//! `redis.wait_timeout_ms` plus one round trip: a write that finds no lane free within
//! the timeout is refused without being sent, and `WAIT` is given only what is left of
//! the timeout. Either way the answer is 503, and with no lane free nothing was written.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::cluster::ClusterHandle;
use super::redis::{Conn, Healing, Target};

/// Writes waiting for replicas that may be under way at once on one node.
pub const LANES_PER_NODE: usize = 8;

/// The lanes of one process.
#[derive(Clone)]
pub struct Lanes {
    inner: Arc<Inner>,
}

enum Inner {
    /// The one server (standalone, or the master of a Sentinel setup).
    Single(Arc<Node>),
    Cluster {
        cluster: ClusterHandle,
        /// Ranges `(first slot, last slot, host, port)` of each master, sorted.
        slots: Mutex<Vec<(u16, u16, String, u16)>>,
        nodes: Mutex<HashMap<(String, u16), Arc<Node>>>,
        /// Settings of the node connections (credentials, TLS) and their timeouts.
        template: Box<redis::ConnectionInfo>,
        connect_timeout: Duration,
        response_timeout: Duration,
    },
}

/// The lanes to one server: idle connections and a permit per lane.
struct Node {
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<Healing>>,
    make: Box<dyn Fn() -> Healing + Send + Sync>,
}

/// A lane taken by one write; back to its node when dropped.
pub struct Lane {
    conn: Option<Healing>,
    node: Arc<Node>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Lane {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.node.idle.lock().expect("lanes").push(conn);
        }
    }
}

impl Lane {
    /// The lane's connection.
    pub fn conn(&self) -> Conn {
        Conn::Healing(self.conn.clone().expect("a lane holds its connection"))
    }
}

impl Node {
    fn new(make: Box<dyn Fn() -> Healing + Send + Sync>) -> Self {
        Node {
            permits: Arc::new(Semaphore::new(LANES_PER_NODE)),
            idle: Mutex::new(Vec::new()),
            make,
        }
    }

    /// A free lane, waiting at most `within`; `None` when none came free.
    async fn take(self: &Arc<Self>, within: Duration) -> Option<Lane> {
        let permit = tokio::time::timeout(within, self.permits.clone().acquire_owned())
            .await
            .ok()?
            .ok()?;
        let conn = self.idle.lock().expect("lanes").pop();
        Some(Lane {
            conn: Some(conn.unwrap_or_else(|| (self.make)())),
            node: self.clone(),
            _permit: permit,
        })
    }
}

/// Why no lane could be given.
#[derive(Debug)]
pub enum NoLane {
    /// Every lane of the node stayed busy for the whole timeout (its replicas do not
    /// confirm); nothing was sent.
    Busy,
    /// The master of the slot is not known (the slot map could not be read).
    NoMaster(String),
}

impl Lanes {
    /// Lanes to `target` (standalone, Sentinel).
    pub(super) fn single(
        target: Arc<Target>,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Self {
        let make = Box::new(move || Healing::open(&target, connect_timeout, response_timeout));
        Lanes {
            inner: Arc::new(Inner::Single(Arc::new(Node::new(make)))),
        }
    }

    /// Lanes to each master of the cluster `cluster` connects to; node connections are
    /// made like `template` (credentials, TLS) with its address replaced.
    pub(super) fn cluster(
        cluster: ClusterHandle,
        template: redis::ConnectionInfo,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Self {
        Lanes {
            inner: Arc::new(Inner::Cluster {
                cluster,
                slots: Mutex::new(Vec::new()),
                nodes: Mutex::new(HashMap::new()),
                template: Box::new(template),
                connect_timeout,
                response_timeout,
            }),
        }
    }

    /// A lane to the server that holds `key` (any lane when not a cluster), waiting at
    /// most `within` for one to come free.
    pub async fn take(&self, key: Option<&[u8]>, within: Duration) -> Result<Lane, NoLane> {
        let started = Instant::now();
        let node = match &*self.inner {
            Inner::Single(node) => node.clone(),
            Inner::Cluster { .. } => self.node_for(key.unwrap_or_default()).await?,
        };
        node.take(within.saturating_sub(started.elapsed()))
            .await
            .ok_or(NoLane::Busy)
    }

    /// The master at `host:port` now serves `slot` (a `MOVED` reply said so).
    pub fn moved(&self, slot: u16, host: &str, port: u16) {
        if let Inner::Cluster { slots, .. } = &*self.inner {
            let mut slots = slots.lock().expect("slot map");
            let mut updated: Vec<(u16, u16, String, u16)> = Vec::with_capacity(slots.len() + 2);
            for (first, last, h, p) in slots.drain(..) {
                if slot < first || slot > last {
                    updated.push((first, last, h, p));
                    continue;
                }
                if first < slot {
                    updated.push((first, slot - 1, h.clone(), p));
                }
                if slot < last {
                    updated.push((slot + 1, last, h, p));
                }
            }
            updated.push((slot, slot, host.to_owned(), port));
            updated.sort();
            *slots = updated;
        }
    }

    /// A lane's write failed as a connection (its master is down, or no longer one): the
    /// slot map is read again by the next write.
    pub fn connection_failed(&self) {
        if let Inner::Cluster { slots, .. } = &*self.inner {
            slots.lock().expect("slot map").clear();
        }
    }

    /// The lanes of the master serving `key`'s slot (the slot map is read when it has no
    /// answer).
    async fn node_for(&self, key: &[u8]) -> Result<Arc<Node>, NoLane> {
        let Inner::Cluster {
            cluster,
            slots,
            nodes,
            template,
            connect_timeout,
            response_timeout,
        } = &*self.inner
        else {
            unreachable!("only a cluster has a slot map")
        };
        let slot = slot_of(key);
        let mut master = find(&slots.lock().expect("slot map"), slot);
        if master.is_none() {
            let map = read_slot_map(cluster)
                .await
                .map_err(|e| NoLane::NoMaster(e.to_string()))?;
            master = find(&map, slot);
            *slots.lock().expect("slot map") = map;
        }
        let Some((host, port)) = master else {
            return Err(NoLane::NoMaster(format!("no master serves slot {slot}")));
        };
        let mut nodes = nodes.lock().expect("lane nodes");
        let node = nodes.entry((host.clone(), port)).or_insert_with(|| {
            let info = template
                .clone()
                .set_addr(node_addr(template.addr(), &host, port));
            let target = Arc::new(Target::Standalone(Box::new(
                redis::Client::open(info).expect("a node address built from a valid one"),
            )));
            let (connect, response) = (*connect_timeout, *response_timeout);
            Arc::new(Node::new(Box::new(move || {
                Healing::open(&target, connect, response)
            })))
        });
        Ok(node.clone())
    }
}

/// The address of the node `host:port`, over TLS when `like` is.
pub(super) fn node_addr(
    like: &redis::ConnectionAddr,
    host: &str,
    port: u16,
) -> redis::ConnectionAddr {
    match like {
        redis::ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => redis::ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => redis::ConnectionAddr::Tcp(host.to_owned(), port),
    }
}

fn find(map: &[(u16, u16, String, u16)], slot: u16) -> Option<(String, u16)> {
    map.iter()
        .find(|(first, last, _, _)| *first <= slot && slot <= *last)
        .map(|(_, _, h, p)| (h.clone(), *p))
}

/// The slot map: `(first, last, host, port)` of each range's master.
async fn read_slot_map(cluster: &ClusterHandle) -> RedisResult<Vec<(u16, u16, String, u16)>> {
    let reply: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut cluster.clone())
        .await?;
    Ok(super::cluster::slot_ranges(&reply))
}

/// The cluster slot of `key`: CRC16 (XMODEM) of its hash tag (`{…}`, when present and
/// not empty) or of the whole key, modulo 16384.
pub fn slot_of(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|b| *b == b'}')
                .filter(|close| *close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16_xmodem(tagged) % 16384
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for byte in data {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The first key of a script call (`EVALSHA sha numkeys key …`), if it has one.
pub fn first_key(cmd: &Cmd) -> Option<Vec<u8>> {
    let mut args = cmd.args_iter().skip(2);
    let numkeys = match args.next()? {
        redis::Arg::Simple(n) => std::str::from_utf8(n).ok()?.parse::<usize>().ok()?,
        _ => return None,
    };
    if numkeys == 0 {
        return None;
    }
    match args.next()? {
        redis::Arg::Simple(key) => Some(key.to_vec()),
        _ => None,
    }
}

impl ConnectionLike for Lane {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let mut conn = self.conn();
        Box::pin(async move { conn.req_packed_command(cmd).await })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let mut conn = self.conn();
        Box::pin(async move { conn.req_packed_commands(pipeline, offset, count).await })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_cluster_spec() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31c3);
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_eq!(slot_of(b"foo{}{bar}"), slot_of(b"foo{}{bar}"));
        assert_eq!(slot_of(b"{}x"), crc16_xmodem(b"{}x") % 16384);
    }

    #[test]
    fn the_first_key_of_a_script_call() {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg("abc")
            .arg(2)
            .arg("{p1}:a")
            .arg("{p1}:b")
            .arg("argv");
        assert_eq!(first_key(&cmd), Some(b"{p1}:a".to_vec()));
        let mut none = redis::cmd("EVALSHA");
        none.arg("abc").arg(0).arg("argv");
        assert_eq!(first_key(&none), None);
    }

    #[tokio::test]
    async fn a_moved_slot_is_served_by_its_new_master() {
        let lanes = Lanes {
            inner: Arc::new(Inner::Cluster {
                cluster: ClusterHandle::new(
                    redis::cluster::ClusterClient::new(vec!["redis://127.0.0.1:1"]).unwrap(),
                    redis::cluster::ClusterConfig::new(),
                    Duration::from_secs(1),
                ),
                slots: Mutex::new(vec![(0, 100, "a".into(), 1), (101, 200, "b".into(), 2)]),
                nodes: Mutex::new(HashMap::new()),
                template: Box::new("redis://127.0.0.1:1".parse().unwrap()),
                connect_timeout: Duration::from_secs(1),
                response_timeout: Duration::from_secs(1),
            }),
        };
        lanes.moved(50, "c", 3);
        let Inner::Cluster { slots, .. } = &*lanes.inner else {
            unreachable!()
        };
        let map = slots.lock().unwrap().clone();
        assert_eq!(find(&map, 50), Some(("c".into(), 3)));
        assert_eq!(find(&map, 49), Some(("a".into(), 1)));
        assert_eq!(find(&map, 51), Some(("a".into(), 1)));
        assert_eq!(find(&map, 150), Some(("b".into(), 2)));
    }
}
