//! Applying a callback's outcome through the shared store, with a bounded retry while
//! Redis is unreachable (then the caller answers 503).

use std::time::{Duration, Instant};

use stk_relay_shared::daraja::callback::StkCallback;
use stk_relay_shared::store::{ApplyOutcome, PaymentStore, StoreError};

/// Applies `callback` under the token `nonce`, retrying `Unavailable`/`Timeout` errors
/// with backoff until `budget` is spent.
pub async fn apply_with_retry(
    store: &PaymentStore,
    callback: &StkCallback,
    nonce: &str,
    budget: Duration,
) -> Result<ApplyOutcome, StoreError> {
    let outcome = callback.to_outcome(chrono::Utc::now());
    let deadline = Instant::now() + budget;
    let mut delay = Duration::from_millis(25);
    loop {
        match store
            .apply_final(&callback.checkout_request_id, Some(nonce), &outcome)
            .await
        {
            Ok(r) => return Ok(r),
            Err(e @ (StoreError::Unavailable(_) | StoreError::Timeout)) => {
                if Instant::now() + delay >= deadline {
                    return Err(e);
                }
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "redis unavailable; retrying callback");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(400));
            }
            Err(e) => return Err(e),
        }
    }
}
