//! The Durable Objects design's routes (`docs/compat.md`), served when
//! `compat.enabled`:
//! - `POST /sessions/{token}/initiate`: starts the session's one push.
//! - `GET /sessions/{token}/websocket`: `STK_INITIATED`, then `PAYMENT_COMPLETED`.
//!
//! `{token}` is a session token signed by the merchant's backend
//! (`shared::session_token`): it binds the amount, the account reference, optionally the
//! phone, and an expiry, so a browser can start no push the merchant did not sign, and
//! change nothing in it. A token starts at most one push (`crate::sessions`). The push
//! itself is `POST /v1/stk/push`'s (`routes::push::send_push`). Tokens never reach the
//! logs: the request span records the route pattern, not the path.

use actix_cors::Cors;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use stk_relay_shared::compat::{InitiateRequest, InitiateResponse, StkInitiated};
use stk_relay_shared::ids::{AccountReference, Amount, CheckoutRequestId, Msisdn, ValidationError};
use stk_relay_shared::session_token::{SessionClaims, SessionTokens, CLOCK_SKEW_SECS};
use stk_relay_shared::store::retry_while_unavailable;
use tracing::Instrument;

use crate::error::ApiError;
use crate::routes::payments::{check_origin, feed_error};
use crate::routes::push::{send_push, ValidPush};
use crate::routes::{parse_json, read_body, require_json};
use crate::sessions::SessionStore;
use crate::startup::AppState;
use crate::ws::compat::CompatFeed;
use crate::ws::session::{self, ClientSocket, SessionConfig};

/// What the compatibility routes share, beside `AppState`.
pub struct Compat {
    tokens: SessionTokens,
    sessions: SessionStore,
}

/// Registers the routes (only called when `compat.enabled`). The initiate is a browser
/// POST, possibly cross-origin: CORS allows the origins of `api.allowed_origins`.
pub fn register(cfg: &mut web::ServiceConfig, state: &web::Data<AppState>) {
    let compat = web::Data::new(Compat {
        tokens: state.settings.compat.session_tokens(),
        sessions: SessionStore::new(
            state.store.storage().clone(),
            state.store.keyspace().clone(),
        ),
    });
    let mut cors = Cors::default()
        .allowed_methods(["POST"])
        .allowed_headers([actix_web::http::header::CONTENT_TYPE])
        .max_age(600);
    for o in &state.settings.api.allowed_origins {
        cors = cors.allowed_origin(o);
    }
    cfg.app_data(compat)
        .route("/sessions/{token}/websocket", web::get().to(websocket))
        .service(
            web::scope("/sessions/{token}")
                .wrap(cors)
                .route("/initiate", web::post().to(initiate)),
        );
}

/// Verifies the path's token. Every failure is 401; the kind goes to the log (never the
/// token).
fn verify(compat: &Compat, token: &str) -> Result<SessionClaims, ApiError> {
    compat
        .tokens
        .verify(token, Utc::now().timestamp())
        .map_err(|e| {
            tracing::info!(reason = %e, "session token refused");
            ApiError::Unauthorized
        })
}

/// How long a session's claim and record are kept: the payment's TTL, and at least as
/// long as the token is accepted (so the token can never start a second push).
fn session_ttl(state: &AppState, claims: &SessionClaims) -> std::time::Duration {
    let token_left = claims
        .exp
        .saturating_add(CLOCK_SKEW_SECS)
        .saturating_sub(Utc::now().timestamp())
        .max(1) as u64;
    std::time::Duration::from_secs(state.settings.payments.ttl_secs.max(token_left))
}

fn mismatch(field: &'static str) -> ApiError {
    ApiError::Validation(ValidationError::Invalid {
        field,
        reason: "does not match the session",
    })
}

/// Parses the body and checks it against the token: each value must equal the one the
/// merchant signed.
fn check_body(body: &[u8], claims: &SessionClaims) -> Result<ValidPush, ApiError> {
    let raw: InitiateRequest = parse_json(body)?;
    let amount = Amount::from_json(&raw.amount)?;
    if amount != claims.amount {
        return Err(mismatch("amount"));
    }
    let account_reference = AccountReference::parse(&raw.account_reference)?;
    if account_reference != claims.account_reference {
        return Err(mismatch("accountReference"));
    }
    let phone = Msisdn::parse(&raw.phone_number)?;
    if claims.phone.as_ref().is_some_and(|p| *p != phone) {
        return Err(mismatch("phoneNumber"));
    }
    Ok(ValidPush {
        phone,
        amount,
        account_reference,
        description: claims.description.clone(),
        webhook_url: None,
    })
}

#[tracing::instrument(name = "compat_initiate", skip_all, fields(session = tracing::field::Empty, checkout_request_id = tracing::field::Empty))]
pub async fn initiate(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
    compat: web::Data<Compat>,
) -> Result<HttpResponse, ApiError> {
    let claims = verify(&compat, &path)?;
    tracing::Span::current().record("session", claims.sid.as_str());
    require_json(&req)?;
    let body = read_body(&req, payload, state.settings.api.max_body_bytes).await?;
    let push = check_body(&body, &claims)?;

    let ttl = session_ttl(&state, &claims);
    if !compat.sessions.claim(&claims.sid, ttl).await? {
        tracing::info!("session token used again; refused");
        return Err(ApiError::SessionAlreadyStarted);
    }
    let request = stk_relay_shared::http::request_span(&req);
    let response = match send_push(&state, push, &request).await {
        Ok(r) => r,
        Err(f) => {
            if !f.may_have_pushed {
                // Certainly no prompt: the buyer may try again with the same token.
                if let Err(e) = compat.sessions.release(&claims.sid).await {
                    tracing::warn!(error = %e, "could not release the session claim");
                }
            }
            return Err(f.error);
        }
    };
    let initiated = StkInitiated {
        status: response.status.clone(),
        checkout_request_id: response.checkout_request_id.clone(),
        merchant_request_id: response.merchant_request_id.clone(),
        timestamp: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    let json = serde_json::to_string(&initiated)
        .map_err(|e| ApiError::Internal(format!("encoding STK_INITIATED: {e}")))?;
    let bound =
        retry_while_unavailable(std::time::Duration::from_secs(1), "session record", || {
            compat.sessions.bind(&state.broker, &claims.sid, &json, ttl)
        })
        .await;
    if let Err(e) = bound {
        // The push is live: answer with it all the same. Sockets of this session will
        // not learn it (the payment itself is recorded and reconciled as usual).
        tracing::error!(checkout_request_id = %response.checkout_request_id, error = %e, "push accepted but the session record was not written");
    }
    Ok(HttpResponse::Ok().json(InitiateResponse {
        success: true,
        initiated,
        customer_message: response.customer_message,
    }))
}

#[tracing::instrument(name = "compat_ws", skip_all, fields(session = tracing::field::Empty))]
pub async fn websocket(
    req: HttpRequest,
    body: web::Payload,
    path: web::Path<String>,
    state: web::Data<AppState>,
    compat: web::Data<Compat>,
) -> Result<HttpResponse, ApiError> {
    let claims = verify(&compat, &path)?;
    let sid = claims.sid;
    tracing::Span::current().record("session", sid.as_str());
    check_origin(&req, &state.settings.api.allowed_origins)?;
    // The connection caps count a session like a payment: its key cannot collide with
    // a CheckoutRequestID (those never start with "sess.").
    let cap_key = CheckoutRequestId::parse(&format!("sess.{sid}"))
        .map_err(|e| ApiError::Internal(format!("session cap key: {e}")))?;
    let ip =
        stk_relay_shared::net::request_client_ip(&req, &state.settings.server.trusted_proxies());
    let mut guard = state.admit(&cap_key, ip)?;
    guard.count_as(stk_relay_shared::metrics::Transport::WebSocket);
    let (response, ws_session, msgs) = actix_ws::handle(&req, body)
        .map_err(|e| ApiError::Malformed(format!("not a WebSocket upgrade: {e}")))?;
    let span = tracing::info_span!(
        "compat_ws_session",
        session = %sid,
        checkout_request_id = tracing::field::Empty
    );
    let feed = CompatFeed::open(&state.broker, &state.store, &compat.sessions, sid)
        .instrument(span.clone())
        .await
        .map_err(feed_error)?;
    let cfg = SessionConfig::from(&state.settings.ws);
    actix_web::rt::spawn(
        session::run(
            ws_session,
            msgs,
            feed,
            None,
            cfg,
            state.shutdown.clone(),
            ClientSocket::of(&req),
            guard,
        )
        .instrument(span),
    );
    Ok(response)
}
