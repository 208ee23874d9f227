//! HTTP handlers of the gateway.
//!
//! - [`push`]: `POST /v1/stk/push` (merchant backend).
//! - [`payments`]: `GET /v1/payments/{id}`, `/ws` and `/events` (browsers).
//! - [`health`]: `GET /healthz`, `GET /readyz`.
//! - [`demo`]: the demo checkout (standalone mode only) and `GET /v1/client.js`.
//! - [`compat`]: `/sessions/{token}/initiate` and `/websocket`, the Durable Objects
//!   design's routes (only with `compat.enabled`).

pub mod compat;
pub mod demo;
pub mod health;
pub mod payments;
pub mod push;

use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use stk_relay_shared::http::BodyError;

use crate::error::ApiError;

/// Reads a bounded request body (`shared::http::read_body`), mapping its errors.
pub async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, ApiError> {
    stk_relay_shared::http::read_body(req, payload, limit)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge { limit } => ApiError::TooLarge { limit },
            BodyError::Read(e) => ApiError::Malformed(format!("could not read body: {e}")),
        })
}

/// JSON 404 for unknown routes, 405 for a known path with the wrong method.
pub async fn fallback(req: HttpRequest) -> HttpResponse {
    let p = req.path();
    let payment_route = p.strip_prefix("/v1/payments/").is_some_and(|rest| {
        let mut parts = rest.split('/');
        let has_id = parts.next().is_some_and(|id| !id.is_empty());
        has_id
            && matches!(
                (parts.next(), parts.next()),
                (None, None) | (Some("ws" | "events"), None)
            )
    });
    let known = p == "/v1/stk/push"
        || payment_route
        || p == "/healthz"
        || p == "/readyz"
        || p == "/v1/client.js";
    if known {
        ApiError::MethodNotAllowed.error_response()
    } else {
        ApiError::NotFound.error_response()
    }
}
