//! HTTP handlers of the gateway.
//!
//! - [`push`]: `POST /v1/stk/push` (merchant backend).
//! - [`payments`]: `GET /v1/payments/{id}`, `/ws` and `/events` (browsers), and
//!   `/history` (merchant backend).
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

/// Refuses a request whose `Content-Type` is set and is not `application/json`
/// (parameters such as `; charset=utf-8` are allowed; a missing header is accepted).
pub fn require_json(req: &HttpRequest) -> Result<(), ApiError> {
    if let Some(ct) = req.headers().get(actix_web::http::header::CONTENT_TYPE) {
        let json = ct
            .to_str()
            .ok()
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
    }
    Ok(())
}

/// Decodes a JSON request body; serde's message goes back with digit runs redacted
/// ([`redact_digit_runs`]).
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::Malformed(format!(
            "invalid JSON body: {}",
            redact_digit_runs(&e.to_string())
        ))
    })
}

/// serde's messages quote the offending value (`invalid type: integer `254712345678``);
/// a phone number sent as a number must not come back in the response or reach the
/// logs. Runs of seven or more digits are replaced.
pub(crate) fn redact_digit_runs(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut run = String::new();
    for c in msg.chars().chain(std::iter::once('\0')) {
        if c.is_ascii_digit() {
            run.push(c);
            continue;
        }
        if run.len() >= 7 {
            out.push_str("[redacted]");
        } else {
            out.push_str(&run);
        }
        run.clear();
        if c != '\0' {
            out.push(c);
        }
    }
    out
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
                (None, None) | (Some("ws" | "events" | "history"), None)
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

#[cfg(test)]
mod tests {
    use super::redact_digit_runs;

    #[test]
    fn long_digit_runs_are_redacted() {
        assert_eq!(
            redact_digit_runs(
                "invalid type: integer `254712345678`, expected a string at line 1 column 22"
            ),
            "invalid type: integer `[redacted]`, expected a string at line 1 column 22"
        );
        assert_eq!(redact_digit_runs("amount 250000"), "amount 250000");
    }
}
