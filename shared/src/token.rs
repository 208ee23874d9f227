//! Stateless tokens signed with HMAC-SHA256, so that any node can check them.
//!
//! - A **subscribe token** lets one browser read one payment until it expires:
//!   `<expiry unix seconds>.<base64url mac>` over `"sub\0" ‖ checkout_request_id ‖ "\0" ‖ expiry`.
//! - A **callback token** goes into the CallBackURL path of one push:
//!   `<nonce: base64url 16 random bytes>.<issued at, unix seconds>.<base64url mac>` with
//!   the mac over `"cb\0" ‖ nonce ‖ "\0" ‖ issued_at`. Ingest checks the MAC and the age
//!   (`tokens.callback_ttl_secs`) without state; the payment record stores the nonce,
//!   which binds the token to exactly one CheckoutRequestID.
//!
//! Keys are separate per purpose and held as secrets. Comparisons are constant-time.
//!
//! **Rotation.** Each kind has a current key, which signs, and optionally a previous
//! one, which is still accepted. To rotate: set `previous` to the old key and `current`
//! to the new one on every node (ingest nodes first for callback keys), then, once every
//! token signed with the old key has expired, remove `previous`.

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

/// A current key and, during a rotation, the previous one (both accepted).
#[derive(Clone)]
pub struct Keyring {
    current: SecretString,
    previous: Option<SecretString>,
}

/// Which key of a [`Keyring`] verified a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyId {
    Current,
    Previous,
}

impl Keyring {
    /// `previous` may be empty: no rotation in progress.
    pub fn new(current: SecretString, previous: Option<SecretString>) -> Self {
        let previous = previous.filter(|p| !p.expose_secret().is_empty());
        Self { current, previous }
    }

    fn get(&self, id: KeyId) -> Option<&SecretString> {
        match id {
            KeyId::Current => Some(&self.current),
            KeyId::Previous => self.previous.as_ref(),
        }
    }

    /// Tries the current key, then the previous one. The error of the current key is
    /// returned when neither verifies.
    fn verify_with<T>(
        &self,
        mut check: impl FnMut(&SecretString) -> Result<T, TokenError>,
    ) -> Result<(T, KeyId), TokenError> {
        match check(&self.current) {
            Ok(v) => Ok((v, KeyId::Current)),
            Err(TokenError::BadSignature) => match &self.previous {
                Some(prev) => check(prev).map(|v| (v, KeyId::Previous)),
                None => Err(TokenError::BadSignature),
            },
            Err(e) => Err(e),
        }
    }
}

impl From<SecretString> for Keyring {
    fn from(current: SecretString) -> Self {
        Self::new(current, None)
    }
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
    keys: Keyring,
}

impl SubscribeTokens {
    pub fn new(keys: impl Into<Keyring>) -> Self {
        Self { keys: keys.into() }
    }

    fn mac_for(key: &SecretString, id: &CheckoutRequestId, exp: i64) -> [u8; 32] {
        mac(
            key,
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
        format!(
            "{exp}.{}",
            B64.encode(Self::mac_for(&self.keys.current, id, exp))
        )
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
        self.keys
            .verify_with(|key| check_mac(&Self::mac_for(key, id, exp), mac_s))?;
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
    keys: Keyring,
}

/// A freshly issued callback token: the path segment, and the nonce the payment record keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCallbackToken {
    pub token: String,
    pub nonce: String,
}

/// A callback token whose signature and age checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedCallbackToken<'a> {
    pub nonce: &'a str,
    pub issued_at: i64,
    /// The key that signed it; [`CallbackTokens::phone_digest`] must use the same one.
    pub key: KeyId,
}

/// How far in the future an issue time may be (clock skew between nodes).
const MAX_CLOCK_SKEW_SECS: i64 = 300;

impl CallbackTokens {
    pub fn new(keys: impl Into<Keyring>) -> Self {
        Self { keys: keys.into() }
    }

    fn mac_for(key: &SecretString, nonce: &str, issued_at: &str) -> [u8; 32] {
        mac(
            key,
            &[b"cb\0", nonce.as_bytes(), b"\0", issued_at.as_bytes()],
        )
    }

    /// A new unguessable token, issued now.
    pub fn issue(&self) -> IssuedCallbackToken {
        self.issue_at(Utc::now())
    }

    /// A new unguessable token with the given issue time.
    pub fn issue_at(&self, now: DateTime<Utc>) -> IssuedCallbackToken {
        let mut raw = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut raw);
        let nonce = B64.encode(raw);
        let iat = now.timestamp().to_string();
        let m = Self::mac_for(&self.keys.current, &nonce, &iat);
        IssuedCallbackToken {
            token: format!("{nonce}.{iat}.{}", B64.encode(m)),
            nonce,
        }
    }

    /// The token for an existing `nonce` with another issue time, signed with the current
    /// key: for tools and tests that need an old token for a known payment.
    pub fn sign_at(&self, nonce: &str, issued_at: DateTime<Utc>) -> String {
        let iat = issued_at.timestamp().to_string();
        let m = Self::mac_for(&self.keys.current, nonce, &iat);
        format!("{nonce}.{iat}.{}", B64.encode(m))
    }

    /// Checks the signature, then that the token was issued at most `max_age` before
    /// `at` (the time the callback was received). Returns the nonce to compare with the
    /// payment record, and which key signed it.
    pub fn verify<'a>(
        &self,
        token: &'a str,
        at: DateTime<Utc>,
        max_age: std::time::Duration,
    ) -> Result<VerifiedCallbackToken<'a>, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(nonce), Some(iat_s), Some(mac_s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        if nonce.len() != 22
            || iat_s.is_empty()
            || iat_s.len() > 12
            || !iat_s.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(TokenError::Malformed);
        }
        let issued_at: i64 = iat_s.parse().map_err(|_| TokenError::Malformed)?;
        let ((), key) = self
            .keys
            .verify_with(|k| check_mac(&Self::mac_for(k, nonce, iat_s), mac_s))?;
        let age = at.timestamp() - issued_at;
        if age > i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX) || age < -MAX_CLOCK_SKEW_SECS
        {
            return Err(TokenError::Expired);
        }
        Ok(VerifiedCallbackToken {
            nonce,
            issued_at,
            key,
        })
    }

    /// A keyed digest of the phone a push went to, kept in the pending record so that a
    /// callback's unmasked PhoneNumber can be compared without storing the number. Uses
    /// the current key, the one [`CallbackTokens::issue`] signs with.
    pub fn phone_digest(&self, phone: &crate::ids::Msisdn) -> String {
        Self::digest_with(&self.keys.current, phone)
    }

    /// The same digest under the key that signed a verified token; `None` if that key
    /// is no longer configured.
    pub fn phone_digest_with(&self, key: KeyId, phone: &crate::ids::Msisdn) -> Option<String> {
        self.keys.get(key).map(|k| Self::digest_with(k, phone))
    }

    fn digest_with(key: &SecretString, phone: &crate::ids::Msisdn) -> String {
        B64.encode(mac(key, &[b"phone\0", phone.as_str().as_bytes()]))
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

    const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

    #[test]
    fn callback_token_round_trip() {
        let t = CallbackTokens::new(key("cb-key"));
        let a = t.issue();
        let b = t.issue();
        assert_ne!(a.token, b.token);
        assert_eq!(
            t.verify(&a.token, Utc::now(), DAY).map(|v| v.nonce),
            Ok(a.nonce.as_str())
        );
        assert!(a
            .token
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.'));
        let other = CallbackTokens::new(key("other")).issue();
        assert_eq!(
            t.verify(&other.token, Utc::now(), DAY),
            Err(TokenError::BadSignature)
        );
        assert!(t.verify("nonsense", Utc::now(), DAY).is_err());
        let tampered = format!("{}.{}", b.nonce, a.token.split_once('.').unwrap().1);
        assert_eq!(
            t.verify(&tampered, Utc::now(), DAY),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn callback_token_expires_and_its_issue_time_is_signed() {
        let t = CallbackTokens::new(key("cb-key"));
        let at: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let two_h = std::time::Duration::from_secs(7200);
        let tok = t.issue_at(at);
        assert!(t.verify(&tok.token, at, two_h).is_ok());
        assert!(t
            .verify(&tok.token, at + chrono::Duration::seconds(7200), two_h)
            .is_ok());
        assert_eq!(
            t.verify(&tok.token, at + chrono::Duration::seconds(7201), two_h),
            Err(TokenError::Expired)
        );
        // Issued an hour in the future: refused as well.
        assert_eq!(
            t.verify(&tok.token, at - chrono::Duration::hours(1), two_h),
            Err(TokenError::Expired)
        );
        // Moving the issue time breaks the signature.
        let mut parts: Vec<&str> = tok.token.split('.').collect();
        let later = (at.timestamp() + 3600).to_string();
        parts[1] = &later;
        assert_eq!(
            t.verify(&parts.join("."), at, two_h),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn rotation_accepts_the_previous_key_and_signs_with_the_current() {
        let old = CallbackTokens::new(key("old-key"));
        let rotated = CallbackTokens::new(Keyring::new(key("new-key"), Some(key("old-key"))));
        let before = old.issue();
        let v = rotated.verify(&before.token, Utc::now(), DAY).unwrap();
        assert_eq!(v.key, KeyId::Previous);
        let phone = crate::ids::Msisdn::parse("254712345678").unwrap();
        assert_eq!(
            rotated.phone_digest_with(v.key, &phone),
            Some(old.phone_digest(&phone))
        );
        let after = rotated.issue();
        assert_eq!(
            rotated.verify(&after.token, Utc::now(), DAY).unwrap().key,
            KeyId::Current
        );
        // Once the rotation is over, the old key's tokens are refused.
        let done = CallbackTokens::new(key("new-key"));
        assert_eq!(
            done.verify(&before.token, Utc::now(), DAY),
            Err(TokenError::BadSignature)
        );
        // Subscribe tokens rotate the same way.
        let id = CheckoutRequestId::parse("ws_CO_1").unwrap();
        let exp = Utc::now() + chrono::Duration::minutes(5);
        let s_old = SubscribeTokens::new(key("s-old"));
        let s_rot = SubscribeTokens::new(Keyring::new(key("s-new"), Some(key("s-old"))));
        assert_eq!(
            s_rot.verify(&id, &s_old.issue(&id, exp), Utc::now()),
            Ok(())
        );
        assert_eq!(
            SubscribeTokens::new(key("s-new")).verify(&id, &s_old.issue(&id, exp), Utc::now()),
            Err(TokenError::BadSignature)
        );
    }
}
