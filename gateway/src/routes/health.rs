//! Liveness and readiness.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::startup::AppState;

/// 200 while the process is alive.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// 200 when Redis answers (commands and subscriber) and the node is not draining.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
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
