//! `Idempotency-Key` on `POST /v1/stk/push`, across gateway nodes: a repeat with the same
//! key and the same (normalised) body returns the first response and sends no second
//! push to Daraja; the same key with another body gets 409.

use anyhow::{ensure, Context as _, Result};
use stk_relay_daraja_sim::RequestKind;
use stk_relay_e2e::{sim, Cluster};
use stk_relay_shared::api::{ErrorCode, ErrorResponse, PushRequest, PushResponse};

fn request(phone: &str, amount: u32) -> PushRequest {
    PushRequest {
        phone: phone.to_owned(),
        amount: amount.into(),
        account_reference: "IDEM".to_owned(),
        description: None,
        webhook_url: None,
    }
}

/// How many STK pushes the simulator accepted for `phone` (any written form).
async fn pushes_for(c: &Cluster, phone: &str) -> Result<usize> {
    let records = c.sim_ctl.push_records().await?;
    Ok(records
        .iter()
        .filter(|r| matches!(r.kind, RequestKind::StkPush) && r.status == 200)
        .filter(|r| {
            r.body
                .as_ref()
                .and_then(|b| b.get("PhoneNumber"))
                .map(|v| v.to_string().trim_matches('"') == phone)
                .unwrap_or(false)
        })
        .count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_key_replays_without_a_second_push() -> Result<()> {
    let c = Cluster::start("idempotency").await?;
    let phone = sim::phone(7001, sim::MANUAL);
    let key = "order-7001-attempt";

    let first = c.push_raw(0, &request(&phone, 120), Some(key)).await?;
    ensure!(
        first.status().as_u16() == 200,
        "first push: {}",
        first.status()
    );
    let first: PushResponse = first.json().await.context("first response")?;

    // The same payment written differently (local phone form, amount as a string), on
    // the other gateway.
    let local = format!("0{} {}", &phone[3..6], &phone[6..]);
    let mut again = request(&local, 120);
    again.amount = serde_json::Value::String("120".into());
    let replay = c.push_raw(1, &again, Some(key)).await?;
    ensure!(
        replay.status().as_u16() == 200,
        "replay: {}",
        replay.status()
    );
    ensure!(
        replay
            .headers()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok())
            == Some("true"),
        "replay is not marked Idempotent-Replayed"
    );
    let replay: PushResponse = replay.json().await.context("replay response")?;
    ensure!(replay == first, "replay differs: {replay:?} vs {first:?}");

    let conflict = c.push_raw(1, &request(&phone, 121), Some(key)).await?;
    ensure!(
        conflict.status().as_u16() == 409,
        "other body: {}",
        conflict.status()
    );
    let err: ErrorResponse = conflict.json().await.context("409 body")?;
    ensure!(
        err.error.code == ErrorCode::IdempotencyKeyReused,
        "code {:?}",
        err.error.code
    );

    ensure!(
        pushes_for(&c, &phone).await? == 1,
        "Daraja received more than one push for one Idempotency-Key"
    );

    // Without a key (or with another one) the same body is a new payment.
    let other = c
        .push_raw(0, &request(&phone, 120), Some("another-key"))
        .await?;
    ensure!(
        other.status().as_u16() == 200,
        "new key: {}",
        other.status()
    );
    let other: PushResponse = other.json().await?;
    ensure!(
        other.checkout_request_id != first.checkout_request_id,
        "a new key must start a new payment"
    );
    ensure!(
        pushes_for(&c, &phone).await? == 2,
        "expected a second push for a new key"
    );
    Ok(())
}
