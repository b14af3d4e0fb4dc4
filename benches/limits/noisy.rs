//! The noisy-neighbour scenario, shared by the `limits` benchmark (which prints it) and
//! the integration tests (which assert its admitted counts only).
//!
//! A quiet tenant notifies at a steady rate under its limit, first alone, then while a
//! noisy tenant offers notifies far over its own limit. Requests are sent open loop (one
//! task per request at its scheduled time), so a slow Herald cannot hide latency by
//! slowing the sender down. Notifies go to events nobody waits for: the scenario measures
//! API admission, not delivery.
//!
//! Herald, Redis and both senders share one machine here, while in production a flood
//! comes from elsewhere. So the flood is sent from a thread of its own, with its own
//! runtime and HTTP client, at the lowest CPU priority (nice 19): its sender gets only the
//! CPU that Herald, Redis and the quiet sender leave, while Herald still handles every
//! flood request at normal priority. What the quiet tenant then feels is Herald's cost of
//! refusing the flood, not the cost of generating it.

use std::time::{Duration, Instant};

use serde::Serialize;

/// One sender's load: `per_sec` notifies for `duration` with `token`.
#[derive(Debug, Clone)]
pub struct Load {
    pub token: String,
    pub per_sec: u32,
    pub duration: Duration,
}

/// What one sender saw.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub offered_per_sec: u32,
    pub sent: u64,
    /// 201 answers.
    pub admitted: u64,
    /// 429 answers.
    pub refused: u64,
    /// Any other answer or a failed request.
    pub other: u64,
    /// From the first request sent to the last answer received.
    pub elapsed_secs: f64,
    pub admitted_per_sec: f64,
    /// Latency of the admitted requests.
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub quiet_solo: Phase,
    pub quiet_with_noise: Phase,
    pub noisy: Phase,
    /// The noisy tenant's admission bound: its limit × elapsed + burst.
    pub noisy_bound: f64,
    /// quiet_with_noise / quiet_solo.
    pub admitted_rate_ratio: f64,
    pub p99_ratio: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Sends `load` open loop to `base` and waits for every answer (each bounded by the
/// client's timeout).
pub async fn send(client: &reqwest::Client, base: &str, load: &Load, tag: &str) -> Phase {
    let interval = Duration::from_secs_f64(1.0 / f64::from(load.per_sec.max(1)));
    let total = (f64::from(load.per_sec) * load.duration.as_secs_f64()).round() as u64;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        tokio::time::sleep_until((started + interval * i as u32).into()).await;
        let request = client
            .post(format!("{base}/v2/notify/{tag}-{i}"))
            .bearer_auth(&load.token)
            .body("tick");
        tasks.push(tokio::spawn(async move {
            let sent_at = Instant::now();
            let status = request.send().await.map(|r| r.status().as_u16()).ok();
            (status, sent_at.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let (mut admitted, mut refused, mut other) = (0, 0, 0);
    let mut latencies = Vec::new();
    for task in tasks {
        match task.await {
            Ok((Some(201), ms)) => {
                admitted += 1;
                latencies.push(ms);
            }
            Ok((Some(429), _)) => refused += 1,
            _ => other += 1,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    Phase {
        offered_per_sec: load.per_sec,
        sent: total,
        admitted,
        refused,
        other,
        elapsed_secs: elapsed,
        admitted_per_sec: admitted as f64 / elapsed,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
    }
}

/// [`send`] from a new thread at nice 19, on a runtime and HTTP client of its own.
async fn send_at_low_priority(base: &str, load: &Load, tag: &'static str) -> Phase {
    let (base, load) = (base.to_string(), load.clone());
    let (done, phase) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        lower_this_threads_priority();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime of the flood's sender");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("HTTP client of the flood's sender");
        let _ = done.send(runtime.block_on(send(&client, &base, &load, tag)));
    });
    phase
        .await
        .expect("the flood's sender thread ended without a report")
}

/// Linux: a nice value belongs to a thread, and `/proc/thread-self` names this thread's
/// id, which `renice -p` accepts. A failure only makes the measurement less fair.
fn lower_this_threads_priority() {
    let thread_id = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|path| Some(path.file_name()?.to_string_lossy().into_owned()));
    let Some(thread_id) = thread_id else {
        eprintln!("noisy: no /proc/thread-self; the flood's sender keeps its priority");
        return;
    };
    let reniced = std::process::Command::new("renice")
        .args(["-n", "19", "-p", &thread_id])
        .stdout(std::process::Stdio::null())
        .status();
    if !reniced.is_ok_and(|status| status.success()) {
        eprintln!("noisy: renice failed; the flood's sender keeps its priority");
    }
}

/// Runs the quiet load alone, then together with the noisy load. `noisy_limit` is the
/// noisy tenant's (per second, burst) notify limit, for the bound in the report.
pub async fn run(
    client: &reqwest::Client,
    base: &str,
    quiet: &Load,
    noisy: &Load,
    noisy_limit: (u32, u32),
) -> Report {
    let quiet_solo = send(client, base, quiet, "quiet-solo").await;
    let (quiet_with_noise, noisy_phase) = tokio::join!(
        send(client, base, quiet, "quiet-noise"),
        send_at_low_priority(base, noisy, "noisy"),
    );
    let noisy_bound =
        f64::from(noisy_limit.0) * noisy_phase.elapsed_secs + f64::from(noisy_limit.1);
    Report {
        admitted_rate_ratio: quiet_with_noise.admitted_per_sec / quiet_solo.admitted_per_sec,
        p99_ratio: quiet_with_noise.p99_ms / quiet_solo.p99_ms,
        quiet_solo,
        quiet_with_noise,
        noisy: noisy_phase,
        noisy_bound,
    }
}
