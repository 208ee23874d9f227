//! Wire types of the Durable Objects compatibility routes (`docs/compat.md`), defined
//! once: the gateway writes them, the end-to-end tests read them.
//!
//! - `POST /sessions/{token}/initiate`: [`InitiateRequest`] in, [`InitiateResponse`] out.
//! - `GET /sessions/{token}/websocket`: [`CompatMessage`]s, `STK_INITIATED` then
//!   `PAYMENT_COMPLETED`, as `{"type":…,"data":…}` with camelCase fields, the shape the
//!   Durable Objects design's React component reads.

use serde::{Deserialize, Serialize};

use crate::payment::{PaymentState, PaymentStatus};

/// `POST /sessions/{token}/initiate` body. Each value must equal the one bound into the
/// token (the phone only when the token binds one).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InitiateRequest {
    pub phone_number: String,
    /// A JSON number or a numeric string, as in `POST /v1/stk/push`.
    pub amount: serde_json::Value,
    pub account_reference: String,
}

/// What a session knows once its push is accepted: the `data` of `STK_INITIATED`, also
/// stored under the session and published on its channel (so any node can send it).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StkInitiated {
    /// `PENDING` (as the push answered).
    pub status: String,
    pub checkout_request_id: String,
    pub merchant_request_id: String,
    /// When the push was accepted (RFC 3339, UTC).
    pub timestamp: String,
}

/// `POST /sessions/{token}/initiate` success body (200): the session's push, as the
/// Durable Objects design answers it, plus `success` and Daraja's customer message.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InitiateResponse {
    pub success: bool,
    #[serde(flatten)]
    pub initiated: StkInitiated,
    pub customer_message: String,
}

/// `SUCCESS` or `FAILED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompatStatus {
    Success,
    Failed,
}

/// The `data` of `PAYMENT_COMPLETED`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentCompleted {
    pub status: CompatStatus,
    pub checkout_request_id: String,
    pub merchant_request_id: String,
    /// Set on success.
    pub mpesa_receipt_number: Option<String>,
    /// On failure: a human-readable reason (Daraja's ResultDesc when there is one, else
    /// `reasonCode`). Null on success.
    pub reason: Option<String>,
    /// On failure: the stable `FailureReason` code, e.g. `CANCELLED_BY_USER`.
    pub reason_code: Option<String>,
    pub amount: Option<u32>,
    /// When the payment became final (RFC 3339, UTC).
    pub completed_at: Option<String>,
}

impl PaymentCompleted {
    /// The completion message of a final state; `None` while it is pending.
    pub fn from_state(s: &PaymentState) -> Option<Self> {
        let status = match s.status {
            PaymentStatus::Pending => return None,
            PaymentStatus::Success => CompatStatus::Success,
            PaymentStatus::Failed => CompatStatus::Failed,
        };
        let reason_code = s.reason.and_then(|r| {
            serde_json::to_value(r)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
        });
        let reason = match status {
            CompatStatus::Success => None,
            CompatStatus::Failed => s
                .result_desc
                .clone()
                .filter(|d| !d.is_empty())
                .or_else(|| reason_code.clone())
                .or_else(|| Some("UNKNOWN".to_owned())),
        };
        Some(Self {
            status,
            checkout_request_id: s.checkout_request_id.as_str().to_owned(),
            merchant_request_id: s.merchant_request_id.as_str().to_owned(),
            mpesa_receipt_number: s.mpesa_receipt_number.clone(),
            reason,
            reason_code,
            amount: s.amount,
            completed_at: s
                .completed_at
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        })
    }
}

/// A server → browser message on `/sessions/{token}/websocket`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "type", content = "data", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompatMessage {
    StkInitiated(StkInitiated),
    PaymentCompleted(PaymentCompleted),
}

impl CompatMessage {
    /// The text frame: compact JSON with `<`, `>` and `&` escaped
    /// (`crate::text::escape_json_for_html`), like every other browser message.
    pub fn encode(&self) -> Result<String, serde_json::Error> {
        let json = serde_json::to_string(self)?;
        Ok(crate::text::escape_json_for_html(&json).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn initiated() -> StkInitiated {
        StkInitiated {
            status: "PENDING".into(),
            checkout_request_id: "ws_CO_1".into(),
            merchant_request_id: "29115-1".into(),
            timestamp: "2025-01-01T10:00:00Z".into(),
        }
    }

    #[test]
    fn golden_stk_initiated() {
        assert_eq!(
            CompatMessage::StkInitiated(initiated()).encode().unwrap(),
            r#"{"type":"STK_INITIATED","data":{"status":"PENDING","checkoutRequestId":"ws_CO_1","merchantRequestId":"29115-1","timestamp":"2025-01-01T10:00:00Z"}}"#
        );
    }

    #[test]
    fn golden_initiate_response() {
        let r = InitiateResponse {
            success: true,
            initiated: initiated(),
            customer_message: "Success. Request accepted for processing".into(),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"success":true,"status":"PENDING","checkoutRequestId":"ws_CO_1","merchantRequestId":"29115-1","timestamp":"2025-01-01T10:00:00Z","customerMessage":"Success. Request accepted for processing"}"#
        );
    }

    #[test]
    fn golden_payment_completed() {
        let state: PaymentState = serde_json::from_str(
            r#"{"checkoutRequestId":"ws_CO_1","merchantRequestId":"29115-1","status":"FAILED","reason":"CANCELLED_BY_USER","resultCode":1032,"resultDesc":"Request <cancelled> by user","mpesaReceiptNumber":null,"amount":100,"phoneNumber":"2547******78","transactionDate":null,"timestamp":"2025-01-01T10:00:05Z","completedAt":"2025-01-01T10:00:05Z","resultSource":"CALLBACK","version":2}"#,
        )
        .unwrap();
        let m = CompatMessage::PaymentCompleted(PaymentCompleted::from_state(&state).unwrap());
        assert_eq!(
            m.encode().unwrap(),
            r#"{"type":"PAYMENT_COMPLETED","data":{"status":"FAILED","checkoutRequestId":"ws_CO_1","merchantRequestId":"29115-1","mpesaReceiptNumber":null,"reason":"Request \u003ccancelled\u003e by user","reasonCode":"CANCELLED_BY_USER","amount":100,"completedAt":"2025-01-01T10:00:05Z"}}"#
        );
        let back: CompatMessage = serde_json::from_str(&m.encode().unwrap()).unwrap();
        assert_eq!(back, m);

        let pending: PaymentState = serde_json::from_str(
            r#"{"checkoutRequestId":"ws_CO_1","merchantRequestId":"29115-1","status":"PENDING","reason":null,"resultCode":null,"resultDesc":null,"mpesaReceiptNumber":null,"amount":100,"phoneNumber":"2547******78","transactionDate":null,"timestamp":"2025-01-01T10:00:00Z","completedAt":null,"version":1}"#,
        )
        .unwrap();
        assert!(PaymentCompleted::from_state(&pending).is_none());
    }
}
