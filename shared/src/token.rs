//! Stateless tokens signed with HMAC-SHA256, so that any node can check them.
//!
//! - A **subscribe token** lets one browser read one payment until it expires:
//!   `<expiry unix seconds>.<base64url mac>` over `"sub\0" ‖ checkout_request_id ‖ "\0" ‖ expiry`.
//! - A **callback token** goes into the CallBackURL path of one push:
//!   `<base64url 16 random bytes>.<base64url mac>` over `"cb\0" ‖ nonce`. Ingest checks the
//!   MAC without state; the payment record stores the nonce, which binds the token to
//!   exactly one CheckoutRequestID.
//!
//! Keys are separate per purpose and held as secrets. Comparisons are constant-time.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::ids::CheckoutRequestId;

type HmacSha256 = Hmac<Sha256>;

/// Longest token we look at. Anything longer is rejected before any work.
pub const MAX_TOKEN_LEN: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
}

fn mac(key: &SecretString, parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this never fails.
    let mut m = <HmacSha256 as Mac>::new_from_slice(key.expose_secret().as_bytes())
        .expect("HMAC takes keys of any length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

fn check_mac(expected: &[u8; 32], given_b64: &str) -> Result<(), TokenError> {
    let given = B64.decode(given_b64).map_err(|_| TokenError::Malformed)?;
    if given.len() != 32 {
        return Err(TokenError::Malformed);
    }
    if bool::from(expected.as_slice().ct_eq(&given)) {
        Ok(())
    } else {
        Err(TokenError::BadSignature)
    }
}

/// Issues and checks subscribe tokens.
#[derive(Clone)]
pub struct SubscribeTokens {
    key: SecretString,
}

impl SubscribeTokens {
    pub fn new(key: SecretString) -> Self {
        Self { key }
    }

    fn mac_for(&self, id: &CheckoutRequestId, exp: i64) -> [u8; 32] {
        mac(
            &self.key,
            &[
                b"sub\0",
                id.as_str().as_bytes(),
                b"\0",
                exp.to_string().as_bytes(),
            ],
        )
    }

    /// A token for `id` that expires at `expires_at`.
    pub fn issue(&self, id: &CheckoutRequestId, expires_at: DateTime<Utc>) -> String {
        let exp = expires_at.timestamp();
        format!("{exp}.{}", B64.encode(self.mac_for(id, exp)))
    }

    /// Checks that `token` was issued for `id` and has not expired at `now`.
    pub fn verify(
        &self,
        id: &CheckoutRequestId,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<(), TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let (exp_s, mac_s) = token.split_once('.').ok_or(TokenError::Malformed)?;
        if exp_s.is_empty() || exp_s.len() > 12 || !exp_s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(TokenError::Malformed);
        }
        let exp: i64 = exp_s.parse().map_err(|_| TokenError::Malformed)?;
        check_mac(&self.mac_for(id, exp), mac_s)?;
        if now.timestamp() >= exp {
            return Err(TokenError::Expired);
        }
        Ok(())
    }
}

impl std::fmt::Debug for SubscribeTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubscribeTokens([REDACTED])")
    }
}

/// Issues and checks callback tokens.
#[derive(Clone)]
pub struct CallbackTokens {
    key: SecretString,
}

/// A freshly issued callback token: the path segment, and the nonce the payment record keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCallbackToken {
    pub token: String,
    pub nonce: String,
}

impl CallbackTokens {
    pub fn new(key: SecretString) -> Self {
        Self { key }
    }

    /// A new unguessable token.
    pub fn issue(&self) -> IssuedCallbackToken {
        let mut raw = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut raw);
        let nonce = B64.encode(raw);
        let m = mac(&self.key, &[b"cb\0", nonce.as_bytes()]);
        IssuedCallbackToken {
            token: format!("{nonce}.{}", B64.encode(m)),
            nonce,
        }
    }

    /// Checks the signature and returns the nonce to compare with the payment record.
    pub fn verify<'a>(&self, token: &'a str) -> Result<&'a str, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let (nonce, mac_s) = token.split_once('.').ok_or(TokenError::Malformed)?;
        if nonce.len() != 22 {
            return Err(TokenError::Malformed);
        }
        check_mac(&mac(&self.key, &[b"cb\0", nonce.as_bytes()]), mac_s)?;
        Ok(nonce)
    }
}

impl std::fmt::Debug for CallbackTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallbackTokens([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[test]
    fn subscribe_token_round_trip_and_binding() {
        let t = SubscribeTokens::new(key("k1"));
        let id = CheckoutRequestId::parse("ws_CO_1").unwrap();
        let other = CheckoutRequestId::parse("ws_CO_2").unwrap();
        let now: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let tok = t.issue(&id, now + chrono::Duration::minutes(10));
        assert_eq!(t.verify(&id, &tok, now), Ok(()));
        assert_eq!(t.verify(&other, &tok, now), Err(TokenError::BadSignature));
        assert_eq!(
            t.verify(&id, &tok, now + chrono::Duration::minutes(10)),
            Err(TokenError::Expired)
        );
        let forged =
            SubscribeTokens::new(key("k2")).issue(&id, now + chrono::Duration::minutes(10));
        assert_eq!(t.verify(&id, &forged, now), Err(TokenError::BadSignature));
        for bad in [
            "",
            ".",
            "abc",
            "1.",
            "x.y",
            "99999999999999999999.AAAA",
            &"a".repeat(500),
        ] {
            assert!(t.verify(&id, bad, now).is_err(), "{bad}");
        }
        // Moving the expiry invalidates the signature.
        let (_, m) = tok.split_once('.').unwrap();
        let moved = format!("{}.{m}", (now + chrono::Duration::days(1)).timestamp());
        assert_eq!(t.verify(&id, &moved, now), Err(TokenError::BadSignature));
    }

    #[test]
    fn callback_token_round_trip() {
        let t = CallbackTokens::new(key("cb-key"));
        let a = t.issue();
        let b = t.issue();
        assert_ne!(a.token, b.token);
        assert_eq!(t.verify(&a.token), Ok(a.nonce.as_str()));
        assert!(a
            .token
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.'));
        let other = CallbackTokens::new(key("other")).issue();
        assert_eq!(t.verify(&other.token), Err(TokenError::BadSignature));
        assert!(t.verify("nonsense").is_err());
        let tampered = format!("{}.{}", b.nonce, a.token.split_once('.').unwrap().1);
        assert_eq!(t.verify(&tampered), Err(TokenError::BadSignature));
    }
}
