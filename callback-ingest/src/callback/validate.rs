//! Whether a callback is trusted.
//!
//! Daraja does not sign callbacks. Trust comes from the CallBackURL: each push gets its
//! own HMAC-signed token (`shared::token::CallbackTokens`) that carries its issue time.
//! Here the signature and the age are checked statelessly, against the time the callback
//! was received; the store's script then checks that the token's nonce is the one
//! recorded for this CheckoutRequestID (binding the token to one payment), and that the
//! callback matches its push (MerchantRequestID, amount, phone).

use std::time::Duration;

use chrono::{DateTime, Utc};
use stk_relay_shared::token::{CallbackTokens, VerifiedCallbackToken};

use crate::error::IngestError;

/// Returns the verified token if its signature is valid and it was issued at most
/// `max_age` before `received_at`.
pub fn check_token<'a>(
    tokens: &CallbackTokens,
    token: &'a str,
    received_at: DateTime<Utc>,
    max_age: Duration,
) -> Result<VerifiedCallbackToken<'a>, IngestError> {
    tokens.verify(token, received_at, max_age).map_err(|e| {
        tracing::warn!(reason = %e, "callback rejected: bad token");
        IngestError::Forbidden
    })
}
