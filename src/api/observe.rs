//! Per-request observability, as one middleware around every route: a span per request
//! (child of the caller's W3C `traceparent`, exported when OTLP is on; its fields are on
//! every log line written while handling the request), and the request metrics.
//!
//! The span records the route *pattern* (`/v2/notify/{eventId}`), never the raw path or
//! the query string (which may hold `qstash_token`).

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::HttpMessage;
use tracing::Instrument;

use crate::domain::{EventId, RunId};
use crate::telemetry::{metrics, trace};

/// The request's own valid `traceparent`, kept for handlers (passed on to deliveries when
/// spans are not exported).
#[derive(Clone)]
pub struct IncomingTraceparent(pub String);

pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let remote_parent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(trace::parse_traceparent);
    let span = tracing::info_span!(
        "http request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        tenant = tracing::field::Empty,
        event_id = tracing::field::Empty,
        run_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let (event, run) = path_ids(&route, req.path());
    let run = run.or_else(|| {
        req.headers()
            .get("upstash-workflow-runid")
            .and_then(|v| v.to_str().ok())
            .and_then(|r| RunId::parse(r).ok())
    });
    if let Some(event) = event {
        span.record("event_id", event.as_str());
    }
    if let Some(run) = run {
        span.record("run_id", run.as_str());
    }
    if let Some(parent) = remote_parent.clone() {
        req.extensions_mut()
            .insert(IncomingTraceparent(trace::format_traceparent(&parent)));
        trace::set_remote_parent(&span, parent);
    }
    if let Some(id) = trace::trace_id_of(&span, remote_parent.as_ref()) {
        span.record("trace_id", id.as_str());
    }
    let response = next.call(req).instrument(span.clone()).await;
    let status = match &response {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.as_response_error().status_code().as_u16(),
    };
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    metrics::http_request(&method, &route, status, started.elapsed());
    response
}

/// The valid event and run ids among the path's segments (`{eventId}`, `{runId}` of the
/// route pattern), for the request's log lines. Invalid ones are left out: the handler
/// refuses them.
fn path_ids(pattern: &str, path: &str) -> (Option<EventId>, Option<RunId>) {
    let (mut event, mut run) = (None, None);
    for (name, raw) in pattern.split('/').zip(path.split('/')) {
        let value = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
        match name {
            "{eventId}" => event = EventId::parse(&value).ok(),
            "{runId}" => run = RunId::parse(&value).ok(),
            _ => {}
        }
    }
    (event, run)
}

/// The `traceparent` to store with the deliveries this request causes.
pub fn job_traceparent(req: &actix_web::HttpRequest) -> String {
    let incoming = req
        .extensions()
        .get::<IncomingTraceparent>()
        .map(|t| t.0.clone());
    trace::current_traceparent(incoming.as_deref())
}

/// Adds the authenticated tenant to the request's span (and so to its log lines).
pub fn record_tenant(tenant: &str) {
    tracing::Span::current().record("tenant", tenant);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_from_the_route_pattern() {
        let (event, run) = path_ids(
            "/v2/notify/{runId}/{eventId}",
            "/v2/notify/wfr_1/order%3A42",
        );
        assert_eq!(event.unwrap().as_str(), "order:42");
        assert_eq!(run.unwrap().as_str(), "wfr_1");
        let (event, run) = path_ids("/v2/wait/{eventId}", "/v2/wait/bad%7Bid");
        assert!(event.is_none() && run.is_none());
        assert_eq!(path_ids("unmatched", "/x/y"), (None, None));
    }
}
