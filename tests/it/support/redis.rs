//! Real Redis for the tests: single `redis-server` processes on free loopback ports
//! ([`RedisProcess`], stopped by PID when dropped), and [`RedisServer`], the Redis a test
//! runs against. `RedisServer::start()` gives the topology named by the environment
//! variable `TEST_REDIS_TOPOLOGY`: `standalone` (default), `cluster` (a fresh 3-master
//! Redis Cluster with one replica each) or `sentinel` (a master, a replica and three
//! sentinels), so the same test runs on every topology; `test_settings(&redis.url())`
//! picks the matching `redis.mode` and `redis.nodes`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use herald::config::RedisMode;

use super::cluster::RedisCluster;
use super::sentinel::SentinelSetup;

/// One `redis-server` process (a standalone server, a cluster node or a sentinel).
pub struct RedisProcess {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// A configuration file given before the options (sentinels need one they can write).
    config_file: Option<PathBuf>,
    extra: Vec<String>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free port whose cluster bus port (port + 10000) is free and valid too.
pub fn free_cluster_port() -> u16 {
    for _ in 0..200 {
        let port = free_port();
        if port <= 55_535 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair for a cluster node")
}

pub fn binary(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|p| p.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} must be installed for the tests (apt-get install redis-server redis-tools)"
            )
        })
}

impl RedisProcess {
    pub fn start(extra: &[&str]) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), None, extra)
    }

    /// Starts `redis-server [config_file] --port … <extra>` with `dir` as working directory.
    pub fn start_in(dir: tempfile::TempDir, config_file: Option<PathBuf>, extra: &[&str]) -> Self {
        Self::start_on(free_port(), dir, config_file, extra)
    }

    pub fn start_on(
        port: u16,
        dir: tempfile::TempDir,
        config_file: Option<PathBuf>,
        extra: &[&str],
    ) -> Self {
        let mut process = RedisProcess {
            child: None,
            port,
            dir,
            config_file,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        process.spawn();
        process
    }

    fn spawn(&mut self) {
        let mut command = Command::new(binary("redis-server"));
        if let Some(file) = &self.config_file {
            command.arg(file);
        }
        let child = command
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--enable-debug-command", "local"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        self.await_ready();
    }

    fn await_ready(&self) {
        let client = redis::Client::open(self.url()).unwrap();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(mut c) = client.get_connection() {
                // A server with --requirepass answers NOAUTH: it is up all the same.
                match redis::cmd("PING").query::<String>(&mut c) {
                    Ok(_) => return,
                    Err(e) if e.code() == Some("NOAUTH") => return,
                    Err(_) => {}
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// kill -9, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port and directory (AOF, if enabled, is replayed).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn client(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// A digest of the whole dataset: equal digests, equal data.
    pub fn digest(&self) -> String {
        redis::cmd("DEBUG")
            .arg("DIGEST")
            .query(&mut self.client())
            .unwrap()
    }

    /// `INFO <section>` as field → value.
    pub fn info(&self, section: &str) -> HashMap<String, String> {
        let text: String = redis::cmd("INFO")
            .arg(section)
            .query(&mut self.client())
            .unwrap_or_default();
        parse_info(&text)
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn parse_info(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim().split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Polls `check` every 50 ms until it holds, for at most `limit`.
pub fn poll_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}

/// How Herald reaches a test topology (looked up by [`RedisServer::url`]).
#[derive(Clone, Debug)]
pub struct Topology {
    pub mode: RedisMode,
    pub nodes: Vec<String>,
    pub sentinel_master: String,
}

static TOPOLOGIES: LazyLock<Mutex<HashMap<String, Topology>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Records how Herald reaches the deployment that `url` names (cluster and sentinel).
pub fn register(url: &str, topology: Topology) {
    TOPOLOGIES.lock().unwrap().insert(url.to_owned(), topology);
}

/// The topology registered for `url`, if it is not a plain standalone server.
pub fn topology_of(url: &str) -> Option<Topology> {
    TOPOLOGIES.lock().unwrap().get(url).cloned()
}

/// The topology `RedisServer::start()` gives, from `TEST_REDIS_TOPOLOGY`.
pub fn suite_topology() -> RedisMode {
    match std::env::var("TEST_REDIS_TOPOLOGY").as_deref() {
        Ok("cluster") => RedisMode::Cluster,
        Ok("sentinel") => RedisMode::Sentinel,
        Ok("standalone") | Ok("") | Err(_) => RedisMode::Standalone,
        Ok(other) => panic!("TEST_REDIS_TOPOLOGY={other}: use standalone, cluster or sentinel"),
    }
}

/// The Redis a test runs against.
pub enum RedisServer {
    Standalone(RedisProcess),
    Cluster(RedisCluster),
    Sentinel(SentinelSetup),
}

impl RedisServer {
    /// A fresh Redis of the suite's topology (`TEST_REDIS_TOPOLOGY`).
    pub fn start() -> Self {
        match suite_topology() {
            RedisMode::Standalone => RedisServer::Standalone(RedisProcess::start(&[])),
            RedisMode::Cluster => RedisServer::Cluster(RedisCluster::start(3, 1, 2000)),
            RedisMode::Sentinel => RedisServer::Sentinel(SentinelSetup::start()),
        }
    }

    /// A standalone server with extra `--option value` arguments, whatever the suite's
    /// topology: for tests of one Redis process (persistence, crashes, pauses).
    pub fn start_with(extra: &[&str]) -> Self {
        RedisServer::Standalone(RedisProcess::start(extra))
    }

    /// What `test_settings` takes: the server's URL, or the key of a registered topology.
    pub fn url(&self) -> String {
        match self {
            RedisServer::Standalone(p) => p.url(),
            RedisServer::Cluster(c) => c.url(),
            RedisServer::Sentinel(s) => s.url(),
        }
    }

    /// A connection for inspecting the data (in a cluster, commands are routed by slot and
    /// KEYS asks every master).
    pub fn client(&self) -> InspectConn {
        match self {
            RedisServer::Standalone(p) => InspectConn::Single(p.client()),
            RedisServer::Cluster(c) => InspectConn::Cluster(Box::new(c.client())),
            RedisServer::Sentinel(s) => InspectConn::Single(s.master().client()),
        }
    }

    /// The keys matching `pattern` (of every master in a cluster).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        redis::cmd("KEYS")
            .arg(pattern)
            .query(&mut self.client())
            .unwrap()
    }

    /// What `keys` take in Redis: the sum of their MEMORY USAGE (all samples).
    pub fn memory_usage(&self, keys: &[String]) -> u64 {
        let mut conn = self.client();
        keys.iter()
            .map(|k| {
                redis::cmd("MEMORY")
                    .arg("USAGE")
                    .arg(k)
                    .arg("SAMPLES")
                    .arg(0)
                    .query::<Option<u64>>(&mut conn)
                    .unwrap()
                    .unwrap_or(0)
            })
            .sum()
    }

    /// A digest of the whole dataset (of every master in a cluster).
    pub fn digest(&self) -> String {
        match self {
            RedisServer::Standalone(p) => p.digest(),
            RedisServer::Cluster(c) => c.digest(),
            RedisServer::Sentinel(s) => s.master().digest(),
        }
    }

    fn standalone(&mut self) -> &mut RedisProcess {
        match self {
            RedisServer::Standalone(p) => p,
            _ => {
                panic!("only a standalone server (RedisServer::start_with) can be killed or paused")
            }
        }
    }

    pub fn kill(&mut self) {
        self.standalone().kill();
    }

    pub fn restart(&mut self) {
        self.standalone().restart();
    }

    /// Sends a signal (STOP, CONT, ...) to a standalone server.
    pub fn signal(&self, sig: &str) {
        match self {
            RedisServer::Standalone(p) => p.signal(sig),
            _ => panic!("only a standalone server (RedisServer::start_with) can be paused"),
        }
    }
}

/// A synchronous connection to a test topology.
pub enum InspectConn {
    Single(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl InspectConn {
    fn inner(&mut self) -> &mut dyn redis::ConnectionLike {
        match self {
            InspectConn::Single(c) => c,
            InspectConn::Cluster(c) => c.as_mut(),
        }
    }
}

impl redis::ConnectionLike for InspectConn {
    fn req_packed_command(&mut self, cmd: &[u8]) -> redis::RedisResult<redis::Value> {
        self.inner().req_packed_command(cmd)
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<redis::Value>> {
        self.inner().req_packed_commands(cmd, offset, count)
    }

    fn req_command(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        self.inner().req_command(cmd)
    }

    fn get_db(&self) -> i64 {
        match self {
            InspectConn::Single(c) => c.get_db(),
            InspectConn::Cluster(c) => c.get_db(),
        }
    }

    fn supports_pipelining(&self) -> bool {
        match self {
            InspectConn::Single(c) => c.supports_pipelining(),
            InspectConn::Cluster(c) => c.supports_pipelining(),
        }
    }

    fn check_connection(&mut self) -> bool {
        self.inner().check_connection()
    }

    fn is_open(&self) -> bool {
        match self {
            InspectConn::Single(c) => c.is_open(),
            InspectConn::Cluster(c) => c.is_open(),
        }
    }
}
