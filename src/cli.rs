//! The `herald` command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::app::{self, Role};
use crate::config::Settings;
use crate::domain::TenantName;
use crate::limits::{self, Limits, Overrides};
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
    /// Change the number of partitions (offline: stop every api and worker first; see
    /// docs/operating.md). Moves all data, then records the new number.
    Repartition {
        /// The new number of partitions.
        #[arg(long)]
        to: u16,
    },
    /// Upgrade a store written by an older Herald (idempotent; Herald also runs it at
    /// start). Run it once more after a rolling upgrade: see docs/operating.md "Upgrades".
    Migrate,
    /// Manage tenants: through Herald's /admin API (HERALD_URL, HERALD_ADMIN_TOKEN), or
    /// with --redis directly in the configured Redis (bootstrap, no admin token needed).
    Tenant {
        /// Write the configured Redis directly instead of calling /admin.
        #[arg(long)]
        redis: bool,
        #[command(flatten)]
        target: crate::remote::AdminTarget,
        #[command(subcommand)]
        command: TenantCommand,
    },
    #[command(flatten)]
    Remote(crate::remote::Command),
}

#[derive(Subcommand)]
pub enum TenantCommand {
    /// Create a tenant; prints its token and signing keys (shown once).
    Create { name: String },
    /// List tenants.
    List,
    /// Issue a new token for a tenant and revoke the old one.
    RotateToken { name: String },
    /// Revoke a tenant's token (through /admin only).
    RevokeToken { name: String },
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
    // Commands that talk to a running Herald need no configuration and write no logs.
    let cli = match cli.command {
        Command::Remote(command) => return Ok(crate::remote::run(command).await?),
        Command::Tenant {
            redis: false,
            target,
            command,
        } => {
            use crate::remote::TenantAction;
            let action = match &command {
                TenantCommand::Create { name } => TenantAction::Create(name),
                TenantCommand::List => TenantAction::List,
                TenantCommand::RotateToken { name } => TenantAction::RotateToken(name),
                TenantCommand::RevokeToken { name } => TenantAction::RevokeToken(name),
                TenantCommand::Limits { name, set, unset } => {
                    TenantAction::Limits { name, set, unset }
                }
                TenantCommand::Usage { name } => TenantAction::Usage(name),
            };
            return Ok(crate::remote::tenant(action, &target).await?);
        }
        command => Cli { command, ..cli },
    };
    let settings = Settings::load(cli.config.as_deref())?;
    let telemetry = crate::telemetry::init(&settings.log, &settings.telemetry);
    let result = run_local(cli.command, settings).await;
    // Flushes the spans of the last requests and deliveries.
    telemetry.shutdown();
    result
}

/// The commands that run Herald or write its Redis.
async fn run_local(command: Command, mut settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Remote(_) => unreachable!("handled by run"),
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
        Command::Repartition { to } => {
            let redis =
                crate::store::RedisPool::open(&settings.redis).context("invalid redis settings")?;
            // A worker reads its streams every `delivery.block_ms`: 30 s of silence means none runs.
            let moved = crate::store::repartition::repartition(
                &mut redis.get(),
                &settings.redis.key_prefix,
                to,
                std::time::Duration::from_secs(30),
            )
            .await?;
            println!("repartitioned to {to} partitions; moved: {moved:?}");
            println!("now set redis.partitions = {to} and start Herald");
            Ok(())
        }
        Command::Migrate => {
            let redis =
                crate::store::RedisPool::open(&settings.redis).context("invalid redis settings")?;
            let keys =
                crate::store::Keys::new(&settings.redis.key_prefix, settings.redis.partitions);
            let mut conn = redis.get();
            crate::store::check_partitions(&mut conn, &keys, settings.redis.initialize).await?;
            let done = crate::store::migrate::migrate(&mut conn, &keys).await?;
            println!(
                "store at schema {}: {} saved lists renamed, {} left to expire (ambiguous: {}, unresolved: {}), {} run waiters indexed, {} bytes of waiters recounted",
                crate::store::migrate::SCHEMA,
                done.saved_renamed,
                done.saved_ambiguous + done.saved_unresolved,
                done.saved_ambiguous,
                done.saved_unresolved,
                done.run_waiters_indexed,
                done.waiter_bytes_recounted
            );
            Ok(())
        }
        Command::Tenant { command, .. } => {
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
                TenantCommand::RevokeToken { .. } => anyhow::bail!(
                    "revoke-token works through /admin only: drop --redis and set HERALD_ADMIN_TOKEN"
                ),
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
                    crate::remote::print_limits(&limits::limits_view(
                        &name, defaults, &overrides, &caps,
                    ));
                }
                TenantCommand::Usage { name } => {
                    let name = TenantName::parse(&name).map_err(|e| anyhow::anyhow!(e.0))?;
                    let usage = stored_limits::usage(&mut conn, &keys, &name).await?;
                    let overrides = stored_limits::overrides(&mut conn, &keys, &name).await?;
                    let limits = settings
                        .limits
                        .defaults
                        .with_overrides(&overrides, &settings.limit_caps());
                    crate::remote::print_usage(&limits::usage_view(&name, &usage, &limits));
                }
            }
            Ok(())
        }
    }
}
