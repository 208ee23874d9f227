//! The cluster behind a real load balancer (issue #8 §3): Debian's nginx running the
//! shipped `deploy/nginx/stk-relay.conf`, in front of two gateways and two ingest nodes.
//!
//! nginx starts first, on free ports, with upstreams on ports picked for the nodes; the
//! nodes then start on those ports, and the gateways' CallBackURLs point at nginx's
//! callback server, so the simulator's callbacks go through nginx as Daraja's would.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use futures_util::{StreamExt as _, TryStreamExt as _};
use rand::Rng as _;
use serde_json::Value;
use stk_relay_e2e::cluster::kv;
use stk_relay_e2e::nginx::{Nginx, Upstreams};
use stk_relay_e2e::redis_server::free_port;
use stk_relay_e2e::sse::{SseClient, SseEvent};
use stk_relay_e2e::ws::{WsClient, WsEvent};
use stk_relay_e2e::{daraja, expect, sim, wait, Cluster, ClusterOptions, STEP};
use stk_relay_shared::api::{ErrorCode, ErrorResponse, MessageType, PushRequest};
use stk_relay_shared::payment::{PaymentState, PaymentStatus};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// nginx, then a cluster on the ports its upstreams name; returns when both of nginx's
/// servers answer `/readyz` with 200 through their upstreams.
async fn cluster_behind_nginx(
    name: &str,
    tweak: impl FnOnce(&mut ClusterOptions),
) -> Result<(Cluster, Nginx)> {
    let mut ports = HashSet::new();
    while ports.len() < 4 {
        ports.insert(free_port().await?);
    }
    let ports: Vec<u16> = ports.into_iter().collect();
    let (gateway_ports, ingest_ports) = (ports[..2].to_vec(), ports[2..].to_vec());
    let addr = |p: &u16| format!("127.0.0.1:{p}");
    let up = Upstreams {
        gateways: gateway_ports.iter().map(addr).collect(),
        ingests: ingest_ports.iter().map(addr).collect(),
    };
    let nginx = Nginx::start(name, &up).await?;
    let mut opts = ClusterOptions {
        gateway_ports,
        ingest_ports,
        callback_base: Some(nginx.ingest_url()),
        ..ClusterOptions::default()
    };
    tweak(&mut opts);
    let c = Cluster::start_with(name, opts).await?;
    c.wait_ready(&nginx.gateway_url(), STEP)
        .await
        .with_context(|| format!("gateways through nginx\n{}", nginx.error_tail()))?;
    c.wait_ready(&nginx.ingest_url(), STEP)
        .await
        .with_context(|| format!("ingests through nginx\n{}", nginx.error_tail()))?;
    Ok((c, nginx))
}

fn browser_url(base: &str, id: &str, suffix: &str, token: &str) -> Result<String> {
    let mut url = reqwest::Url::parse(&format!("{base}/v1/payments/{id}{suffix}"))?;
    url.query_pairs_mut().append_pair("token", token);
    Ok(url.to_string())
}

/// Push, WebSocket, SSE and GET all through nginx's gateway server; the simulator's
/// callback through nginx's callback server. The SSE stream shows its snapshot and a
/// heartbeat while the payment is pending (nothing is buffered); the WebSocket closes
/// with 1000 after completion through the proxy; an oversized push gets the gateway's
/// own 413 error shape from nginx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_through_nginx() -> Result<()> {
    let (c, nginx) = cluster_behind_nginx("nginx_delivery", |_| {}).await?;
    let gw = nginx.gateway_url();

    let p = c.push_at(&gw, &sim::phone(1, sim::MANUAL), 120).await?;
    let id = p.checkout_request_id.as_str();
    let cb_url = c.callback_url_for(id).await?;
    ensure!(
        cb_url.starts_with(&format!("{}/v1/callbacks/stk/", nginx.ingest_url())),
        "CallBackURL {cb_url} does not point at nginx"
    );

    let mut ws = WsClient::connect(&browser_url(&nginx.gateway_ws_url(), id, "/ws", &p.token)?)
        .await
        .context("WebSocket through nginx")?;
    expect::pending(&ws.expect(MessageType::PaymentUpdate).await?.data, id, 120)?;

    let resp = c
        .http
        .get(browser_url(&gw, id, "/events", &p.token)?)
        .header("Accept", "text/event-stream")
        .timeout(Duration::from_secs(60))
        .send()
        .await?;
    ensure!(resp.status() == 200, "SSE through nginx: {}", resp.status());
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    ensure!(
        ct.starts_with("text/event-stream"),
        "SSE content-type {ct:?}"
    );
    let mut sse = SseClient::new(resp);
    let (_, first) = sse.next_message(STEP).await?;
    ensure!(first.kind == MessageType::PaymentUpdate, "{first:?}");
    expect::pending(&first.data, id, 120)?;
    // A heartbeat comment arrives on its own while nothing else happens: the stream is
    // passed through as written.
    match sse.next_event(STEP).await? {
        SseEvent::Comment => {}
        other => bail!("expected a heartbeat on the pending stream, got {other:?}"),
    }

    let got = c
        .http
        .get(browser_url(&gw, id, "", &p.token)?)
        .timeout(STEP)
        .send()
        .await?;
    ensure!(got.status() == 200, "GET through nginx: {}", got.status());
    expect::pending(&got.json::<PaymentState>().await?, id, 120)?;

    c.sim_ctl.complete(id, 0).await?;
    let done = ws.expect(MessageType::PaymentCompleted).await?;
    let receipt = done
        .data
        .mpesa_receipt_number
        .clone()
        .context("no receipt")?;
    expect::success(&done.data, id, 120, &receipt)?;
    ensure!(
        ws.expect_end(STEP).await? == Some(CloseCode::Normal),
        "the WebSocket did not close with 1000 through nginx"
    );
    let (_, sse_done) = sse.next_message(STEP).await?;
    ensure!(
        sse_done.kind == MessageType::PaymentCompleted,
        "{sse_done:?}"
    );
    expect::success(&sse_done.data, id, 120, &receipt)?;
    ensure!(
        matches!(sse.next_event(STEP).await?, SseEvent::Ended),
        "SSE did not end after completion"
    );
    let state = c
        .http
        .get(browser_url(&gw, id, "", &p.token)?)
        .timeout(STEP)
        .send()
        .await?
        .json::<PaymentState>()
        .await?;
    expect::success(&state, id, 120, &receipt)?;

    // The simulator's callback went through nginx and was acknowledged.
    let sent = c.sim_ctl.callbacks_sent_for(id).await?;
    ensure!(
        sent.len() == 1 && sent[0].status == Some(200) && sent[0].url == cb_url,
        "callbacks sent: {sent:?}"
    );

    // Body limits: nginx refuses what the gateway would, in the gateway's error format.
    let big = PushRequest {
        phone: sim::phone(2, sim::MANUAL),
        amount: 10u32.into(),
        account_reference: "E2E".to_owned(),
        description: Some("x".repeat(20_000)),
        webhook_url: None,
    };
    let resp = c.push_raw_at(&gw, &big, None).await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    ensure!(
        status == 413,
        "oversized push through nginx: {status}: {text}"
    );
    let err: ErrorResponse = serde_json::from_str(&text).with_context(|| text.clone())?;
    ensure!(err.error.code == ErrorCode::PayloadTooLarge, "{err:?}");
    ensure!(
        !c.sim_ctl
            .callback_urls_by_phone()
            .await?
            .contains_key(&sim::phone(2, sim::MANUAL)),
        "the oversized push reached Daraja"
    );
    // Subscribe tokens travel in the query string; the gateway's access log leaves it out.
    // (nginx writes a WebSocket's line once both of its sides are closed.)
    let log_path = nginx.dir().join("stk-relay-gateway.log");
    let ws_line = format!("\"GET /v1/payments/{id}/ws\" 101 ");
    let log = wait::until("the WebSocket in nginx's access log", STEP, || async {
        let log = std::fs::read_to_string(&log_path)?;
        Ok(log.contains(&ws_line).then_some(log))
    })
    .await?;
    ensure!(
        !log.contains(&p.token),
        "a token in nginx's access log:\n{log}"
    );
    drop(nginx);
    Ok(())
}

/// A configuration reload (SIGHUP) does not cut open WebSockets: the old worker keeps
/// them until they end, the new one takes new connections, and both deliver the result.
/// Then nginx stops gracefully.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_open_websockets() -> Result<()> {
    let (c, mut nginx) = cluster_behind_nginx("nginx_reload", |_| {}).await?;
    let p = c
        .push_at(&nginx.gateway_url(), &sim::phone(4, sim::MANUAL), 140)
        .await?;
    let id = p.checkout_request_id.as_str();
    let url = browser_url(&nginx.gateway_ws_url(), id, "/ws", &p.token)?;
    let mut before = WsClient::connect(&url).await?;
    expect::pending(
        &before.expect(MessageType::PaymentUpdate).await?.data,
        id,
        140,
    )?;

    let up = Upstreams {
        gateways: c.gateways.iter().map(|g| host_port(g.url())).collect(),
        ingests: c.ingests.iter().map(|n| host_port(n.url())).collect(),
    };
    nginx.reload(&up).await?;
    let mut after = WsClient::connect(&url).await?;
    expect::pending(
        &after.expect(MessageType::PaymentUpdate).await?.data,
        id,
        140,
    )?;
    // The socket opened before the reload is still served (its heartbeat still arrives).
    before.expect_no_message(1, STEP).await?;

    c.sim_ctl.complete(id, 0).await?;
    for (what, ws) in [("before", &mut before), ("after", &mut after)] {
        let done = ws
            .expect(MessageType::PaymentCompleted)
            .await
            .with_context(|| format!("socket opened {what} the reload"))?;
        ensure!(done.data.status == PaymentStatus::Success, "{done:?}");
        ensure!(
            ws.expect_end(STEP).await? == Some(CloseCode::Normal),
            "socket opened {what} the reload did not close with 1000"
        );
    }
    nginx.stop(STEP).await
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

const BROWSERS: usize = 500;

/// What one browser saw across all its connections.
#[derive(Debug, Default)]
struct BrowserLog {
    connections: usize,
    /// Handshakes that failed (HTTP error or connection failure).
    failed_handshakes: usize,
    closes_1001: usize,
    /// Connections that ended without a close frame, or with another code than 1000/1001.
    other_ends: usize,
    completed: Vec<PaymentState>,
}

#[derive(Default)]
struct Counters {
    /// Browsers holding an open connection that delivered its snapshot.
    live: AtomicUsize,
    /// Connections that ended, other than with 1000.
    ended: AtomicUsize,
}

/// A browser as docs/api.md asks: keep the socket, and on 1001 (or 1005/1006, or a
/// failed handshake) reconnect through the load balancer with a short random delay and
/// backoff; stop on 1000.
async fn browser(url: String, counters: Arc<Counters>, deadline: Instant) -> Result<BrowserLog> {
    let mut log = BrowserLog::default();
    let mut backoff_ms = 20u64;
    loop {
        ensure!(
            Instant::now() < deadline,
            "browser gave up: {log:?} ({url})"
        );
        let mut ws = match WsClient::connect(&url).await {
            Ok(ws) => ws,
            Err(_) => {
                log.failed_handshakes += 1;
                let wait = rand::thread_rng().gen_range(backoff_ms / 2..=backoff_ms);
                tokio::time::sleep(Duration::from_millis(wait)).await;
                backoff_ms = (backoff_ms * 2).min(1000);
                continue;
            }
        };
        log.connections += 1;
        backoff_ms = 20;
        let mut counted = false;
        let code = loop {
            match ws.next_event(Duration::from_secs(30)).await? {
                WsEvent::Message(m) => {
                    if !counted {
                        counted = true;
                        counters.live.fetch_add(1, Ordering::SeqCst);
                    }
                    if m.kind == MessageType::PaymentCompleted {
                        log.completed.push(m.data);
                    }
                }
                WsEvent::Ping => {}
                WsEvent::Closed(frame) => break frame.map(|f| f.code),
                WsEvent::Dropped(_) => break None,
            }
        };
        if counted {
            counters.live.fetch_sub(1, Ordering::SeqCst);
        }
        match code {
            Some(CloseCode::Normal) => return Ok(log),
            Some(CloseCode::Away) => log.closes_1001 += 1,
            _ => log.other_ends += 1,
        }
        counters.ended.fetch_add(1, Ordering::SeqCst);
        // "add a short random delay so a draining node's browsers do not all return at once"
        let wait = rand::thread_rng().gen_range(0..=100);
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

/// The `connections` field of a gateway's `/readyz`.
async fn open_connections(c: &Cluster, gw: usize) -> Result<usize> {
    let (_, body) = c.readyz_json(c.gateway(gw).url()).await?;
    body["connections"]
        .as_u64()
        .map(|n| n as usize)
        .with_context(|| format!("readyz without connections: {body}"))
}

/// 500 browsers wait through nginx on 500 payments the simulator holds, while both
/// gateways are restarted one after the other (SIGTERM, 1001 to their sockets, the
/// browsers reconnect through nginx to the other gateway, the gateway starts again on its
/// port and becomes ready, then the next). Then every payment completes, its callback
/// through nginx: each browser receives its result exactly once, none is lost, none shows
/// two different finals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_behind_nginx() -> Result<()> {
    let started = Instant::now();
    let (mut c, nginx) = cluster_behind_nginx("nginx_rolling", |_| {}).await?;
    let gw = nginx.gateway_url();

    let pushes: Vec<_> = futures_util::stream::iter(0..BROWSERS as u32)
        .map(|i| {
            let c = &c;
            let gw = &gw;
            async move {
                c.push_at(gw, &sim::phone(1000 + i, sim::MANUAL), 100 + i)
                    .await
            }
        })
        .buffered(16)
        .try_collect()
        .await?;
    let pushed_in = started.elapsed();

    let counters = Arc::new(Counters::default());
    let deadline = Instant::now() + Duration::from_secs(50);
    let mut browsers = Vec::with_capacity(BROWSERS);
    for p in &pushes {
        let url = browser_url(
            &nginx.gateway_ws_url(),
            &p.checkout_request_id,
            "/ws",
            &p.token,
        )?;
        browsers.push(tokio::spawn(browser(url, counters.clone(), deadline)));
    }
    let live = |n: usize| {
        let counters = counters.clone();
        async move { Ok((counters.live.load(Ordering::SeqCst) == n).then_some(())) }
    };
    wait::until("every browser to get its snapshot", STEP * 2, || {
        live(BROWSERS)
    })
    .await?;

    let restart_started = Instant::now();
    for i in 0..2 {
        let on_it = open_connections(&c, i).await?;
        let ended_before = counters.ended.load(Ordering::SeqCst);
        let exit = c.gateways[i].terminate(STEP * 2).await?;
        ensure!(
            exit.success(),
            "gateway{i} exited with {exit} after SIGTERM"
        );
        // Every browser it held saw its connection end and is connected again (through
        // nginx, to the other gateway).
        wait::until(
            &format!("the browsers of gateway{i} ({on_it}) to be back"),
            STEP * 2,
            || {
                let counters = counters.clone();
                async move {
                    let ended = counters.ended.load(Ordering::SeqCst) - ended_before;
                    Ok(
                        (ended >= on_it && counters.live.load(Ordering::SeqCst) == BROWSERS)
                            .then_some(()),
                    )
                }
            },
        )
        .await?;
        c.respawn_gateway(i, &[]).await?;
        c.wait_ready(c.gateway(i).url(), STEP).await?;
        eprintln!(
            "gateway{i} restarted: {on_it} browsers moved, at {:?}",
            restart_started.elapsed()
        );
    }
    let restart_took = restart_started.elapsed();
    ensure!(
        open_connections(&c, 1).await? == 0 && open_connections(&c, 0).await? == BROWSERS,
        "after the rolling restart every browser should be on gateway0"
    );

    // Daraja decides every payment; the callbacks go through nginx to the ingest nodes.
    futures_util::stream::iter(&pushes)
        .map(|p| c.sim_ctl.complete(&p.checkout_request_id, 0))
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;

    let mut reconnects = 0;
    let mut closes_1001 = 0;
    let mut other_ends = 0;
    let mut failed_handshakes = 0;
    let mut lost = 0;
    let mut duplicated = 0;
    let mut conflicting = 0;
    for (p, task) in pushes.iter().zip(browsers) {
        let log = task.await??;
        reconnects += log.connections - 1;
        closes_1001 += log.closes_1001;
        other_ends += log.other_ends;
        failed_handshakes += log.failed_handshakes;
        match log.completed.as_slice() {
            [] => lost += 1,
            [one] => {
                ensure!(
                    one.checkout_request_id.as_str() == p.checkout_request_id
                        && one.status == PaymentStatus::Success
                        && one.version == 2
                        && one.mpesa_receipt_number.is_some(),
                    "wrong final: {one:?}"
                );
            }
            [first, rest @ ..] => {
                duplicated += 1;
                let a = serde_json::to_value(first)?;
                if rest
                    .iter()
                    .any(|s| serde_json::to_value(s).ok().as_ref() != Some(&a))
                {
                    conflicting += 1;
                }
            }
        }
    }
    let sent = c.sim_ctl.sent_callbacks().await?;
    let acked = sent.iter().filter(|s| s.status == Some(200)).count();
    eprintln!(
        "nginx rolling restart: {BROWSERS} browsers, pushes through nginx in {pushed_in:?}, \
         rolling restart of 2 gateways in {restart_took:?}, reconnects {reconnects} \
         (1001 closes {closes_1001}, other ends {other_ends}, failed handshakes \
         {failed_handshakes}), callbacks through nginx {acked}/{}, lost {lost}, duplicated \
         {duplicated}, conflicting {conflicting}, whole test {:?}",
        sent.len(),
        started.elapsed()
    );
    ensure!(
        lost == 0 && duplicated == 0 && conflicting == 0,
        "lost {lost}, duplicated {duplicated}, conflicting {conflicting}"
    );
    ensure!(
        acked == BROWSERS && sent.len() == BROWSERS,
        "callbacks: {sent:?}"
    );
    ensure!(
        other_ends == 0 && closes_1001 >= BROWSERS,
        "every move should be a 1001 close: 1001 {closes_1001}, other {other_ends}"
    );
    drop(nginx);
    Ok(())
}

/// A reqwest client whose connections leave from `local` (an address of 127.0.0.0/8).
fn client_from(local: &str) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .local_address(local.parse::<IpAddr>()?)
        .timeout(STEP)
        .build()?)
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
    xff: Option<&str>,
) -> Result<(u16, String)> {
    let mut req = http.post(url).json(body);
    if let Some(x) = xff {
        req = req.header("X-Forwarded-For", x);
    }
    let resp = req.send().await?;
    Ok((resp.status().as_u16(), resp.text().await?))
}

fn forbidden(got: (u16, String), what: &str) -> Result<()> {
    ensure!(got.0 == 403, "{what}: HTTP {}: {}", got.0, got.1);
    let err: ErrorResponse = serde_json::from_str(&got.1).with_context(|| got.1.clone())?;
    ensure!(err.error.code == ErrorCode::Forbidden, "{what}: {err:?}");
    Ok(())
}

/// The ingest nodes trust nginx (127.0.0.1) and allow callbacks only from 127.0.0.2. Through
/// nginx, a sender on 127.0.0.2 is allowed and one on 127.0.0.3 refused with 403, also
/// when it writes the allowed address into its own `X-Forwarded-For`: nginx appends the
/// address it saw, and the right-most untrusted hop is what counts. A sender on 127.0.0.2
/// with a forged header in front of it is still judged by its own address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_sees_the_senders_address_through_nginx() -> Result<()> {
    let (c, nginx) = cluster_behind_nginx("nginx_sources", |o| {
        o.ingest_env = vec![
            kv("INGEST__SERVER__TRUSTED_PROXIES", "127.0.0.1"),
            kv("INGEST__CALLBACKS__ALLOWED_SOURCES", "127.0.0.2"),
        ];
    })
    .await?;
    let p = c.push(0, &sim::phone(3, sim::MANUAL), 130).await?;
    let id = p.checkout_request_id.as_str();
    let path = c.callback_path_for(id).await?;
    let body = daraja::success(
        &p.merchant_request_id,
        id,
        130,
        &daraja::receipt(130),
        &c.phone_of(id)?,
    );
    let via_nginx = format!("{}{path}", nginx.ingest_url());
    let stranger = client_from("127.0.0.3")?;
    let allowed = client_from("127.0.0.2")?;

    forbidden(
        post(&stranger, &via_nginx, &body, None).await?,
        "127.0.0.3 through nginx",
    )?;
    forbidden(
        post(&stranger, &via_nginx, &body, Some("127.0.0.2")).await?,
        "127.0.0.3 through nginx, claiming to be 127.0.0.2",
    )?;
    forbidden(
        post(
            &stranger,
            &via_nginx,
            &body,
            Some("196.201.212.69, 127.0.0.2"),
        )
        .await?,
        "127.0.0.3 through nginx, claiming a chain ending in 127.0.0.2",
    )?;
    // Straight to a node, the peer is not a trusted proxy: its header is not read at all.
    forbidden(
        post(
            &stranger,
            &format!("{}{path}", c.ingest(1).url()),
            &body,
            Some("127.0.0.2"),
        )
        .await?,
        "127.0.0.3 directly, claiming to be 127.0.0.2",
    )?;
    expect::pending(&c.payment_state(0, id, &p.token).await?, id, 130)?;

    // The allowed sender, with a forged hop of its own in front: still itself.
    let (status, text) = post(&allowed, &via_nginx, &body, Some("127.0.0.3")).await?;
    ensure!(
        status == 200 && text.contains("\"ResultCode\":0"),
        "127.0.0.2 through nginx: {status}: {text}"
    );
    expect::success(
        &c.payment_state(0, id, &p.token).await?,
        id,
        130,
        &daraja::receipt(130),
    )?;
    // nginx's callback log (no path: the token stays out of it) shows what it forwarded.
    let log = std::fs::read_to_string(nginx.dir().join("stk-relay-callbacks.log"))?;
    ensure!(
        !log.contains(&path),
        "the callback token reached nginx's log"
    );
    ensure!(
        log.lines().any(|l| l.starts_with("127.0.0.2 ")),
        "callbacks.log:\n{log}"
    );
    drop(nginx);
    Ok(())
}

async fn sim_post(c: &Cluster, path: &str) -> Result<Value> {
    let resp = c
        .http
        .post(format!("{}{path}", c.sim.url()))
        .timeout(STEP)
        .send()
        .await?;
    ensure!(resp.status().is_success(), "sim {path}: {}", resp.status());
    Ok(resp.json().await?)
}

async fn held_pushes(c: &Cluster) -> Result<u64> {
    let v: Value = c
        .http
        .get(format!("{}/sim/held-pushes", c.sim.url()))
        .timeout(STEP)
        .send()
        .await?
        .json()
        .await?;
    v["held"]
        .as_u64()
        .with_context(|| format!("held-pushes: {v}"))
}

/// `POST /v1/stk/push` through nginx, from a task of its own; returns status and body.
fn spawn_push(
    c: &Cluster,
    base: &str,
    phone: &str,
    key: &str,
) -> tokio::task::JoinHandle<Result<(u16, String)>> {
    let req = c
        .http
        .post(format!("{base}/v1/stk/push"))
        .timeout(STEP * 3)
        .bearer_auth(&c.api_key)
        .header("Idempotency-Key", key)
        .json(&PushRequest {
            phone: phone.to_owned(),
            amount: 10u32.into(),
            account_reference: "E2E".to_owned(),
            description: None,
            webhook_url: None,
        });
    tokio::spawn(async move {
        let resp = req.send().await?;
        Ok((resp.status().as_u16(), resp.text().await?))
    })
}

/// A push that reached a gateway is never resent to another one. Two pushes go through
/// nginx (one to each gateway: one worker's round-robin) and are held at the simulator
/// after Daraja accepted them; then gateway0 is SIGKILLed. nginx answers its push with
/// 502 at once instead of passing it to gateway1 (which would prompt the buyer a second
/// time); the other push completes. The simulator saw exactly one push per phone, also
/// after the merchant retries the failed one with its Idempotency-Key (the key is still
/// held by the dead gateway's attempt: 409, no prompt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_is_never_retried_on_another_gateway() -> Result<()> {
    let (mut c, nginx) = cluster_behind_nginx("nginx_push_no_retry", |_| {}).await?;
    let gw = nginx.gateway_url();
    sim_post(&c, "/sim/hold-pushes").await?;
    let phones = [sim::phone(11, sim::MANUAL), sim::phone(12, sim::MANUAL)];
    let keys = ["nginx-no-retry-a", "nginx-no-retry-b"];
    let mut a = spawn_push(&c, &gw, &phones[0], keys[0]);
    wait::until("push A held", STEP, || async {
        Ok((held_pushes(&c).await? == 1).then_some(()))
    })
    .await?;
    let mut b = spawn_push(&c, &gw, &phones[1], keys[1]);
    wait::until("push B held", STEP, || async {
        Ok((held_pushes(&c).await? == 2).then_some(()))
    })
    .await?;

    c.gateways[0].kill().await?;
    // The push that was on gateway0 is answered now, while the other is still held: a
    // retry on gateway1 would be held too, and would not answer before the release.
    let (failed, first) = tokio::select! {
        r = &mut a => (0, r??),
        r = &mut b => (1, r??),
    };
    ensure!(
        first.0 == 502,
        "push on the killed gateway: {} {}",
        first.0,
        first.1
    );
    sim_post(&c, "/sim/release-pushes").await?;
    let second = if failed == 0 { b.await?? } else { a.await?? };
    ensure!(
        second.0 == 200,
        "push on gateway1: {} {}",
        second.0,
        second.1
    );

    let by_phone = c.sim_ctl.callback_urls_by_phone().await?;
    let counts: Vec<usize> = phones
        .iter()
        .map(|p| by_phone.get(p).map_or(0, Vec::len))
        .collect();
    ensure!(counts == [1, 1], "accepted pushes per phone: {counts:?}");

    // The merchant's retry of the failed push, with its key, through nginx (now only
    // gateway1 answers): refused while the dead gateway's attempt holds the key.
    let retry = spawn_push(&c, &gw, &phones[failed], keys[failed]).await??;
    ensure!(
        retry.0 == 409 && retry.1.contains("IDEMPOTENCY_IN_PROGRESS"),
        "retry with the same key: {} {}",
        retry.0,
        retry.1
    );
    let again = c.sim_ctl.callback_urls_by_phone().await?;
    ensure!(
        again.get(&phones[failed]).map_or(0, Vec::len) == 1,
        "the retry prompted again"
    );
    drop(nginx);
    Ok(())
}

/// The gateways trust nginx too: their per-address connection cap counts the browser's
/// address, not nginx's. With one connection per address per node, a browser on
/// 127.0.0.2 gets one event stream on each gateway (round-robin) and 429 for a third,
/// while a browser on 127.0.0.3 still gets its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_connection_caps_count_the_browsers_address_through_nginx() -> Result<()> {
    let (c, nginx) = cluster_behind_nginx("nginx_gateway_caps", |o| {
        o.gateway_env = vec![
            kv("GATEWAY__SERVER__TRUSTED_PROXIES", "127.0.0.1"),
            kv("GATEWAY__WS__MAX_CONNECTIONS_PER_IP", "1"),
        ];
    })
    .await?;
    let p = c.push(0, &sim::phone(5, sim::MANUAL), 150).await?;
    let url = browser_url(
        &nginx.gateway_url(),
        &p.checkout_request_id,
        "/events",
        &p.token,
    )?;
    let open = |http: reqwest::Client| {
        let url = url.clone();
        async move {
            http.get(url)
                .header("Accept", "text/event-stream")
                .send()
                .await
                .context("SSE through nginx")
        }
    };
    let (two, three) = (client_from("127.0.0.2")?, client_from("127.0.0.3")?);
    let mut held = Vec::new();
    for n in 0..2 {
        let resp = open(two.clone()).await?;
        ensure!(
            resp.status() == 200,
            "stream {n} of 127.0.0.2: {}",
            resp.status()
        );
        held.push(resp);
    }
    let refused = open(two.clone()).await?;
    let status = refused.status().as_u16();
    let text = refused.text().await?;
    ensure!(status == 429, "third stream of 127.0.0.2: {status}: {text}");
    let err: ErrorResponse = serde_json::from_str(&text).with_context(|| text.clone())?;
    ensure!(err.error.code == ErrorCode::TooManyConnections, "{err:?}");
    let other = open(three).await?;
    ensure!(
        other.status() == 200,
        "127.0.0.3 was counted with 127.0.0.2: {}",
        other.status()
    );
    drop((held, other));
    drop(nginx);
    Ok(())
}
