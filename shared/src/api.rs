//! The public HTTP and WebSocket API's wire types, defined once, and the table of stable
//! error codes with their HTTP statuses. Both services and the end-to-end tests import
//! these; `docs/api.md` documents them.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// `POST /v1/stk/push` request body, as received. Values are validated into typed ids by
/// the gateway; this struct only fixes the shape.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    pub phone: String,
    /// A JSON number or a numeric string; validated by `ids::Amount::from_json`.
    pub amount: serde_json::Value,
    pub account_reference: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Where this payment's webhook events go instead of `merchant.webhook_url`; its
    /// host must be in `merchant.allowed_webhook_hosts`.
    #[serde(default)]
    pub webhook_url: Option<String>,
}

/// `POST /demo/pay` body (standalone mode's demo checkout only). Answered with a
/// [`PushResponse`].
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DemoPayRequest {
    pub phone: String,
    /// A JSON number or a numeric string, as for a push.
    pub amount: serde_json::Value,
    /// With the simulator: which result it should give (one of
    /// [`DemoConfig::outcomes`]). Refused without the simulator.
    #[serde(default)]
    pub outcome: Option<String>,
}

/// `GET /demo/config.json`: what the demo page may offer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct DemoConfig {
    /// Whether Daraja is the in-process simulator (then the outcome can be chosen).
    pub simulator: bool,
    /// How long the buyer has to answer the prompt, for the page's countdown.
    pub prompt_secs: u64,
    /// The outcomes the simulator can be asked for; empty without the simulator.
    pub outcomes: Vec<String>,
}

/// `POST /v1/stk/push` success body.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct PushResponse {
    pub checkout_request_id: String,
    pub merchant_request_id: String,
    /// `"PENDING"`, or already the final status in the rare case that Daraja's callback
    /// reached an ingest node before this response was written.
    pub status: String,
    pub customer_message: String,
    /// Subscribe token for this one payment, for the browser.
    pub token: String,
    /// When `token` expires (RFC 3339).
    pub expires_at: String,
}

/// The kind of a server → browser message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MessageType {
    /// The payment is still pending; `data` is its current state.
    PaymentUpdate,
    /// The payment is final; `data` is its final state. Sent once per connection.
    PaymentCompleted,
}

impl MessageType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PaymentUpdate => "PAYMENT_UPDATE",
            Self::PaymentCompleted => "PAYMENT_COMPLETED",
        }
    }
}

/// A server → browser message: `{"type":…,"data":STATE}`. `data` is carried as raw JSON
/// so that a state published by ingest reaches the browser without being re-encoded.
#[derive(Debug, Serialize)]
pub struct ServerMessage<'a> {
    #[serde(rename = "type")]
    pub kind: MessageType,
    pub data: &'a RawValue,
}

/// The same message, owned, for clients (tests, tools) that read it.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ServerMessageOwned {
    #[serde(rename = "type")]
    pub kind: MessageType,
    pub data: crate::payment::PaymentState,
}

/// Encodes a server message around an already-encoded STATE, without parsing it again.
/// `<`, `>` and `&` leave as `\u003c`, `\u003e` and `\u0026`
/// (`crate::text::escape_json_for_html`).
pub fn encode_message(kind: MessageType, state_json: &str) -> String {
    let state_json = crate::text::escape_json_for_html(state_json);
    let state_json = state_json.as_ref();
    let mut out = String::with_capacity(state_json.len() + 40);
    out.push_str("{\"type\":\"");
    out.push_str(kind.as_str());
    out.push_str("\",\"data\":");
    out.push_str(state_json);
    out.push('}');
    out
}

/// Every error body: `{"error":{"code","message"}}`, plus Daraja's own code when a
/// Daraja error is passed on.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ErrorResponse {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daraja_error_code: Option<String>,
}

/// Stable, machine-readable error codes. The HTTP status of each lives here too, so the
/// mapping is made in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The body is not valid JSON, has the wrong shape, or a header is malformed.
    MalformedRequest,
    /// Credentials are missing or invalid.
    Unauthorized,
    /// Credentials are valid but do not grant this (e.g. a wrong callback token).
    Forbidden,
    /// The route does not exist.
    NotFound,
    /// No payment with this CheckoutRequestID is known.
    PaymentNotFound,
    /// The method is not allowed on this route.
    MethodNotAllowed,
    /// The Idempotency-Key was used before with another body.
    IdempotencyKeyReused,
    /// A request with the same Idempotency-Key is still being processed.
    IdempotencyInProgress,
    /// The body exceeds the endpoint's limit.
    PayloadTooLarge,
    /// The body must be `application/json`.
    UnsupportedMediaType,
    /// The body is well-formed but a value is invalid; the message names the field.
    ValidationFailed,
    /// Daraja answered with an error; `daraja_error_code` carries its errorCode.
    DarajaError,
    /// Too many refused requests from this source address; retry later.
    RateLimited,
    /// Redis is unreachable, or the node is draining.
    ServiceUnavailable,
    /// Too many open WebSocket/SSE connections for this payment or from this address.
    TooManyConnections,
    /// Daraja did not answer in time. The push may or may not have reached it.
    DarajaTimeout,
    /// Anything else; details are in the server log.
    Internal,
    /// A compatibility session token already started its one push.
    SessionAlreadyStarted,
}

impl ErrorCode {
    pub fn http_status(self) -> u16 {
        match self {
            Self::MalformedRequest => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound | Self::PaymentNotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::IdempotencyKeyReused
            | Self::IdempotencyInProgress
            | Self::SessionAlreadyStarted => 409,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::ValidationFailed => 422,
            Self::RateLimited | Self::TooManyConnections => 429,
            Self::Internal => 500,
            Self::DarajaError => 502,
            Self::ServiceUnavailable => 503,
            Self::DarajaTimeout => 504,
        }
    }
}

impl ErrorResponse {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code,
                message: message.into(),
                daraja_error_code: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_golden() {
        let e = ErrorResponse::new(ErrorCode::ValidationFailed, "phone is invalid");
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"error":{"code":"VALIDATION_FAILED","message":"phone is invalid"}}"#
        );
        let mut d = ErrorResponse::new(ErrorCode::DarajaError, "Daraja rejected the push");
        d.error.daraja_error_code = Some("400.002.02".into());
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            r#"{"error":{"code":"DARAJA_ERROR","message":"Daraja rejected the push","daraja_error_code":"400.002.02"}}"#
        );
    }

    #[test]
    fn message_encoding_matches_serde() {
        let state = r#"{"status":"PENDING","version":1}"#;
        let raw = RawValue::from_string(state.to_owned()).unwrap();
        let via_serde = serde_json::to_string(&ServerMessage {
            kind: MessageType::PaymentUpdate,
            data: &raw,
        })
        .unwrap();
        assert_eq!(encode_message(MessageType::PaymentUpdate, state), via_serde);
        assert_eq!(
            via_serde,
            r#"{"type":"PAYMENT_UPDATE","data":{"status":"PENDING","version":1}}"#
        );
    }
}
