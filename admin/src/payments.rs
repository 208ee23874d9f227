//! `payment show` and `payments pending`: read through the shared store
//! ([`PaymentStore::get`], [`PaymentStore::history`], [`Schedule::due_at`]) and the
//! shared keyspace. `payment show` prints the payment's history under its state: one
//! line per entry (time, type, its fields as `key=value`), the same redacted entries as
//! `GET /v1/payments/{id}/history`.
//!
//! Pending payments are found in the reconciliation due set
//! (`Keyspace::reconcile_due`): the gateway adds every payment it records as PENDING and
//! reconciliation removes it once final, so the set holds every payment that may still
//! be pending (and, briefly, some that have just become final). Each member's stored
//! state is read, and only those still `PENDING` and written at least `older_than` ago
//! are listed. A member whose state has expired is counted as `missing`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use stk_relay_gateway::config::GatewaySettings;
use stk_relay_shared::history::{HistoryEvent, PaymentHistory};
use stk_relay_shared::ids::{mask_phone, CheckoutRequestId};
use stk_relay_shared::payment::{PaymentState, PaymentStatus};
use stk_relay_shared::store::{PaymentStore, Schedule, Storage, StoreError};

use crate::error::AdminError;
use crate::output::{or_dash, Report, Table};
use crate::settings;

/// A state as shown: the phone masked again (it is stored masked; masking is idempotent).
fn masked(mut state: PaymentState) -> PaymentState {
    state.phone_number = state.phone_number.as_deref().map(mask_phone);
    state
}

fn parse_state(json: &str) -> Result<PaymentState, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Protocol(format!("stored state: {e}")))
}

fn ms_to_time(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Shown {
    found: bool,
    key_prefix: String,
    checkout_request_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<PaymentState>,
    /// While PENDING: when reconciliation next queries it (the due set's score).
    #[serde(skip_serializing_if = "Option::is_none")]
    next_query_at: Option<DateTime<Utc>>,
    /// What happened to it, oldest first (`GET /v1/payments/{id}/history`'s body).
    #[serde(skip_serializing_if = "Option::is_none")]
    history: Option<PaymentHistory>,
}

/// `payment show ID`.
pub async fn show(s: &GatewaySettings, raw_id: &str) -> Result<Report, AdminError> {
    let id = CheckoutRequestId::parse(raw_id)
        .map_err(|e| AdminError::BadId(raw_id.to_owned(), e.to_string()))?;
    let (pool, keys) = settings::redis(s)?;
    let storage = Storage::Redis(pool);
    let store = PaymentStore::new(
        storage.clone(),
        keys.clone(),
        Duration::from_secs(s.payments.ttl_secs.max(1)),
    );
    let state = store.get(&id).await?.map(|j| parse_state(&j)).transpose()?;
    // A final payment may linger in the due set until reconciliation drops it: its
    // score means nothing then.
    let next_query_at = match &state {
        Some(st) if st.status == PaymentStatus::Pending => Schedule::new(storage, keys.clone())
            .due_at(&id)
            .await?
            .and_then(ms_to_time),
        _ => None,
    };
    let history = match &state {
        Some(_) => store.history(&id).await?,
        None => None,
    };
    let shown = Shown {
        found: state.is_some(),
        key_prefix: keys.prefix().to_owned(),
        checkout_request_id: id.as_str().to_owned(),
        state: state.map(masked),
        next_query_at,
        history,
    };
    Ok(Report {
        ok: shown.found,
        text: show_text(&shown),
        json: serde_json::to_value(&shown).unwrap_or_default(),
    })
}

fn show_text(shown: &Shown) -> String {
    let Some(st) = &shown.state else {
        return format!(
            "no payment {} under key prefix {:?} (unknown, or expired after payments.ttl_secs)",
            shown.checkout_request_id, shown.key_prefix
        );
    };
    let reason = st
        .reason
        .and_then(|r| serde_json::to_value(r).ok())
        .and_then(|v| v.as_str().map(str::to_owned));
    let source = st
        .result_source
        .and_then(|r| serde_json::to_value(r).ok())
        .and_then(|v| v.as_str().map(str::to_owned));
    Table::key_values([
        (
            "checkoutRequestId",
            st.checkout_request_id.as_str().to_owned(),
        ),
        (
            "merchantRequestId",
            st.merchant_request_id.as_str().to_owned(),
        ),
        ("status", st.status.as_str().to_owned()),
        ("reason", or_dash(reason)),
        ("amount", or_dash(st.amount)),
        ("phoneNumber", or_dash(st.phone_number.as_deref())),
        ("resultCode", or_dash(st.result_code.as_ref())),
        ("resultDesc", or_dash(st.result_desc.as_deref())),
        (
            "mpesaReceiptNumber",
            or_dash(st.mpesa_receipt_number.as_deref()),
        ),
        ("transactionDate", or_dash(st.transaction_date.as_deref())),
        ("resultSource", or_dash(source)),
        ("version", st.version.to_string()),
        ("timestamp", st.timestamp.to_rfc3339()),
        (
            "completedAt",
            or_dash(st.completed_at.map(|t| t.to_rfc3339())),
        ),
        (
            "nextQueryAt",
            or_dash(shown.next_query_at.map(|t| t.to_rfc3339())),
        ),
        ("keyPrefix", shown.key_prefix.clone()),
    ])
    .to_string()
        + &shown.history.as_ref().map(history_text).unwrap_or_default()
}

/// The history as a table: `AT  TYPE  DETAILS`, oldest first.
fn history_text(h: &PaymentHistory) -> String {
    let mut out = format!(
        "\nhistory: {} entr{}",
        h.entries.len(),
        if h.entries.len() == 1 { "y" } else { "ies" }
    );
    if h.truncated > 0 {
        out.push_str(&format!(
            " ({} more not kept: the history is full)",
            h.truncated
        ));
    }
    out.push('\n');
    let mut t = Table::with_header(["AT", "TYPE", "DETAILS"]);
    for e in &h.entries {
        t.row([e.at_text(), e.event.kind().to_owned(), details(&e.event)]);
    }
    out.push_str(&t.to_string());
    out
}

/// An entry's fields as `key=value`, in name order (`-` when it has none).
fn details(e: &HistoryEvent) -> String {
    let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(e) else {
        return "-".to_owned();
    };
    let parts: Vec<String> = fields
        .iter()
        .filter(|(k, _)| k.as_str() != "type")
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k}={s}"),
            serde_json::Value::Array(a) => format!(
                "{k}={}",
                a.iter()
                    .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            other => format!("{k}={other}"),
        })
        .collect();
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(" ")
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PendingItem {
    checkout_request_id: String,
    amount: Option<u32>,
    phone_number: Option<String>,
    /// When the pending record was written.
    since: DateTime<Utc>,
    age_secs: u64,
    next_query_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PendingList {
    key_prefix: String,
    older_than_secs: u64,
    /// Members of the due set looked at (at most `--limit`).
    scanned: usize,
    /// Whether the due set held more members than were looked at.
    truncated: bool,
    /// Members whose stored state has expired or was never written.
    missing: usize,
    pending: Vec<PendingItem>,
}

/// `payments pending --older-than AGE`.
pub async fn pending(
    s: &GatewaySettings,
    older_than: Duration,
    limit: usize,
) -> Result<Report, AdminError> {
    let (pool, keys) = settings::redis(s)?;
    let limit = limit.max(1);
    // Earliest due first: the due time is the pending write plus `reconcile.after_secs`,
    // later pushed back by each query, so this is roughly oldest first.
    let raw: Vec<(String, f64)> = settings::query(
        &pool,
        redis::cmd("ZRANGE")
            .arg(keys.reconcile_due())
            .arg(0)
            .arg(limit)
            .arg("WITHSCORES"),
    )
    .await?;
    let truncated = raw.len() > limit;
    let store = PaymentStore::new(
        Storage::Redis(pool),
        keys.clone(),
        Duration::from_secs(s.payments.ttl_secs.max(1)),
    );
    let now = Utc::now();
    let mut list = PendingList {
        key_prefix: keys.prefix().to_owned(),
        older_than_secs: older_than.as_secs(),
        scanned: raw.len().min(limit),
        truncated,
        missing: 0,
        pending: Vec::new(),
    };
    for (member, score) in raw.into_iter().take(limit) {
        let Ok(id) = CheckoutRequestId::parse(&member) else {
            list.missing += 1;
            continue;
        };
        let Some(json) = store.get(&id).await? else {
            list.missing += 1;
            continue;
        };
        let st = masked(parse_state(&json)?);
        if st.status != PaymentStatus::Pending {
            continue;
        }
        let age = (now - st.timestamp).to_std().unwrap_or(Duration::ZERO);
        if age < older_than {
            continue;
        }
        list.pending.push(PendingItem {
            checkout_request_id: member,
            amount: st.amount,
            phone_number: st.phone_number,
            since: st.timestamp,
            age_secs: age.as_secs(),
            next_query_at: ms_to_time(score as i64),
        });
    }
    list.pending.sort_by_key(|p| p.since);
    Ok(Report {
        ok: true,
        text: pending_text(&list),
        json: serde_json::to_value(&list).unwrap_or_default(),
    })
}

fn pending_text(list: &PendingList) -> String {
    let mut t = Table::with_header([
        "CHECKOUT REQUEST ID",
        "AMOUNT",
        "PHONE",
        "AGE",
        "SINCE",
        "NEXT QUERY",
    ]);
    for p in &list.pending {
        t.row([
            p.checkout_request_id.clone(),
            or_dash(p.amount),
            or_dash(p.phone_number.as_deref()),
            crate::duration::human(Duration::from_secs(p.age_secs)),
            p.since.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            or_dash(p.next_query_at.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC"))),
        ]);
    }
    let mut out = format!(
        "{} payment(s) PENDING for at least {} (key prefix {:?}; {} due-set member(s) looked at{}{})\n",
        list.pending.len(),
        crate::duration::human(Duration::from_secs(list.older_than_secs)),
        list.key_prefix,
        list.scanned,
        if list.truncated { ", more not looked at: raise --limit" } else { "" },
        if list.missing > 0 { format!(", {} expired", list.missing) } else { String::new() },
    );
    if !t.is_empty() {
        out.push_str(&t.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use stk_relay_shared::history::{CallbackDecision, CallbackEntry, HistoryEntry, QueryAsked};

    #[test]
    fn history_lines_show_each_entry() {
        let at = DateTime::from_timestamp_millis(1_721_555_490_123).unwrap();
        let h = PaymentHistory {
            checkout_request_id: "ws_CO_1".into(),
            entries: vec![
                HistoryEntry {
                    at,
                    event: HistoryEvent::QueryAsked(QueryAsked {}),
                },
                HistoryEntry {
                    at,
                    event: HistoryEvent::Callback(CallbackEntry {
                        result_code: None,
                        result_desc: Some("Request cancelled by user".into()),
                        mpesa_receipt_number: None,
                        amount: Some(10),
                        phone_number: Some("2547******33".into()),
                        decision: Some(CallbackDecision::Mismatch),
                        fields: Some(vec!["amount".into(), "phone".into()]),
                    }),
                },
            ],
            truncated: 3,
        };
        let text = history_text(&h);
        assert!(
            text.contains("history: 2 entries (3 more not kept"),
            "{text}"
        );
        assert!(
            text.contains("2024-07-21T09:51:30.123Z  query_asked  -"),
            "{text}"
        );
        assert!(
            text.contains("callback     amount=10 decision=mismatch fields=amount,phone phoneNumber=2547******33 resultDesc=Request cancelled by user"),
            "{text}"
        );
    }
}
