//! The messages of `POST /v2/batch` and `POST /v2/publish/{destination}`, parsed into
//! what they ask for (shared/reference: "Classifying messages"): a plain message, the
//! first message of a run, a step of a run, or a third-party call of a run.
//!
//! The header grammar (`Upstash-Forward-*`, `Upstash-Retries`, `Upstash-Delay`, the
//! `Upstash-Callback-*` and `Upstash-Failure-Callback-*` sets) is read here and nowhere
//! else; what a message asks for is decided before anything is stored.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::Value;

use crate::domain::{parse_duration, HeaderMap, InvalidInput, RunId};
use crate::waiter::Hop;

/// Forwarded headers that are never run-level user headers: they belong to the hop the
/// SDK received (JS direct triggers and every Python message forward all they got).
const NOT_USER_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "accept-encoding",
    "authorization",
    "upgrade",
    "te",
    "trailer",
    "upstash-signature",
    "upstash-message-id",
    "upstash-retried",
    "upstash-workflow-sdk-version",
];

/// Most messages in one `/v2/batch`.
pub const MAX_BATCH: usize = 1000;

/// One message, as received: its destination, its headers (names lower-cased), its body.
#[derive(Debug, Clone)]
pub struct Message {
    pub destination: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The retries of a message without `Upstash-Retries` (the SDK leaves out the value 3).
pub const DEFAULT_RETRIES: u32 = 3;

impl Message {
    /// One element of a `/v2/batch` body: `{destination, headers, body?, queue?}`.
    pub fn from_batch_element(index: usize, v: &Value) -> Result<Self, InvalidInput> {
        let bad = |what: &str| InvalidInput(format!("batch element {index}: {what}"));
        let o = v.as_object().ok_or_else(|| bad("must be an object"))?;
        let destination = o
            .get("destination")
            .and_then(Value::as_str)
            .filter(|d| !d.is_empty())
            .ok_or_else(|| bad("destination (a URL) is required"))?;
        let mut headers = Vec::new();
        match o.get("headers") {
            None => {}
            Some(Value::Object(h)) => {
                for (name, value) in h {
                    let Value::String(value) = value else {
                        return Err(bad(&format!("header {name} must be a string")));
                    };
                    let value = value.clone();
                    headers.push((name.to_ascii_lowercase(), value));
                }
            }
            Some(_) => return Err(bad("headers must be an object")),
        }
        if !matches!(
            o.get("queue"),
            None | Some(Value::Null) | Some(Value::String(_))
        ) {
            return Err(bad("queue must be a string or null"));
        }
        let body = match o.get("body") {
            None => Vec::new(),
            Some(Value::String(s)) => s.clone().into_bytes(),
            Some(_) => return Err(bad("body must be a string")),
        };
        let message = Message {
            destination: destination.to_owned(),
            headers,
            body,
        };
        message.check().map_err(|e| bad(&e.0))?;
        Ok(message)
    }

    /// A `/v2/publish/{destination}` request: the destination is the raw path tail and
    /// query; of the request's headers only `upstash-*` and `content-type` are the
    /// message's (the SDKs prefix every other header with `Upstash-Forward-`).
    pub fn from_publish(
        destination: String,
        headers: impl Iterator<Item = (String, String)>,
        body: Vec<u8>,
    ) -> Result<Self, InvalidInput> {
        let headers = headers
            .map(|(n, v)| (n.to_ascii_lowercase(), v))
            .filter(|(n, _)| n.starts_with("upstash-") || n == "content-type")
            .collect();
        let message = Message {
            destination,
            headers,
            body,
        };
        message.check()?;
        Ok(message)
    }

    fn check(&self) -> Result<(), InvalidInput> {
        let url = reqwest::Url::parse(&self.destination).map_err(|e| {
            InvalidInput(format!(
                "destination {:?} is not a URL: {e}",
                self.destination
            ))
        })?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(InvalidInput(format!(
                "destination {:?} must be an http(s) URL",
                self.destination
            )));
        }
        for (name, value) in &self.headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                || reqwest::header::HeaderValue::from_str(value).is_err()
            {
                return Err(InvalidInput(format!("header {name:?} is not valid")));
            }
        }
        Ok(())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    fn flag(&self, name: &str) -> bool {
        self.header(name)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    /// `<prefix>forward-X: v` as `X: v`.
    fn forwards(&self, prefix: &str) -> HeaderMap {
        let full = format!("{prefix}forward-");
        let mut map = HeaderMap::default();
        for (name, value) in &self.headers {
            if let Some(x) = name.strip_prefix(&full) {
                if !x.is_empty() {
                    map.insert(x, value);
                }
            }
        }
        map
    }

    fn retries(&self, name: &str) -> Result<Option<u32>, InvalidInput> {
        self.header(name)
            .map(|v| {
                v.trim()
                    .parse::<u32>()
                    .map(|r| r.min(100))
                    .map_err(|_| InvalidInput(format!("{name} must be a whole number, got {v:?}")))
            })
            .transpose()
    }

    /// `Upstash-Delay` (a duration) or `Upstash-Not-Before` (unix seconds), in ms from now.
    fn delay_ms(&self, now_ms: i64) -> Result<u64, InvalidInput> {
        if let Some(d) = self.header("upstash-delay") {
            return parse_duration(d)
                .map_err(|_| InvalidInput(format!("Upstash-Delay {d:?} is not a duration")));
        }
        if let Some(nb) = self.header("upstash-not-before") {
            let secs: i64 = nb.trim().parse().map_err(|_| {
                InvalidInput(format!("Upstash-Not-Before {nb:?} must be unix seconds"))
            })?;
            return Ok((secs.saturating_mul(1000) - now_ms).max(0) as u64);
        }
        Ok(0)
    }

    fn method(&self) -> Result<String, InvalidInput> {
        let m = self.header("upstash-method").unwrap_or("POST");
        reqwest::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map(|m| m.to_string())
            .map_err(|_| InvalidInput(format!("Upstash-Method {m:?} is not a method")))
    }

    /// `Upstash-Timeout`: bare seconds or a duration.
    fn timeout_ms(&self) -> Result<Option<u64>, InvalidInput> {
        self.header("upstash-timeout")
            .map(|t| {
                parse_duration(t)
                    .map_err(|_| InvalidInput(format!("Upstash-Timeout {t:?} is not a duration")))
            })
            .transpose()
    }

    fn run_id(&self) -> Result<Option<RunId>, InvalidInput> {
        self.header("upstash-workflow-runid")
            .map(|r| RunId::parse(r.split(',').next().unwrap_or(r).trim()))
            .transpose()
    }

    /// The headers delivered to a third party or a plain destination: the forwards and
    /// the message's content type.
    fn delivered_headers(&self) -> HeaderMap {
        let mut h = self.forwards("upstash-");
        if let Some(ct) = self.header("content-type") {
            h.insert("content-type", ct);
        }
        h
    }

    /// The failure-callback set (`Upstash-Failure-Callback` and its `-*` grammar).
    fn failure(&self, run: &RunId) -> Result<Option<Hop>, InvalidInput> {
        let Some(url) = self.header("upstash-failure-callback") else {
            return Ok(None);
        };
        let mut headers = self.forwards("upstash-failure-callback-");
        headers.insert("Upstash-Workflow-RunId", run.as_str());
        Ok(Some(Hop {
            url: url.to_owned(),
            headers,
            retries: Some(
                self.retries("upstash-failure-callback-retries")?
                    .unwrap_or(DEFAULT_RETRIES),
            ),
        }))
    }
}

/// What a message asks for.
#[derive(Debug)]
pub enum Request {
    /// No run: deliver the body to the destination (how a plain publish starts a run).
    Plain(Plain),
    /// `Upstash-Workflow-Init: true`: create the run.
    Init(Box<Init>),
    /// A step entry of a run.
    Step(Step),
    /// `Upstash-Workflow-CallType: toCallback`: a third-party call of a run.
    Call(Box<Call>),
}

#[derive(Debug)]
pub struct Plain {
    pub url: String,
    pub method: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub retries: u32,
    pub delay_ms: u64,
    pub timeout_ms: Option<u64>,
}

#[derive(Debug)]
pub struct Init {
    pub run: RunId,
    pub url: String,
    pub label: Option<String>,
    /// Run-level user headers: replayed on every delivery of the run to its URL.
    pub headers: HeaderMap,
    pub retries: Option<u32>,
    pub failure: Option<Hop>,
    /// `context.invoke`: the parent's envelope minus the body.
    pub invoker: Option<Invoker>,
    pub invoke_count: u32,
    pub initial_body: Vec<u8>,
    pub delay_ms: u64,
}

/// The parent of an invoked run: where the child's result goes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Invoker {
    pub workflow_run_id: String,
    #[serde(default)]
    pub workflow_url: String,
    /// The parent's invoke step: `{stepId, stepName, stepType, concurrent}`.
    pub step: Value,
}

#[derive(Debug)]
pub struct Step {
    pub run: RunId,
    /// The step JSON as published (delivered base64 in the entry's `body`).
    pub body: Vec<u8>,
    /// `s:<stepId>` or, for a plan (stepId 0), `p:<targetStep>`: a second submission of
    /// the same key changes nothing (the SDKs are at-least-once).
    pub dedupe: String,
    pub delay_ms: u64,
    pub retries: Option<u32>,
}

#[derive(Debug)]
pub struct Call {
    pub run: RunId,
    pub url: String,
    pub method: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub retries: u32,
    pub timeout_ms: Option<u64>,
    pub delay_ms: u64,
    pub callback: Hop,
    /// `{stepId, stepName, stepType, concurrent}` of the call step.
    pub step: Value,
    pub dedupe: String,
}

impl Request {
    /// Whether accepting it stores run state (a new run or history entry), and about how
    /// many bytes: what the `stored_bytes` quota is checked for. Plain messages and calls
    /// store only a delivery job.
    pub fn stores(&self) -> Option<u64> {
        match self {
            Request::Init(init) => Some(init.initial_body.len() as u64),
            Request::Step(step) => Some(step.body.len() as u64),
            Request::Plain(_) | Request::Call(_) => None,
        }
    }

    /// Classifies and validates a message (`now_ms` for `Upstash-Not-Before`).
    pub fn parse(m: Message, now_ms: i64) -> Result<Self, InvalidInput> {
        let delay_ms = m.delay_ms(now_ms)?;
        let Some(run) = m.run_id()? else {
            return Ok(Request::Plain(Plain {
                method: m.method()?,
                headers: m.delivered_headers(),
                retries: m.retries("upstash-retries")?.unwrap_or(DEFAULT_RETRIES),
                timeout_ms: m.timeout_ms()?,
                delay_ms,
                url: m.destination,
                body: m.body,
            }));
        };
        if m.flag("upstash-workflow-init") {
            return Ok(Request::Init(Box::new(init(m, run, delay_ms)?)));
        }
        if m.header("upstash-workflow-calltype")
            .is_some_and(|c| c.eq_ignore_ascii_case("toCallback"))
        {
            return Ok(Request::Call(Box::new(call(m, run, delay_ms)?)));
        }
        let step: Value = serde_json::from_slice(&m.body)
            .map_err(|e| InvalidInput(format!("a workflow step body must be JSON: {e}")))?;
        let step_id = step.get("stepId").and_then(Value::as_i64).ok_or_else(|| {
            InvalidInput("a workflow step body needs a numeric stepId".to_owned())
        })?;
        let dedupe = if step_id == 0 {
            let target = step
                .get("targetStep")
                .and_then(Value::as_i64)
                .ok_or_else(|| InvalidInput("a plan step (stepId 0) needs targetStep".into()))?;
            format!("p:{target}")
        } else {
            format!("s:{step_id}")
        };
        Ok(Request::Step(Step {
            run,
            retries: m.retries("upstash-retries")?,
            body: m.body,
            dedupe,
            delay_ms,
        }))
    }
}

fn init(m: Message, run: RunId, delay_ms: u64) -> Result<Init, InvalidInput> {
    let url = m
        .header("upstash-workflow-url")
        .unwrap_or(&m.destination)
        .to_owned();
    let mut headers = HeaderMap::default();
    for (name, values) in m.forwards("upstash-").iter() {
        let lower = name.to_ascii_lowercase();
        if lower.starts_with("upstash-workflow-") || NOT_USER_HEADERS.contains(&lower.as_str()) {
            continue;
        }
        for v in values {
            headers.insert(name, v);
        }
    }
    let invoke_count = m
        .header("upstash-forward-upstash-workflow-invoke-count")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let (invoker, initial_body) = if m.flag("upstash-workflow-invoke") {
        let envelope: Value = serde_json::from_slice(&m.body)
            .map_err(|e| InvalidInput(format!("an invoke body must be JSON: {e}")))?;
        let invoker: Invoker = serde_json::from_value(envelope.clone())
            .map_err(|e| InvalidInput(format!("an invoke body lacks the invoker: {e}")))?;
        let body = match envelope.get("body") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => s.clone().into_bytes(),
            Some(other) => other.to_string().into_bytes(),
        };
        (Some(invoker), body)
    } else {
        (None, m.body.clone())
    };
    Ok(Init {
        label: m.header("upstash-label").map(str::to_owned),
        retries: m.retries("upstash-retries")?,
        failure: m.failure(&run)?,
        run,
        url,
        headers,
        invoker,
        invoke_count,
        initial_body,
        delay_ms,
    })
}

fn call(m: Message, run: RunId, delay_ms: u64) -> Result<Call, InvalidInput> {
    let callback_url = m
        .header("upstash-callback")
        .ok_or_else(|| InvalidInput("a workflow call needs Upstash-Callback".into()))?
        .to_owned();
    let mut callback_headers = m.forwards("upstash-callback-");
    callback_headers.insert("Upstash-Workflow-RunId", run.as_str());
    let field = |name: &str| {
        callback_headers
            .get(&format!("upstash-workflow-{name}"))
            .map(str::to_owned)
    };
    let step_id: i64 = field("stepid")
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| {
            InvalidInput(
                "a workflow call needs Upstash-Callback-Forward-Upstash-Workflow-StepId".into(),
            )
        })?;
    let step = serde_json::json!({
        "stepId": step_id,
        "stepName": field("stepname").unwrap_or_default(),
        "stepType": field("steptype").unwrap_or_else(|| "Call".into()),
        "concurrent": field("concurrent").and_then(|c| c.parse::<i64>().ok()).unwrap_or(1),
    });
    Ok(Call {
        method: m.method()?,
        headers: m.delivered_headers(),
        retries: m.retries("upstash-retries")?.unwrap_or(DEFAULT_RETRIES),
        timeout_ms: m.timeout_ms()?,
        callback: Hop {
            url: callback_url,
            headers: callback_headers,
            retries: m.retries("upstash-callback-retries")?,
        },
        dedupe: format!("c:{step_id}"),
        step,
        delay_ms,
        run,
        url: m.destination,
        body: m.body,
    })
}

/// Standard padded base64, as both SDKs decode it.
pub fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn batch(headers: Value, body: Option<&str>) -> Message {
        let mut el = json!({"destination": "http://app/api/wf", "headers": headers});
        if let Some(b) = body {
            el["body"] = json!(b);
        }
        Message::from_batch_element(0, &el).unwrap()
    }

    #[test]
    fn a_trigger_creates_a_run_with_its_headers_and_failure_set() {
        let m = batch(
            json!({
                "upstash-workflow-init": "true",
                "upstash-workflow-runid": "wfr_a",
                "upstash-workflow-url": "http://app/api/wf",
                "upstash-forward-x-user": "u",
                "upstash-forward-upstash-workflow-sdk-version": "1",
                "upstash-forward-host": "app",
                "upstash-label": "lbl",
                "upstash-retries": "2",
                "upstash-failure-callback": "http://app/api/wf",
                "upstash-failure-callback-forward-upstash-workflow-is-failure": "true",
                "upstash-failure-callback-retries": "1",
            }),
            Some("{\"a\":1}"),
        );
        let Request::Init(init) = Request::parse(m, 0).unwrap() else {
            panic!("init expected")
        };
        assert_eq!(init.run.as_str(), "wfr_a");
        assert_eq!(init.headers.get("x-user"), Some("u"));
        assert_eq!(init.headers.iter().count(), 1, "{:?}", init.headers);
        assert_eq!(init.retries, Some(2));
        assert_eq!(init.label.as_deref(), Some("lbl"));
        let f = init.failure.unwrap();
        assert_eq!(f.retries, Some(1));
        assert_eq!(f.headers.get("upstash-workflow-is-failure"), Some("true"));
        assert_eq!(f.headers.get("upstash-workflow-runid"), Some("wfr_a"));
        assert_eq!(init.initial_body, b"{\"a\":1}");
    }

    #[test]
    fn steps_are_keyed_by_step_id_and_plans_by_target() {
        let h = json!({"upstash-workflow-runid": "wfr_a", "upstash-delay": "3s"});
        let Request::Step(s) =
            Request::parse(batch(h.clone(), Some(r#"{"stepId":2}"#)), 0).unwrap()
        else {
            panic!()
        };
        assert_eq!((s.dedupe.as_str(), s.delay_ms), ("s:2", 3000));
        let Request::Step(p) =
            Request::parse(batch(h.clone(), Some(r#"{"stepId":0,"targetStep":4}"#)), 0).unwrap()
        else {
            panic!()
        };
        assert_eq!(p.dedupe, "p:4");
        assert!(Request::parse(batch(h, Some("not json")), 0).is_err());
    }

    #[test]
    fn a_call_carries_its_callback() {
        let m = batch(
            json!({
                "upstash-workflow-runid": "wfr_a",
                "upstash-workflow-calltype": "toCallback",
                "upstash-method": "PATCH",
                "upstash-forward-x-h": "v",
                "upstash-retries": "0",
                "upstash-timeout": "10",
                "upstash-callback": "http://app/api/wf",
                "upstash-callback-forward-upstash-workflow-callback": "true",
                "upstash-callback-forward-upstash-workflow-stepid": "3",
                "upstash-callback-forward-upstash-workflow-stepname": "c",
            }),
            None,
        );
        let Request::Call(c) = Request::parse(m, 0).unwrap() else {
            panic!()
        };
        assert_eq!(
            (c.method.as_str(), c.retries, c.timeout_ms),
            ("PATCH", 0, Some(10_000))
        );
        assert_eq!(c.headers.get("x-h"), Some("v"));
        assert_eq!(c.dedupe, "c:3");
        assert_eq!(c.step["stepName"], "c");
        assert_eq!(
            c.callback.headers.get("upstash-workflow-callback"),
            Some("true")
        );
    }

    #[test]
    fn a_message_without_a_run_is_plain() {
        let m = batch(
            json!({"upstash-forward-x": "1", "content-type": "text/plain"}),
            Some("hi"),
        );
        let Request::Plain(p) = Request::parse(m, 0).unwrap() else {
            panic!()
        };
        assert_eq!((p.retries, p.method.as_str()), (3, "POST"));
        assert_eq!(p.headers.get("content-type"), Some("text/plain"));
        assert!(Message::from_batch_element(0, &json!({"destination": "ftp://x"})).is_err());
    }
}
