//! `IngestError` and its one mapping to HTTP: `{"error":{"code","message"}}` with the
//! status from the shared error-code table. 5xx bodies are generic; causes go to the log.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use stk_relay_shared::api::{ErrorCode, ErrorResponse};
use stk_relay_shared::daraja::callback::CallbackError;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("callback token is not valid for this payment")]
    Forbidden,
    #[error("callbacks are not accepted from this source")]
    SourceRefused,
    #[error("too many refused requests from this source; retry later")]
    RateLimited,
    #[error("spool full")]
    SpoolFull(String),
    #[error("body exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("{0}")]
    Malformed(#[from] CallbackError),
    #[error("redis unavailable")]
    Unavailable(String),
    #[error("redis refused the write")]
    RedisRefused(String),
    #[error("no such route")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("internal error")]
    Internal(String),
}

impl IngestError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::Forbidden | Self::SourceRefused => ErrorCode::Forbidden,
            Self::RateLimited => ErrorCode::RateLimited,
            Self::SpoolFull(_) => ErrorCode::ServiceUnavailable,
            Self::TooLarge { .. } => ErrorCode::PayloadTooLarge,
            Self::Malformed(CallbackError::TooLarge { .. }) => ErrorCode::PayloadTooLarge,
            Self::Malformed(_) => ErrorCode::MalformedRequest,
            Self::Unavailable(_) | Self::RedisRefused(_) => ErrorCode::ServiceUnavailable,
            Self::NotFound => ErrorCode::NotFound,
            Self::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl ResponseError for IngestError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.code().http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        // `Unavailable`, `RedisRefused` and `SpoolFull` are logged by the callback route
        // (`log_not_stored`), inside its span, so the line carries the CheckoutRequestID;
        // this runs after the handler's span has closed.
        let message = match self {
            Self::Unavailable(_) | Self::RedisRefused(_) => {
                "temporarily unavailable; retry later".to_owned()
            }
            Self::SpoolFull(_) => "temporarily unavailable (spool full); retry later".to_owned(),
            Self::Internal(cause) => {
                tracing::error!(cause = %cause, "internal error");
                "internal error".to_owned()
            }
            other => other.to_string(),
        };
        HttpResponse::build(self.status_code()).json(ErrorResponse::new(self.code(), message))
    }
}
