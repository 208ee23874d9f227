//! Failures of the parts: Redis killed and restarted under pending payments, a gateway
//! killed under a WebSocket, and a gateway shut down gracefully.

use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use stk_relay_e2e::ws::WsClient;
use stk_relay_e2e::{daraja, expect, sim, wait, Cluster, ClusterOptions, STEP};
use stk_relay_shared::api::{ErrorCode, ErrorResponse, MessageType, PushResponse};
use stk_relay_shared::ids::CheckoutRequestId;
use stk_relay_shared::keyspace::Keyspace;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Pending payments, each watched from the gateway that did not push it.
async fn pending_with_sockets(
    c: &Cluster,
    n: u32,
    base: u32,
) -> Result<Vec<(u32, PushResponse, WsClient)>> {
    let mut out = Vec::new();
    for i in 0..n {
        let amount = base + i;
        let p = c
            .push((i % 2) as usize, &sim::phone(base + i, sim::MANUAL), amount)
            .await?;
        let mut ws = c
            .ws_connect(((i + 1) % 2) as usize, &p.checkout_request_id, &p.token)
            .await?;
        expect::pending(
            &ws.expect(MessageType::PaymentUpdate).await?.data,
            &p.checkout_request_id,
            amount,
        )?;
        out.push((amount, p, ws));
    }
    Ok(out)
}

/// Every socket receives its payment's SUCCESS once, then nothing. The sockets are read
/// side by side, as browsers would: a socket left unread while the test waits on another
/// could see its (already closed) server refuse the client's pong replies to queued
/// pings, and the test client would then drop the frames still in its buffer.
async fn expect_each_completed(
    open: &mut [(u32, PushResponse, WsClient)],
    what: &str,
) -> Result<()> {
    let checks = open.iter_mut().map(|(amount, p, ws)| async move {
        let done = ws
            .expect(MessageType::PaymentCompleted)
            .await
            .with_context(|| format!("payment {amount}{what}"))?;
        expect::success(
            &done.data,
            &p.checkout_request_id,
            *amount,
            &daraja::receipt(*amount),
        )?;
        ws.expect_no_message(1, STEP).await
    });
    futures_util::future::try_join_all(checks).await?;
    Ok(())
}

fn persistent() -> ClusterOptions {
    ClusterOptions {
        persistent_redis: true,
        ..ClusterOptions::default()
    }
}

/// Redis is SIGKILLed while payments are pending (its AOF keeps them). While it is down,
/// readiness is 503 and ingest answers a callback with 503. After the restart, once every
/// node is ready again, the callbacks reach the sockets that stayed open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_with_pending_payments_then_callbacks() -> Result<()> {
    let mut c = Cluster::start_with("redis_restart", persistent()).await?;
    let mut open = pending_with_sockets(&c, 6, 100).await?;
    let paths = c
        .callback_paths_for(
            &open
                .iter()
                .map(|(_, p, _)| p.checkout_request_id.as_str())
                .collect::<Vec<_>>(),
        )
        .await?;

    c.redis.kill().await?;
    for gw in 0..2 {
        c.wait_unready(c.gateway(gw).url(), STEP).await?;
        ensure!(
            c.healthz(c.gateway(gw).url()).await? == 200,
            "gateway{gw} not alive"
        );
    }
    c.wait_unready(c.ingest(0).url(), STEP).await?;
    let (_, p0, _) = &open[0];
    let body0 = daraja::success(
        &p0.merchant_request_id,
        &p0.checkout_request_id,
        100,
        &daraja::receipt(100),
        &c.phone_of(&p0.checkout_request_id)?,
    );
    let resp = c
        .post_callback(1, &paths[&p0.checkout_request_id], &body0)
        .await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    ensure!(
        status == 503,
        "callback while Redis is down: {status}: {text}"
    );
    let err: ErrorResponse = serde_json::from_str(&text).with_context(|| text.clone())?;
    ensure!(err.error.code == ErrorCode::ServiceUnavailable, "{err:?}");

    c.redis.restart().await?;
    for gw in 0..2 {
        c.wait_ready(c.gateway(gw).url(), STEP).await?;
    }
    for i in 0..2 {
        c.wait_ready(c.ingest(i).url(), STEP).await?;
    }
    // The pending records survived (otherwise this test would prove nothing).
    for (amount, p, _) in &open {
        let s = c.payment_state(0, &p.checkout_request_id, &p.token).await?;
        expect::pending(&s, &p.checkout_request_id, *amount)?;
    }

    for (i, (amount, p, _)) in open.iter().enumerate() {
        let id = p.checkout_request_id.as_str();
        let body = daraja::success(
            &p.merchant_request_id,
            id,
            *amount,
            &daraja::receipt(*amount),
            &c.phone_of(id)?,
        );
        c.deliver_callback(i % 2, &paths[id], &body).await?;
    }
    expect_each_completed(&mut open, " after the Redis restart").await
}

/// Redis is killed and restarted, and the callbacks are sent the moment Redis answers
/// again, without waiting for the gateways to reconnect: a result published while a
/// gateway's subscriber is still down must reach its sockets after the re-subscribe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_during_gateway_reconnect_are_resynced() -> Result<()> {
    let mut c = Cluster::start_with("redis_resync", persistent()).await?;
    let mut open = pending_with_sockets(&c, 6, 200).await?;
    let paths = c
        .callback_paths_for(
            &open
                .iter()
                .map(|(_, p, _)| p.checkout_request_id.as_str())
                .collect::<Vec<_>>(),
        )
        .await?;

    c.redis.kill().await?;
    c.wait_unready(c.gateway(0).url(), STEP).await?;
    c.redis.restart().await?;

    // Ingest may itself still be reconnecting: retry a 503 as a sender would, bounded.
    for (i, (amount, p, _)) in open.iter().enumerate() {
        let id = p.checkout_request_id.as_str();
        let body = daraja::success(
            &p.merchant_request_id,
            id,
            *amount,
            &daraja::receipt(*amount),
            &c.phone_of(id)?,
        );
        let path = &paths[id];
        wait::until(
            &format!("ingest to accept callback {amount}"),
            STEP,
            || async {
                let resp = c.post_callback(i % 2, path, &body).await?;
                match resp.status().as_u16() {
                    200 => Ok(Some(())),
                    503 => Ok(None),
                    other => {
                        anyhow::bail!("callback {amount}: HTTP {other}: {}", resp.text().await?)
                    }
                }
            },
        )
        .await?;
    }
    expect_each_completed(&mut open, ": result published during reconnect").await
}

/// Deterministic version of the case above: Redis stops accepting new connections
/// (`maxclients` lowered to the current count), and every gateway's subscriber connection
/// is dropped (`CLIENT KILL TYPE pubsub`), so it cannot come back; both gateways report
/// not ready. The callbacks are then stored and published (ingest keeps its open
/// connections) with nobody subscribed. Once Redis accepts connections again, the
/// gateways re-subscribe, resync from the stored state, and every socket gets its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_published_while_subscriber_down_arrive_after_resubscribe() -> Result<()> {
    let c = Cluster::start("subscriber_down").await?;
    let mut open = pending_with_sockets(&c, 6, 250).await?;

    let mut ctl = c.redis.control().await?;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut ctl)
        .await?;
    let total = list.lines().count();
    let subscribers = list.lines().filter(|l| l.contains(" flags=P ")).count();
    ensure!(
        subscribers >= 2,
        "expected a subscriber per gateway:\n{list}"
    );
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg(total - subscribers)
        .query_async(&mut ctl)
        .await?;
    let killed: usize = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut ctl)
        .await?;
    ensure!(
        killed == subscribers,
        "killed {killed} of {subscribers} subscribers"
    );
    for gw in 0..2 {
        c.wait_unready(c.gateway(gw).url(), STEP)
            .await
            .with_context(|| format!("gateway{gw} readiness with its subscriber down"))?;
    }

    for (i, (amount, p, _)) in open.iter().enumerate() {
        let id = p.checkout_request_id.as_str();
        c.deliver_success(i % 2, p, *amount, &daraja::receipt(*amount))
            .await
            .context("ingest must keep working on its open connections")?;
        let s = c.payment_state(0, id, &p.token).await?;
        expect::success(&s, id, *amount, &daraja::receipt(*amount))?;
    }
    // Still unsubscribed: the results are stored, and published to nobody.
    for gw in 0..2 {
        ensure!(
            c.readyz(c.gateway(gw).url()).await? == 503,
            "gateway{gw} resubscribed early"
        );
    }

    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg(10_000)
        .query_async(&mut ctl)
        .await?;
    for gw in 0..2 {
        c.wait_ready(c.gateway(gw).url(), STEP).await?;
    }
    expect_each_completed(&mut open, ": result published while unsubscribed").await
}

/// A re-SUBSCRIBE that Redis refuses (here: SUBSCRIBE denied by ACL while the subscriber
/// reconnects) must not leave the gateway believing it is subscribed: once SUBSCRIBE is
/// allowed again, results must reach the sockets again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_resubscribe_is_retried() -> Result<()> {
    let c = Cluster::start("refused_resubscribe").await?;
    let mut open = pending_with_sockets(&c, 2, 270).await?;

    let _: () = c
        .redis
        .command(&["ACL", "SETUSER", "default", "-subscribe"])
        .await?;
    let killed: i64 = c
        .redis
        .command(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .await?;
    ensure!(
        killed >= 2,
        "expected both gateways' subscriber connections, killed {killed}"
    );
    // Both gateways have reconnected and tried (and failed) to re-subscribe: their new
    // subscriber connections show SUBSCRIBE as the last command.
    wait::until("both gateways to attempt a re-subscribe", STEP, || async {
        let list = c.redis.client_list().await?;
        let tried = list
            .lines()
            .filter(|l| l.contains(" cmd=subscribe "))
            .count();
        Ok((tried >= 2).then_some(()))
    })
    .await?;
    let _: () = c
        .redis
        .command(&["ACL", "SETUSER", "default", "+subscribe"])
        .await?;

    for (i, (amount, p, _)) in open.iter().enumerate() {
        c.deliver_success(i % 2, p, *amount, &daraja::receipt(*amount))
            .await?;
    }
    for (amount, p, ws) in open.iter_mut() {
        let got = ws.expect(MessageType::PaymentCompleted).await;
        let done = match got {
            Ok(done) => done,
            Err(e) => {
                let id = CheckoutRequestId::parse(&p.checkout_request_id).context("id")?;
                let channel = Keyspace::new(c.key_prefix.clone()).payment_channel(&id);
                let numsub: Vec<redis::Value> =
                    c.redis.command(&["PUBSUB", "NUMSUB", &channel]).await?;
                let ready = [
                    c.readyz(c.gateway(0).url()).await?,
                    c.readyz(c.gateway(1).url()).await?,
                ];
                anyhow::bail!(
                    "payment {amount}: no result after SUBSCRIBE was allowed again; \
                     PUBSUB NUMSUB {channel} = {numsub:?}; gateways' /readyz = {ready:?}: {e:#}"
                );
            }
        };
        expect::success(
            &done.data,
            &p.checkout_request_id,
            *amount,
            &daraja::receipt(*amount),
        )?;
    }
    Ok(())
}

/// The gateway holding a browser's WebSocket is SIGKILLed. The payment completes while it
/// is dead; the browser reconnects to the other gateway and gets the final state first.
/// A second browser reconnects while its payment is still pending and gets the update
/// and then the completion there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_killed_client_reconnects_elsewhere() -> Result<()> {
    let mut c = Cluster::start("gateway_killed").await?;
    let a = c.push(0, &sim::phone(301, sim::MANUAL), 31).await?;
    let b = c.push(1, &sim::phone(302, sim::MANUAL), 32).await?;
    let mut wa = c.ws_connect(0, &a.checkout_request_id, &a.token).await?;
    let mut wb = c.ws_connect(0, &b.checkout_request_id, &b.token).await?;
    wa.expect(MessageType::PaymentUpdate).await?;
    wb.expect(MessageType::PaymentUpdate).await?;

    c.gateways[0].kill().await?;
    wa.expect_end(STEP)
        .await
        .context("socket A after SIGKILL")?;
    wb.expect_end(STEP)
        .await
        .context("socket B after SIGKILL")?;

    c.deliver_success(1, &a, 31, &daraja::receipt(31)).await?;
    let mut wa = c.ws_connect(1, &a.checkout_request_id, &a.token).await?;
    let first = wa.expect(MessageType::PaymentCompleted).await?;
    expect::success(
        &first.data,
        &a.checkout_request_id,
        31,
        &daraja::receipt(31),
    )?;
    wa.expect_no_message(1, STEP).await?;

    let mut wb = c.ws_connect(1, &b.checkout_request_id, &b.token).await?;
    expect::pending(
        &wb.expect(MessageType::PaymentUpdate).await?.data,
        &b.checkout_request_id,
        32,
    )?;
    c.deliver_success(0, &b, 32, &daraja::receipt(32)).await?;
    let done = wb.expect(MessageType::PaymentCompleted).await?;
    expect::success(&done.data, &b.checkout_request_id, 32, &daraja::receipt(32))?;
    Ok(())
}

/// SIGTERM: readiness goes to 503, open WebSockets are closed with 1001 (going away), the
/// process exits by itself, and the other gateway keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_sigterm_closes_websockets_with_1001() -> Result<()> {
    let mut c = Cluster::start("gateway_sigterm").await?;
    let a = c.push(0, &sim::phone(401, sim::MANUAL), 41).await?;
    let b = c.push(1, &sim::phone(402, sim::MANUAL), 42).await?;
    let mut wa = c.ws_connect(0, &a.checkout_request_id, &a.token).await?;
    let mut wb = c.ws_connect(0, &b.checkout_request_id, &b.token).await?;
    let mut other = c.ws_connect(1, &b.checkout_request_id, &b.token).await?;
    for ws in [&mut wa, &mut wb, &mut other] {
        ws.expect(MessageType::PaymentUpdate).await?;
    }

    let limit = Duration::from_secs(20);
    let gw0 = &mut c.gateways[0];
    let (exit, ca, cb) = tokio::join!(
        gw0.terminate(limit),
        wa.expect_end(limit),
        wb.expect_end(limit)
    );
    let (ca, cb) = (ca.context("socket A")?, cb.context("socket B")?);
    ensure!(
        ca == Some(CloseCode::Away),
        "socket A closed with {ca:?}, expected 1001"
    );
    ensure!(
        cb == Some(CloseCode::Away),
        "socket B closed with {cb:?}, expected 1001"
    );
    let exit = exit?;
    ensure!(exit.success(), "gateway0 exited with {exit} after SIGTERM");

    c.deliver_success(1, &b, 42, &daraja::receipt(42)).await?;
    let done = other.expect(MessageType::PaymentCompleted).await?;
    expect::success(&done.data, &b.checkout_request_id, 42, &daraja::receipt(42))?;
    Ok(())
}
