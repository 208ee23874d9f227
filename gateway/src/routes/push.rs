//! `POST /v1/stk/push`: the merchant's backend asks for an STK push.
//!
//! Flow: API key → body (bounded, JSON, typed) → Idempotency-Key → callback token →
//! Daraja STK Push → PENDING record in Redis → subscribe token for the browser.

use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use sha2::{Digest, Sha256};
use stk_relay_shared::api::{PushRequest, PushResponse};
use stk_relay_shared::daraja::client::StkPush;
use stk_relay_shared::ids::{
    AccountReference, Amount, CheckoutRequestId, MerchantRequestId, Msisdn, TransactionDesc,
};
use stk_relay_shared::payment::PaymentState;
use stk_relay_shared::store::{RecordOutcome, StoreError};

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
        let raw: PushRequest = serde_json::from_slice(body)
            .map_err(|e| ApiError::Malformed(format!("invalid JSON body: {e}")))?;
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
    let body = read_body(&req, payload, state.settings.api.max_body_bytes).await?;
    let push = ValidPush::parse(&body)?;

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
        match &result {
            Ok(resp) => {
                let body = serde_json::to_string(resp).map_err(|e| ApiError::Internal(e.to_string()))?;
                if let Err(e) = state.idempotency.complete(&rkey, 200, &body).await {
                    tracing::warn!(error = %e, "could not store idempotent response");
                }
            }
            // The push may have reached Daraja: a retry must not push again.
            Err(e @ ApiError::DarajaTimeout) => {
                let body = serde_json::to_string(&e.body()).map_err(|e| ApiError::Internal(e.to_string()))?;
                if let Err(err) = state.idempotency.complete(&rkey, e.code().http_status(), &body).await {
                    tracing::warn!(error = %err, "could not store idempotent response");
                }
            }
            Err(_) => state.idempotency.abort(&rkey).await,
        }
    }
    let resp = result?;
    Ok(HttpResponse::Ok().json(resp))
}

async fn initiate(state: &AppState, push: ValidPush) -> Result<PushResponse, ApiError> {
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
            tracing::warn!(error = %e, "STK push failed");
            ApiError::from(e)
        })?;
    if resp.response_code != "0" {
        return Err(ApiError::Daraja {
            daraja_code: Some(resp.response_code.clone()),
            message: resp.response_description.clone(),
        });
    }
    let checkout = CheckoutRequestId::parse(&resp.checkout_request_id)
        .map_err(|e| ApiError::Internal(format!("Daraja returned a bad CheckoutRequestID: {e}")))?;
    let merchant = MerchantRequestId::parse(&resp.merchant_request_id)
        .map_err(|e| ApiError::Internal(format!("Daraja returned a bad MerchantRequestID: {e}")))?;
    tracing::Span::current().record("checkout_request_id", checkout.as_str());

    let now = Utc::now();
    let pending = PaymentState::pending(
        checkout.clone(),
        merchant.clone(),
        push.amount.get(),
        push.phone.masked(),
        now,
    );
    match record_with_retry(state, &pending, &cb.nonce).await? {
        RecordOutcome::Pending(_) => tracing::info!("payment pending"),
        RecordOutcome::AppliedEarly(_) => {
            tracing::info!("callback had already arrived; payment final and published")
        }
        RecordOutcome::AlreadyExists(_) => {
            tracing::warn!("a record for this CheckoutRequestID already existed; left as is")
        }
    }
    let expires = now + chrono::Duration::seconds(state.settings.tokens.subscribe_ttl_secs as i64);
    Ok(PushResponse {
        checkout_request_id: checkout.as_str().to_owned(),
        merchant_request_id: merchant.as_str().to_owned(),
        status: "PENDING".to_owned(),
        customer_message: resp.customer_message,
        token: state.subscribe_tokens.issue(&checkout, expires),
        expires_at: expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
}

async fn record_with_retry(
    state: &AppState,
    pending: &PaymentState,
    nonce: &str,
) -> Result<RecordOutcome, ApiError> {
    let deadline = Instant::now() + RECORD_RETRY_BUDGET;
    let mut delay = Duration::from_millis(25);
    loop {
        match state.store.record_pending(pending, nonce).await {
            Ok(r) => return Ok(r),
            Err(e @ (StoreError::Unavailable(_) | StoreError::Timeout)) if Instant::now() + delay < deadline => {
                tracing::warn!(error = %e, "redis unavailable; retrying pending write");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(400));
            }
            Err(e) => {
                tracing::error!(error = %e, "push accepted by Daraja but not recorded");
                return Err(e.into());
            }
        }
    }
}
