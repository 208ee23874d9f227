//! HTTP handlers of callback-ingest.
//!
//! - [`stk_callback`]: `POST /v1/callbacks/stk/{callback_token}`.
//! - [`health`]: `GET /healthz`, `GET /readyz`.

pub mod health;
pub mod stk_callback;

use actix_web::{web, HttpRequest};
use futures_util::StreamExt;

use crate::error::IngestError;

/// Reads a request body of at most `limit` bytes; refuses early on a larger
/// Content-Length.
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, IngestError> {
    if let Some(len) = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > limit {
            return Err(IngestError::TooLarge { limit });
        }
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| IngestError::Internal(format!("reading body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(IngestError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// JSON 404 / 405 for everything that is not a route.
pub async fn not_found(req: HttpRequest) -> actix_web::HttpResponse {
    use actix_web::ResponseError;
    if req.path().starts_with("/v1/callbacks/stk/") {
        IngestError::MethodNotAllowed.error_response()
    } else {
        IngestError::NotFound.error_response()
    }
}
