//! The processes a run starts: a private `redis-server` and a Herald (`herald serve`),
//! each on a free loopback port, each stopped by its PID when dropped (also on an error
//! or a panic of the load generator).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A child process, killed (SIGTERM, then SIGKILL after a bounded wait) when dropped.
pub struct Process {
    child: Child,
    name: &'static str,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the process has already exited (it could not start, or crashed).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early: {status}", self.name);
        }
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SIGTERM first so Herald shuts down in order (and a profiler wrapping it writes
        // its output); the wait is bounded by Herald's default shutdown grace and a margin.
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time (user + system, all threads) a process has used so far, in milliseconds.
pub fn cpu_ms(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is the first, utime
    // and stime the 12th and 13th, in clock ticks of 1/100 s (USER_HZ).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 * 10.0)
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn in_path(binary: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|p| p.join(binary))
        .find(|p| p.is_file())
}

/// Starts `redis-server` with no RDB snapshots; `appendfsync` is "no" (no AOF, the
/// default here) or an AOF policy ("everysec", "always").
///
/// With `replica_of` (a port) the server is a replica of that master; the call returns
/// once its link to the master is up.
pub async fn start_redis(
    dir: &Path,
    appendfsync: &str,
    replica_of: Option<u16>,
) -> anyhow::Result<(Process, String)> {
    let binary = in_path("redis-server")
        .context("redis-server is not on PATH (Debian/Ubuntu: apt-get install redis-server)")?;
    let port = free_port()?;
    let mut command = Command::new(binary);
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--maxmemory-policy", "noeviction"])
        // Every command over 1 ms is kept: each scenario reports the scripts in it.
        .args([
            "--slowlog-log-slower-than",
            "1000",
            "--slowlog-max-len",
            "100000",
        ])
        .arg("--dir")
        .arg(dir);
    if appendfsync == "no" {
        command.args(["--appendonly", "no"]);
    } else {
        command.args(["--appendonly", "yes", "--appendfsync", appendfsync]);
    }
    if let Some(master) = replica_of {
        command.args(["--replicaof", "127.0.0.1", &master.to_string()]);
    }
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting redis-server")?;
    let mut process = Process {
        child,
        name: "redis-server",
    };
    let url = format!("redis://127.0.0.1:{port}");
    let client = redis::Client::open(url.as_str())?;
    for _ in 0..250 {
        process.check_alive()?;
        if let Ok(mut c) = client.get_multiplexed_async_connection().await {
            let up = match replica_of {
                None => redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok(),
                Some(_) => redis::cmd("INFO")
                    .arg("replication")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok_and(|info| info.contains("master_link_status:up")),
            };
            if up {
                return Ok((process, url));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("redis-server did not answer on port {port} within 5 s")
}

/// Starts `herald serve --role ROLE` with `config` (a TOML file) and waits until /readyz
/// answers 200. HERALD_* variables of the caller's environment are not passed on, so
/// the run is configured by the file and `env` alone.
pub async fn start_herald(
    binary: &Path,
    role: &str,
    config: &Path,
    base: &str,
    env: &[(String, String)],
) -> anyhow::Result<Process> {
    // Dropped once Herald is ready: an idle keep-alive connection would make Herald's
    // graceful stop wait its whole grace time at the end of the run.
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(10))
        .build()?;
    let mut command = Command::new(binary);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("HERALD_") || name == "REDIS_URL" {
            command.env_remove(name);
        }
    }
    let child = command
        .envs(env.iter().map(|(name, value)| (name, value)))
        .env("HERALD_REDIS__INITIALIZE", "true")
        .arg("--config")
        .arg(config)
        .args(["serve", "--role", role])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let mut process = Process {
        child,
        name: "herald",
    };
    for _ in 0..600 {
        process.check_alive()?;
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
            if r.status().is_success() {
                return Ok(process);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("herald was not ready at {base} within 30 s")
}

/// The whole machine's CPU time so far (every process, the kernel, neighbours included),
/// in clock ticks: (busy, total) over all cores, from the first line of /proc/stat.
pub fn machine_cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4).unwrap_or(&0);
    Some((total - idle, total))
}
