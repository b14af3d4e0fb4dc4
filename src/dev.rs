//! `herald dev`: everything on one machine in one command. A private `redis-server` child
//! on a free loopback port (unless `REDIS_URL` is set), api + worker in one process,
//! loopback deliveries allowed, and a dev tenant whose token is printed with curl lines.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

use crate::app::{self, Role};
use crate::config::Settings;
use crate::domain::TenantName;
use crate::store::tenants;

/// A `redis-server` child process, killed when dropped.
pub struct RedisChild {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

fn find_in_path(binary: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(binary))
            .find(|p| p.is_file())
    })
}

pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl RedisChild {
    pub async fn start() -> anyhow::Result<Self> {
        let Some(binary) = find_in_path("redis-server") else {
            bail!(
                "redis-server was not found on PATH. Install it (Debian/Ubuntu: `sudo apt-get install redis-server`), \
                 or point Herald at a running Redis with REDIS_URL=redis://host:port"
            );
        };
        let dir = tempfile::tempdir().context("creating a directory for redis")?;
        let port = free_port()?;
        let child = Command::new(binary)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting redis-server")?;
        let url = format!("redis://127.0.0.1:{port}");
        let client = redis::Client::open(url.as_str())?;
        for _ in 0..200 {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                if redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
                {
                    return Ok(Self {
                        child,
                        url,
                        _dir: dir,
                    });
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!("redis-server did not answer on port {port} within 5 s")
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

pub async fn run(mut settings: Settings, explicit_redis: bool) -> anyhow::Result<()> {
    let redis_child = if explicit_redis {
        None
    } else {
        let child = RedisChild::start().await?;
        settings.redis.url = child.url.clone();
        Some(child)
    };
    for cidr in ["127.0.0.0/8", "::1/128"] {
        settings.delivery.allow_cidrs.push(cidr.to_owned());
    }
    // Local development: an empty Redis is expected, and every client is this machine
    // (tools that probe with bad tokens must not lock it out).
    settings.redis.initialize = true;
    settings.server.auth_failures_per_minute = 0;
    if settings.server.admin_token.is_empty() {
        settings.server.admin_token = tenants::new_token().replace("hld_", "adm_");
    }
    let running = app::start(settings.clone(), Role::All).await?;
    let name = TenantName::parse("dev").expect("valid tenant name");
    let tenant =
        tenants::create_or_reissue(&mut running.state.redis.get(), &running.state.keys, &name)
            .await?;
    let base = format!("http://{}", running.addr);
    println!(
        "\nHerald dev is running at {base}  (redis: {redis})\n\n\
         tenant:        dev\n\
         token:         {token}\n\
         signing keys:  current {cur}  next {next}\n\
         admin token:   {admin}\n\
         console:       {console}\n\n\
         Try it:\n\
         export HERALD_URL={base} HERALD_TOKEN={token}\n\
         curl -s -X POST \"$HERALD_URL/v2/wait/order-42\" -H \"Authorization: Bearer $HERALD_TOKEN\" \\\n  \
           -d '{{\"url\":\"http://127.0.0.1:9000/resume\",\"timeout\":\"10m\"}}'\n\
         curl -s \"$HERALD_URL/v2/waiters/order-42\" -H \"Authorization: Bearer $HERALD_TOKEN\"\n\
         curl -s -X POST \"$HERALD_URL/v2/notify/order-42\" -H \"Authorization: Bearer $HERALD_TOKEN\" -d '{{\"paid\":true}}'\n\
         target/release/herald history order-42    # what happened to the event (also: herald waiters, herald notify)\n\n\
         Upstash Workflow apps (serve(), Client): point the SDK here (README, \"Run your Upstash workflows on Herald\"):\n\
         export QSTASH_URL={base} QSTASH_TOKEN={token} QSTASH_CURRENT_SIGNING_KEY={cur} QSTASH_NEXT_SIGNING_KEY={next}\n\n\
         Press Ctrl-C to stop.\n",
        redis = settings.redis.url,
        token = tenant.token,
        cur = tenant.current_signing_key,
        next = tenant.next_signing_key,
        admin = settings.server.admin_token,
        console = if settings.server.console {
            format!("{base}/console  (sign in with the token or the admin token)")
        } else {
            "off (server.console = false)".to_owned()
        },
    );
    app::termination_signal().await;
    running.stop().await;
    if let Some(child) = redis_child {
        child.stop().await;
    }
    Ok(())
}
