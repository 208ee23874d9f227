//! `ApiError` and its one mapping to HTTP: `{"error":{"code","message"}}` with the
//! status from the shared error-code table (`shared::api::ErrorCode`). 5xx bodies are
//! generic; causes go to the log.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use stk_relay_shared::api::{ErrorCode, ErrorResponse};
use stk_relay_shared::daraja::DarajaError;
use stk_relay_shared::ids::ValidationError;
use stk_relay_shared::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Malformed(String),
    #[error("missing or invalid credentials")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("payment not found")]
    PaymentNotFound,
    #[error("no such route")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("Idempotency-Key was already used with a different request body")]
    IdempotencyKeyReused,
    #[error("a request with this Idempotency-Key is still in progress")]
    IdempotencyInProgress,
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("request body exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("{0}")]
    Validation(#[from] ValidationError),
    #[error("Daraja rejected the request: {message}")]
    Daraja {
        daraja_code: Option<String>,
        message: String,
    },
    #[error("Daraja did not answer in time")]
    DarajaTimeout,
    #[error("service unavailable")]
    Unavailable(String),
    #[error("{0}")]
    TooManyConnections(String),
    #[error("internal error")]
    Internal(String),
    #[error(
        "this session token has already started its payment; the merchant must issue a new one"
    )]
    SessionAlreadyStarted,
}

impl ApiError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Malformed(_) => ErrorCode::MalformedRequest,
            Self::Unauthorized => ErrorCode::Unauthorized,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::PaymentNotFound => ErrorCode::PaymentNotFound,
            Self::NotFound => ErrorCode::NotFound,
            Self::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            Self::IdempotencyKeyReused => ErrorCode::IdempotencyKeyReused,
            Self::IdempotencyInProgress => ErrorCode::IdempotencyInProgress,
            Self::TooLarge { .. } => ErrorCode::PayloadTooLarge,
            Self::UnsupportedMediaType => ErrorCode::UnsupportedMediaType,
            Self::Validation(_) => ErrorCode::ValidationFailed,
            Self::Daraja { .. } => ErrorCode::DarajaError,
            Self::DarajaTimeout => ErrorCode::DarajaTimeout,
            Self::Unavailable(_) => ErrorCode::ServiceUnavailable,
            Self::TooManyConnections(_) => ErrorCode::TooManyConnections,
            Self::Internal(_) => ErrorCode::Internal,
            Self::SessionAlreadyStarted => ErrorCode::SessionAlreadyStarted,
        }
    }

    /// The JSON body for this error.
    pub fn body(&self) -> ErrorResponse {
        let message = match self {
            Self::Unavailable(cause) => {
                tracing::error!(cause = %cause, "service unavailable");
                "temporarily unavailable; retry later".to_owned()
            }
            Self::Internal(cause) => {
                tracing::error!(cause = %cause, "internal error");
                "internal error".to_owned()
            }
            other => other.to_string(),
        };
        let mut body = ErrorResponse::new(self.code(), message);
        if let Self::Daraja { daraja_code, .. } = self {
            body.error.daraja_error_code = daraja_code.clone();
        }
        body
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.code().http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(self.body())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) | StoreError::Timeout => Self::Unavailable(e.to_string()),
            StoreError::Protocol(_) => Self::Internal(e.to_string()),
        }
    }
}

impl From<DarajaError> for ApiError {
    fn from(e: DarajaError) -> Self {
        if e.is_timeout() {
            return Self::DarajaTimeout;
        }
        Self::Daraja {
            daraja_code: e.daraja_error_code().map(str::to_owned),
            message: e.to_string(),
        }
    }
}
