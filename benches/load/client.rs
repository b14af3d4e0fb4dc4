//! The load generator's side of the wire: Herald's HTTP API as a tenant calls it, and a
//! driver that runs `n` operations with at most `c` in flight.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use serde_json::Value;

#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
}

impl Api {
    pub fn new(base: String, token: String, concurrency: usize) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(concurrency.max(1))
            .build()?;
        Ok(Self { http, base, token })
    }

    async fn post(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(u16, reqwest::header::HeaderMap, Value)> {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .body(body);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await.context("request to herald")?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await?;
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, headers, json))
    }

    /// POST /v2/wait/{event}: returns the reply (`waiterId`, `status`, ...).
    pub async fn wait(&self, event: &str, body: &str, run: Option<&str>) -> anyhow::Result<Value> {
        let headers: Vec<(&str, &str)> = run
            .map(|r| vec![("Upstash-Workflow-RunId", r)])
            .unwrap_or_default();
        let (status, _, json) = self
            .post(&format!("/v2/wait/{event}"), body.to_owned(), &headers)
            .await?;
        if status != 200 {
            bail!("wait {event}: HTTP {status} {json}");
        }
        Ok(json)
    }

    /// POST /v2/notify/{event}: returns how many waiters were notified.
    pub async fn notify(&self, event: &str, body: &'static str) -> anyhow::Result<usize> {
        let (status, _, json) = self
            .post(
                &format!("/v2/notify/{event}"),
                body,
                &[("content-type", "application/json")],
            )
            .await?;
        if status != 201 {
            bail!("notify {event}: HTTP {status} {json}");
        }
        Ok(json.as_array().map_or(0, Vec::len))
    }

    /// POST /v2/notify/{run}/{event}: returns the `Herald-Notify-Outcome` header.
    pub async fn notify_run(
        &self,
        run: &str,
        event: &str,
        body: &'static str,
    ) -> anyhow::Result<String> {
        let (status, headers, json) = self
            .post(
                &format!("/v2/notify/{run}/{event}"),
                body,
                &[("content-type", "application/json")],
            )
            .await?;
        if status != 201 {
            bail!("notify {run}/{event}: HTTP {status} {json}");
        }
        Ok(headers
            .get("herald-notify-outcome")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned())
    }
}

/// Runs `op(0..n)` on `c` tasks (each takes the next index when it is done with one), so
/// at most `c` operations are in flight. Returns each operation's result, by index.
pub async fn run_concurrently<T, F, Fut>(n: usize, c: usize, op: F) -> Vec<anyhow::Result<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<T>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..c.clamp(1, n.max(1)) {
        let (op, next) = (op.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return done;
                }
                done.push((i, op(i).await));
            }
        }));
    }
    let mut results: Vec<Option<anyhow::Result<T>>> = (0..n).map(|_| None).collect();
    for task in tasks {
        match task.await {
            Ok(done) => {
                for (i, r) in done {
                    results[i] = Some(r);
                }
            }
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(anyhow::anyhow!("operation did not run"))))
        .collect()
}
