//! Many payments in flight at once, for the tests that fail a part under load: each
//! payment pending with a browser socket waiting on it, the callbacks streamed in while
//! something breaks, and every socket checked for its one result.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use futures_util::StreamExt as _;
use stk_relay_shared::api::{MessageType, PushResponse};

use crate::ws::WsClient;
use crate::{daraja, expect, sim, wait, Cluster, STEP};

/// Pushes `n` payments (manual phones, so they stay pending), each watched by a socket
/// on the other gateway that has seen PENDING.
pub async fn pending_payments(c: &Cluster, n: u32) -> Result<Vec<(u32, PushResponse, WsClient)>> {
    let made = futures_util::stream::iter(0..n)
        .map(|i| async move {
            let amount = 1000 + i;
            let p = c
                .push((i % 2) as usize, &sim::phone(amount, sim::MANUAL), amount)
                .await?;
            let mut ws = c
                .ws_connect(((i + 1) % 2) as usize, &p.checkout_request_id, &p.token)
                .await?;
            expect::pending(
                &ws.expect(MessageType::PaymentUpdate).await?.data,
                &p.checkout_request_id,
                amount,
            )?;
            Ok::<_, anyhow::Error>((amount, p, ws))
        })
        .buffer_unordered(20)
        .collect::<Vec<_>>()
        .await;
    made.into_iter().collect()
}

/// Delivers every payment's success callback, alternating ingest nodes, retrying a 503
/// (Redis unavailable) or a refused connection as Daraja would, each within `bound`.
/// `done` counts the callbacks accepted so far.
pub async fn deliver_all(
    c: &Cluster,
    open: &[(u32, PushResponse)],
    done: &AtomicUsize,
    bound: Duration,
) -> Result<()> {
    let ids: Vec<&str> = open
        .iter()
        .map(|(_, p)| p.checkout_request_id.as_str())
        .collect();
    let paths = c.callback_paths_for(&ids).await?;
    let paths = &paths;
    let results = futures_util::stream::iter(open.iter().enumerate())
        .map(|(i, (amount, p))| async move {
            let id = p.checkout_request_id.as_str();
            let body = daraja::success(
                &p.merchant_request_id,
                id,
                *amount,
                &daraja::receipt(*amount),
                &c.phone_of(id)?,
            );
            let path = &paths[id];
            wait::until(&format!("callback {amount} accepted"), bound, || async {
                let resp = match c.post_callback(i % 2, path, &body).await {
                    Ok(r) => r,
                    Err(_) => return Ok(None),
                };
                match resp.status().as_u16() {
                    200 => Ok(Some(())),
                    503 => Ok(None),
                    other => {
                        anyhow::bail!("callback {amount}: HTTP {other}: {}", resp.text().await?)
                    }
                }
            })
            .await?;
            done.fetch_add(1, Ordering::Relaxed);
            // A steady stream rather than one burst: the failover lands in the middle.
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, anyhow::Error>(())
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    results.into_iter().collect()
}

/// Every socket gets its SUCCESS exactly once (nothing after it), read side by side,
/// each within `within` of the call. Give it the bound [`deliver_all`] has: while Redis
/// refuses writes (no replica left to acknowledge `WAIT` after a double failover, say)
/// a callback is retried, not lost, and its result comes that much later.
/// Returns how many completed.
pub async fn each_completed_once(
    open: &[(u32, PushResponse)],
    sockets: &mut [WsClient],
    within: Duration,
) -> Result<usize> {
    let checks = open
        .iter()
        .zip(sockets.iter_mut())
        .map(|((amount, p), ws)| async move {
            let done = ws
                .expect_within(MessageType::PaymentCompleted, within)
                .await
                .with_context(|| format!("payment {amount}: result lost"))?;
            expect::success(
                &done.data,
                &p.checkout_request_id,
                *amount,
                &daraja::receipt(*amount),
            )?;
            ws.expect_no_message(1, STEP)
                .await
                .with_context(|| format!("payment {amount}: something after its result"))
        });
    Ok(futures_util::future::try_join_all(checks).await?.len())
}
