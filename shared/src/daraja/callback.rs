//! Parsing the STK callback that Daraja POSTs to our `CallBackURL` (`Body.stkCallback`).
//!
//! The callback is unsigned, so the body is untrusted input. [`parse_callback`] turns raw
//! bytes into a typed [`StkCallback`] or a [`CallbackError`] naming the offending field;
//! [`StkCallback::to_outcome`] turns it into the [`PaymentOutcome`] that the one state
//! transition applies. Whether the callback is *trusted* (path secret, source address,
//! correlation with our pending push) is decided by callback-ingest, not here.
//!
//! Wire format and result codes: `shared/daraja.md` §4 and §5.
//!
//! # Hostile input
//! - Bodies over [`MAX_CALLBACK_BYTES`] are rejected before anything is read.
//! - Nesting deeper than [`MAX_JSON_DEPTH`] is rejected by a byte scan (which skips
//!   strings and escapes) before serde_json sees the body.
//! - Duplicate keys in any object are rejected ([`CallbackError::DuplicateKey`]): a
//!   body with two `ResultCode`s means different things to different parsers.
//! - `ResultDesc` longer than [`MAX_RESULT_DESC_CHARS`] characters and more than
//!   [`MAX_METADATA_ITEMS`] metadata items are rejected rather than truncated.
//! - Nothing here panics on input; every allocation is bounded by the body cap.
//!
//! # Strict about what must be there
//! `Body`, `Body.stkCallback`, `MerchantRequestID`, `CheckoutRequestID` (both through the
//! id newtypes, which restrict length and alphabet) and `ResultCode`. Absent or `null`
//! is [`CallbackError::Missing`]; a wrong type is [`CallbackError::Invalid`]. A success
//! (`ResultCode` 0) without a well-formed `MpesaReceiptNumber` is invalid: only 0 plus a
//! receipt means paid. A known metadata item that appears twice is invalid.
//!
//! # Tolerant of what Daraja (and forwarders) really send
//! - `ResultCode` as a number, a numeric string, or a code such as `SFC_IC0003`.
//! - `ResultDesc` absent or `null` becomes `""` (it is informational only; we never
//!   switch on it).
//! - `CallbackMetadata.Item` in any order; unknown items and unknown keys anywhere are
//!   ignored; an item whose `Value` is absent or `null` counts as absent.
//! - `Amount` as a number (`1`, `1.00`) or a numeric string (`"1"`, `"1.00"`); fractional,
//!   zero or negative amounts are invalid.
//! - `TransactionDate` as an integer or a 14-digit string; it must be a real date. Never
//!   read through a float.
//! - `PhoneNumber` as a number or a string, normalised with [`Msisdn::parse`]. It is the
//!   least essential field: a phone that does not parse (masked, foreign, wrong type) is
//!   dropped with a debug log instead of rejecting the callback.
//! - `Balance` (often sent without a `Value`) is kept as text when it is a number or a
//!   short string, and otherwise dropped.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::ids::{CheckoutRequestId, MerchantRequestId, Msisdn, ValidationError};
use crate::payment::{transaction_date_iso, PaymentOutcome, ResultCode, ResultSource};

/// Largest callback body we read. Genuine callbacks are well under 1 KiB.
pub const MAX_CALLBACK_BYTES: usize = 64 * 1024;
/// Deepest nesting of arrays and objects we accept. A genuine callback nests 6 deep.
pub const MAX_JSON_DEPTH: usize = 32;
/// Longest `ResultDesc`, in characters. Longer ones are rejected, not truncated.
pub const MAX_RESULT_DESC_CHARS: usize = 1024;
/// Most entries in `CallbackMetadata.Item`. Genuine callbacks carry at most 5.
pub const MAX_METADATA_ITEMS: usize = 32;
/// Longest `MpesaReceiptNumber`. Real receipts are 10 characters.
pub const MAX_RECEIPT_LEN: usize = 20;
/// Longest `Balance` text we keep.
const MAX_BALANCE_CHARS: usize = 64;
/// Longest key quoted back in a [`CallbackError::DuplicateKey`] message.
const MAX_QUOTED_KEY_CHARS: usize = 40;

/// The field paths used in error messages, spelled as Daraja spells them.
mod path {
    pub const ROOT: &str = "callback";
    pub const BODY: &str = "Body";
    pub const STK_CALLBACK: &str = "Body.stkCallback";
    pub const MERCHANT_REQUEST_ID: &str = "Body.stkCallback.MerchantRequestID";
    pub const CHECKOUT_REQUEST_ID: &str = "Body.stkCallback.CheckoutRequestID";
    pub const RESULT_CODE: &str = "Body.stkCallback.ResultCode";
    pub const RESULT_DESC: &str = "Body.stkCallback.ResultDesc";
    pub const METADATA: &str = "Body.stkCallback.CallbackMetadata";
    pub const ITEMS: &str = "Body.stkCallback.CallbackMetadata.Item";
    pub const AMOUNT: &str = "Body.stkCallback.CallbackMetadata.Item.Amount";
    pub const RECEIPT: &str = "Body.stkCallback.CallbackMetadata.Item.MpesaReceiptNumber";
    pub const TRANSACTION_DATE: &str = "Body.stkCallback.CallbackMetadata.Item.TransactionDate";
    pub const PHONE: &str = "Body.stkCallback.CallbackMetadata.Item.PhoneNumber";
    pub const BALANCE: &str = "Body.stkCallback.CallbackMetadata.Item.Balance";
}

/// Why a callback body was rejected. Messages name the field and never echo a phone
/// number or the body itself.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CallbackError {
    #[error("callback body is {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("callback body is empty")]
    Empty,
    #[error("callback body nests deeper than {limit} levels")]
    TooDeep { limit: usize },
    #[error("callback body is not valid JSON: {0}")]
    NotJson(String),
    #[error("callback body has a duplicate key: {0}")]
    DuplicateKey(String),
    #[error("{field} is required")]
    Missing { field: &'static str },
    #[error("{field} is invalid: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl CallbackError {
    /// The field the error is about (a path such as `Body.stkCallback.ResultCode`), if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Missing { field } | Self::Invalid { field, .. } => Some(field),
            Self::TooLarge { .. }
            | Self::Empty
            | Self::TooDeep { .. }
            | Self::NotJson(_)
            | Self::DuplicateKey(_) => None,
        }
    }

    fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            reason: reason.into(),
        }
    }

    fn from_validation(field: &'static str, e: ValidationError) -> Self {
        match e {
            ValidationError::Missing { .. } => Self::Missing { field },
            ValidationError::Invalid { reason, .. } => Self::invalid(field, reason),
        }
    }
}

/// `Body.stkCallback`, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct StkCallback {
    pub merchant_request_id: MerchantRequestId,
    pub checkout_request_id: CheckoutRequestId,
    pub result_code: ResultCode,
    /// Informational only; `""` when Daraja sent none.
    pub result_desc: String,
    /// Daraja sends `CallbackMetadata` only on success; if a failure carries one anyway
    /// it is parsed (and validated) the same way.
    pub metadata: CallbackMetadata,
}

/// The items of `CallbackMetadata.Item` we use. Each is `None` when absent or `null`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CallbackMetadata {
    /// Whole shillings.
    pub amount: Option<u32>,
    /// 1 to 20 uppercase letters and digits (real ones are 10).
    pub mpesa_receipt_number: Option<String>,
    /// Raw `YYYYMMDDHHmmss` in EAT; always a real date when present.
    pub transaction_date: Option<u64>,
    pub phone: Option<Msisdn>,
    /// As sent; Daraja documents a decimal but usually sends no value.
    pub balance: Option<String>,
}

impl StkCallback {
    /// The final result this callback reports. Status and reason come from the
    /// `ResultCode` alone; the description is cleaned; the phone is masked; the
    /// transaction date becomes ISO 8601 in EAT; `completed_at` is `now`. Only a success
    /// carries receipt, amount, phone and date: a failure carries none of them, whatever
    /// its CallbackMetadata says.
    pub fn to_outcome(&self, now: DateTime<Utc>) -> PaymentOutcome {
        let mut outcome =
            PaymentOutcome::from_code(self.result_code.clone(), self.result_desc.clone(), now)
                .with_source(ResultSource::Callback);
        if !self.result_code.is_success() {
            return outcome;
        }
        outcome.mpesa_receipt_number = self.metadata.mpesa_receipt_number.clone();
        outcome.amount = self.metadata.amount;
        outcome.phone_number = self.metadata.phone.as_ref().map(Msisdn::masked);
        outcome.transaction_date = self
            .metadata
            .transaction_date
            .and_then(transaction_date_iso);
        outcome
    }
}

/// Parses a raw callback body. See the module docs for what is accepted and rejected.
pub fn parse_callback(body: &[u8]) -> Result<StkCallback, CallbackError> {
    if body.len() > MAX_CALLBACK_BYTES {
        return Err(CallbackError::TooLarge {
            size: body.len(),
            limit: MAX_CALLBACK_BYTES,
        });
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(CallbackError::Empty);
    }
    if nesting_exceeds(body, MAX_JSON_DEPTH) {
        return Err(CallbackError::TooDeep {
            limit: MAX_JSON_DEPTH,
        });
    }
    let root: Value =
        serde_json::from_slice(body).map_err(|e| CallbackError::NotJson(e.to_string()))?;
    reject_duplicate_keys(body)?;
    callback_from_value(&root)
}

/// True when arrays/objects nest deeper than `limit`. Brackets inside strings (including
/// escaped quotes) are not counted. Exact for valid JSON; for invalid JSON the answer
/// does not matter, since serde_json rejects it anyway.
fn nesting_exceeds(body: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Marks serde errors raised by [`DuplicateKeyCheck`], to tell them from syntax errors.
const DUPLICATE_MARKER: &str = "duplicate key ";

/// A second pass over an already-valid body that fails on the first object holding the
/// same key twice (after unescaping, as serde_json compares them). `serde_json::Value`
/// would silently keep the last one.
fn reject_duplicate_keys(body: &[u8]) -> Result<(), CallbackError> {
    match serde_json::from_slice::<DuplicateKeyCheck>(body) {
        Ok(_) => Ok(()),
        Err(e) => {
            let msg = e.to_string();
            if msg.starts_with(DUPLICATE_MARKER) {
                Err(CallbackError::DuplicateKey(msg))
            } else {
                Err(CallbackError::NotJson(msg))
            }
        }
    }
}

struct DuplicateKeyCheck;

impl<'de> Deserialize<'de> for DuplicateKeyCheck {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DuplicateKeyCheck)
    }
}

impl<'de> Visitor<'de> for DuplicateKeyCheck {
    type Value = DuplicateKeyCheck;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_i128<E>(self, _: i128) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_u128<E>(self, _: u128) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_none<E>(self) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self, D::Error> {
        DuplicateKeyCheck::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<DuplicateKeyCheck>()?.is_some() {}
        Ok(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        let mut seen = BTreeSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if seen.contains(&key) {
                let quoted: String = key.chars().take(MAX_QUOTED_KEY_CHARS).collect();
                return Err(serde::de::Error::custom(format_args!(
                    "{DUPLICATE_MARKER}{quoted:?}"
                )));
            }
            map.next_value::<DuplicateKeyCheck>()?;
            seen.insert(key);
        }
        Ok(self)
    }
}

/// "an array", "a string", … for error messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The value under `key`, treating `null` like an absent key.
fn get<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn required_object<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<&'a Map<String, Value>, CallbackError> {
    match get(obj, key) {
        None => Err(CallbackError::Missing { field }),
        Some(Value::Object(m)) => Ok(m),
        Some(other) => Err(CallbackError::invalid(
            field,
            format!("must be an object, found {}", kind(other)),
        )),
    }
}

fn required_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<&'a str, CallbackError> {
    match get(obj, key) {
        None => Err(CallbackError::Missing { field }),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(CallbackError::invalid(
            field,
            format!("must be a string, found {}", kind(other)),
        )),
    }
}

fn callback_from_value(root: &Value) -> Result<StkCallback, CallbackError> {
    let Value::Object(root) = root else {
        return Err(CallbackError::invalid(
            path::ROOT,
            format!("must be a JSON object, found {}", kind(root)),
        ));
    };
    let body = required_object(root, "Body", path::BODY)?;
    let cb = required_object(body, "stkCallback", path::STK_CALLBACK)?;

    let merchant_request_id = MerchantRequestId::parse(required_str(
        cb,
        "MerchantRequestID",
        path::MERCHANT_REQUEST_ID,
    )?)
    .map_err(|e| CallbackError::from_validation(path::MERCHANT_REQUEST_ID, e))?;
    let checkout_request_id = CheckoutRequestId::parse(required_str(
        cb,
        "CheckoutRequestID",
        path::CHECKOUT_REQUEST_ID,
    )?)
    .map_err(|e| CallbackError::from_validation(path::CHECKOUT_REQUEST_ID, e))?;
    let result_code = result_code(cb)?;
    let result_desc = result_desc(cb)?;
    let metadata = metadata(cb)?;

    if result_code.is_success() && metadata.mpesa_receipt_number.is_none() {
        return Err(CallbackError::invalid(
            path::RECEIPT,
            "is required when ResultCode is 0 (success)",
        ));
    }
    Ok(StkCallback {
        merchant_request_id,
        checkout_request_id,
        result_code,
        result_desc,
        metadata,
    })
}

fn result_code(cb: &Map<String, Value>) -> Result<ResultCode, CallbackError> {
    const F: &str = path::RESULT_CODE;
    match get(cb, "ResultCode") {
        None => Err(CallbackError::Missing { field: F }),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(ResultCode::Code)
            .ok_or_else(|| CallbackError::invalid(F, "must be a whole number")),
        Some(Value::String(s)) if s.trim().is_empty() => Err(CallbackError::Missing { field: F }),
        Some(Value::String(s)) => ResultCode::from_text(s).ok_or_else(|| {
            CallbackError::invalid(
                F,
                "must be a number or a code of at most 32 letters, digits, '_' and '.'",
            )
        }),
        Some(other) => Err(CallbackError::invalid(
            F,
            format!("must be a number or a string, found {}", kind(other)),
        )),
    }
}

fn result_desc(cb: &Map<String, Value>) -> Result<String, CallbackError> {
    const F: &str = path::RESULT_DESC;
    match get(cb, "ResultDesc") {
        None => Ok(String::new()),
        Some(Value::String(s)) => {
            if s.chars().nth(MAX_RESULT_DESC_CHARS).is_some() {
                Err(CallbackError::invalid(
                    F,
                    format!("longer than {MAX_RESULT_DESC_CHARS} characters"),
                ))
            } else {
                Ok(s.clone())
            }
        }
        Some(other) => Err(CallbackError::invalid(
            F,
            format!("must be a string, found {}", kind(other)),
        )),
    }
}

/// The metadata items we know, by `Name`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Item {
    Amount,
    Receipt,
    TransactionDate,
    Phone,
    Balance,
}

impl Item {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "Amount" => Self::Amount,
            "MpesaReceiptNumber" => Self::Receipt,
            "TransactionDate" => Self::TransactionDate,
            "PhoneNumber" => Self::Phone,
            "Balance" => Self::Balance,
            _ => return None,
        })
    }

    fn field(self) -> &'static str {
        match self {
            Self::Amount => path::AMOUNT,
            Self::Receipt => path::RECEIPT,
            Self::TransactionDate => path::TRANSACTION_DATE,
            Self::Phone => path::PHONE,
            Self::Balance => path::BALANCE,
        }
    }
}

fn metadata(cb: &Map<String, Value>) -> Result<CallbackMetadata, CallbackError> {
    let mut out = CallbackMetadata::default();
    let Some(meta) = get(cb, "CallbackMetadata") else {
        return Ok(out);
    };
    let Value::Object(meta) = meta else {
        return Err(CallbackError::invalid(
            path::METADATA,
            format!("must be an object, found {}", kind(meta)),
        ));
    };
    let items = match get(meta, "Item") {
        None => return Ok(out),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(CallbackError::invalid(
                path::ITEMS,
                format!("must be an array, found {}", kind(other)),
            ))
        }
    };
    if items.len() > MAX_METADATA_ITEMS {
        return Err(CallbackError::invalid(
            path::ITEMS,
            format!("has more than {MAX_METADATA_ITEMS} entries"),
        ));
    }

    let mut seen = BTreeSet::new();
    for entry in items {
        let Value::Object(entry) = entry else {
            return Err(CallbackError::invalid(
                path::ITEMS,
                format!("entries must be objects, found {}", kind(entry)),
            ));
        };
        let Some(Value::String(name)) = get(entry, "Name") else {
            return Err(CallbackError::invalid(
                path::ITEMS,
                "every entry needs a string Name",
            ));
        };
        // Unknown items are ignored, whatever their value.
        let Some(item) = Item::from_name(name) else {
            continue;
        };
        if !seen.insert(item) {
            return Err(CallbackError::invalid(
                item.field(),
                "appears more than once",
            ));
        }
        let Some(value) = get(entry, "Value") else {
            continue;
        };
        match item {
            Item::Amount => out.amount = Some(amount(value)?),
            Item::Receipt => out.mpesa_receipt_number = Some(receipt(value)?),
            Item::TransactionDate => out.transaction_date = Some(transaction_date(value)?),
            Item::Phone => out.phone = phone(value),
            Item::Balance => out.balance = balance(value),
        }
    }
    Ok(out)
}

fn amount(v: &Value) -> Result<u32, CallbackError> {
    const F: &str = path::AMOUNT;
    const WHOLE: &str = "must be a whole number of shillings";
    const AT_LEAST_1: &str = "must be at least 1";
    const TOO_LARGE: &str = "is too large";
    let whole: u64 = match v {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                u
            } else if n.is_i64() {
                return Err(CallbackError::invalid(F, AT_LEAST_1));
            } else {
                // A float such as Daraja's sample `1.00`: accepted only when whole.
                let f = n.as_f64().unwrap_or(f64::NAN);
                if !f.is_finite() || f.fract() != 0.0 {
                    return Err(CallbackError::invalid(F, WHOLE));
                }
                if f < 1.0 {
                    return Err(CallbackError::invalid(F, AT_LEAST_1));
                }
                if f > f64::from(u32::MAX) {
                    return Err(CallbackError::invalid(F, TOO_LARGE));
                }
                f as u64
            }
        }
        Value::String(s) => amount_text(s.trim())?,
        other => {
            return Err(CallbackError::invalid(
                F,
                format!("must be a number, found {}", kind(other)),
            ))
        }
    };
    if whole == 0 {
        return Err(CallbackError::invalid(F, AT_LEAST_1));
    }
    u32::try_from(whole).map_err(|_| CallbackError::invalid(F, TOO_LARGE))
}

/// `"100"` or `"100.00"`; anything else (signs, exponents, real fractions) is invalid.
fn amount_text(s: &str) -> Result<u64, CallbackError> {
    const F: &str = path::AMOUNT;
    let (int, frac) = match s.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (s, None),
    };
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || int.len() > 10 || frac.is_some_and(|f| !digits(f) || f.len() > 10) {
        return Err(CallbackError::invalid(F, "must be a number"));
    }
    if frac.is_some_and(|f| f.bytes().any(|b| b != b'0')) {
        return Err(CallbackError::invalid(
            F,
            "must be a whole number of shillings",
        ));
    }
    int.parse()
        .map_err(|_| CallbackError::invalid(F, "must be a number"))
}

fn receipt(v: &Value) -> Result<String, CallbackError> {
    const F: &str = path::RECEIPT;
    match v {
        Value::String(s)
            if (1..=MAX_RECEIPT_LEN).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) =>
        {
            Ok(s.clone())
        }
        Value::String(_) => Err(CallbackError::invalid(
            F,
            format!("must be 1 to {MAX_RECEIPT_LEN} uppercase letters and digits"),
        )),
        other => Err(CallbackError::invalid(
            F,
            format!("must be a string, found {}", kind(other)),
        )),
    }
}

fn transaction_date(v: &Value) -> Result<u64, CallbackError> {
    const F: &str = path::TRANSACTION_DATE;
    const FORMAT: &str = "must be a date and time as 14 digits YYYYMMDDHHmmss";
    let raw = match v {
        // Integers only: a float cannot hold every 14-digit value exactly.
        Value::Number(n) => n.as_u64(),
        Value::String(s) if s.len() == 14 && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().ok()
        }
        Value::String(_) => None,
        other => {
            return Err(CallbackError::invalid(
                F,
                format!("must be a number, found {}", kind(other)),
            ))
        }
    };
    match raw {
        Some(raw) if transaction_date_iso(raw).is_some() => Ok(raw),
        _ => Err(CallbackError::invalid(F, FORMAT)),
    }
}

/// Never rejects: a phone that does not parse is dropped (it may be masked upstream).
fn phone(v: &Value) -> Option<Msisdn> {
    let parsed = match v {
        Value::String(s) => Msisdn::parse(s),
        Value::Number(n) => match n.as_u64() {
            Some(u) => Msisdn::parse(&u.to_string()),
            None => {
                tracing::debug!(
                    field = path::PHONE,
                    "ignoring a PhoneNumber that is not a whole number"
                );
                return None;
            }
        },
        other => {
            tracing::debug!(
                field = path::PHONE,
                found = kind(other),
                "ignoring a PhoneNumber of an unexpected type"
            );
            return None;
        }
    };
    match parsed {
        Ok(phone) => Some(phone),
        Err(e) => {
            // The error never echoes the number.
            tracing::debug!(field = path::PHONE, error = %e, "ignoring an unparseable PhoneNumber");
            None
        }
    }
}

/// Never rejects: informational only.
fn balance(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() && s.chars().nth(MAX_BALANCE_CHARS).is_none() => {
            Some(s.clone())
        }
        other => {
            tracing::debug!(
                field = path::BALANCE,
                found = kind(other),
                "ignoring an empty, overlong or oddly typed Balance"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payment::{FailureReason, PaymentStatus};
    use serde_json::json;

    const DOC_SUCCESS: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/callbacks/ok_doc_success.json"
    ));
    const DOC_FAILURE: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/callbacks/ok_doc_failure_1032.json"
    ));
    const CHECKOUT: &str = "ws_CO_191220191020363925";
    const MERCHANT: &str = "29115-34620561-1";

    fn ok(body: &[u8]) -> StkCallback {
        match parse_callback(body) {
            Ok(cb) => cb,
            Err(e) => panic!("expected a callback, got: {e}"),
        }
    }

    fn err(body: &[u8]) -> CallbackError {
        match parse_callback(body) {
            Ok(cb) => panic!("expected an error, got {cb:?}"),
            Err(e) => e,
        }
    }

    fn bytes(v: &Value) -> Vec<u8> {
        serde_json::to_vec(v).unwrap_or_default()
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_576_740_080, 0).unwrap_or_default()
    }

    fn receipt_item() -> Value {
        json!({"Name": "MpesaReceiptNumber", "Value": "NLJ7RT61SV"})
    }

    /// A callback with the given `stkCallback` fields merged over valid defaults.
    fn callback(overrides: Value) -> Value {
        let mut cb = json!({
            "MerchantRequestID": MERCHANT,
            "CheckoutRequestID": CHECKOUT,
            "ResultCode": 1032,
            "ResultDesc": "Request cancelled by user.",
        });
        if let (Some(cb), Value::Object(o)) = (cb.as_object_mut(), overrides) {
            for (k, v) in o {
                cb.insert(k, v);
            }
        }
        json!({"Body": {"stkCallback": cb}})
    }

    fn success_with(items: Value) -> Vec<u8> {
        bytes(&callback(json!({
            "ResultCode": 0,
            "ResultDesc": "The service request is processed successfully.",
            "CallbackMetadata": {"Item": items},
        })))
    }

    /// A success whose items are the receipt plus `extra`.
    fn success_plus(extra: Value) -> Vec<u8> {
        success_with(json!([receipt_item(), extra]))
    }

    fn without(key: &str) -> Vec<u8> {
        let mut v = callback(json!({}));
        if let Some(cb) = v
            .pointer_mut("/Body/stkCallback")
            .and_then(Value::as_object_mut)
        {
            cb.remove(key);
        }
        bytes(&v)
    }

    fn assert_invalid(e: &CallbackError, field: &str) {
        assert!(
            matches!(e, CallbackError::Invalid { .. }),
            "expected Invalid for {field}, got {e:?}"
        );
        assert_eq!(e.field(), Some(field), "{e}");
    }

    fn assert_missing(e: &CallbackError, field: &str) {
        assert!(
            matches!(e, CallbackError::Missing { .. }),
            "expected Missing for {field}, got {e:?}"
        );
        assert_eq!(e.field(), Some(field), "{e}");
    }

    // ---- the documented samples -------------------------------------------------------

    #[test]
    fn doc_success_sample() {
        let cb = ok(DOC_SUCCESS);
        assert_eq!(cb.merchant_request_id.as_str(), MERCHANT);
        assert_eq!(cb.checkout_request_id.as_str(), CHECKOUT);
        assert_eq!(cb.result_code, ResultCode::Code(0));
        assert_eq!(
            cb.result_desc,
            "The service request is processed successfully."
        );
        assert_eq!(cb.metadata.amount, Some(1));
        assert_eq!(
            cb.metadata.mpesa_receipt_number.as_deref(),
            Some("NLJ7RT61SV")
        );
        assert_eq!(cb.metadata.transaction_date, Some(20191219102115));
        assert_eq!(
            cb.metadata.phone.as_ref().map(Msisdn::as_str),
            Some("254708374149")
        );
        assert_eq!(cb.metadata.balance, None);

        let o = cb.to_outcome(now());
        assert_eq!(o.status, PaymentStatus::Success);
        assert_eq!(o.reason, None);
        assert_eq!(o.result_code, Some(ResultCode::Code(0)));
        assert_eq!(o.mpesa_receipt_number.as_deref(), Some("NLJ7RT61SV"));
        assert_eq!(o.amount, Some(1));
        assert_eq!(o.phone_number.as_deref(), Some("2547******49"));
        assert_eq!(
            o.transaction_date.as_deref(),
            Some("2019-12-19T10:21:15+03:00")
        );
        assert_eq!(o.completed_at, now());
    }

    #[test]
    fn a_failure_with_metadata_carries_none_of_it() {
        // A cancel that also carries success-like metadata (a forgery, or a quirk).
        let body = String::from_utf8_lossy(DOC_SUCCESS)
            .replace("\"ResultCode\": 0", "\"ResultCode\": 1032")
            .replace(
                "The service request is processed successfully.",
                "Request cancelled by user",
            );
        let cb = ok(body.as_bytes());
        assert_eq!(cb.result_code, ResultCode::Code(1032));
        let o = cb.to_outcome(now());
        assert_eq!(o.status, PaymentStatus::Failed);
        assert_eq!(o.mpesa_receipt_number, None);
        assert_eq!(o.amount, None);
        assert_eq!(o.transaction_date, None);
        assert_eq!(o.phone_number, None);
    }

    #[test]
    fn doc_failure_sample() {
        let cb = ok(DOC_FAILURE);
        assert_eq!(cb.result_code, ResultCode::Code(1032));
        assert_eq!(cb.result_desc, "Request cancelled by user.");
        assert_eq!(cb.metadata, CallbackMetadata::default());
        let o = cb.to_outcome(now());
        assert_eq!(o.status, PaymentStatus::Failed);
        assert_eq!(o.reason, Some(FailureReason::CancelledByUser));
        assert_eq!(o.mpesa_receipt_number, None);
        assert_eq!(o.amount, None);
        assert_eq!(o.phone_number, None);
        assert_eq!(o.transaction_date, None);
    }

    // ---- result codes (daraja.md §5) --------------------------------------------------

    #[test]
    fn every_documented_result_code_maps_via_to_outcome() {
        use FailureReason as R;
        use PaymentStatus::{Failed, Success};
        let cases: Vec<(Value, PaymentStatus, Option<FailureReason>)> = vec![
            (json!(0), Success, None),
            (json!(1), Failed, Some(R::InsufficientFunds)),
            (json!(2), Failed, Some(R::AmountLimit)),
            (json!(3), Failed, Some(R::AmountLimit)),
            (json!(4), Failed, Some(R::DailyLimit)),
            (json!(8), Failed, Some(R::MerchantBalanceLimit)),
            (json!(17), Failed, Some(R::DuplicateRequest)),
            (json!(26), Failed, Some(R::SystemBusy)),
            (json!(1001), Failed, Some(R::SubscriberBusy)),
            (json!(1019), Failed, Some(R::Timeout)),
            (json!(1025), Failed, Some(R::PushFailed)),
            (json!(1031), Failed, Some(R::CancelledByUser)),
            (json!(1032), Failed, Some(R::CancelledByUser)),
            (json!(1036), Failed, Some(R::Timeout)),
            (json!(1037), Failed, Some(R::Timeout)),
            (json!(2001), Failed, Some(R::WrongPin)),
            (json!(2028), Failed, Some(R::NotPermitted)),
            (json!(8006), Failed, Some(R::PinLocked)),
            (json!(9999), Failed, Some(R::PushFailed)),
            (json!("SFC_J_C0003"), Failed, Some(R::OperatorNotFound)),
            (json!("SFC_IC0003"), Failed, Some(R::Timeout)),
            (json!(424242), Failed, Some(R::Unknown)),
            (json!(-1), Failed, Some(R::Unknown)),
            (json!("SFC_NEW_CODE"), Failed, Some(R::Unknown)),
        ];
        let mut checked = 0;
        for (code, status, reason) in cases {
            // Every numeric code also as a numeric string, as forwarders send it.
            let mut forms = vec![code.clone()];
            if let Some(n) = code.as_i64() {
                forms.push(json!(n.to_string()));
            }
            for form in forms {
                let metadata = if status == Success {
                    json!({"Item": [receipt_item()]})
                } else {
                    Value::Null
                };
                let body = bytes(&callback(
                    json!({"ResultCode": form, "CallbackMetadata": metadata}),
                ));
                let o = ok(&body).to_outcome(now());
                assert_eq!((o.status, o.reason), (status, reason), "ResultCode {form}");
                checked += 1;
            }
        }
        assert_eq!(checked, 24 + 21);
    }

    #[test]
    fn result_code_as_string_is_normalised() {
        let cb = ok(&bytes(&callback(json!({"ResultCode": " 1032 "}))));
        assert_eq!(cb.result_code, ResultCode::Code(1032));
        let cb = ok(&bytes(&callback(json!({"ResultCode": "SFC_IC0003"}))));
        assert_eq!(cb.result_code, ResultCode::Other("SFC_IC0003".into()));
        // A string "0" is a success too, so it needs a receipt like a number 0.
        let e = err(&bytes(&callback(json!({"ResultCode": "0"}))));
        assert_invalid(&e, path::RECEIPT);
    }

    // ---- tolerance ----------------------------------------------------------------------

    fn full_items() -> Vec<Value> {
        vec![
            json!({"Name": "Amount", "Value": 1.00}),
            receipt_item(),
            json!({"Name": "Balance"}),
            json!({"Name": "TransactionDate", "Value": 20191219102115u64}),
            json!({"Name": "PhoneNumber", "Value": 254708374149u64}),
        ]
    }

    #[test]
    fn items_in_any_order() {
        let expected = ok(DOC_SUCCESS);
        let mut items = full_items();
        items.reverse();
        let mut reversed = ok(&success_with(Value::Array(items.clone())));
        reversed.merchant_request_id = expected.merchant_request_id.clone();
        reversed.checkout_request_id = expected.checkout_request_id.clone();
        assert_eq!(reversed, expected);
        // Every rotation and a couple of swaps: the position never matters.
        for k in 0..items.len() {
            let mut shuffled = items.clone();
            shuffled.rotate_left(k);
            shuffled.swap(0, 3);
            assert_eq!(
                ok(&success_with(Value::Array(shuffled))).metadata,
                expected.metadata
            );
        }
    }

    #[test]
    fn balance_without_value_and_null_values_are_absent() {
        let cb = ok(&success_with(json!([
            receipt_item(),
            {"Name": "Balance"},
            {"Name": "Amount", "Value": null},
            {"Name": "PhoneNumber", "Value": null},
            {"Name": "TransactionDate", "Value": null},
        ])));
        assert_eq!(cb.metadata.balance, None);
        assert_eq!(cb.metadata.amount, None);
        assert_eq!(cb.metadata.phone, None);
        assert_eq!(cb.metadata.transaction_date, None);
        // A null receipt on a success is the same as no receipt.
        let e = err(&success_with(
            json!([{"Name": "MpesaReceiptNumber", "Value": null}]),
        ));
        assert_invalid(&e, path::RECEIPT);
        // Balance with a value is kept as text.
        let cb = ok(&success_plus(json!({"Name": "Balance", "Value": 1234.5})));
        assert_eq!(cb.metadata.balance.as_deref(), Some("1234.5"));
        let cb = ok(&success_plus(json!({"Name": "Balance", "Value": "KES 10"})));
        assert_eq!(cb.metadata.balance.as_deref(), Some("KES 10"));
        let cb = ok(&success_plus(json!({"Name": "Balance", "Value": [1]})));
        assert_eq!(cb.metadata.balance, None);
    }

    #[test]
    fn unknown_items_and_extra_keys_are_ignored() {
        let v = json!({
            "extra": 1,
            "Body": {
                "also": [1, 2, {"deep": null}],
                "stkCallback": {
                    "MerchantRequestID": MERCHANT,
                    "CheckoutRequestID": CHECKOUT,
                    "ResultCode": 0,
                    "ResultDesc": "ok",
                    "Unexpected": {"a": "b"},
                    "CallbackMetadata": {
                        "Other": true,
                        "Item": [
                            {"Name": "Amount", "Value": 5, "Unit": "KES"},
                            {"Name": "SomethingNew", "Value": {"x": [1, 2]}},
                            {"Name": "AlsoNew"},
                            receipt_item(),
                        ]
                    }
                }
            }
        });
        let cb = ok(&bytes(&v));
        assert_eq!(cb.metadata.amount, Some(5));
        assert_eq!(
            cb.metadata.mpesa_receipt_number.as_deref(),
            Some("NLJ7RT61SV")
        );
    }

    #[test]
    fn phone_as_string_or_number() {
        for value in [
            json!(254708374149u64),
            json!("254708374149"),
            json!("0708374149"),
            json!("+254 708 374 149"),
        ] {
            let cb = ok(&success_plus(
                json!({"Name": "PhoneNumber", "Value": value}),
            ));
            assert_eq!(
                cb.metadata.phone.as_ref().map(Msisdn::as_str),
                Some("254708374149"),
                "{value}"
            );
            assert_eq!(
                cb.to_outcome(now()).phone_number.as_deref(),
                Some("2547******49")
            );
        }
    }

    #[test]
    fn unparseable_phone_is_dropped_not_fatal() {
        for value in [
            json!("2547******49"),
            json!(255712345678u64),
            json!(-254708374149i64),
            json!(2.54708374149e11),
            json!(true),
            json!({"n": 1}),
            json!(""),
            json!("x".repeat(5000)),
        ] {
            let cb = ok(&success_plus(
                json!({"Name": "PhoneNumber", "Value": value}),
            ));
            assert_eq!(cb.metadata.phone, None, "{value}");
        }
    }

    #[test]
    fn amount_forms() {
        for (value, expected) in [
            (json!(1), 1),
            (json!(1.00), 1),
            (json!(250000), 250000),
            (json!(1e3), 1000),
            (json!("100"), 100),
            (json!(" 100 "), 100),
            (json!("100.00"), 100),
            (json!(u32::MAX), u32::MAX),
        ] {
            let cb = ok(&success_plus(json!({"Name": "Amount", "Value": value})));
            assert_eq!(cb.metadata.amount, Some(expected), "{value}");
        }
    }

    #[test]
    fn transaction_date_forms() {
        for value in [json!(20191219102115u64), json!("20191219102115")] {
            let cb = ok(&success_plus(
                json!({"Name": "TransactionDate", "Value": value}),
            ));
            assert_eq!(cb.metadata.transaction_date, Some(20191219102115));
            assert_eq!(
                cb.to_outcome(now()).transaction_date.as_deref(),
                Some("2019-12-19T10:21:15+03:00")
            );
        }
    }

    #[test]
    fn result_desc_missing_null_or_unicode() {
        assert_eq!(ok(&without("ResultDesc")).result_desc, "");
        assert_eq!(
            ok(&bytes(&callback(json!({"ResultDesc": null})))).result_desc,
            ""
        );
        let desc = "Ombi limeghairiwa 🙅🏾‍♀️ — «annulé» 取消 \u{202e}";
        let cb = ok(&bytes(&callback(json!({"ResultDesc": desc}))));
        assert_eq!(cb.result_desc, desc);
        // Exactly at the limit, counted in characters, not bytes.
        let at_limit = "é".repeat(MAX_RESULT_DESC_CHARS);
        assert_eq!(
            ok(&bytes(&callback(json!({"ResultDesc": at_limit.clone()})))).result_desc,
            at_limit
        );
    }

    #[test]
    fn failure_with_metadata_is_still_parsed() {
        let body = bytes(&callback(json!({
            "ResultCode": 1,
            "CallbackMetadata": {"Item": [{"Name": "Amount", "Value": 10}]},
        })));
        let cb = ok(&body);
        assert_eq!(cb.metadata.amount, Some(10));
        assert_eq!(
            cb.to_outcome(now()).reason,
            Some(FailureReason::InsufficientFunds)
        );
        // Metadata without Item is as good as none.
        let cb = ok(&bytes(&callback(json!({"CallbackMetadata": {}}))));
        assert_eq!(cb.metadata, CallbackMetadata::default());
    }

    // ---- hostile input ------------------------------------------------------------------

    #[test]
    fn not_json_and_empty() {
        assert_eq!(err(b""), CallbackError::Empty);
        assert_eq!(err(b" \r\n\t"), CallbackError::Empty);
        for body in [
            &b"not json"[..],
            b"{",
            b"{\"Body\":",
            b"{}}",
            b"\xff\xfe{}",
            b"{\"Body\":{}} trailing",
            b"{'Body':{}}",
            b"\xef\xbb\xbf{}",
        ] {
            assert!(
                matches!(err(body), CallbackError::NotJson(_)),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn wrong_root_types() {
        for body in [&b"null"[..], b"[]", b"\"str\"", b"1", b"true", b"[{}]"] {
            let e = err(body);
            assert_invalid(&e, path::ROOT);
        }
        assert_missing(&err(b"{}"), path::BODY);
    }

    #[test]
    fn deep_nesting_is_rejected_before_parsing() {
        let deep = "[".repeat(10_000);
        assert_eq!(
            err(deep.as_bytes()),
            CallbackError::TooDeep {
                limit: MAX_JSON_DEPTH
            }
        );
        let deep_objects = "{\"a\":".repeat(10_000);
        assert!(matches!(
            err(deep_objects.as_bytes()),
            CallbackError::TooDeep { .. }
        ));
        // Brackets inside strings, including after escaped quotes, do not count.
        let in_string = format!(r#"{{"Body":{{}},"x":"\"{}"}}"#, "[".repeat(100));
        assert_missing(&err(in_string.as_bytes()), path::STK_CALLBACK);
        let escaped_backslash = format!(r#"{{"x":"\\","y":{}{}}}"#, "[".repeat(40), "]".repeat(40));
        assert!(matches!(
            err(escaped_backslash.as_bytes()),
            CallbackError::TooDeep { .. }
        ));
    }

    #[test]
    fn nesting_at_and_over_the_limit() {
        let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        // At the limit the body is read (and rejected for its shape, not its depth).
        assert_invalid(&err(nested(MAX_JSON_DEPTH).as_bytes()), path::ROOT);
        assert_eq!(
            err(nested(MAX_JSON_DEPTH + 1).as_bytes()),
            CallbackError::TooDeep {
                limit: MAX_JSON_DEPTH
            }
        );
        // A real callback nested inside extra keys up to the limit still parses.
        let mut filler = json!(null);
        for _ in 0..(MAX_JSON_DEPTH - 1) {
            filler = json!([filler]);
        }
        let mut v = callback(json!({}));
        if let Some(o) = v.as_object_mut() {
            o.insert("filler".into(), filler);
        }
        assert!(parse_callback(&bytes(&v)).is_ok());
        assert!(!nesting_exceeds(&bytes(&v), MAX_JSON_DEPTH));
        assert!(nesting_exceeds(&bytes(&v), MAX_JSON_DEPTH - 1));
    }

    #[test]
    fn oversized_bodies() {
        let mut body = bytes(&callback(json!({})));
        body.resize(70 * 1024, b' ');
        assert_eq!(
            err(&body),
            CallbackError::TooLarge {
                size: 70 * 1024,
                limit: MAX_CALLBACK_BYTES
            }
        );
        let mut at_limit = bytes(&callback(json!({})));
        at_limit.resize(MAX_CALLBACK_BYTES, b' ');
        assert!(parse_callback(&at_limit).is_ok());
    }

    #[test]
    fn huge_result_desc_is_rejected() {
        let long = "x".repeat(MAX_RESULT_DESC_CHARS + 1);
        assert_invalid(
            &err(&bytes(&callback(json!({"ResultDesc": long})))),
            path::RESULT_DESC,
        );
        let huge = "y".repeat(60 * 1024);
        assert_invalid(
            &err(&bytes(&callback(json!({"ResultDesc": huge})))),
            path::RESULT_DESC,
        );
        assert_invalid(
            &err(&bytes(&callback(json!({"ResultDesc": ["a"]})))),
            path::RESULT_DESC,
        );
    }

    #[test]
    fn required_fields_absent_or_null() {
        for (key, field) in [
            ("MerchantRequestID", path::MERCHANT_REQUEST_ID),
            ("CheckoutRequestID", path::CHECKOUT_REQUEST_ID),
            ("ResultCode", path::RESULT_CODE),
        ] {
            assert_missing(&err(&without(key)), field);
            assert_missing(&err(&bytes(&callback(json!({ key: null })))), field);
            assert_missing(&err(&bytes(&callback(json!({ key: "" })))), field);
        }
        assert_missing(&err(br#"{"Body":null}"#), path::BODY);
        assert_missing(&err(br#"{"Body":{}}"#), path::STK_CALLBACK);
        assert_missing(
            &err(br#"{"Body":{"stkCallback":null}}"#),
            path::STK_CALLBACK,
        );
        assert_eq!(
            err(&without("CheckoutRequestID")).to_string(),
            "Body.stkCallback.CheckoutRequestID is required"
        );
    }

    #[test]
    fn required_fields_of_the_wrong_type() {
        for wrong in [json!(true), json!([]), json!({}), json!(1.5)] {
            for (key, field) in [
                ("MerchantRequestID", path::MERCHANT_REQUEST_ID),
                ("CheckoutRequestID", path::CHECKOUT_REQUEST_ID),
            ] {
                assert_invalid(&err(&bytes(&callback(json!({ key: wrong })))), field);
            }
            assert_invalid(
                &err(&bytes(&callback(json!({ "ResultCode": wrong })))),
                path::RESULT_CODE,
            );
        }
        // Ids are strings; a number is not accepted.
        assert_invalid(
            &err(&bytes(&callback(json!({"CheckoutRequestID": 12345})))),
            path::CHECKOUT_REQUEST_ID,
        );
        for body in [
            json!({"Body": []}),
            json!({"Body": "x"}),
            json!({"Body": 0}),
        ] {
            assert_invalid(&err(&bytes(&body)), path::BODY);
        }
        for body in [
            json!({"Body": {"stkCallback": []}}),
            json!({"Body": {"stkCallback": "x"}}),
            json!({"Body": {"stkCallback": false}}),
        ] {
            assert_invalid(&err(&bytes(&body)), path::STK_CALLBACK);
        }
        let e = err(&bytes(&callback(json!({"ResultCode": {"a": 1}}))));
        assert_eq!(
            e.to_string(),
            "Body.stkCallback.ResultCode is invalid: must be a number or a string, found an object"
        );
        for bad in [
            json!(1e20),
            json!(u64::MAX),
            json!("1 032"),
            json!("x".repeat(33)),
        ] {
            assert_invalid(
                &err(&bytes(&callback(json!({"ResultCode": bad})))),
                path::RESULT_CODE,
            );
        }
    }

    #[test]
    fn hostile_request_ids() {
        for bad in [
            "ws_CO_{1}",
            "{",
            "ws CO 1",
            " ws_CO_1",
            "ws_CO_1\n",
            "ws_CO_1\"}",
            "ws_CO_١٢٣",
            "ws_CO_💥",
            &"a".repeat(65),
            &"9".repeat(10_000),
        ] {
            assert_invalid(
                &err(&bytes(&callback(json!({"CheckoutRequestID": bad})))),
                path::CHECKOUT_REQUEST_ID,
            );
            assert_invalid(
                &err(&bytes(&callback(json!({"MerchantRequestID": bad})))),
                path::MERCHANT_REQUEST_ID,
            );
        }
        assert!(parse_callback(&bytes(&callback(
            json!({"CheckoutRequestID": "a".repeat(64)})
        )))
        .is_ok());
    }

    #[test]
    fn success_without_receipt_is_invalid() {
        let e = err(&bytes(&callback(json!({"ResultCode": 0}))));
        assert_invalid(&e, path::RECEIPT);
        let e = err(&success_with(json!([
            {"Name": "Amount", "Value": 1},
            {"Name": "PhoneNumber", "Value": 254708374149u64},
        ])));
        assert_invalid(&e, path::RECEIPT);
        let e = err(&success_with(json!([{"Name": "MpesaReceiptNumber"}])));
        assert_invalid(&e, path::RECEIPT);
    }

    #[test]
    fn malformed_receipts() {
        for bad in [
            json!(""),
            json!("nlj7rt61sv"),
            json!("NLJ7 RT61SV"),
            json!("NLJ7-RT61SV"),
            json!("A".repeat(21)),
            json!("ÄLJ7RT61SV"),
            json!(1234567890),
            json!(["NLJ7RT61SV"]),
        ] {
            let e = err(&success_with(
                json!([{"Name": "MpesaReceiptNumber", "Value": bad}]),
            ));
            assert_invalid(&e, path::RECEIPT);
        }
        let cb = ok(&success_with(
            json!([{"Name": "MpesaReceiptNumber", "Value": "A".repeat(20)}]),
        ));
        assert_eq!(cb.metadata.mpesa_receipt_number, Some("A".repeat(20)));
    }

    #[test]
    fn bad_amounts() {
        for bad in [
            json!(1.5),
            json!(0.01),
            json!(-1.5),
            json!(-1),
            json!(-1.0),
            json!(0),
            json!(0.0),
            json!("1.5"),
            json!("-1"),
            json!("+1"),
            json!("1e3"),
            json!("1."),
            json!(".5"),
            json!(""),
            json!("one"),
            json!(4_294_967_296u64),
            json!(1e300),
            json!("99999999999"),
            json!(true),
            json!({"v": 1}),
        ] {
            let e = err(&success_plus(json!({"Name": "Amount", "Value": bad})));
            assert_invalid(&e, path::AMOUNT);
        }
    }

    #[test]
    fn bad_transaction_dates() {
        for bad in [
            json!(20191219102115.0),
            json!(2.0191219102115e13),
            json!(2019121910211u64),
            json!(201912191021150u64),
            json!(20191319102115u64),
            json!(-20191219102115i64),
            json!("2019-12-19 10:21:15"),
            json!(" 20191219102115"),
            json!("00191219102115"),
            json!(true),
        ] {
            let e = err(&success_plus(
                json!({"Name": "TransactionDate", "Value": bad}),
            ));
            assert_invalid(&e, path::TRANSACTION_DATE);
        }
    }

    #[test]
    fn malformed_metadata() {
        let cases = [
            (json!({"CallbackMetadata": []}), path::METADATA),
            (json!({"CallbackMetadata": "x"}), path::METADATA),
            (json!({"CallbackMetadata": {"Item": {}}}), path::ITEMS),
            (json!({"CallbackMetadata": {"Item": "x"}}), path::ITEMS),
            (json!({"CallbackMetadata": {"Item": [1]}}), path::ITEMS),
            (json!({"CallbackMetadata": {"Item": [null]}}), path::ITEMS),
            (
                json!({"CallbackMetadata": {"Item": [{"Value": 1}]}}),
                path::ITEMS,
            ),
            (
                json!({"CallbackMetadata": {"Item": [{"Name": 5, "Value": 1}]}}),
                path::ITEMS,
            ),
        ];
        for (overrides, field) in cases {
            let e = err(&bytes(&callback(overrides.clone())));
            assert_invalid(&e, field);
        }
        // Too many items.
        let many: Vec<Value> = (0..=MAX_METADATA_ITEMS)
            .map(|i| json!({"Name": format!("X{i}")}))
            .collect();
        assert_invalid(&err(&success_with(Value::Array(many))), path::ITEMS);
        let max: Vec<Value> = std::iter::once(receipt_item())
            .chain((1..MAX_METADATA_ITEMS).map(|i| json!({"Name": format!("X{i}")})))
            .collect();
        assert!(parse_callback(&success_with(Value::Array(max))).is_ok());
        // A known item twice is ambiguous.
        let e = err(&success_with(json!([
            receipt_item(),
            {"Name": "Amount", "Value": 1},
            {"Name": "Amount", "Value": 1000},
        ])));
        assert_invalid(&e, path::AMOUNT);
        let e = err(&success_with(json!([receipt_item(), receipt_item()])));
        assert_invalid(&e, path::RECEIPT);
    }

    #[test]
    fn duplicate_json_keys_are_rejected() {
        let body = br#"{"Body":{"stkCallback":{"MerchantRequestID":"a","CheckoutRequestID":"b","ResultCode":1032,"ResultCode":0}}}"#;
        let e = err(body);
        assert!(
            matches!(&e, CallbackError::DuplicateKey(m) if m.contains("ResultCode")),
            "{e:?}"
        );
        // Escaped spellings of the same key are the same key.
        let body = br#"{"Body":{"stkCallback":{"MerchantRequestID":"a","CheckoutRequestID":"b","ResultCode":1032}},"\u0042ody":{}}"#;
        assert!(matches!(err(body), CallbackError::DuplicateKey(_)));
        // Even in ignored places; the quoted key is bounded.
        let long = "k".repeat(5000);
        let body = format!(r#"{{"x":{{"{long}":1,"{long}":2}}}}"#);
        match err(body.as_bytes()) {
            CallbackError::DuplicateKey(m) => assert!(m.len() < 200, "{m}"),
            other => panic!("expected DuplicateKey, got {other:?}"),
        }
        // The same key in sibling objects is fine.
        let cb = ok(&success_with(json!([
            {"Name": "Amount", "Value": 1},
            receipt_item(),
        ])));
        assert_eq!(cb.metadata.amount, Some(1));
    }

    #[test]
    fn errors_name_their_field() {
        assert_eq!(err(b"{}").field(), Some("Body"));
        assert_eq!(err(b"[").field(), None);
        assert_eq!(err(b"").field(), None);
        let e = err(&success_plus(json!({"Name": "Amount", "Value": 1.5})));
        assert_eq!(
            e.to_string(),
            "Body.stkCallback.CallbackMetadata.Item.Amount is invalid: must be a whole number of shillings"
        );
    }

    #[test]
    fn error_messages_never_echo_the_phone_or_body() {
        let body = bytes(&callback(json!({
            "ResultCode": 0,
            "ResultDesc": "254708374149",
            "CallbackMetadata": {"Item": [{"Name": "PhoneNumber", "Value": 254708374149u64}]},
        })));
        assert!(!err(&body).to_string().contains("708374149"));
        let e = err(b"{\"254708374149\": }");
        assert!(!e.to_string().contains("708374149"), "{e}");
    }
}
