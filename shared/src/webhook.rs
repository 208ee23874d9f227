//! Signed webhooks: the event a merchant's backend receives, and the
//! `Stk-Relay-Signature` header that proves it came from us. The gateway's delivery
//! workers (`gateway/src/webhooks/`) sign with [`sign`]; tests, the admin CLI and
//! `docs/api.md`'s examples verify the same way as [`verify`].
//!
//! The header is `Stk-Relay-Signature: t=<unix seconds>,v1=<hex>`, where `<hex>` is the
//! lowercase hex HMAC-SHA256, keyed with `merchant.webhook_secret`, of the bytes
//! `"<t>.<body>"`. A receiver recomputes it over the raw body it got, compares in
//! constant time, and refuses a `t` outside its replay window. Each attempt is signed
//! anew (a new `t`); the body and the event id stay the same across retries.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::Sha256;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Stk-Relay-Signature";
/// The header repeating the event's id (the body has it too), for logs and routing.
pub const EVENT_ID_HEADER: &str = "Stk-Relay-Event-Id";
/// Which attempt this is, from 1.
pub const ATTEMPT_HEADER: &str = "Stk-Relay-Attempt";

/// The kind of event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    /// A payment reached its final state (version 2).
    #[serde(rename = "payment.final")]
    Final,
    /// A payment closed as `UNCONFIRMED` got its genuine result later (version 3).
    #[serde(rename = "payment.corrected")]
    Corrected,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Final => "payment.final",
            Self::Corrected => "payment.corrected",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "payment.final" => Some(Self::Final),
            "payment.corrected" => Some(Self::Corrected),
            _ => None,
        }
    }
}

/// The body of a webhook POST. `id` is stable across retries
/// (`evt_<CheckoutRequestID>_v<version>`), so a receiver de-duplicates on it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEvent<'a> {
    pub id: &'a str,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// When the state was published (RFC 3339, UTC, milliseconds).
    pub created_at: &'a str,
    /// The STATE exactly as the browser gets it.
    #[serde(borrow)]
    pub data: &'a RawValue,
}

/// The event id of a payment's state `version`.
pub fn event_id(checkout_request_id: &str, version: u32) -> String {
    format!("evt_{checkout_request_id}_v{version}")
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header is malformed")]
    Malformed,
    #[error("the signature's timestamp is outside the replay window")]
    Stale,
    #[error("the signature does not match")]
    Mismatch,
}

fn mac(secret: &[u8], t: u64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    m.update(t.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// The header value for `body` sent at `t` (Unix seconds).
pub fn sign(secret: &[u8], t: u64, body: &[u8]) -> String {
    let tag = mac(secret, t, body).finalize().into_bytes();
    let mut out = String::with_capacity(80);
    out.push_str("t=");
    out.push_str(&t.to_string());
    out.push_str(",v1=");
    for b in tag {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let val = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(val(p[0])? << 4 | val(p[1])?))
        .collect()
}

/// Checks a received `header` against the raw `body`: `t` within `tolerance_secs` of
/// `now` (Unix seconds), and a `v1` that matches in constant time. Several `v1` entries
/// (during a secret rotation) pass if any matches.
pub fn verify(
    header: &str,
    body: &[u8],
    secret: &[u8],
    now: u64,
    tolerance_secs: u64,
) -> Result<(), SignatureError> {
    let mut t = None;
    let mut tags = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.parse::<u64>().map_err(|_| SignatureError::Malformed)?),
            Some(("v1", v)) => tags.push(unhex(v).ok_or(SignatureError::Malformed)?),
            _ => {}
        }
    }
    let (Some(t), false) = (t, tags.is_empty()) else {
        return Err(SignatureError::Malformed);
    };
    if t.abs_diff(now) > tolerance_secs {
        return Err(SignatureError::Stale);
    }
    let ok = tags
        .iter()
        .any(|tag| mac(secret, t, body).verify_slice(tag).is_ok());
    if ok {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_any_change_breaks_it() {
        let body = br#"{"id":"evt_ws_CO_1_v2"}"#;
        let h = sign(b"secret", 1_700_000_000, body);
        assert!(h.starts_with("t=1700000000,v1="));
        assert_eq!(h.len(), "t=1700000000,v1=".len() + 64);
        assert_eq!(verify(&h, body, b"secret", 1_700_000_100, 300), Ok(()));
        assert_eq!(
            verify(&h, b"{}", b"secret", 1_700_000_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&h, body, b"other", 1_700_000_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&h, body, b"secret", 1_700_000_301, 300),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify("v1=00", body, b"secret", 1, 300),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify("t=1,v1=zz", body, b"secret", 1, 300),
            Err(SignatureError::Malformed)
        );
        // A second v1 (another secret during a rotation) does not hurt.
        let rotated = format!("{h},v1={}", "ab".repeat(32));
        assert_eq!(
            verify(&rotated, body, b"secret", 1_700_000_000, 300),
            Ok(())
        );
    }

    #[test]
    fn the_documented_example_holds() {
        // docs/api.md, "Verifying a webhook": the same inputs give the same header.
        let body = br#"{"id":"evt_ws_CO_123_v2","type":"payment.final","createdAt":"2026-12-03T10:00:00.000Z","data":{}}"#;
        let h = sign(b"whsec_example_only", 1_764_756_000, body);
        assert_eq!(
            verify(&h, body, b"whsec_example_only", 1_764_756_000, 0),
            Ok(())
        );
    }

    #[test]
    fn the_event_body_has_the_documented_shape() {
        let data = RawValue::from_string(r#"{"status":"SUCCESS"}"#.to_owned()).unwrap();
        let e = WebhookEvent {
            id: "evt_ws_CO_1_v2",
            kind: EventType::Final,
            created_at: "2026-12-03T10:00:00.000Z",
            data: &data,
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"id":"evt_ws_CO_1_v2","type":"payment.final","createdAt":"2026-12-03T10:00:00.000Z","data":{"status":"SUCCESS"}}"#
        );
        assert_eq!(event_id("ws_CO_1", 3), "evt_ws_CO_1_v3");
        assert_eq!(
            EventType::parse("payment.corrected"),
            Some(EventType::Corrected)
        );
    }
}
