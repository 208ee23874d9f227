//! A push that Daraja accepted is never lost to a Redis outage (issue #6 §3, gateway and
//! idempotency). The simulator holds its answer to an accepted push
//! (`POST /sim/hold-pushes`) so the test can stop Redis between Daraja's acceptance and
//! the gateway's pending write:
//! - the merchant still gets 200 with the ids and a token; the browser gets 503 until
//!   the queued write lands, then exactly one PAYMENT_COMPLETED;
//! - with an Idempotency-Key, the key's outcome is queued behind the write, and a retry
//!   replays the same CheckoutRequestID with no second push;
//! - a claimed key outlives its push (its TTL is checked in Redis: a test cannot wait for
//!   the old 120 s expiry), also across a gateway crash mid-push and a Daraja timeout;
//! - SIGTERM flushes queued writes when Redis is back in time, and otherwise logs one
//!   error line per unwritten CheckoutRequestID.

use std::time::Duration;

use anyhow::{anyhow, ensure, Context as _, Result};
use serde_json::Value;
use stk_relay_daraja_sim::RequestKind;
use stk_relay_e2e::cluster::{kv, Auth};
use stk_relay_e2e::ws::WsConnectError;
use stk_relay_e2e::{sim, wait, Cluster, ClusterOptions, STEP};
use stk_relay_shared::api::{ErrorCode, ErrorResponse, MessageType, PushRequest, PushResponse};
use stk_relay_shared::ids::CheckoutRequestId;
use stk_relay_shared::keyspace::Keyspace;
use stk_relay_shared::payment::PaymentStatus;
use tokio::task::JoinHandle;

/// The payment TTL the tests configure: a claimed key must live at least this long.
const PAYMENT_TTL_SECS: i64 = 7200;

fn options(extra: &[(&str, &str)], persistent_redis: bool) -> ClusterOptions {
    let mut gateway_env = vec![kv(
        "GATEWAY__PAYMENTS__TTL_SECS",
        &PAYMENT_TTL_SECS.to_string(),
    )];
    gateway_env.extend(extra.iter().map(|(k, v)| kv(k, v)));
    ClusterOptions {
        gateways: 1,
        ingests: 1,
        persistent_redis,
        gateway_env,
        ..ClusterOptions::default()
    }
}

fn request(phone: &str, amount: u32) -> PushRequest {
    PushRequest {
        phone: phone.to_owned(),
        amount: amount.into(),
        account_reference: "DURABLE".to_owned(),
        description: None,
        webhook_url: None,
    }
}

/// A push's answer: status, `Idempotent-Replayed` header, body.
struct Answer {
    status: u16,
    replayed: bool,
    body: String,
}

impl Answer {
    fn push_response(&self) -> Result<PushResponse> {
        ensure!(self.status == 200, "push: {}: {}", self.status, self.body);
        serde_json::from_str(&self.body)
            .with_context(|| format!("not a PushResponse: {}", self.body))
    }

    fn error_code(&self) -> Result<ErrorCode> {
        let e: ErrorResponse = serde_json::from_str(&self.body)
            .with_context(|| format!("not an error body: {}", self.body))?;
        Ok(e.error.code)
    }
}

async fn send_push(
    http: reqwest::Client,
    url: String,
    api_key: String,
    body: PushRequest,
    key: Option<String>,
) -> Result<Answer> {
    let mut req = http
        .post(format!("{url}/v1/stk/push"))
        .timeout(Duration::from_secs(30))
        .bearer_auth(api_key)
        .json(&body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let resp = req.send().await.context("POST /v1/stk/push")?;
    let status = resp.status().as_u16();
    let replayed = resp
        .headers()
        .get("idempotent-replayed")
        .and_then(|v| v.to_str().ok())
        == Some("true");
    Ok(Answer {
        status,
        replayed,
        body: resp.text().await?,
    })
}

/// Sends a push in its own task, so the test can stop Redis while it is held.
fn spawn_push(c: &Cluster, body: PushRequest, key: Option<&str>) -> JoinHandle<Result<Answer>> {
    tokio::spawn(send_push(
        c.http.clone(),
        c.gateway(0).url().to_owned(),
        c.api_key.clone(),
        body,
        key.map(str::to_owned),
    ))
}

async fn push_now(c: &Cluster, body: PushRequest, key: Option<&str>) -> Result<Answer> {
    send_push(
        c.http.clone(),
        c.gateway(0).url().to_owned(),
        c.api_key.clone(),
        body,
        key.map(str::to_owned),
    )
    .await
}

async fn sim_call(c: &Cluster, method: reqwest::Method, path: &str) -> Result<Value> {
    let resp = c
        .http
        .request(method, format!("{}{path}", c.sim.url()))
        .timeout(STEP)
        .send()
        .await
        .with_context(|| format!("sim {path}"))?;
    ensure!(resp.status().is_success(), "sim {path}: {}", resp.status());
    Ok(resp.json().await?)
}

async fn hold_pushes(c: &Cluster) -> Result<()> {
    sim_call(c, reqwest::Method::POST, "/sim/hold-pushes").await?;
    Ok(())
}

async fn release_pushes(c: &Cluster) -> Result<u64> {
    let v = sim_call(c, reqwest::Method::POST, "/sim/release-pushes").await?;
    v["released"]
        .as_u64()
        .ok_or_else(|| anyhow!("bad release answer {v}"))
}

/// Waits until the simulator holds the answers of `n` accepted pushes.
async fn wait_held(c: &Cluster, n: u64) -> Result<()> {
    wait::until(&format!("{n} held push answers"), STEP, || async {
        let v = sim_call(c, reqwest::Method::GET, "/sim/held-pushes").await?;
        Ok((v["held"].as_u64() == Some(n)).then_some(()))
    })
    .await
}

/// How many STK pushes the simulator accepted for `phone`.
async fn pushes_for(c: &Cluster, phone: &str) -> Result<usize> {
    Ok(c.sim_ctl
        .push_records()
        .await?
        .iter()
        .filter(|r| r.kind == RequestKind::StkPush && r.status == 200)
        .filter(|r| {
            r.body
                .as_ref()
                .and_then(|b| b.get("PhoneNumber"))
                .and_then(Value::as_str)
                == Some(phone)
        })
        .count())
}

/// The TTLs of every idempotency record of this cluster.
async fn idempotency_ttls(c: &Cluster) -> Result<Vec<i64>> {
    let keys: Vec<String> = c
        .redis
        .command(&["KEYS", &format!("{}:idem:*", c.key_prefix)])
        .await?;
    let mut out = Vec::with_capacity(keys.len());
    for k in &keys {
        out.push(c.redis.command::<i64>(&["TTL", k]).await?);
    }
    Ok(out)
}

/// Whether the payment's record is in Redis.
async fn stored(c: &Cluster, id: &str) -> Result<bool> {
    let key = Keyspace::new(c.key_prefix.clone()).payment(&CheckoutRequestId::parse(id)?);
    let state: Option<String> = c.redis.command(&["HGET", &key, "state"]).await?;
    Ok(state.is_some())
}

fn log_of(node: &stk_relay_e2e::process::Node) -> String {
    std::fs::read_to_string(node.stderr_log()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_push_survives_redis_outage_and_completes_once() -> Result<()> {
    let mut c = Cluster::start_with("durable-push", options(&[], false)).await?;
    let phone = sim::phone(8101, sim::MANUAL);

    hold_pushes(&c).await?;
    let pushed = spawn_push(&c, request(&phone, 150), None);
    wait_held(&c, 1).await?;
    c.redis.kill().await?;
    ensure!(release_pushes(&c).await? == 1, "one push answer was held");

    let p = pushed.await??.push_response()?;
    ensure!(p.status == "PENDING", "status {:?}", p.status);
    ensure!(!p.token.is_empty() && p.checkout_request_id.starts_with("ws_CO_"));
    let id = p.checkout_request_id.clone();

    // While the pending write is queued, the browser is told to come back.
    match c.ws_connect(0, &id, &p.token).await {
        Err(WsConnectError::Http { status: 503, .. }) => {}
        Err(e) => return Err(anyhow!("WS while queued: {e}")),
        Ok(_) => return Err(anyhow!("WS while queued was accepted")),
    }
    let get = c.get_payment(0, &id, Auth::Query(&p.token)).await?;
    ensure!(
        get.status().as_u16() == 503,
        "GET while queued: {}",
        get.status()
    );

    c.redis.restart().await?;
    wait::until("the queued pending write lands", STEP, || async {
        let r = c.get_payment(0, &id, Auth::Query(&p.token)).await?;
        Ok((r.status().as_u16() == 200).then_some(()))
    })
    .await?;
    ensure!(stored(&c, &id).await?, "no record in Redis");

    let mut ws = c
        .ws_connect(0, &id, &p.token)
        .await
        .map_err(|e| anyhow!("WS after the write: {e}"))?;
    ws.expect(MessageType::PaymentUpdate).await?;
    c.sim_ctl.complete(&id, 0).await?;
    let done = ws.expect(MessageType::PaymentCompleted).await?;
    ensure!(
        done.data.status == PaymentStatus::Success && done.data.checkout_request_id.as_str() == id,
        "completed with {:?}",
        done.data
    );
    ws.expect_no_message(2, STEP).await?;
    ensure!(pushes_for(&c, &phone).await? == 1, "exactly one push");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_push_survives_redis_outage_and_replays_without_second_push() -> Result<()> {
    let mut c = Cluster::start_with("durable-push-idem", options(&[], true)).await?;
    let phone = sim::phone(8201, sim::MANUAL);
    let key = "order-8201";

    hold_pushes(&c).await?;
    let pushed = spawn_push(&c, request(&phone, 220), Some(key));
    wait_held(&c, 1).await?;
    c.redis.kill().await?;
    ensure!(release_pushes(&c).await? == 1, "one push answer was held");
    let first = pushed.await??.push_response()?;

    // While Redis is down a retry cannot even read the key: 503, and no push.
    let during = push_now(&c, request(&phone, 220), Some(key)).await?;
    ensure!(
        during.status == 503,
        "retry during outage: {}",
        during.status
    );

    c.redis.restart().await?;
    // Until the writer stored the outcome, a retry is "in progress" (409); then a replay.
    let replay = wait::until("the idempotent outcome is stored", STEP, || async {
        let a = push_now(&c, request(&phone, 220), Some(key)).await?;
        match a.status {
            200 => Ok(Some(a)),
            409 if a.error_code()? == ErrorCode::IdempotencyInProgress => Ok(None),
            other => Err(anyhow!("retry: {other}: {}", a.body)),
        }
    })
    .await?;
    ensure!(
        replay.replayed,
        "the retry is not marked Idempotent-Replayed"
    );
    let replay = replay.push_response()?;
    ensure!(
        replay.checkout_request_id == first.checkout_request_id,
        "replay names another payment"
    );
    ensure!(replay == first, "replay differs: {replay:?} vs {first:?}");
    ensure!(
        stored(&c, &first.checkout_request_id).await?,
        "no record in Redis"
    );
    ensure!(
        pushes_for(&c, &phone).await? == 1,
        "Daraja got a second push"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claimed_key_outlives_its_push_across_crash_and_timeout() -> Result<()> {
    let mut c = Cluster::start_with("durable-push-claim", options(&[], false)).await?;

    // A gateway that crashes while its push is at Daraja.
    let phone = sim::phone(8301, sim::MANUAL);
    hold_pushes(&c).await?;
    let pushed = spawn_push(&c, request(&phone, 330), Some("order-8301"));
    wait_held(&c, 1).await?;
    let ttls = idempotency_ttls(&c).await?;
    ensure!(ttls.len() == 1, "one claimed key, got {ttls:?}");
    // Structural: the old 120 s in-progress TTL let a retry prompt the buyer again.
    ensure!(
        ttls[0] >= PAYMENT_TTL_SECS,
        "in-progress key expires in {}s, before the payment ({PAYMENT_TTL_SECS}s)",
        ttls[0]
    );
    c.gateways[0].kill().await?;
    ensure!(release_pushes(&c).await? == 1, "one push answer was held");
    ensure!(pushed.await?.is_err(), "the crashed gateway answered");
    c.respawn_gateway(
        0,
        &[
            kv("GATEWAY__DARAJA__REQUEST_TIMEOUT_MS", "1000"),
            kv("GATEWAY__DARAJA__CONNECT_TIMEOUT_MS", "500"),
        ],
    )
    .await?;
    c.wait_ready(c.gateway(0).url(), STEP).await?;
    let retry = push_now(&c, request(&phone, 330), Some("order-8301")).await?;
    ensure!(
        retry.status == 409 && retry.error_code()? == ErrorCode::IdempotencyInProgress,
        "retry after a crash mid-push: {}: {}",
        retry.status,
        retry.body
    );
    ensure!(
        pushes_for(&c, &phone).await? == 1,
        "a second prompt after a crash"
    );

    // A push whose answer never came (Daraja timeout): ambiguous, so remembered.
    let phone2 = sim::phone(8302, sim::MANUAL);
    hold_pushes(&c).await?;
    let first = push_now(&c, request(&phone2, 331), Some("order-8302")).await?;
    ensure!(release_pushes(&c).await? == 1, "one push answer was held");
    ensure!(
        first.status == 504 && first.error_code()? == ErrorCode::DarajaTimeout,
        "held push: {}: {}",
        first.status,
        first.body
    );
    for ttl in idempotency_ttls(&c).await? {
        ensure!(ttl >= PAYMENT_TTL_SECS, "a key expires in {ttl}s");
    }
    let again = push_now(&c, request(&phone2, 331), Some("order-8302")).await?;
    ensure!(
        again.status == 504 && again.replayed,
        "retry after a timeout: {} replayed={}",
        again.status,
        again.replayed
    );
    ensure!(
        pushes_for(&c, &phone2).await? == 1,
        "a second prompt after a timeout"
    );
    Ok(())
}

/// Pushes `n` payments whose pending writes all end up queued (Redis killed while
/// Daraja's answers are held). Returns their responses and the callback tokens.
async fn queue_pushes(c: &mut Cluster, first_phone: u32, n: u32) -> Result<Vec<PushResponse>> {
    hold_pushes(c).await?;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            spawn_push(
                c,
                request(&sim::phone(first_phone + i, sim::MANUAL), 10 + i),
                None,
            )
        })
        .collect();
    wait_held(c, u64::from(n)).await?;
    c.redis.kill().await?;
    ensure!(release_pushes(c).await? == u64::from(n), "held answers");
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await??.push_response()?);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_queued_writes_or_logs_each_one() -> Result<()> {
    let mut c = Cluster::start_with(
        "durable-push-sigterm",
        options(&[("GATEWAY__SERVER__SHUTDOWN_TIMEOUT_MS", "2000")], false),
    )
    .await?;

    // Redis stays down: every unwritten payment is named in an error line.
    let lost = queue_pushes(&mut c, 8401, 3).await?;
    c.gateways[0].terminate(STEP).await?;
    let log = log_of(c.gateway(0));
    for p in &lost {
        ensure!(
            log.lines().any(|l| l.contains("ERROR")
                && l.contains("NOT written")
                && l.contains(&p.checkout_request_id)),
            "no error line for {}",
            p.checkout_request_id
        );
    }
    // The callback tokens (which carry the nonce) never reach the log.
    for url in c.sim_ctl.callback_urls_by_phone().await?.values().flatten() {
        let token = url.rsplit('/').next().unwrap_or_default();
        ensure!(
            !token.is_empty() && !log.contains(token),
            "a callback token is logged"
        );
    }

    // Redis comes back while the gateway drains: the queued writes land before exit.
    c.redis.restart().await?;
    c.respawn_gateway(0, &[kv("GATEWAY__SERVER__SHUTDOWN_TIMEOUT_MS", "8000")])
        .await?;
    c.wait_ready(c.gateway(0).url(), STEP).await?;
    let flushed = queue_pushes(&mut c, 8411, 2).await?;
    let pid = c.gateway(0).pid().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()?;
    ensure!(sent.success(), "kill -TERM");
    c.redis.restart().await?;
    // A second SIGTERM is harmless; this waits for the exit.
    c.gateways[0].terminate(STEP).await?;
    for p in &flushed {
        ensure!(
            stored(&c, &p.checkout_request_id).await?,
            "{} was not flushed before exit",
            p.checkout_request_id
        );
    }
    let log = log_of(c.gateway(0));
    ensure!(!log.contains("NOT written"), "a write was reported lost");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_pending_bound_refuses_before_contacting_daraja() -> Result<()> {
    let c = Cluster::start_with(
        "durable-push-bound",
        options(&[("GATEWAY__PAYMENTS__PENDING_QUEUE_MAX", "1")], false),
    )
    .await?;
    let (phone1, phone2) = (sim::phone(8501, sim::MANUAL), sim::phone(8502, sim::MANUAL));

    // The one place is held by a push waiting for Daraja's answer.
    hold_pushes(&c).await?;
    let first = spawn_push(&c, request(&phone1, 51), None);
    wait_held(&c, 1).await?;
    let refused = tokio::time::timeout(
        Duration::from_secs(5),
        push_now(&c, request(&phone2, 52), None),
    )
    .await
    .context("a push beyond the bound was not refused at once")??;
    ensure!(
        refused.status == 503 && refused.error_code()? == ErrorCode::ServiceUnavailable,
        "push beyond the bound: {}: {}",
        refused.status,
        refused.body
    );
    ensure!(
        pushes_for(&c, &phone2).await? == 0,
        "Daraja was contacted beyond the bound"
    );
    ensure!(release_pushes(&c).await? == 1, "one push answer was held");
    first.await??.push_response()?;

    // The place is free again once the first push is recorded.
    push_now(&c, request(&phone2, 52), None)
        .await?
        .push_response()?;
    ensure!(
        pushes_for(&c, &phone2).await? == 1,
        "one push once there is room"
    );
    Ok(())
}
