//! Liveness and readiness.
//!
//! Readiness, in order: draining → 503; a full spool → 503 "spool full"; Redis answers →
//! 200 "ready"; Redis does not answer → 503, unless a spool with room is configured:
//! then 200 "spooling", so that a load balancer keeps sending callbacks, which are
//! acknowledged from the spool. With a spool, the body also carries `spooled`, the
//! number of callbacks acknowledged and not yet applied, and the PING is bounded to
//! 1 s (a slow Redis only means "spooling"), so that the probe answers in time.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde_json::json;
use stk_relay_shared::store::StoreError;

use crate::startup::AppState;

/// With a spool, how long readiness waits for Redis's PING before it answers "spooling".
const SPOOLING_PING_BOUND: Duration = Duration::from_millis(1000);

/// 200 while the process is alive.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// See the module docs.
/// Each answer is recorded in the `stk_relay_ready` gauge (and its changes counted).
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let answer = readiness(&state).await;
    stk_relay_shared::metrics::readiness(answer.status().is_success());
    answer
}

async fn readiness(state: &AppState) -> HttpResponse {
    if state.shutdown.is_draining() {
        return HttpResponse::ServiceUnavailable().json(json!({"status": "draining"}));
    }
    let spool = state.spool.as_ref().map(|s| s.status());
    if let Some(st) = spool.filter(|st| st.full) {
        tracing::warn!(
            spooled = st.pending,
            bytes = st.bytes,
            "not ready: spool full"
        );
        return HttpResponse::ServiceUnavailable()
            .json(json!({"status": "spool full", "spooled": st.pending}));
    }
    let ping = state.store.storage().ping();
    let ping = match spool {
        // With a spool, a slow Redis only means "spooling": answer within a probe's timeout.
        Some(_) => tokio::time::timeout(SPOOLING_PING_BOUND, ping)
            .await
            .unwrap_or_else(|_| Err(StoreError::timed_out())),
        None => ping.await,
    };
    match (ping, spool) {
        (Ok(()), None) => HttpResponse::Ok().json(json!({"status": "ready"})),
        (Ok(()), Some(st)) => {
            HttpResponse::Ok().json(json!({"status": "ready", "spooled": st.pending}))
        }
        (Err(e), Some(st)) => {
            tracing::warn!(error = %e, spooled = st.pending, "redis unavailable; ready on the spool");
            HttpResponse::Ok().json(json!({
                "status": "spooling",
                "redis": "unavailable",
                "spooled": st.pending,
            }))
        }
        (Err(e), None) => {
            tracing::warn!(error = %e, "not ready: redis");
            HttpResponse::ServiceUnavailable().json(json!({"status": "redis unavailable"}))
        }
    }
}
