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
        trace_id = tracing::field::Empty,
    );
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
