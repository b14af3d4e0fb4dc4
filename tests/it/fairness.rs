//! Fairness: a tenant whose endpoint hangs holds at most `delivery.tenant_concurrency`
//! of a worker's attempts, so another tenant's deliveries keep arriving.

use std::time::Duration;

use serde_json::json;

use crate::support::{eventually, test_settings, Receiver, RedisServer, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_whose_endpoint_hangs_does_not_stall_another() {
    let redis = RedisServer::start();
    let mut settings = test_settings(&redis.url());
    settings.delivery.concurrency = 4;
    settings.delivery.tenant_concurrency = 2;
    settings.delivery.request_timeout_secs = 10;
    let app = TestApp::start(settings).await;
    let other = app.tenant_token("other").await;
    let receiver = Receiver::start().await;
    // Tenant acme's endpoint answers only after 4 s; without the per-tenant bound its
    // deliveries would fill all 4 slots of the worker for that long.
    let hang = Duration::from_secs(4);
    receiver.script_slow("/slow", &[200], hang);

    for i in 0..4 {
        let event = format!("slow-{i}");
        assert_eq!(
            app.wait(&event, json!({"url": receiver.url(&format!("/slow/{i}"))}))
                .await
                .0,
            200
        );
        assert_eq!(app.notify(&event, "a").await.0, 201);
    }
    assert!(
        eventually(Duration::from_secs(5), || receiver.all().len() >= 2).await,
        "acme's first deliveries started"
    );
    for i in 0..10 {
        let event = format!("fast-{i}");
        let url = receiver.url(&format!("/fast/{i}"));
        let (status, _) = app
            .post(
                &format!("/v2/wait/{event}"),
                &other,
                json!({ "url": url }).to_string(),
            )
            .await;
        assert_eq!(status, 200);
        let (status, _) = app.post(&format!("/v2/notify/{event}"), &other, "b").await;
        assert_eq!(status, 201);
    }
    let fast = |r: &Receiver| {
        r.all()
            .iter()
            .filter(|r| r.path.starts_with("/fast/"))
            .count()
    };
    let slow = |r: &Receiver| {
        r.all()
            .iter()
            .filter(|r| r.path.starts_with("/slow/"))
            .count()
    };
    assert!(
        eventually(Duration::from_secs(3), || fast(&receiver) == 10).await,
        "the other tenant's 10 deliveries arrive while acme's hang (got {})",
        fast(&receiver)
    );
    assert_eq!(
        receiver.answered("/slow"),
        0,
        "all of that happened while acme's first attempts still hung"
    );
    assert_eq!(slow(&receiver), 2, "acme holds at most 2 attempts at once");
    // acme's deferred deliveries are not lost: all 4 arrive, each once.
    assert!(
        eventually(Duration::from_secs(30), || receiver.answered("/slow") == 4).await,
        "acme's deliveries all completed (answered {})",
        receiver.answered("/slow")
    );
    let mut paths: Vec<String> = receiver
        .all()
        .iter()
        .filter(|r| r.path.starts_with("/slow/"))
        .map(|r| r.path.clone())
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        (0..4).map(|i| format!("/slow/{i}")).collect::<Vec<_>>()
    );
    for r in receiver
        .all()
        .iter()
        .filter(|r| r.path.starts_with("/slow/"))
    {
        assert_eq!(
            r.header("upstash-retried"),
            Some("0"),
            "a deferral is not an attempt"
        );
    }
    app.stop().await;
}
