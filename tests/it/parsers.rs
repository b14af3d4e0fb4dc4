//! The parsers under generated input (proptest, stable Rust): event and run ids,
//! durations, header maps, and the wait body through HTTP — arbitrary bytes and
//! structured mutations of valid input. Nothing panics; every refusal is a 400 with an
//! `{"error": …}` saying what is wrong; what is accepted is what the grammar says.

use herald::domain::{parse_duration, EventId, HeaderMap, RunId};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};

use crate::support::{test_settings, RedisServer, TestApp};

fn id_grammar(s: &str) -> bool {
    (1..=256).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
}

/// Strings near the id grammar: its alphabet, some others, lengths around 256.
fn near_id() -> impl Strategy<Value = String> {
    let alphabet = prop_oneof![
        8 => prop::sample::select(vec!['a', 'Z', '0', '.', '_', ':', '-']),
        1 => any::<char>(),
        1 => prop::sample::select(vec!['/', '|', '{', '}', '*', ' ', '\0', 'é', '%']),
    ];
    prop_oneof![
        prop::collection::vec(alphabet.clone(), 0..20),
        prop::collection::vec(alphabet, 250..260),
    ]
    .prop_map(|cs| cs.into_iter().collect())
}

proptest! {
    #![proptest_config(Config { cases: 2000, failure_persistence: None, ..Config::default() })]

    #[test]
    fn ids_are_exactly_the_grammar(s in prop_oneof![near_id(), any::<String>()]) {
        let event = EventId::parse(&s);
        let run = RunId::parse(&s);
        prop_assert_eq!(event.is_ok(), id_grammar(&s), "{:?}", s);
        prop_assert_eq!(run.is_ok(), id_grammar(&s));
        if let Err(e) = event {
            prop_assert!(e.0.starts_with("event id "), "{}", e.0);
        }
    }

    #[test]
    fn durations_parse_what_they_say(
        parts in prop::collection::vec((0u64..1000, 0usize..4), 1..4),
        junk in any::<String>(),
        at in any::<prop::sample::Index>(),
    ) {
        // Units largest first, once each: the sum of their values.
        let units = [("d", 86_400_000u64), ("h", 3_600_000), ("m", 60_000), ("s", 1000)];
        let mut chosen: Vec<(u64, usize)> = parts;
        chosen.sort_by_key(|(_, u)| *u);
        chosen.dedup_by_key(|(_, u)| *u);
        let text: String = chosen.iter().map(|(n, u)| format!("{n}{}", units[*u].0)).collect();
        let want: u64 = chosen.iter().map(|(n, u)| n * units[*u].1).sum();
        prop_assert_eq!(parse_duration(&text), Ok(want), "{}", text);
        // A mutation: junk inserted anywhere never panics; a refusal says what to use.
        let mut mutated = text.clone();
        let mut cut = at.index(mutated.len() + 1);
        while !mutated.is_char_boundary(cut) { cut -= 1; }
        mutated.insert_str(cut, &junk);
        if let Err(e) = parse_duration(&mutated) {
            prop_assert!(e.0.contains("invalid timeout"), "{}", e.0);
        }
        let _ = parse_duration(&junk);
    }

    #[test]
    fn header_maps_never_panic_and_keep_only_valid_headers(value in json_value()) {
        if let Ok(map) = HeaderMap::from_json("headers", &value) {
            for (name, values) in map.iter() {
                prop_assert!(reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok());
                for v in values {
                    prop_assert!(reqwest::header::HeaderValue::from_str(v).is_ok());
                }
            }
        }
        let wrapped = json!({"X-A": value});
        let _ = HeaderMap::from_json("headers", &wrapped);
    }
}

/// Arbitrary JSON, biased toward header-map shapes.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        prop_oneof![any::<String>(), "[A-Za-z-]{1,8}", "[ -~\r\n]{0,8}"].prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![any::<String>(), "[A-Za-z-]{1,8}"],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid wait body with some fields replaced by arbitrary JSON, or arbitrary bytes.
fn wait_body() -> impl Strategy<Value = Vec<u8>> {
    let fields = [
        "url",
        "timeout",
        "timeoutUrl",
        "timeoutBody",
        "timeoutHeaders",
        "headers",
        "step",
        "workflowRunId",
        "retries",
    ];
    prop_oneof![
        3 => (
            prop::collection::vec((prop::sample::select(fields.to_vec()), json_value()), 0..3),
            prop::option::of(prop::sample::select(fields.to_vec())),
        )
            .prop_map(|(replacements, removed)| {
                let mut body = json!({
                    "url": "http://127.0.0.1:9/x",
                    "timeout": "5m",
                    "headers": {"X-A": "1"},
                });
                for (field, value) in replacements {
                    body[field] = value;
                }
                if let Some(field) = removed {
                    body.as_object_mut().unwrap().remove(field);
                }
                body.to_string().into_bytes()
            }),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

#[test]
fn wait_bodies_are_accepted_or_refused_with_a_400() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let redis = RedisServer::start();
    let app = rt.block_on(TestApp::start(test_settings(&redis.url())));
    let mut runner = TestRunner::new(Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&(wait_body(), near_id()), |(body, event)| {
        let (status, reply) = rt.block_on(async {
            app.send(
                app.http
                    .post(app.url(&format!("/v2/wait/{}", urlencode(&event))))
                    .bearer_auth(&app.token)
                    .body(body.clone()),
            )
            .await
        });
        let shown = String::from_utf8_lossy(&body).into_owned();
        match status {
            200 => {
                prop_assert!(id_grammar(&event), "accepted event id {:?}", event);
                prop_assert_eq!(&reply["status"], "waiting", "{} for {}", reply, shown);
            }
            400 => {
                let error = reply["error"].as_str().unwrap_or("");
                prop_assert!(
                    !error.is_empty(),
                    "a 400 without an error: {} for {}",
                    reply,
                    shown
                );
            }
            // An empty id segment is another route (404), and so are `.` and `..`, which
            // the HTTP client normalises out of an unencoded path; a quota over
            // max_timeout: 422.
            404 if event.is_empty() || event == "." || event == ".." => {}
            422 => prop_assert!(reply["error"].is_string()),
            other => {
                return Err(TestCaseError::fail(format!(
                    "status {other} ({reply}) for event {event:?} body {shown}"
                )))
            }
        }
        Ok(())
    });
    rt.block_on(app.stop());
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Percent-encodes everything but unreserved characters (the path segment is decoded
/// by Herald).
fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}
