//! Delivery across nodes: a payment pushed on one gateway, watched on another, completed
//! through either ingest node, reaches the browser once and with the right contents.

use std::collections::HashMap;

use anyhow::{ensure, Context as _, Result};
use futures_util::{stream, StreamExt as _, TryStreamExt as _};
use stk_relay_e2e::cluster::Auth;
use stk_relay_e2e::{daraja, expect, sim, wait, Cluster, STEP};
use stk_relay_shared::api::{MessageType, PushResponse};
use stk_relay_shared::payment::{FailureReason, PaymentState};

/// Push via gateway 0, WebSocket on gateway 1, callback through ingest 1 (the CallBackURL
/// names ingest 0): PAYMENT_UPDATE, then one PAYMENT_COMPLETED with the receipt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_on_one_gateway_socket_on_other_callback_via_second_ingest() -> Result<()> {
    let c = Cluster::start("cross_node").await?;
    let phone = sim::phone(1, sim::MANUAL);
    let p = c.push(0, &phone, 150).await?;
    let id = p.checkout_request_id.as_str();

    let mut ws = c.ws_connect(1, id, &p.token).await?;
    let first = ws.expect(MessageType::PaymentUpdate).await?;
    expect::pending(&first.data, id, 150)?;

    let url = c.callback_url_for(id).await?;
    ensure!(
        url.starts_with(c.ingest(0).url()),
        "CallBackURL {url} does not name ingest0"
    );
    let path = sim::path_of(&url)?;
    let receipt = daraja::receipt(1);
    let body = daraja::success(&p.merchant_request_id, id, 150, &receipt, &phone);
    c.deliver_callback(1, &path, &body).await?;

    let done = ws.expect(MessageType::PaymentCompleted).await?;
    expect::success(&done.data, id, 150, &receipt)?;
    ensure!(
        done.data.phone_number.as_deref() == Some("2547******33"),
        "phone is not masked as expected: {:?}",
        done.data.phone_number
    );
    ws.expect_no_message(2, STEP).await?;

    // The merchant, polling the other gateway with its API key, sees the same state.
    let resp = c.get_payment(0, id, Auth::Bearer(&c.api_key)).await?;
    ensure!(resp.status() == 200, "GET with API key: {}", resp.status());
    let via_get: PaymentState = resp.json().await?;
    ensure!(
        via_get == done.data,
        "GET {via_get:?} != WS {:?}",
        done.data
    );
    Ok(())
}

/// The callback is stored before any browser connects: the first (and only) message is
/// PAYMENT_COMPLETED with the final snapshot, on WebSocket and SSE alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_before_socket_gives_final_snapshot_first() -> Result<()> {
    let c = Cluster::start("callback_first").await?;

    // A success POSTed by us through ingest 1.
    let p = c.push(0, &sim::phone(2, sim::MANUAL), 200).await?;
    let id = p.checkout_request_id.as_str();
    let receipt = daraja::receipt(2);
    c.deliver_success(1, &p, 200, &receipt).await?;
    let mut ws = c.ws_connect(1, id, &p.token).await?;
    let first = ws.expect(MessageType::PaymentCompleted).await?;
    expect::success(&first.data, id, 200, &receipt)?;
    ws.expect_no_message(2, STEP).await?;

    // A cancellation sent by the simulator itself (to ingest 0, the CallBackURL).
    let q = c.push(1, &sim::phone(3, sim::MANUAL), 300).await?;
    let qid = q.checkout_request_id.as_str();
    let sent = c.sim_ctl.complete_sent(qid, 1032).await?;
    ensure!(
        sent.status == Some(200),
        "ingest answered the simulator's callback with {:?} ({:?})",
        sent.status,
        sent.error
    );
    let mut ws = c.ws_connect(0, qid, &q.token).await?;
    let first = ws.expect(MessageType::PaymentCompleted).await?;
    expect::failed(&first.data, qid, 1032, FailureReason::CancelledByUser)?;
    ensure!(
        first.data.amount == Some(300),
        "a failure keeps the amount: {:?}",
        first.data
    );
    ws.expect_no_message(2, STEP).await?;

    let mut sse = c.sse_connect(1, qid, &q.token).await?;
    let first_sse = sse.expect(MessageType::PaymentCompleted).await?;
    ensure!(
        first_sse.data == first.data,
        "SSE {:?} != WS {:?}",
        first_sse.data,
        first.data
    );
    Ok(())
}

/// Duplicate callbacks — the same success through both ingest nodes at once, then the
/// simulator's own (conflicting) callback and a resend, and the simulator's `222` mode —
/// produce exactly one PAYMENT_COMPLETED, and the first result stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_callbacks_complete_once() -> Result<()> {
    let c = Cluster::start("duplicates").await?;

    let p = c.push(0, &sim::phone(4, sim::MANUAL), 400).await?;
    let id = p.checkout_request_id.as_str();
    let mut ws = c.ws_connect(1, id, &p.token).await?;
    expect::pending(&ws.expect(MessageType::PaymentUpdate).await?.data, id, 400)?;

    let path = c.callback_path_for(id).await?;
    let receipt = daraja::receipt(4);
    let body = daraja::success(&p.merchant_request_id, id, 400, &receipt, &c.phone_of(id)?);
    let (a, b) = tokio::join!(
        c.deliver_callback(0, &path, &body),
        c.deliver_callback(1, &path, &body)
    );
    a.context("first copy via ingest0")?;
    b.context("second copy via ingest1")?;
    let done = ws.expect(MessageType::PaymentCompleted).await?;
    expect::success(&done.data, id, 400, &receipt)?;

    // The simulator decides the push itself (another receipt) and sends it twice more.
    let sent = c.sim_ctl.complete_sent(id, 0).await?;
    ensure!(
        sent.status == Some(200),
        "duplicate answered {:?}",
        sent.status
    );
    let sent = c.sim_ctl.resend_sent(id).await?;
    ensure!(
        sent.status == Some(200),
        "resend answered {:?}",
        sent.status
    );
    ws.expect_no_message(2, STEP).await?;
    let after = c.payment_state(1, id, &p.token).await?;
    ensure!(
        after == done.data,
        "a duplicate changed the state: {after:?}"
    );

    // A second socket gets the same final snapshot, and nothing else.
    let mut ws2 = c.ws_connect(0, id, &p.token).await?;
    let snap = ws2.expect(MessageType::PaymentCompleted).await?;
    ensure!(
        snap.data == done.data,
        "snapshot {:?} != {:?}",
        snap.data,
        done.data
    );
    ws2.expect_no_message(2, STEP).await?;

    // Simulator mode 222: the success callback is sent twice by the simulator.
    let d = c.push(1, &sim::phone(5, sim::DUPLICATE), 500).await?;
    let did = d.checkout_request_id.as_str();
    let mut ws = c.ws_connect(0, did, &d.token).await?;
    let mut completed = Vec::new();
    let first = ws.next_message(STEP).await?;
    match first.kind {
        MessageType::PaymentUpdate => expect::pending(&first.data, did, 500)?,
        MessageType::PaymentCompleted => completed.push(first.data),
    }
    if completed.is_empty() {
        completed.push(ws.expect(MessageType::PaymentCompleted).await?.data);
    }
    ensure!(completed[0].status.is_final(), "{:?}", completed[0]);
    ensure!(
        completed[0].mpesa_receipt_number.is_some(),
        "{:?}",
        completed[0]
    );
    // Wait until the simulator has sent both copies, and both were acknowledged.
    let sends = wait::until("two callbacks sent by the simulator", STEP, || async {
        let sent = c.sim_ctl.callbacks_sent_for(did).await?;
        Ok((sent.len() >= 2).then_some(sent))
    })
    .await?;
    for s in &sends {
        ensure!(
            s.status == Some(200),
            "a 222 copy was answered {:?}",
            s.status
        );
    }
    ws.expect_no_message(2, STEP).await?;
    Ok(())
}

/// GET and SSE report the same states as the WebSocket, before and after completion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_and_get_fallbacks_match_websocket() -> Result<()> {
    let c = Cluster::start("fallbacks").await?;
    let p = c.push(0, &sim::phone(6, sim::MANUAL), 60).await?;
    let id = p.checkout_request_id.as_str();

    let s0 = c.payment_state(1, id, &p.token).await?;
    expect::pending(&s0, id, 60)?;
    let mut sse = c.sse_connect(1, id, &p.token).await?;
    let sse0 = sse.expect(MessageType::PaymentUpdate).await?;
    let mut ws = c.ws_connect(0, id, &p.token).await?;
    let ws0 = ws.expect(MessageType::PaymentUpdate).await?;
    ensure!(sse0.data == s0, "SSE {:?} != GET {s0:?}", sse0.data);
    ensure!(ws0.data == s0, "WS {:?} != GET {s0:?}", ws0.data);
    for auth in [Auth::Bearer(&p.token), Auth::Bearer(&c.api_key)] {
        let r = c.get_payment(0, id, auth).await?;
        ensure!(r.status() == 200, "GET with {auth:?}: {}", r.status());
        let s: PaymentState = r.json().await?;
        ensure!(s == s0, "GET with {auth:?}: {s:?} != {s0:?}");
    }

    let receipt = daraja::receipt(6);
    c.deliver_success(0, &p, 60, &receipt).await?;
    let sse1 = sse.expect(MessageType::PaymentCompleted).await?;
    let ws1 = ws.expect(MessageType::PaymentCompleted).await?;
    expect::success(&sse1.data, id, 60, &receipt)?;
    ensure!(
        ws1.data == sse1.data,
        "WS {:?} != SSE {:?}",
        ws1.data,
        sse1.data
    );
    for gw in 0..2 {
        let s = c.payment_state(gw, id, &p.token).await?;
        ensure!(
            s == sse1.data,
            "GET on gateway{gw}: {s:?} != {:?}",
            sse1.data
        );
    }
    let mut late = c.sse_connect(0, id, &p.token).await?;
    let late1 = late.expect(MessageType::PaymentCompleted).await?;
    ensure!(late1.data == sse1.data, "late SSE {:?}", late1.data);
    Ok(())
}

const MANY: u32 = 200;

/// 200 payments pushed over both gateways, watched from the other gateway, completed
/// through both ingest nodes (one in five cancelled): each socket gets its own result,
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_payments_each_delivered_once() -> Result<()> {
    let c = Cluster::start("concurrent_200").await?;

    let pushes: Vec<(u32, PushResponse)> = stream::iter(0..MANY)
        .map(|i| {
            let c = &c;
            async move {
                let p = c
                    .push((i % 2) as usize, &sim::phone(1000 + i, sim::MANUAL), 10 + i)
                    .await
                    .with_context(|| format!("push {i}"))?;
                Ok::<_, anyhow::Error>((i, p))
            }
        })
        .buffer_unordered(32)
        .try_collect()
        .await?;
    ensure!(pushes.len() == MANY as usize);

    // One socket per payment, on the gateway that did not push it.
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<u32>(MANY as usize);
    let mut sockets = Vec::new();
    for (i, p) in &pushes {
        let gw = ((i + 1) % 2) as usize;
        let url = c.ws_url(gw, &p.checkout_request_id, &p.token);
        let (i, id, ready_tx) = (*i, p.checkout_request_id.clone(), ready_tx.clone());
        sockets.push(tokio::spawn(async move {
            let mut ws = stk_relay_e2e::ws::WsClient::connect(&url).await?;
            expect::pending(
                &ws.expect(MessageType::PaymentUpdate).await?.data,
                &id,
                10 + i,
            )?;
            ready_tx.send(i).await?;
            let done = ws
                .expect(MessageType::PaymentCompleted)
                .await
                .with_context(|| format!("payment {i} on gateway{gw}"))?;
            ws.expect_no_message(1, STEP)
                .await
                .with_context(|| format!("payment {i}: after PAYMENT_COMPLETED"))?;
            Ok::<_, anyhow::Error>((i, done.data))
        }));
    }
    drop(ready_tx);
    for _ in 0..MANY {
        tokio::time::timeout(STEP * 3, ready_rx.recv())
            .await
            .context("sockets did not all get their first message")?
            .context("a socket task failed before its first message")?;
    }

    let ids: Vec<&str> = pushes
        .iter()
        .map(|(_, p)| p.checkout_request_id.as_str())
        .collect();
    let paths = c.callback_paths_for(&ids).await?;
    stream::iter(pushes.iter())
        .map(|(i, p)| {
            let (c, paths) = (&c, &paths);
            async move {
                let id = p.checkout_request_id.as_str();
                let body = if i % 5 == 0 {
                    daraja::failure(
                        &p.merchant_request_id,
                        id,
                        1032,
                        "Request cancelled by user",
                    )
                } else {
                    daraja::success(
                        &p.merchant_request_id,
                        id,
                        10 + i,
                        &daraja::receipt(*i),
                        &c.phone_of(id)?,
                    )
                };
                c.deliver_callback((i % 2) as usize, &paths[id], &body)
                    .await
                    .with_context(|| format!("callback {i}"))
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;

    let by_index: HashMap<u32, &PushResponse> = pushes.iter().map(|(i, p)| (*i, p)).collect();
    let mut delivered = 0;
    for s in sockets {
        let (i, state) = s.await??;
        let id = by_index[&i].checkout_request_id.as_str();
        if i % 5 == 0 {
            expect::failed(&state, id, 1032, FailureReason::CancelledByUser)?;
        } else {
            expect::success(&state, id, 10 + i, &daraja::receipt(i))?;
        }
        delivered += 1;
    }
    ensure!(delivered == MANY, "{delivered} of {MANY} delivered");
    Ok(())
}
