//! Configuration: `config/default.toml` (compiled in, documents every key) → optional
//! file → `HERALD_<SECTION>__<KEY>` environment variables (and `REDIS_URL`).

use std::net::SocketAddr;
use std::path::Path;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;

use crate::delivery::ip_policy::Cidr;
use crate::domain::parse_duration;
use crate::limits::Limits;

/// The documented defaults, the base layer of every configuration.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub redis: RedisSettings,
    pub waiters: WaiterSettings,
    pub delivery: DeliverySettings,
    pub scheduler: SchedulerSettings,
    pub log: LogSettings,
    pub history: HistorySettings,
    pub telemetry: TelemetrySettings,
    pub limits: LimitSettings,
    pub workflow: WorkflowSettings,
}

/// The Upstash Workflow runtime (src/workflow/).
#[derive(Debug, Clone, Deserialize)]
pub struct WorkflowSettings {
    pub max_message_bytes: usize,
    pub run_ttl_secs: u64,
    pub finished_ttl_secs: u64,
    pub max_call_response_bytes: usize,
    pub max_error_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub admin_token: String,
    pub max_body_bytes: usize,
    pub shutdown_grace_secs: u64,
    pub http_workers: usize,
    pub auth_cache_ms: u64,
    pub auth_failures_per_minute: u32,
    pub client_ip_header: String,
    pub operator_listen: String,
    pub max_connections: usize,
    pub read_timeout_ms: u64,
    pub max_read_bytes: usize,
    /// Serve the web console at `/console` (src/api/console.rs).
    pub console: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RedisSettings {
    pub mode: RedisMode,
    pub url: String,
    pub nodes: Vec<String>,
    pub sentinel_master: String,
    pub username: String,
    pub password: String,
    pub key_prefix: String,
    pub partitions: u16,
    pub pool_size: usize,
    pub connect_timeout_ms: u64,
    pub response_timeout_ms: u64,
    /// Replicas that must confirm an API write before it is acknowledged (0: off).
    pub wait_replicas: u32,
    pub wait_timeout_ms: u64,
    /// Microseconds of Redis time after which a batch script (notify, the scheduler's)
    /// takes no further item; 0 = the batch sizes alone bound them.
    pub script_budget_us: u64,
    /// Initialise a Redis that holds no Herald data (else refuse to start on it).
    pub initialize: bool,
}

/// How Herald finds its Redis.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One server at `redis.url`.
    Standalone,
    /// The master named `redis.sentinel_master`, found through the sentinels in `redis.nodes`.
    Sentinel,
    /// A Redis Cluster, discovered from the seed nodes in `redis.nodes`.
    Cluster,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WaiterSettings {
    pub default_timeout: String,
    pub max_timeout: String,
    pub saved_ttl_secs: u64,
    pub idempotency_ttl_secs: u64,
    pub notify_batch: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DeliverySettings {
    pub concurrency: usize,
    pub read_batch: usize,
    pub block_ms: u64,
    pub connect_timeout_secs: u64,
    pub request_timeout_secs: u64,
    pub max_retries: u32,
    pub max_backoff_secs: u64,
    pub backoff_factor: f64,
    pub reclaim_idle_secs: u64,
    pub max_deliveries: u32,
    pub tenant_concurrency: usize,
    pub dead_letter_retention_secs: u64,
    pub consumer_idle_secs: u64,
    pub allow_cidrs: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SchedulerSettings {
    pub tick_ms: u64,
    pub batch: usize,
}

/// Every tenant's limits unless overridden (`/admin/tenants/{name}/limits`).
#[derive(Debug, Clone, Deserialize)]
pub struct LimitSettings {
    #[serde(flatten)]
    pub defaults: Limits,
    pub cache_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    pub format: LogFormat,
    pub filter: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HistorySettings {
    pub ttl_secs: u64,
    pub max_entries: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TelemetrySettings {
    pub traces: bool,
    pub gauge_sample_secs: u64,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration: {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

impl Settings {
    /// Loads defaults, then `file` (if any), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        if let Some(url) = std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty()) {
            figment = figment.merge(("redis.url", url));
        }
        figment = figment.merge(Env::prefixed("HERALD_").split("__"));
        let settings: Settings = figment.extract().map_err(Box::new)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Loads the defaults alone (tests and `herald dev` start from these).
    pub fn defaults() -> Self {
        Figment::from(Toml::string(DEFAULT_TOML))
            .extract()
            .expect("config/default.toml is valid")
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        if self.redis.partitions == 0 || self.redis.partitions > 1024 {
            return invalid("redis.partitions", "must be between 1 and 1024".into());
        }
        if let Err(message) = self.validate_redis_topology() {
            return invalid("redis.mode", message);
        }
        if self.redis.wait_replicas > 0
            && (self.redis.wait_timeout_ms == 0
                || self.redis.wait_timeout_ms >= self.redis.response_timeout_ms)
        {
            return invalid(
                "redis.wait_timeout_ms",
                "must be above 0 and below redis.response_timeout_ms (WAIT must answer before the reply times out)".into(),
            );
        }
        if !crate::domain::is_valid_prefix(&self.redis.key_prefix) {
            return invalid(
                "redis.key_prefix",
                "must be 1-64 characters of [A-Za-z0-9_.-]".into(),
            );
        }
        for (key, value) in [
            ("waiters.default_timeout", &self.waiters.default_timeout),
            ("waiters.max_timeout", &self.waiters.max_timeout),
        ] {
            if let Err(e) = parse_duration(value) {
                return invalid(key, e.to_string());
            }
        }
        if self.default_timeout_ms() > self.max_timeout_ms() {
            return invalid(
                "waiters.default_timeout",
                "is longer than waiters.max_timeout".into(),
            );
        }
        if self.waiters.notify_batch == 0 || self.scheduler.batch == 0 {
            return invalid("waiters.notify_batch", "batches must be at least 1".into());
        }
        if self.delivery.concurrency == 0 {
            return invalid("delivery.concurrency", "must be at least 1".into());
        }
        if self.delivery.tenant_concurrency == 0 {
            return invalid("delivery.tenant_concurrency", "must be at least 1".into());
        }
        if self.delivery.max_deliveries < 2 {
            return invalid(
                "delivery.max_deliveries",
                "must be at least 2 (the first hand-out and one takeover)".into(),
            );
        }
        if self.delivery.reclaim_idle_secs <= self.delivery.request_timeout_secs {
            return invalid(
                "delivery.reclaim_idle_secs",
                "must be longer than delivery.request_timeout_secs (a live attempt must not be taken over)".into(),
            );
        }
        if let Err(e) = self.allow_cidrs() {
            return invalid("delivery.allow_cidrs", e);
        }
        if let Err(e) = self.limits.defaults.validate(&self.limit_caps()) {
            return invalid("limits", e.to_string());
        }
        Ok(())
    }

    fn validate_redis_topology(&self) -> Result<(), String> {
        let r = &self.redis;
        let urls: &[String] = match r.mode {
            RedisMode::Standalone => std::slice::from_ref(&r.url),
            RedisMode::Sentinel | RedisMode::Cluster if r.nodes.is_empty() => {
                return Err(format!(
                    "{:?} mode needs redis.nodes (the {} addresses)",
                    r.mode,
                    if r.mode == RedisMode::Sentinel {
                        "sentinels'"
                    } else {
                        "cluster seed nodes'"
                    }
                ))
            }
            RedisMode::Sentinel | RedisMode::Cluster => &r.nodes,
        };
        if r.mode == RedisMode::Sentinel && r.sentinel_master.is_empty() {
            return Err("sentinel mode needs redis.sentinel_master (the master's name)".into());
        }
        for url in urls {
            let scheme = url.split_once("://").map(|(s, _)| s);
            if !matches!(scheme, Some("redis" | "rediss")) {
                return Err(format!("{url:?} is not a redis:// or rediss:// URL"));
            }
        }
        Ok(())
    }

    pub fn default_timeout_ms(&self) -> u64 {
        parse_duration(&self.waiters.default_timeout).unwrap_or(7 * 86_400_000)
    }

    pub fn max_timeout_ms(&self) -> u64 {
        parse_duration(&self.waiters.max_timeout).unwrap_or(365 * 86_400_000)
    }

    /// The server-wide caps no tenant limit may exceed.
    pub fn limit_caps(&self) -> crate::limits::Caps {
        crate::limits::Caps {
            max_body_bytes: self.server.max_body_bytes as u64,
            max_timeout_ms: self.max_timeout_ms(),
        }
    }

    pub fn allow_cidrs(&self) -> Result<Vec<Cidr>, String> {
        self.delivery
            .allow_cidrs
            .iter()
            .map(|s| s.parse::<Cidr>().map_err(|e| format!("{s:?}: {e}")))
            .collect()
    }
}
