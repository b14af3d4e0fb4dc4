//! Traces: one trace from the notify (or wait) request to the waiter's endpoint, seen by
//! a real OTLP/HTTP receiver (in the test, decoding the protobuf export) that the Herald
//! process exports to because of the standard OTEL_* variables.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;

use crate::support::process::HeraldProcess;
use crate::support::{eventually, Receiver, RedisServer};

/// An OTLP/HTTP trace receiver on a free loopback port: `POST /v1/traces` with a
/// protobuf `ExportTraceServiceRequest`.
struct OtlpReceiver {
    port: u16,
    spans: Arc<Mutex<Vec<Span>>>,
}

async fn export(body: web::Bytes, spans: web::Data<Arc<Mutex<Vec<Span>>>>) -> HttpResponse {
    let Ok(request) = ExportTraceServiceRequest::decode(body.as_ref()) else {
        return HttpResponse::BadRequest().finish();
    };
    let mut all = spans.lock().unwrap();
    for resource in request.resource_spans {
        for scope in resource.scope_spans {
            all.extend(scope.spans);
        }
    }
    HttpResponse::Ok()
        .content_type("application/x-protobuf")
        .body(Vec::<u8>::new())
}

impl OtlpReceiver {
    async fn start() -> Self {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let data = web::Data::new(spans.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
                .route("/v1/traces", web::post().to(export))
        })
        .listen(listener)
        .unwrap()
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .run();
        tokio::spawn(server);
        OtlpReceiver { port, spans }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    fn find(&self, name: &str, trace_id: &[u8]) -> Option<Span> {
        self.spans()
            .into_iter()
            .find(|s| s.name == name && s.trace_id == trace_id)
    }
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

/// (trace id, span id) of a `traceparent` header.
fn ids_of(traceparent: &str) -> (Vec<u8>, Vec<u8>) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    (unhex(parts[1]), unhex(parts[2]))
}

#[tokio::test]
async fn one_trace_runs_from_notify_and_wait_to_the_waiters_endpoint() {
    let redis = RedisServer::start();
    let otlp = OtlpReceiver::start().await;
    let receiver = Receiver::start().await;
    let admin = "trace-admin-token";
    let mut herald = HeraldProcess::start(&[
        ("HERALD_REDIS__URL", redis.url()),
        ("HERALD_SERVER__ADMIN_TOKEN", admin.to_owned()),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", otlp.port),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ])
    .await;
    let http = crate::support::http_client();
    let created: serde_json::Value = crate::support::json_body(
        http.post(format!("{}/admin/tenants", herald.base))
            .bearer_auth(admin)
            .body(json!({"name": "acme"}).to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    let token = created["token"].as_str().unwrap().to_owned();

    // The caller's own trace: Herald's spans join it.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let waited = http
        .post(format!("{}/v2/wait/traced", herald.base))
        .bearer_auth(&token)
        .body(json!({"url": receiver.url("/resume")}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(waited.status(), 200);
    let notified = http
        .post(format!("{}/v2/notify/traced", herald.base))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .body("paid")
        .send()
        .await
        .unwrap();
    assert_eq!(notified.status(), 201);

    // A timeout delivery continues the trace of its wait request.
    let wait_trace = "0af7651916cd43dd8448eb211c80319c";
    let waited = http
        .post(format!("{}/v2/wait/traced-timeout", herald.base))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{wait_trace}-b7ad6b7169203331-01"))
        .body(json!({"url": receiver.url("/never"), "timeout": "1s", "timeoutUrl": receiver.url("/expired")}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(waited.status(), 200);

    let delivered = receiver.expect("/resume", 1).await;
    let outbound = delivered[0]
        .header("traceparent")
        .expect("the delivery carries traceparent")
        .to_owned();
    let (outbound_trace, outbound_span) = ids_of(&outbound);
    assert_eq!(
        outbound_trace,
        unhex(caller_trace),
        "same trace as the notify"
    );
    let expired = receiver.expect("/expired", 1).await;
    let (expired_trace, expired_span) = ids_of(expired[0].header("traceparent").unwrap());
    assert_eq!(expired_trace, unhex(wait_trace), "same trace as the wait");

    let trace = unhex(caller_trace);
    let exported = eventually(Duration::from_secs(20), || {
        otlp.find("POST /v2/notify/{eventId}", &trace).is_some()
            && otlp.find("delivery attempt", &trace).is_some()
            && otlp.find("EVALSHA notify", &trace).is_some()
            && otlp.find("delivery attempt", &unhex(wait_trace)).is_some()
    })
    .await;
    assert!(
        exported,
        "spans exported: {:?}",
        otlp.spans()
            .iter()
            .map(|s| (&s.name, hex::encode(&s.trace_id)))
            .collect::<Vec<_>>()
    );
    let request = otlp.find("POST /v2/notify/{eventId}", &trace).unwrap();
    assert_eq!(
        request.parent_span_id,
        unhex(caller_span),
        "child of the caller"
    );
    let script = otlp.find("EVALSHA notify", &trace).unwrap();
    assert_eq!(
        script.parent_span_id, request.span_id,
        "the Lua call is a child"
    );
    let attempt = otlp.find("delivery attempt", &trace).unwrap();
    assert_eq!(
        attempt.parent_span_id, request.span_id,
        "the delivery attempt is a child of the notify request"
    );
    assert_eq!(
        attempt.span_id, outbound_span,
        "the outbound traceparent names the attempt's span"
    );

    let wait_request = otlp
        .find("POST /v2/wait/{eventId}", &unhex(wait_trace))
        .expect("the wait request's span");
    let timeout_attempt = otlp.find("delivery attempt", &unhex(wait_trace)).unwrap();
    assert_eq!(timeout_attempt.parent_span_id, wait_request.span_id);
    assert_eq!(timeout_attempt.span_id, expired_span);
    // The scheduler's periodic scripts, outside any request or delivery, make no spans.
    assert!(
        otlp.spans().iter().all(|s| s.name != "EVALSHA promote_due"),
        "periodic scheduler calls were exported as root spans"
    );
    herald.stop().await;
}
