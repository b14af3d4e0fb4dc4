//! The load generator's side of the wire: Herald's HTTP API as a tenant calls it, and a
//! driver that runs `n` operations with at most `c` in flight.
//!
//! The client is a pool of keep-alive HTTP/1.1 connections that writes each request whole
//! and parses the reply in place. Why not reqwest (as Herald itself uses for deliveries):
//! the load generator shares the machine's two cores with Herald and Redis, so every
//! microsecond it spends per request is taken from what it measures; reqwest spent
//! 25–46 µs of CPU per notify here, several times the Redis client of the EVALSHA
//! baseline, which made the HTTP-vs-EVALSHA ratio partly a comparison of clients.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest one request (connecting, or sending and reading the reply) may take.
const REQUEST_BOUND: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Clone)]
pub struct Api {
    inner: Arc<Inner>,
}

struct Inner {
    /// `host:port` of Herald.
    authority: String,
    /// The request head's fixed lines: host and authorization.
    head: String,
    idle: Mutex<Vec<Connection>>,
}

struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A reply: status, the `Herald-Notify-Outcome` header, and the body.
struct Reply {
    status: u16,
    outcome: Option<String>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// How a request failed: before any byte of the reply arrived on a reused connection (the
/// server had closed it while idle: the request was not served, so it is sent again on a
/// new connection), or otherwise.
enum Failure {
    Stale(anyhow::Error),
    Other(anyhow::Error),
}

impl Connection {
    async fn open(authority: &str) -> anyhow::Result<Self> {
        let stream = tokio::time::timeout(REQUEST_BOUND, TcpStream::connect(authority))
            .await
            .map_err(|_| anyhow::anyhow!("connecting to herald at {authority}: timed out"))?
            .with_context(|| format!("connecting to herald at {authority}"))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends one request and reads its reply (Content-Length bodies only: Herald's
    /// replies all have one). Returns the reply and whether the connection can be reused.
    /// [`Connection::exchange_unbounded`] within [`REQUEST_BOUND`]: a stalled Herald fails
    /// the run with a message instead of hanging it.
    async fn exchange(&mut self, request: &[u8]) -> Result<(Reply, bool), Failure> {
        match tokio::time::timeout(REQUEST_BOUND, self.exchange_unbounded(request)).await {
            Ok(done) => done,
            Err(_) => Err(Failure::Other(anyhow::anyhow!(
                "no reply from herald within {REQUEST_BOUND:?}"
            ))),
        }
    }

    async fn exchange_unbounded(&mut self, request: &[u8]) -> Result<(Reply, bool), Failure> {
        self.buf.clear();
        if let Err(e) = self.stream.write_all(request).await {
            return Err(Failure::Stale(e.into()));
        }
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            let parsed = response
                .parse(&self.buf)
                .map_err(|e| Failure::Other(anyhow::anyhow!("reply from herald: {e}")))?;
            if let httparse::Status::Complete(head_len) = parsed {
                let (mut length, mut outcome, mut reusable) = (None, None, true);
                for h in response.headers.iter() {
                    let value = || String::from_utf8_lossy(h.value).into_owned();
                    if h.name.eq_ignore_ascii_case("content-length") {
                        length = value().trim().parse::<usize>().ok();
                    } else if h.name.eq_ignore_ascii_case("herald-notify-outcome") {
                        outcome = Some(value());
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        reusable = !value().eq_ignore_ascii_case("close");
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        return Err(Failure::Other(anyhow::anyhow!(
                            "reply from herald: transfer-encoding {} is not read here",
                            value()
                        )));
                    }
                }
                let status = response.code.unwrap_or(0);
                let length = length.ok_or_else(|| {
                    Failure::Other(anyhow::anyhow!("reply from herald without content-length"))
                })?;
                while self.buf.len() < head_len + length {
                    self.fill().await.map_err(Failure::Other)?;
                }
                let body = self.buf[head_len..head_len + length].to_vec();
                let reusable = reusable && self.buf.len() == head_len + length;
                return Ok((
                    Reply {
                        status,
                        outcome,
                        body,
                    },
                    reusable,
                ));
            }
            let empty = self.buf.is_empty();
            if let Err(e) = self.fill().await {
                return Err(if empty {
                    Failure::Stale(e)
                } else {
                    Failure::Other(e)
                });
            }
        }
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("herald closed the connection");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

impl Api {
    /// `base` is `http://host:port`.
    pub fn new(base: String, token: String) -> anyhow::Result<Self> {
        let authority = base
            .strip_prefix("http://")
            .ok_or_else(|| anyhow::anyhow!("{base}: the load generator speaks plain http"))?
            .trim_end_matches('/')
            .to_owned();
        let head = format!("host: {authority}\r\nauthorization: Bearer {token}\r\n");
        Ok(Self {
            inner: Arc::new(Inner {
                authority,
                head,
                idle: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The same Herald and token, with a connection pool of its own: for a caller on
    /// another runtime (a connection is served by the runtime that opened it).
    pub fn own_pool(&self) -> Self {
        Self {
            inner: Arc::new(Inner {
                authority: self.inner.authority.clone(),
                head: self.inner.head.clone(),
                idle: Mutex::new(Vec::new()),
            }),
        }
    }

    async fn post(
        &self,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Reply> {
        self.send("POST", path, body, headers).await
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Reply> {
        let mut request = format!("{method} {path} HTTP/1.1\r\n{}", self.inner.head);
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
        let pooled = self.inner.idle.lock().expect("idle connections").pop();
        let reused = pooled.is_some();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => Connection::open(&self.inner.authority).await?,
        };
        let (reply, reusable) = match conn.exchange(request.as_bytes()).await {
            Ok(done) => done,
            Err(Failure::Stale(_)) if reused => {
                conn = Connection::open(&self.inner.authority).await?;
                match conn.exchange(request.as_bytes()).await {
                    Ok(done) => done,
                    Err(Failure::Stale(e) | Failure::Other(e)) => return Err(e),
                }
            }
            Err(Failure::Stale(e) | Failure::Other(e)) => return Err(e),
        };
        if reusable {
            self.inner.idle.lock().expect("idle connections").push(conn);
        }
        Ok(reply)
    }

    /// POST /v2/wait/{event}: returns the reply (`waiterId`, `status`, ...).
    pub async fn wait(&self, event: &str, body: &str, run: Option<&str>) -> anyhow::Result<Value> {
        let headers: Vec<(&str, &str)> = run
            .map(|r| vec![("Upstash-Workflow-RunId", r)])
            .unwrap_or_default();
        let reply = self
            .post(&format!("/v2/wait/{event}"), body, &headers)
            .await?;
        if reply.status != 200 {
            bail!("wait {event}: HTTP {} {}", reply.status, reply.json());
        }
        Ok(reply.json())
    }

    /// POST /v2/notify/{event}: returns how many waiters were notified.
    pub async fn notify(&self, event: &str, body: &'static str) -> anyhow::Result<usize> {
        let reply = self
            .post(
                &format!("/v2/notify/{event}"),
                body,
                &[("content-type", "application/json")],
            )
            .await?;
        let json = reply.json();
        if reply.status != 201 {
            bail!("notify {event}: HTTP {} {json}", reply.status);
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
        let reply = self
            .post(
                &format!("/v2/notify/{run}/{event}"),
                body,
                &[("content-type", "application/json")],
            )
            .await?;
        if reply.status != 201 {
            bail!(
                "notify {run}/{event}: HTTP {} {}",
                reply.status,
                reply.json()
            );
        }
        Ok(reply.outcome.unwrap_or_default())
    }
}

impl Api {
    /// POST /v2/batch (workflow messages, a JSON array): returns the reply's elements.
    pub async fn batch(&self, messages: &str) -> anyhow::Result<Value> {
        let reply = self
            .post(
                "/v2/batch",
                messages,
                &[("content-type", "application/json")],
            )
            .await?;
        if reply.status != 200 {
            bail!("batch: HTTP {} {}", reply.status, reply.json());
        }
        Ok(reply.json())
    }

    /// DELETE /v2/workflows/runs/{run}?cancel=false with the run's return value: the end
    /// of a run, as the SDK sends it after the last step.
    pub async fn end_run(&self, run: &str, result: &str) -> anyhow::Result<()> {
        let reply = self
            .send(
                "DELETE",
                &format!("/v2/workflows/runs/{run}?cancel=false"),
                result,
                &[("content-type", "text/plain;charset=UTF-8")],
            )
            .await?;
        if reply.status != 200 {
            bail!("end of run {run}: HTTP {} {}", reply.status, reply.json());
        }
        Ok(())
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
