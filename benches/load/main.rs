//! Herald's load generator.
//!
//! Starts a private `redis-server`, a Herald (`herald serve --role all`, the binary built
//! with this bench) and an in-process recording receiver, runs the scenarios and prints one
//! JSON object per scenario on stdout (progress goes to stderr). Everything it starts is
//! stopped by PID when it ends, fails or is interrupted.
//!
//! ```sh
//! cargo bench --bench load                                  # every scenario, defaults
//! cargo bench --bench load -- --scenarios baseline,notify --waiters 20000 --out run.jsonl
//! cargo bench --bench load -- --smoke                       # small and quick
//! ```
//!
//! Run without `--bench` (as `cargo test --all-targets` does), it is the smoke run: small
//! sizes, and the exit status says whether every scenario was correct (all delivered,
//! nothing lost). Timings are printed, never asserted.
//!
//! The load generator, the receiver, Herald and Redis share the machine's cores: the
//! figures are those of the whole system on one box, not of Herald alone.

mod client;
mod clock;
mod procs;
mod receiver;
mod scenarios;
mod stats;
mod workflow;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use herald::config::Settings;
use herald::domain::TenantName;
use herald::store::{tenants, Keys, RedisPool};
use serde_json::{json, Value};

use crate::client::Api;
use crate::receiver::Receiver;
use crate::scenarios::{Ctx, Params};

const ALL: &str =
    "baseline,notify_api_only,notify,notify_at_rate,lookback,lookback_crowd,fanout,big_fanout,timeouts,memory,workflow";

#[derive(Parser, Debug)]
#[command(
    name = "load",
    about = "Herald's load generator",
    args_override_self = true
)]
struct Args {
    /// Passed by `cargo bench`; without it the program does the smoke run.
    #[arg(long, hide = true)]
    bench: bool,
    /// Small sizes, for a quick correctness check.
    #[arg(long)]
    smoke: bool,
    /// Scenarios to run, comma-separated, in this order.
    #[arg(long, value_delimiter = ',', default_value = ALL)]
    scenarios: Vec<String>,
    /// W: waiters of the notify, lookback and baseline scenarios.
    #[arg(long, default_value_t = 10_000)]
    waiters: usize,
    /// C: requests in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Notifies per second of notify_at_rate ...
    #[arg(long, default_value_t = 1_000)]
    rate: usize,
    /// ... for this many seconds.
    #[arg(long, default_value_t = 5)]
    rate_secs: usize,
    /// Waiters of the one fanned-out event.
    #[arg(long, default_value_t = 10_000)]
    fanout: usize,
    /// Waiters of the one event notified with a large body (big_fanout).
    #[arg(long, default_value_t = 10_000)]
    big_fanout: usize,
    /// That body's size, KiB.
    #[arg(long, default_value_t = 1024)]
    big_body_kib: usize,
    /// Waiters timing out in the same second.
    #[arg(long, default_value_t = 10_000)]
    timeouts: usize,
    /// Idle waiters, and saved notifications, measured by the memory scenario.
    #[arg(long, default_value_t = 100_000)]
    memory_entries: usize,
    /// N of lookback_crowd: how many runs wait on its one event (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "100,10000,100000")]
    crowd: Vec<usize>,
    /// Lookback notifies lookback_crowd measures per N (rounds of N runs).
    #[arg(long, default_value_t = 10_000)]
    crowd_notifies: usize,
    /// R: runs of the workflow scenario ...
    #[arg(long, default_value_t = 10_000)]
    workflow_runs: usize,
    /// ... with this many in flight at once (a new run starts when one ends).
    #[arg(long, default_value_t = 50)]
    workflow_concurrency: usize,
    /// Redis persistence: "no" (no AOF, as `herald dev`), "everysec" or "always".
    #[arg(long, default_value = "no")]
    appendfsync: String,
    /// Also start a replica of the Redis (to measure `redis.wait_replicas`, set with
    /// `--herald-env HERALD_REDIS__WAIT_REPLICAS=1`).
    #[arg(long)]
    replica: bool,
    /// Herald partitions (`redis.partitions`).
    #[arg(long, default_value_t = 16)]
    partitions: u16,
    /// A label copied into the run's first line (e.g. "before", "after").
    #[arg(long, default_value = "")]
    label: String,
    /// Also append the JSON lines to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The herald binary (default: the one built with this bench).
    #[arg(long)]
    herald_bin: Option<PathBuf>,
    /// A setting for the Herald processes, as an environment variable (repeatable), e.g.
    /// `--herald-env HERALD_DELIVERY__TENANT_CONCURRENCY=64`. Other HERALD_* variables of
    /// this environment are not passed on.
    #[arg(long, value_name = "NAME=VALUE")]
    herald_env: Vec<String>,
}

impl Args {
    fn smoke_sized(mut self) -> Self {
        self.waiters = 200;
        self.concurrency = 16;
        self.rate = 200;
        self.rate_secs = 1;
        self.fanout = 300;
        self.big_fanout = 20;
        self.big_body_kib = 64;
        self.timeouts = 200;
        self.memory_entries = 1_000;
        self.crowd = vec![20, 400];
        self.crowd_notifies = 400;
        self.workflow_runs = 20;
        self.workflow_concurrency = 10;
        self
    }
}

fn args() -> Args {
    let raw: Vec<String> = std::env::args().collect();
    if raw.iter().any(|a| a == "--bench") {
        let args = Args::parse_from(raw);
        if args.smoke {
            args.smoke_sized()
        } else {
            args
        }
    } else {
        // Under `cargo test` the arguments are the test harness's: ignore them.
        let mut args = Args::parse_from(["load"]).smoke_sized();
        args.smoke = true;
        args
    }
}

fn machine(redis_version: &str, args: &Args) -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let commit = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    json!({
        "scenario": "machine",
        "label": args.label,
        "smoke": args.smoke,
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "redis_version": redis_version,
        "redis_appendfsync": args.appendfsync,
        "redis_replica": args.replica,
        "herald_env": args.herald_env,
        "herald_commit": commit,
        "loadavg_1m": loadavg_1m(),
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "unix_time": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    })
}

fn loadavg_1m() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

struct Output(Option<std::fs::File>);

impl Output {
    fn line(&mut self, value: &Value) {
        println!("{value}");
        if let Some(f) = self.0.as_mut() {
            let _ = writeln!(f, "{value}");
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let dir = tempfile::tempdir()?;
    let (redis_process, redis_url) =
        procs::start_redis(dir.path(), &args.appendfsync, None).await?;
    let replica_dir = tempfile::tempdir()?;
    let _replica = match args.replica {
        true => {
            let master_port = redis_url.rsplit(':').next().unwrap_or("").parse().ok();
            Some(procs::start_redis(replica_dir.path(), &args.appendfsync, master_port).await?)
        }
        false => None,
    };
    let receiver = Receiver::start()?;
    let binary = args
        .herald_bin
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_herald")));
    let env: Vec<(String, String)> = args
        .herald_env
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) if name.starts_with("HERALD_") => {
                Ok((name.to_owned(), value.to_owned()))
            }
            _ => Err(anyhow::anyhow!(
                "--herald-env {pair}: expected HERALD_NAME=VALUE"
            )),
        })
        .collect::<anyhow::Result<_>>()?;
    let start_herald = |role: &'static str, prefix: &'static str| {
        let (binary, dir, redis_url) = (binary.clone(), dir.path().to_owned(), redis_url.clone());
        let env = env.clone();
        async move {
            let port = procs::free_port()?;
            let base = format!("http://127.0.0.1:{port}");
            let config = dir.join(format!("herald-{role}.toml"));
            // Tenant limits off: this measures capacity (one tenant sends everything);
            // `cargo bench --bench limits` measures what the checks cost.
            std::fs::write(
                &config,
                format!(
                    "[server]\nlisten = \"127.0.0.1:{port}\"\n\
                     [redis]\nurl = \"{redis_url}\"\nkey_prefix = \"{prefix}\"\npartitions = {}\n\
                     [delivery]\nallow_cidrs = [\"127.0.0.0/8\"]\n\
                     [limits]\nwait_per_sec = 0\nnotify_per_sec = 0\nread_per_sec = 0\n\
                     active_waiters = 0\nwaiters_per_event = 0\n\
                     [log]\nfilter = \"warn\"\n",
                    args.partitions
                ),
            )?;
            let process = procs::start_herald(&binary, role, &config, &base, &env).await?;
            anyhow::Ok((process, base))
        }
    };
    let prefix = "bench";
    let (herald_process, base) = start_herald("all", prefix).await?;
    // A second Herald serving the API only, on keys of its own that no worker reads: its
    // notifies are measured without deliveries competing for the cores.
    let api_prefix = "benchapi";
    let (api_process, api_base) = start_herald("api", api_prefix).await?;

    let mut redis_settings = Settings::defaults().redis;
    redis_settings.url = redis_url.clone();
    let redis = RedisPool::open(&redis_settings)?;
    let keys = Keys::new(prefix, args.partitions);
    let tenant = TenantName::parse("bench").map_err(|e| anyhow::anyhow!(e.0))?;
    let created = tenants::create(&mut redis.get(), &keys, &tenant)
        .await
        .context("creating the bench tenant")?;
    let api_keys = Keys::new(api_prefix, args.partitions);
    let api_tenant = tenants::create(&mut redis.get(), &api_keys, &tenant)
        .await
        .context("creating the bench tenant of the API-only Herald")?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut redis.get())
        .await?;
    let redis_version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("")
        .trim()
        .to_owned();

    let mut out = Output(match &args.out {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening {}", p.display()))?,
        ),
        None => None,
    });
    out.line(&machine(&redis_version, &args));

    let ctx = Ctx {
        api: Api::new(base, created.token)?,
        receiver,
        redis,
        keys,
        tenant,
        herald_pid: herald_process.pid(),
        redis_pid: redis_process.pid(),
        api_only: Api::new(api_base, api_tenant.token)?,
        api_only_pid: api_process.pid(),
        p: Params {
            waiters: args.waiters,
            concurrency: args.concurrency,
            rate: args.rate,
            rate_secs: args.rate_secs,
            fanout: args.fanout,
            big_fanout: args.big_fanout,
            big_body_bytes: args.big_body_kib * 1024,
            timeouts: args.timeouts,
            memory_entries: args.memory_entries,
            crowd: args.crowd.clone(),
            crowd_notifies: args.crowd_notifies,
            workflow_runs: args.workflow_runs,
            workflow_concurrency: args.workflow_concurrency,
        },
    };
    let mut all_ok = true;
    let mut baseline_per_s = None;
    for name in &args.scenarios {
        eprintln!("load: {name} ...");
        redis::cmd("SLOWLOG")
            .arg("RESET")
            .exec_async(&mut ctx.redis.get())
            .await?;
        let report = match name.as_str() {
            "baseline" => {
                let (report, per_s) = scenarios::baseline(&ctx).await;
                baseline_per_s = per_s;
                report
            }
            "notify" => scenarios::notify(&ctx, baseline_per_s).await,
            "notify_api_only" => scenarios::notify_api_only(&ctx, baseline_per_s).await,
            "notify_at_rate" => scenarios::notify_at_rate(&ctx).await,
            "lookback" => scenarios::lookback(&ctx).await,
            "lookback_crowd" => scenarios::lookback_crowd(&ctx).await,
            "fanout" => scenarios::fanout(&ctx).await,
            "big_fanout" => scenarios::big_fanout(&ctx).await,
            "timeouts" => scenarios::timeouts(&ctx).await,
            "memory" => scenarios::memory(&ctx).await,
            "workflow" => workflow::workflow(&ctx).await,
            other => anyhow::bail!("unknown scenario {other:?}; known: {ALL}"),
        };
        all_ok &= report["ok"] == true;
        let mut report = report;
        // Other work on the machine shows here (the run shares its cores with everything).
        report["loadavg_1m"] = json!(loadavg_1m());
        report["scripts_over_1ms"] = scripts_over_1ms(&ctx).await?;
        out.line(&report);
    }
    ctx.receiver.stop().await;
    Ok(all_ok)
}

/// The Herald scripts Redis' SLOWLOG holds (over 1 ms, see `procs::start_redis`) since the
/// scenario began: per script, how many calls and the slowest (µs).
async fn scripts_over_1ms(ctx: &Ctx) -> anyhow::Result<Value> {
    let names: std::collections::HashMap<&str, &str> = herald::store::scripts::all()
        .iter()
        .map(|(name, script)| (script.get_hash(), *name))
        .collect();
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query_async(&mut ctx.redis.get())
        .await?;
    let mut per_script = serde_json::Map::new();
    for entry in entries {
        let redis::Value::Array(fields) = entry else {
            continue;
        };
        let micros: u64 = fields
            .get(2)
            .and_then(|v| redis::from_redis_value(v.clone()).ok())
            .unwrap_or(0);
        let args: Vec<String> = fields
            .get(3)
            .and_then(|v| redis::from_redis_value(v.clone()).ok())
            .unwrap_or_default();
        let (Some(verb), Some(sha)) = (args.first(), args.get(1)) else {
            continue;
        };
        if !verb.eq_ignore_ascii_case("evalsha") {
            continue;
        }
        let name = names
            .get(sha.as_str())
            .copied()
            .unwrap_or("(unknown script)");
        let slot = per_script
            .entry(name)
            .or_insert_with(|| json!({"calls": 0, "slowest_us": 0}));
        slot["calls"] = json!(slot["calls"].as_u64().unwrap_or(0) + 1);
        slot["slowest_us"] = json!(slot["slowest_us"].as_u64().unwrap_or(0).max(micros));
    }
    Ok(Value::Object(per_script))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = args();
    let smoke = args.smoke;
    // Ctrl-C ends the run; the processes it started are stopped as their guards drop.
    let result = tokio::select! {
        r = run(args) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    match result {
        Ok(true) => {
            if smoke {
                eprintln!("load: smoke run correct: everything delivered, nothing lost");
            }
            ExitCode::SUCCESS
        }
        Ok(false) => {
            eprintln!("load: a scenario lost or failed something (see \"problems\")");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("load: {e:#}");
            ExitCode::FAILURE
        }
    }
}
