//! The Durable Objects compatibility routes (`docs/compat.md`): `/sessions/{token}/…`
//! with a session token signed by the merchant's backend.
//!
//! The socket and the initiate land on different gateways; a refused token (tampered,
//! re-signed with another key, expired), a token used twice and a body that differs
//! from the token start no push at the simulator; the routes do not exist when
//! `compat.enabled` is off.

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use futures_util::StreamExt as _;
use secrecy::SecretString;
use serde_json::{json, Value};
use stk_relay_daraja_sim::RequestKind;
use stk_relay_e2e::{random_alnum, sim, Cluster, ClusterOptions, STEP};
use stk_relay_shared::compat::{CompatMessage, CompatStatus, InitiateResponse};
use stk_relay_shared::session_token::{SessionPayload, SessionTokens};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

/// The shop's origin, allowed cross-origin (`api.allowed_origins`).
const SHOP: &str = "https://shop.test";

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A cluster with the compatibility routes on, and the secret its backend signs with.
async fn start(name: &str) -> Result<(Cluster, SessionTokens)> {
    let secret = random_alnum(48);
    let opts = ClusterOptions {
        gateway_env: vec![
            ("GATEWAY__COMPAT__ENABLED".into(), "true".into()),
            ("GATEWAY__COMPAT__SESSION_SECRET".into(), secret.clone()),
            ("GATEWAY__API__ALLOWED_ORIGINS".into(), SHOP.into()),
        ],
        ..ClusterOptions::default()
    };
    let c = Cluster::start_with(name, opts).await?;
    Ok((c, SessionTokens::new(SecretString::from(secret), None)))
}

fn payload(amount: u32, phone: Option<&str>) -> SessionPayload {
    SessionPayload {
        sid: format!("cs_{}", random_alnum(24)),
        amount: amount.into(),
        account_reference: "ORDER-1".into(),
        phone: phone.map(str::to_owned),
        desc: Some("Order 1".into()),
        exp: chrono::Utc::now().timestamp() + 600,
    }
}

fn mint(keys: &SessionTokens, p: &SessionPayload) -> Result<String> {
    keys.issue(p).context("minting a session token")
}

async fn initiate(c: &Cluster, gw: usize, token: &str, body: Value) -> Result<(u16, Value)> {
    let resp = c
        .http
        .post(format!("{}/sessions/{token}/initiate", c.gateway(gw).url()))
        .timeout(STEP)
        .json(&body)
        .send()
        .await
        .context("POST /sessions/{token}/initiate")?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    let v = serde_json::from_str(&text).with_context(|| format!("not JSON: {status} {text}"))?;
    Ok((status, v))
}

fn body(phone: &str, amount: u32) -> Value {
    json!({ "phoneNumber": phone, "amount": amount, "accountReference": "ORDER-1" })
}

/// Opens `/sessions/{token}/websocket`; `Err((status, body))` when the upgrade is refused.
async fn connect(c: &Cluster, gw: usize, token: &str) -> Result<Result<Socket, (u16, String)>> {
    let url = format!("{}/sessions/{token}/websocket", c.gateway(gw).ws_url());
    match tokio::time::timeout(STEP, tokio_tungstenite::connect_async(url)).await {
        Err(_) => bail!("timed out connecting"),
        Ok(Ok((s, _))) => Ok(Ok(s)),
        Ok(Err(tungstenite::Error::Http(resp))) => Ok(Err((
            resp.status().as_u16(),
            resp.body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
        ))),
        Ok(Err(e)) => bail!("connect failed: {e}"),
    }
}

/// The next message, skipping pings; a close or the end of the stream is an error.
async fn next_message(ws: &mut Socket) -> Result<CompatMessage> {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let frame = tokio::time::timeout(left, ws.next())
            .await
            .map_err(|_| anyhow!("no message within {STEP:?}"))?;
        match frame {
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(&t).with_context(|| format!("unparseable: {t}"))
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => bail!("socket ended while waiting for a message: {other:?}"),
        }
    }
}

/// Waits for the server's close frame, failing on any message before it.
async fn expect_close(ws: &mut Socket) -> Result<CloseCode> {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let frame = tokio::time::timeout(left, ws.next())
            .await
            .map_err(|_| anyhow!("no close within {STEP:?}"))?;
        match frame {
            Some(Ok(Message::Close(Some(f)))) => return Ok(f.code),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => bail!("expected a close frame, got {other:?}"),
        }
    }
}

/// STK Push requests the simulator accepted.
async fn pushes(c: &Cluster) -> Result<usize> {
    Ok(c.sim_ctl
        .push_records()
        .await?
        .iter()
        .filter(|r| r.kind == RequestKind::StkPush && r.status == 200)
        .count())
}

/// The receipt in the callback the simulator sent for `id`.
async fn sim_receipt(c: &Cluster, id: &str) -> Result<String> {
    let sent = c.sim_ctl.callbacks_sent_for(id).await?;
    let cb = sent
        .first()
        .ok_or_else(|| anyhow!("no callback sent for {id}"))?;
    let items = cb.body["Body"]["stkCallback"]["CallbackMetadata"]["Item"]
        .as_array()
        .ok_or_else(|| anyhow!("no metadata in {}", cb.body))?;
    items
        .iter()
        .find(|i| i["Name"] == "MpesaReceiptNumber")
        .and_then(|i| i["Value"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no receipt in {}", cb.body))
}

fn initiated_id(m: &CompatMessage) -> Result<&str> {
    match m {
        CompatMessage::StkInitiated(i) => Ok(&i.checkout_request_id),
        other => bail!("expected STK_INITIATED, got {other:?}"),
    }
}

/// The socket opens on gateway 0 before the initiate, which lands on gateway 1:
/// STK_INITIATED, then one PAYMENT_COMPLETED SUCCESS with the simulator's receipt, then
/// 1000. A socket opened afterwards gets both again from the stored state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_and_initiate_on_different_gateways() -> Result<()> {
    let (c, keys) = start("compat_cross_node").await?;
    let phone = sim::phone(1, "050");
    let token = mint(&keys, &payload(120, Some(&phone)))?;

    let mut ws = connect(&c, 0, &token)
        .await?
        .map_err(|e| anyhow!("upgrade refused: {e:?}"))?;
    let (status, resp) = initiate(&c, 1, &token, body(&phone, 120)).await?;
    ensure!(status == 200, "initiate: {status} {resp}");
    let resp: InitiateResponse = serde_json::from_value(resp)?;
    ensure!(
        resp.success && resp.initiated.status == "PENDING",
        "{resp:?}"
    );
    let id = resp.initiated.checkout_request_id.clone();

    let first = next_message(&mut ws).await?;
    ensure!(
        initiated_id(&first)? == id,
        "STK_INITIATED for another push: {first:?}"
    );
    let done = next_message(&mut ws).await?;
    let CompatMessage::PaymentCompleted(d) = &done else {
        bail!("expected PAYMENT_COMPLETED, got {done:?}");
    };
    let receipt = sim_receipt(&c, &id).await?;
    ensure!(d.status == CompatStatus::Success, "{d:?}");
    ensure!(
        d.checkout_request_id == id && d.amount == Some(120),
        "{d:?}"
    );
    ensure!(
        d.mpesa_receipt_number.as_deref() == Some(receipt.as_str()),
        "{d:?} vs {receipt}"
    );
    ensure!(d.reason.is_none(), "{d:?}");
    ensure!(
        expect_close(&mut ws).await? == CloseCode::Normal,
        "not closed with 1000"
    );

    // Reconnecting (on the other node) replays both from the stored state, once.
    let mut again = connect(&c, 1, &token)
        .await?
        .map_err(|e| anyhow!("upgrade refused: {e:?}"))?;
    ensure!(initiated_id(&next_message(&mut again).await?)? == id);
    ensure!(
        next_message(&mut again).await? == done,
        "replayed completion differs"
    );
    ensure!(expect_close(&mut again).await? == CloseCode::Normal);
    ensure!(pushes(&c).await? == 1, "expected exactly one push");

    // The token never reaches the logs (neither half of it).
    let (payload_b64, mac_b64) = token.split_once('.').ok_or_else(|| anyhow!("no dot"))?;
    for gw in &c.gateways {
        for log in [gw.stdout_log(), gw.stderr_log()] {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            ensure!(
                !text.contains(payload_b64) && !text.contains(mac_b64),
                "{} holds the session token",
                log.display()
            );
        }
    }
    Ok(())
}

/// A cancelled push (phone ending 132): PAYMENT_COMPLETED FAILED with a reason. The
/// initiate comes first here, the socket second (on the other node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_push_completes_as_failed_with_reason() -> Result<()> {
    let (c, keys) = start("compat_failed").await?;
    let phone = sim::phone(2, "132");
    // No phone bound into the token: the buyer types it.
    let token = mint(&keys, &payload(75, None))?;
    let (status, resp) = initiate(&c, 0, &token, body(&phone, 75)).await?;
    ensure!(status == 200, "initiate: {status} {resp}");

    let mut ws = connect(&c, 1, &token)
        .await?
        .map_err(|e| anyhow!("upgrade refused: {e:?}"))?;
    initiated_id(&next_message(&mut ws).await?)?;
    let done = next_message(&mut ws).await?;
    let CompatMessage::PaymentCompleted(d) = &done else {
        bail!("expected PAYMENT_COMPLETED, got {done:?}");
    };
    ensure!(d.status == CompatStatus::Failed, "{d:?}");
    ensure!(
        d.reason_code.as_deref() == Some("CANCELLED_BY_USER"),
        "{d:?}"
    );
    ensure!(d.reason.as_deref().is_some_and(|r| !r.is_empty()), "{d:?}");
    ensure!(d.mpesa_receipt_number.is_none(), "{d:?}");
    ensure!(expect_close(&mut ws).await? == CloseCode::Normal);
    Ok(())
}

/// Re-encodes a token's payload with `change` applied, keeping the old signature.
fn forge(token: &str, change: impl FnOnce(&mut Value)) -> Result<String> {
    let (body, sig) = token.split_once('.').ok_or_else(|| anyhow!("no dot"))?;
    let mut v: Value = serde_json::from_slice(&B64.decode(body)?)?;
    change(&mut v);
    Ok(format!("{}.{sig}", B64.encode(serde_json::to_vec(&v)?)))
}

/// Tampered, re-signed with another key, expired, or garbage: the initiate gets 401,
/// the socket's upgrade is refused with 401, and the simulator sees no push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_start_nothing() -> Result<()> {
    let (c, keys) = start("compat_refused").await?;
    let phone = sim::phone(3, "050");
    let good = mint(&keys, &payload(500, Some(&phone)))?;

    let mut flipped = good.clone().into_bytes();
    flipped[5] = if flipped[5] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped)?;
    let cheaper = forge(&good, |v| v["amount"] = json!(1))?;
    let stranger = SessionTokens::new(SecretString::from(random_alnum(48)), None);
    let other_key = mint(&stranger, &payload(500, Some(&phone)))?;
    let mut old = payload(500, Some(&phone));
    old.exp = chrono::Utc::now().timestamp() - 120;
    let expired = mint(&keys, &old)?;
    let long = "a".repeat(2000);

    for (what, token, amount) in [
        ("a flipped character", flipped.as_str(), 500),
        ("a changed amount", cheaper.as_str(), 1),
        ("another key", other_key.as_str(), 500),
        ("an expired token", expired.as_str(), 500),
        ("garbage", "not-a-token", 500),
        ("an oversize token", long.as_str(), 500),
    ] {
        let (status, resp) = initiate(&c, 0, token, body(&phone, amount)).await?;
        ensure!(status == 401, "{what}: initiate answered {status} {resp}");
        ensure!(resp["error"]["code"] == "UNAUTHORIZED", "{what}: {resp}");
        match connect(&c, 1, token).await? {
            Ok(_) => bail!("{what}: the socket was accepted"),
            Err((status, _)) => ensure!(status == 401, "{what}: upgrade answered {status}"),
        }
    }
    ensure!(pushes(&c).await? == 0, "a refused token started a push");
    Ok(())
}

/// The same token twice (on two gateways): the second initiate gets 409 and the
/// simulator saw exactly one push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_starts_at_most_one_push() -> Result<()> {
    let (c, keys) = start("compat_once").await?;
    let phone = sim::phone(4, sim::MANUAL);
    let token = mint(&keys, &payload(200, Some(&phone)))?;
    let (status, resp) = initiate(&c, 0, &token, body(&phone, 200)).await?;
    ensure!(status == 200, "first initiate: {status} {resp}");
    for gw in [1, 0] {
        let (status, resp) = initiate(&c, gw, &token, body(&phone, 200)).await?;
        ensure!(status == 409, "repeat on gateway{gw}: {status} {resp}");
        ensure!(
            resp["error"]["code"] == "SESSION_ALREADY_STARTED",
            "repeat: {resp}"
        );
    }
    ensure!(pushes(&c).await? == 1, "expected exactly one push");
    Ok(())
}

/// A body that differs from the token (amount, account reference, phone): 422 naming
/// the field, no push. The token stays usable for the right body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_differs_from_the_token_is_refused() -> Result<()> {
    let (c, keys) = start("compat_mismatch").await?;
    let phone = sim::phone(5, sim::MANUAL);
    let token = mint(&keys, &payload(300, Some(&phone)))?;
    let cases = [
        ("amount", body(&phone, 299)),
        (
            "accountReference",
            json!({ "phoneNumber": phone, "amount": 300, "accountReference": "ORDER-2" }),
        ),
        ("phoneNumber", body(&sim::phone(6, sim::MANUAL), 300)),
    ];
    for (field, b) in cases {
        let (status, resp) = initiate(&c, 0, &token, b).await?;
        ensure!(status == 422, "{field}: {status} {resp}");
        let msg = resp["error"]["message"].as_str().unwrap_or_default();
        ensure!(msg.contains(field), "{field}: message {msg:?}");
    }
    let (status, resp) = initiate(&c, 0, &token, json!({ "amount": 300 })).await?;
    ensure!(status == 400, "missing fields: {status} {resp}");
    ensure!(pushes(&c).await? == 0, "a refused body started a push");
    let (status, resp) = initiate(&c, 1, &token, body(&phone, 300)).await?;
    ensure!(status == 200, "the right body: {status} {resp}");
    ensure!(pushes(&c).await? == 1);
    Ok(())
}

/// The initiate is a browser POST from the shop's origin: the CORS preflight and the
/// POST's answer allow it; another origin gets no CORS grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initiate_allows_the_shops_origin() -> Result<()> {
    let (c, keys) = start("compat_cors").await?;
    let phone = sim::phone(8, sim::MANUAL);
    let token = mint(&keys, &payload(90, Some(&phone)))?;
    let url = format!("{}/sessions/{token}/initiate", c.gateway(0).url());
    let preflight = |origin: &'static str| {
        c.http
            .request(reqwest::Method::OPTIONS, &url)
            .timeout(STEP)
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "content-type")
            .send()
    };
    let ok = preflight(SHOP).await?;
    let allowed = ok
        .headers()
        .get("access-control-allow-origin")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    ensure!(
        ok.status().is_success() && allowed.as_deref() == Some(SHOP),
        "preflight from the shop: {} {allowed:?}",
        ok.status()
    );
    let other = preflight("https://evil.test").await?;
    ensure!(
        other.headers().get("access-control-allow-origin").is_none(),
        "another origin was granted CORS"
    );
    let resp = c
        .http
        .post(&url)
        .timeout(STEP)
        .header("Origin", SHOP)
        .json(&body(&phone, 90))
        .send()
        .await?;
    ensure!(
        resp.status() == 200,
        "POST from the shop: {}",
        resp.status()
    );
    ensure!(
        resp.headers()
            .get("access-control-allow-origin")
            .is_some_and(|v| v.as_bytes() == SHOP.as_bytes()),
        "no CORS grant on the POST"
    );
    Ok(())
}

/// With `compat.enabled` off (the default) the routes do not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_are_absent_when_disabled() -> Result<()> {
    let opts = ClusterOptions {
        gateways: 1,
        ingests: 1,
        ..ClusterOptions::default()
    };
    let c = Cluster::start_with("compat_disabled", opts).await?;
    let keys = SessionTokens::new(SecretString::from(random_alnum(48)), None);
    let phone = sim::phone(7, "050");
    let token = mint(&keys, &payload(100, Some(&phone)))?;
    let (status, resp) = initiate(&c, 0, &token, body(&phone, 100)).await?;
    ensure!(status == 404, "initiate: {status} {resp}");
    match connect(&c, 0, &token).await? {
        Ok(_) => bail!("the socket was accepted"),
        Err((status, _)) => ensure!(status == 404, "upgrade answered {status}"),
    }
    ensure!(pushes(&c).await? == 0);
    Ok(())
}
