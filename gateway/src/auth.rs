//! Who may call what.
//!
//! - Merchant backends present an API key as `Authorization: Bearer <key>`; keys come
//!   from config and are compared in constant time.
//! - Browsers present a subscribe token (issued by `POST /v1/stk/push`) for one
//!   payment, as `Authorization: Bearer <token>` or `?token=<token>`.

use actix_web::http::header::AUTHORIZATION;
use actix_web::HttpRequest;
use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use stk_relay_shared::ids::CheckoutRequestId;
use stk_relay_shared::token::SubscribeTokens;
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The configured API keys.
pub struct ApiKeys {
    keys: Vec<SecretString>,
}

/// An authenticated merchant client. `id` is derived from its key (a hash prefix), so
/// it can name the client in idempotency records and logs without revealing the key.
#[derive(Debug, Clone)]
pub struct ApiClient {
    pub id: String,
}

impl ApiKeys {
    pub fn new(keys: Vec<SecretString>) -> Self {
        Self { keys }
    }

    /// Checks a presented key against every configured key (all compared, no early exit).
    pub fn check(&self, presented: &str) -> Option<ApiClient> {
        let mut found: Option<&SecretString> = None;
        for k in &self.keys {
            let k_bytes = k.expose_secret().as_bytes();
            if bool::from(k_bytes.ct_eq(presented.as_bytes())) {
                found = Some(k);
            }
        }
        found.map(|k| {
            let digest = Sha256::digest(k.expose_secret().as_bytes());
            let id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
            ApiClient { id }
        })
    }
}

/// The bearer credential of a request, if any.
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    let v = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(rest.trim())
    } else {
        None
    }
}

/// Requires a merchant API key.
pub fn require_api_key(req: &HttpRequest, keys: &ApiKeys) -> Result<ApiClient, ApiError> {
    bearer(req)
        .and_then(|k| keys.check(k))
        .ok_or(ApiError::Unauthorized)
}

/// Requires, for payment `id`: a subscribe token in the header or query, or (when
/// `allow_api_key`) a merchant API key.
pub fn require_payment_access(
    req: &HttpRequest,
    query_token: Option<&str>,
    id: &CheckoutRequestId,
    tokens: &SubscribeTokens,
    keys: Option<&ApiKeys>,
) -> Result<(), ApiError> {
    let now = Utc::now();
    if let Some(b) = bearer(req) {
        if tokens.verify(id, b, now).is_ok() {
            return Ok(());
        }
        if let Some(keys) = keys {
            if keys.check(b).is_some() {
                return Ok(());
            }
        }
    }
    if let Some(t) = query_token {
        if tokens.verify(id, t, now).is_ok() {
            return Ok(());
        }
    }
    Err(ApiError::Unauthorized)
}
