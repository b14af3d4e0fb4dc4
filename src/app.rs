//! Start-up and shutdown: builds the shared state, binds the HTTP listener, starts the
//! delivery workers and the scheduler for the chosen role, and stops them in order.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpServer};
use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::api::{self, auth::AuthThrottle, auth::TokenCache, AppState};
use crate::config::Settings;
use crate::delivery::http::Sender;
use crate::delivery::ip_policy::IpPolicy;
use crate::delivery::Deliverer;
use crate::history::{Recorder, RecorderTask};
use crate::limits::cache::LimitsCache;
use crate::scheduler::Scheduler;
use crate::store::{self, Keys, RedisPool};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// The HTTP API only.
    Api,
    /// Delivery workers and the scheduler (plus /healthz, /readyz).
    Worker,
    /// Both in one process.
    All,
}

impl Role {
    fn serves_api(self) -> bool {
        matches!(self, Role::Api | Role::All)
    }
    fn runs_workers(self) -> bool {
        matches!(self, Role::Worker | Role::All)
    }
}

/// Which routes a listener serves.
#[derive(Clone, Copy)]
enum Surface {
    /// `server.listen`: the tenant routes, and the operator's unless they have a listener
    /// of their own.
    Tenant { with_operator: bool },
    /// `server.operator_listen`.
    Operator,
}

/// A started Herald: its address, and the means to stop it.
pub struct Running {
    pub addr: SocketAddr,
    /// The operator listener (`server.operator_listen`), when configured.
    pub operator_addr: Option<SocketAddr>,
    pub state: Arc<AppState>,
    servers: Vec<actix_web::dev::ServerHandle>,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The delivery history writer (workers only); ended last, so what the deliveries
    /// recorded is written first.
    history_writer: Option<RecorderTask>,
    grace: Duration,
}

/// Connects to Redis, checks the partition count, loads scripts and creates consumer
/// groups. Retries while Redis is unreachable, up to `wait`.
pub async fn prepare_redis(
    settings: &Settings,
    wait: Duration,
) -> anyhow::Result<(RedisPool, Keys)> {
    let redis = RedisPool::open(&settings.redis).context("invalid redis.url")?;
    let keys = Keys::new(&settings.redis.key_prefix, settings.redis.partitions);
    let started = std::time::Instant::now();
    loop {
        let mut conn = redis.get();
        let attempt = async {
            store::check_partitions(&mut conn, &keys, settings.redis.initialize).await?;
            store::migrate::ensure(&mut conn, &keys).await?;
            store::prepare(&mut conn, &keys).await
        }
        .await;
        match attempt {
            Ok(()) => {
                store::warn_unless_noeviction(&mut conn).await;
                return Ok((redis, keys));
            }
            Err(e) if e.is_unavailable() && started.elapsed() < wait => {
                tracing::warn!(error = %e, "waiting for redis");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e).context("preparing redis"),
        }
    }
}

pub async fn start(settings: Settings, role: Role) -> anyhow::Result<Running> {
    let (redis, keys) = prepare_redis(&settings, Duration::from_secs(60)).await?;
    crate::telemetry::metrics::handle();
    let state = Arc::new(AppState {
        auth: TokenCache::new(Duration::from_millis(settings.server.auth_cache_ms)),
        auth_throttle: AuthThrottle::new(settings.server.auth_failures_per_minute),
        limits: LimitsCache::new(Duration::from_millis(settings.limits.cache_ms)),
        settings: settings.clone(),
        redis: redis.clone(),
        keys: keys.clone(),
    });
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    let mut history_writer = None;
    if role.runs_workers() {
        let (history, writer) =
            Recorder::start(redis.clone(), keys.clone(), settings.history.clone());
        history_writer = Some(writer);
        let policy = IpPolicy::new(settings.allow_cidrs().map_err(anyhow::Error::msg)?);
        let sender = Sender::new(
            policy,
            Duration::from_secs(settings.delivery.connect_timeout_secs),
            Duration::from_secs(settings.delivery.request_timeout_secs),
        )
        .context("building the HTTP client")?;
        let deliverer = Deliverer::new(
            redis.clone(),
            keys.clone(),
            settings.clone(),
            sender,
            history,
        );
        tasks.push(tokio::spawn(deliverer.run(shutdown.clone())));
        let scheduler = Scheduler::new(redis.clone(), keys.clone(), settings.clone());
        tasks.push(tokio::spawn(scheduler.run(shutdown.clone())));
    }

    let listener = TcpListener::bind(settings.server.listen)
        .with_context(|| format!("binding {}", settings.server.listen))?;
    let addr = listener.local_addr()?;
    let operator_listener = match settings.server.operator_listen.as_str() {
        "" => None,
        at => Some(TcpListener::bind(at).with_context(|| format!("binding {at}"))?),
    };
    let operator_addr = operator_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;
    let data = web::Data::new(state.clone());
    let serves_api = role.serves_api();
    let operator_here = operator_listener.is_none();
    let durability = crate::store::durability::Confirm::new(
        crate::store::durability::Policy::from_settings(&settings.redis),
        redis.lanes(),
    );
    let app = move |surface: Surface| {
        let durability = durability.clone();
        let app = App::new()
            .app_data(data.clone())
            .wrap(actix_web::middleware::from_fn(
                move |req, next: actix_web::middleware::Next<_>| {
                    crate::store::durability::scoped(durability.clone(), next.call(req))
                },
            ))
            .wrap(actix_web::middleware::from_fn(api::observe::observe));
        match surface {
            Surface::Tenant { with_operator } if serves_api => {
                let app = app.configure(api::configure);
                if with_operator {
                    app.configure(api::configure_operator)
                } else {
                    app
                }
            }
            Surface::Operator if serves_api => app.configure(api::configure_operator),
            _ => app.configure(api::configure_health_only),
        }
    };
    let timeout = Duration::from_millis(settings.server.read_timeout_ms);
    let workers = match settings.server.http_workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let per_worker = settings.server.max_connections.div_ceil(workers).max(1);
    let main_app = app.clone();
    let server = HttpServer::new(move || {
        main_app(Surface::Tenant {
            with_operator: operator_here,
        })
    })
    .listen(listener)?
    .workers(workers)
    .max_connections(per_worker)
    .client_request_timeout(timeout)
    .disable_signals()
    .shutdown_timeout(settings.server.shutdown_grace_secs)
    .run();
    let mut handles = vec![server.handle()];
    tasks.push(tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "http server failed");
        }
    }));
    if let Some(listener) = operator_listener {
        let operator = HttpServer::new(move || app(Surface::Operator))
            .listen(listener)?
            .workers(1)
            .disable_signals()
            .shutdown_timeout(settings.server.shutdown_grace_secs)
            .run();
        handles.push(operator.handle());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = operator.await {
                tracing::error!(error = %e, "operator http server failed");
            }
        }));
    }
    tracing::info!(%addr, ?operator_addr, role = ?role, "herald started");
    Ok(Running {
        addr,
        operator_addr,
        state,
        servers: handles,
        shutdown,
        tasks,
        history_writer,
        grace: Duration::from_secs(settings.server.shutdown_grace_secs),
    })
}

impl Running {
    /// Graceful stop: stop accepting, drain HTTP, stop reading deliveries and let the
    /// in-flight ones finish, all within the grace time. What is not finished stays
    /// pending in Redis and is taken over by another worker.
    pub async fn stop(self) {
        tracing::info!("shutting down");
        self.shutdown.cancel();
        let servers = futures_util::future::join_all(self.servers.iter().map(|s| s.stop(true)));
        let all = async {
            servers.await;
            for t in self.tasks {
                let _ = t.await;
            }
            if let Some(writer) = self.history_writer {
                writer.finish().await;
            }
        };
        if tokio::time::timeout(self.grace, all).await.is_err() {
            tracing::warn!("shutdown grace time over; unfinished deliveries stay pending");
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
