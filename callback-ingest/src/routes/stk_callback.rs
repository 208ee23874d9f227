//! `POST /v1/callbacks/stk/{callback_token}`: Daraja's STK callback.
//!
//! Order of checks: the source (403 outside `callbacks.allowed_sources`; 429 when it has
//! used up its refusals, see [`crate::limits`]) and the token signature (403), both
//! before the body is read; then body size (413), shape (400), and the store's script,
//! which also checks the token belongs to this payment (403). All of it but the source
//! checks runs in [`crate::callback::handle::process`]. A genuine callback, first or
//! duplicate, gets 200 `{"ResultCode":0,"ResultDesc":"Accepted"}`; so does one that could
//! not reach Redis but was written to the spool ([`crate::spool`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use stk_relay_shared::daraja::types::CallbackAck;
use stk_relay_shared::metrics::{self, CallbackOutcome};
use stk_relay_shared::net::{any_contains, request_client_ip};
use stk_relay_shared::store::ApplyOutcome;

use crate::callback::handle::process;
use crate::error::IngestError;
use crate::routes::read_body;
use crate::spool::{Record, Spool, SpoolError};
use crate::startup::AppState;

#[tracing::instrument(name = "stk_callback", skip_all, fields(checkout_request_id = tracing::field::Empty, result_code = tracing::field::Empty, source = tracing::field::Empty))]
pub async fn stk_callback(
    req: HttpRequest,
    token: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, IngestError> {
    let received_at = Utc::now();
    let started = Instant::now();
    let source = request_client_ip(&req, &state.trusted_proxies);
    if let Some(ip) = source {
        tracing::Span::current().record("source", tracing::field::display(ip));
    }
    let limited = source.is_some_and(|ip| state.limiter.is_limited(ip));

    if !state.allowed_sources.is_empty()
        && !source.is_some_and(|ip| any_contains(&state.allowed_sources, ip))
    {
        return Err(counted(refuse(
            &state,
            source,
            limited,
            IngestError::SourceRefused,
        )));
    }
    // The signature alone (no body read yet); `process` checks the token in full.
    if state
        .callback_tokens
        .verify(&token, received_at, state.settings.callback_token_ttl())
        .is_err()
    {
        return Err(counted(refuse(
            &state,
            source,
            limited,
            IngestError::Forbidden,
        )));
    }
    let body = match read_body(&req, payload, state.settings.callbacks.max_body_bytes).await {
        Ok(body) => body,
        Err(e @ IngestError::TooLarge { .. }) => {
            return Err(counted(refuse(&state, source, false, e)))
        }
        Err(e) => return Err(e),
    };

    let result = match process(&state, &token, &body, received_at).await {
        Ok(processed) => {
            if matches!(
                processed.outcome,
                ApplyOutcome::Applied { .. } | ApplyOutcome::Corrected { .. }
            ) {
                metrics::callback_published(started.elapsed());
            }
            Ok(HttpResponse::Ok().json(CallbackAck::accepted()))
        }
        Err(IngestError::Unavailable(cause)) => match &state.spool {
            Some(spool) => {
                let record = Record {
                    received_at,
                    token: token.into_inner(),
                    body: body.to_vec(),
                };
                spool_callback(spool.clone(), record, cause).await
            }
            None => {
                metrics::callback(CallbackOutcome::Unavailable);
                Err(IngestError::Unavailable(cause))
            }
        },
        Err(e @ (IngestError::Forbidden | IngestError::Malformed(_))) => {
            Err(refuse(&state, source, false, e))
        }
        Err(e) => Err(e),
    };
    if let Err(e) = &result {
        log_not_stored(e);
    }
    result
}

/// The error line of a callback answered 503, logged here (inside the `stk_callback`
/// span, which carries `checkout_request_id`) rather than when the response is built.
fn log_not_stored(e: &IngestError) {
    match e {
        IngestError::Unavailable(cause) => {
            tracing::error!(cause = %cause, "callback not stored: redis unavailable")
        }
        IngestError::RedisRefused(cause) => {
            tracing::error!(cause = %cause, "callback not stored: redis answered with an error")
        }
        IngestError::SpoolFull(cause) => {
            tracing::error!(cause = %cause, "callback not stored: redis unavailable and spool full")
        }
        _ => {}
    }
}

/// A refusal: counted against the source, or, when the source has no refusals left,
/// turned into 429 (and not logged again per request).
fn refuse(
    state: &AppState,
    source: Option<IpAddr>,
    limited: bool,
    reason: IngestError,
) -> IngestError {
    if limited {
        tracing::debug!(reason = %reason, "refused source is rate limited");
        return IngestError::RateLimited;
    }
    tracing::warn!(reason = %reason, "callback refused");
    if let Some(ip) = source {
        state.limiter.refused(ip);
    }
    reason
}

/// Counts a callback refused before it reached `process` (which counts the others).
fn counted(e: IngestError) -> IngestError {
    let outcome = match &e {
        IngestError::SourceRefused => CallbackOutcome::SourceRefused,
        IngestError::RateLimited => CallbackOutcome::RateLimited,
        IngestError::TooLarge { .. } => CallbackOutcome::TooLarge,
        _ => CallbackOutcome::Forbidden,
    };
    metrics::callback(outcome);
    e
}

/// Writes a checked callback to the spool; 200 once it is on disk, 503 otherwise.
async fn spool_callback(
    spool: Arc<Spool>,
    record: Record,
    cause: String,
) -> Result<HttpResponse, IngestError> {
    let written = tokio::task::spawn_blocking(move || spool.append(&record))
        .await
        .unwrap_or_else(|e| Err(SpoolError::Io(std::io::Error::other(e.to_string()))));
    metrics::callback(match &written {
        Ok(()) => CallbackOutcome::Spooled,
        Err(SpoolError::Full { .. }) => CallbackOutcome::SpoolFull,
        Err(_) => CallbackOutcome::Unavailable,
    });
    match written {
        Ok(()) => {
            tracing::warn!(cause = %cause, "redis unavailable; callback spooled and acknowledged");
            Ok(HttpResponse::Ok().json(CallbackAck::accepted()))
        }
        Err(e @ SpoolError::Full { .. }) => Err(IngestError::SpoolFull(e.to_string())),
        Err(e) => Err(IngestError::Unavailable(format!(
            "{cause}; and the spool failed: {e}"
        ))),
    }
}
