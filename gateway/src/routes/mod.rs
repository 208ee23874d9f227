//! HTTP handlers of the gateway.
//!
//! - [`push`]: `POST /v1/stk/push` (merchant backend).
//! - [`payments`]: `GET /v1/payments/{id}`, `/ws` and `/events` (browsers).
//! - [`health`]: `GET /healthz`, `GET /readyz`.

pub mod health;
pub mod payments;
pub mod push;

use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use futures_util::StreamExt;

use crate::error::ApiError;

/// Reads a request body of at most `limit` bytes; refuses early on a larger
/// Content-Length.
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, ApiError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::TooLarge { limit });
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::Malformed(format!("could not read body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// JSON 404 for unknown routes, 405 for a known path with the wrong method.
pub async fn fallback(req: HttpRequest) -> HttpResponse {
    let p = req.path();
    let known = p == "/v1/stk/push" || p.starts_with("/v1/payments/") || p == "/healthz" || p == "/readyz";
    if known {
        ApiError::MethodNotAllowed.error_response()
    } else {
        ApiError::NotFound.error_response()
    }
}
