//! `GET /metrics`: Prometheus text exposition (see [`crate::telemetry::metrics`]). Open
//! like `/healthz`: it holds no tenant names, event ids or URLs.

use actix_web::HttpResponse;

pub async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(crate::telemetry::metrics::render())
}
