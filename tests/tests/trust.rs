//! Every SUCCESS is real: a callback completes only the push it was issued for, a
//! failure carries no receipt, old tokens are refused, early records cannot be
//! overwritten, and text from Daraja reaches the browser cleaned and escaped.

use anyhow::{ensure, Context as _, Result};
use chrono::{Duration as ChronoDuration, Utc};
use secrecy::SecretString;
use serde_json::json;
use stk_relay_e2e::{daraja, expect, random_alnum, sim, Cluster, STEP};
use stk_relay_shared::api::MessageType;
use stk_relay_shared::payment::{FailureReason, PaymentStatus};
use stk_relay_shared::token::CallbackTokens;

const CALLBACK_PREFIX: &str = "/v1/callbacks/stk/";

fn token_of(path: &str) -> Result<&str> {
    path.strip_prefix(CALLBACK_PREFIX)
        .with_context(|| format!("{path} is not under {CALLBACK_PREFIX}"))
}

/// The payment's Redis hash field, read straight from the test's Redis.
async fn field(c: &Cluster, id: &str, name: &str) -> Result<Option<String>> {
    c.redis
        .command(&["HGET", &format!("{}:pay:{{{id}}}", c.key_prefix), name])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_completes_only_what_it_was_issued_for() -> Result<()> {
    let c = Cluster::start("trust_binding").await?;
    let phone = sim::phone(21, sim::MANUAL);
    let p = c.push(0, &phone, 5000).await?;
    let id = p.checkout_request_id.as_str();
    let mut ws = c.ws_connect(1, id, &p.token).await?;
    expect::pending(&ws.expect(MessageType::PaymentUpdate).await?.data, id, 5000)?;
    let path = c.callback_path_for(id).await?;

    let one_shilling = daraja::success(&p.merchant_request_id, id, 1, &daraja::receipt(21), &phone);
    let other_phone = daraja::success(
        &p.merchant_request_id,
        id,
        5000,
        &daraja::receipt(22),
        &sim::phone(99, "000"),
    );
    let other_merchant_id = daraja::success(
        "9999-9999-9999-999999999999",
        id,
        5000,
        &daraja::receipt(23),
        &phone,
    );
    for (what, body, flag) in [
        ("a 1-shilling success", &one_shilling, "amount"),
        ("another phone", &other_phone, "phone"),
        (
            "another MerchantRequestID",
            &other_merchant_id,
            "merchantRequestId",
        ),
    ] {
        // Daraja gets its acknowledgement…
        c.deliver_callback(0, &path, body)
            .await
            .with_context(|| what.to_owned())?;
        // …but the payment stays pending, flagged.
        let s = c.payment_state(0, id, &p.token).await?;
        ensure!(s.status == PaymentStatus::Pending, "{what} changed {s:?}");
        let f = field(&c, id, "amountMismatch").await?.unwrap_or_default();
        ensure!(f.contains(flag), "{what}: flag is {f:?}");
    }
    ws.expect_no_message(2, STEP)
        .await
        .context("a mismatching callback reached the browser")?;
    // It was handed to reconciliation at once: due now, not `after_secs` after the push.
    let due: Option<f64> = c
        .redis
        .command(&[
            "ZSCORE",
            &format!("{}:reconcile:{{q}}:due", c.key_prefix),
            id,
        ])
        .await?;
    let due = due.context("the payment is not in the reconciliation due set")?;
    let now_ms = Utc::now().timestamp_millis() as f64;
    ensure!(due <= now_ms, "due in {} ms, not now", due - now_ms);

    // The genuine callback completes it, once.
    let genuine = daraja::success(
        &p.merchant_request_id,
        id,
        5000,
        &daraja::receipt(24),
        &phone,
    );
    c.deliver_callback(1, &path, &genuine).await?;
    let done = ws.expect(MessageType::PaymentCompleted).await?;
    expect::success(&done.data, id, 5000, &daraja::receipt(24))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_with_forged_metadata_carries_no_receipt() -> Result<()> {
    let c = Cluster::start("trust_forged_cancel").await?;
    let phone = sim::phone(31, sim::MANUAL);
    let p = c.push(0, &phone, 700).await?;
    let id = p.checkout_request_id.as_str();
    let path = c.callback_path_for(id).await?;
    let mut body = daraja::success(
        &p.merchant_request_id,
        id,
        700,
        &daraja::receipt(31),
        &phone,
    );
    body["Body"]["stkCallback"]["ResultCode"] = json!(1032);
    body["Body"]["stkCallback"]["ResultDesc"] = json!("Request cancelled by user");
    let mut ws = c.ws_connect(0, id, &p.token).await?;
    ws.expect(MessageType::PaymentUpdate).await?;
    c.deliver_callback(0, &path, &body).await?;
    let done = ws.expect(MessageType::PaymentCompleted).await?.data;
    expect::failed(&done, id, 1032, FailureReason::CancelledByUser)?;
    ensure!(
        done.mpesa_receipt_number.is_none(),
        "receipt kept: {done:?}"
    );
    ensure!(done.transaction_date.is_none(), "date kept: {done:?}");
    ensure!(
        done.amount == Some(700),
        "amount is not the pushed one: {done:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_callback_tokens_are_refused() -> Result<()> {
    let c = Cluster::start_with(
        "trust_token_age",
        stk_relay_e2e::ClusterOptions {
            ingests: 1,
            gateways: 1,
            ..Default::default()
        },
    )
    .await?;
    let phone = sim::phone(41, sim::MANUAL);
    let p = c.push(0, &phone, 90).await?;
    let id = p.checkout_request_id.as_str();
    let path = c.callback_path_for(id).await?;
    let nonce = token_of(&path)?
        .split('.')
        .next()
        .context("token has no nonce")?;
    // The same payment's nonce, signed with the right key, but issued 3 hours ago
    // (tokens.callback_ttl_secs defaults to 2 hours).
    let keys = CallbackTokens::new(SecretString::from(c.callback_secret.clone()));
    let old = format!(
        "{CALLBACK_PREFIX}{}",
        keys.sign_at(nonce, Utc::now() - ChronoDuration::hours(3))
    );
    let body = daraja::success(&p.merchant_request_id, id, 90, &daraja::receipt(41), &phone);
    let resp = c.post_callback(0, &old, &body).await?;
    ensure!(resp.status() == 403, "old token: {}", resp.status());
    let s = c.payment_state(0, id, &p.token).await?;
    ensure!(
        s.status == PaymentStatus::Pending,
        "an old token changed {s:?}"
    );
    // Within the age limit, the same nonce works.
    let fresh = format!(
        "{CALLBACK_PREFIX}{}",
        keys.sign_at(nonce, Utc::now() - ChronoDuration::minutes(90))
    );
    c.deliver_callback(0, &fresh, &body).await?;
    let s = c.payment_state(0, id, &p.token).await?;
    expect::success(&s, id, 90, &daraja::receipt(41))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_record_is_written_once_per_token_and_expires() -> Result<()> {
    let c = Cluster::start_with(
        "trust_early",
        stk_relay_e2e::ClusterOptions {
            ingests: 1,
            gateways: 1,
            ..Default::default()
        },
    )
    .await?;
    // A leaked (valid) callback token used on an id that has no record yet.
    let keys = CallbackTokens::new(SecretString::from(c.callback_secret.clone()));
    let leaked = keys.issue();
    let path = format!("{CALLBACK_PREFIX}{}", leaked.token);
    let id = format!("ws_CO_{}", random_alnum(20));
    let first = daraja::failure("1-1-1", &id, 1032, "Request cancelled by user");
    c.deliver_callback(0, &path, &first).await?;
    let early_field = format!("early:{}", leaked.nonce);
    let stored = field(&c, &id, &early_field)
        .await?
        .context("no early record")?;
    // A second callback with the same token does not overwrite it.
    let second = daraja::success(
        "1-1-1",
        &id,
        10,
        &daraja::receipt(51),
        &sim::phone(51, "000"),
    );
    c.deliver_callback(0, &path, &second).await?;
    ensure!(
        field(&c, &id, &early_field).await?.as_deref() == Some(stored.as_str()),
        "the early record was overwritten"
    );
    // It lives callbacks.early_ttl_secs (300 s by default), not a day.
    let ttl: i64 = c
        .redis
        .command(&["TTL", &format!("{}:pay:{{{id}}}", c.key_prefix)])
        .await?;
    ensure!((1..=300).contains(&ttl), "early record TTL is {ttl}");
    // Nothing about it is readable as a payment.
    let status = c
        .get_payment(0, &id, stk_relay_e2e::cluster::Auth::Bearer(&c.api_key))
        .await?
        .status();
    ensure!(status == 404, "an early record is readable: {status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_from_daraja_is_cleaned_and_escaped_for_browsers() -> Result<()> {
    let c = Cluster::start_with(
        "trust_text",
        stk_relay_e2e::ClusterOptions {
            ingests: 1,
            gateways: 1,
            ..Default::default()
        },
    )
    .await?;
    let phone = sim::phone(61, sim::MANUAL);
    let p = c.push(0, &phone, 10).await?;
    let id = p.checkout_request_id.as_str();
    let path = c.callback_path_for(id).await?;
    let mut ws = c.ws_connect(0, id, &p.token).await?;
    ws.expect(MessageType::PaymentUpdate).await?;
    let desc = format!(
        "<script>alert(1)</script>\u{202E}gnp.exe\u{200B} & {}",
        "x".repeat(400)
    );
    let body = daraja::failure(&p.merchant_request_id, id, 1032, &desc);
    c.deliver_callback(0, &path, &body).await?;
    let done = ws.expect(MessageType::PaymentCompleted).await?.data;
    let raw = ws.last_raw().context("no raw frame")?.to_owned();
    for bad in ['<', '>', '&', '\u{202E}', '\u{200B}'] {
        ensure!(!raw.contains(bad), "{bad:?} reached the browser raw: {raw}");
    }
    let kept = done.result_desc.clone().unwrap_or_default();
    ensure!(
        kept.starts_with("<script>alert(1)</script>gnp.exe & x"),
        "{kept}"
    );
    ensure!(
        kept.chars().count() == 256,
        "{} characters",
        kept.chars().count()
    );
    // The same over GET.
    let resp = c
        .get_payment(0, id, stk_relay_e2e::cluster::Auth::Bearer(&c.api_key))
        .await?;
    let text = resp.text().await?;
    ensure!(
        !text.contains('<') && !text.contains('\u{202E}'),
        "GET: {text}"
    );
    Ok(())
}
