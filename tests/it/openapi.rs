//! `/openapi.json`: an OpenAPI 3.1 document that covers exactly the routes registered in
//! `src/api/mod.rs` (`configure`), whose references all resolve.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::{test_settings, RedisServer, TestApp};

/// (METHOD, path) of every `.route("path", web::method()…)` in `configure`.
fn registered_routes() -> BTreeSet<(String, String)> {
    let source =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/mod.rs")).unwrap();
    // The tenant and the operator surfaces (`configure`, `configure_operator`).
    let mut body = String::new();
    for f in ["pub fn configure(", "pub fn configure_operator("] {
        let start = source.find(f).expect("the function in src/api/mod.rs");
        let rest = &source[start..];
        body.push_str(&rest[..rest.find("\n}\n").expect("end of the function")]);
    }
    let body = body.as_str();
    let mut routes = BTreeSet::new();
    let mut rest = body;
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        let path = if rest.trim_start().starts_with("HOOK,") {
            herald::api::HOOK.to_owned()
        } else {
            let open = rest.find('"').unwrap();
            let close = open + 1 + rest[open + 1..].find('"').unwrap();
            // `{name:regex}` segments are documented as `{name}`.
            let path = &rest[open + 1..close];
            match path.find(':') {
                Some(colon) if path[colon..].ends_with(".*}") => format!("{}}}", &path[..colon]),
                _ => path.to_owned(),
            }
        };
        let method_at = rest.find("web::").unwrap() + "web::".len();
        let method: String = rest[method_at..]
            .chars()
            .take_while(|c| c.is_ascii_alphabetic())
            .collect();
        routes.insert((method.to_ascii_uppercase(), path));
    }
    routes
}

#[test]
fn the_document_covers_every_registered_route() {
    let registered = registered_routes();
    assert!(registered.len() >= 15, "parsed {registered:?}");
    let documented: BTreeSet<(String, String)> =
        herald::api::openapi::operations().into_iter().collect();
    let undocumented: Vec<_> = registered.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from the OpenAPI document: {undocumented:?}"
    );
    let unregistered: Vec<_> = documented.difference(&registered).collect();
    assert!(
        unregistered.is_empty(),
        "documented but not registered: {unregistered:?}"
    );
}

fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    out.push(v.as_str().unwrap().to_owned());
                } else {
                    refs(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_document_is_served_and_consistent() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    let (status, doc) = app.get("/openapi.json", "").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc, *herald::api::openapi::DOCUMENT);
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let name = r.strip_prefix("#/components/schemas/").expect(&r);
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "{r} does not resolve"
        );
    }
    // Every operation has an id, responses, and declares its path parameters.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(op["operationId"].is_string(), "{method} {path}");
            assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()));
            let declared: Vec<&str> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .map(|p| p["name"].as_str().unwrap())
                        .collect()
                })
                .unwrap_or_default();
            for segment in path.split('/').filter(|s| s.starts_with('{')) {
                let name = segment.trim_matches(|c| c == '{' || c == '}');
                assert!(declared.contains(&name), "{method} {path} lacks {name}");
            }
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn a_known_path_with_another_method_is_405_with_allow() {
    let redis = RedisServer::start();
    let app = TestApp::start(test_settings(&redis.url())).await;
    for (method, path, allow) in [
        ("TRACE", "/healthz", "GET"),
        ("GET", "/v2/notify/e", "POST"),
        ("PUT", "/admin/tenants/acme/token", "POST, DELETE"),
    ] {
        let response = app
            .http
            .request(method.parse().unwrap(), app.url(path))
            .bearer_auth(&app.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method} {path}");
        let mut allowed: Vec<String> = response.headers()["allow"]
            .to_str()
            .unwrap()
            .split(", ")
            .map(str::to_owned)
            .collect();
        allowed.sort();
        let mut expected: Vec<&str> = allow.split(", ").collect();
        expected.sort();
        assert_eq!(allowed, expected, "{method} {path}");
        let body = crate::support::json_body(response).await;
        assert!(body["error"].as_str().unwrap().contains(method), "{body}");
    }
    let (status, body) = app.get("/no/such/path", &app.token).await;
    assert_eq!(status, 404, "{body}");
    app.stop().await;
}
