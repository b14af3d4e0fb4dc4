//! The `herald` command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::app::{self, Role};
use crate::config::Settings;
use crate::domain::TenantName;
use crate::limits::{Limits, Overrides};
use crate::store::limits as stored_limits;
use crate::store::tenants;

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Wait-for-event / notify service on Redis (Upstash Workflow protocol)"
)]
pub struct Cli {
    /// A TOML configuration file layered over the defaults (env vars still win).
    #[arg(long, global = true, env = "HERALD_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run Herald: the API, the delivery workers, or both.
    Serve {
        #[arg(long, value_enum, default_value = "all")]
        role: Role,
    },
    /// One-command local mode: api + worker, a private redis-server unless REDIS_URL is
    /// set, loopback deliveries allowed, a dev tenant with a printed token.
    Dev {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Manage tenants directly in Redis.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
}

#[derive(Subcommand)]
pub enum TenantCommand {
    /// Create a tenant; prints its token and signing keys (shown once).
    Create { name: String },
    /// List tenants.
    List,
    /// Issue a new token for a tenant and revoke the old one.
    RotateToken { name: String },
    /// Show a tenant's limits (default or overridden), or change its overrides.
    Limits {
        name: String,
        /// Override a limit for this tenant (repeatable), e.g. --set notify_per_sec=50.
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        /// Remove an override: the limit goes back to the configured default (repeatable).
        #[arg(long = "unset", value_name = "NAME")]
        unset: Vec<String>,
    },
    /// Show what a tenant uses now: its active waiters and what is left of each rate.
    Usage { name: String },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut settings = Settings::load(cli.config.as_deref())?;
    crate::telemetry::init(&settings.log);
    match cli.command {
        Command::Serve { role } => {
            let running = app::start(settings, role).await?;
            app::termination_signal().await;
            running.stop().await;
            Ok(())
        }
        Command::Dev { listen } => {
            let explicit_redis = ["REDIS_URL", "HERALD_REDIS__URL"]
                .iter()
                .any(|v| std::env::var_os(v).is_some_and(|u| !u.is_empty()));
            settings.server.listen = listen;
            crate::dev::run(settings, explicit_redis).await
        }
        Command::Tenant { command } => {
            let (redis, keys) =
                app::prepare_redis(&settings, std::time::Duration::from_secs(5)).await?;
            let mut conn = redis.get();
            match command {
                TenantCommand::Create { name } => {
                    let name = TenantName::parse(&name).map_err(|e| anyhow::anyhow!(e.0))?;
                    let t = tenants::create(&mut conn, &keys, &name).await?;
                    println!(
                        "tenant:              {}\ntoken:               {}\ncurrent signing key: {}\nnext signing key:    {}",
                        t.name, t.token, t.current_signing_key, t.next_signing_key
                    );
                }
                TenantCommand::List => {
                    for t in tenants::list(&mut conn, &keys).await? {
                        println!("{}", t.name);
                    }
                }
                TenantCommand::RotateToken { name } => {
                    let name = TenantName::parse(&name).map_err(|e| anyhow::anyhow!(e.0))?;
                    let token = tenants::rotate_token(&mut conn, &keys, &name)
                        .await
                        .context("rotating the token")?;
                    println!("{token}");
                }
                TenantCommand::Limits { name, set, unset } => {
                    let name = TenantName::parse(&name).map_err(|e| anyhow::anyhow!(e.0))?;
                    let defaults = &settings.limits.defaults;
                    let caps = settings.limit_caps();
                    let set = Overrides::from_pairs(&set, defaults, &caps)
                        .map_err(|e| anyhow::anyhow!(e.0))?;
                    if let Some(bad) = unset.iter().find(|n| !Limits::NAMES.contains(&n.as_str())) {
                        anyhow::bail!(
                            "unknown limit {bad:?}; the limits are {}",
                            Limits::NAMES.join(", ")
                        );
                    }
                    if !set.0.is_empty() || !unset.is_empty() {
                        stored_limits::update_overrides(&mut conn, &keys, &name, &set, &unset)
                            .await
                            .context("changing the limits")?;
                    }
                    stored_limits::require_tenant(&mut conn, &keys, &name).await?;
                    let overrides = stored_limits::overrides(&mut conn, &keys, &name).await?;
                    let limits = defaults.with_overrides(&overrides, &caps);
                    for limit in Limits::NAMES {
                        let origin = if overrides.0.contains_key(limit) {
                            "override"
                        } else {
                            "default"
                        };
                        println!("{limit:<20} {:<12} {origin}", limits.text(limit));
                    }
                }
                TenantCommand::Usage { name } => {
                    let name = TenantName::parse(&name).map_err(|e| anyhow::anyhow!(e.0))?;
                    let usage = stored_limits::usage(&mut conn, &keys, &name).await?;
                    let overrides = stored_limits::overrides(&mut conn, &keys, &name).await?;
                    let limits = settings
                        .limits
                        .defaults
                        .with_overrides(&overrides, &settings.limit_caps());
                    println!(
                        "active_waiters       {} of {}",
                        usage.active_waiters, limits.active_waiters
                    );
                    for (class, tat) in usage.buckets {
                        match limits.rate(class) {
                            Some(rate) => {
                                let (remaining, _) = rate.state_at(tat, usage.now_us);
                                println!(
                                    "{:<20} {remaining} of {} left ({}/s)",
                                    format!("{class}_rate"),
                                    rate.burst,
                                    rate.per_sec
                                );
                            }
                            None => println!("{:<20} unlimited", format!("{class}_rate")),
                        }
                    }
                }
            }
            Ok(())
        }
    }
}
