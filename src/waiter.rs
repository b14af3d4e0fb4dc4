//! The stored shapes: a waiter (JSON in its event hash) and a delivery job (JSON in a
//! stream entry, the body beside it as raw bytes), and the Upstash views built from them.

use serde::{Deserialize, Serialize};

use crate::domain::HeaderMap;

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

/// A registered waiter, as stored. `deadline` (unix seconds) and `createdAt` (unix ms)
/// are appended by the `wait` script from Redis TIME, so they are never serialized from a
/// fresh registration.
///
/// What the waiter's keys already say is not stored again (an idle waiter's memory is
/// mostly this JSON): in its event hash the waiter has no `id` (its hash field ends with
/// it; [`Waiter::from_stored`] puts it back) and no event id, and `timeoutUrl` is `""`
/// when it is `url`. The delivery job carries the id again (`enqueue_delivery` in
/// `lua/shared/delivery.lua`). Waiters stored with all of them still read the same.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Waiter {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "HeaderMap::is_empty")]
    pub headers: HeaderMap,
    /// `""` when it is `url`: read it with [`Waiter::timeout_url`]. Always written (the
    /// scripts find it in front of `step`, which holds client JSON).
    #[serde(default)]
    pub timeout_url: String,
    /// Base64 of the body sent to `timeoutUrl` (Upstash `timeoutBody`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_body: Option<String>,
    #[serde(default, skip_serializing_if = "HeaderMap::is_empty")]
    pub timeout_headers: HeaderMap,
    /// The Upstash workflow step (present for workflow waiters: delivered in step format).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The timeout as requested (e.g. "10m"), echoed in workflow step deliveries.
    #[serde(default)]
    pub timeout: String,
    /// Per-waiter override of the retry count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// W3C `traceparent` of the registration, for the timeout delivery's trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deadline: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub created_at: i64,
}

/// The Upstash `Waiter` object (GET /v2/waiters, NotifyResponse.waiter).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WaiterView<'a> {
    pub url: &'a str,
    pub headers: &'a HeaderMap,
    pub deadline: i64,
    pub timeout_url: &'a str,
    pub timeout_body: Option<&'a str>,
    pub timeout_headers: &'a HeaderMap,
}

impl Waiter {
    /// A waiter from its event hash: `field` is its hash field, `<runId>|<waiterId>`.
    pub fn from_stored(field: &str, json: &str) -> serde_json::Result<Self> {
        let mut waiter: Waiter = serde_json::from_str(json)?;
        if waiter.id.is_empty() {
            waiter.id = field.rsplit('|').next().unwrap_or(field).to_owned();
        }
        Ok(waiter)
    }

    /// The waiter as it is stored: without what its keys say (see [`Waiter`]).
    pub fn for_storage(mut self) -> Self {
        self.id.clear();
        if self.timeout_url == self.url {
            self.timeout_url.clear();
        }
        self
    }

    /// Where the timeout goes.
    pub fn timeout_url(&self) -> &str {
        if self.timeout_url.is_empty() {
            &self.url
        } else {
            &self.timeout_url
        }
    }

    /// Where a delivery of this kind goes, and with which headers.
    pub fn target(&self, kind: JobKind) -> (&str, &HeaderMap) {
        match kind {
            JobKind::Event => (&self.url, &self.headers),
            JobKind::Timeout => (self.timeout_url(), &self.timeout_headers),
            JobKind::Workflow => (&self.url, &self.headers),
        }
    }

    pub fn view(&self) -> WaiterView<'_> {
        WaiterView {
            url: &self.url,
            headers: &self.headers,
            deadline: self.deadline,
            timeout_url: self.timeout_url(),
            timeout_body: self.timeout_body.as_deref(),
            timeout_headers: &self.timeout_headers,
        }
    }
}

/// The Upstash `NotifyResponse` element.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NotifyResponse<'a> {
    pub waiter: WaiterView<'a>,
    pub message_id: &'a str,
    pub deduplicated: bool,
    pub error: &'a str,
    pub workflow_run_id: &'a str,
    pub workflow_created_at: i64,
    /// Past `server.max_read_bytes` of waiter records in one reply, a waiter is shown by
    /// its id only (`waiter` is then empty; docs/api.md).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub waiter_omitted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// The event, to `url`.
    Event,
    /// The timeout, to `timeoutUrl`.
    Timeout,
    /// A workflow message (`r` says which): its target is the job's `w.url` and
    /// `w.headers`, as the message's header grammar resolved them.
    Workflow,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Event => "event",
            JobKind::Timeout => "timeout",
            JobKind::Workflow => "workflow",
        }
    }
}

/// What a workflow delivery job does ([`Job::r`]); see `src/workflow/mod.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowKind {
    /// The run's history prefix `0..=i` to the workflow URL (`RawStep[]`).
    Step,
    /// A third-party request of `context.call`; its final answer becomes one callback.
    Call,
    /// The one callback of a call, to the workflow URL.
    Callback,
    /// The failure callback of a failed run.
    Failure,
    /// A message without a run: its body as published, to its destination.
    Plain,
    /// Not sent over HTTP: the result of a child run (`context.invoke`), appended to the
    /// parent run `run` as step `step` (the body is the step's `out`).
    InvokeResult,
}

/// The workflow part of a delivery job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkflowJob {
    pub kind: WorkflowKind,
    /// The run the job belongs to (the parent run for [`WorkflowKind::InvokeResult`]);
    /// empty for a plain message.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub run: String,
    /// Step: the index of the last history entry delivered, set by `lua/workflow/submit.lua`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub i: Option<u64>,
    /// The HTTP method (call, plain); POST when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Per-attempt timeout in ms (`Upstash-Timeout` of a call).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Call: where its callback goes, with which headers and retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<Hop>,
    /// Call: the step it answers (for the callback); invoke result: the parent's step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<serde_json::Value>,
}

/// A follow-up message's target: a URL, the headers delivered there, its retries.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Hop {
    pub url: String,
    #[serde(default, skip_serializing_if = "HeaderMap::is_empty")]
    pub headers: HeaderMap,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
}

/// A delivery job (stream entry field `j`). Short field names: one is stored per delivery.
/// The scripts write the first version of it; retries rewrite it with `a` increased.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// Message id: the same on every attempt (`Upstash-Message-Id`).
    pub m: String,
    pub k: JobKind,
    /// Tenant.
    pub t: String,
    /// Event id.
    pub e: String,
    /// When the outcome happened (notify time, or the deadline for timeouts), unix ms.
    pub n: i64,
    /// When the job was first enqueued, unix ms.
    pub q: i64,
    /// Attempts made so far.
    pub a: u32,
    /// Times the delivery was put back because its tenant was at its concurrency bound
    /// (not attempts: they change neither `a` nor `Upstash-Retried`).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub d: u32,
    /// W3C `traceparent` of the request that caused the delivery (empty for none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub p: String,
    /// Content type of the notify body.
    #[serde(default)]
    pub c: Option<String>,
    /// The waiter (event and timeout jobs), or the target of a workflow message.
    #[serde(default)]
    pub w: Waiter,
    /// Workflow messages only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r: Option<WorkflowJob>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(url: &str, timeout_url: &str) -> Waiter {
        serde_json::from_value(serde_json::json!({
            "id": "w1", "url": url, "timeoutUrl": timeout_url, "timeout": "1h",
        }))
        .unwrap()
    }

    #[test]
    fn a_stored_waiter_leaves_out_what_its_keys_say() {
        let json =
            serde_json::to_string(&waiter("https://a/x", "https://a/x").for_storage()).unwrap();
        assert!(
            !json.contains("\"id\"") && !json.contains("eventId"),
            "{json}"
        );
        assert!(
            json.starts_with(r#"{"url":"https://a/x","timeoutUrl":"","#),
            "{json}"
        );
        let back = Waiter::from_stored("wfr_1|w1", &json).unwrap();
        assert_eq!(back.id, "w1");
        assert_eq!(back.timeout_url(), "https://a/x");
        assert_eq!(back.target(JobKind::Timeout).0, "https://a/x");

        let other = waiter("https://a/x", "https://a/late").for_storage();
        assert_eq!(other.timeout_url(), "https://a/late");
    }

    #[test]
    fn a_waiter_stored_in_full_reads_the_same() {
        let full = r#"{"id":"w9","url":"https://a/x","timeoutUrl":"https://a/t","eventId":"e","timeout":"1h","deadline":5,"createdAt":7}"#;
        let w = Waiter::from_stored("|other", full).unwrap();
        assert_eq!(w.id, "w9");
        assert_eq!(w.timeout_url(), "https://a/t");
        assert_eq!((w.deadline, w.created_at), (5, 7));
    }
}
