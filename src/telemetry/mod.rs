//! Seeing inside Herald: structured logs (tracing, human-readable or JSON), OpenTelemetry
//! traces exported over OTLP/HTTP ([`trace`]), and Prometheus metrics ([`metrics`]).
//!
//! Log lines carry the fields of the span they are written in: a request's span has the
//! route, `tenant`, `event_id`, `run_id` and `trace_id`; a delivery attempt's span has
//! `tenant`, `event_id`, `run_id`, `message_id` and `trace_id`. Tokens and signing keys
//! are never a field of any span or event (request spans record the route pattern, not
//! the query string, which may hold `qstash_token`).

pub mod metrics;
pub mod trace;

use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

use crate::config::{LogFormat, LogSettings, TelemetrySettings};

/// Keeps the trace exporter alive; [`Telemetry::shutdown`] flushes the spans not yet sent.
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.tracer_provider {
            if let Err(e) = provider.shutdown() {
                eprintln!("herald: flushing traces failed: {e}");
            }
        }
    }
}

/// Installs the log subscriber and, when OTLP is configured, the trace exporter. Call once
/// per process; a second call leaves the first subscriber in place.
pub fn init(log: &LogSettings, telemetry: &TelemetrySettings) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.filter));
    let fmt_layer = fmt::layer().with_writer(std::io::stderr);
    let fmt_layer = match log.format {
        LogFormat::Json => fmt_layer
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Pretty => fmt_layer.compact().boxed(),
    }
    .with_filter(filter);
    // Traces have their own filter: Herald's spans are exported whatever the log level.
    let (otel_layer, tracer_provider) = match trace::exporter_enabled(telemetry) {
        true => match trace::build_provider() {
            Ok(provider) => (
                Some(trace::layer(&provider).with_filter(EnvFilter::new("herald=info"))),
                Some(provider),
            ),
            Err(e) => {
                eprintln!("herald: traces are not exported: {e}");
                (None, None)
            }
        },
        false => (None, None),
    };
    let installed = tracing_subscriber::registry()
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()
        .is_ok();
    Telemetry {
        tracer_provider: tracer_provider.filter(|_| installed),
    }
}
