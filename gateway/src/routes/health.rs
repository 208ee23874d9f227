//! Liveness and readiness.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::startup::AppState;

/// 200 while the process is alive.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// 200 when Redis answers (commands and subscriber) and the node is not draining.
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
    if !state.broker.is_connected() {
        return HttpResponse::ServiceUnavailable()
            .json(json!({"status": "redis subscriber disconnected"}));
    }
    match state.store.storage().ping().await {
        Ok(()) => HttpResponse::Ok().json(json!({
            "status": "ready",
            "connections": state.connections.current(),
            "channels": state.broker.channel_count(),
        })),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: redis");
            HttpResponse::ServiceUnavailable().json(json!({"status": "redis unavailable"}))
        }
    }
}
