//! Checkout session tokens for the Durable Objects compatibility routes
//! (`/sessions/{token}/…`, see `docs/compat.md`).
//!
//! The merchant's backend mints one per checkout session with a secret it shares with
//! the gateways (`compat.session_secret`); the browser only carries it. Format, with
//! base64url without padding:
//!
//! ```text
//! <base64url(payload JSON)>.<base64url(HMAC-SHA256(secret, <base64url(payload JSON)>))>
//! ```
//!
//! The MAC covers the first segment exactly as sent (its ASCII bytes), so a backend in
//! any language signs the string it built and the gateway never re-encodes anything.
//! Payload: `{"sid","amount","ref","phone"?,"desc"?,"exp"}`, see [`SessionClaims`].
//!
//! Verification: length bound first ([`MAX_SESSION_TOKEN_LEN`]), then the MAC in
//! constant time (current key, then the previous one during a rotation), then the JSON,
//! then the expiry (with [`CLOCK_SKEW_SECS`] of tolerance, and at most
//! [`MAX_SESSION_LIFETIME_SECS`] ahead), then every field with the parsers of
//! `POST /v1/stk/push` ([`crate::ids`]). Nothing here panics on input.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::ids::{AccountReference, Amount, Msisdn, TransactionDesc, ValidationError};

type HmacSha256 = Hmac<Sha256>;

/// Longest token looked at; anything longer is refused before any work.
pub const MAX_SESSION_TOKEN_LEN: usize = 1024;
/// A token is still accepted this many seconds after its `exp` (clock skew between the
/// merchant's backend and the gateways).
pub const CLOCK_SKEW_SECS: i64 = 30;
/// A token whose `exp` lies further ahead than this is refused: sessions are short, and
/// the single-use claim of a token is kept until it expires.
pub const MAX_SESSION_LIFETIME_SECS: i64 = 24 * 3600;
/// Bounds and alphabet of `sid`.
pub const MIN_SID_LEN: usize = 16;
pub const MAX_SID_LEN: usize = 48;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionTokenError {
    #[error("session token is too long")]
    TooLong,
    #[error("session token is malformed")]
    Malformed,
    #[error("session token signature is invalid")]
    BadSignature,
    #[error("session token has expired")]
    Expired,
    #[error("session token expires too far in the future")]
    TooFarAhead,
    #[error("session token carries an invalid value: {0}")]
    Invalid(#[from] ValidationError),
}

/// The payload as it travels (and as a backend writes it). `amount` is a JSON number
/// (a numeric string is accepted too, as by `POST /v1/stk/push`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionPayload {
    /// Random, unique per checkout session: 16 to 48 of `A-Z a-z 0-9 _ -`.
    pub sid: String,
    pub amount: serde_json::Value,
    #[serde(rename = "ref")]
    pub account_reference: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    /// Expiry, Unix seconds.
    pub exp: i64,
}

/// A verified session: what the token binds, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionClaims {
    pub sid: SessionId,
    pub amount: Amount,
    pub account_reference: AccountReference,
    pub phone: Option<Msisdn>,
    pub description: Option<TransactionDesc>,
    pub exp: i64,
}

/// A checkout session id: safe inside Redis key names (as a hash tag) and log lines.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionId(String);

impl SessionId {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        if raw.is_empty() {
            return Err(ValidationError::Missing { field: "sid" });
        }
        let ok_len = (MIN_SID_LEN..=MAX_SID_LEN).contains(&raw.len());
        let ok_chars = raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok_len || !ok_chars {
            return Err(ValidationError::Invalid {
                field: "sid",
                reason: "must be 16 to 48 of A-Z, a-z, 0-9, '_' and '-'",
            });
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn mac(key: &SecretString, payload_b64: &str) -> [u8; 32] {
    let mut m = match <HmacSha256 as Mac>::new_from_slice(key.expose_secret().as_bytes()) {
        Ok(m) => m,
        // HMAC takes keys of any length; this arm is never taken.
        Err(_) => return [0u8; 32],
    };
    m.update(payload_b64.as_bytes());
    m.finalize().into_bytes().into()
}

/// Mints (for tests and tools) and verifies session tokens. The current key signs;
/// during a rotation the previous one is still accepted.
#[derive(Clone)]
pub struct SessionTokens {
    current: SecretString,
    previous: Option<SecretString>,
}

impl SessionTokens {
    /// `previous` may be empty: no rotation in progress.
    pub fn new(current: SecretString, previous: Option<SecretString>) -> Self {
        let previous = previous.filter(|p| !p.expose_secret().is_empty());
        Self { current, previous }
    }

    /// The token for `payload`, signed with the current key.
    pub fn issue(&self, payload: &SessionPayload) -> Result<String, serde_json::Error> {
        let body = B64.encode(serde_json::to_vec(payload)?);
        let sig = B64.encode(mac(&self.current, &body));
        Ok(format!("{body}.{sig}"))
    }

    /// Checks `token` at `now` (Unix seconds) and returns what it binds.
    pub fn verify(&self, token: &str, now: i64) -> Result<SessionClaims, SessionTokenError> {
        if token.len() > MAX_SESSION_TOKEN_LEN {
            return Err(SessionTokenError::TooLong);
        }
        let (body, sig) = token.split_once('.').ok_or(SessionTokenError::Malformed)?;
        let given = B64.decode(sig).map_err(|_| SessionTokenError::Malformed)?;
        if given.len() != 32 {
            return Err(SessionTokenError::Malformed);
        }
        let matches = |key: &SecretString| bool::from(mac(key, body).as_slice().ct_eq(&given));
        if !matches(&self.current) && !self.previous.as_ref().is_some_and(matches) {
            return Err(SessionTokenError::BadSignature);
        }
        let json = B64.decode(body).map_err(|_| SessionTokenError::Malformed)?;
        let p: SessionPayload =
            serde_json::from_slice(&json).map_err(|_| SessionTokenError::Malformed)?;
        if p.exp.saturating_add(CLOCK_SKEW_SECS) <= now {
            return Err(SessionTokenError::Expired);
        }
        if p.exp > now.saturating_add(MAX_SESSION_LIFETIME_SECS) {
            return Err(SessionTokenError::TooFarAhead);
        }
        Ok(SessionClaims {
            sid: SessionId::parse(&p.sid)?,
            amount: Amount::from_json(&p.amount)?,
            account_reference: AccountReference::parse(&p.account_reference)?,
            phone: p.phone.as_deref().map(Msisdn::parse).transpose()?,
            description: p.desc.as_deref().map(TransactionDesc::parse).transpose()?,
            exp: p.exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_750_000_000;

    fn tokens() -> SessionTokens {
        SessionTokens::new(
            SecretString::from("a-session-secret-of-at-least-32-bytes!!"),
            None,
        )
    }

    fn payload() -> SessionPayload {
        SessionPayload {
            sid: "cs_0123456789abcdef".into(),
            amount: 100.into(),
            account_reference: "ORDER-1".into(),
            phone: Some("254712345678".into()),
            desc: Some("Order 1".into()),
            exp: NOW + 600,
        }
    }

    #[test]
    fn round_trip() {
        let t = tokens().issue(&payload()).unwrap();
        let c = tokens().verify(&t, NOW).unwrap();
        assert_eq!(c.sid.as_str(), "cs_0123456789abcdef");
        assert_eq!(c.amount.get(), 100);
        assert_eq!(c.account_reference.as_str(), "ORDER-1");
        assert_eq!(c.phone.as_ref().map(Msisdn::as_str), Some("254712345678"));
        assert_eq!(c.exp, NOW + 600);
        // Phone and description are optional.
        let bare = SessionPayload {
            phone: None,
            desc: None,
            ..payload()
        };
        let c = tokens()
            .verify(&tokens().issue(&bare).unwrap(), NOW)
            .unwrap();
        assert!(c.phone.is_none() && c.description.is_none());
    }

    /// The format the docs show a backend building by hand verifies.
    #[test]
    fn hand_built_token_verifies() {
        let json = r#"{"sid":"cs_0123456789abcdef","amount":100,"ref":"ORDER-1","exp":1750000600}"#;
        let body = B64.encode(json);
        let sig = B64.encode(mac(
            &SecretString::from("a-session-secret-of-at-least-32-bytes!!"),
            &body,
        ));
        assert!(tokens().verify(&format!("{body}.{sig}"), NOW).is_ok());
    }

    /// The token `docs/compat.md`'s Node and Python examples print for a fixed sid and
    /// clock (both print exactly this string).
    #[test]
    fn docs_example_vector_verifies() {
        let t = "eyJzaWQiOiJNREV5TXpRMU5qYzRPV0ZpWTJSbFptZG8iLCJhbW91bnQiOjEwMCwicmVmIjoiT1JERVItMSIsImV4cCI6MTc1MDAwMDkwMCwicGhvbmUiOiIyNTQ3MTIzNDU2NzgifQ.ctX9yirX1-qrC9gRjHSaCIAMQ8-KWdBzARrsKsDWyAw";
        let c = tokens().verify(t, NOW).unwrap();
        assert_eq!(c.sid.as_str(), "MDEyMzQ1Njc4OWFiY2RlZmdo");
        assert_eq!(c.amount.get(), 100);
        assert_eq!(c.account_reference.as_str(), "ORDER-1");
        assert_eq!(c.phone.as_ref().map(Msisdn::as_str), Some("254712345678"));
        assert_eq!(c.exp, NOW + 900);
    }

    #[test]
    fn any_changed_byte_is_refused() {
        let t = tokens().issue(&payload()).unwrap();
        let bytes = t.as_bytes();
        for i in 0..bytes.len() {
            let mut b = bytes.to_vec();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let s = String::from_utf8(b).unwrap();
            if s == t {
                continue;
            }
            assert!(
                tokens().verify(&s, NOW).is_err(),
                "byte {i} changed, accepted"
            );
        }
    }

    #[test]
    fn a_changed_amount_without_the_secret_is_refused() {
        let t = tokens().issue(&payload()).unwrap();
        let (_, sig) = t.split_once('.').unwrap();
        let forged = SessionPayload {
            amount: 1.into(),
            ..payload()
        };
        let body = B64.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(
            tokens().verify(&format!("{body}.{sig}"), NOW),
            Err(SessionTokenError::BadSignature)
        );
        let other = SessionTokens::new(
            SecretString::from("another-secret-of-at-least-32-bytes!!!!"),
            None,
        );
        let t = other.issue(&forged).unwrap();
        assert_eq!(
            tokens().verify(&t, NOW),
            Err(SessionTokenError::BadSignature)
        );
    }

    #[test]
    fn expiry_and_skew() {
        let t = tokens().issue(&payload()).unwrap();
        assert!(tokens().verify(&t, NOW + 600 + CLOCK_SKEW_SECS - 1).is_ok());
        assert_eq!(
            tokens().verify(&t, NOW + 600 + CLOCK_SKEW_SECS),
            Err(SessionTokenError::Expired)
        );
        let far = SessionPayload {
            exp: NOW + MAX_SESSION_LIFETIME_SECS + 1,
            ..payload()
        };
        assert_eq!(
            tokens().verify(&tokens().issue(&far).unwrap(), NOW),
            Err(SessionTokenError::TooFarAhead)
        );
    }

    #[test]
    fn oversize_and_garbage_are_refused() {
        let long = "a".repeat(MAX_SESSION_TOKEN_LEN + 1);
        assert_eq!(tokens().verify(&long, NOW), Err(SessionTokenError::TooLong));
        for bad in ["", ".", "abc", "abc.def", "..", "é.é"] {
            assert!(tokens().verify(bad, NOW).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn signed_bad_json_and_bad_values_are_refused() {
        let key = SecretString::from("a-session-secret-of-at-least-32-bytes!!");
        let sign = |json: &str| {
            let body = B64.encode(json);
            format!("{body}.{}", B64.encode(mac(&key, &body)))
        };
        assert_eq!(
            tokens().verify(&sign("not json"), NOW),
            Err(SessionTokenError::Malformed)
        );
        assert_eq!(
            tokens().verify(&sign(r#"{"sid":"cs_0123456789abcdef"}"#), NOW),
            Err(SessionTokenError::Malformed)
        );
        let bad_values = [
            r#"{"sid":"short","amount":1,"ref":"A","exp":1750000600}"#,
            r#"{"sid":"cs_0123456789abcdef","amount":0,"ref":"A","exp":1750000600}"#,
            r#"{"sid":"cs_0123456789abcdef","amount":1.5,"ref":"A","exp":1750000600}"#,
            r#"{"sid":"cs_0123456789abcdef","amount":1,"ref":"","exp":1750000600}"#,
            r#"{"sid":"cs_0123456789abcdef","amount":1,"ref":"A","phone":"12","exp":1750000600}"#,
            r#"{"sid":"cs_0123456789abcdef:x","amount":1,"ref":"A","exp":1750000600}"#,
        ];
        for json in bad_values {
            assert!(
                matches!(
                    tokens().verify(&sign(json), NOW),
                    Err(SessionTokenError::Invalid(_))
                ),
                "{json} accepted"
            );
        }
    }

    #[test]
    fn previous_key_is_accepted_during_rotation() {
        let old = tokens();
        let t = old.issue(&payload()).unwrap();
        let rotated = SessionTokens::new(
            SecretString::from("the-new-session-secret-of-32-bytes-min"),
            Some(SecretString::from(
                "a-session-secret-of-at-least-32-bytes!!",
            )),
        );
        assert!(rotated.verify(&t, NOW).is_ok());
        let no_prev = SessionTokens::new(
            SecretString::from("the-new-session-secret-of-32-bytes-min"),
            Some(SecretString::from("")),
        );
        assert_eq!(
            no_prev.verify(&t, NOW),
            Err(SessionTokenError::BadSignature)
        );
    }
}
