//! Applying a callback's outcome through the shared store, with a bounded retry while
//! Redis is unreachable.
//!
//! The callback is applied together with what it says it is for (its MerchantRequestID
//! and a keyed digest of its PhoneNumber), so the store's script can refuse one that does
//! not match its push.

use std::time::Duration;

use chrono::{DateTime, Utc};
use stk_relay_shared::daraja::callback::StkCallback;
use stk_relay_shared::store::{
    retry_while_unavailable, ApplyOutcome, CallbackBinding, PaymentStore, StoreError,
};
use stk_relay_shared::token::{CallbackTokens, VerifiedCallbackToken};

/// What the callback says it is for.
pub fn binding_of(
    tokens: &CallbackTokens,
    callback: &StkCallback,
    token: &VerifiedCallbackToken<'_>,
) -> CallbackBinding {
    CallbackBinding {
        mrid: callback.merchant_request_id.as_str().to_owned(),
        phd: callback
            .metadata
            .phone
            .as_ref()
            .and_then(|p| tokens.phone_digest_with(token.key, p))
            .unwrap_or_default(),
    }
}

/// Applies `callback`, delivered under `token` and received at `received_at`, retrying
/// `Unavailable`/`Timeout` errors with backoff until `budget` is spent. With
/// `confirm_with_query`, a success is kept until STK Push Query confirms it.
pub async fn apply_with_retry(
    store: &PaymentStore,
    tokens: &CallbackTokens,
    callback: &StkCallback,
    token: &VerifiedCallbackToken<'_>,
    received_at: DateTime<Utc>,
    budget: Duration,
    confirm_with_query: bool,
) -> Result<ApplyOutcome, StoreError> {
    let outcome = callback.to_outcome(received_at);
    let binding = binding_of(tokens, callback, token);
    retry_while_unavailable(budget, "callback", || {
        store.apply_callback(
            &callback.checkout_request_id,
            token.nonce,
            &outcome,
            &binding,
            confirm_with_query,
        )
    })
    .await
}
