//! A payment's history: what happened to it, in order (`GET /v1/payments/{id}/history`).
//!
//! One definition of the wire type, used by the gateway's route, the admin CLI and the
//! tests. Entries are stored in a Redis list beside the payment
//! (`Keyspace::payment_history`, same hash tag), one JSON object per entry:
//!
//! - `pushed`, each `callback` and the `final` decision are appended by `payment.lua`
//!   (or its in-memory twin) in the same atomic step that decides them;
//! - `query_asked` / `query_answer` (reconciliation) and `webhook_attempt` (the webhook
//!   deliverer) are appended from Rust, best effort (`PaymentStore::append_history`).
//!
//! **Time.** Stored entries carry `at` as Unix milliseconds. Entries written by the
//! payment script take Redis's clock (`TIME`; the memory store takes the process clock);
//! entries appended from Rust carry the appending node's clock. The API renders `at` as
//! RFC 3339 with milliseconds, UTC.
//!
//! **Bound.** At most [`MAX_ENTRIES`] entries per payment. The earliest are kept (they
//! include `pushed`); the last [`FINAL_RESERVE`] places are kept for `final` entries (a
//! final state, and its one possible correction), so the final decision always survives.
//! An entry that finds no room is counted in the payment hash's `histDropped` field,
//! shown as `truncated`.
//!
//! **Redaction.** Phone numbers are masked (`ids::mask_phone`); callback tokens, nonces,
//! phone digests, webhook URLs and secrets never appear.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::payment::{FailureReason, PaymentOutcome, PaymentStatus, ResultCode};

/// Most entries kept per payment (the list's bound).
pub const MAX_ENTRIES: usize = 64;

/// Places at the end of the list only `final` entries may take: a final state and its
/// one possible correction (version 3).
pub const FINAL_RESERVE: usize = 2;

/// What happened, with its details (the entry's `type` and fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HistoryEvent {
    /// Daraja accepted the push and the pending record was written.
    Pushed(Pushed),
    /// A callback was received for this payment.
    Callback(CallbackEntry),
    /// Reconciliation asked Daraja's STK Push Query.
    QueryAsked(QueryAsked),
    /// STK Push Query's answer (or why there was none).
    QueryAnswer(QueryAnswer),
    /// One delivery attempt of a webhook event.
    WebhookAttempt(WebhookAttempt),
    /// The payment became final (or was corrected).
    Final(FinalEntry),
}

/// The push as normalised: never a token or a secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pushed {
    pub amount: u32,
    /// Masked, e.g. `2547******78`.
    pub phone_number: String,
    pub account_reference: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Whether webhook events go somewhere for this payment (never the URL itself).
    pub webhook: bool,
}

/// A received callback, redacted (masked phone; never the callback token or nonce).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallbackEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_code: Option<ResultCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_desc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mpesa_receipt_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<u32>,
    /// Masked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_number: Option<String>,
    /// What the store decided for it; set by the store's script, absent only in the
    /// request the caller hands to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<CallbackDecision>,
    /// With `mismatch`: what differs from the push (`amount`, `phone`,
    /// `merchantRequestId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<String>>,
}

impl CallbackEntry {
    /// The entry for a callback that carried `outcome` (whose phone is already masked).
    pub fn of(outcome: &PaymentOutcome) -> Self {
        Self {
            result_code: outcome.result_code.clone(),
            result_desc: Some(outcome.result_desc.clone()),
            mpesa_receipt_number: outcome.mpesa_receipt_number.clone(),
            amount: outcome.amount,
            phone_number: outcome.phone_number.clone(),
            decision: None,
            fields: None,
        }
    }
}

/// What `payment.lua` decided for a callback (its reply, in lower case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallbackDecision {
    /// It made the payment final.
    Applied,
    /// The payment was already final (or this early callback was already kept).
    Duplicate,
    /// It does not match the push (see `fields`); handed to reconciliation.
    Mismatch,
    /// It came before the pending record; kept for it.
    Early,
    /// It came before the pending record and no more early callbacks could be kept.
    EarlyFull,
    /// A success kept until STK Push Query confirms it.
    AwaitingConfirmation,
    /// Its callback token belongs to another push.
    Forbidden,
    /// A genuine callback after the payment was closed `UNCONFIRMED`: version 3.
    Corrected,
}

/// One STK Push Query asked by reconciliation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryAsked {}

/// STK Push Query's answer: Daraja's result code and description, or `error` (the kind
/// of failure: `transport`, `rejected`, …) when it gave none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryAnswer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_code: Option<ResultCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_desc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One attempt to deliver a webhook event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookAttempt {
    pub event_id: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The merchant's HTTP status, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// Why no status: `timeout`, `connect`, `request`, `url`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub outcome: WebhookOutcome,
}

/// What a webhook attempt led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookOutcome {
    Delivered,
    Retry,
    Dead,
}

/// The final decision: what made the payment final, and the status it got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FinalEntry {
    pub cause: FinalCause,
    pub status: PaymentStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<FailureReason>,
    /// 2 for a final state, 3 for a correction.
    pub version: u64,
}

/// What made a payment final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalCause {
    /// A callback (including an early one applied when the pending record was written).
    Callback,
    /// An STK Push Query answer (including one confirming a kept callback).
    Query,
    /// Reconciliation gave up: closed as `UNCONFIRMED`.
    Unconfirmed,
    /// A genuine callback after `UNCONFIRMED` (version 3).
    Correction,
}

/// One entry of the API's answer: `{"at": "<RFC 3339 ms UTC>", "type": …, …}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    #[serde(with = "rfc3339_ms")]
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub event: HistoryEvent,
}

/// `GET /v1/payments/{id}/history`'s body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentHistory {
    pub checkout_request_id: String,
    pub entries: Vec<HistoryEntry>,
    /// Entries not kept because the list was full.
    pub truncated: u64,
}

/// An entry as stored in Redis: `at` in Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEntry {
    pub at: i64,
    #[serde(flatten)]
    pub event: HistoryEvent,
}

impl StoredEntry {
    /// An entry stamped with `at`.
    pub fn new(at: DateTime<Utc>, event: HistoryEvent) -> Self {
        Self {
            at: at.timestamp_millis(),
            event,
        }
    }

    /// The JSON stored in the list.
    pub fn encode(&self) -> String {
        // Plain structs of strings and numbers: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The API's form; `None` if `at` is out of range.
    pub fn into_entry(self) -> Option<HistoryEntry> {
        Some(HistoryEntry {
            at: Utc.timestamp_millis_opt(self.at).single()?,
            event: self.event,
        })
    }
}

/// An event without `at`, as handed to the payment script (which stamps it): the JSON
/// array of `events`.
pub fn encode_unstamped(events: &[HistoryEvent]) -> String {
    serde_json::to_string(events).unwrap_or_else(|_| "[]".to_owned())
}

/// Decodes stored list items, oldest first, skipping (and logging) any unreadable one.
pub fn decode_stored(id: &str, items: &[String]) -> Vec<HistoryEntry> {
    items
        .iter()
        .filter_map(|raw| {
            match serde_json::from_str::<StoredEntry>(raw)
                .ok()
                .and_then(StoredEntry::into_entry)
            {
                Some(e) => Some(e),
                None => {
                    tracing::warn!(checkout_request_id = %id, "unreadable history entry skipped");
                    None
                }
            }
        })
        .collect()
}

/// RFC 3339 with milliseconds, UTC (`2024-07-21T09:51:30.123Z`).
pub mod rfc3339_ms {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

impl HistoryEntry {
    /// `at` as the API writes it.
    pub fn at_text(&self) -> String {
        self.at.to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}

impl HistoryEvent {
    /// The entry's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Pushed(_) => "pushed",
            Self::Callback(_) => "callback",
            Self::QueryAsked(_) => "query_asked",
            Self::QueryAnswer(_) => "query_answer",
            Self::WebhookAttempt(_) => "webhook_attempt",
            Self::Final(_) => "final",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_entry_json() {
        let at = Utc
            .timestamp_millis_opt(1_721_555_490_123)
            .single()
            .unwrap();
        let e = HistoryEntry {
            at,
            event: HistoryEvent::Callback(CallbackEntry {
                result_code: Some(ResultCode::Code(0)),
                result_desc: Some("ok".into()),
                mpesa_receipt_number: Some("NLJ7RT61SV".into()),
                amount: Some(100),
                phone_number: Some("2547******78".into()),
                decision: Some(CallbackDecision::Applied),
                fields: None,
            }),
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"at": "2024-07-21T09:51:30.123Z", "type": "callback",
                "resultCode": 0, "resultDesc": "ok", "mpesaReceiptNumber": "NLJ7RT61SV",
                "amount": 100, "phoneNumber": "2547******78", "decision": "applied"})
        );
        assert_eq!(serde_json::from_value::<HistoryEntry>(v).unwrap(), e);
        let q = serde_json::to_value(HistoryEvent::QueryAsked(QueryAsked {})).unwrap();
        assert_eq!(q, serde_json::json!({"type": "query_asked"}));
    }

    #[test]
    fn stored_entries_decode_and_skip_garbage() {
        let items = vec![
            r#"{"at":1721555490123,"type":"final","cause":"query","status":"FAILED","reason":"CANCELLED_BY_USER","version":2}"#.to_owned(),
            "not json".to_owned(),
        ];
        let got = decode_stored("ws_CO_1", &items);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].at_text(), "2024-07-21T09:51:30.123Z");
        assert!(matches!(
            &got[0].event,
            HistoryEvent::Final(FinalEntry {
                cause: FinalCause::Query,
                version: 2,
                ..
            })
        ));
    }
}
