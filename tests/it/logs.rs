//! Logs: JSON lines with the tenant, event id, run id, message id and trace id of what
//! they describe; tokens, signing keys and the Redis password never appear.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::process::HeraldProcess;
use crate::support::{Receiver, RedisServer};

#[tokio::test]
async fn logs_carry_context_fields_and_never_secrets() {
    let password = "redis-pass-5f1c2a";
    let redis = RedisServer::start_with(&["--requirepass", password]);
    let receiver = Receiver::start().await;
    receiver.script("/flaky", &[500, 200], &[]);
    let admin = "admin-secret-9d8e7f";
    let mut herald = HeraldProcess::start(&[
        (
            "HERALD_REDIS__URL",
            redis
                .url()
                .replacen("redis://", &format!("redis://:{password}@"), 1),
        ),
        ("HERALD_SERVER__ADMIN_TOKEN", admin.to_owned()),
        ("HERALD_LOG__FILTER", "debug".to_owned()),
    ])
    .await;
    let http = crate::support::http_client();
    let base = herald.base.clone();
    let created: Value = crate::support::json_body(
        http.post(format!("{base}/admin/tenants"))
            .bearer_auth(admin)
            .body(json!({"name": "acme"}).to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    let token = created["token"].as_str().unwrap().to_owned();
    let mut secrets = vec![
        password.to_owned(),
        admin.to_owned(),
        token.clone(),
        created["currentSigningKey"].as_str().unwrap().to_owned(),
        created["nextSigningKey"].as_str().unwrap().to_owned(),
    ];

    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let status = http
        .post(format!("{base}/v2/wait/logged"))
        .bearer_auth(&token)
        .header("Upstash-Workflow-RunId", "wfr_logged")
        .body(json!({"url": receiver.url("/flaky")}).to_string())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    // The token in the query string, the other way to authenticate.
    let notified = http
        .post(format!("{base}/v2/notify/logged?qstash_token={token}"))
        .header("traceparent", traceparent)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(notified.status(), 201);
    let notified: Value = crate::support::json_body(notified).await;
    let message_id = notified[0]["messageId"].as_str().unwrap().to_owned();
    // A wrong token and key rotation: neither shows up in the logs.
    let wrong = format!("{token}-wrong");
    secrets.push(wrong.clone());
    assert_eq!(
        http.get(format!("{base}/v2/keys"))
            .bearer_auth(&wrong)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let rotated: Value = crate::support::json_body(
        http.post(format!("{base}/v2/keys/rotate"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    secrets.push(rotated["next"].as_str().unwrap().to_owned());
    let new_token: Value = crate::support::json_body(
        http.post(format!("{base}/admin/tenants/acme/token"))
            .bearer_auth(admin)
            .send()
            .await
            .unwrap(),
    )
    .await;
    secrets.push(new_token["token"].as_str().unwrap().to_owned());

    // A failing delivery's log lines leave out its URL's query string (it may hold a
    // receiver's secret).
    let query_secret = "query-secret-61b0c4".to_owned();
    secrets.push(query_secret.clone());
    let refused = format!(
        "http://127.0.0.1:{}/hook?key={query_secret}",
        crate::support::redis::free_port()
    );
    let token = new_token["token"].as_str().unwrap().to_owned();
    let status = http
        .post(format!("{base}/v2/wait/refused"))
        .bearer_auth(&token)
        .body(json!({ "url": refused }).to_string())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let status = http
        .post(format!("{base}/v2/notify/refused"))
        .bearer_auth(&token)
        .body("x")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 201);

    receiver.expect("/flaky", 2).await;
    let refused_logged = crate::support::eventually(Duration::from_secs(10), || {
        herald.logs().iter().any(|l| {
            l.contains("\"message\":\"delivery attempt failed\"") && l.contains("\"refused\"")
        })
    })
    .await;
    assert!(refused_logged, "{}", herald.logs().join("\n"));
    let delivered = crate::support::eventually(Duration::from_secs(10), || {
        herald
            .logs()
            .iter()
            .any(|l| l.contains("\"message\":\"delivered\""))
    })
    .await;
    assert!(delivered, "{}", herald.logs().join("\n"));
    herald.stop().await;
    let logs = herald.logs();
    assert!(!logs.is_empty());

    for line in &logs {
        for secret in &secrets {
            assert!(
                !line.contains(secret.as_str()),
                "a secret is in the logs: {line}"
            );
        }
        let parsed: Result<Value, _> = serde_json::from_str(line);
        assert!(parsed.is_ok(), "not a JSON log line: {line}");
    }

    // The failed attempt's line names what it is about, and the trace.
    let failed = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "delivery attempt failed" && v["span"]["event_id"] == "logged")
        .unwrap_or_else(|| panic!("no failed attempt logged: {}", logs.join("\n")));
    let span = &failed["span"];
    assert_eq!(span["tenant"], "acme", "{failed}");
    assert_eq!(span["event_id"], "logged", "{failed}");
    assert_eq!(span["run_id"], "wfr_logged", "{failed}");
    assert_eq!(span["message_id"], message_id.as_str(), "{failed}");
    assert_eq!(
        span["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
        "{failed}"
    );
    // Request lines carry the tenant and the route pattern, not the raw path.
    let request_line = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "broadcast")
        .unwrap_or_else(|| panic!("no broadcast line: {}", logs.join("\n")));
    assert_eq!(request_line["span"]["tenant"], "acme", "{request_line}");
    assert_eq!(
        request_line["span"]["http.route"], "/v2/notify/{eventId}",
        "{request_line}"
    );
    assert_eq!(
        request_line["span"]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
        "{request_line}"
    );
    assert_eq!(request_line["span"]["event_id"], "logged", "{request_line}");
    let registered = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "waiter registered")
        .unwrap_or_else(|| panic!("no registration line: {}", logs.join("\n")));
    assert_eq!(registered["span"]["run_id"], "wfr_logged", "{registered}");
    assert_eq!(registered["span"]["tenant"], "acme", "{registered}");
}
