//! Untrusted input from outside: forged callbacks, malformed callback bodies, and
//! browsers with bad subscribe tokens. Each case also shows that a valid request works,
//! so a rejection means the check worked and not that the service was broken.

use anyhow::{ensure, Context as _, Result};
use chrono::{Duration as ChronoDuration, Utc};
use secrecy::SecretString;
use stk_relay_e2e::cluster::Auth;
use stk_relay_e2e::ws::WsConnectError;
use stk_relay_e2e::{daraja, expect, random_alnum, sim, Cluster, STEP};
use stk_relay_shared::api::{ErrorCode, ErrorResponse, MessageType};
use stk_relay_shared::ids::CheckoutRequestId;
use stk_relay_shared::token::{CallbackTokens, SubscribeTokens};

const CALLBACK_PREFIX: &str = "/v1/callbacks/stk/";

async fn expect_error(
    resp: reqwest::Response,
    status: u16,
    code: ErrorCode,
    what: &str,
) -> Result<()> {
    let got = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    ensure!(
        got == status,
        "{what}: HTTP {got}, expected {status}: {text}"
    );
    let err: ErrorResponse = serde_json::from_str(&text)
        .with_context(|| format!("{what}: error body is not an ErrorResponse: {text}"))?;
    ensure!(
        err.error.code == code,
        "{what}: code {:?}, expected {code:?}",
        err.error.code
    );
    Ok(())
}

/// Callbacks with a random token, a token signed with another secret, a tampered token
/// and another payment's token are refused with 403 and change nothing; the genuine one
/// then completes the payment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_callbacks_are_refused_and_publish_nothing() -> Result<()> {
    let c = Cluster::start("forged_callback").await?;
    let p = c.push(0, &sim::phone(10, sim::MANUAL), 40).await?;
    let q = c.push(1, &sim::phone(11, sim::MANUAL), 41).await?;
    let id = p.checkout_request_id.as_str();
    let mut ws = c.ws_connect(1, id, &p.token).await?;
    expect::pending(&ws.expect(MessageType::PaymentUpdate).await?.data, id, 40)?;

    let path = c.callback_path_for(id).await?;
    let token = path
        .strip_prefix(CALLBACK_PREFIX)
        .with_context(|| format!("CallBackURL path {path} is not under {CALLBACK_PREFIX}"))?
        .to_owned();
    let q_path = c.callback_path_for(&q.checkout_request_id).await?;
    let body = daraja::success(
        &p.merchant_request_id,
        id,
        40,
        &daraja::receipt(10),
        &c.phone_of(id)?,
    );

    let other_secret = CallbackTokens::new(SecretString::from(random_alnum(48))).issue();
    let (nonce, mac) = token.split_once('.').context("callback token has no '.'")?;
    let mut mac_chars: Vec<char> = mac.chars().collect();
    mac_chars[0] = if mac_chars[0] == 'A' { 'B' } else { 'A' };
    let tampered = format!("{nonce}.{}", mac_chars.into_iter().collect::<String>());
    let cases = [
        (
            "random token",
            format!("{CALLBACK_PREFIX}{}.{}", random_alnum(22), random_alnum(43)),
        ),
        (
            "token signed with another secret",
            format!("{CALLBACK_PREFIX}{}", other_secret.token),
        ),
        ("tampered signature", format!("{CALLBACK_PREFIX}{tampered}")),
        ("another payment's token", q_path.clone()),
    ];
    for (what, forged) in &cases {
        for ingest in 0..2 {
            let resp = c.post_callback(ingest, forged, &body).await?;
            expect_error(
                resp,
                403,
                ErrorCode::Forbidden,
                &format!("{what} via ingest{ingest}"),
            )
            .await?;
        }
    }

    for (gw, pr) in [(0, &p), (1, &q)] {
        let s = c
            .payment_state(gw, &pr.checkout_request_id, &pr.token)
            .await?;
        ensure!(!s.status.is_final(), "a forged callback changed {s:?}");
    }
    ws.expect_no_message(2, STEP)
        .await
        .context("after forged callbacks")?;

    // The genuine token still works.
    c.deliver_callback(1, &path, &body).await?;
    let done = ws.expect(MessageType::PaymentCompleted).await?;
    expect::success(&done.data, id, 40, &daraja::receipt(10))?;
    Ok(())
}

/// Malformed and oversized callback bodies at a valid callback URL: 400 and 413, and the
/// payment stays pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_callbacks_are_rejected() -> Result<()> {
    let c = Cluster::start("malformed_callback").await?;
    let p = c.push(0, &sim::phone(12, sim::MANUAL), 70).await?;
    let id = p.checkout_request_id.as_str();
    let path = c.callback_path_for(id).await?;

    let not_json = c
        .post_callback_bytes(1, &path, b"{\"Body\": ".to_vec())
        .await?;
    expect_error(not_json, 400, ErrorCode::MalformedRequest, "truncated JSON").await?;

    let no_id = serde_json::json!({"Body": {"stkCallback": {
        "MerchantRequestID": p.merchant_request_id, "ResultCode": 0, "ResultDesc": "ok"}}});
    let resp = c.post_callback(0, &path, &no_id).await?;
    ensure!(
        resp.status() == 400,
        "callback without CheckoutRequestID: {}",
        resp.status()
    );

    // Success without a receipt is not a success.
    let mut no_receipt = daraja::success(&p.merchant_request_id, id, 70, "X", &c.phone_of(id)?);
    no_receipt["Body"]["stkCallback"]["CallbackMetadata"]["Item"]
        .as_array_mut()
        .context("items")?
        .retain(|i| i["Name"] != "MpesaReceiptNumber");
    let resp = c.post_callback(1, &path, &no_receipt).await?;
    ensure!(
        resp.status() == 400,
        "success without receipt: {}",
        resp.status()
    );

    let mut big = daraja::failure(&p.merchant_request_id, id, 1032, "x");
    big["Body"]["stkCallback"]["ResultDesc"] = "x".repeat(70 * 1024).into();
    let resp = c.post_callback(0, &path, &big).await?;
    expect_error(resp, 413, ErrorCode::PayloadTooLarge, "70 KiB body").await?;

    let s = c.payment_state(1, id, &p.token).await?;
    expect::pending(&s, id, 70)?;
    // And a well-formed one is accepted.
    c.deliver_success(1, &p, 70, &daraja::receipt(12)).await?;
    expect::success(
        &c.payment_state(0, id, &p.token).await?,
        id,
        70,
        &daraja::receipt(12),
    )?;
    Ok(())
}

/// Bad subscribe tokens get 401 on the WebSocket upgrade, on GET and on SSE. Tokens the
/// test mints with the right secret work, so the expired one fails for its expiry alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subscribe_tokens_get_401() -> Result<()> {
    let c = Cluster::start("bad_token").await?;
    let p = c.push(0, &sim::phone(13, sim::MANUAL), 80).await?;
    let q = c.push(1, &sim::phone(14, sim::MANUAL), 81).await?;
    let id = p.checkout_request_id.as_str();
    let typed_id = CheckoutRequestId::parse(id).context("checkout id")?;

    let right = SubscribeTokens::new(SecretString::from(c.subscribe_secret.clone()));
    let wrong = SubscribeTokens::new(SecretString::from(random_alnum(48)));
    let minted = right.issue(&typed_id, Utc::now() + ChronoDuration::minutes(5));
    let expired = right.issue(&typed_id, Utc::now() - ChronoDuration::seconds(5));
    let forged = wrong.issue(&typed_id, Utc::now() + ChronoDuration::minutes(5));

    // Positive controls.
    for (what, tok) in [
        ("issued token", p.token.as_str()),
        ("minted token", minted.as_str()),
    ] {
        let mut ws = c
            .ws_connect(1, id, tok)
            .await
            .with_context(|| what.to_owned())?;
        expect::pending(&ws.expect(MessageType::PaymentUpdate).await?.data, id, 80)?;
        ws.close().await;
        expect::pending(&c.payment_state(1, id, tok).await?, id, 80)?;
        c.sse_connect(0, id, tok)
            .await
            .with_context(|| what.to_owned())?;
    }

    let cases = [
        ("garbage", "nonsense".to_owned()),
        ("empty", String::new()),
        ("another payment's token", q.token.clone()),
        ("signed with another secret", forged),
        ("expired", expired),
    ];
    for (what, tok) in &cases {
        for gw in 0..2 {
            let ctx = format!("{what} on gateway{gw}");
            match c.ws_connect(gw, id, tok).await {
                Err(WsConnectError::Http { status: 401, .. }) => {}
                Err(e) => anyhow::bail!("WS upgrade with {ctx}: {e}, expected HTTP 401"),
                Ok(_) => anyhow::bail!("WS upgrade with {ctx} succeeded"),
            }
            let sse = c.sse_request(gw, id, tok).await?;
            expect_error(
                sse,
                401,
                ErrorCode::Unauthorized,
                &format!("SSE with {ctx}"),
            )
            .await?;
            let get = c.get_payment(gw, id, Auth::Query(tok)).await?;
            expect_error(
                get,
                401,
                ErrorCode::Unauthorized,
                &format!("GET ?token= {ctx}"),
            )
            .await?;
            let get = c.get_payment(gw, id, Auth::Bearer(tok)).await?;
            expect_error(
                get,
                401,
                ErrorCode::Unauthorized,
                &format!("GET Bearer {ctx}"),
            )
            .await?;
        }
    }
    let get = c.get_payment(0, id, Auth::None).await?;
    expect_error(get, 401, ErrorCode::Unauthorized, "GET without credentials").await?;
    let no_token = format!("{}/v1/payments/{id}/ws", c.gateway(0).ws_url());
    match stk_relay_e2e::ws::WsClient::connect(&no_token).await {
        Err(WsConnectError::Http { status: 401, .. }) => {}
        Err(e) => anyhow::bail!("WS upgrade without token: {e}, expected HTTP 401"),
        Ok(_) => anyhow::bail!("WS upgrade without token succeeded"),
    }
    Ok(())
}
