//! `POST /v1/callbacks/stk/{callback_token}`: Daraja's STK callback.
//!
//! Order of checks: token signature (403), body size (413), shape (400), then the
//! store's script, which also checks the token belongs to this payment (403). A genuine
//! callback, first or duplicate, gets 200 `{"ResultCode":0,"ResultDesc":"Accepted"}`.

use actix_web::{web, HttpRequest, HttpResponse};
use stk_relay_shared::daraja::callback::parse_callback;
use stk_relay_shared::daraja::types::CallbackAck;
use stk_relay_shared::store::ApplyOutcome;

use crate::callback::{apply::apply_with_retry, validate::check_token};
use crate::error::IngestError;
use crate::routes::read_body;
use crate::startup::AppState;

#[tracing::instrument(name = "stk_callback", skip_all, fields(checkout_request_id = tracing::field::Empty, result_code = tracing::field::Empty))]
pub async fn stk_callback(
    req: HttpRequest,
    token: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, IngestError> {
    let received_at = chrono::Utc::now();
    let verified = check_token(
        &state.callback_tokens,
        &token,
        received_at,
        state.settings.callback_token_ttl(),
    )?;
    let body = read_body(&req, payload, state.settings.callbacks.max_body_bytes).await?;
    let callback = parse_callback(&body).map_err(|e| {
        tracing::warn!(error = %e, "callback rejected: malformed");
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
    .map_err(|e| IngestError::Unavailable(e.to_string()))?;
    match outcome {
        ApplyOutcome::Applied { .. } => tracing::info!("payment final; published"),
        ApplyOutcome::Corrected { .. } => tracing::warn!(
            "genuine callback after the payment was closed as UNCONFIRMED; recorded as a correction (version 3)"
        ),
        ApplyOutcome::Mismatch { fields } => tracing::warn!(
            mismatch = %fields,
            "callback does not match its push; not applied, handed to reconciliation"
        ),
        ApplyOutcome::AwaitingConfirmation => tracing::info!(
            "success callback kept until STK Push Query confirms it; handed to reconciliation"
        ),
        ApplyOutcome::Duplicate => {
            tracing::info!("duplicate callback acknowledged; nothing published")
        }
        ApplyOutcome::Early => {
            tracing::info!("callback arrived before the pending record; kept for it")
        }
        ApplyOutcome::NotFound => tracing::warn!("callback for an unknown payment"),
        ApplyOutcome::EarlyFull => {
            tracing::warn!("callback before its pending record, and this payment already holds the most early records; refused");
            return Err(IngestError::Forbidden);
        }
        ApplyOutcome::Forbidden => {
            tracing::warn!("callback rejected: token belongs to another payment");
            return Err(IngestError::Forbidden);
        }
    }
    Ok(HttpResponse::Ok().json(CallbackAck::accepted()))
}
