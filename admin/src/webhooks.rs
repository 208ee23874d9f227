//! `webhooks dead` and `webhooks replay EVENT_ID`: the gateway's webhook queue
//! ([`stk_relay_gateway::webhooks::queue::Queue`]) read and, for a replay, written
//! through the same atomic step the gateways use. A replayed dead letter is due at once;
//! its attempts and its age (`merchant.webhook_max_age_secs`) count afresh.

use chrono::{DateTime, Utc};
use serde::Serialize;
use stk_relay_gateway::config::GatewaySettings;
use stk_relay_gateway::webhooks::queue::Queue;

use crate::error::AdminError;
use crate::output::{or_dash, Report, Table};
use crate::settings;

fn time(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms).map_or_else(|| ms.to_string(), |t| t.to_rfc3339())
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DeadItem {
    event_id: String,
    #[serde(rename = "type")]
    kind: String,
    /// `merchant.webhook_url`, or `push` for a push's own URL (not printed: it may
    /// carry a secret in its query).
    target: &'static str,
    attempts: u32,
    last_status: Option<u16>,
    last_error: Option<String>,
    created_at: String,
    dead_at: String,
}

/// `webhooks dead`: the oldest `limit` dead letters.
pub async fn dead(s: &GatewaySettings, limit: usize) -> Result<Report, AdminError> {
    let (pool, keys) = settings::redis(s)?;
    let queue = Queue::new(pool, keys);
    let letters = queue.dead_letters(limit).await?;
    let (queued, dead_total) = queue.sizes().await?;
    let items: Vec<DeadItem> = letters
        .into_iter()
        .map(|d| DeadItem {
            event_id: d.record.id,
            kind: d.record.kind,
            target: if d.record.url == "*" {
                "merchant.webhook_url"
            } else {
                "push"
            },
            attempts: d.record.attempts,
            last_status: d.record.last_status,
            last_error: d.record.last_error,
            created_at: time(d.record.created),
            dead_at: time(d.dead_at),
        })
        .collect();
    let mut t = Table::with_header([
        "EVENT",
        "TYPE",
        "TARGET",
        "ATTEMPTS",
        "LAST",
        "CREATED",
        "DEAD SINCE",
    ]);
    for i in &items {
        t.row([
            i.event_id.clone(),
            i.kind.clone(),
            i.target.to_owned(),
            i.attempts.to_string(),
            i.last_status
                .map(|s| s.to_string())
                .or_else(|| i.last_error.clone())
                .unwrap_or_else(|| "-".into()),
            i.created_at.clone(),
            i.dead_at.clone(),
        ]);
    }
    let text = format!(
        "{}{} dead letters, {} events queued for delivery\n",
        if items.is_empty() {
            String::new()
        } else {
            t.to_string()
        },
        dead_total,
        queued
    );
    Ok(Report {
        ok: true,
        text,
        json: serde_json::json!({ "dead": items, "deadTotal": dead_total, "queued": queued }),
    })
}

/// `webhooks replay EVENT_ID`: a dead letter queued again, due now.
pub async fn replay(s: &GatewaySettings, event_id: &str) -> Result<Report, AdminError> {
    let (pool, keys) = settings::redis(s)?;
    let queue = Queue::new(pool, keys);
    let replayed = queue
        .replay(event_id, Utc::now().timestamp_millis())
        .await?;
    let text = if replayed {
        format!("{event_id}: queued again, due now")
    } else {
        format!("{event_id}: not a dead letter (unknown, delivered, or still being retried)")
    };
    Ok(Report {
        ok: replayed,
        text: Table::key_values([("replay", text), ("eventId", or_dash(Some(event_id)))])
            .to_string(),
        json: serde_json::json!({ "eventId": event_id, "replayed": replayed }),
    })
}
