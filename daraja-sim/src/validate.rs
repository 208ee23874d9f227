//! Request validation as Daraja does it, answering with Daraja's error bodies
//! (`shared/daraja.md` §1–§3). Pure functions: a JSON body and a clock in, a typed
//! request or a [`Fault`] out. Nothing here panics on input.

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde_json::{Map, Value};
use stk_relay_shared::daraja::password;
use stk_relay_shared::daraja::types::{codes, ErrorBody, StkPushRequest, BUY_GOODS, PAYBILL};

use crate::SimConfig;

/// A Daraja error answer: HTTP status plus `{requestId, errorCode, errorMessage}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// `requestId` to answer with; a fresh random one when `None`.
    pub request_id: Option<String>,
}

impl Fault {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            request_id: None,
        }
    }

    /// `400.002.02 Bad Request - Invalid <field>`.
    pub fn invalid(field: &str) -> Self {
        Self::new(
            400,
            codes::INVALID_FIELD,
            format!("Bad Request - Invalid {field}"),
        )
    }

    /// `500.001.1001` with one of its overloaded messages.
    pub fn generic_500(message: &str) -> Self {
        Self::new(500, codes::GENERIC_500, message)
    }

    pub fn invalid_token() -> Self {
        Self::new(404, codes::INVALID_ACCESS_TOKEN, "Invalid Access Token")
    }

    pub fn method_not_allowed() -> Self {
        Self::new(405, codes::METHOD_NOT_ALLOWED, "Method not allowed")
    }

    pub fn not_found() -> Self {
        Self::new(404, codes::NOT_FOUND, "Resource not found")
    }

    pub fn oauth_invalid_auth() -> Self {
        Self::new(
            400,
            codes::OAUTH_INVALID_AUTH,
            "Invalid Authentication passed",
        )
    }

    pub fn oauth_invalid_grant() -> Self {
        Self::new(400, codes::OAUTH_INVALID_GRANT, "Invalid grant type passed")
    }

    /// Simulator-specific: a body over the size limit.
    pub fn too_large() -> Self {
        Self::new(
            400,
            codes::INVALID_FIELD,
            "Bad Request - Request body too large",
        )
    }

    pub fn with_request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    pub fn body(&self, fresh_request_id: impl FnOnce() -> String) -> ErrorBody {
        ErrorBody {
            request_id: self.request_id.clone().unwrap_or_else(fresh_request_id),
            error_code: self.code.to_owned(),
            error_message: self.message.clone(),
        }
    }
}

/// A string or number field as text; `None` when absent, null or another type.
fn text(obj: &Map<String, Value>, key: &str) -> Option<String> {
    match obj.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn is_digits(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
}

/// `2547XXXXXXXX` or `2541XXXXXXXX`.
pub fn is_msisdn(s: &str) -> bool {
    is_digits(s, 12, 12) && (s.starts_with("2547") || s.starts_with("2541"))
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, Fault> {
    // An unreadable body surfaces as "Invalid BusinessShortCode", like a wrong content
    // type does on Daraja (the first field cannot be read).
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(Fault::invalid("BusinessShortCode")),
    }
}

/// Checks BusinessShortCode, Timestamp and Password, shared by push and query.
fn check_credentials(
    cfg: &SimConfig,
    obj: &Map<String, Value>,
    now: DateTime<Utc>,
) -> Result<(String, String, String), Fault> {
    let shortcode = text(obj, "BusinessShortCode")
        .filter(|s| is_digits(s, 5, 7))
        .ok_or_else(|| Fault::invalid("BusinessShortCode"))?;
    let timestamp = text(obj, "Timestamp").ok_or_else(|| Fault::invalid("Timestamp"))?;
    let at = password::parse_timestamp(&timestamp).ok_or_else(|| Fault::invalid("Timestamp"))?;
    let skew = (now - at).num_seconds().unsigned_abs();
    if skew > cfg.timestamp_tolerance_secs {
        return Err(Fault::invalid("Timestamp"));
    }
    if shortcode != cfg.shortcode {
        return Err(Fault::generic_500("Merchant does not exist"));
    }
    let expected = password::password(
        &shortcode,
        &SecretString::from(cfg.passkey.clone()),
        &timestamp,
    );
    let given = text(obj, "Password").unwrap_or_default();
    if given != expected {
        return Err(Fault::generic_500("Wrong credentials"));
    }
    Ok((shortcode, timestamp, given))
}

/// A push that passed validation, and whether Daraja would refuse it later with 2028
/// (PartyB does not belong to the shortcode for this transaction type).
#[derive(Debug, Clone)]
pub struct ValidPush {
    pub request: StkPushRequest,
    pub amount: u32,
    pub not_permitted: bool,
}

/// Validates an STK Push body.
pub fn validate_push(cfg: &SimConfig, body: &[u8], now: DateTime<Utc>) -> Result<ValidPush, Fault> {
    let obj = parse_object(body)?;
    let (shortcode, timestamp, password) = check_credentials(cfg, &obj, now)?;

    let transaction_type = text(&obj, "TransactionType")
        .filter(|t| t == PAYBILL || t == BUY_GOODS)
        .ok_or_else(|| Fault::invalid("TransactionType"))?;

    let amount = match obj.get("Amount") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) if is_digits(s, 1, 12) => s.parse::<u64>().ok(),
        _ => None,
    }
    .filter(|a| (1..=250_000).contains(a))
    .and_then(|a| u32::try_from(a).ok())
    .ok_or_else(|| Fault::invalid("Amount"))?;

    let party_a = text(&obj, "PartyA")
        .filter(|p| is_msisdn(p))
        .ok_or_else(|| Fault::invalid("PartyA"))?;
    let party_b = text(&obj, "PartyB")
        .filter(|p| is_digits(p, 5, 7))
        .ok_or_else(|| Fault::invalid("PartyB"))?;
    let phone = text(&obj, "PhoneNumber")
        .filter(|p| is_msisdn(p))
        .ok_or_else(|| Fault::invalid("PhoneNumber"))?;

    let callback_url = match obj.get("CallBackURL") {
        Some(Value::String(u)) if is_callback_url(u) => u.clone(),
        _ => return Err(Fault::invalid("CallBackURL")),
    };

    let account_reference = text(&obj, "AccountReference")
        .filter(|r| (1..=12).contains(&r.chars().count()))
        .ok_or_else(|| {
            Fault::new(
                400,
                codes::INVALID_FIELD,
                "The element AccountReference is invalid",
            )
        })?;

    let transaction_desc = match obj.get("TransactionDesc") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) if (1..=13).contains(&d.chars().count()) => Some(d.clone()),
        Some(_) => return Err(Fault::invalid("TransactionDesc")),
    };

    let not_permitted = if transaction_type == PAYBILL {
        party_b != cfg.shortcode
    } else {
        cfg.till_number.as_ref().is_some_and(|t| *t != party_b)
    };

    Ok(ValidPush {
        request: StkPushRequest {
            business_short_code: shortcode,
            password,
            timestamp,
            transaction_type,
            amount: amount.to_string(),
            party_a,
            party_b,
            phone_number: phone,
            callback_url,
            account_reference,
            transaction_desc,
        },
        amount,
        not_permitted,
    })
}

/// An absolute http(s) URL with a host and no whitespace anywhere.
pub fn is_callback_url(u: &str) -> bool {
    if u.is_empty() || u.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    matches!(reqwest::Url::parse(u), Ok(p) if (p.scheme() == "http" || p.scheme() == "https") && p.host_str().is_some())
}

/// Validates an STK Push Query body; returns the CheckoutRequestID (not yet looked up).
pub fn validate_query(cfg: &SimConfig, body: &[u8], now: DateTime<Utc>) -> Result<String, Fault> {
    let obj = parse_object(body)?;
    check_credentials(cfg, &obj, now)?;
    match obj.get("CheckoutRequestID") {
        Some(Value::String(id)) if !id.is_empty() && id.len() <= 64 => Ok(id.clone()),
        _ => Err(Fault::invalid("CheckoutRequestID")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> SimConfig {
        SimConfig::default()
    }

    fn now() -> DateTime<Utc> {
        "2024-07-21T09:51:30Z".parse().unwrap()
    }

    fn good() -> Value {
        let ts = password::timestamp(now());
        let c = cfg();
        json!({
            "BusinessShortCode": 174379,
            "Password": password::password("174379", &SecretString::from(c.passkey.clone()), &ts),
            "Timestamp": ts,
            "TransactionType": "CustomerPayBillOnline",
            "Amount": 1,
            "PartyA": 254708374149_u64,
            "PartyB": 174379,
            "PhoneNumber": 254708374149_u64,
            "CallBackURL": "https://example.com/cb",
            "AccountReference": "ORDER1",
            "TransactionDesc": "Payment"
        })
    }

    fn push_with(field: &str, value: Value) -> Result<ValidPush, Fault> {
        let mut v = good();
        if value.is_null() {
            v.as_object_mut().unwrap().remove(field);
        } else {
            v[field] = value;
        }
        validate_push(&cfg(), v.to_string().as_bytes(), now())
    }

    fn message(r: Result<ValidPush, Fault>) -> (u16, String, String) {
        let f = r.unwrap_err();
        (f.status, f.code.to_owned(), f.message)
    }

    #[test]
    fn accepts_the_documented_sample_with_numbers() {
        let p = validate_push(&cfg(), good().to_string().as_bytes(), now()).unwrap();
        assert_eq!(p.amount, 1);
        assert_eq!(p.request.phone_number, "254708374149");
        assert!(!p.not_permitted);
    }

    #[test]
    fn field_errors_use_daraja_shapes() {
        let bad = |s: &str| {
            (
                400,
                "400.002.02".to_owned(),
                format!("Bad Request - Invalid {s}"),
            )
        };
        assert_eq!(message(push_with("Amount", json!("1.00"))), bad("Amount"));
        assert_eq!(message(push_with("Amount", json!(10.5))), bad("Amount"));
        assert_eq!(message(push_with("Amount", json!(0))), bad("Amount"));
        assert_eq!(message(push_with("Amount", json!(250_001))), bad("Amount"));
        assert!(push_with("Amount", json!("250000")).is_ok());
        assert_eq!(
            message(push_with("PhoneNumber", json!("0712345678"))),
            bad("PhoneNumber")
        );
        assert_eq!(
            message(push_with("PartyA", json!("255712345678"))),
            bad("PartyA")
        );
        assert!(push_with("PhoneNumber", json!("254112345678")).is_ok());
        assert_eq!(
            message(push_with("CallBackURL", json!("https://example.com/c b"))),
            bad("CallBackURL")
        );
        assert_eq!(
            message(push_with("CallBackURL", json!(" https://example.com/cb"))),
            bad("CallBackURL")
        );
        assert_eq!(
            message(push_with("CallBackURL", json!("example.com/cb"))),
            bad("CallBackURL")
        );
        assert_eq!(
            message(push_with("AccountReference", json!("ABCDEFGHIJKLM"))),
            (
                400,
                "400.002.02".into(),
                "The element AccountReference is invalid".into()
            )
        );
        assert_eq!(
            message(push_with("TransactionDesc", json!("ABCDEFGHIJKLMN"))),
            bad("TransactionDesc")
        );
        assert!(push_with("TransactionDesc", Value::Null).is_ok());
        assert_eq!(
            message(push_with("TransactionType", json!("Pay"))),
            bad("TransactionType")
        );
        assert_eq!(
            message(push_with("BusinessShortCode", json!("17a379"))),
            bad("BusinessShortCode")
        );
        assert_eq!(
            message(push_with("Timestamp", json!("2024-07-21"))),
            bad("Timestamp")
        );
    }

    #[test]
    fn credentials() {
        assert_eq!(
            message(push_with("Password", json!("d3Jvbmc="))),
            (500, "500.001.1001".into(), "Wrong credentials".into())
        );
        assert_eq!(
            message(push_with("BusinessShortCode", json!("600000"))),
            (500, "500.001.1001".into(), "Merchant does not exist".into())
        );
        // A timestamp in UTC instead of EAT is three hours off.
        let utc_ts = now().format("%Y%m%d%H%M%S").to_string();
        assert_eq!(
            message(push_with("Timestamp", json!(utc_ts))).2,
            "Bad Request - Invalid Timestamp"
        );
    }

    #[test]
    fn garbage_never_panics() {
        for body in [
            &b""[..],
            b"[]",
            b"null",
            b"{",
            b"\xff\xfe",
            b"{\"Amount\":{}}",
        ] {
            assert!(validate_push(&cfg(), body, now()).is_err());
            assert!(validate_query(&cfg(), body, now()).is_err());
        }
    }

    #[test]
    fn product_assignment() {
        let p = push_with("PartyB", json!("600000")).unwrap();
        assert!(p.not_permitted);
    }
}
