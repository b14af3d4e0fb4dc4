//! Test harness: real Redis processes (standalone, a local Redis Cluster, or a Sentinel
//! setup: see [`redis`]), Herald started in-process on port 0 with a unique key prefix,
//! and a recording receiver.

pub mod cluster;
pub mod process;
pub mod receiver;
pub mod redis;
pub mod sentinel;

use std::future::Future;
use std::time::{Duration, Instant};

use herald::app::{self, Role, Running};
use herald::config::Settings;
use herald::domain::TenantName;
use herald::store::tenants;
use serde_json::Value;

pub use self::receiver::Receiver;
pub use self::redis::RedisServer;

/// A response's JSON body.
pub async fn json_body(response: reqwest::Response) -> Value {
    let text = response.text().await.expect("a body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Polls `check` every 10 ms until it holds or `limit` passes; returns whether it held.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    loop {
        if check() {
            return true;
        }
        if started.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Like [`eventually`] for async checks.
pub async fn eventually_async<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return true;
        }
        if started.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The bound of every request a test sends to Herald: a stalled Herald fails the test
/// with a message instead of hanging it. Herald answers within
/// `redis.response_timeout_ms` (5 s in [`test_settings`]) plus its own work.
pub const REQUEST_BOUND: Duration = Duration::from_secs(30);

/// The HTTP client of the tests: every request is bounded by [`REQUEST_BOUND`]. No idle
/// connection reuse: a request written on a keep-alive connection the server is just
/// closing fails with IncompleteMessage, a client-side race that a loaded 2-core machine
/// makes likely and that would say nothing about Herald.
pub fn http_client() -> reqwest::Client {
    bounded_http_client(REQUEST_BOUND)
}

/// An HTTP client whose every request (connect, send, reply) ends within `bound`.
pub fn bounded_http_client(bound: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .connect_timeout(bound.min(Duration::from_secs(5)))
        .timeout(bound)
        .build()
        .unwrap()
}

/// With `RUST_LOG` set, the log of every Herald (and of the Redis client library) the
/// tests start goes to the test's output: `RUST_LOG=herald=debug,redis=debug`.
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Settings for tests: fast ticks and retries, loopback deliveries allowed, no caches.
pub fn test_settings(redis_url: &str) -> Settings {
    let mut s = Settings::defaults();
    s.server.listen = "127.0.0.1:0".parse().unwrap();
    s.server.admin_token = "test-admin-token".into();
    s.server.auth_cache_ms = 0;
    s.server.http_workers = 2;
    s.server.shutdown_grace_secs = 5;
    s.redis.url = redis_url.to_owned();
    // Generous for a 2-core machine running the suite in parallel; tests of timeouts set
    // their own.
    s.redis.response_timeout_ms = 5000;
    if let Some(topology) = self::redis::topology_of(redis_url) {
        s.redis.mode = topology.mode;
        s.redis.nodes = topology.nodes;
        s.redis.sentinel_master = topology.sentinel_master;
    }
    s.redis.key_prefix = format!("t{}", herald::api::wait::random_id(8));
    // Every test starts on a fresh prefix.
    s.redis.initialize = true;
    // Tests probe with bad tokens from one address; tests/it/hostile.rs sets its own.
    s.server.auth_failures_per_minute = 0;
    s.delivery.allow_cidrs = vec!["127.0.0.0/8".into()];
    s.delivery.backoff_factor = 0.001;
    s.delivery.block_ms = 200;
    s.delivery.request_timeout_secs = 5;
    s.scheduler.tick_ms = 50;
    // No rate limits unless a test sets them (tests/it/limits.rs): a bucket expiring
    // mid-test would change the dataset digests some tests compare.
    s.limits.defaults.wait_per_sec = 0;
    s.limits.defaults.notify_per_sec = 0;
    s.limits.defaults.read_per_sec = 0;
    s
}

pub struct TestApp {
    pub running: Option<Running>,
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
}

impl TestApp {
    pub async fn start(settings: Settings) -> Self {
        Self::start_role(settings, Role::All).await
    }

    pub async fn start_role(settings: Settings, role: Role) -> Self {
        init_logging();
        let running = app::start(settings, role).await.expect("herald starts");
        let base = format!("http://{}", running.addr);
        let tenant = TenantName::parse("acme").unwrap();
        let created = tenants::create_or_reissue(
            &mut running.state.redis.get(),
            &running.state.keys,
            &tenant,
        )
        .await
        .unwrap();
        TestApp {
            running: Some(running),
            base,
            token: created.token,
            // No idle connection reuse: a request written on a keep-alive connection the
            // server is just closing fails with IncompleteMessage, a client-side race that a
            // loaded 2-core machine makes likely and that would say nothing about Herald.
            http: http_client(),
        }
    }

    /// Another Herald process (in-process) with the same settings and Redis: a replica
    /// serving the same tenants (same token).
    pub async fn replica(&self, role: Role) -> TestApp {
        let settings = self.running.as_ref().unwrap().state.settings.clone();
        let running = app::start(settings, role).await.expect("replica starts");
        TestApp {
            base: format!("http://{}", running.addr),
            running: Some(running),
            token: self.token.clone(),
            http: http_client(),
        }
    }

    /// A second tenant's token on the same Herald.
    pub async fn tenant_token(&self, name: &str) -> String {
        let running = self.running.as_ref().unwrap();
        tenants::create_or_reissue(
            &mut running.state.redis.get(),
            &running.state.keys,
            &TenantName::parse(name).unwrap(),
        )
        .await
        .unwrap()
        .token
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn post(
        &self,
        path: &str,
        token: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        self.send(self.http.post(self.url(path)).bearer_auth(token).body(body))
            .await
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.send(self.http.get(self.url(path)).bearer_auth(token))
            .await
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        self.try_send(request)
            .await
            .unwrap_or_else(|e| panic!("the request did not get an answer: {e}"))
    }

    /// Like [`TestApp::send`], but a request that got no answer (refused, timed out by
    /// the client's bound) is an `Err` describing it instead of a panic.
    pub async fn try_send(&self, request: reqwest::RequestBuilder) -> Result<(u16, Value), String> {
        let started = Instant::now();
        let no_answer = |e: reqwest::Error| {
            format!(
                "no answer after {:?} ({}): {e:?}",
                started.elapsed(),
                if e.is_timeout() {
                    "timed out"
                } else {
                    "failed"
                }
            )
        };
        let response = request.send().await.map_err(no_answer)?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(no_answer)?;
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, json))
    }

    pub async fn wait(&self, event: &str, body: Value) -> (u16, Value) {
        self.post(&format!("/v2/wait/{event}"), &self.token, body.to_string())
            .await
    }

    pub async fn notify(&self, event: &str, body: &str) -> (u16, Value) {
        self.post(&format!("/v2/notify/{event}"), &self.token, body.to_owned())
            .await
    }

    pub async fn waiters(&self, event: &str) -> Vec<Value> {
        let (status, body) = self.get(&format!("/v2/waiters/{event}"), &self.token).await;
        assert_eq!(status, 200, "{body}");
        body.as_array().cloned().expect("an array of waiters")
    }

    /// The tenant's stored bytes, as `GET /admin/tenants/{name}/usage` reports them.
    pub async fn stored_bytes(&self, tenant: &str) -> u64 {
        let (status, usage) = self
            .get(
                &format!("/admin/tenants/{tenant}/usage"),
                "test-admin-token",
            )
            .await;
        assert_eq!(status, 200, "{usage}");
        usage["storedBytes"].as_u64().unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }
}
