//! Every wait has a bound (issue #6 §5): the broker's reconnect under a storm of
//! browsers, a Redis that accepts TCP and never answers, a WebSocket client that never
//! reads, the maximum connection lifetime, and the per-payment and per-address caps.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use stk_relay_e2e::cluster::kv;
use stk_relay_e2e::sse::SseEvent;
use stk_relay_e2e::ws::{WsClient, WsConnectError, WsEvent};
use stk_relay_e2e::{expect, sim, wait, Cluster, ClusterOptions, STEP};
use stk_relay_shared::api::{ErrorCode, ErrorResponse, MessageType, PushResponse};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

// ---- helpers -----------------------------------------------------------------------

/// `"connections"` from a ready gateway's `/readyz` body.
async fn open_connections(c: &Cluster, gw: usize) -> Result<u64> {
    let resp = c
        .http
        .get(format!("{}/readyz", c.gateway(gw).url()))
        .timeout(Duration::from_secs(2))
        .send()
        .await?;
    let body: Value = resp.json().await?;
    body.get("connections")
        .and_then(Value::as_u64)
        .ok_or_else(|| anyhow!("/readyz has no connection count: {body}"))
}

async fn wait_connections(c: &Cluster, gw: usize, want: u64, within: Duration) -> Result<()> {
    wait::until(
        &format!("gateway{gw} open connections == {want}"),
        within,
        || async { Ok((open_connections(c, gw).await? == want).then_some(())) },
    )
    .await
}

/// Pushes `n` manual-mode payments, a few at a time.
async fn push_many(c: &Cluster, n: u32, base: u32) -> Result<Vec<PushResponse>> {
    let pushes = futures_util::stream::iter(0..n)
        .map(|i| async move {
            c.push((i % 2) as usize, &sim::phone(base + i, sim::MANUAL), 10 + i)
                .await
        })
        .buffered(8)
        .collect::<Vec<_>>()
        .await;
    pushes.into_iter().collect()
}

/// Expects an HTTP refusal with `status` and error code `code`.
async fn expect_refusal(resp: reqwest::Response, status: u16, code: ErrorCode) -> Result<()> {
    let got = resp.status().as_u16();
    let text = resp.text().await?;
    ensure!(got == status, "expected {status}, got {got}: {text}");
    let err: ErrorResponse = serde_json::from_str(&text).with_context(|| text.clone())?;
    ensure!(err.error.code == code, "expected {code:?}, got {err:?}");
    Ok(())
}

fn expect_ws_refusal(r: Result<WsClient, WsConnectError>, status: u16, code: &str) -> Result<()> {
    match r {
        Err(WsConnectError::Http { status: s, body }) => {
            ensure!(s == status, "expected HTTP {status}, got {s}: {body}");
            ensure!(body.contains(code), "expected {code} in {body}");
            Ok(())
        }
        Err(e) => bail!("expected HTTP {status}, got {e}"),
        Ok(_) => bail!("expected HTTP {status}, but the socket was opened"),
    }
}

/// `GET …/events` with an `X-Forwarded-For` header.
async fn sse_with_xff(
    c: &Cluster,
    gw: usize,
    p: &PushResponse,
    xff: &str,
) -> Result<reqwest::Response> {
    let mut url = reqwest::Url::parse(&format!(
        "{}/v1/payments/{}/events",
        c.gateway(gw).url(),
        p.checkout_request_id
    ))?;
    url.query_pairs_mut().append_pair("token", &p.token);
    let fut = c.http.get(url).header("X-Forwarded-For", xff).send();
    Ok(tokio::time::timeout(STEP, fut).await??)
}

/// A WebSocket upgrade with an `X-Forwarded-For` header; the HTTP status it got.
async fn ws_status_with_xff(
    c: &Cluster,
    gw: usize,
    p: &PushResponse,
    xff: &str,
) -> Result<(u16, Option<WsStream>)> {
    let mut req = c
        .ws_url(gw, &p.checkout_request_id, &p.token)
        .into_client_request()?;
    req.headers_mut().insert("X-Forwarded-For", xff.parse()?);
    match tokio::time::timeout(STEP, tokio_tungstenite::connect_async(req)).await? {
        Ok((ws, resp)) => Ok((resp.status().as_u16(), Some(ws))),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            Ok((resp.status().as_u16(), None))
        }
        Err(e) => Err(e.into()),
    }
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

// ---- reconnect storm ---------------------------------------------------------------

/// What one browser saw.
#[derive(Debug, Default)]
struct BrowserLog {
    attempts: u32,
    completed: u32,
    completed_state: Option<stk_relay_shared::payment::PaymentState>,
}

/// A browser: connects to its gateway every 200 ms until it gets a socket, reads until
/// PAYMENT_COMPLETED (reconnecting after a drop), then reads to the end of the socket,
/// counting every PAYMENT_COMPLETED it is sent.
async fn browser(url: String, give_up: Instant) -> Result<BrowserLog> {
    let mut log = BrowserLog::default();
    while Instant::now() < give_up {
        log.attempts += 1;
        let mut ws = match WsClient::connect(&url).await {
            Ok(ws) => ws,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        loop {
            let left = give_up.saturating_duration_since(Instant::now());
            match ws.next_event(left).await? {
                WsEvent::Message(m) if m.kind == MessageType::PaymentCompleted => {
                    log.completed += 1;
                    log.completed_state = Some(m.data);
                }
                WsEvent::Message(_) | WsEvent::Ping => {}
                WsEvent::Closed(_) | WsEvent::Dropped(_) => break,
            }
        }
        if log.completed > 0 {
            return Ok(log);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("no result after {} attempts: {log:?}", log.attempts)
}

/// 200 browsers retry every 200 ms through a 3 s Redis restart, across two gateways.
/// Each gateway is ready again within 5 s of Redis answering, and every browser gets
/// its result exactly once. (Before #6, every subscribe request restarted the broker's
/// backoff sleep, and the gateways stayed unready as long as the browsers kept coming.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_storm_gateways_recover_within_5s() -> Result<()> {
    const BROWSERS: u32 = 200;
    let mut c = Cluster::start_with(
        "bounds_storm",
        ClusterOptions {
            persistent_redis: true,
            ingests: 1,
            ..ClusterOptions::default()
        },
    )
    .await?;
    let payments = push_many(&c, BROWSERS, 6000).await?;

    c.redis.kill().await?;
    for gw in 0..2 {
        c.wait_unready(c.gateway(gw).url(), STEP).await?;
    }
    let give_up = Instant::now() + Duration::from_secs(60);
    let mut browsers = JoinSet::new();
    for (i, p) in payments.iter().enumerate() {
        let url = c.ws_url(i % 2, &p.checkout_request_id, &p.token);
        let id = p.checkout_request_id.clone();
        browsers.spawn(async move { (id, browser(url, give_up).await) });
    }
    // The outage itself: Redis stays down for 3 s while the browsers keep retrying.
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.redis.restart().await?;
    let back = Instant::now();
    let mut recovered = Vec::new();
    for gw in 0..2 {
        c.wait_ready(
            c.gateway(gw).url(),
            Duration::from_secs(5).saturating_sub(back.elapsed()),
        )
        .await
        .with_context(|| format!("gateway{gw} not ready within 5 s of Redis answering"))?;
        recovered.push(back.elapsed());
    }
    eprintln!("storm: gateways ready {recovered:?} after Redis answered");

    // Complete every payment: the simulator sends each callback through the ingest.
    let sim_ctl = &c.sim_ctl;
    let completions = futures_util::stream::iter(payments.iter())
        .map(|p| async move { sim_ctl.complete(&p.checkout_request_id, 0).await })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    for r in completions {
        r?;
    }
    let mut seen = HashMap::new();
    let mut attempts = 0;
    while let Some(joined) = browsers.join_next().await {
        let (id, log) = joined?;
        let log = log.with_context(|| format!("browser of {id}"))?;
        ensure!(
            log.completed == 1,
            "{id}: {} PAYMENT_COMPLETED",
            log.completed
        );
        let state = log
            .completed_state
            .ok_or_else(|| anyhow!("{id}: no state"))?;
        ensure!(
            state.checkout_request_id.as_str() == id,
            "{id} got {state:?}"
        );
        ensure!(
            state.status == stk_relay_shared::payment::PaymentStatus::Success,
            "{id}: {state:?}"
        );
        attempts += log.attempts;
        seen.insert(id, ());
    }
    ensure!(
        seen.len() == payments.len(),
        "{} browsers finished",
        seen.len()
    );
    eprintln!(
        "storm: {} browsers, {attempts} connection attempts, each result delivered once",
        seen.len()
    );
    Ok(())
}

// ---- a Redis that never answers ----------------------------------------------------

/// A TCP listener that accepts and reads, and never writes: a stalled Redis.
struct StalledRedis {
    task: tokio::task::JoinHandle<()>,
}

impl StalledRedis {
    async fn bind(port: u16) -> Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .with_context(|| format!("binding the stalled Redis on {port}"))?;
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut s, _)) = listener.accept().await {
                conns.spawn(async move {
                    let mut buf = [0u8; 4096];
                    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
        });
        Ok(Self { task })
    }

    /// Closes the listener and every accepted connection.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A Redis that accepts TCP and never answers: requests that need Redis fail within the
/// command timeout (checkout included), however many arrive at once; readiness fails
/// within its bound; and the gateway recovers when a real Redis is back on that port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_redis_fails_within_bounds_and_recovers() -> Result<()> {
    let mut c = Cluster::start_with(
        "bounds_stalled_redis",
        ClusterOptions {
            gateways: 1,
            ingests: 1,
            gateway_env: vec![
                kv("GATEWAY__REDIS__CONNECT_TIMEOUT_MS", "500"),
                kv("GATEWAY__REDIS__COMMAND_TIMEOUT_MS", "500"),
            ],
            ..ClusterOptions::default()
        },
    )
    .await?;
    let p = c.push(0, &sim::phone(7001, sim::MANUAL), 71).await?;
    let port = c.redis.port();
    let gw_url = c.gateway(0).url().to_owned();

    // Switched: the real Redis dies and a stalled one takes its port.
    c.redis.kill().await?;
    let stub = StalledRedis::bind(port).await?;
    let t = Instant::now();
    c.wait_unready(&gw_url, Duration::from_secs(5)).await?;
    eprintln!("stalled: not ready after {:?}", t.elapsed());
    stub.stop().await;
    c.redis.restart().await?;
    let t = Instant::now();
    c.wait_ready(&gw_url, Duration::from_secs(5)).await?;
    eprintln!(
        "stalled: ready again {:?} after Redis answered",
        t.elapsed()
    );

    // Started against it: a fresh gateway whose pooled connections were never opened.
    c.gateways[0].kill().await?;
    c.redis.kill().await?;
    let stub = StalledRedis::bind(port).await?;
    c.respawn_gateway(0, &[]).await?;
    let gw_url = c.gateway(0).url().to_owned();
    let started = Instant::now();
    // Many requests at once, each needing a pooled connection: none may queue behind
    // another's stuck connect. Command timeout 500 ms: checkout ≤ 500 ms, command ≤ 500 ms.
    let bound = Duration::from_millis(1500);
    let reads = futures_util::future::join_all((0..40).map(|_| {
        let http = c.http.clone();
        let url = format!("{gw_url}/v1/payments/{}", p.checkout_request_id);
        let key = c.api_key.clone();
        async move {
            let t = Instant::now();
            let r = http
                .get(url)
                .bearer_auth(key)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            (t.elapsed(), r)
        }
    }))
    .await;
    let mut slowest = Duration::ZERO;
    for (took, r) in reads {
        let resp = r.context("GET payment against a stalled Redis")?;
        expect_refusal(resp, 503, ErrorCode::ServiceUnavailable).await?;
        slowest = slowest.max(took);
    }
    eprintln!("stalled: 40 concurrent reads refused, slowest in {slowest:?}");
    ensure!(
        slowest <= bound,
        "a read took {slowest:?} (bound {bound:?})"
    );
    let t = Instant::now();
    ensure!(
        c.readyz(&gw_url).await? == 503,
        "ready against a stalled Redis"
    );
    ensure!(t.elapsed() <= bound, "/readyz took {:?}", t.elapsed());
    ensure!(
        started.elapsed() < Duration::from_secs(5),
        "started {:?} ago",
        started.elapsed()
    );

    stub.stop().await;
    c.redis.restart().await?;
    let t = Instant::now();
    c.wait_ready(&gw_url, Duration::from_secs(5)).await?;
    eprintln!(
        "stalled: fresh gateway ready {:?} after Redis answered",
        t.elapsed()
    );
    Ok(())
}

// ---- a client that never reads -----------------------------------------------------

/// A WebSocket client on a socket with a tiny receive buffer, which completes the
/// handshake and then never reads again.
async fn non_reading_client(c: &Cluster, gw: usize, p: &PushResponse) -> Result<TcpStream> {
    let url = reqwest::Url::parse(c.gateway(gw).url())?;
    let port = url.port().ok_or_else(|| anyhow!("no port in {url}"))?;
    let sock = TcpSocket::new_v4()?;
    sock.set_recv_buffer_size(1024)?;
    let mut s = tokio::time::timeout(STEP, sock.connect(([127, 0, 0, 1], port).into())).await??;
    let mut path = reqwest::Url::parse(&format!(
        "http://x/v1/payments/{}/ws",
        p.checkout_request_id
    ))?;
    path.query_pairs_mut().append_pair("token", &p.token);
    let req = format!(
        "GET {}?{} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        path.path(),
        path.query().unwrap_or("")
    );
    s.write_all(req.as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        ensure!(head.len() < 4096, "response head too long");
        let n = tokio::time::timeout(STEP, s.read(&mut byte)).await??;
        ensure!(n == 1, "connection closed during the handshake");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    ensure!(head.starts_with("HTTP/1.1 101"), "handshake: {head}");
    Ok(s)
}

/// Masked client Ping frames with 125-byte payloads: each makes the server send a Pong
/// of the same size.
fn ping_flood(frames: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(frames * 131);
    for _ in 0..frames {
        out.extend_from_slice(&[0x89, 0x80 | 125, 0, 0, 0, 0]);
        out.extend_from_slice(&[b'p'; 125]);
    }
    out
}

/// Writes the flood until the server cuts the connection; `Ok(true)` if it was cut
/// within `within`.
async fn flood_until_cut(s: &mut TcpStream, within: Duration) -> Result<bool> {
    let chunk = ping_flood(64);
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.write_all(&chunk)).await {
            Err(_) => return Ok(false),
            Ok(Err(_)) => return Ok(true),
            Ok(Ok(())) => {}
        }
    }
}

/// A client that never reads, while the server has frames to send (pongs to its
/// pings), is disconnected within the send timeout and releases its slot; and a SIGTERM
/// drain with such a client connected completes well within the shutdown bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_reading_client_is_cut_and_does_not_delay_drain() -> Result<()> {
    let mut c = Cluster::start_with(
        "bounds_non_reading",
        ClusterOptions {
            gateways: 1,
            ingests: 1,
            gateway_env: vec![
                kv("GATEWAY__WS__SEND_TIMEOUT_MS", "500"),
                kv("GATEWAY__SERVER__SHUTDOWN_TIMEOUT_MS", "10000"),
            ],
            ..ClusterOptions::default()
        },
    )
    .await?;
    let p = c.push(0, &sim::phone(7101, sim::MANUAL), 81).await?;

    let mut s = non_reading_client(&c, 0, &p).await?;
    wait_connections(&c, 0, 1, STEP).await?;
    let t = Instant::now();
    let cut = flood_until_cut(&mut s, Duration::from_secs(10)).await?;
    ensure!(cut, "the server never cut a client that does not read");
    eprintln!("non-reading: cut {:?} after the flood began", t.elapsed());
    wait_connections(&c, 0, 0, Duration::from_secs(2)).await?;

    // Again, and SIGTERM while it floods: the drain must not wait for it.
    let mut s = non_reading_client(&c, 0, &p).await?;
    wait_connections(&c, 0, 1, STEP).await?;
    let flood = tokio::spawn(async move { flood_until_cut(&mut s, Duration::from_secs(20)).await });
    let t = Instant::now();
    let exit = c.gateways[0].terminate(Duration::from_secs(4)).await?;
    eprintln!("non-reading: SIGTERM to exit in {:?}", t.elapsed());
    ensure!(exit.success(), "gateway exited with {exit}");
    ensure!(flood.await??, "the client was never disconnected");
    Ok(())
}

// ---- maximum lifetime --------------------------------------------------------------

/// With `ws.max_lifetime_secs=2`, a WebSocket closes with 1001 and an SSE stream ends,
/// each after about 2 s, and their slots are released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_lifetime_closes_ws_with_1001_and_ends_sse() -> Result<()> {
    let c = Cluster::start_with(
        "bounds_lifetime",
        ClusterOptions {
            gateways: 1,
            ingests: 1,
            gateway_env: vec![kv("GATEWAY__WS__MAX_LIFETIME_SECS", "2")],
            ..ClusterOptions::default()
        },
    )
    .await?;
    let p = c.push(0, &sim::phone(7201, sim::MANUAL), 91).await?;
    let t = Instant::now();
    let mut ws = c.ws_connect(0, &p.checkout_request_id, &p.token).await?;
    let mut sse = c.sse_connect(0, &p.checkout_request_id, &p.token).await?;
    expect::pending(
        &ws.expect(MessageType::PaymentUpdate).await?.data,
        &p.checkout_request_id,
        91,
    )?;
    sse.expect(MessageType::PaymentUpdate).await?;
    wait_connections(&c, 0, 2, STEP).await?;

    let code = ws.expect_end(Duration::from_secs(6)).await?;
    let ws_life = t.elapsed();
    ensure!(
        code == Some(CloseCode::Away),
        "WebSocket closed with {code:?}"
    );
    loop {
        match sse.next_event(Duration::from_secs(6)).await? {
            SseEvent::Comment => continue,
            SseEvent::Ended => break,
            SseEvent::Message { message, .. } => bail!("unexpected SSE message {message:?}"),
        }
    }
    let sse_life = t.elapsed();
    eprintln!("lifetime: WebSocket closed after {ws_life:?}, SSE ended after {sse_life:?}");
    ensure!(
        ws_life >= Duration::from_millis(1500),
        "closed early: {ws_life:?}"
    );
    wait_connections(&c, 0, 0, STEP).await?;
    Ok(())
}

// ---- caps --------------------------------------------------------------------------

/// Per payment (default 8): the 9th WebSocket or SSE connection for one payment gets
/// 429 TOO_MANY_CONNECTIONS before any upgrade; an SSE client that goes away is noticed
/// by its failing heartbeat and its slot is released. Per address (enabled on
/// gateway 1, behind a trusted proxy): the client address comes from X-Forwarded-For.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_per_payment_and_per_ip() -> Result<()> {
    let mut c = Cluster::start_with(
        "bounds_caps",
        ClusterOptions {
            ingests: 1,
            ..ClusterOptions::default()
        },
    )
    .await?;
    let p = c.push(0, &sim::phone(7301, sim::MANUAL), 95).await?;
    let id = p.checkout_request_id.as_str();

    let mut sockets = Vec::new();
    for _ in 0..6 {
        let mut ws = c.ws_connect(0, id, &p.token).await?;
        ws.expect(MessageType::PaymentUpdate).await?;
        sockets.push(ws);
    }
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut sse = c.sse_connect(0, id, &p.token).await?;
        sse.expect(MessageType::PaymentUpdate).await?;
        streams.push(sse);
    }
    wait_connections(&c, 0, 8, STEP).await?;
    expect_ws_refusal(
        c.ws_connect(0, id, &p.token).await,
        429,
        "TOO_MANY_CONNECTIONS",
    )?;
    expect_refusal(
        c.sse_request(0, id, &p.token).await?,
        429,
        ErrorCode::TooManyConnections,
    )
    .await?;
    // Another gateway counts its own connections.
    let mut elsewhere = c.ws_connect(1, id, &p.token).await?;
    elsewhere.expect(MessageType::PaymentUpdate).await?;

    // An SSE client that goes away: its heartbeat write fails and the slot is released.
    drop(streams.pop());
    wait_connections(&c, 0, 7, STEP).await?;
    let mut ws = c.ws_connect(0, id, &p.token).await?;
    ws.expect(MessageType::PaymentUpdate).await?;
    sockets.push(ws);
    expect_ws_refusal(
        c.ws_connect(0, id, &p.token).await,
        429,
        "TOO_MANY_CONNECTIONS",
    )?;
    // A closed WebSocket releases its slot too.
    if let Some(ws) = sockets.pop() {
        ws.close().await;
    }
    wait_connections(&c, 0, 7, STEP).await?;

    // Per address, on gateway 1 only, behind a trusted proxy (the test itself).
    c.gateways[1].kill().await?;
    c.respawn_gateway(
        1,
        &[
            kv("GATEWAY__WS__MAX_CONNECTIONS_PER_IP", "3"),
            kv("GATEWAY__SERVER__TRUSTED_PROXIES", "127.0.0.1"),
        ],
    )
    .await?;
    c.wait_ready(c.gateway(1).url(), STEP).await?;
    let others = push_many(&c, 4, 7400).await?;
    let buyer = "203.0.113.7";
    let mut held = Vec::new();
    for q in &others[..2] {
        let (status, ws) = ws_status_with_xff(&c, 1, q, buyer).await?;
        ensure!(status == 101, "WebSocket {status}");
        held.push(ws);
    }
    let resp = sse_with_xff(&c, 1, &others[2], buyer).await?;
    ensure!(resp.status() == 200, "SSE {}", resp.status());
    let mut held_sse = vec![resp];
    wait_connections(&c, 1, 3, STEP).await?;
    // The fourth from the same buyer, for another payment: refused.
    let (status, _) = ws_status_with_xff(&c, 1, &others[3], buyer).await?;
    ensure!(status == 429, "4th WebSocket from one address: {status}");
    expect_refusal(
        sse_with_xff(&c, 1, &others[3], buyer).await?,
        429,
        ErrorCode::TooManyConnections,
    )
    .await?;
    // A left-hand hop written by the client does not help: the proxy's right-most
    // entry is the address.
    let (status, _) =
        ws_status_with_xff(&c, 1, &others[3], &format!("198.51.100.1, {buyer}")).await?;
    ensure!(status == 429, "spoofed left-hand hop: {status}");
    // Another buyer behind the same proxy is admitted.
    let (status, ws) = ws_status_with_xff(&c, 1, &others[3], "203.0.113.8").await?;
    ensure!(status == 101, "another address: {status}");
    held.push(ws);
    // A buyer's connection ends: its slot is free again.
    drop(held_sse.pop());
    wait_connections(&c, 1, 3, STEP).await?;
    let (status, ws) = ws_status_with_xff(&c, 1, &others[3], buyer).await?;
    ensure!(status == 101, "after a release: {status}");
    held.push(ws);
    for ws in held.into_iter().flatten() {
        let mut ws = ws;
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.flush()).await;
    }
    Ok(())
}
