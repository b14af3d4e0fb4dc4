//! The one place where errors become HTTP responses: always `{"error": "…"}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::domain::InvalidInput;
use crate::limits::LimitError;
use crate::store::tenants::TenantError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error(
        "missing or invalid token: send Authorization: Bearer <token> (tenant routes also take ?qstash_token=<token>)"
    )]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    /// A known path asked with a method it does not take; `allowed` goes in `Allow`.
    #[error("{method} is not allowed here; allowed: {allowed}")]
    MethodNotAllowed { method: String, allowed: String },
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// The body did not arrive within `server.read_timeout_ms`.
    #[error("the request body did not arrive within {0} ms")]
    RequestTimeout(u64),
    #[error("{0}")]
    Unprocessable(String),
    /// A tenant quota on the body size (the server-wide cap is `PayloadTooLarge`).
    #[error("{0}")]
    BodyQuota(String),
    /// Over a tenant rate limit: 429 with the headers the Upstash SDKs read.
    #[error("{message}")]
    RateLimited {
        message: String,
        /// Requests allowed at once (`Burst-RateLimit-Limit`).
        limit: u32,
        remaining: u64,
        /// When the bucket is full again, unix seconds (`Burst-RateLimit-Reset`).
        reset_secs: u64,
        retry_after_secs: u64,
    },
    #[error("storage is unavailable, try again")]
    Unavailable,
    /// Sentinel: the master is down, a failover is under way.
    #[error("storage is unavailable, try again: {0}")]
    FailingOver(String),
    /// Applied on the Redis master but not confirmed by the replicas (`redis.wait_replicas`).
    #[error("the write was applied but not confirmed by the Redis replicas in time ({0}), so it may or may not persist; retry it: a retry with the same Idempotency-Key or workflow step is safe (it is not applied twice)")]
    NotReplicated(String),
    /// Details go to the log only.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn bad(message: impl Into<String>) -> Self {
        ApiError::BadRequest(message.into())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BodyQuota(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable | ApiError::FailingOver(_) | ApiError::NotReplicated(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::Unavailable | ApiError::FailingOver(_) | ApiError::NotReplicated(_) => {
                response.insert_header(("Retry-After", "1"));
            }
            ApiError::RateLimited {
                limit,
                remaining,
                reset_secs,
                retry_after_secs,
                ..
            } => {
                response
                    .insert_header(("Burst-RateLimit-Limit", limit.to_string()))
                    .insert_header(("Burst-RateLimit-Remaining", remaining.to_string()))
                    .insert_header(("Burst-RateLimit-Reset", reset_secs.to_string()))
                    .insert_header(("Retry-After", retry_after_secs.to_string()));
            }
            _ => {}
        }
        if let ApiError::MethodNotAllowed { allowed, .. } = self {
            response.insert_header(("Allow", allowed.as_str()));
        }
        response.json(serde_json::json!({ "error": self.to_string() }))
    }
}

impl From<InvalidInput> for ApiError {
    fn from(e: InvalidInput) -> Self {
        ApiError::BadRequest(e.0)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(e) => {
                tracing::warn!(error = %e, "redis unavailable");
                ApiError::Unavailable
            }
            e @ StoreError::FailoverInProgress { .. } => {
                tracing::warn!(error = %e, "redis unavailable");
                ApiError::FailingOver(e.to_string())
            }
            e @ StoreError::NotReplicated { .. } => ApiError::NotReplicated(e.to_string()),
            other => {
                tracing::error!(error = %other, "storage error");
                ApiError::Internal(other.to_string())
            }
        }
    }
}

impl From<LimitError> for ApiError {
    fn from(e: LimitError) -> Self {
        match e {
            LimitError::RateLimited { burst, refusal, .. } => ApiError::RateLimited {
                message: e.to_string(),
                limit: burst,
                remaining: refusal.remaining,
                reset_secs: refusal.reset_ms.div_ceil(1000),
                // Whole seconds, rounded up: a client waiting this long is admitted.
                retry_after_secs: refusal.retry_after_ms.div_ceil(1000).max(1),
            },
            LimitError::Quota { .. } => ApiError::Unprocessable(e.to_string()),
            LimitError::BodyTooLarge { .. } => ApiError::BodyQuota(e.to_string()),
            LimitError::Store(s) => s.into(),
        }
    }
}

impl From<TenantError> for ApiError {
    fn from(e: TenantError) -> Self {
        match e {
            TenantError::Exists(_) => ApiError::Conflict(e.to_string()),
            TenantError::NotFound(_) => ApiError::NotFound(e.to_string()),
            TenantError::Store(s) => s.into(),
        }
    }
}
