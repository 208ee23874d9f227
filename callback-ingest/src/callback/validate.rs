//! Whether a callback is trusted.
//!
//! Daraja does not sign callbacks. Trust comes from the CallBackURL: each push gets its
//! own HMAC-signed token (`shared::token::CallbackTokens`). Here the signature is
//! checked statelessly; the store's script then checks that the token's nonce is the
//! one recorded for this CheckoutRequestID, which binds the token to one payment.

use stk_relay_shared::token::CallbackTokens;

use crate::error::IngestError;

/// Returns the token's nonce if its signature is valid.
pub fn check_token<'a>(tokens: &CallbackTokens, token: &'a str) -> Result<&'a str, IngestError> {
    tokens.verify(token).map_err(|e| {
        tracing::warn!(reason = %e, "callback rejected: bad token");
        IngestError::Forbidden
    })
}
