//! Reads of one payment:
//! - `GET /v1/payments/{id}`: the current STATE (token or API key).
//! - `GET /v1/payments/{id}/history`: what happened to it, in order (API key only: it is
//!   for the merchant's backend; a browser's subscribe token is refused).
//! - `GET /v1/payments/{id}/ws?token=`: WebSocket.
//! - `GET /v1/payments/{id}/events?token=`: Server-Sent Events, the same messages.

use std::convert::Infallible;
use std::time::Duration;

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use stk_relay_shared::ids::CheckoutRequestId;
use stk_relay_shared::metrics::{self, Transport};
use stk_relay_shared::shutdown::Shutdown;
use tracing::Instrument;

use crate::auth::{require_api_key, require_payment_access};
use crate::error::ApiError;
use crate::feed::{FeedError, FeedEvent, PaymentFeed};
use crate::startup::{AppState, ConnectionGuard};
use crate::ws::session::{self, ClientSocket, SessionConfig};

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

fn query_token(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    web::Query::<TokenQuery>::from_query(req.query_string())
        .map(|q| q.into_inner().token)
        .map_err(|_| ApiError::Malformed("invalid query string".into()))
}

/// Parses the path id and checks access. An id that cannot exist is "not found".
fn authorize(
    req: &HttpRequest,
    raw_id: &str,
    state: &AppState,
    allow_api_key: bool,
) -> Result<CheckoutRequestId, ApiError> {
    let token = query_token(req)?;
    let id = CheckoutRequestId::parse(raw_id).map_err(|_| ApiError::PaymentNotFound)?;
    stk_relay_shared::http::record_checkout_request_id(
        &stk_relay_shared::http::request_span(req),
        id.as_str(),
    );
    require_payment_access(
        req,
        token.as_deref(),
        &id,
        &state.subscribe_tokens,
        allow_api_key.then_some(&state.api_keys),
    )?;
    if state.pending.is_queued(&id) {
        // Accepted by Daraja, record not yet in Redis: the browser retries.
        return Err(ApiError::Unavailable("pending write queued".into()));
    }
    Ok(id)
}

/// With `allowed_origins` set, a browser WebSocket must come from one of them.
/// Non-browser clients send no Origin and are let through (they hold a token).
pub(crate) fn check_origin(req: &HttpRequest, allowed: &[String]) -> Result<(), ApiError> {
    if allowed.is_empty() {
        return Ok(());
    }
    match req.headers().get(actix_web::http::header::ORIGIN) {
        None => Ok(()),
        Some(o) if allowed.iter().any(|a| o.as_bytes() == a.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::Forbidden("origin not allowed".into())),
    }
}

/// Takes a connection slot for `id` from this request's client address (read behind
/// `server.trusted_proxies` as in `shared::net`), before any upgrade.
fn admit(
    req: &HttpRequest,
    state: &AppState,
    id: &CheckoutRequestId,
) -> Result<ConnectionGuard, ApiError> {
    let ip =
        stk_relay_shared::net::request_client_ip(req, &state.settings.server.trusted_proxies());
    state.admit(id, ip)
}

pub(crate) fn feed_error(e: FeedError) -> ApiError {
    match e {
        FeedError::NotFound => ApiError::PaymentNotFound,
        FeedError::Broker(e) => ApiError::Unavailable(e.to_string()),
        FeedError::Store(e) => e.into(),
        FeedError::BadState(e) => ApiError::Internal(e),
    }
}

#[tracing::instrument(name = "get_payment", skip_all, fields(checkout_request_id = tracing::field::Empty))]
pub async fn get_payment(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = authorize(&req, &path, &state, true)?;
    let json = state
        .store
        .get(&id)
        .await?
        .ok_or(ApiError::PaymentNotFound)?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .insert_header(("Cache-Control", "no-store"))
        .body(stk_relay_shared::text::escape_json_for_html(&json).into_owned()))
}

#[tracing::instrument(name = "payment_history", skip_all, fields(checkout_request_id = tracing::field::Empty))]
pub async fn history(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_api_key(&req, &state.api_keys)?;
    let id = CheckoutRequestId::parse(&path).map_err(|_| ApiError::PaymentNotFound)?;
    stk_relay_shared::http::record_checkout_request_id(
        &stk_relay_shared::http::request_span(&req),
        id.as_str(),
    );
    if state.pending.is_queued(&id) {
        return Err(ApiError::Unavailable("pending write queued".into()));
    }
    let history = state
        .store
        .history(&id)
        .await?
        .ok_or(ApiError::PaymentNotFound)?;
    let json = serde_json::to_string(&history).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .insert_header(("Cache-Control", "no-store"))
        .body(stk_relay_shared::text::escape_json_for_html(&json).into_owned()))
}

#[tracing::instrument(name = "ws", skip_all, fields(checkout_request_id = tracing::field::Empty))]
pub async fn ws(
    req: HttpRequest,
    body: web::Payload,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = authorize(&req, &path, &state, false)?;
    check_origin(&req, &state.settings.api.allowed_origins)?;
    let id_for_log = id.clone();
    let mut guard = admit(&req, &state, &id)?;
    guard.count_as(Transport::WebSocket);
    let (response, ws_session, msgs) = actix_ws::handle(&req, body)
        .map_err(|e| ApiError::Malformed(format!("not a WebSocket upgrade: {e}")))?;
    let (feed, first) = PaymentFeed::open(&state.broker, &state.store, id)
        .await
        .map_err(feed_error)?;
    let cfg = SessionConfig::from(&state.settings.ws);
    let span = tracing::info_span!("ws_session", checkout_request_id = %id_for_log);
    actix_web::rt::spawn(
        session::run(
            ws_session,
            msgs,
            feed,
            Some(first),
            cfg,
            state.shutdown.clone(),
            ClientSocket::of(&req),
            guard,
        )
        .instrument(span),
    );
    Ok(response)
}

#[tracing::instrument(name = "sse", skip_all, fields(checkout_request_id = tracing::field::Empty))]
pub async fn events(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = authorize(&req, &path, &state, false)?;
    let mut guard = admit(&req, &state, &id)?;
    guard.count_as(Transport::Sse);
    let (feed, first) = PaymentFeed::open(&state.broker, &state.store, id)
        .await
        .map_err(feed_error)?;
    let ws = &state.settings.ws;
    let alive = ClientSocket::watch_stream(
        ClientSocket::of(&req),
        state.shutdown.clone(),
        ws.max_lifetime(),
        ws.send_timeout(),
    );
    let stream = sse_stream(
        feed,
        first,
        ws.heartbeat_interval(),
        ws.max_lifetime(),
        state.shutdown.clone(),
        (guard, alive),
    );
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream))
}

/// One SSE event: `event: <type>` and `data: <message JSON>`. The message JSON has no
/// newlines (it is compact JSON), so one `data:` line carries it.
fn sse_event(frame: &str) -> Bytes {
    let kind = if frame.starts_with("{\"type\":\"PAYMENT_COMPLETED\"") {
        "PAYMENT_COMPLETED"
    } else {
        "PAYMENT_UPDATE"
    };
    Bytes::from(format!("event: {kind}\ndata: {frame}\n\n"))
}

enum SseStep {
    Start(String),
    Live,
    End,
}

struct SseState {
    feed: PaymentFeed,
    step: SseStep,
    heartbeat: tokio::time::Interval,
    /// The end of the stream's life (`ws.max_lifetime_secs`).
    expires: std::pin::Pin<Box<tokio::time::Sleep>>,
    shutdown: Shutdown,
    /// The connection slot, and the token that tells the stall watch the stream ended.
    _held: (ConnectionGuard, tokio::sync::oneshot::Sender<()>),
}

fn sse_stream(
    feed: PaymentFeed,
    first: String,
    heartbeat: Duration,
    max_lifetime: Duration,
    shutdown: Shutdown,
    held: (ConnectionGuard, tokio::sync::oneshot::Sender<()>),
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    let st = SseState {
        feed,
        step: SseStep::Start(first),
        heartbeat: tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat),
        expires: Box::pin(tokio::time::sleep(max_lifetime)),
        shutdown,
        _held: held,
    };
    futures_util::stream::unfold(st, |mut st| async move {
        match std::mem::replace(&mut st.step, SseStep::Live) {
            SseStep::End => None,
            SseStep::Start(first) => {
                let mut out = String::from("retry: 3000\n\n");
                out.push_str(&String::from_utf8_lossy(&sse_event(&first)));
                if st.feed.is_done() {
                    st.step = SseStep::End;
                }
                Some((Ok(Bytes::from(out)), st))
            }
            SseStep::Live => {
                tokio::select! {
                    biased;
                    _ = st.shutdown.wait() => None,
                    // The browser's EventSource reconnects by itself when the stream ends.
                    _ = &mut st.expires => None,
                    ev = st.feed.next() => match ev {
                        FeedEvent::Frame(frame) => {
                            if let Some(at) = st.feed.take_received() {
                                metrics::delivered(Transport::Sse, at.elapsed());
                            }
                            if st.feed.is_done() {
                                st.step = SseStep::End;
                            }
                            Some((Ok(sse_event(&frame)), st))
                        }
                        FeedEvent::Closed => None,
                    },
                    _ = st.heartbeat.tick() => Some((Ok(Bytes::from_static(b": ping\n\n")), st)),
                }
            }
        }
    })
}
