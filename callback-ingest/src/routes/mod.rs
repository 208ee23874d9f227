//! HTTP handlers of callback-ingest.
//!
//! - [`stk_callback`]: `POST /v1/callbacks/stk/{callback_token}`.
//! - [`health`]: `GET /healthz`, `GET /readyz`.

pub mod health;
pub mod stk_callback;

use actix_web::{web, HttpRequest};
use stk_relay_shared::http::BodyError;

use crate::error::IngestError;

/// Reads a bounded request body (`shared::http::read_body`), mapping its errors.
pub async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, IngestError> {
    stk_relay_shared::http::read_body(req, payload, limit)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge { limit } => IngestError::TooLarge { limit },
            BodyError::Read(e) => IngestError::Internal(format!("reading body: {e}")),
        })
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
