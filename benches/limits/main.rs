//! Limits benchmark: what the rate and quota checks cost, and the noisy-neighbour scenario.
//! Starts its own `redis-server` (stopped by PID at the end) and Herald in-process, and
//! prints one JSON object.
//!
//! ```sh
//! cargo bench --bench limits                 # everything
//! cargo bench --bench limits -- scripts      # or: http, noisy
//! ```
//!
//! `cargo test --all-targets` runs it too, as a quick smoke run (see [`Size`]).
//!
//! - `scripts`: the operation scripts against Redis directly, per request shape:
//!   no limit checks, checks folded into the script (standalone Redis), and the Redis
//!   Cluster way (`rate_limit.lua` and the other partitions' counts, then the script).
//! - `http`: notify through Herald's API with limits off and on (set so high that every
//!   request is admitted: the cost of checking, not of refusing).
//! - `noisy`: a quiet tenant at a steady rate, alone and while a noisy tenant floods far
//!   over its limit (see `noisy.rs`).

// The integration tests' harness: real redis-server, Herald on port 0 (what this
// benchmark uses of it, not all of it).
#[allow(dead_code, unused_imports)]
#[path = "../../tests/it/support/mod.rs"]
mod support;

mod noisy;

use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::future::{join_all, try_join_all, BoxFuture};
use herald::app::Role;
use herald::domain::{EventId, TenantName};
use herald::limits::RateClass;
use herald::store::scripts::{self, ActiveQuota, NotifyArgs, RateCheck, WaitArgs};
use herald::store::{Keys, RedisPool};
use serde_json::{json, Value};

use support::{test_settings, RedisServer, TestApp};

/// Runs `op` from `concurrency` tasks until `total` ops are done; returns
/// `{"ops_per_sec", "mean_us", "p99_us"}`.
async fn measure<F, Fut>(total: usize, concurrency: usize, op: F) -> Value
where
    F: Fn(usize) -> Fut + Clone,
    Fut: Future<Output = ()>,
{
    let started = Instant::now();
    let per_task = total / concurrency;
    let tasks = (0..concurrency).map(|t| {
        let op = op.clone();
        async move {
            let mut latencies = Vec::with_capacity(per_task);
            for i in 0..per_task {
                let at = Instant::now();
                op(t * per_task + i).await;
                latencies.push(at.elapsed().as_secs_f64() * 1e6);
            }
            latencies
        }
    });
    let mut latencies: Vec<f64> = join_all(tasks).await.into_iter().flatten().collect();
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let mean = latencies.iter().sum::<f64>() / latencies.len() as f64;
    let p99 = latencies[(latencies.len() as f64 * 0.99) as usize - 1];
    json!({
        "ops": latencies.len(),
        "ops_per_sec": (latencies.len() as f64 / elapsed).round(),
        "mean_us": mean.round(),
        "p99_us": p99.round(),
    })
}

/// Redis' own time per script call (`INFO commandstats`, EVALSHA) while `run` runs:
/// the server-side cost, whatever the client's machine is doing.
async fn with_redis_time(pool: &RedisPool, run: impl Future<Output = Value>) -> Value {
    let mut conn = pool.get();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut result = run.await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    let per_call = |cmd: &str| -> f64 {
        info.lines()
            .find(|l| l.starts_with(&format!("cmdstat_{cmd}:")))
            .and_then(|l| l.split(',').find(|f| f.starts_with("usec_per_call=")))
            .and_then(|f| f["usec_per_call=".len()..].parse().ok())
            .unwrap_or(0.0)
    };
    let calls = |cmd: &str| -> f64 {
        info.lines()
            .find(|l| l.starts_with(&format!("cmdstat_{cmd}:")))
            .and_then(|l| l.split(',').find(|f| f.contains("calls=")))
            .and_then(|f| f.split('=').nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0)
    };
    let ops = result["ops"].as_f64().unwrap_or(1.0);
    // Redis time per request: every script call and command the request made.
    let total: f64 = ["evalsha", "get"]
        .iter()
        .map(|c| per_call(c) * calls(c))
        .sum();
    result["redis_us_per_request"] = json!((total / ops * 10.0).round() / 10.0);
    result
}

fn ratio(with: &Value, without: &Value) -> Value {
    let r = with["ops_per_sec"].as_f64().unwrap() / without["ops_per_sec"].as_f64().unwrap();
    json!((r * 1000.0).round() / 1000.0)
}

/// The best of several rounds: the run with the highest throughput, and the lowest Redis
/// time per request. On a shared machine other work only ever slows a round down, so the
/// best round is the closest to the code's own cost. Every round's figures are kept.
fn best(runs: &[Value]) -> Value {
    let throughput = |r: &Value| r["ops_per_sec"].as_f64().unwrap_or(0.0);
    let mut best = runs
        .iter()
        .max_by(|a, b| throughput(a).total_cmp(&throughput(b)))
        .cloned()
        .unwrap_or_default();
    let all = |field: &str| -> Value { runs.iter().map(|r| r[field].clone()).collect() };
    if runs.iter().all(|r| r.get("redis_us_per_request").is_some()) {
        let least = runs
            .iter()
            .filter_map(|r| r["redis_us_per_request"].as_f64())
            .fold(f64::INFINITY, f64::min);
        best["redis_us_per_request"] = json!(least);
        best["rounds_redis_us_per_request"] = all("redis_us_per_request");
    }
    best["rounds_ops_per_sec"] = all("ops_per_sec");
    best
}

const CONCURRENCY: usize = 32;

/// How much to run: `cargo bench` passes `--bench` (the full run); `cargo test
/// --all-targets` runs this binary without it, and then a small smoke run only checks
/// that the benchmark still works.
#[derive(Clone, Copy)]
struct Size {
    /// Script calls per measurement.
    ops: usize,
    /// HTTP requests per measurement.
    requests: usize,
    /// Every measurement is repeated, interleaved with the others.
    rounds: usize,
    /// Length of each noisy-neighbour phase.
    phase: Duration,
}

const FULL: Size = Size {
    ops: 40_000,
    requests: 20_000,
    rounds: 5,
    phase: Duration::from_secs(5),
};

const SMOKE: Size = Size {
    ops: 320,
    requests: 320,
    rounds: 1,
    phase: Duration::from_millis(500),
};

async fn scripts_cost(redis: &RedisServer, size: Size) -> Value {
    let settings = test_settings(&redis.url());
    let pool = RedisPool::open(&settings.redis).unwrap();
    let keys = Keys::new(&settings.redis.key_prefix, settings.redis.partitions);
    herald::store::prepare(&mut pool.get(), &keys)
        .await
        .unwrap();
    let tenant = TenantName::parse("bench").unwrap();
    let wide_open = |class| RateCheck {
        bucket: keys.rate_bucket(&tenant, class),
        per_sec: 1_000_000,
        burst: 1_000_000,
    };
    let notify_rate = wide_open(RateClass::Notify);
    let wait_rate = wide_open(RateClass::Wait);
    let all: Vec<_> = keys.all_partitions().collect();

    // Notify of an event nobody waits for: the script does the least, so the check's
    // share is the largest.
    let notify = |folded: bool, separate: bool| {
        let (pool, keys, tenant, rate) = (&pool, &keys, &tenant, &notify_rate);
        move |i: usize| async move {
            let mut conn = pool.get();
            let event = EventId::parse(&format!("n-{}", i % 1000)).unwrap();
            let partition = keys.partition_of(tenant, &event);
            if separate {
                let verdict =
                    scripts::rate_limit(&mut conn, &rate.bucket, rate.per_sec, rate.burst);
                assert!(verdict.await.unwrap().is_ok());
            }
            let args = NotifyArgs {
                partition: &partition,
                tenant,
                event: &event,
                body: b"x",
                content_type_json: "null",
                message_id_base: "m_",
                limit: 500,
                trace: "",
                first_call: true,
                history: herald::store::scripts::HistoryArgs::defaults(),
                body_id: "b",
                rate: folded.then_some(rate),
                stored_full: false,
                reply_budget: usize::MAX,
                time_budget_us: 250,
                cursor: "0",
            };
            scripts::notify(&mut conn, &args).await.unwrap();
        }
    };
    // Wait: registers a new waiter each time; the tenant's quota sums 16 partitions.
    let wait = |mode: &'static str| {
        let (pool, keys, tenant, rate, all) = (&pool, &keys, &tenant, &wait_rate, &all);
        move |i: usize| async move {
            let mut conn = pool.get();
            let event = EventId::parse(&format!("w-{mode}-{i}")).unwrap();
            let partition = keys.partition_of(tenant, &event);
            let others: Vec<_> = all
                .iter()
                .filter(|p| p.index != partition.index)
                .cloned()
                .collect();
            let mut counted_elsewhere = 0;
            if mode == "separate" {
                let check = async {
                    let mut c = pool.get();
                    scripts::rate_limit(&mut c, &rate.bucket, rate.per_sec, rate.burst).await
                };
                let count = try_join_all(others.iter().map(|p| {
                    let mut c = pool.get();
                    async move {
                        redis::cmd("GET")
                            .arg(p.waiter_count(tenant))
                            .query_async::<Option<u64>>(&mut c)
                            .await
                    }
                }));
                let (verdict, counts) = futures_util::join!(check, count);
                assert!(verdict.unwrap().is_ok());
                counted_elsewhere = counts.unwrap().into_iter().flatten().sum();
            }
            let id = format!("b{i}");
            let waiter = format!(
                r#"{{"id":"{id}","url":"http://127.0.0.1:9/","timeoutUrl":"http://127.0.0.1:9/","eventId":"{event}","timeout":"1h"}}"#
            );
            let limited = mode != "none";
            let args = WaitArgs {
                partition: &partition,
                tenant,
                event: &event,
                run: None,
                field: &format!("|{id}"),
                op_id: Some(&id),
                waiter_json: &waiter,
                timeout_ms: 3_600_000,
                op_ttl_secs: 60,
                run_ttl_ms: 60_000,
                max_waiters: if limited { 10_000 } else { 0 },
                trace: "",
                history: herald::store::scripts::HistoryArgs::defaults(),
                rate: (mode == "folded").then_some(rate),
                active: ActiveQuota {
                    max: if limited { 100_000_000 } else { 0 },
                    summed: if mode == "folded" { &others } else { &[] },
                    counted_elsewhere,
                },
                stored_full: false,
                tombstone: None,
            };
            scripts::wait(&mut conn, &args).await.unwrap();
        }
    };
    let (mut notifies, mut waits) = ([vec![], vec![], vec![]], [vec![], vec![], vec![]]);
    for _ in 0..size.rounds {
        let run = |op| with_redis_time(&pool, measure(size.ops, CONCURRENCY, op));
        notifies[0].push(run(notify(false, false)).await);
        notifies[1].push(run(notify(true, false)).await);
        notifies[2].push(run(notify(false, true)).await);
        let run = |op| with_redis_time(&pool, measure(size.ops, CONCURRENCY, op));
        waits[0].push(run(wait("none")).await);
        waits[1].push(run(wait("folded")).await);
        waits[2].push(run(wait("separate")).await);
    }
    let [notify_none, notify_folded, notify_separate] = notifies.map(|r| best(&r));
    let [wait_none, wait_folded, wait_separate] = waits.map(|r| best(&r));
    json!({
        "ops": size.ops,
        "concurrency": CONCURRENCY,
        "notify": {
            "no_checks": notify_none,
            "folded_standalone": notify_folded,
            "separate_cluster_way": notify_separate,
            "throughput_ratio_folded": ratio(&notify_folded, &notify_none),
            "throughput_ratio_separate": ratio(&notify_separate, &notify_none),
        },
        "wait": {
            "no_checks": wait_none,
            "folded_standalone": wait_folded,
            "separate_cluster_way": wait_separate,
            "throughput_ratio_folded": ratio(&wait_folded, &wait_none),
            "throughput_ratio_separate": ratio(&wait_separate, &wait_none),
        },
    })
}

async fn http_cost(redis: &RedisServer, size: Size) -> Value {
    let mut apps = Vec::new();
    for limited in [false, true] {
        let mut settings = test_settings(&redis.url());
        settings.server.auth_cache_ms = 5000;
        let d = &mut settings.limits.defaults;
        for (per_sec, burst) in [
            (&mut d.wait_per_sec, &mut d.wait_burst),
            (&mut d.notify_per_sec, &mut d.notify_burst),
            (&mut d.read_per_sec, &mut d.read_burst),
        ] {
            *per_sec = if limited { 1_000_000 } else { 0 };
            *burst = 1_000_000;
        }
        apps.push(TestApp::start_role(settings, Role::Api).await);
    }
    fn op<'a>(app: &'a TestApp) -> impl Fn(usize) -> BoxFuture<'a, ()> + Clone + 'a {
        move |i| {
            Box::pin(async move {
                let (status, _) = app.notify(&format!("h-{}", i % 1000), "x").await;
                assert_eq!(status, 201);
            })
        }
    }
    let mut results = [vec![], vec![]];
    for round in 0..size.rounds {
        for (app, runs) in apps.iter().zip(results.iter_mut()) {
            if round == 0 {
                measure(size.requests / 10, CONCURRENCY, op(app)).await; // warm up
            }
            runs.push(measure(size.requests, CONCURRENCY, op(app)).await);
        }
    }
    for app in apps {
        app.stop().await;
    }
    let [off, on] = results.map(|r| best(&r));
    json!({
        "requests": size.requests,
        "concurrency": CONCURRENCY,
        "notify_limits_off": off,
        "notify_limits_on": on,
        "throughput_ratio": ratio(&on, &off),
    })
}

async fn noisy_neighbour(redis: &RedisServer, size: Size) -> Value {
    let mut settings = test_settings(&redis.url());
    settings.server.auth_cache_ms = 5000;
    let app = TestApp::start_role(settings, Role::Api).await;
    let (limit, burst) = (200, 50);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut rounds = Vec::new();
    for round in 0..size.rounds {
        // Fresh tenants each round: full buckets.
        let quiet_token = app.tenant_token(&format!("quiet{round}")).await;
        let noisy_tenant = format!("noisy{round}");
        let noisy_token = app.tenant_token(&noisy_tenant).await;
        let (status, body) = app
            .send(
                app.http
                    .put(app.url(&format!("/admin/tenants/{noisy_tenant}/limits")))
                    .bearer_auth("test-admin-token")
                    .body(json!({"notify_per_sec": limit, "notify_burst": burst}).to_string()),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let duration = size.phase;
        let quiet = noisy::Load {
            token: quiet_token,
            per_sec: 200,
            duration,
        };
        let flood = noisy::Load {
            token: noisy_token,
            per_sec: 2000,
            duration,
        };
        // Warm up the client's connections and Herald's caches.
        let warm = noisy::Load {
            duration: size.phase / 5,
            ..quiet.clone()
        };
        noisy::send(&client, &app.base, &warm, "warm").await;
        let report = noisy::run(&client, &app.base, &quiet, &flood, (limit, burst)).await;
        rounds.push(serde_json::to_value(report).unwrap());
    }
    app.stop().await;
    let sorted = |field: &str| {
        let mut v: Vec<f64> = rounds.iter().map(|r| r[field].as_f64().unwrap()).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let p99_ratios = sorted("p99_ratio");
    let rate_ratios = sorted("admitted_rate_ratio");
    json!({
        "noisy_limit": {"per_sec": limit, "burst": burst},
        "median_p99_ratio": p99_ratios[p99_ratios.len() / 2],
        "lowest_admitted_rate_ratio": rate_ratios[0],
        "rounds": rounds,
    })
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let size = if args.iter().any(|a| a == "--bench") {
        FULL
    } else {
        SMOKE
    };
    let only: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o.as_str() == name);
    let redis = RedisServer::start();
    let mut out = json!({
        "smoke_run_only": size.rounds == SMOKE.rounds,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        // Other work on the machine while this ran (1, 5, 15 minutes).
        "load_average": std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
    });
    if wanted("scripts") {
        out["scripts"] = scripts_cost(&redis, size).await;
    }
    if wanted("http") {
        out["http"] = http_cost(&redis, size).await;
    }
    if wanted("noisy") {
        out["noisy_neighbour"] = noisy_neighbour(&redis, size).await;
    }
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}
