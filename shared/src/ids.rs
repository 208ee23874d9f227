//! Newtypes for the values that cross our edges: phone numbers, amounts, Daraja's
//! request ids and the short free-text fields of an STK push.
//!
//! Raw strings are parsed into these types once, at the boundary (`parse`), and typed
//! values travel inward. Every constructor returns a [`ValidationError`] naming the field
//! and the problem; nothing here panics on input.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why an input value was rejected. The message is safe to show to API callers: it never
/// echoes a full phone number back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("{field} is required")]
    Missing { field: &'static str },
    #[error("{field} is invalid: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}

impl ValidationError {
    fn invalid(field: &'static str, reason: &'static str) -> Self {
        Self::Invalid { field, reason }
    }

    /// The field the error is about, for structured API errors.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Missing { field } | Self::Invalid { field, .. } => field,
        }
    }
}

/// Longest Daraja request id we accept. Real ones are about 30 characters.
pub const MAX_REQUEST_ID_LEN: usize = 64;

fn parse_request_id(field: &'static str, raw: &str) -> Result<String, ValidationError> {
    if raw.is_empty() {
        return Err(ValidationError::Missing { field });
    }
    if raw.len() > MAX_REQUEST_ID_LEN {
        return Err(ValidationError::invalid(field, "longer than 64 characters"));
    }
    // Daraja ids are `ws_CO_…` or dash-separated digits/hex. Restricting the alphabet keeps
    // them safe inside Redis key names, URL paths and log lines.
    if !raw
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    {
        return Err(ValidationError::invalid(
            field,
            "may only contain letters, digits, '_', '-' and '.'",
        ));
    }
    Ok(raw.to_owned())
}

macro_rules! request_id {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Parses an id received from Daraja or a client.
            pub fn parse(raw: &str) -> Result<Self, ValidationError> {
                parse_request_id($field, raw).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

request_id!(
    /// Daraja's `CheckoutRequestID`: the id of one STK push, and the key that follows a
    /// payment through ingest, Redis and every gateway.
    CheckoutRequestId,
    "CheckoutRequestID"
);
request_id!(
    /// Daraja's `MerchantRequestID`.
    MerchantRequestId,
    "MerchantRequestID"
);

/// A Kenyan mobile number in Daraja's format: `2547XXXXXXXX` or `2541XXXXXXXX`.
///
/// `Display` and `Debug` print the masked form, so a `Msisdn` can go into a log line
/// without leaking the number; [`Msisdn::as_str`] gives the full number for Daraja.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Msisdn(String);

impl Msisdn {
    /// Accepts `07…`, `01…`, `7…`, `1…`, `2547…`, `2541…`, `+2547…`, `+2541…`, with
    /// spaces or dashes anywhere between digits.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        const FIELD: &str = "phone";
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(ValidationError::Missing { field: FIELD });
        }
        if trimmed.len() > 32 {
            return Err(ValidationError::invalid(FIELD, "too long"));
        }
        let (plus, rest) = match trimmed.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => (false, trimmed),
        };
        let mut digits = String::with_capacity(12);
        for c in rest.chars() {
            match c {
                '0'..='9' => digits.push(c),
                ' ' | '-' => {}
                _ => {
                    return Err(ValidationError::invalid(
                        FIELD,
                        "may only contain digits, spaces, dashes and a leading '+'",
                    ))
                }
            }
        }
        let national = if let Some(n) = digits.strip_prefix("254") {
            n
        } else if plus {
            return Err(ValidationError::invalid(
                FIELD,
                "only Kenyan numbers (+254) are supported",
            ));
        } else if let Some(n) = digits.strip_prefix('0') {
            n
        } else {
            digits.as_str()
        };
        if national.len() != 9 {
            return Err(ValidationError::invalid(
                FIELD,
                "must be a Kenyan mobile number such as 0712345678 or 254712345678",
            ));
        }
        if !(national.starts_with('7') || national.starts_with('1')) {
            return Err(ValidationError::invalid(
                FIELD,
                "must be a Kenyan mobile number starting 07, 01, 2547 or 2541",
            ));
        }
        Ok(Self(format!("254{national}")))
    }

    /// The full 12-digit number, for Daraja requests only. Never log this.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The number with its middle digits hidden: `2547******78`.
    pub fn masked(&self) -> String {
        mask_phone(&self.0)
    }
}

/// Masks a phone number for display and logs: keeps the first four and last two
/// characters of a 12-digit MSISDN, and hides everything else.
pub fn mask_phone(phone: &str) -> String {
    let chars: Vec<char> = phone.chars().collect();
    if chars.len() < 8 {
        return "*".repeat(chars.len());
    }
    let keep_head = 4;
    let keep_tail = 2;
    let mut out = String::with_capacity(chars.len());
    for (i, c) in chars.iter().enumerate() {
        if i < keep_head || i >= chars.len() - keep_tail {
            out.push(*c);
        } else {
            out.push('*');
        }
    }
    out
}

impl fmt::Display for Msisdn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Debug for Msisdn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Msisdn({})", self.masked())
    }
}

/// A whole number of Kenya shillings between 1 and 250,000: Daraja's per-transaction
/// limits. Fractions are rejected rather than rounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Amount(u32);

impl Amount {
    pub const MIN: u32 = 1;
    pub const MAX: u32 = 250_000;

    pub fn new(value: u64) -> Result<Self, ValidationError> {
        if value < u64::from(Self::MIN) {
            return Err(ValidationError::invalid("amount", "must be at least 1"));
        }
        if value > u64::from(Self::MAX) {
            return Err(ValidationError::invalid("amount", "must be at most 250000"));
        }
        Ok(Self(value as u32))
    }

    /// Accepts a JSON number or a numeric string. `10.0` is accepted, `10.5` is not.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, ValidationError> {
        match value {
            serde_json::Value::Number(n) => {
                if let Some(v) = n.as_u64() {
                    Self::new(v)
                } else if let Some(f) = n.as_f64() {
                    if f.fract() != 0.0 {
                        Err(ValidationError::invalid(
                            "amount",
                            "must be a whole number of shillings",
                        ))
                    } else if f < 0.0 {
                        Err(ValidationError::invalid("amount", "must be at least 1"))
                    } else if f > f64::from(Self::MAX) {
                        Err(ValidationError::invalid("amount", "must be at most 250000"))
                    } else {
                        Self::new(f as u64)
                    }
                } else {
                    Err(ValidationError::invalid("amount", "must be at least 1"))
                }
            }
            serde_json::Value::String(s) => Self::parse(s),
            serde_json::Value::Null => Err(ValidationError::Missing { field: "amount" }),
            _ => Err(ValidationError::invalid("amount", "must be a number")),
        }
    }

    /// Parses a decimal string of digits. Fractions are rejected.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(ValidationError::Missing { field: "amount" });
        }
        if s.contains('.') {
            return Err(ValidationError::invalid(
                "amount",
                "must be a whole number of shillings",
            ));
        }
        if s.len() > 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ValidationError::invalid("amount", "must be a number"));
        }
        let v: u64 = s
            .parse()
            .map_err(|_| ValidationError::invalid("amount", "must be a number"))?;
        Self::new(v)
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        Self::from_json(&v).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

fn parse_short_text(
    field: &'static str,
    raw: &str,
    max: usize,
    too_long: &'static str,
) -> Result<String, ValidationError> {
    let s = raw.trim();
    if s.is_empty() {
        return Err(ValidationError::Missing { field });
    }
    if s.chars().count() > max {
        return Err(ValidationError::invalid(field, too_long));
    }
    if s.chars().any(|c| c.is_control()) {
        return Err(ValidationError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(s.to_owned())
}

/// Daraja's `AccountReference`: 1 to 12 characters, shown to the buyer in the prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct AccountReference(String);

impl AccountReference {
    pub const MAX_CHARS: usize = 12;

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        parse_short_text(
            "account_reference",
            raw,
            Self::MAX_CHARS,
            "must be 1 to 12 characters",
        )
        .map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Daraja's `TransactionDesc`: 1 to 13 characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct TransactionDesc(String);

impl TransactionDesc {
    pub const MAX_CHARS: usize = 13;

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        parse_short_text(
            "description",
            raw,
            Self::MAX_CHARS,
            "must be 1 to 13 characters",
        )
        .map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A paybill or till/store number: 5 to 7 digits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ShortCode(String);

impl ShortCode {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(ValidationError::Missing {
                field: "BusinessShortCode",
            });
        }
        if !(5..=7).contains(&s.len()) || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ValidationError::invalid(
                "BusinessShortCode",
                "must be 5 to 7 digits",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for ShortCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Daraja accepts the shortcode as a number or a numeric string.
        let v = serde_json::Value::deserialize(d)?;
        let s = match &v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => return Err(serde::de::Error::custom("BusinessShortCode must be digits")),
        };
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_forms_normalise() {
        for raw in [
            "0712345678",
            "712345678",
            "254712345678",
            "+254712345678",
            "+254 712 345 678",
            "0712-345-678",
            " 0712 345678 ",
        ] {
            assert_eq!(
                Msisdn::parse(raw).unwrap().as_str(),
                "254712345678",
                "{raw}"
            );
        }
        for raw in [
            "0112345678",
            "112345678",
            "254112345678",
            "+254 112-345-678",
        ] {
            assert_eq!(
                Msisdn::parse(raw).unwrap().as_str(),
                "254112345678",
                "{raw}"
            );
        }
    }

    #[test]
    fn phone_rejects_other_numbers() {
        for raw in [
            "",
            "   ",
            "0812345678",
            "071234567",
            "07123456789",
            "+255712345678",
            "+0712345678",
            "2547123456789",
            "0712a45678",
            "0712.345.678",
            "++254712345678",
            "254 812345678",
            "٠٧١٢٣٤٥٦٧٨",
        ] {
            assert!(Msisdn::parse(raw).is_err(), "{raw:?} should be rejected");
        }
    }

    #[test]
    fn phone_is_masked_in_display_and_debug() {
        let p = Msisdn::parse("0712345678").unwrap();
        assert_eq!(p.to_string(), "2547******78");
        assert_eq!(format!("{p:?}"), "Msisdn(2547******78)");
        assert!(!format!("{p} {p:?}").contains("712345678"));
    }

    #[test]
    fn amount_bounds_and_fractions() {
        assert_eq!(Amount::parse("1").unwrap().get(), 1);
        assert_eq!(Amount::parse("250000").unwrap().get(), 250_000);
        assert!(Amount::parse("0").is_err());
        assert!(Amount::parse("250001").is_err());
        assert!(Amount::parse("10.5").is_err());
        assert!(Amount::parse("10.00").is_err());
        assert!(Amount::parse("-5").is_err());
        assert!(Amount::parse("1e3").is_err());
        assert!(Amount::parse("99999999999999999999999").is_err());
        let j = |s: &str| Amount::from_json(&serde_json::from_str(s).unwrap());
        assert_eq!(j("100").unwrap().get(), 100);
        assert_eq!(j("100.0").unwrap().get(), 100);
        assert_eq!(j("\"100\"").unwrap().get(), 100);
        assert!(j("100.5").is_err());
        assert!(j("-1").is_err());
        assert!(j("null").is_err());
        assert!(j("true").is_err());
        assert!(j("1e300").is_err());
    }

    #[test]
    fn short_texts_are_bounded() {
        assert!(AccountReference::parse("ORDER-123456").is_ok());
        assert!(AccountReference::parse("ORDER-1234567").is_err());
        assert!(AccountReference::parse("").is_err());
        assert!(TransactionDesc::parse("Payment 12345").is_ok());
        assert!(TransactionDesc::parse("Payment 123456").is_err());
        assert!(TransactionDesc::parse("a\u{0}b").is_err());
    }

    #[test]
    fn request_ids_are_restricted() {
        assert!(CheckoutRequestId::parse("ws_CO_21072024125130652700961992").is_ok());
        assert!(MerchantRequestId::parse("2654-4b64-97ff-b827b542881d3130").is_ok());
        assert!(CheckoutRequestId::parse("").is_err());
        assert!(CheckoutRequestId::parse("ws_CO_{x}").is_err());
        assert!(CheckoutRequestId::parse(&"a".repeat(65)).is_err());
        assert!(CheckoutRequestId::parse("a b").is_err());
    }
}
