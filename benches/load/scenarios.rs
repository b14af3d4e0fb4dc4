//! The scenarios. Each one uses event ids of its own, measures, checks that nothing was
//! lost, and returns one JSON object (`"ok": false` with `problems` when something was).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herald::api::wait::random_id;
use herald::domain::{EventId, HeaderMap, TenantName};
use herald::store::keys::{deadline_member, waiter_field};
use herald::store::scripts::{self, ActiveQuota, NotifyArgs, NotifyReply, WaitArgs, WaitReply};
use herald::store::{Keys, RedisPool};
use herald::waiter::Waiter;
use serde_json::{json, Value};

use crate::client::{run_concurrently, Api};
use crate::clock::{self, ms_between};
use crate::procs;
use crate::receiver::{Arrival, Receiver};
use crate::stats::{rate, summary};

/// The notify body of every scenario (and of the EVALSHA baseline).
pub const NOTIFY_BODY: &str = r#"{"orderId":"ord-000042","paid":true,"amount":4200}"#;

pub struct Params {
    pub waiters: usize,
    pub concurrency: usize,
    pub rate: usize,
    pub rate_secs: usize,
    pub fanout: usize,
    pub big_fanout: usize,
    pub big_body_bytes: usize,
    pub timeouts: usize,
    pub memory_entries: usize,
    /// N of lookback_crowd: runs waiting on one event.
    pub crowd: Vec<usize>,
    /// Lookback notifies measured per N (in rounds of N).
    pub crowd_notifies: usize,
    /// Runs of the workflow scenario, and how many are in flight at once.
    pub workflow_runs: usize,
    pub workflow_concurrency: usize,
}

pub struct Ctx {
    pub api: Api,
    pub receiver: Receiver,
    /// Connections to Herald's Redis (INFO, deadlines, the EVALSHA baseline).
    pub redis: RedisPool,
    /// Herald's key names (same prefix and partitions as the Herald under test).
    pub keys: Keys,
    pub tenant: TenantName,
    pub p: Params,
    /// Process ids of Herald and Redis, for their CPU time.
    pub herald_pid: u32,
    pub redis_pid: u32,
    /// A Herald serving the API only (no delivery workers), on keys of its own.
    pub api_only: Api,
    pub api_only_pid: u32,
}

/// CPU time used by Herald, Redis and the load generator (with its receiver) since
/// `start`, per operation: where the machine's cores went.
pub struct CpuMeter {
    herald_pid: u32,
    start: [Option<f64>; 3],
}

impl CpuMeter {
    pub fn start(ctx: &Ctx, herald_pid: u32) -> Self {
        Self {
            herald_pid,
            start: Self::now(ctx, herald_pid),
        }
    }

    fn now(ctx: &Ctx, herald_pid: u32) -> [Option<f64>; 3] {
        [
            procs::cpu_ms(herald_pid),
            procs::cpu_ms(ctx.redis_pid),
            procs::cpu_ms(std::process::id()),
        ]
    }

    /// Microseconds of CPU per operation, by process.
    pub fn per_op(&self, ctx: &Ctx, ops: usize) -> Value {
        let now = Self::now(ctx, self.herald_pid);
        let per = |i: usize| match (self.start[i], now[i]) {
            (Some(a), Some(b)) if ops > 0 => json!(((b - a) * 1000.0 / ops as f64).round()),
            _ => Value::Null,
        };
        json!({ "herald": per(0), "redis": per(1), "load_generator": per(2) })
    }
}

/// Problems found by a scenario; an empty list means correct.
#[derive(Default)]
pub struct Check(Vec<String>);

impl Check {
    pub fn expect(&mut self, ok: bool, problem: impl FnOnce() -> String) {
        if !ok {
            self.0.push(problem());
        }
    }

    fn failures(&mut self, what: &str, results: &[anyhow::Result<impl Sized>]) -> usize {
        let failed: Vec<&anyhow::Error> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        if let Some(first) = failed.first() {
            self.0
                .push(format!("{} {what} failed, e.g.: {first:#}", failed.len()));
        }
        failed.len()
    }

    pub fn finish(self, mut report: Value) -> Value {
        report["ok"] = json!(self.0.is_empty());
        if !self.0.is_empty() {
            report["problems"] = json!(self.0);
        }
        report
    }
}

/// Send times by operation index (nanoseconds on the load generator's clock).
fn send_times(n: usize) -> Arc<Vec<AtomicU64>> {
    Arc::new((0..n).map(|_| AtomicU64::new(0)).collect())
}

/// The index `i` of an event id `<prefix><i>`.
fn index_of(event: &str, prefix: &str) -> Option<usize> {
    event.strip_prefix(prefix)?.parse().ok()
}

/// Arrival latencies from the send time of the operation named by each arrival's event,
/// and the count of distinct deliveries (by message id) among `arrivals`.
fn latencies(arrivals: &[Arrival], prefix: &str, sent: &[AtomicU64]) -> Vec<f64> {
    arrivals
        .iter()
        .filter_map(|a| {
            let i = index_of(&a.event, prefix)?;
            Some(ms_between(sent.get(i)?.load(Ordering::Relaxed), a.at_ns))
        })
        .collect()
}

fn distinct_messages(arrivals: &[Arrival]) -> usize {
    arrivals
        .iter()
        .map(|a| a.message_id.as_str())
        .collect::<HashSet<_>>()
        .len()
}

/// How long to wait for deliveries after the last request: generous, and bounded.
fn delivery_limit(count: usize) -> Duration {
    Duration::from_secs(30 + count as u64 / 200)
}

fn wait_body(url: &str, timeout: &str) -> Arc<String> {
    Arc::new(json!({ "url": url, "timeout": timeout }).to_string())
}

/// Registers `n` plain waiters on events `<prefix><i>` (one each, or all on `prefix`
/// itself when `same_event`); returns the results (waiter ids) by index.
async fn register(
    ctx: &Ctx,
    api: &Api,
    prefix: &str,
    n: usize,
    body: Arc<String>,
    same_event: bool,
) -> (Vec<anyhow::Result<String>>, f64) {
    let api = api.clone();
    let prefix = prefix.to_owned();
    let started = Instant::now();
    let results = run_concurrently(n, ctx.p.concurrency, move |i| {
        let (api, body) = (api.clone(), body.clone());
        let event = if same_event {
            prefix.clone()
        } else {
            format!("{prefix}{i}")
        };
        async move {
            let reply = api.wait(&event, &body, None).await?;
            reply["waiterId"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow::anyhow!("wait reply without waiterId: {reply}"))
        }
    })
    .await;
    (results, started.elapsed().as_secs_f64())
}

/// W waiters (one per event), then one notify each at concurrency C.
pub async fn notify(ctx: &Ctx, baseline_per_s: Option<f64>) -> Value {
    let (w, c) = (ctx.p.waiters, ctx.p.concurrency);
    let mut check = Check::default();
    let prefix = format!("n{}-", random_id(6));
    let body = wait_body(&ctx.receiver.url("/notify"), "1h");
    let (registered, register_s) = register(ctx, &ctx.api, &prefix, w, body, false).await;
    check.failures("waits", &registered);

    ctx.receiver.take();
    let sent = send_times(w);
    let cpu = CpuMeter::start(ctx, ctx.herald_pid);
    let started = Instant::now();
    let results = {
        let (api, sent, prefix) = (ctx.api.clone(), sent.clone(), prefix.clone());
        run_concurrently(w, c, move |i| {
            let (api, sent, event) = (api.clone(), sent.clone(), format!("{prefix}{i}"));
            async move {
                sent[i].store(clock::now_ns(), Ordering::Relaxed);
                let notified = api.notify(&event, NOTIFY_BODY).await?;
                anyhow::ensure!(notified == 1, "notify {event} reached {notified} waiters");
                Ok(())
            }
        })
        .await
    };
    let notify_s = started.elapsed().as_secs_f64();
    check.failures("notifies", &results);
    let all = ctx.receiver.wait_for(w, delivery_limit(w)).await;
    let cpu_us_per_notify = cpu.per_op(ctx, w);
    ctx.receiver.settle(Duration::from_millis(200)).await;
    let arrivals = ctx.receiver.take();
    let delivered = distinct_messages(&arrivals);
    check.expect(all && delivered == w, || {
        format!("{delivered} of {w} notifications delivered")
    });
    let notify_per_s = rate(w, notify_s);
    // Notifies and deliveries share the cores: a Herald that delivers while it is notified
    // answers notifies more slowly than one that lets deliveries pile up. The end-to-end
    // rate (first notify to last delivery) compares both fairly.
    let last_ns = arrivals.iter().map(|a| a.at_ns).max().unwrap_or(0);
    let first_ns = sent
        .iter()
        .map(|t| t.load(Ordering::Relaxed))
        .min()
        .unwrap_or(0);
    check.finish(json!({
        "scenario": "notify",
        "waiters": w,
        "concurrency": c,
        "wait_per_s": rate(w, register_s),
        "notify_per_s": notify_per_s,
        "baseline_evalsha_per_s": baseline_per_s,
        "ratio_to_baseline": baseline_per_s.map(|b| (notify_per_s / b * 1000.0).round() / 1000.0),
        "end_to_end_per_s": rate(delivered, ms_between(first_ns, last_ns) / 1000.0),
        "cpu_us_per_notify_and_delivery": cpu_us_per_notify,
        "latency_ms": summary(latencies(&arrivals, &prefix, &sent)),
        "delivered": delivered,
        "lost": w.saturating_sub(delivered),
        "duplicates": arrivals.len() - delivered,
    }))
}

/// W waiters, then one notify each at concurrency C, on a Herald serving the API only:
/// the HTTP notify path alone (the deliveries it enqueues are not sent), the figure to
/// set beside the EVALSHA rate of the same script.
pub async fn notify_api_only(ctx: &Ctx, baseline_per_s: Option<f64>) -> Value {
    let (w, c) = (ctx.p.waiters, ctx.p.concurrency);
    let mut check = Check::default();
    let prefix = format!("a{}-", random_id(6));
    let body = wait_body(&ctx.receiver.url("/api-only"), "1h");
    let (registered, register_s) = register(ctx, &ctx.api_only, &prefix, w, body, false).await;
    check.failures("waits", &registered);
    let cpu = CpuMeter::start(ctx, ctx.api_only_pid);
    let started = Instant::now();
    let results = {
        let (api, prefix) = (ctx.api_only.clone(), prefix.clone());
        run_concurrently(w, c, move |i| {
            let (api, event) = (api.clone(), format!("{prefix}{i}"));
            async move {
                let notified = api.notify(&event, NOTIFY_BODY).await?;
                anyhow::ensure!(notified == 1, "notify {event} reached {notified} waiters");
                Ok(())
            }
        })
        .await
    };
    let notify_s = started.elapsed().as_secs_f64();
    let cpu_us_per_notify = cpu.per_op(ctx, w);
    check.failures("notifies", &results);
    let notify_per_s = rate(w, notify_s);
    check.finish(json!({
        "scenario": "notify_api_only",
        "waiters": w,
        "concurrency": c,
        "wait_per_s": rate(w, register_s),
        "notify_per_s": notify_per_s,
        "baseline_evalsha_per_s": baseline_per_s,
        "ratio_to_baseline": baseline_per_s.map(|b| (notify_per_s / b * 1000.0).round() / 1000.0),
        "cpu_us_per_notify": cpu_us_per_notify,
    }))
}

/// Notifies at a fixed rate (open loop: a late reply does not delay the next send), so
/// the latency is the one a steady load sees, not the one of a saturated Herald.
pub async fn notify_at_rate(ctx: &Ctx) -> Value {
    let n = ctx.p.rate * ctx.p.rate_secs;
    let mut check = Check::default();
    let prefix = format!("r{}-", random_id(6));
    let body = wait_body(&ctx.receiver.url("/rate"), "1h");
    let (registered, _) = register(ctx, &ctx.api, &prefix, n, body, false).await;
    check.failures("waits", &registered);

    ctx.receiver.take();
    let sent = send_times(n);
    let interval = Duration::from_secs_f64(1.0 / ctx.p.rate as f64);
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let due = started + interval * i as u32;
        tokio::time::sleep_until(due).await;
        // Latency counts from the planned send time (no coordinated omission).
        let planned_ns = clock::now_ns().saturating_sub(
            tokio::time::Instant::now()
                .saturating_duration_since(due)
                .as_nanos() as u64,
        );
        sent[i].store(planned_ns, Ordering::Relaxed);
        let (api, event) = (ctx.api.clone(), format!("{prefix}{i}"));
        tasks.push(tokio::spawn(async move {
            let notified = api.notify(&event, NOTIFY_BODY).await?;
            anyhow::ensure!(notified == 1, "notify {event} reached {notified} waiters");
            Ok(())
        }));
    }
    let mut results = Vec::with_capacity(n);
    for t in tasks {
        results.push(
            t.await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("task: {e}"))),
        );
    }
    let sending_s = started.elapsed().as_secs_f64();
    check.failures("notifies", &results);
    let all = ctx.receiver.wait_for(n, delivery_limit(n)).await;
    ctx.receiver.settle(Duration::from_millis(200)).await;
    let arrivals = ctx.receiver.take();
    let delivered = distinct_messages(&arrivals);
    check.expect(all && delivered == n, || {
        format!("{delivered} of {n} notifications delivered")
    });
    check.finish(json!({
        "scenario": "notify_at_rate",
        "target_per_s": ctx.p.rate,
        "notifies": n,
        "achieved_per_s": rate(n, sending_s),
        "latency_ms": summary(latencies(&arrivals, &prefix, &sent)),
        "delivered": delivered,
        "lost": n.saturating_sub(delivered),
        "duplicates": arrivals.len() - delivered,
    }))
}

/// Notify-before-wait: W lookback notifies are saved, then each run's wait consumes its
/// saved notification and is delivered at once. Latency: wait request → delivery.
pub async fn lookback(ctx: &Ctx) -> Value {
    let (w, c) = (ctx.p.waiters, ctx.p.concurrency);
    let mut check = Check::default();
    let tag = random_id(6);
    let (runs, events) = (format!("wfr_{tag}-"), format!("lb{tag}-"));

    let started = Instant::now();
    let saved = {
        let (api, runs, events) = (ctx.api.clone(), runs.clone(), events.clone());
        run_concurrently(w, c, move |i| {
            let (api, run, event) = (api.clone(), format!("{runs}{i}"), format!("{events}{i}"));
            async move {
                let outcome = api.notify_run(&run, &event, NOTIFY_BODY).await?;
                anyhow::ensure!(
                    outcome == "saved",
                    "lookback notify {run}/{event}: {outcome}"
                );
                Ok(())
            }
        })
        .await
    };
    let save_s = started.elapsed().as_secs_f64();
    check.failures("lookback notifies", &saved);

    ctx.receiver.take();
    let body = wait_body(&ctx.receiver.url("/lookback"), "1h");
    let sent = send_times(w);
    let started = Instant::now();
    let waits = {
        let (api, runs, events, sent) =
            (ctx.api.clone(), runs.clone(), events.clone(), sent.clone());
        run_concurrently(w, c, move |i| {
            let (api, run, event) = (api.clone(), format!("{runs}{i}"), format!("{events}{i}"));
            let (body, sent) = (body.clone(), sent.clone());
            async move {
                sent[i].store(clock::now_ns(), Ordering::Relaxed);
                let reply = api.wait(&event, &body, Some(&run)).await?;
                anyhow::ensure!(reply["status"] == "notified", "wait {run}/{event}: {reply}");
                Ok(())
            }
        })
        .await
    };
    let wait_s = started.elapsed().as_secs_f64();
    check.failures("consuming waits", &waits);
    let all = ctx.receiver.wait_for(w, delivery_limit(w)).await;
    ctx.receiver.settle(Duration::from_millis(200)).await;
    let arrivals = ctx.receiver.take();
    let delivered = distinct_messages(&arrivals);
    check.expect(all && delivered == w, || {
        format!("{delivered} of {w} saved notifications delivered")
    });
    check.finish(json!({
        "scenario": "lookback",
        "runs": w,
        "concurrency": c,
        "save_per_s": rate(w, save_s),
        "consume_per_s": rate(w, wait_s),
        "latency_ms": summary(latencies(&arrivals, &events, &sent)),
        "delivered": delivered,
        "lost": w.saturating_sub(delivered),
        "duplicates": arrivals.len() - delivered,
    }))
}

/// One event, F waiters, one notify: its response time and the time until the last
/// delivery arrived.
pub async fn fanout(ctx: &Ctx) -> Value {
    let f = ctx.p.fanout;
    let mut check = Check::default();
    let event = format!("fan{}", random_id(6));
    let body = wait_body(&ctx.receiver.url("/fanout"), "1h");
    let (registered, _) = register(ctx, &ctx.api, &event, f, body, true).await;
    check.failures("waits", &registered);

    ctx.receiver.take();
    let started = clock::now_ns();
    let notified = ctx.api.notify(&event, NOTIFY_BODY).await;
    let replied = clock::now_ns();
    match &notified {
        Ok(n) => check.expect(*n == f, || format!("the notify reached {n} of {f} waiters")),
        Err(e) => check.expect(false, || format!("notify failed: {e:#}")),
    }
    let all = ctx.receiver.wait_for(f, delivery_limit(f)).await;
    ctx.receiver.settle(Duration::from_millis(200)).await;
    let arrivals = ctx.receiver.take();
    let delivered = distinct_messages(&arrivals);
    check.expect(all && delivered == f, || {
        format!("{delivered} of {f} waiters delivered")
    });
    let first = arrivals.iter().map(|a| a.at_ns).min().unwrap_or(started);
    let last = arrivals.iter().map(|a| a.at_ns).max().unwrap_or(started);
    check.finish(json!({
        "scenario": "fanout",
        "waiters": f,
        "notify_response_ms": ms_between(started, replied),
        "first_delivery_ms": ms_between(started, first),
        "last_delivery_ms": ms_between(started, last),
        "deliveries_per_s": rate(delivered, ms_between(started, last) / 1000.0),
        "delivered": delivered,
        "lost": f.saturating_sub(delivered),
        "duplicates": arrivals.len() - delivered,
    }))
}

/// One notify of a large body (`--big-body-kib`, 1 MiB by default) to `--big-fanout`
/// waiters: Redis memory while the deliveries are queued and after they are all
/// acknowledged (INFO used_memory, sampled every 20 ms, over what it was before the notify),
/// and the time until the last delivery arrived.
pub async fn big_fanout(ctx: &Ctx) -> Value {
    let (f, size) = (ctx.p.big_fanout, ctx.p.big_body_bytes);
    let mut check = Check::default();
    let event = format!("bigfan{}", random_id(6));
    let body = wait_body(&ctx.receiver.url("/bigfanout"), "1h");
    let (registered, _) = register(ctx, &ctx.api, &event, f, body, true).await;
    check.failures("waits", &registered);
    // A JSON string of `size` bytes that no layer could shrink to a repeated byte.
    let mut payload = String::with_capacity(size + 16);
    payload.push('"');
    let mut i = 0u64;
    while payload.len() < size - 1 {
        payload.push_str(&format!("{i:08x}"));
        i += 1;
    }
    payload.truncate(size - 1);
    payload.push('"');
    let payload: &'static str = Box::leak(payload.into_boxed_str());

    ctx.receiver.take();
    let before = used_memory(ctx).await;
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (sampling, peak, redis) = (sampling.clone(), peak.clone(), ctx.redis.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Acquire) {
                let info: redis::RedisResult<String> = redis::cmd("INFO")
                    .arg("memory")
                    .query_async(&mut redis.get())
                    .await;
                if let Some(used) = info.ok().and_then(|info| {
                    info.lines()
                        .find_map(|l| l.strip_prefix("used_memory:"))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                }) {
                    peak.fetch_max(used, Ordering::AcqRel);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let started = clock::now_ns();
    let notified = ctx.api.notify(&event, payload).await;
    let replied = clock::now_ns();
    match &notified {
        Ok(n) => check.expect(*n == f, || format!("the notify reached {n} of {f} waiters")),
        Err(e) => check.expect(false, || format!("notify failed: {e:#}")),
    }
    let all = ctx.receiver.wait_for(f, delivery_limit(f) * 4).await;
    let done = clock::now_ns();
    ctx.receiver.settle(Duration::from_millis(500)).await;
    sampling.store(false, Ordering::Release);
    let _ = sampler.await;
    let after = used_memory(ctx).await;
    let arrivals = ctx.receiver.take();
    let delivered = distinct_messages(&arrivals);
    check.expect(all && delivered == f, || {
        format!("{delivered} of {f} waiters delivered")
    });
    let last = arrivals.iter().map(|a| a.at_ns).max().unwrap_or(done);
    let mib = |bytes: i64| (bytes as f64 / 1048576.0 * 10.0).round() / 10.0;
    let (before, after) = (before.unwrap_or(0), after.unwrap_or(0));
    let peak = peak.load(Ordering::Acquire) as i64;
    check.finish(json!({
        "scenario": "big_fanout",
        "waiters": f,
        "body_bytes": size,
        "notify_response_ms": ms_between(started, replied),
        "last_delivery_ms": ms_between(started, last),
        "deliveries_per_s": rate(delivered, ms_between(started, last) / 1000.0),
        "redis_used_memory_before_mib": mib(before),
        "redis_peak_added_mib": mib(peak.max(before) - before),
        "redis_after_added_mib": mib(after - before),
        "delivered": delivered,
        "lost": f.saturating_sub(delivered),
        "duplicates": arrivals.len() - delivered,
    }))
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// T waiters whose deadlines all fall in the same wall-clock second; lateness is the
/// time from each waiter's exact deadline (read from Redis) to its timeout delivery.
pub async fn timeouts(ctx: &Ctx) -> Value {
    let t = ctx.p.timeouts;
    let mut check = Check::default();
    let prefix = format!("to{}-", random_id(6));
    let url = ctx.receiver.url("/timeout");
    // The registrations are paced over one whole second, from the start of the next one,
    // so the deadlines spread evenly over the deadline second whatever the wait rate (a
    // faster Herald registering in half a second would otherwise get a burst twice as
    // dense). Sends that fall behind only shift their deadlines later in that second.
    let now = unix_now();
    let first_send = Instant::now() + (Duration::from_secs(now.as_secs() + 1) - now);
    let deadline_s = now.as_secs() + 3 + t.div_ceil(10_000) as u64;
    let registered = {
        let (api, prefix) = (ctx.api.clone(), prefix.clone());
        run_concurrently(t, ctx.p.concurrency, move |i| {
            let (api, event, url) = (api.clone(), format!("{prefix}{i}"), url.clone());
            let send_at = first_send + Duration::from_secs(1).mul_f64(i as f64 / t as f64);
            async move {
                tokio::time::sleep_until(send_at.into()).await;
                // A whole number of seconds from now lands in the deadline second, at the
                // same fraction of a second as now: deadlines spread over that one second.
                let secs = deadline_s.saturating_sub(unix_now().as_secs());
                anyhow::ensure!(
                    secs >= 1,
                    "registration too slow for a common deadline second"
                );
                let body = json!({ "url": url, "timeout": secs }).to_string();
                let reply = api.wait(&event, &body, None).await?;
                reply["waiterId"]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| anyhow::anyhow!("wait reply without waiterId: {reply}"))
            }
        })
        .await
    };
    check.failures("waits", &registered);
    let ids: Vec<(usize, String)> = registered
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| r.ok().map(|id| (i, id)))
        .collect();
    let deadlines = match read_deadlines(ctx, &prefix, &ids).await {
        Ok(d) => d,
        Err(e) => {
            check.expect(false, || format!("reading deadlines: {e:#}"));
            vec![None; t]
        }
    };
    let known: Vec<f64> = deadlines.iter().flatten().copied().collect();
    check.expect(known.len() == ids.len(), || {
        format!(
            "{} of {} deadlines found before the deadline second",
            known.len(),
            ids.len()
        )
    });

    // CPU from here to the last delivery: firing and delivering the timeouts (the
    // registrations are done), per timeout.
    let cpu = CpuMeter::start(ctx, ctx.herald_pid);
    let remaining = Duration::from_secs(deadline_s + 1).saturating_sub(unix_now());
    let all = ctx
        .receiver
        .wait_for(t, remaining + delivery_limit(t))
        .await;
    let cpu_us_per_timeout = cpu.per_op(ctx, t);
    ctx.receiver.settle(Duration::from_millis(200)).await;
    let arrivals = ctx.receiver.take();
    let delivered = distinct_messages(&arrivals);
    check.expect(all && delivered == t, || {
        format!("{delivered} of {t} timeouts delivered")
    });
    check.expect(arrivals.iter().all(|a| a.timeout), || {
        "a waiter got an event instead of its timeout".into()
    });
    let lateness: Vec<f64> = arrivals
        .iter()
        .filter_map(|a| {
            let deadline = (*deadlines.get(index_of(&a.event, &prefix)?)?)?;
            Some(a.wall_ms - deadline)
        })
        .collect();
    check.expect(lateness.iter().all(|l| *l >= 0.0), || {
        "a timeout was delivered before its deadline".into()
    });
    let spread = known.iter().copied().fold(f64::MIN, f64::max)
        - known.iter().copied().fold(f64::MAX, f64::min);
    check.finish(json!({
        "scenario": "timeouts",
        "waiters": t,
        "deadline_second": deadline_s,
        "deadline_spread_ms": if known.is_empty() { 0.0 } else { spread },
        "lateness_ms": summary(lateness),
        "cpu_us_per_timeout": cpu_us_per_timeout,
        "delivered": delivered,
        "lost": t.saturating_sub(delivered),
        "duplicates": arrivals.len() - delivered,
    }))
}

/// Each registered waiter's deadline (unix ms) by index, from Herald's deadline sets.
async fn read_deadlines(
    ctx: &Ctx,
    prefix: &str,
    ids: &[(usize, String)],
) -> anyhow::Result<Vec<Option<f64>>> {
    let mut out = vec![None; ids.iter().map(|(i, _)| i + 1).max().unwrap_or(0)];
    let mut conn = ctx.redis.get();
    for chunk in ids.chunks(1000) {
        let mut pipe = redis::pipe();
        for (i, id) in chunk {
            let event = EventId::parse(&format!("{prefix}{i}"))?;
            let member = deadline_member(&ctx.tenant, &waiter_field(None, id), &event);
            pipe.zscore(
                ctx.keys.partition_of(&ctx.tenant, &event).deadlines(),
                member,
            );
        }
        let scores: Vec<Option<f64>> = pipe.query_async(&mut conn).await?;
        for ((i, _), score) in chunk.iter().zip(scores) {
            out[*i] = score;
        }
    }
    Ok(out)
}

async fn used_memory(ctx: &Ctx) -> anyhow::Result<i64> {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut ctx.redis.get())
        .await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("INFO memory has no used_memory"))
}

/// Redis bytes per idle waiter and per saved lookback notification (INFO deltas over M
/// entries each), beside the raw size of what the client sent for each.
pub async fn memory(ctx: &Ctx) -> Value {
    let (m, c) = (ctx.p.memory_entries, ctx.p.concurrency);
    let mut check = Check::default();
    let tag = random_id(6);
    let wait_prefix = format!("mem{tag}-order-");
    // A typical plain waiter: its own callback URL per order, a timeout, one header.
    let wait_body_of = move |i: usize| {
        json!({
            "url": format!("https://app.example.com/api/orders/{i:07}/paid"),
            "timeout": "1h",
            "headers": { "X-Order-Id": [format!("{i:07}")] },
        })
        .to_string()
    };
    let waiter_raw: usize = (0..m)
        .map(|i| wait_body_of(i).len() + format!("{wait_prefix}{i}").len())
        .sum();

    let before = used_memory(ctx).await;
    let registered = {
        let (api, prefix) = (ctx.api.clone(), wait_prefix.clone());
        run_concurrently(m, c, move |i| {
            let (api, event, body) = (api.clone(), format!("{prefix}{i}"), wait_body_of(i));
            async move { api.wait(&event, &body, None).await.map(|_| ()) }
        })
        .await
    };
    check.failures("waits", &registered);
    let after_waiters = used_memory(ctx).await;

    let (runs, events) = (format!("wfr_m{tag}-"), format!("ms{tag}-"));
    let saved_raw: usize = (0..m)
        .map(|i| format!("{runs}{i}").len() + format!("{events}{i}").len() + NOTIFY_BODY.len())
        .sum();
    let saved = {
        let (api, runs, events) = (ctx.api.clone(), runs.clone(), events.clone());
        run_concurrently(m, c, move |i| {
            let (api, run, event) = (api.clone(), format!("{runs}{i}"), format!("{events}{i}"));
            async move {
                let outcome = api.notify_run(&run, &event, NOTIFY_BODY).await?;
                anyhow::ensure!(
                    outcome == "saved",
                    "lookback notify {run}/{event}: {outcome}"
                );
                Ok(())
            }
        })
        .await
    };
    check.failures("lookback notifies", &saved);
    let after_saved = used_memory(ctx).await;

    let (before, after_waiters, after_saved) = match (before, after_waiters, after_saved) {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        (a, b, c) => {
            let e = [a.err(), b.err(), c.err()].into_iter().flatten().next();
            check.expect(false, || format!("INFO memory: {e:?}"));
            (0, 0, 0)
        }
    };
    let per = |delta: i64| (delta as f64 / m as f64).round();
    let raw = |total: usize| (total as f64 / m as f64).round();
    let ratio = |delta: i64, total: usize| ((delta as f64 / total as f64) * 100.0).round() / 100.0;
    check.finish(json!({
        "scenario": "memory",
        "entries": m,
        "waiter": {
            "redis_bytes": per(after_waiters - before),
            "raw_bytes": raw(waiter_raw),
            "ratio": ratio(after_waiters - before, waiter_raw),
            "raw_is": "event id + wait request JSON",
        },
        "saved_notification": {
            "redis_bytes": per(after_saved - after_waiters),
            "raw_bytes": raw(saved_raw),
            "ratio": ratio(after_saved - after_waiters, saved_raw),
            "raw_is": "run id + event id + notify body",
        },
    }))
}

/// The physical limit: the notify script itself, by EVALSHA at the same concurrency, with
/// no HTTP. Its waiters are registered with the wait script, under a key prefix of their
/// own that no Herald worker reads (so nothing is delivered).
pub async fn baseline(ctx: &Ctx) -> (Value, Option<f64>) {
    let (w, c) = (ctx.p.waiters, ctx.p.concurrency);
    let mut check = Check::default();
    let keys = Keys::new(&format!("raw{}", random_id(6)), ctx.keys.partitions());
    if let Err(e) = herald::store::prepare(&mut ctx.redis.get(), &keys).await {
        check.expect(false, || format!("loading scripts: {e}"));
        return (check.finish(json!({ "scenario": "baseline" })), None);
    }
    let prefix = format!("b{}-", random_id(6));
    let shared = Arc::new((ctx.redis.clone(), keys, ctx.tenant.clone(), prefix));
    let url = ctx.receiver.url("/baseline");

    let started = Instant::now();
    let waits = {
        let shared = shared.clone();
        run_concurrently(w, c, move |i| {
            let (shared, url) = (shared.clone(), url.clone());
            async move {
                let (redis, keys, tenant, prefix) = &*shared;
                let event = EventId::parse(&format!("{prefix}{i}"))?;
                let id = random_id(24);
                let waiter = Waiter {
                    id: id.clone(),
                    url: url.clone(),
                    headers: HeaderMap::default(),
                    timeout_url: url,
                    timeout_body: None,
                    timeout_headers: HeaderMap::default(),
                    step: None,
                    run_id: None,
                    timeout: "1h".into(),
                    retries: None,
                    traceparent: None,
                    deadline: 0,
                    created_at: 0,
                };
                let reply = scripts::wait(
                    &mut redis.get(),
                    &WaitArgs {
                        partition: &keys.partition_of(tenant, &event),
                        tenant,
                        event: &event,
                        run: None,
                        field: &waiter_field(None, &id),
                        op_id: None,
                        waiter_json: &serde_json::to_string(&waiter.for_storage())?,
                        timeout_ms: 3_600_000,
                        op_ttl_secs: 86_400,
                        run_ttl_ms: 0,
                        max_waiters: 0,
                        trace: "",
                        history: herald::store::scripts::HistoryArgs::defaults(),
                        rate: None,
                        active: ActiveQuota {
                            max: 0,
                            summed: &[],
                            counted_elsewhere: 0,
                        },
                        stored_full: false,
                        tombstone: None,
                    },
                )
                .await?;
                anyhow::ensure!(
                    matches!(reply, WaitReply::Waiting { .. }),
                    "wait: {reply:?}"
                );
                Ok(())
            }
        })
        .await
    };
    let wait_s = started.elapsed().as_secs_f64();
    check.failures("EVALSHA waits", &waits);

    let cpu = CpuMeter::start(ctx, ctx.herald_pid);
    let started = Instant::now();
    let notifies = {
        let shared = shared.clone();
        run_concurrently(w, c, move |i| {
            let shared = shared.clone();
            async move {
                let (redis, keys, tenant, prefix) = &*shared;
                let event = EventId::parse(&format!("{prefix}{i}"))?;
                let reply = scripts::notify(
                    &mut redis.get(),
                    &NotifyArgs {
                        partition: &keys.partition_of(tenant, &event),
                        tenant,
                        event: &event,
                        body: NOTIFY_BODY.as_bytes(),
                        content_type_json: "\"application/json\"",
                        message_id_base: &format!("msg_{}_", random_id(20)),
                        limit: 500,
                        trace: "",
                        first_call: true,
                        history: herald::store::scripts::HistoryArgs::defaults(),
                        rate: None,
                        body_id: &random_id(20),
                        stored_full: false,
                        reply_budget: usize::MAX,
                        time_budget_us: 250,
                        cursor: "0",
                    },
                )
                .await?;
                let NotifyReply::Taken { taken, .. } = reply else {
                    anyhow::bail!("notify was rate limited");
                };
                anyhow::ensure!(taken.len() == 1, "notify took {} waiters", taken.len());
                Ok(())
            }
        })
        .await
    };
    let notify_s = started.elapsed().as_secs_f64();
    let cpu_us_per_notify = cpu.per_op(ctx, w);
    check.failures("EVALSHA notifies", &notifies);
    let per_s = rate(w, notify_s);
    (
        check.finish(json!({
            "scenario": "baseline",
            "waiters": w,
            "concurrency": c,
            "evalsha_wait_per_s": rate(w, wait_s),
            "evalsha_notify_per_s": per_s,
            "cpu_us_per_notify": cpu_us_per_notify,
        })),
        Some(per_s),
    )
}

/// Redis' own accounting of EVALSHA since the last `CONFIG RESETSTAT`: (calls, µs).
async fn evalsha_stats(ctx: &Ctx) -> anyhow::Result<(u64, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut ctx.redis.get())
        .await?;
    let line = info
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:"))
        .unwrap_or("");
    let field = |name: &str| {
        line.split(',')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("calls"), field("usec")))
}

/// Lookback in a crowd: for each N of `--crowd`, N runs wait on one event id, then each
/// is notified by its run id (lookback notify). Rounds repeat until about
/// `--crowd-notifies` notifies were measured per N. Per notify: the script's time in Redis
/// (INFO commandstats), Redis' CPU and the request latency, on the API-only Herald (no
/// deliveries compete; each notify must take its run's waiter). With the run index the
/// cost does not depend on N.
pub async fn lookback_crowd(ctx: &Ctx) -> Value {
    let c = ctx.p.concurrency;
    let mut check = Check::default();
    let mut sizes = Vec::new();
    let api = ctx.api_only.clone();
    let body = wait_body(&ctx.receiver.url("/crowd"), "1h");
    for &n in &ctx.p.crowd {
        let rounds = ctx.p.crowd_notifies.div_ceil(n.max(1)).max(1);
        let (mut latencies_ms, mut notify_s, mut calls, mut script_us) = (Vec::new(), 0.0, 0, 0);
        let mut redis_cpu_ms = 0.0;
        for _ in 0..rounds {
            let tag = random_id(6);
            let event = format!("crowd{tag}");
            let runs = format!("wfr_{tag}-");
            let registered = {
                let (api, event, runs, body) =
                    (api.clone(), event.clone(), runs.clone(), body.clone());
                run_concurrently(n, c, move |i| {
                    let (api, event, body) = (api.clone(), event.clone(), body.clone());
                    let run = format!("{runs}{i}");
                    async move {
                        let reply = api.wait(&event, &body, Some(&run)).await?;
                        anyhow::ensure!(reply["status"] == "waiting", "wait {run}: {reply}");
                        Ok(())
                    }
                })
                .await
            };
            check.failures("crowd waits", &registered);
            let _: () = redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .query_async(&mut ctx.redis.get())
                .await
                .unwrap_or(());
            let cpu_before = procs::cpu_ms(ctx.redis_pid);
            let started = Instant::now();
            let notified = {
                let (api, event, runs) = (api.clone(), event.clone(), runs.clone());
                run_concurrently(n, c, move |i| {
                    let (api, event) = (api.clone(), event.clone());
                    let run = format!("{runs}{i}");
                    async move {
                        let sent = Instant::now();
                        let outcome = api.notify_run(&run, &event, NOTIFY_BODY).await?;
                        anyhow::ensure!(outcome == "delivered", "lookback notify {run}: {outcome}");
                        Ok(sent.elapsed().as_secs_f64() * 1000.0)
                    }
                })
                .await
            };
            notify_s += started.elapsed().as_secs_f64();
            if let (Some(a), Some(b)) = (cpu_before, procs::cpu_ms(ctx.redis_pid)) {
                redis_cpu_ms += b - a;
            }
            match evalsha_stats(ctx).await {
                Ok((k, us)) => {
                    calls += k;
                    script_us += us;
                }
                Err(e) => check.expect(false, || format!("INFO commandstats: {e:#}")),
            }
            check.failures("crowd lookback notifies", &notified);
            latencies_ms.extend(notified.into_iter().filter_map(Result::ok));
        }
        let notifies = latencies_ms.len();
        let per = |total: f64| {
            if notifies == 0 {
                Value::Null
            } else {
                json!((total / notifies as f64 * 10.0).round() / 10.0)
            }
        };
        sizes.push(json!({
            "waiting": n,
            "rounds": rounds,
            "notifies": notifies,
            "notify_per_s": rate(notifies, notify_s),
            "latency_ms": summary(latencies_ms),
            "script_us_per_notify": per(script_us as f64),
            "script_calls": calls,
            "redis_cpu_us_per_notify": per(redis_cpu_ms * 1000.0),
        }));
    }
    let ratio = |field: &str| {
        let first = sizes.first()?.get(field)?.as_f64()?;
        let last = sizes.last()?.get(field)?.as_f64()?;
        (first > 0.0).then(|| (last / first * 100.0).round() / 100.0)
    };
    let p50 = |s: &Value| s["latency_ms"]["p50"].as_f64();
    let p50_ratio = match (sizes.first().and_then(p50), sizes.last().and_then(p50)) {
        (Some(a), Some(b)) if a > 0.0 => Some((b / a * 100.0).round() / 100.0),
        _ => None,
    };
    check.finish(json!({
        "scenario": "lookback_crowd",
        "concurrency": c,
        "sizes": sizes,
        "largest_to_smallest": {
            "script_us_per_notify": ratio("script_us_per_notify"),
            "redis_cpu_us_per_notify": ratio("redis_cpu_us_per_notify"),
            "latency_p50": p50_ratio,
        },
    }))
}
