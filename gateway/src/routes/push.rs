//! `POST /v1/stk/push`: the merchant's backend asks for an STK push.
//!
//! Flow: API key → body (bounded, JSON, typed) → Idempotency-Key → callback token →
//! Daraja STK Push → PENDING record in Redis → subscribe token for the browser.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use sha2::{Digest, Sha256};
use stk_relay_shared::api::{PushRequest, PushResponse};
use stk_relay_shared::daraja::client::StkPush;
use stk_relay_shared::ids::{
    AccountReference, Amount, CheckoutRequestId, MerchantRequestId, Msisdn, TransactionDesc,
};
use stk_relay_shared::payment::{PaymentState, StateHead};
use stk_relay_shared::store::{retry_while_unavailable, RecordOutcome};

use crate::auth::require_api_key;
use crate::error::ApiError;
use crate::idempotency::{valid_key, Begin};
use crate::routes::read_body;
use crate::startup::AppState;

/// How long the pending write may keep retrying while Redis is unreachable.
const RECORD_RETRY_BUDGET: Duration = Duration::from_secs(2);

/// A push request after validation.
struct ValidPush {
    phone: Msisdn,
    amount: Amount,
    account_reference: AccountReference,
    description: Option<TransactionDesc>,
}

impl ValidPush {
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let raw: PushRequest = serde_json::from_slice(body).map_err(|e| {
            ApiError::Malformed(format!(
                "invalid JSON body: {}",
                redact_digit_runs(&e.to_string())
            ))
        })?;
        Ok(Self {
            phone: Msisdn::parse(&raw.phone)?,
            amount: Amount::from_json(&raw.amount)?,
            account_reference: AccountReference::parse(&raw.account_reference)?,
            description: raw
                .description
                .as_deref()
                .map(TransactionDesc::parse)
                .transpose()?,
        })
    }

    /// Hash of the normalised request: the same payment written differently (spaces in
    /// the phone, amount as a string) counts as the same body.
    fn hash(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            self.phone.as_str(),
            &self.amount.get().to_string(),
            self.account_reference.as_str(),
            self.description.as_ref().map_or("", |d| d.as_str()),
        ] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[tracing::instrument(name = "stk_push", skip_all, fields(client = tracing::field::Empty, checkout_request_id = tracing::field::Empty))]
pub async fn push(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let client = require_api_key(&req, &state.api_keys)?;
    tracing::Span::current().record("client", client.id.as_str());
    let idem_key = match req.headers().get("Idempotency-Key") {
        None => None,
        Some(v) => Some(v.to_str().ok().filter(|k| valid_key(k)).ok_or_else(|| {
            ApiError::Malformed("Idempotency-Key must be 1 to 255 visible ASCII characters".into())
        })?),
    };
    if let Some(ct) = req.headers().get(actix_web::http::header::CONTENT_TYPE) {
        let json = ct
            .to_str()
            .ok()
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
    }
    let body = read_body(&req, payload, state.settings.api.max_body_bytes).await?;
    let push = ValidPush::parse(&body)?;

    // A prompt must never be sent for a payment that cannot be recorded: without Redis
    // the browser could not learn the result. (With an Idempotency-Key the claim below
    // already needs Redis.)
    if idem_key.is_none() {
        state.store.pool().ping().await?;
    }

    let record_key = match idem_key {
        None => None,
        Some(k) => match state.idempotency.begin(&client.id, k, &push.hash()).await? {
            (Begin::New, rkey) => Some(rkey),
            (Begin::Replay { status, body }, _) => {
                tracing::info!("idempotent replay");
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                return Ok(HttpResponse::build(status)
                    .content_type("application/json")
                    .insert_header(("Idempotent-Replayed", "true"))
                    .body(body));
            }
            (Begin::Conflict, _) => return Err(ApiError::IdempotencyKeyReused),
            (Begin::InProgress, _) => return Err(ApiError::IdempotencyInProgress),
        },
    };

    let result = initiate(&state, push).await;

    if let Some(rkey) = record_key {
        let stored = match &result {
            Ok(resp) => Some((200, serde_json::to_string(resp))),
            // The push may be live at Daraja: a retry with this key must not push again,
            // so the error is remembered and replayed.
            Err(f) if f.may_have_pushed => Some((
                f.error.code().http_status(),
                serde_json::to_string(&f.error.body()),
            )),
            // Certainly no push was sent: release the key so the request can be retried.
            Err(_) => None,
        };
        match stored {
            Some((status, Ok(body))) => {
                if let Err(e) = state.idempotency.complete(&rkey, status, &body).await {
                    tracing::warn!(error = %e, "could not store idempotent response; the key expires by itself");
                }
            }
            Some((_, Err(e))) => return Err(ApiError::Internal(e.to_string())),
            None => state.idempotency.abort(&rkey).await,
        }
    }
    match result {
        Ok(resp) => Ok(HttpResponse::Ok().json(resp)),
        Err(f) => Err(f.error),
    }
}

/// A push that failed, and whether a prompt may nevertheless be live at Daraja.
struct Failed {
    error: ApiError,
    may_have_pushed: bool,
}

impl Failed {
    fn before_push(error: ApiError) -> Self {
        Self {
            error,
            may_have_pushed: false,
        }
    }

    fn after_push(error: ApiError) -> Self {
        Self {
            error,
            may_have_pushed: true,
        }
    }
}

async fn initiate(state: &AppState, push: ValidPush) -> Result<PushResponse, Failed> {
    let cb = state.callback_tokens.issue();
    let callback_url = format!(
        "{}/v1/callbacks/stk/{}",
        state.settings.callbacks.public_base_url, cb.token
    );
    tracing::info!(phone = %push.phone, amount = push.amount.get(), "sending STK push");
    let resp = state
        .daraja
        .stk_push(&StkPush {
            phone: push.phone.clone(),
            amount: push.amount,
            account_reference: push.account_reference,
            description: push.description,
            callback_url,
        })
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, may_have_reached_daraja = e.may_have_reached_daraja(), "STK push failed");
            Failed {
                may_have_pushed: e.may_have_reached_daraja(),
                error: ApiError::from(e),
            }
        })?;
    if resp.response_code != "0" {
        return Err(Failed::before_push(ApiError::Daraja {
            daraja_code: Some(resp.response_code.clone()),
            message: resp.response_description.clone(),
        }));
    }
    let checkout = CheckoutRequestId::parse(&resp.checkout_request_id).map_err(|e| {
        Failed::after_push(ApiError::Internal(format!(
            "Daraja returned a bad CheckoutRequestID: {e}"
        )))
    })?;
    let merchant = MerchantRequestId::parse(&resp.merchant_request_id).map_err(|e| {
        Failed::after_push(ApiError::Internal(format!(
            "Daraja returned a bad MerchantRequestID: {e}"
        )))
    })?;
    tracing::Span::current().record("checkout_request_id", checkout.as_str());

    let now = Utc::now();
    let pending = PaymentState::pending(
        checkout.clone(),
        merchant.clone(),
        push.amount.get(),
        push.phone.masked(),
        now,
    );
    let phone_digest = state.callback_tokens.phone_digest(&push.phone);
    let status = match record_with_retry(state, &pending, &cb.nonce, &phone_digest)
        .await
        .map_err(Failed::after_push)?
    {
        RecordOutcome::Pending(_) => {
            tracing::info!("payment pending");
            state.schedule_reconcile(&checkout, now).await;
            "PENDING".to_owned()
        }
        RecordOutcome::AppliedEarly(state_json) => {
            tracing::info!("callback had already arrived; payment final and published");
            status_of(&state_json)
        }
        RecordOutcome::PendingMismatch { fields, .. } => {
            tracing::warn!(mismatch = %fields, "an early callback did not match this push; payment pending, handed to reconciliation");
            "PENDING".to_owned()
        }
        RecordOutcome::PendingConfirmation(_) => {
            tracing::info!("an early success callback awaits confirmation by STK Push Query");
            "PENDING".to_owned()
        }
        RecordOutcome::Collision => {
            tracing::error!(
                "CheckoutRequestID collision: a record bound to another push exists; left as is"
            );
            return Err(Failed::after_push(ApiError::Daraja {
                daraja_code: None,
                message: "Daraja returned a CheckoutRequestID that belongs to another payment"
                    .into(),
            }));
        }
        RecordOutcome::AlreadyExists(state_json) => {
            tracing::warn!("a record for this CheckoutRequestID already existed; left as is");
            status_of(&state_json)
        }
    };
    let expires = now + chrono::Duration::seconds(state.settings.tokens.subscribe_ttl_secs as i64);
    Ok(PushResponse {
        checkout_request_id: checkout.as_str().to_owned(),
        merchant_request_id: merchant.as_str().to_owned(),
        status,
        customer_message: resp.customer_message,
        token: state.subscribe_tokens.issue(&checkout, expires),
        expires_at: expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
}

async fn record_with_retry(
    state: &AppState,
    pending: &PaymentState,
    nonce: &str,
    phone_digest: &str,
) -> Result<RecordOutcome, ApiError> {
    retry_while_unavailable(RECORD_RETRY_BUDGET, "pending write", || {
        state.store.record_pending(pending, nonce, phone_digest)
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "push accepted by Daraja but not recorded");
        e.into()
    })
}

/// The `status` of a stored STATE JSON, `PENDING` if it cannot be read.
fn status_of(state_json: &str) -> String {
    StateHead::parse(state_json)
        .map(|h| h.status.as_str().to_owned())
        .unwrap_or_else(|_| "PENDING".to_owned())
}

/// serde's messages quote the offending value (`invalid type: integer `254712345678``);
/// a phone number sent as a number must not come back in the response or reach the
/// logs. Runs of seven or more digits are replaced.
fn redact_digit_runs(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut run = String::new();
    for c in msg.chars().chain(std::iter::once('\0')) {
        if c.is_ascii_digit() {
            run.push(c);
            continue;
        }
        if run.len() >= 7 {
            out.push_str("[redacted]");
        } else {
            out.push_str(&run);
        }
        run.clear();
        if c != '\0' {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact_digit_runs;

    #[test]
    fn long_digit_runs_are_redacted() {
        assert_eq!(
            redact_digit_runs(
                "invalid type: integer `254712345678`, expected a string at line 1 column 22"
            ),
            "invalid type: integer `[redacted]`, expected a string at line 1 column 22"
        );
        assert_eq!(redact_digit_runs("amount 250000"), "amount 250000");
    }
}
