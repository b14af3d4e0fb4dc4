//! A local Sentinel setup: a master, one replica (or more), and three sentinels monitoring the
//! master as `mymaster` (quorum 2), every one a real `redis-server` process on a free
//! loopback port. Stopped (by PID) when dropped.

use std::time::Duration;

use herald::config::RedisMode;

use super::redis::{poll_until, register, RedisProcess, Topology};

pub const MASTER_NAME: &str = "mymaster";

pub struct SentinelSetup {
    /// The data nodes: the first master, then the replicas.
    pub servers: Vec<RedisProcess>,
    pub sentinels: Vec<RedisProcess>,
    key: String,
}

impl SentinelSetup {
    /// Starts the setup; returns once every sentinel knows the master, the replica and
    /// the other sentinels (so a failover can be agreed on at once).
    pub fn start() -> Self {
        Self::start_with_replicas(1)
    }

    /// The same with `replicas` replicas of the master.
    pub fn start_with_replicas(replicas: usize) -> Self {
        let master = RedisProcess::start(&["--appendonly", "no"]);
        let mut servers = vec![master];
        for _ in 0..replicas {
            let port = servers[0].port.to_string();
            servers.push(RedisProcess::start(&[
                "--appendonly",
                "no",
                "--replicaof",
                "127.0.0.1",
                &port,
            ]));
        }
        let sentinels: Vec<RedisProcess> = (0..3)
            .map(|_| {
                let dir = tempfile::tempdir().unwrap();
                let file = dir.path().join("sentinel.conf");
                // Sentinels rewrite their configuration file, so each gets its own.
                std::fs::write(
                    &file,
                    format!(
                        "sentinel monitor {MASTER_NAME} 127.0.0.1 {port} 2\n\
                         sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                         sentinel failover-timeout {MASTER_NAME} 5000\n\
                         sentinel parallel-syncs {MASTER_NAME} 1\n",
                        port = servers[0].port
                    ),
                )
                .unwrap();
                RedisProcess::start_in(dir, Some(file), &["--sentinel"])
            })
            .collect();
        let setup = SentinelSetup {
            key: servers[0].url(),
            servers,
            sentinels,
        };
        setup.await_ready(Duration::from_secs(30));
        register(
            &setup.key,
            Topology {
                mode: RedisMode::Sentinel,
                nodes: setup.sentinels.iter().map(RedisProcess::url).collect(),
                sentinel_master: MASTER_NAME.into(),
            },
        );
        setup
    }

    fn await_ready(&self, limit: Duration) {
        let ready = poll_until(limit, || {
            self.sentinels.iter().all(|s| {
                let master = sentinel_master_state(s);
                master.get("num-slaves") == Some(&(self.servers.len() - 1).to_string())
                    && master.get("num-other-sentinels").map(String::as_str) == Some("2")
                    && master.get("flags").map(String::as_str) == Some("master")
            }) && self.servers[1..]
                .iter()
                .all(|r| r.info("replication").get("master_link_status") == Some(&"up".to_owned()))
        });
        assert!(
            ready,
            "the sentinels did not agree on the setup within {limit:?}"
        );
    }

    /// The key `test_settings` looks the setup up by: the first master's URL.
    pub fn url(&self) -> String {
        self.key.clone()
    }

    /// The port the sentinels currently name as master.
    pub fn master_port(&self) -> u16 {
        let addr: Vec<String> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(MASTER_NAME)
            .query(&mut self.sentinels[0].client())
            .unwrap();
        addr[1].parse().unwrap()
    }

    /// The data node the sentinels currently name as master.
    pub fn master(&self) -> &RedisProcess {
        let port = self.master_port();
        self.servers
            .iter()
            .find(|s| s.port == port)
            .expect("the master is one of the setup's servers")
    }

    pub fn server_mut(&mut self, port: u16) -> &mut RedisProcess {
        self.servers
            .iter_mut()
            .find(|s| s.port == port)
            .expect("a server of the setup")
    }
}

/// `SENTINEL MASTER mymaster` as field → value.
pub fn sentinel_master_state(sentinel: &RedisProcess) -> std::collections::HashMap<String, String> {
    let fields: Vec<String> = redis::cmd("SENTINEL")
        .arg("MASTER")
        .arg(MASTER_NAME)
        .query(&mut sentinel.client())
        .unwrap_or_default();
    fields
        .chunks(2)
        .filter_map(|c| match c {
            [k, v] => Some((k.clone(), v.clone())),
            _ => None,
        })
        .collect()
}
