//! Applying a callback's outcome through the shared store, with a bounded retry while
//! Redis is unreachable (then the caller answers 503).

use std::time::Duration;

use stk_relay_shared::daraja::callback::StkCallback;
use stk_relay_shared::store::{retry_while_unavailable, ApplyOutcome, PaymentStore, StoreError};

/// Applies `callback` under the token `nonce`, retrying `Unavailable`/`Timeout` errors
/// with backoff until `budget` is spent.
pub async fn apply_with_retry(
    store: &PaymentStore,
    callback: &StkCallback,
    nonce: &str,
    budget: Duration,
) -> Result<ApplyOutcome, StoreError> {
    let outcome = callback.to_outcome(chrono::Utc::now());
    retry_while_unavailable(budget, "callback", || {
        store.apply_final(&callback.checkout_request_id, Some(nonce), &outcome)
    })
    .await
}
