//! One callback, from its raw token and body to the store: the single path that both the
//! HTTP route and the spool's replay take.
//!
//! [`process`] checks the token, parses the body and applies the outcome through the
//! store's script, with the bounded retry while Redis is unreachable. It is given the
//! time the callback was received: for a live callback that is now, for a replayed one
//! the time it was spooled, so that whatever is judged by time (a token's age) is judged
//! as of the callback's arrival, never as of its replay.

use chrono::{DateTime, Utc};
use stk_relay_shared::daraja::callback::parse_callback;
use stk_relay_shared::daraja::callback::CallbackError;
use stk_relay_shared::ids::CheckoutRequestId;
use stk_relay_shared::metrics::{self, CallbackOutcome};
use stk_relay_shared::store::{retry_while_unavailable, ApplyOutcome, StoreError};

use crate::callback::{apply::apply_with_retry, validate::check_token};
use crate::error::IngestError;
use crate::startup::AppState;

/// A callback that went through: its payment and what the store made of it.
#[derive(Debug)]
pub struct Processed {
    pub checkout_request_id: CheckoutRequestId,
    pub outcome: ApplyOutcome,
}

/// Checks, parses and applies one callback received at `received_at`.
///
/// Records `checkout_request_id` and `result_code` on the current span, and counts the
/// callback in `stk_relay_ingest_callbacks_total` unless Redis was unreachable (the
/// caller counts that: spooled, or refused). Errors:
/// `Forbidden` (bad token, or a token of another payment), `Malformed` (the body),
/// `Unavailable` (Redis did not answer within `callbacks.redis_retry_budget_ms`: the
/// callback was checked and parsed, and may be spooled), `RedisRefused` (Redis answered
/// with an error, e.g. out of memory).
pub async fn process(
    state: &AppState,
    token: &str,
    body: &[u8],
    received_at: DateTime<Utc>,
) -> Result<Processed, IngestError> {
    let verified = check_token(
        &state.callback_tokens,
        token,
        received_at,
        state.settings.callback_token_ttl(),
    )
    .inspect_err(|_| metrics::callback(CallbackOutcome::Forbidden))?;
    let callback = parse_callback(body).map_err(|e| {
        tracing::warn!(error = %e, "callback rejected: malformed");
        metrics::callback(match e {
            CallbackError::TooLarge { .. } => CallbackOutcome::TooLarge,
            _ => CallbackOutcome::Malformed,
        });
        IngestError::Malformed(e)
    })?;
    let span = tracing::Span::current();
    span.record("checkout_request_id", callback.checkout_request_id.as_str());
    span.record(
        "result_code",
        tracing::field::display(&callback.result_code),
    );

    let outcome = apply_with_retry(
        &state.store,
        &state.callback_tokens,
        &callback,
        &verified,
        received_at,
        state.settings.retry_budget(),
        state.settings.callbacks.confirm_with_query,
    )
    .await
    .map_err(|e| match e {
        StoreError::Unavailable(_) | StoreError::Timeout => IngestError::Unavailable(e.to_string()),
        StoreError::Protocol(_) => {
            metrics::callback(CallbackOutcome::RedisError);
            IngestError::RedisRefused(e.to_string())
        }
    })?;
    metrics::callback(outcome_label(&outcome));
    let id = callback.checkout_request_id.as_str();
    match &outcome {
        ApplyOutcome::Applied { .. } => {
            tracing::info!(checkout_request_id = id, "payment final; published")
        }
        ApplyOutcome::Corrected { .. } => tracing::warn!(
            checkout_request_id = id,
            "genuine callback after the payment was closed as UNCONFIRMED; recorded as a correction (version 3)"
        ),
        ApplyOutcome::Mismatch { fields } => {
            tracing::warn!(
                checkout_request_id = id,
                mismatch = %fields,
                "callback does not match its push; not applied, handed to reconciliation"
            );
            hand_to_reconciliation(state, &callback.checkout_request_id).await;
        }
        ApplyOutcome::AwaitingConfirmation => {
            tracing::info!(
                checkout_request_id = id,
                "success callback kept until STK Push Query confirms it; handed to reconciliation"
            );
            hand_to_reconciliation(state, &callback.checkout_request_id).await;
        }
        ApplyOutcome::Duplicate => tracing::info!(
            checkout_request_id = id,
            "duplicate callback acknowledged; nothing published"
        ),
        ApplyOutcome::Early => tracing::info!(
            checkout_request_id = id,
            "callback arrived before the pending record; kept for it"
        ),
        ApplyOutcome::NotFound => {
            tracing::warn!(checkout_request_id = id, "callback for an unknown payment")
        }
        ApplyOutcome::EarlyFull => {
            tracing::warn!(
                checkout_request_id = id,
                "callback before its pending record, and this payment already holds the most early records; refused"
            );
            return Err(IngestError::Forbidden);
        }
        ApplyOutcome::Forbidden => {
            tracing::warn!(
                checkout_request_id = id,
                "callback rejected: token belongs to another payment"
            );
            return Err(IngestError::Forbidden);
        }
    }
    if let Some(journal) = &state.journal {
        if !matches!(outcome, ApplyOutcome::NotFound) {
            journal.record(token, body, received_at);
        }
    }
    Ok(Processed {
        checkout_request_id: callback.checkout_request_id,
        outcome,
    })
}

/// The metrics label of a store verdict.
fn outcome_label(outcome: &ApplyOutcome) -> CallbackOutcome {
    match outcome {
        ApplyOutcome::Applied { .. } => CallbackOutcome::Applied,
        ApplyOutcome::Corrected { .. } => CallbackOutcome::Corrected,
        ApplyOutcome::Mismatch { .. } => CallbackOutcome::Mismatch,
        ApplyOutcome::AwaitingConfirmation => CallbackOutcome::AwaitingConfirmation,
        ApplyOutcome::Duplicate => CallbackOutcome::Duplicate,
        ApplyOutcome::Early => CallbackOutcome::Early,
        ApplyOutcome::EarlyFull => CallbackOutcome::EarlyFull,
        ApplyOutcome::NotFound => CallbackOutcome::NotFound,
        ApplyOutcome::Forbidden => CallbackOutcome::Forbidden,
    }
}

/// Makes the payment due for an STK Push Query now. The payment is already in the due set
/// since its pending write, so a failure here only delays the query to its scheduled
/// time: logged, not returned (Daraja still gets its acknowledgement).
async fn hand_to_reconciliation(state: &AppState, id: &CheckoutRequestId) {
    let r = retry_while_unavailable(state.settings.retry_budget(), "reconcile hand-over", || {
        state.schedule.due_now(id)
    })
    .await;
    if let Err(e) = r {
        tracing::error!(checkout_request_id = %id, error = %e, "could not hand the payment to reconciliation now; it stays due at its scheduled time");
    }
}
