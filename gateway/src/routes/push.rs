//! `POST /v1/stk/push`: the merchant's backend asks for an STK push.
//!
//! Flow: API key → body (bounded, JSON, typed) → a place in the pending-write bound →
//! Idempotency-Key → callback token → Daraja STK Push → PENDING record in Redis (or, if
//! Redis does not answer within a short budget, in the background queue of
//! `crate::pending`) → subscribe token for the browser → the key's outcome.
//!
//! Once Daraja accepted a push the merchant always gets its ids and token (200), except
//! on a CheckoutRequestID collision (502, logged at error). `pending::on_recorded` runs
//! after the pending record is written, here or in the background writer.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use sha2::{Digest, Sha256};
use stk_relay_shared::api::{PushRequest, PushResponse};
use stk_relay_shared::daraja::client::StkPush;
use stk_relay_shared::daraja::DarajaError;
use stk_relay_shared::history::Pushed;
use stk_relay_shared::http::{record_checkout_request_id, request_span};
use stk_relay_shared::ids::{
    AccountReference, Amount, CheckoutRequestId, MerchantRequestId, Msisdn, TransactionDesc,
};
use stk_relay_shared::metrics::{self, PushOutcome};
use stk_relay_shared::payment::{PaymentState, StateHead};
use stk_relay_shared::store::{retry_while_unavailable, RecordOutcome, StoreError};

use crate::auth::require_api_key;
use crate::config::MerchantSettings;
use crate::error::ApiError;
use crate::idempotency::{valid_key, Begin};
use crate::pending::{on_recorded, write_pending, IdemAction, PendingWrite, Slot, Work};
use crate::routes::{parse_json, read_body, require_json};
use crate::startup::AppState;

/// How long the push route itself retries a write while Redis is unreachable, before
/// it hands the write to the background queue (`crate::pending`) and answers.
const INLINE_WRITE_BUDGET: Duration = Duration::from_secs(1);

/// A push request after validation.
pub(crate) struct ValidPush {
    pub(crate) phone: Msisdn,
    pub(crate) amount: Amount,
    pub(crate) account_reference: AccountReference,
    pub(crate) description: Option<TransactionDesc>,
    /// The push's own webhook URL, checked against `merchant.allowed_webhook_hosts`.
    pub(crate) webhook_url: Option<String>,
}

impl ValidPush {
    /// A push from values already parsed at the edge (by routes other than this one).
    pub(crate) fn new(
        phone: Msisdn,
        amount: Amount,
        account_reference: AccountReference,
        description: Option<TransactionDesc>,
    ) -> Self {
        Self {
            phone,
            amount,
            account_reference,
            description,
            webhook_url: None,
        }
    }

    fn parse(body: &[u8], merchant: &MerchantSettings, insecure: bool) -> Result<Self, ApiError> {
        let raw: PushRequest = parse_json(body)?;
        let webhook_url = raw
            .webhook_url
            .map(|url| {
                let host = MerchantSettings::check_url(&url, insecure)
                    .map_err(|e| ApiError::Malformed(format!("webhook_url {e}")))?;
                if !merchant.allowed_webhook_hosts.contains(&host) {
                    return Err(ApiError::Malformed(
                        "webhook_url: its host is not in merchant.allowed_webhook_hosts".into(),
                    ));
                }
                Ok(url)
            })
            .transpose()?;
        Ok(Self {
            phone: Msisdn::parse(&raw.phone)?,
            amount: Amount::from_json(&raw.amount)?,
            account_reference: AccountReference::parse(&raw.account_reference)?,
            description: raw
                .description
                .as_deref()
                .map(TransactionDesc::parse)
                .transpose()?,
            webhook_url,
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
        // Only when given, so that the hashes of requests without one stay as they were.
        if let Some(url) = &self.webhook_url {
            h.update(url.as_bytes());
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
    let request = request_span(&req);
    let idem_key = match req.headers().get("Idempotency-Key") {
        None => None,
        Some(v) => Some(v.to_str().ok().filter(|k| valid_key(k)).ok_or_else(|| {
            ApiError::Malformed("Idempotency-Key must be 1 to 255 visible ASCII characters".into())
        })?),
    };
    require_json(&req)?;
    let body = read_body(&req, payload, state.settings.api.max_body_bytes).await?;
    let push = ValidPush::parse(
        &body,
        &state.settings.merchant,
        state.settings.dev.allow_insecure,
    )?;
    let Some(idem_key) = idem_key else {
        return send_push(&state, push, &request)
            .await
            .map(|response| HttpResponse::Ok().json(response))
            .map_err(|f| f.error);
    };

    let slot = reserve_slot(&state)?;
    // The claim below needs Redis, so no push starts while it is down.
    let request_hash = push.hash();
    let rkey = match state
        .idempotency
        .begin(&client.id, idem_key, &request_hash)
        .await?
    {
        (Begin::New, rkey) => rkey,
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
    };

    let result = initiate(&state, push, &request).await;

    let idem = idem_action(rkey, request_hash, &result);
    match result {
        Ok(Accepted {
            response,
            unwritten: Some(write),
        }) => {
            // Redis did not answer: the pending record, then the key, are written in the
            // background. The merchant gets the ids and the token now.
            state.pending.enqueue(
                Work {
                    write: Some(write),
                    idem,
                },
                slot,
            );
            Ok(HttpResponse::Ok().json(response))
        }
        Ok(Accepted {
            response,
            unwritten: None,
        }) => {
            finish_idem(&state, idem, slot).await;
            Ok(HttpResponse::Ok().json(response))
        }
        Err(f) => {
            finish_idem(&state, idem, slot).await;
            Err(f.error)
        }
    }
}

/// A prompt must never be sent that could not be recorded: the push takes its place in
/// the pending-write bound before Daraja is contacted, and is refused if there is none.
fn reserve_slot(state: &AppState) -> Result<Slot, ApiError> {
    state.pending.reserve().ok_or_else(|| {
        tracing::warn!("pending-write bound reached; push refused before contacting Daraja");
        metrics::push(PushOutcome::RefusedQueueFull, "none");
        ApiError::Unavailable("pending-write queue full".into())
    })
}

/// A push without an Idempotency-Key, from a validated request: `POST /v1/stk/push`
/// without the header, and the compatibility initiate (`routes::compat`). It takes a
/// pending-write slot, checks Redis, sends the push, and writes the pending record
/// inline or queues it, exactly as every push does. `request` is the request's root span
/// (`shared::http::request_span`), which gets the payment's `checkout_request_id`.
pub(crate) async fn send_push(
    state: &AppState,
    push: ValidPush,
    request: &tracing::Span,
) -> Result<PushResponse, Failed> {
    let slot = reserve_slot(state).map_err(Failed::before_push)?;
    // While Redis is down no push starts: the browser could not follow it. A Redis that
    // fails after this check is covered by the pending-write queue.
    state
        .store
        .storage()
        .ping()
        .await
        .map_err(|e| Failed::before_push(e.into()))?;
    match initiate(state, push, request).await? {
        Accepted {
            response,
            unwritten: Some(write),
        } => {
            // Redis did not answer: the pending record is written in the background.
            // The caller gets the ids and the token now.
            state.pending.enqueue(
                Work {
                    write: Some(write),
                    idem: None,
                },
                slot,
            );
            Ok(response)
        }
        Accepted {
            response,
            unwritten: None,
        } => Ok(response),
    }
}

/// What the key's record must become after this push.
fn idem_action(
    rkey: String,
    request_hash: String,
    result: &Result<Accepted, Failed>,
) -> Option<IdemAction> {
    let stored = match result {
        Ok(a) => (200, serde_json::to_string(&a.response)),
        // The push may be live at Daraja: a retry with this key must not push again,
        // so the error is remembered and replayed.
        Err(f) if f.may_have_pushed => (
            f.error.code().http_status(),
            serde_json::to_string(&f.error.body()),
        ),
        // Certainly no push was sent: release the key so the request can be retried.
        Err(_) => return Some(IdemAction::Abort { rkey }),
    };
    match stored {
        (status, Ok(body)) => Some(IdemAction::Complete {
            rkey,
            request_hash,
            status,
            body,
        }),
        (_, Err(e)) => {
            // Left in progress: it outlives the push, so a retry gets 409, never a prompt.
            tracing::error!(error = %e, idempotency_record = %rkey, "could not encode the idempotent response");
            None
        }
    }
}

/// Writes the key's outcome now, or queues it (behind earlier queued writes, or when
/// Redis does not answer). `slot` is released when it is done.
async fn finish_idem(state: &AppState, idem: Option<IdemAction>, slot: Slot) {
    let Some(idem) = idem else { return };
    if !state.pending.is_busy() {
        let r = retry_while_unavailable(INLINE_WRITE_BUDGET, "idempotency outcome", || async {
            match &idem {
                IdemAction::Complete {
                    rkey,
                    request_hash,
                    status,
                    body,
                } => {
                    state
                        .idempotency
                        .complete(rkey, request_hash, *status, body)
                        .await
                }
                IdemAction::Abort { rkey } => state.idempotency.abort(rkey).await,
            }
        })
        .await;
        match r {
            Ok(()) => return,
            Err(e @ (StoreError::Unavailable(_) | StoreError::Timeout)) => {
                tracing::warn!(error = %e, "idempotency outcome queued");
            }
            Err(e) => {
                tracing::error!(error = %e, "could not store the idempotency outcome");
                return;
            }
        }
    }
    state.pending.enqueue(
        Work {
            write: None,
            idem: Some(idem),
        },
        slot,
    );
}

/// A push that Daraja accepted. `unwritten` is its pending record when Redis did not
/// answer in time: the caller queues it.
struct Accepted {
    response: PushResponse,
    unwritten: Option<PendingWrite>,
}

/// A push that failed, and whether a prompt may nevertheless be live at Daraja.
pub(crate) struct Failed {
    pub(crate) error: ApiError,
    pub(crate) may_have_pushed: bool,
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

/// Sends the push and records it. Once Daraja has answered with a CheckoutRequestID,
/// it is recorded on the current span and on `request` (the request's root span), so
/// every later line of this request, a 5xx's included, names the payment.
async fn initiate(
    state: &AppState,
    push: ValidPush,
    request: &tracing::Span,
) -> Result<Accepted, Failed> {
    let cb = state.callback_tokens.issue();
    // Where the payment's webhook events go (payment.lua's `wh` field).
    let webhook = match &push.webhook_url {
        Some(url) => url.clone(),
        None if !state.settings.merchant.webhook_url.is_empty() => "*".to_owned(),
        None => String::new(),
    };
    let callback_url = format!(
        "{}/v1/callbacks/stk/{}",
        state.settings.callbacks.public_base_url, cb.token
    );
    // The push as normalised, for the payment's history: masked phone, no URL or token.
    let pushed = Pushed {
        amount: push.amount.get(),
        phone_number: push.phone.masked(),
        account_reference: push.account_reference.as_str().to_owned(),
        description: push.description.as_ref().map(|d| d.as_str().to_owned()),
        webhook: !webhook.is_empty(),
    };
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
            let outcome = match &e {
                DarajaError::Timeout { .. }
                | DarajaError::Transport(_)
                | DarajaError::ConnectionLost(_) => PushOutcome::DarajaUnreachable,
                _ => PushOutcome::DarajaError,
            };
            let code = match &e {
                DarajaError::Api { .. } | DarajaError::Auth { .. } => {
                    metrics::daraja_code(e.daraja_error_code())
                }
                DarajaError::Timeout { .. }
                | DarajaError::Transport(_)
                | DarajaError::ConnectionLost(_) => "none",
                _ => "other",
            };
            metrics::push(outcome, code);
            Failed {
                may_have_pushed: e.may_have_reached_daraja(),
                error: ApiError::from(e),
            }
        })?;
    if resp.response_code != "0" {
        tracing::warn!(
            response_code = %stk_relay_shared::text::clean_external(&resp.response_code),
            "STK push refused by Daraja"
        );
        metrics::push(
            PushOutcome::DarajaError,
            metrics::daraja_code(Some(&resp.response_code)),
        );
        return Err(Failed::before_push(ApiError::Daraja {
            daraja_code: Some(resp.response_code.clone()),
            message: resp.response_description.clone(),
        }));
    }
    let checkout = CheckoutRequestId::parse(&resp.checkout_request_id).map_err(|e| {
        metrics::push(PushOutcome::BadResponse, "none");
        Failed::after_push(ApiError::Internal(format!(
            "Daraja returned a bad CheckoutRequestID: {e}"
        )))
    })?;
    let merchant = MerchantRequestId::parse(&resp.merchant_request_id).map_err(|e| {
        metrics::push(PushOutcome::BadResponse, "none");
        Failed::after_push(ApiError::Internal(format!(
            "Daraja returned a bad MerchantRequestID: {e}"
        )))
    })?;
    record_checkout_request_id(request, checkout.as_str());

    let now = Utc::now();
    let write = PendingWrite {
        state: PaymentState::pending(
            checkout.clone(),
            merchant.clone(),
            push.amount.get(),
            push.phone.masked(),
            now,
        ),
        nonce: cb.nonce,
        phone_digest: state.callback_tokens.phone_digest(&push.phone),
        webhook,
        pushed,
    };
    let (status, unwritten) = match record_inline(state, &write).await {
        Err(e @ (StoreError::Unavailable(_) | StoreError::Timeout)) => {
            tracing::warn!(checkout_request_id = %checkout, error = %e, "push accepted by Daraja; pending write goes to the background queue");
            metrics::push(PushOutcome::Queued, "none");
            ("PENDING".to_owned(), Some(write))
        }
        Err(e) => {
            tracing::error!(checkout_request_id = %checkout, error = %e, "push accepted by Daraja but not recorded");
            metrics::push(PushOutcome::NotRecorded, "none");
            return Err(Failed::after_push(e.into()));
        }
        Ok(RecordOutcome::Collision) => {
            tracing::error!(
                checkout_request_id = %checkout,
                "CheckoutRequestID collision: a record bound to another push exists; left as is"
            );
            metrics::push(PushOutcome::BadResponse, "none");
            return Err(Failed::after_push(ApiError::Daraja {
                daraja_code: None,
                message: "Daraja returned a CheckoutRequestID that belongs to another payment"
                    .into(),
            }));
        }
        Ok(outcome) => {
            metrics::push(PushOutcome::Accepted, "none");
            on_recorded(&state.store, &checkout, &outcome).await;
            let status = match &outcome {
                RecordOutcome::AppliedEarly(s) | RecordOutcome::AlreadyExists(s) => status_of(s),
                _ => "PENDING".to_owned(),
            };
            (status, None)
        }
    };
    let expires = now + chrono::Duration::seconds(state.settings.tokens.subscribe_ttl_secs as i64);
    Ok(Accepted {
        response: PushResponse {
            checkout_request_id: checkout.as_str().to_owned(),
            merchant_request_id: merchant.as_str().to_owned(),
            status,
            customer_message: resp.customer_message,
            token: state.subscribe_tokens.issue(&checkout, expires),
            expires_at: expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        },
        unwritten,
    })
}

/// The pending write, tried inline for a short budget. Skipped (reported unavailable)
/// while earlier writes are queued, so that writes land in the order of acceptance.
async fn record_inline(state: &AppState, w: &PendingWrite) -> Result<RecordOutcome, StoreError> {
    if state.pending.is_busy() {
        return Err(StoreError::Unavailable(
            "earlier pending writes are still queued".into(),
        ));
    }
    retry_while_unavailable(INLINE_WRITE_BUDGET, "pending write", || {
        write_pending(state, &state.store, w)
    })
    .await
}

/// The `status` of a stored STATE JSON, `PENDING` if it cannot be read.
fn status_of(state_json: &str) -> String {
    StateHead::parse(state_json)
        .map(|h| h.status.as_str().to_owned())
        .unwrap_or_else(|_| "PENDING".to_owned())
}
