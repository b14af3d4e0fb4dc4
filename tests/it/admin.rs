//! The operator surface: /admin/tenants, health and readiness, signing keys.

use serde_json::json;

use crate::support::{test_settings, RedisServer, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_managed_with_the_admin_token() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    let admin = "test-admin-token";
    let (status, _) = app
        .post(
            "/admin/tenants",
            &app.token,
            json!({"name": "x"}).to_string(),
        )
        .await;
    assert_eq!(status, 401, "a tenant token is not the admin token");
    let (status, body) = app
        .post(
            "/admin/tenants",
            admin,
            json!({"name": "Bad Name"}).to_string(),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    let (status, created) = app
        .post(
            "/admin/tenants",
            admin,
            json!({"name": "initech"}).to_string(),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let token = created["token"].as_str().unwrap().to_owned();
    // The shape of QStash tokens, which the workflow SDK decodes for `createWebhook`:
    // base64 JSON naming the tenant as UserID; [A-Za-z0-9] only.
    assert!(token.bytes().all(|b| b.is_ascii_alphanumeric()), "{token}");
    let decoded: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &token).unwrap(),
    )
    .unwrap();
    assert_eq!(decoded["UserID"], "initech", "{decoded}");
    assert!(decoded["Password"].as_str().unwrap().starts_with("hld_"));
    assert!(created["currentSigningKey"]
        .as_str()
        .unwrap()
        .starts_with("sig_"));
    let (status, _) = app
        .post(
            "/admin/tenants",
            admin,
            json!({"name": "initech"}).to_string(),
        )
        .await;
    assert_eq!(status, 409);
    let (_, list) = app.get("/admin/tenants", admin).await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"initech") && names.contains(&"acme"),
        "{names:?}"
    );

    // The token works, is stored only as a hash, and stops working when rotated.
    assert_eq!(app.get("/v2/waiters/x", &token).await.0, 200);
    let stored: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query(&mut redis.client())
        .unwrap();
    let mut conn = redis.client();
    for key in stored {
        let dump: Vec<u8> = redis::cmd("DUMP").arg(&key).query(&mut conn).unwrap();
        assert!(
            !String::from_utf8_lossy(&dump).contains(&token),
            "plaintext token in {key}"
        );
    }
    let (status, rotated) = app.post("/admin/tenants/initech/token", admin, "").await;
    assert_eq!(status, 200);
    let new_token = rotated["token"].as_str().unwrap();
    assert_eq!(app.get("/v2/waiters/x", &token).await.0, 401);
    assert_eq!(app.get("/v2/waiters/x", new_token).await.0, 200);
    let (status, _) = app
        .send(
            app.http
                .delete(app.url("/admin/tenants/initech/token"))
                .bearer_auth(admin),
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(app.get("/v2/waiters/x", new_token).await.0, 401);
    let (status, _) = app.post("/admin/tenants/nobody/token", admin, "").await;
    assert_eq!(status, 404);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_keys_rotate() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    let (status, keys) = app.get("/v2/keys", &app.token).await;
    assert_eq!(status, 200);
    let (status, rotated) = app.post("/v2/keys/rotate", &app.token, "").await;
    assert_eq!(status, 200);
    assert_eq!(rotated["current"], keys["next"]);
    assert_ne!(rotated["next"], keys["next"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    let (status, body) = app.get("/healthz", "").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, _) = app.get("/readyz", "").await;
    assert_eq!(status, 200);
    // A Redis that lost its scripts (e.g. restarted) gets them again from the readiness
    // check itself: ready at once.
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut redis.client())
        .unwrap();
    assert_eq!(app.get("/readyz", "").await.0, 200);
    let loaded: Vec<bool> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(herald::store::scripts::WAIT.get_hash())
        .query(&mut redis.client())
        .unwrap();
    assert_eq!(loaded, vec![true]);
    app.stop().await;
}
