//! The ingest's spool (issue #6 §3): callbacks that arrive while Redis is down are
//! acknowledged from a local fsynced spool and applied once Redis is back, also across a
//! SIGKILL of the ingest; a full spool answers 503 and says so on `/readyz`; without a
//! spool, today's 503 stays.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use futures_util::{stream, StreamExt as _, TryStreamExt as _};
use serde_json::Value;
use stk_relay_e2e::cluster::kv;
use stk_relay_e2e::ws::WsClient;
use stk_relay_e2e::{daraja, expect, random_alnum, sim, wait, Cluster, ClusterOptions, STEP};
use stk_relay_shared::api::{ErrorCode, ErrorResponse, MessageType, PushResponse};

const MANY: u32 = 200;
/// How long Redis stays down in the outage tests.
const OUTAGE: Duration = Duration::from_secs(10);

/// A fresh spool directory, removed when dropped.
struct SpoolDir(PathBuf);

impl SpoolDir {
    fn new(tag: &str) -> Self {
        Self(std::env::temp_dir().join(format!("stk-e2e-spool-{tag}-{}", random_alnum(10))))
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![kv(
            "INGEST__CALLBACKS__SPOOL_DIR",
            &self.0.display().to_string(),
        )]
    }
}

impl Drop for SpoolDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the browser of one payment saw.
struct Seen {
    i: u32,
    completed_at: Instant,
    state: stk_relay_shared::payment::PaymentState,
}

/// `n` pending payments pushed over both gateways, each watched by a WebSocket on the
/// gateway that did not push it. Returns the pushes and the socket tasks, which resolve
/// once their socket got PAYMENT_COMPLETED (waiting at most `wait_for_result`) and then
/// nothing more.
async fn payments_with_sockets(
    c: &Cluster,
    n: u32,
    base: u32,
    wait_for_result: Duration,
) -> Result<(
    Vec<(u32, PushResponse, Instant)>,
    Vec<tokio::task::JoinHandle<Result<Seen>>>,
)> {
    let pushes: Vec<(u32, PushResponse, Instant)> = stream::iter(0..n)
        .map(|i| async move {
            let p = c
                .push((i % 2) as usize, &sim::phone(base + i, sim::MANUAL), 10 + i)
                .await
                .with_context(|| format!("push {i}"))?;
            Ok::<_, anyhow::Error>((i, p, Instant::now()))
        })
        .buffer_unordered(32)
        .try_collect()
        .await?;
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<u32>(n as usize);
    let mut sockets = Vec::new();
    for (i, p, _) in &pushes {
        let gw = ((i + 1) % 2) as usize;
        let url = c.ws_url(gw, &p.checkout_request_id, &p.token);
        let (i, id, ready_tx) = (*i, p.checkout_request_id.clone(), ready_tx.clone());
        sockets.push(tokio::spawn(async move {
            let mut ws = WsClient::connect(&url).await?;
            expect::pending(
                &ws.expect(MessageType::PaymentUpdate).await?.data,
                &id,
                10 + i,
            )?;
            ready_tx.send(i).await?;
            let done = ws
                .next_message(wait_for_result)
                .await
                .with_context(|| format!("payment {i} on gateway{gw}: no result"))?;
            let completed_at = Instant::now();
            if done.kind != MessageType::PaymentCompleted {
                bail!("payment {i}: expected PAYMENT_COMPLETED, got {done:?}");
            }
            ws.expect_no_message(1, STEP)
                .await
                .with_context(|| format!("payment {i}: after PAYMENT_COMPLETED"))?;
            Ok(Seen {
                i,
                completed_at,
                state: done.data,
            })
        }));
    }
    drop(ready_tx);
    for _ in 0..n {
        tokio::time::timeout(STEP * 3, ready_rx.recv())
            .await
            .context("sockets did not all get their first message")?
            .context("a socket task failed before its first message")?;
    }
    Ok((pushes, sockets))
}

fn success_body(c: &Cluster, p: &PushResponse, i: u32) -> Result<Value> {
    let id = p.checkout_request_id.as_str();
    Ok(daraja::success(
        &p.merchant_request_id,
        id,
        10 + i,
        &daraja::receipt(i),
        &c.phone_of(id)?,
    ))
}

/// Redis is down for 10 s while 200 callbacks arrive over two ingests with a spool. Every
/// callback is acknowledged, both ingests stay ready ("spooling"), and after Redis is back
/// every payment is applied from the spools and each of the 200 browsers (on two
/// gateways) gets exactly one PAYMENT_COMPLETED. With `kill_ingests`, both ingests are
/// SIGKILLed after acknowledging and restarted on the same spool directories while Redis
/// is still down: the restarted processes find the spooled callbacks on disk; and once
/// Redis is back, ingest1 is SIGKILLed again as soon as its replay has begun, and
/// restarted: nothing is lost and nothing is delivered twice.
async fn outage(name: &str, base: u32, kill_ingests: bool) -> Result<()> {
    let dirs = [SpoolDir::new(name), SpoolDir::new(name)];
    let opts = ClusterOptions {
        persistent_redis: true,
        ingest_env_each: dirs.iter().map(SpoolDir::env).collect(),
        ..ClusterOptions::default()
    };
    let mut c = Cluster::start_with(name, opts).await?;
    let (pushes, sockets) =
        payments_with_sockets(&c, MANY, base, OUTAGE + Duration::from_secs(50)).await?;
    let ids: Vec<&str> = pushes
        .iter()
        .map(|(_, p, _)| p.checkout_request_id.as_str())
        .collect();
    let paths = c.callback_paths_for(&ids).await?;

    c.redis.kill().await?;
    let down_at = Instant::now();
    for i in 0..2 {
        wait::until(&format!("ingest{i} spooling"), STEP, || async {
            let (status, body) = c.readyz_json(c.ingest(i).url()).await?;
            Ok((status == 200 && body["status"] == "spooling").then_some(()))
        })
        .await?;
    }

    let acked: Vec<(u32, Instant)> = stream::iter(pushes.iter())
        .map(|(i, p, _)| {
            let (c, paths) = (&c, &paths);
            async move {
                let body = success_body(c, p, *i)?;
                let sent = Instant::now();
                c.deliver_callback(
                    (i % 2) as usize,
                    &paths[p.checkout_request_id.as_str()],
                    &body,
                )
                .await
                .with_context(|| format!("callback {i} while Redis is down"))?;
                Ok::<_, anyhow::Error>((*i, sent))
            }
        })
        .buffer_unordered(MANY as usize)
        .try_collect()
        .await?;
    ensure!(acked.len() == MANY as usize);
    let acked_by = down_at.elapsed();
    ensure!(
        acked_by < OUTAGE,
        "acknowledging took {acked_by:?}, longer than the outage; the test would prove nothing"
    );
    let sent: HashMap<u32, Instant> = acked.into_iter().collect();
    for i in 0..2 {
        let (status, body) = c.readyz_json(c.ingest(i).url()).await?;
        ensure!(
            status == 200 && body["status"] == "spooling" && body["spooled"] == MANY / 2,
            "ingest{i} after acknowledging: {status} {body}"
        );
    }

    if kill_ingests {
        for i in 0..2 {
            c.ingests[i].kill().await?;
        }
        for i in 0..2 {
            c.respawn_ingest(i, &[]).await?;
            // Ready at once on the spool it found on disk, with every callback still in it.
            let (status, body) = c.readyz_json(c.ingest(i).url()).await?;
            ensure!(
                status == 200 && body["status"] == "spooling" && body["spooled"] == MANY / 2,
                "ingest{i} restarted on its spool: {status} {body}"
            );
        }
    }

    // Redis stays down for the whole outage, whatever the test did meanwhile.
    tokio::time::sleep(OUTAGE.saturating_sub(down_at.elapsed())).await;
    // No payment was completed while Redis was down.
    ensure!(
        sockets.iter().all(|s| !s.is_finished()),
        "a browser finished while Redis was down"
    );
    c.redis.restart().await?;
    let up_at = Instant::now();
    if kill_ingests {
        // SIGKILL ingest1 again, in the middle of its replay when the timing allows (a
        // record applied but its position not yet saved is applied twice: the store
        // deduplicates, and each browser must still see exactly one result).
        let left = wait::until("ingest1 replay under way", STEP, || async {
            let (_, body) = c.readyz_json(c.ingest(1).url()).await?;
            Ok(body["spooled"]
                .as_u64()
                .filter(|n| *n < u64::from(MANY / 2)))
        })
        .await?;
        c.ingests[1].kill().await?;
        c.respawn_ingest(1, &[]).await?;
        eprintln!("e2e {name}: ingest1 SIGKILLed during replay with {left} callbacks left");
    }
    for i in 0..2 {
        wait::until(&format!("ingest{i} spool drained"), STEP * 3, || async {
            let (status, body) = c.readyz_json(c.ingest(i).url()).await?;
            Ok((status == 200 && body["status"] == "ready" && body["spooled"] == 0).then_some(()))
        })
        .await?;
    }
    let drained = up_at.elapsed();

    let pushed_at: HashMap<u32, Instant> = pushes.iter().map(|(i, _, t)| (*i, *t)).collect();
    let by_index: HashMap<u32, &PushResponse> = pushes.iter().map(|(i, p, _)| (*i, p)).collect();
    let mut longest_pending = Duration::ZERO;
    let mut longest_after_callback = Duration::ZERO;
    let mut last_done = up_at;
    let mut delivered = 0;
    for s in sockets {
        let seen = s.await??;
        let p = by_index[&seen.i];
        expect::success(
            &seen.state,
            &p.checkout_request_id,
            10 + seen.i,
            &daraja::receipt(seen.i),
        )?;
        longest_pending = longest_pending.max(seen.completed_at - pushed_at[&seen.i]);
        longest_after_callback = longest_after_callback.max(seen.completed_at - sent[&seen.i]);
        last_done = last_done.max(seen.completed_at);
        delivered += 1;
    }
    ensure!(delivered == MANY, "{delivered} of {MANY} delivered");
    eprintln!(
        "e2e {name}: payments {MANY}, lost 0, duplicates 0; all acknowledged {acked_by:?} after Redis went down; \
         spools drained {drained:?} after Redis came back; last browser result {:?} after Redis came back; \
         longest PENDING {longest_pending:?} from push ({longest_after_callback:?} from its callback)",
        last_done - up_at
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_10s_200_callbacks_spooled_then_each_delivered_once() -> Result<()> {
    outage("spool_outage", 20_000, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_sigkilled_after_acknowledging_replays_its_spool_after_restart() -> Result<()> {
    outage("spool_sigkill", 21_000, true).await
}

/// A small spool fills up: the callback that does not fit gets 503 SERVICE_UNAVAILABLE
/// and `/readyz` answers 503 "spool full". Once Redis is back the spooled callbacks are
/// applied, the node is ready again, and the refused callback, sent again, completes
/// its payment. An ingest without a spool answers 503 while Redis is down, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_answers_503_and_readyz_says_why() -> Result<()> {
    let dir = SpoolDir::new("full");
    let opts = ClusterOptions {
        gateways: 1,
        ingest_env: vec![
            kv("INGEST__CALLBACKS__MAX_BODY_BYTES", "1024"),
            kv("INGEST__CALLBACKS__REDIS_RETRY_BUDGET_MS", "200"),
        ],
        ingest_env_each: vec![
            [
                dir.env(),
                vec![kv("INGEST__CALLBACKS__SPOOL_MAX_BYTES", "5120")],
            ]
            .concat(),
            Vec::new(),
        ],
        persistent_redis: true,
        ..ClusterOptions::default()
    };
    let mut c = Cluster::start_with("spool_full", opts).await?;
    let mut pushes = Vec::new();
    for i in 0..16 {
        pushes.push(
            c.push(0, &sim::phone(22_000 + i, sim::MANUAL), 10 + i)
                .await?,
        );
    }
    let ids: Vec<&str> = pushes
        .iter()
        .map(|p| p.checkout_request_id.as_str())
        .collect();
    let paths = c.callback_paths_for(&ids).await?;

    c.redis.kill().await?;
    // Without a spool: not ready, and 503 as before.
    c.wait_unready(c.ingest(1).url(), STEP).await?;
    let (status, body) = c.readyz_json(c.ingest(1).url()).await?;
    ensure!(
        status == 503 && body["status"] == "redis unavailable",
        "{status} {body}"
    );
    let p0 = &pushes[0];
    let resp = c
        .post_callback(
            1,
            &paths[&p0.checkout_request_id],
            &success_body(&c, p0, 0)?,
        )
        .await?;
    let (status, text) = (resp.status().as_u16(), resp.text().await?);
    ensure!(status == 503, "no spool, Redis down: {status}: {text}");
    let err: ErrorResponse = serde_json::from_str(&text).with_context(|| text.clone())?;
    ensure!(err.error.code == ErrorCode::ServiceUnavailable, "{err:?}");

    // With a small spool: acknowledged until it is full.
    let mut spooled = Vec::new();
    let mut refused = None;
    for (i, p) in pushes.iter().enumerate() {
        let resp = c
            .post_callback(
                0,
                &paths[&p.checkout_request_id],
                &success_body(&c, p, i as u32)?,
            )
            .await?;
        let (status, text) = (resp.status().as_u16(), resp.text().await?);
        match status {
            200 => spooled.push(i),
            503 => {
                let err: ErrorResponse =
                    serde_json::from_str(&text).with_context(|| text.clone())?;
                ensure!(err.error.code == ErrorCode::ServiceUnavailable, "{err:?}");
                ensure!(err.error.message.contains("spool full"), "{text}");
                refused = Some(i);
                break;
            }
            other => bail!("callback {i}: {other}: {text}"),
        }
    }
    let refused = refused.context("the spool never filled")?;
    ensure!(spooled.len() >= 4, "only {} callbacks fit", spooled.len());
    let (status, body) = c.readyz_json(c.ingest(0).url()).await?;
    ensure!(
        status == 503 && body["status"] == "spool full" && body["spooled"] == spooled.len(),
        "readyz with a full spool: {status} {body}"
    );
    let log = std::fs::read_to_string(c.ingest(0).stdout_log())?
        + &std::fs::read_to_string(c.ingest(0).stderr_log())?;
    ensure!(log.contains("spool full"), "the log does not say why");

    c.redis.restart().await?;
    c.wait_ready(c.ingest(0).url(), STEP).await?;
    for &i in &spooled {
        let p = &pushes[i];
        let id = p.checkout_request_id.as_str();
        let s = wait::until(&format!("payment {i} applied"), STEP, || async {
            let s = c.payment_state(0, id, &p.token).await?;
            Ok((s.status != stk_relay_shared::payment::PaymentStatus::Pending).then_some(s))
        })
        .await?;
        expect::success(&s, id, 10 + i as u32, &daraja::receipt(i as u32))?;
    }
    let p = &pushes[refused];
    let id = p.checkout_request_id.as_str();
    let s = c.payment_state(0, id, &p.token).await?;
    expect::pending(&s, id, 10 + refused as u32)?;
    c.deliver_callback(0, &paths[id], &success_body(&c, p, refused as u32)?)
        .await?;
    let s = c.payment_state(0, id, &p.token).await?;
    expect::success(
        &s,
        id,
        10 + refused as u32,
        &daraja::receipt(refused as u32),
    )?;
    Ok(())
}
