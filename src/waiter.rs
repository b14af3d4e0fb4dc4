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
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Waiter {
    pub id: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "HeaderMap::is_empty")]
    pub headers: HeaderMap,
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
    pub event_id: String,
    /// The timeout as requested (e.g. "10m"), echoed in workflow step deliveries.
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
    pub fn view(&self) -> WaiterView<'_> {
        WaiterView {
            url: &self.url,
            headers: &self.headers,
            deadline: self.deadline,
            timeout_url: &self.timeout_url,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// The event, to `url`.
    Event,
    /// The timeout, to `timeoutUrl`.
    Timeout,
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
    pub w: Waiter,
}
