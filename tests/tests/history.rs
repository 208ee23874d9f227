//! A payment's history (`GET /v1/payments/{id}/history`, issue #10 part 2), with real
//! processes: what a success, a cancellation, a duplicate callback and a payment settled
//! by STK Push Query record, in order, redacted (masked phone, no callback token); and
//! who may read it (the API key only: not a browser's subscribe token, not nobody), and
//! 404 for a payment nobody knows.

use anyhow::{ensure, Context as _, Result};
use stk_relay_e2e::cluster::{kv, Auth};
use stk_relay_e2e::{daraja, sim, wait, Cluster, ClusterOptions, STEP};
use stk_relay_shared::history::{
    CallbackDecision, FinalCause, HistoryEntry, HistoryEvent, PaymentHistory,
};
use stk_relay_shared::ids::mask_phone;
use stk_relay_shared::payment::{FailureReason, PaymentStatus, ResultCode};

/// Waits until the payment's history holds a `final` entry, and returns it with the
/// body as received.
async fn history_when_final(c: &Cluster, gw: usize, id: &str) -> Result<(PaymentHistory, String)> {
    wait::until("a final entry in the history", STEP, || async {
        let (h, raw) = c.payment_history(gw, id).await?;
        let done = h
            .entries
            .iter()
            .any(|e| matches!(e.event, HistoryEvent::Final(_)));
        Ok(done.then_some((h, raw)))
    })
    .await
}

/// The entries' types, in order.
fn kinds(h: &PaymentHistory) -> Vec<&'static str> {
    h.entries.iter().map(|e| e.event.kind()).collect()
}

/// Times are RFC 3339 with milliseconds in UTC, and never go backwards.
fn check_times(h: &PaymentHistory, raw: &str) -> Result<()> {
    let v: serde_json::Value = serde_json::from_str(raw)?;
    let entries = v["entries"].as_array().context("no entries array")?;
    for e in entries {
        let at = e["at"].as_str().context("an entry without at")?;
        ensure!(
            at.len() == 24 && at.ends_with('Z') && at.as_bytes()[19] == b'.',
            "at is not RFC 3339 ms UTC: {at}"
        );
    }
    let times: Vec<_> = h.entries.iter().map(|e| e.at).collect();
    ensure!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "entries out of order: {times:?}"
    );
    Ok(())
}

/// The pushed entry: the request as normalised, the phone masked.
fn check_pushed(e: &HistoryEntry, phone: &str, amount: u32) -> Result<()> {
    let HistoryEvent::Pushed(p) = &e.event else {
        anyhow::bail!("first entry is not pushed: {e:?}");
    };
    ensure!(p.amount == amount, "{p:?}");
    ensure!(
        p.phone_number == mask_phone(phone),
        "phone not masked: {p:?}"
    );
    ensure!(p.account_reference == "E2E", "{p:?}");
    ensure!(p.description.as_deref() == Some("e2e test"), "{p:?}");
    ensure!(!p.webhook, "no webhook target was set: {p:?}");
    Ok(())
}

/// Nothing secret in the body: not the full phone, not the callback token.
async fn check_redacted(c: &Cluster, id: &str, raw: &str, phone: &str) -> Result<()> {
    ensure!(
        !raw.contains(phone),
        "the full phone is in the history: {raw}"
    );
    let path = c.callback_path_for(id).await?;
    let token = path.rsplit('/').next().context("no callback token")?;
    ensure!(
        token.len() > 16 && !raw.contains(token),
        "the callback token is in the history: {raw}"
    );
    ensure!(!raw.contains(&c.api_key), "the API key is in the history");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_history() -> Result<()> {
    let c = Cluster::start("history_success").await?;
    let phone = sim::phone(11, sim::MANUAL);
    let p = c.push(0, &phone, 150).await?;
    let id = p.checkout_request_id.as_str();

    // Pending: just the push, read through the other gateway.
    let (h, _) = c.payment_history(1, id).await?;
    ensure!(kinds(&h) == ["pushed"], "{h:?}");
    ensure!(h.checkout_request_id == id && h.truncated == 0, "{h:?}");
    check_pushed(&h.entries[0], &phone, 150)?;

    let receipt = daraja::receipt(11);
    c.deliver_success(1, &p, 150, &receipt).await?;
    let (h, raw) = history_when_final(&c, 0, id).await?;
    ensure!(kinds(&h) == ["pushed", "callback", "final"], "{h:?}");
    check_times(&h, &raw)?;
    let HistoryEvent::Callback(cb) = &h.entries[1].event else {
        anyhow::bail!("{h:?}");
    };
    ensure!(cb.decision == Some(CallbackDecision::Applied), "{cb:?}");
    ensure!(cb.result_code == Some(ResultCode::Code(0)), "{cb:?}");
    ensure!(
        cb.result_desc.as_deref() == Some(daraja::SUCCESS_DESC),
        "{cb:?}"
    );
    ensure!(
        cb.mpesa_receipt_number.as_deref() == Some(receipt.as_str()),
        "{cb:?}"
    );
    ensure!(cb.amount == Some(150), "{cb:?}");
    ensure!(
        cb.phone_number.as_deref() == Some(mask_phone(&phone).as_str()),
        "callback phone not masked as the logs mask it: {cb:?}"
    );
    let HistoryEvent::Final(f) = &h.entries[2].event else {
        anyhow::bail!("{h:?}");
    };
    ensure!(f.cause == FinalCause::Callback, "{f:?}");
    ensure!(
        f.status == PaymentStatus::Success && f.version == 2,
        "{f:?}"
    );
    check_redacted(&c, id, &raw, &phone).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_history() -> Result<()> {
    let c = Cluster::start("history_cancelled").await?;
    let phone = sim::phone(12, sim::MANUAL);
    let p = c.push(1, &phone, 75).await?;
    let id = p.checkout_request_id.as_str();
    c.deliver_failure(0, &p, 1032, "Request cancelled by user")
        .await?;
    let (h, raw) = history_when_final(&c, 1, id).await?;
    ensure!(kinds(&h) == ["pushed", "callback", "final"], "{h:?}");
    check_times(&h, &raw)?;
    check_pushed(&h.entries[0], &phone, 75)?;
    let HistoryEvent::Callback(cb) = &h.entries[1].event else {
        anyhow::bail!("{h:?}");
    };
    ensure!(cb.result_code == Some(ResultCode::Code(1032)), "{cb:?}");
    ensure!(
        cb.result_desc.as_deref() == Some("Request cancelled by user"),
        "{cb:?}"
    );
    ensure!(cb.decision == Some(CallbackDecision::Applied), "{cb:?}");
    ensure!(cb.mpesa_receipt_number.is_none(), "{cb:?}");
    let HistoryEvent::Final(f) = &h.entries[2].event else {
        anyhow::bail!("{h:?}");
    };
    ensure!(
        f.cause == FinalCause::Callback
            && f.status == PaymentStatus::Failed
            && f.reason == Some(FailureReason::CancelledByUser),
        "{f:?}"
    );
    check_redacted(&c, id, &raw, &phone).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_callback_history() -> Result<()> {
    let c = Cluster::start("history_duplicate").await?;
    let phone = sim::phone(13, sim::MANUAL);
    let p = c.push(0, &phone, 200).await?;
    let id = p.checkout_request_id.as_str();
    let receipt = daraja::receipt(13);
    c.deliver_success(0, &p, 200, &receipt).await?;
    // The same callback again, through the other ingest node.
    c.deliver_success(1, &p, 200, &receipt).await?;
    let h = wait::until("both callbacks in the history", STEP, || async {
        let (h, _) = c.payment_history(0, id).await?;
        Ok((h.entries.len() >= 4).then_some(h))
    })
    .await?;
    ensure!(
        kinds(&h) == ["pushed", "callback", "final", "callback"],
        "{h:?}"
    );
    let decisions: Vec<_> = h
        .entries
        .iter()
        .filter_map(|e| match &e.event {
            HistoryEvent::Callback(cb) => cb.decision,
            _ => None,
        })
        .collect();
    ensure!(
        decisions == [CallbackDecision::Applied, CallbackDecision::Duplicate],
        "{decisions:?}"
    );
    ensure!(
        h.entries
            .iter()
            .filter(|e| matches!(e.event, HistoryEvent::Final(_)))
            .count()
            == 1,
        "more than one final: {h:?}"
    );
    Ok(())
}

/// A callback that never comes: reconciliation's Query settles it, and the history
/// says so (query_asked, query_answer, final with cause query).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciled_history() -> Result<()> {
    let c = Cluster::start_with(
        "history_reconciled",
        ClusterOptions {
            gateway_env: vec![
                kv("GATEWAY__RECONCILE__AFTER_SECS", "2"),
                kv("GATEWAY__RECONCILE__MAX_AGE_SECS", "60"),
                kv("GATEWAY__RECONCILE__POLL_INTERVAL_MS", "100"),
                kv("GATEWAY__RECONCILE__RETRY_MIN_MS", "500"),
                kv("GATEWAY__RECONCILE__RETRY_MAX_MS", "1000"),
            ],
            ..ClusterOptions::default()
        },
    )
    .await?;
    let phone = sim::phone(14, sim::NO_CALLBACK);
    let p = c.push(0, &phone, 250).await?;
    let id = p.checkout_request_id.as_str();
    let (h, raw) = history_when_final(&c, 1, id).await?;
    check_times(&h, &raw)?;
    let k = kinds(&h);
    ensure!(
        k.first() == Some(&"pushed") && k.last() == Some(&"final"),
        "{h:?}"
    );
    // Every query asked was answered; the last answer is the verdict (ResultCode 0).
    let middle = &k[1..k.len() - 1];
    ensure!(
        !middle.is_empty()
            && middle
                .chunks(2)
                .all(|pair| pair == ["query_asked", "query_answer"]),
        "expected query_asked/query_answer pairs: {k:?}"
    );
    let n = h.entries.len();
    let HistoryEvent::QueryAnswer(a) = &h.entries[n - 2].event else {
        anyhow::bail!("{h:?}");
    };
    ensure!(
        a.result_code == Some(ResultCode::Code(0)) && a.error.is_none(),
        "{a:?}"
    );
    let HistoryEvent::Final(f) = &h.entries[n - 1].event else {
        anyhow::bail!("{h:?}");
    };
    ensure!(
        f.cause == FinalCause::Query && f.status == PaymentStatus::Success && f.version == 2,
        "{f:?}"
    );
    ensure!(
        !h.entries
            .iter()
            .any(|e| matches!(e.event, HistoryEvent::Callback(_))),
        "no callback was sent: {h:?}"
    );
    Ok(())
}

/// The history is for the merchant's backend: the API key only. A browser's subscribe
/// token is refused, in the header and in the query; an unknown payment is 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_needs_the_api_key() -> Result<()> {
    let c = Cluster::start("history_auth").await?;
    let p = c.push(0, &sim::phone(15, sim::MANUAL), 10).await?;
    let id = p.checkout_request_id.as_str();
    // The token works for the state, so its refusal below is the history's rule.
    ensure!(c.payment_state(0, id, &p.token).await?.version == 1);
    for (what, auth) in [
        ("no credentials", Auth::None),
        ("the subscribe token as a bearer", Auth::Bearer(&p.token)),
        ("the subscribe token in the query", Auth::Query(&p.token)),
        ("a wrong key", Auth::Bearer("not-the-api-key")),
    ] {
        let resp = c.get_history(0, id, auth).await?;
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await?;
        ensure!(status == 401, "{what}: {status} {body}");
        ensure!(body["error"]["code"] == "UNAUTHORIZED", "{what}: {body}");
    }
    let resp = c
        .get_history(1, "ws_CO_000000000000000000", Auth::Bearer(&c.api_key))
        .await?;
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await?;
    ensure!(status == 404, "unknown payment: {status} {body}");
    ensure!(body["error"]["code"] == "PAYMENT_NOT_FOUND", "{body}");
    let (h, _) = c.payment_history(1, id).await?;
    ensure!(kinds(&h) == ["pushed"], "{h:?}");
    Ok(())
}
