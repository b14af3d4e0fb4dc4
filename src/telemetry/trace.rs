//! Traces: OpenTelemetry spans exported over OTLP/HTTP (protobuf), configured by the
//! standard `OTEL_*` variables and off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, or `telemetry.traces` is true.
//!
//! One trace runs from the request that caused a delivery to the waiter's endpoint: the
//! W3C `traceparent` of the wait or notify request's span is stored with each delivery
//! job (field `p`), every delivery attempt's span is its child, and the outbound request
//! carries the attempt's `traceparent`. With the exporter off, an incoming `traceparent`
//! is still passed through to the waiter unchanged.

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider,
};
use opentelemetry::Context;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::TelemetrySettings;
use crate::waiter::Job;

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

/// Whether spans are exported: an OTLP endpoint is configured or the config switch is
/// on, and the standard switches (`OTEL_SDK_DISABLED`, `OTEL_TRACES_EXPORTER=none`) do
/// not turn it off.
pub fn exporter_enabled(settings: &TelemetrySettings) -> bool {
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"));
    let configured = settings.traces
        || env_set("OTEL_EXPORTER_OTLP_ENDPOINT")
        || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    configured && !disabled
}

/// The OTLP/HTTP exporter (endpoint, headers, timeout from `OTEL_EXPORTER_OTLP_*`) behind
/// a batch processor (`OTEL_BSP_*`), with `service.name` from `OTEL_SERVICE_NAME` or
/// `herald`.
pub fn build_provider() -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()
        .map_err(|e| e.to_string())?;
    let mut resource = Resource::builder();
    if !env_set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name("herald");
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

pub fn layer<S>(
    provider: &SdkTracerProvider,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer("herald"))
}

/// Parses a W3C `traceparent` (version 00) strictly: lowercase hex, non-zero ids. Anything
/// else is `None` (the W3C rule: an invalid parent is ignored, a new trace starts). Only
/// values that passed here are stored, so they can be spliced into job JSON safely.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let bytes = value.as_bytes();
    if bytes.len() != 55 || !value.starts_with("00-") || bytes[35] != b'-' || bytes[52] != b'-' {
        return None;
    }
    let (trace, span, flags) = (&value[3..35], &value[36..52], &value[53..55]);
    let lower_hex = |s: &str| s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    if !lower_hex(trace) || !lower_hex(span) || !lower_hex(flags) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()? & TraceFlags::SAMPLED.to_u8());
    Some(SpanContext::new(
        trace_id,
        span_id,
        flags,
        true,
        TraceState::default(),
    ))
}

pub fn format_traceparent(context: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        context.trace_id(),
        context.span_id(),
        context.trace_flags().to_u8()
    )
}

/// The span context of `span` when the exporter is on (invalid otherwise).
fn span_context(span: &Span) -> SpanContext {
    span.context().span().span_context().clone()
}

/// Makes `parent` (a remote span, e.g. from a `traceparent` header) the parent of `span`.
pub fn set_remote_parent(span: &Span, parent: SpanContext) {
    let _ = span.set_parent(Context::new().with_remote_span_context(parent));
}

/// The trace id to show in logs: the span's own, or the remote parent's when nothing is
/// exported.
pub fn trace_id_of(span: &Span, remote_parent: Option<&SpanContext>) -> Option<String> {
    let own = span_context(span);
    if own.is_valid() {
        return Some(own.trace_id().to_string());
    }
    remote_parent.map(|p| p.trace_id().to_string())
}

/// The `traceparent` to store with the deliveries a request causes: the current (request)
/// span when spans are exported, else the request's own valid `traceparent`, else "".
pub fn current_traceparent(incoming: Option<&str>) -> String {
    let own = span_context(&Span::current());
    if own.is_valid() {
        return format_traceparent(&own);
    }
    incoming
        .and_then(parse_traceparent)
        .map(|c| format_traceparent(&c))
        .unwrap_or_default()
}

/// The span of one delivery attempt, a child of the span that enqueued the job.
pub fn delivery_span(job: &Job) -> Span {
    let span = tracing::info_span!(
        "delivery attempt",
        otel.name = "delivery attempt",
        otel.kind = "client",
        tenant = %job.t,
        event_id = %job.e,
        run_id = job.w.run_id.as_deref().unwrap_or(""),
        message_id = %job.m,
        outcome = job.k.as_str(),
        attempt = job.a,
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let parent = parse_traceparent(&job.p);
    if let Some(parent) = parent.clone() {
        set_remote_parent(&span, parent);
    }
    if let Some(id) = trace_id_of(&span, parent.as_ref()) {
        span.record("trace_id", id.as_str());
    }
    span
}

/// The `traceparent` an attempt sends: its own span's (exporter on), else the stored one.
pub fn outbound_traceparent(span: &Span, job: &Job) -> Option<String> {
    let own = span_context(span);
    if own.is_valid() {
        return Some(format_traceparent(&own));
    }
    parse_traceparent(&job.p).map(|c| format_traceparent(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn valid_traceparent_round_trips() {
        let parsed = parse_traceparent(VALID).expect("valid");
        assert!(parsed.is_remote());
        assert!(parsed.is_sampled());
        assert_eq!(format_traceparent(&parsed), VALID);
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-4bf92f3577b34da6a3ce929d0e0e473\"-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn without_an_exporter_the_incoming_parent_is_passed_on() {
        assert_eq!(current_traceparent(Some(VALID)), VALID);
        assert_eq!(current_traceparent(Some("00-junk")), "");
        assert_eq!(current_traceparent(None), "");
    }
}
