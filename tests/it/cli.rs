//! The `herald` command over HTTP (the real binary): notify, wait, waiters, history, dlq,
//! keys and tenant; human output, `--json`, and exit codes (0 done, 1 refused, 2 usage,
//! 3 unreachable).

use std::time::Duration;

use serde_json::Value;

use crate::support::{eventually_async, test_settings, Receiver, RedisServer, TestApp};

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `herald args…` with only the given HERALD_*/QSTASH_* variables set.
async fn herald(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    command.args(args).kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k.starts_with("HERALD_") || k == "QSTASH_TOKEN" {
            command.env_remove(k);
        }
    }
    for (k, v) in env {
        command.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("herald finishes")
        .expect("herald runs");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test]
async fn tenant_commands_over_http() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    let receiver = Receiver::start().await;
    let env = [
        ("HERALD_URL", app.base.as_str()),
        ("HERALD_TOKEN", app.token.as_str()),
    ];

    let out = herald(
        &[
            "wait",
            "cli-event",
            "--to",
            &receiver.url("/resume"),
            "--timeout",
            "1h",
            "--run",
            "wfr_cli",
        ],
        &env,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.starts_with("waiting for cli-event: waiter "),
        "{}",
        out.stdout
    );

    let out = herald(&["waiters", "cli-event"], &env).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains(&receiver.url("/resume")),
        "{}",
        out.stdout
    );
    let out = herald(&["waiters", "cli-event", "--json"], &env).await;
    let waiters: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(waiters.as_array().unwrap().len(), 1);

    let out = herald(&["notify", "cli-event", "--data", r#"{"paid":true}"#], &env).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.starts_with("notified 1 waiter(s) of cli-event:"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("(run wfr_cli)"), "{}", out.stdout);
    let got = receiver.expect("/resume", 1).await;
    assert_eq!(got[0].body_text(), r#"{"paid":true}"#);
    assert_eq!(got[0].header("content-type"), Some("application/json"));

    // Nobody waits; a lookback notify is saved.
    let out = herald(&["notify", "cli-nobody"], &env).await;
    assert_eq!(out.code, 0);
    assert!(
        out.stdout.contains("nobody is waiting for cli-nobody"),
        "{}",
        out.stdout
    );
    let out = herald(
        &["notify", "cli-later", "--run", "wfr_2", "--data", "x"],
        &env,
    )
    .await;
    assert!(
        out.stdout.starts_with("saved for run wfr_2's next wait"),
        "{}",
        out.stdout
    );

    // History: human and JSON.
    let delivered = eventually_async(Duration::from_secs(10), || async {
        herald(&["history", "cli-event"], &env)
            .await
            .stdout
            .contains("delivered")
    })
    .await;
    assert!(delivered);
    let out = herald(&["history", "cli-event"], &env).await;
    assert!(
        out.stdout
            .starts_with("history of cli-event, newest first:"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("status 200"), "{}", out.stdout);
    assert!(out.stdout.contains("run wfr_cli"), "{}", out.stdout);
    let out = herald(&["history", "cli-event", "--json", "--count", "1"], &env).await;
    let history: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(history["entries"][0]["outcome"], "delivered");
    assert_eq!(history["entries"].as_array().unwrap().len(), 1);
    let out = herald(&["history", "never-seen"], &env).await;
    assert!(
        out.stdout.starts_with("no history for never-seen"),
        "{}",
        out.stdout
    );

    // Keys, and the QSTASH_TOKEN fallback.
    let out = herald(
        &["keys", "--json"],
        &[
            ("HERALD_URL", app.base.as_str()),
            ("QSTASH_TOKEN", app.token.as_str()),
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let keys: Value = serde_json::from_str(&out.stdout).unwrap();
    let out = herald(&["keys", "rotate"], &env).await;
    assert!(
        out.stdout.contains(&format!(
            "current signing key: {}",
            keys["next"].as_str().unwrap()
        )),
        "{}",
        out.stdout
    );
    app.stop().await;
}

#[tokio::test]
async fn errors_have_clear_messages_and_exit_codes() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;

    // Refused by Herald: 1, with Herald's message.
    let out = herald(
        &["notify", "e"],
        &[
            ("HERALD_URL", app.base.as_str()),
            ("HERALD_TOKEN", "hld_wrong"),
        ],
    )
    .await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("HTTP 401"), "{}", out.stderr);
    let env = [
        ("HERALD_URL", app.base.as_str()),
        ("HERALD_TOKEN", app.token.as_str()),
    ];
    let out = herald(&["history", "bad{id"], &env).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("HTTP 400") && out.stderr.contains("event id"),
        "{}",
        out.stderr
    );
    let out = herald(&["wait", "e", "--to", "ftp://x"], &env).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("http or https"), "{}", out.stderr);

    // Usage: 2 (no token; unknown command).
    let out = herald(&["waiters", "e"], &[("HERALD_URL", app.base.as_str())]).await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("HERALD_TOKEN"), "{}", out.stderr);
    assert_eq!(herald(&["frobnicate"], &env).await.code, 2);

    // Unreachable: 3.
    let port = crate::support::redis::free_port();
    let nowhere = format!("http://127.0.0.1:{port}");
    let out = herald(
        &["waiters", "e"],
        &[("HERALD_URL", nowhere.as_str()), ("HERALD_TOKEN", "hld_x")],
    )
    .await;
    assert_eq!(out.code, 3);
    assert!(out.stderr.contains("cannot reach Herald"), "{}", out.stderr);
    app.stop().await;
}

#[tokio::test]
async fn tenant_admin_over_http_and_directly_in_redis() {
    let redis = RedisServer::start();
    let settings = test_settings(&redis.url());
    let prefix = settings.redis.key_prefix.clone();
    let app = TestApp::start(settings).await;
    let admin = [
        ("HERALD_URL", app.base.as_str()),
        ("HERALD_ADMIN_TOKEN", "test-admin-token"),
    ];
    let out = herald(&["tenant", "create", "initech"], &admin).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let token = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("token:"))
        .unwrap()
        .trim()
        .to_owned();
    let (status, _) = app.get("/v2/keys", &token).await;
    assert_eq!(status, 200, "the printed token works");
    let out = herald(&["tenant", "list", "--json"], &admin).await;
    let list: Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"] == "initech"));
    let out = herald(&["tenant", "create", "initech"], &admin).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("HTTP 409"), "{}", out.stderr);
    let out = herald(&["tenant", "revoke-token", "initech"], &admin).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(app.get("/v2/keys", &token).await.0, 401);
    let out = herald(&["tenant", "list"], &[("HERALD_URL", app.base.as_str())]).await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("HERALD_ADMIN_TOKEN"), "{}", out.stderr);

    // --redis writes the configured Redis directly (no admin token needed).
    let url = redis.url();
    let direct = [
        ("HERALD_REDIS__URL", url.as_str()),
        ("HERALD_REDIS__KEY_PREFIX", prefix.as_str()),
    ];
    let out = herald(&["tenant", "--redis", "create", "hooli"], &direct).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let token = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("token:"))
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(app.get("/v2/keys", &token).await.0, 200);
    app.stop().await;
}

#[tokio::test]
async fn dlq_commands_call_the_dead_letter_api() {
    // The receiver stands in for Herald and records what the commands send.
    let receiver = Receiver::start().await;
    let base = receiver.url("");
    let env = [("HERALD_URL", base.as_str()), ("HERALD_TOKEN", "hld_t")];
    for args in [
        &["dlq", "list", "--event", "order-1", "--count", "5"][..],
        &["dlq", "retry", "1700000000000-0"][..],
        &["dlq", "delete", "1700000000000-0"][..],
    ] {
        let out = herald(args, &env).await;
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
    }
    let got = receiver.all();
    let seen: Vec<(String, String, String)> = got
        .iter()
        .map(|r| (r.method.clone(), r.path.clone(), r.query.clone()))
        .collect();
    assert_eq!(
        seen,
        [
            (
                "GET".into(),
                "/v2/dlq".into(),
                "eventId=order-1&count=5".into()
            ),
            (
                "POST".into(),
                "/v2/dlq/retry/1700000000000-0".into(),
                String::new()
            ),
            (
                "DELETE".into(),
                "/v2/dlq/1700000000000-0".into(),
                String::new()
            ),
        ]
    );
    for r in &got {
        assert_eq!(r.header("authorization"), Some("Bearer hld_t"));
    }
}
