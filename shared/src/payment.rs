//! A payment's state and its one transition, PENDING → final.
//!
//! [`PaymentState`] is the `STATE` object of the public API (camelCase, see
//! `docs/api.md`): it is what Redis stores, what the channel carries and what browsers
//! receive. [`PaymentOutcome`] is a final result as learned from a callback (or, later,
//! from STK Push Query); [`PaymentState::apply`] is the transition. The Redis store runs
//! the same merge inside its Lua script, so both paths agree; the unit tests below pin it.

use chrono::{DateTime, FixedOffset, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{CheckoutRequestId, MerchantRequestId};

/// Where a payment stands. Only `PENDING` can change, and only once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentStatus {
    Pending,
    Success,
    Failed,
}

impl PaymentStatus {
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Pending)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Success => "SUCCESS",
            Self::Failed => "FAILED",
        }
    }
}

/// Machine-readable reason for a `FAILED` payment, derived from Daraja's ResultCode
/// (`../shared/daraja.md` §5). Never derived from ResultDesc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailureReason {
    /// 1: the balance (including Fuliza) is insufficient.
    InsufficientFunds,
    /// 2, 3: declined by a minimum/maximum amount rule.
    AmountLimit,
    /// 4: would exceed the customer's daily transfer limit.
    DailyLimit,
    /// 8: would exceed the merchant's maximum balance.
    MerchantBalanceLimit,
    /// 17: the same amount to the same customer within two minutes.
    DuplicateRequest,
    /// 26: M-Pesa is busy; retry later with a new push.
    SystemBusy,
    /// 1001: another M-Pesa session is open on the phone.
    SubscriberBusy,
    /// 1031, 1032: the buyer pressed Cancel.
    CancelledByUser,
    /// 1019, 1036, 1037, SFC_IC0003: the phone was unreachable or the buyer did not answer in time.
    Timeout,
    /// 1025, 9999: Daraja could not send the prompt.
    PushFailed,
    /// 2001: wrong M-Pesa PIN.
    WrongPin,
    /// 2028: the shortcode may not use this transaction type (a configuration error).
    NotPermitted,
    /// 8006: the buyer's PIN is locked.
    PinLocked,
    /// SFC_J_C0003: the operator does not exist.
    OperatorNotFound,
    /// Any other code: a final non-success all the same.
    Unknown,
    /// No callback and no final STK Push Query answer within `reconcile.max_age_secs`:
    /// the outcome could not be confirmed. Final for browsers; a genuine callback that
    /// arrives later is recorded as a correction (version 3).
    Unconfirmed,
}

/// Daraja's ResultCode: a number in callbacks, a numeric string in STK Push Query, and
/// occasionally a non-numeric code such as `SFC_IC0003`. Serialised as a JSON number
/// when numeric, else as a string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ResultCode {
    Code(i64),
    Other(String),
}

impl ResultCode {
    /// Longest non-numeric code we keep.
    pub const MAX_LEN: usize = 32;

    /// Builds a code from its string form: numeric strings become numbers.
    pub fn from_text(s: &str) -> Option<Self> {
        let t = s.trim();
        if t.is_empty() || t.len() > Self::MAX_LEN {
            return None;
        }
        if let Ok(n) = t.parse::<i64>() {
            return Some(Self::Code(n));
        }
        if t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        {
            Some(Self::Other(t.to_owned()))
        } else {
            None
        }
    }

    pub fn is_success(&self) -> bool {
        matches!(self, Self::Code(0))
    }

    /// The status and reason this code means.
    pub fn classify(&self) -> (PaymentStatus, Option<FailureReason>) {
        use FailureReason as R;
        let reason = match self {
            Self::Code(0) => return (PaymentStatus::Success, None),
            Self::Code(1) => R::InsufficientFunds,
            Self::Code(2 | 3) => R::AmountLimit,
            Self::Code(4) => R::DailyLimit,
            Self::Code(8) => R::MerchantBalanceLimit,
            Self::Code(17) => R::DuplicateRequest,
            Self::Code(26) => R::SystemBusy,
            Self::Code(1001) => R::SubscriberBusy,
            Self::Code(1031 | 1032) => R::CancelledByUser,
            Self::Code(1019 | 1036 | 1037) => R::Timeout,
            Self::Code(1025 | 9999) => R::PushFailed,
            Self::Code(2001) => R::WrongPin,
            Self::Code(2028) => R::NotPermitted,
            Self::Code(8006) => R::PinLocked,
            Self::Other(s) if s.eq_ignore_ascii_case("SFC_IC0003") => R::Timeout,
            Self::Other(s) if s.eq_ignore_ascii_case("SFC_J_C0003") => R::OperatorNotFound,
            _ => R::Unknown,
        };
        (PaymentStatus::Failed, Some(reason))
    }
}

impl std::fmt::Display for ResultCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Code(n) => n.fmt(f),
            Self::Other(s) => f.write_str(s),
        }
    }
}

/// Where a final result came from. Only a callback carries a receipt number: STK Push
/// Query answers without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ResultSource {
    /// Daraja's callback (with `callbacks.confirm_with_query`, one that STK Push Query
    /// then confirmed).
    Callback,
    /// An STK Push Query answer, asked by reconciliation because no callback came: a
    /// SUCCESS from it has no `mpesaReceiptNumber`.
    StkQuery,
    /// Nothing answered within `reconcile.max_age_secs`: the payment was closed as
    /// `UNCONFIRMED`.
    Reconciliation,
}

/// The public `STATE` object. Field names and types are the API contract; the golden
/// test in this module pins them. Key order is not part of the contract: the store's
/// script re-encodes final states.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentState {
    pub checkout_request_id: CheckoutRequestId,
    pub merchant_request_id: MerchantRequestId,
    pub status: PaymentStatus,
    pub reason: Option<FailureReason>,
    pub result_code: Option<ResultCode>,
    pub result_desc: Option<String>,
    pub mpesa_receipt_number: Option<String>,
    pub amount: Option<u32>,
    /// Masked, e.g. `2547******78`. The full number is never stored.
    pub phone_number: Option<String>,
    /// Daraja's TransactionDate as ISO 8601 in EAT, e.g. `2024-07-21T12:51:30+03:00`.
    pub transaction_date: Option<String>,
    /// When this version of the state was written (RFC 3339, UTC).
    pub timestamp: DateTime<Utc>,
    /// When the payment became final (RFC 3339, UTC); null while pending.
    pub completed_at: Option<DateTime<Utc>>,
    /// Where the final result came from; null while pending.
    #[serde(default)]
    pub result_source: Option<ResultSource>,
    /// 1 while pending, 2 once final, 3 for a correction after `UNCONFIRMED`. Clients keep
    /// the highest version they have seen.
    pub version: u64,
}

/// The two fields of a stored or published STATE that its holders act on; the rest of the
/// JSON passes through untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct StateHead {
    pub status: PaymentStatus,
    pub version: u64,
}

impl StateHead {
    /// Reads the head of a STATE JSON without decoding the rest.
    pub fn parse(state_json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(state_json)
    }
}

/// A final result for one payment, from a callback or a status query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentOutcome {
    pub status: PaymentStatus,
    pub reason: Option<FailureReason>,
    /// `None` only for [`FailureReason::Unconfirmed`], which no Daraja answer produced.
    pub result_code: Option<ResultCode>,
    pub result_desc: String,
    pub mpesa_receipt_number: Option<String>,
    pub amount: Option<u32>,
    /// Already masked.
    pub phone_number: Option<String>,
    pub transaction_date: Option<String>,
    pub completed_at: DateTime<Utc>,
    /// Where this outcome came from.
    pub result_source: Option<ResultSource>,
}

impl PaymentOutcome {
    /// An outcome from a result code and description; status and reason follow the code.
    /// The description came from Daraja: it is cleaned (`crate::text::clean_external`).
    pub fn from_code(code: ResultCode, desc: String, completed_at: DateTime<Utc>) -> Self {
        let (status, reason) = code.classify();
        let result_desc = match crate::text::clean_external(&desc) {
            std::borrow::Cow::Borrowed(_) => desc,
            std::borrow::Cow::Owned(c) => c,
        };
        Self {
            status,
            reason,
            result_code: Some(code),
            result_desc,
            mpesa_receipt_number: None,
            amount: None,
            phone_number: None,
            transaction_date: None,
            completed_at,
            result_source: None,
        }
    }

    /// The same outcome, marked with where it came from.
    pub fn with_source(mut self, source: ResultSource) -> Self {
        self.result_source = Some(source);
        self
    }

    /// The outcome given to a payment that nothing confirmed within
    /// `reconcile.max_age_secs`: `FAILED` with reason `UNCONFIRMED` and no result code.
    pub fn unconfirmed(completed_at: DateTime<Utc>) -> Self {
        Self {
            status: PaymentStatus::Failed,
            reason: Some(FailureReason::Unconfirmed),
            result_code: None,
            result_desc: "The outcome of this payment could not be confirmed.".to_owned(),
            mpesa_receipt_number: None,
            amount: None,
            phone_number: None,
            transaction_date: None,
            completed_at,
            result_source: Some(ResultSource::Reconciliation),
        }
    }
}

/// Version number of a pending state.
pub const PENDING_VERSION: u64 = 1;
/// Version number of a final state.
pub const FINAL_VERSION: u64 = 2;
/// Version number of a correction: a genuine callback that arrived after the payment
/// had been closed as `UNCONFIRMED`. The only case in which a final state changes.
pub const CORRECTION_VERSION: u64 = 3;

/// What [`PaymentState::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The payment was pending and is now final.
    Applied,
    /// The payment was already final; nothing changed.
    AlreadyFinal,
}

impl PaymentState {
    /// The state recorded when Daraja accepts a push.
    pub fn pending(
        checkout_request_id: CheckoutRequestId,
        merchant_request_id: MerchantRequestId,
        amount: u32,
        masked_phone: String,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            checkout_request_id,
            merchant_request_id,
            status: PaymentStatus::Pending,
            reason: None,
            result_code: None,
            result_desc: None,
            mpesa_receipt_number: None,
            amount: Some(amount),
            phone_number: Some(masked_phone),
            transaction_date: None,
            timestamp: now,
            completed_at: None,
            result_source: None,
            version: PENDING_VERSION,
        }
    }

    /// The one transition: a pending payment takes the outcome's result; fields the
    /// outcome lacks (a failure callback has no amount or phone) keep the pending values.
    /// A final payment never changes again.
    pub fn apply(&mut self, outcome: &PaymentOutcome) -> Transition {
        if self.status.is_final() {
            return Transition::AlreadyFinal;
        }
        self.status = outcome.status;
        self.reason = outcome.reason;
        self.result_code = outcome.result_code.clone();
        self.result_desc = Some(outcome.result_desc.clone());
        if outcome.mpesa_receipt_number.is_some() {
            self.mpesa_receipt_number = outcome.mpesa_receipt_number.clone();
        }
        if outcome.amount.is_some() {
            self.amount = outcome.amount;
        }
        if outcome.phone_number.is_some() {
            self.phone_number = outcome.phone_number.clone();
        }
        if outcome.transaction_date.is_some() {
            self.transaction_date = outcome.transaction_date.clone();
        }
        self.timestamp = outcome.completed_at;
        self.completed_at = Some(outcome.completed_at);
        self.result_source = outcome.result_source;
        self.version = FINAL_VERSION;
        Transition::Applied
    }
}

/// Turns Daraja's `TransactionDate` (`YYYYMMDDHHmmss` in EAT) into ISO 8601 with the
/// `+03:00` offset. Returns `None` for anything that is not a real date and time.
pub fn transaction_date_iso(raw: u64) -> Option<String> {
    let s = raw.to_string();
    if s.len() != 14 {
        return None;
    }
    let naive = chrono::NaiveDateTime::parse_from_str(&s, "%Y%m%d%H%M%S").ok()?;
    let eat = FixedOffset::east_opt(3 * 3600)?;
    let dt = naive.and_local_timezone(eat).single()?;
    Some(dt.to_rfc3339_opts(chrono::SecondsFormat::Secs, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn pending() -> PaymentState {
        PaymentState::pending(
            CheckoutRequestId::parse("ws_CO_21072024125130652700961992").unwrap(),
            MerchantRequestId::parse("2654-4b64-97ff-b827b542881d3130").unwrap(),
            100,
            "2547******92".into(),
            at("2024-07-21T09:51:30Z"),
        )
    }

    #[test]
    fn state_golden_json() {
        let mut s = pending();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(
            json,
            r#"{"checkoutRequestId":"ws_CO_21072024125130652700961992","merchantRequestId":"2654-4b64-97ff-b827b542881d3130","status":"PENDING","reason":null,"resultCode":null,"resultDesc":null,"mpesaReceiptNumber":null,"amount":100,"phoneNumber":"2547******92","transactionDate":null,"timestamp":"2024-07-21T09:51:30Z","completedAt":null,"resultSource":null,"version":1}"#
        );
        let mut o = PaymentOutcome::from_code(
            ResultCode::Code(0),
            "The service request is processed successfully.".into(),
            at("2024-07-21T09:51:40Z"),
        )
        .with_source(ResultSource::Callback);
        o.mpesa_receipt_number = Some("NLJ7RT61SV".into());
        o.amount = Some(100);
        o.transaction_date = transaction_date_iso(20240721125138);
        assert_eq!(s.apply(&o), Transition::Applied);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(
            json,
            r#"{"checkoutRequestId":"ws_CO_21072024125130652700961992","merchantRequestId":"2654-4b64-97ff-b827b542881d3130","status":"SUCCESS","reason":null,"resultCode":0,"resultDesc":"The service request is processed successfully.","mpesaReceiptNumber":"NLJ7RT61SV","amount":100,"phoneNumber":"2547******92","transactionDate":"2024-07-21T12:51:38+03:00","timestamp":"2024-07-21T09:51:40Z","completedAt":"2024-07-21T09:51:40Z","resultSource":"CALLBACK","version":2}"#
        );
        let back: PaymentState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn final_state_never_changes() {
        let mut s = pending();
        let cancel = PaymentOutcome::from_code(
            ResultCode::Code(1032),
            "Request cancelled by user".into(),
            at("2024-07-21T09:52:00Z"),
        );
        assert_eq!(s.apply(&cancel), Transition::Applied);
        let before = s.clone();
        let success =
            PaymentOutcome::from_code(ResultCode::Code(0), "ok".into(), at("2024-07-21T09:53:00Z"));
        assert_eq!(s.apply(&success), Transition::AlreadyFinal);
        assert_eq!(s, before);
        // A failure keeps the amount and phone of the push.
        assert_eq!(s.amount, Some(100));
        assert_eq!(s.phone_number.as_deref(), Some("2547******92"));
        assert_eq!(s.reason, Some(FailureReason::CancelledByUser));
    }

    #[test]
    fn every_documented_code_classifies() {
        use FailureReason as R;
        let cases: &[(ResultCode, PaymentStatus, Option<FailureReason>)] = &[
            (ResultCode::Code(0), PaymentStatus::Success, None),
            (
                ResultCode::Code(1),
                PaymentStatus::Failed,
                Some(R::InsufficientFunds),
            ),
            (
                ResultCode::Code(2),
                PaymentStatus::Failed,
                Some(R::AmountLimit),
            ),
            (
                ResultCode::Code(3),
                PaymentStatus::Failed,
                Some(R::AmountLimit),
            ),
            (
                ResultCode::Code(4),
                PaymentStatus::Failed,
                Some(R::DailyLimit),
            ),
            (
                ResultCode::Code(8),
                PaymentStatus::Failed,
                Some(R::MerchantBalanceLimit),
            ),
            (
                ResultCode::Code(17),
                PaymentStatus::Failed,
                Some(R::DuplicateRequest),
            ),
            (
                ResultCode::Code(26),
                PaymentStatus::Failed,
                Some(R::SystemBusy),
            ),
            (
                ResultCode::Code(1001),
                PaymentStatus::Failed,
                Some(R::SubscriberBusy),
            ),
            (
                ResultCode::Code(1019),
                PaymentStatus::Failed,
                Some(R::Timeout),
            ),
            (
                ResultCode::Code(1025),
                PaymentStatus::Failed,
                Some(R::PushFailed),
            ),
            (
                ResultCode::Code(1031),
                PaymentStatus::Failed,
                Some(R::CancelledByUser),
            ),
            (
                ResultCode::Code(1032),
                PaymentStatus::Failed,
                Some(R::CancelledByUser),
            ),
            (
                ResultCode::Code(1036),
                PaymentStatus::Failed,
                Some(R::Timeout),
            ),
            (
                ResultCode::Code(1037),
                PaymentStatus::Failed,
                Some(R::Timeout),
            ),
            (
                ResultCode::Code(2001),
                PaymentStatus::Failed,
                Some(R::WrongPin),
            ),
            (
                ResultCode::Code(2028),
                PaymentStatus::Failed,
                Some(R::NotPermitted),
            ),
            (
                ResultCode::Code(8006),
                PaymentStatus::Failed,
                Some(R::PinLocked),
            ),
            (
                ResultCode::Code(9999),
                PaymentStatus::Failed,
                Some(R::PushFailed),
            ),
            (
                ResultCode::Code(424242),
                PaymentStatus::Failed,
                Some(R::Unknown),
            ),
            (
                ResultCode::Code(-1),
                PaymentStatus::Failed,
                Some(R::Unknown),
            ),
            (
                ResultCode::Other("SFC_IC0003".into()),
                PaymentStatus::Failed,
                Some(R::Timeout),
            ),
            (
                ResultCode::Other("SFC_J_C0003".into()),
                PaymentStatus::Failed,
                Some(R::OperatorNotFound),
            ),
            (
                ResultCode::Other("XYZ".into()),
                PaymentStatus::Failed,
                Some(R::Unknown),
            ),
        ];
        for (code, status, reason) in cases {
            assert_eq!(code.classify(), (*status, *reason), "{code}");
        }
    }

    #[test]
    fn result_code_from_text() {
        assert_eq!(ResultCode::from_text("1032"), Some(ResultCode::Code(1032)));
        assert_eq!(ResultCode::from_text(" 0 "), Some(ResultCode::Code(0)));
        assert_eq!(
            ResultCode::from_text("SFC_IC0003"),
            Some(ResultCode::Other("SFC_IC0003".into()))
        );
        assert_eq!(ResultCode::from_text(""), None);
        assert_eq!(ResultCode::from_text("a b"), None);
        assert_eq!(ResultCode::from_text(&"9".repeat(40)), None);
    }

    #[test]
    fn transaction_dates() {
        assert_eq!(
            transaction_date_iso(20191219102115).as_deref(),
            Some("2019-12-19T10:21:15+03:00")
        );
        assert_eq!(transaction_date_iso(20191319102115), None);
        assert_eq!(transaction_date_iso(2019121910211), None);
        assert_eq!(transaction_date_iso(0), None);
    }
}
