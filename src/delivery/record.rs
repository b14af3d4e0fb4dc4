//! What each delivery attempt leaves behind for operators: metrics, the span's status,
//! the outbound `traceparent`, and the event's history entry. Kept apart from the
//! delivery loop so that loop only calls in here.

use std::time::Duration;

use super::http::{Attempt, Outbound};
use super::Deliverer;
use crate::domain::{EventId, TenantName};
use crate::history::{self, Entry, Outcome};
use crate::telemetry::{metrics, trace};
use crate::waiter::{Job, JobKind};

/// The outbound request continues the job's trace (see [`trace::outbound_traceparent`]).
pub fn trace_header(outbound: &mut Outbound, job: &Job) {
    if let Some(tp) = trace::outbound_traceparent(&tracing::Span::current(), job) {
        outbound.set_header("traceparent", &tp);
    }
}

fn kind(job: &Job) -> &'static str {
    job.k.as_str()
}

/// An attempt's outcome, taken before the attempt is consumed by the outcome handling.
pub struct Summary {
    delivered: bool,
    refused: bool,
    status: u16,
    error: Option<String>,
}

impl Summary {
    /// Counts the attempt and marks its span.
    pub fn of(job: &Job, attempt: &Attempt, elapsed: Duration) -> Self {
        let (label, summary) = match attempt {
            Attempt::Delivered { status } => (
                "delivered",
                Summary {
                    delivered: true,
                    refused: false,
                    status: *status,
                    error: None,
                },
            ),
            Attempt::Failed {
                status,
                excerpt,
                non_retryable,
                ..
            } => (
                "failed",
                Summary {
                    delivered: false,
                    refused: *non_retryable,
                    status: *status,
                    error: Some(format!("HTTP {status}: {}", excerpt_of(excerpt))),
                },
            ),
            Attempt::Unreachable { error } => (
                "unreachable",
                Summary {
                    delivered: false,
                    refused: false,
                    status: 0,
                    error: Some(excerpt_of(error).to_owned()),
                },
            ),
            Attempt::Refused { reason } => (
                "refused",
                Summary {
                    delivered: false,
                    refused: true,
                    status: 0,
                    error: Some(excerpt_of(reason).to_owned()),
                },
            ),
        };
        metrics::delivery_attempt(kind(job), label, elapsed);
        let span = tracing::Span::current();
        span.record("http.response.status_code", summary.status);
        if summary.delivered {
            metrics::notify_to_delivery(kind(job), history::now_ms() - job.n);
        }
        summary
    }
}

/// History entries keep a short excerpt of the receiver's answer.
fn excerpt_of(text: &str) -> &str {
    let mut end = text.len().min(200);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// After the outcome was written back: the dead-letter count and the history entry.
/// `job.a` counts the attempts made so far by then (increased on failure).
pub async fn finished(
    deliverer: &Deliverer,
    job: &Job,
    summary: Summary,
    max_retries: u32,
    written: bool,
) {
    let (outcome, attempt) = if summary.delivered {
        (Outcome::Delivered, job.a + 1)
    } else if summary.refused || job.a > max_retries {
        if written {
            metrics::dead_lettered(summary.refused);
        }
        (Outcome::DeadLettered, job.a)
    } else {
        (Outcome::AttemptFailed, job.a)
    };
    let (Ok(tenant), Ok(event)) = (TenantName::parse(&job.t), EventId::parse(&job.e)) else {
        return;
    };
    let mut entry = Entry::new(outcome)
        .waiter(&job.w, job.k == JobKind::Timeout)
        .message(&job.m);
    entry.status = Some(summary.status);
    entry.attempt = Some(attempt);
    entry.error = summary.error;
    deliverer.history.record(&tenant, &event, &[entry]);
}
