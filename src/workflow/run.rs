//! The stored shapes of a workflow run: its record (a HASH), its history entries
//! (`RawStep` JSON in a LIST), and the bodies built from them: the `RawStep[]` a step
//! delivery carries, a call's callback, a run's failure callback, an invoke result.
//! Each has one definition here; the scripts only store and move them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::message::{b64, Invoker};
use crate::domain::HeaderMap;
use crate::waiter::Hop;

/// One history entry, as stored and as delivered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RawStep {
    pub message_id: String,
    /// Base64 of the initial payload (entry 0) or of the step JSON as published.
    pub body: String,
    pub call_type: String,
}

impl RawStep {
    pub fn step(message_id: &str, body: &[u8]) -> Self {
        RawStep {
            message_id: message_id.to_owned(),
            body: b64(body),
            call_type: "step".to_owned(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a RawStep serializes")
    }
}

/// The state of a run (field `state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    Success,
    Failed,
    Canceled,
}

impl RunState {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => RunState::Running,
            "success" => RunState::Success,
            "failed" => RunState::Failed,
            "canceled" => RunState::Canceled,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Success => "success",
            RunState::Failed => "failed",
            RunState::Canceled => "canceled",
        }
    }
}

/// A run's record: the HASH fields below (plus `d:<key>` dedupe fields, which only
/// `lua/workflow/submit.lua` reads). Written once by the run's first message, except
/// `state`, `ended` and `result`, which `lua/workflow/finish.lua` sets once.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub url: String,
    pub state: RunState,
    /// ms, Redis TIME of the first message.
    pub created: i64,
    pub label: Option<String>,
    /// Run-level user headers (JSON), replayed on every delivery to the run's URL.
    pub headers: HeaderMap,
    pub retries: Option<u32>,
    pub failure: Option<Hop>,
    pub invoker: Option<Invoker>,
    pub invoke_count: u32,
    pub result: Option<String>,
}

/// The fields [`RunRecord::read`] reads, in order.
pub const FIELDS: [&str; 10] = [
    "url", "state", "created", "label", "hdr", "retries", "failure", "inv", "ic", "result",
];

impl RunRecord {
    /// The fields a new run is created with (`state` and `created` are the script's).
    pub fn new_fields(
        url: &str,
        label: Option<&str>,
        headers: &HeaderMap,
        retries: Option<u32>,
        failure: Option<&Hop>,
        invoker: Option<&Invoker>,
        invoke_count: u32,
    ) -> serde_json::Map<String, Value> {
        let mut f = serde_json::Map::new();
        f.insert("url".into(), url.into());
        if let Some(l) = label {
            f.insert("label".into(), l.into());
        }
        if !headers.is_empty() {
            f.insert("hdr".into(), serde_json::to_string(headers).unwrap().into());
        }
        if let Some(r) = retries {
            f.insert("retries".into(), r.to_string().into());
        }
        if let Some(h) = failure {
            f.insert("failure".into(), serde_json::to_string(h).unwrap().into());
        }
        if let Some(i) = invoker {
            f.insert("inv".into(), serde_json::to_string(i).unwrap().into());
        }
        if invoke_count > 0 {
            f.insert("ic".into(), invoke_count.to_string().into());
        }
        f
    }

    /// A record from the values of [`FIELDS`] (None when the run does not exist).
    pub fn read(values: &[Option<String>]) -> Option<Self> {
        let get = |i: usize| values.get(i).cloned().flatten();
        let state = RunState::parse(&get(1)?)?;
        Some(RunRecord {
            url: get(0).unwrap_or_default(),
            state,
            created: get(2).and_then(|c| c.parse().ok()).unwrap_or(0),
            label: get(3),
            headers: get(4)
                .and_then(|h| serde_json::from_str(&h).ok())
                .unwrap_or_default(),
            retries: get(5).and_then(|r| r.parse().ok()),
            failure: get(6).and_then(|f| serde_json::from_str(&f).ok()),
            invoker: get(7).and_then(|i| serde_json::from_str(&i).ok()),
            invoke_count: get(8).and_then(|c| c.parse().ok()).unwrap_or(0),
            result: get(9),
        })
    }
}

/// The `RawStep[]` body of a step delivery: the stored entries, as stored (compact JSON).
pub fn steps_body(entries: &[String]) -> Vec<u8> {
    let mut body = Vec::with_capacity(entries.iter().map(|e| e.len() + 1).sum::<usize>() + 2);
    body.push(b'[');
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(e.as_bytes());
    }
    body.push(b']');
    body
}

/// The initial payload of a run (entry 0's body, base64), from its first entry's JSON.
pub fn source_body(first_entry: Option<&str>) -> String {
    first_entry
        .and_then(|e| serde_json::from_str::<RawStep>(e).ok())
        .map(|e| e.body)
        .unwrap_or_default()
}

/// Header names as Go prints them (`get-header` -> `Get-Header`): users index a call's
/// response headers that way.
pub fn canonical_header(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut c = part.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + &c.as_str().to_ascii_lowercase(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// A third-party call's final answer.
pub struct CallAnswer<'a> {
    pub status: u16,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
    pub retried: u32,
    pub max_retries: u32,
    pub source_message_id: &'a str,
    pub url: &'a str,
    pub method: &'a str,
}

/// The one callback of a third-party call: its final answer.
pub fn callback_body(a: &CallAnswer<'_>) -> Vec<u8> {
    let CallAnswer {
        status,
        headers,
        body,
        retried,
        max_retries,
        source_message_id,
        url,
        method,
    } = *a;
    let mut header = serde_json::Map::new();
    for (name, value) in headers {
        let entry = header
            .entry(canonical_header(name))
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(values) = entry {
            values.push(value.clone().into());
        }
    }
    serde_json::json!({
        "status": status,
        "header": header,
        "body": b64(body),
        "retried": retried,
        "maxRetries": max_retries,
        "sourceMessageId": source_message_id,
        "url": url,
        "method": method,
    })
    .to_string()
    .into_bytes()
}

/// Why a run failed: its last delivery's answer.
pub struct Failure<'a> {
    pub status: u16,
    pub response: &'a [u8],
    pub retried: u32,
    pub max_retries: u32,
}

/// The failure callback of a run whose delivery failed for good.
pub fn failure_body(f: &Failure<'_>, record: &RunRecord, run: &str, source_body: &str) -> Vec<u8> {
    let Failure {
        status,
        response,
        retried,
        max_retries,
    } = *f;
    let (run_url, created) = (&record.url, record.created);
    serde_json::json!({
        "status": status,
        "header": {"Content-Type": ["application/json"]},
        "body": b64(response),
        "url": run_url,
        "sourceBody": source_body,
        "workflowRunId": run,
        "workflowCreatedAt": created,
        "retried": retried,
        "maxRetries": max_retries,
    })
    .to_string()
    .into_bytes()
}

/// The `out` of an invoke step in the parent: the child's end.
pub fn invoke_out(state: RunState, result: Option<&str>) -> String {
    let mut out = serde_json::json!({
        "isFailed": state == RunState::Failed,
        "isCanceled": state == RunState::Canceled,
    });
    if state == RunState::Success {
        if let Some(r) = result {
            out["body"] = r.into();
        }
    }
    out.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_what_a_new_run_writes() {
        let mut headers = HeaderMap::default();
        headers.insert("x-k", "v");
        let hop = Hop {
            url: "http://f".into(),
            headers: HeaderMap::default(),
            retries: Some(1),
        };
        let fields = RunRecord::new_fields(
            "http://a",
            Some("L"),
            &headers,
            Some(2),
            Some(&hop),
            None,
            1,
        );
        let mut values: Vec<Option<String>> = FIELDS
            .iter()
            .map(|f| fields.get(*f).and_then(Value::as_str).map(str::to_owned))
            .collect();
        values[1] = Some("running".into());
        values[2] = Some("17".into());
        let r = RunRecord::read(&values).unwrap();
        assert_eq!(
            (r.url.as_str(), r.state, r.created),
            ("http://a", RunState::Running, 17)
        );
        assert_eq!(r.headers.get("x-k"), Some("v"));
        assert_eq!(
            (r.retries, r.invoke_count, r.label.as_deref()),
            (Some(2), 1, Some("L"))
        );
        assert_eq!(r.failure.unwrap().retries, Some(1));
        assert!(RunRecord::read(&[None, None]).is_none());
    }

    #[test]
    fn entries_round_trip_and_join_into_a_compact_array() {
        let e = RawStep::step("m1", b"{\"n\":1}");
        let json = e.to_json();
        assert_eq!(serde_json::from_str::<RawStep>(&json).unwrap(), e);
        let body = steps_body(&[json.clone(), json]);
        let parsed: Vec<RawStep> = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(source_body(Some(&e.to_json())), "eyJuIjoxfQ==");
    }

    #[test]
    fn header_names_are_go_canonical() {
        assert_eq!(canonical_header("get-header"), "Get-Header");
        assert_eq!(canonical_header("CONTENT-TYPE"), "Content-Type");
    }

    #[test]
    fn invoke_results_always_carry_both_flags() {
        let ok: Value =
            serde_json::from_str(&invoke_out(RunState::Success, Some("\"r\""))).unwrap();
        assert_eq!(
            ok,
            serde_json::json!({"isFailed": false, "isCanceled": false, "body": "\"r\""})
        );
        let failed: Value = serde_json::from_str(&invoke_out(RunState::Failed, None)).unwrap();
        assert_eq!(
            failed,
            serde_json::json!({"isFailed": true, "isCanceled": false})
        );
    }
}
