//! A local Redis Cluster: `masters` masters with `replicas` replicas each, every node a
//! real `redis-server` process on a free loopback port, joined with
//! `redis-cli --cluster create`. Stopped (by PID) when dropped.

use std::process::Command;
use std::time::Duration;

use herald::config::RedisMode;

use super::redis::{binary, free_cluster_port, poll_until, register, RedisProcess, Topology};

pub struct RedisCluster {
    pub nodes: Vec<RedisProcess>,
}

/// A node's view of itself: its role and, for a replica, its master's port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Master,
    Replica { master_port: u16 },
}

impl RedisCluster {
    /// Starts and joins the cluster; returns once every node sees every slot served and
    /// every replica is in sync. `node_timeout_ms` is `cluster-node-timeout`: how long a
    /// master may be unreachable before its replica takes over.
    pub fn start(masters: usize, replicas: usize, node_timeout_ms: u64) -> Self {
        let count = masters * (1 + replicas);
        let timeout = node_timeout_ms.to_string();
        let nodes: Vec<RedisProcess> = (0..count)
            .map(|_| {
                RedisProcess::start_on(
                    free_cluster_port(),
                    tempfile::tempdir().unwrap(),
                    None,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        &timeout,
                        "--appendonly",
                        "no",
                    ],
                )
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let output = Command::new(binary("redis-cli"))
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.await_healthy(Duration::from_secs(30));
        register(
            &cluster.url(),
            Topology {
                mode: RedisMode::Cluster,
                nodes: cluster.node_urls(),
                sentinel_master: String::new(),
            },
        );
        cluster
    }

    /// Every running node reports `cluster_state:ok` and knows every running node, and
    /// every replica's link to its master is up.
    pub fn await_healthy(&self, limit: Duration) {
        let running = self.nodes.iter().filter(|n| n.is_running()).count();
        let healthy = poll_until(limit, || {
            self.nodes.iter().filter(|n| n.is_running()).all(|n| {
                let info = cluster_info(n);
                let replication = n.info("replication");
                info.get("cluster_state").map(String::as_str) == Some("ok")
                    && info.get("cluster_known_nodes").and_then(|v| v.parse().ok()) >= Some(running)
                    && (replication.get("role").map(String::as_str) == Some("master")
                        || replication.get("master_link_status").map(String::as_str) == Some("up"))
            })
        });
        assert!(
            healthy,
            "the cluster did not become healthy within {limit:?}"
        );
    }

    /// The key `test_settings` looks the cluster up by: the first node's URL.
    pub fn url(&self) -> String {
        self.nodes[0].url()
    }

    pub fn node_urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisProcess::url).collect()
    }

    pub fn client(&self) -> redis::cluster::ClusterConnection {
        redis::cluster::ClusterClient::new(self.node_urls())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    pub fn role(&self, node: &RedisProcess) -> Role {
        let replication = node.info("replication");
        match replication.get("role").map(String::as_str) {
            Some("slave") => Role::Replica {
                master_port: replication
                    .get("master_port")
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0),
            },
            _ => Role::Master,
        }
    }

    pub fn masters(&self) -> Vec<&RedisProcess> {
        self.nodes
            .iter()
            .filter(|n| n.is_running() && self.role(n) == Role::Master)
            .collect()
    }

    pub fn node(&self, port: u16) -> &RedisProcess {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .expect("a node of the cluster")
    }

    pub fn node_mut(&mut self, port: u16) -> &mut RedisProcess {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of the cluster")
    }

    /// The running replicas of the master on `master_port`.
    pub fn replicas_of(&self, master_port: u16) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.is_running() && self.role(n) == (Role::Replica { master_port }))
            .map(|n| n.port)
            .collect()
    }

    /// Digests of the masters' datasets (by port).
    pub fn digest(&self) -> String {
        let mut masters: Vec<(u16, String)> = self
            .masters()
            .into_iter()
            .map(|m| (m.port, m.digest()))
            .collect();
        masters.sort();
        masters
            .into_iter()
            .map(|(_, d)| d)
            .collect::<Vec<_>>()
            .join(",")
    }
}

pub fn cluster_info(node: &RedisProcess) -> std::collections::HashMap<String, String> {
    let text: String = redis::cmd("CLUSTER")
        .arg("INFO")
        .query(&mut node.client())
        .unwrap_or_default();
    super::redis::parse_info(&text)
}
