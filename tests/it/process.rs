//! The `herald` binary as a process: graceful stop on SIGTERM, `herald dev`'s clear error
//! when redis-server is missing, and `herald tenant create`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{eventually_async, RedisServer};

const HERALD: &str = env!("CARGO_BIN_EXE_herald");

fn wait_for_exit(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_stops_gracefully_on_sigterm() {
    let redis = RedisServer::start();
    let port = crate::support::redis::free_port();
    let mut child = Command::new(HERALD)
        .args(["serve", "--role", "all"])
        .env("HERALD_REDIS__URL", redis.url())
        .env("HERALD_REDIS__INITIALIZE", "true")
        .env("HERALD_REDIS__KEY_PREFIX", "proc")
        .env("HERALD_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("HERALD_SERVER__SHUTDOWN_GRACE_SECS", "5")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http = crate::support::http_client();
    let url = format!("http://127.0.0.1:{port}/readyz");
    let ready = eventually_async(Duration::from_secs(20), || async {
        matches!(http.get(&url).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    assert!(ready, "herald serve became ready");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit =
        wait_for_exit(&mut child, Duration::from_secs(10)).expect("exits within the grace time");
    assert!(exit.success(), "{exit:?}");
    assert!(http.get(&url).send().await.is_err(), "no longer listening");
}

#[test]
fn dev_names_the_package_when_redis_server_is_missing() {
    let empty = tempfile::tempdir().unwrap();
    let output = Command::new(HERALD)
        .args(["dev", "--listen", "127.0.0.1:0"])
        .env("PATH", empty.path())
        .env_remove("REDIS_URL")
        .env_remove("HERALD_REDIS__URL")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("redis-server was not found"), "{stderr}");
    assert!(stderr.contains("apt-get install redis-server"), "{stderr}");
}

#[test]
fn tenant_create_prints_a_working_token() {
    let redis = RedisServer::start();
    let output = Command::new(HERALD)
        .args(["tenant", "--redis", "create", "hooli"])
        .env("HERALD_REDIS__URL", redis.url())
        .env("HERALD_REDIS__INITIALIZE", "true")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("tenant:              hooli"), "{stdout}");
    assert!(stdout.contains("token:               eyJ"), "{stdout}");
    assert!(stdout.contains("current signing key: sig_"), "{stdout}");
    // The same name again is refused.
    let again = Command::new(HERALD)
        .args(["tenant", "--redis", "create", "hooli"])
        .env("HERALD_REDIS__URL", redis.url())
        .env("HERALD_REDIS__INITIALIZE", "true")
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}
