//! The standalone binary `stk-relay` as a separate process: in memory with its
//! in-process simulator (push, WebSocket, the demo's endpoints, what it prints at start),
//! and given a Redis URL and Daraja credentials, as a normal node of a cluster whose
//! results reach the cluster's own gateways.

use anyhow::{ensure, Context as _, Result};
use serde_json::{json, Value};
use stk_relay_e2e::cluster::kv;
use stk_relay_e2e::redis_server::free_port;
use stk_relay_e2e::standalone::StandaloneNode;
use stk_relay_e2e::ws::WsClient;
use stk_relay_e2e::{sim, Cluster, STEP};
use stk_relay_shared::api::{MessageType, PushResponse, ServerMessageOwned};

fn http() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder().timeout(STEP).build()?)
}

fn ws_url(base: &str, id: &str, token: &str) -> String {
    format!(
        "{}/v1/payments/{id}/ws?token={token}",
        base.replacen("http://", "ws://", 1)
    )
}

async fn push(base: &str, api_key: &str, phone: &str) -> Result<PushResponse> {
    let resp = http()?
        .post(format!("{base}/v1/stk/push"))
        .bearer_auth(api_key)
        .json(&json!({"phone": phone, "amount": 10, "account_reference": "E2E"}))
        .send()
        .await?;
    let status = resp.status();
    let text = resp.text().await?;
    ensure!(status == 200, "push: {status}: {text}");
    serde_json::from_str(&text).with_context(|| format!("not a PushResponse: {text}"))
}

/// The socket's final message: the pending snapshot (unless the result beat the
/// socket), then `PAYMENT_COMPLETED`.
async fn final_of(ws: &mut WsClient) -> Result<ServerMessageOwned> {
    let first = ws.next_message(STEP).await?;
    if first.kind == MessageType::PaymentCompleted {
        return Ok(first);
    }
    ensure!(first.kind == MessageType::PaymentUpdate, "{first:?}");
    ws.expect(MessageType::PaymentCompleted).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_push_completes_over_websocket_and_demo_endpoints_answer() -> Result<()> {
    let api_key = "e2e-standalone-key-0123456789";
    let node = StandaloneNode::start(
        "standalone-memory",
        &[
            kv("STK_RELAY__API__KEYS", api_key),
            kv("STK_RELAY__SIMULATOR__CALLBACK_DELAY_MS", "300"),
        ],
    )
    .await?;
    let base = node.url().to_owned();

    // What it printed: the demo's URL, and only the secrets it generated (the API key
    // was configured).
    // (The log is copied line by line as the process prints: wait for the banner's end.)
    let log = node.node.stdout_log().to_owned();
    stk_relay_e2e::wait::until("the banner in stdout", STEP, || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            Ok(text.contains("tokens.callback_secret").then_some(()))
        }
    })
    .await?;
    let banner = std::fs::read_to_string(node.node.stdout_log())?;
    ensure!(
        banner.contains(&format!("{base}/demo/")),
        "no demo URL in:\n{banner}"
    );
    ensure!(banner.contains("tokens.subscribe_secret"), "{banner}");
    ensure!(
        !banner.contains(api_key) && !banner.contains("api.keys"),
        "printed the configured key:\n{banner}"
    );

    let paid = push(&base, api_key, "254708374149").await?;
    let mut ws = WsClient::connect(&ws_url(&base, &paid.checkout_request_id, &paid.token))
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let done = final_of(&mut ws).await?;
    ensure!(done.data.status.as_str() == "SUCCESS", "{:?}", done.data);
    ensure!(done.data.mpesa_receipt_number.is_some(), "{:?}", done.data);

    // Its history, kept by the memory store: written with the final state it published.
    let history_url = format!("{base}/v1/payments/{}/history", paid.checkout_request_id);
    let r = http()?
        .get(&history_url)
        .bearer_auth(api_key)
        .send()
        .await?;
    ensure!(r.status() == 200, "history: {}", r.status());
    let h: stk_relay_shared::history::PaymentHistory = r.json().await?;
    let kinds: Vec<_> = h.entries.iter().map(|e| e.event.kind()).collect();
    ensure!(kinds == ["pushed", "callback", "final"], "{h:?}");
    let raw = serde_json::to_string(&h)?;
    ensure!(
        raw.contains("2547******49") && !raw.contains("254708374149"),
        "phone not masked: {raw}"
    );
    let r = http()?
        .get(&history_url)
        .bearer_auth(&paid.token)
        .send()
        .await?;
    ensure!(
        r.status() == 401,
        "history with a subscribe token: {}",
        r.status()
    );

    // The demo's endpoints: config, a push without an API key, a named field on error.
    let client = http()?;
    let config: Value = client
        .get(format!("{base}/demo/config.json"))
        .send()
        .await?
        .json()
        .await?;
    ensure!(
        config["simulator"] == true && config["outcomes"].as_array().is_some_and(|o| o.len() == 6),
        "{config}"
    );
    let r = client
        .post(format!("{base}/demo/pay"))
        .json(&json!({"phone": "0712345678", "amount": 5, "outcome": "cancelled"}))
        .send()
        .await?;
    ensure!(r.status() == 200, "demo pay: {}", r.status());
    let cancelled: PushResponse = r.json().await?;
    let mut ws = WsClient::connect(&ws_url(
        &base,
        &cancelled.checkout_request_id,
        &cancelled.token,
    ))
    .await
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let done = final_of(&mut ws).await?;
    ensure!(done.data.status.as_str() == "FAILED", "{:?}", done.data);
    let r = client
        .post(format!("{base}/demo/pay"))
        .json(&json!({"phone": "0712345678", "amount": 5, "outcome": "refund"}))
        .send()
        .await?;
    ensure!(r.status() == 422, "unknown outcome: {}", r.status());
    let body: Value = r.json().await?;
    ensure!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("outcome")),
        "{body}"
    );
    let r = client
        .post(format!("{base}/demo/pay"))
        .body("{not json")
        .send()
        .await?;
    ensure!(r.status() == 400, "bad JSON: {}", r.status());
    let r = client.get(format!("{base}/v1/client.js")).send().await?;
    ensure!(r.status() == 200, "client.js: {}", r.status());
    ensure!(
        r.text().await?.contains("export function watchPayment"),
        "client.js has no watchPayment"
    );
    Ok(())
}

/// `stk-relay` with `node.store = "redis"` and the real-Daraja path (pointed at the
/// cluster's simulator as Daraja) is one more node of the cluster: a push through it
/// completes on a cluster gateway's WebSocket, and it serves no demo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_it_is_a_normal_cluster_node() -> Result<()> {
    let cluster = Cluster::start("standalone-cluster-node").await?;
    let port = free_port().await?;
    let own = format!("http://127.0.0.1:{port}");
    let node = StandaloneNode::start(
        "standalone-cluster-node-relay",
        &[
            kv("STK_RELAY__SERVER__PORT", &port.to_string()),
            kv("STK_RELAY__NODE__STORE", "redis"),
            kv("STK_RELAY__NODE__SIMULATOR", "false"),
            kv("STK_RELAY__NODE__DEMO", "false"),
            kv("STK_RELAY__REDIS__URL", &cluster.redis.url()),
            kv("STK_RELAY__REDIS__KEY_PREFIX", &cluster.key_prefix),
            kv("STK_RELAY__API__KEYS", &cluster.api_key),
            kv(
                "STK_RELAY__TOKENS__SUBSCRIBE_SECRET",
                &cluster.subscribe_secret,
            ),
            kv(
                "STK_RELAY__TOKENS__CALLBACK_SECRET",
                &cluster.callback_secret,
            ),
            kv("STK_RELAY__CALLBACKS__PUBLIC_BASE_URL", &own),
            kv("STK_RELAY__DARAJA__BASE_URL", cluster.sim.url()),
            kv("STK_RELAY__DARAJA__CONSUMER_KEY", sim::CONSUMER_KEY),
            kv("STK_RELAY__DARAJA__CONSUMER_SECRET", sim::CONSUMER_SECRET),
            kv("STK_RELAY__DARAJA__PASSKEY", sim::PASSKEY),
            kv("STK_RELAY__DARAJA__SHORTCODE", sim::SHORTCODE),
        ],
    )
    .await?;
    ensure!(
        node.url() == own,
        "listening on {} instead of {own}",
        node.url()
    );
    cluster.wait_ready(node.url(), STEP).await?;

    let paid = push(node.url(), &cluster.api_key, "254708374150").await?;
    let mut ws = cluster
        .ws_connect(0, &paid.checkout_request_id, &paid.token)
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let done = final_of(&mut ws).await?;
    ensure!(done.data.status.as_str() == "SUCCESS", "{:?}", done.data);
    // The callback went to this node's own ingest route.
    let sent = cluster
        .sim_ctl
        .callbacks_sent_for(&paid.checkout_request_id)
        .await?;
    ensure!(
        sent.iter()
            .any(|c| c.url.starts_with(&own) && c.status == Some(200)),
        "the callback did not go to {own}: {sent:?}"
    );

    let client = http()?;
    for path in ["/demo/", "/demo/config.json"] {
        let r = client.get(format!("{own}{path}")).send().await?;
        ensure!(r.status() == 404, "{path}: {}", r.status());
    }
    let r = client
        .post(format!("{own}/demo/pay"))
        .json(&json!({"phone": "0712345678", "amount": 5}))
        .send()
        .await?;
    ensure!(
        r.status() == 404,
        "/demo/pay without the demo: {}",
        r.status()
    );
    Ok(())
}

/// The in-memory backend under load: 200 payments pushed at once, each watched by its
/// own WebSocket; every socket gets its result once and is closed with 1000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_two_hundred_concurrent_payments_each_delivered_once() -> Result<()> {
    use futures_util::{stream, StreamExt as _, TryStreamExt as _};

    let api_key = "e2e-standalone-key-0123456789";
    let node = StandaloneNode::start(
        "standalone-memory-load",
        &[
            kv("STK_RELAY__API__KEYS", api_key),
            kv("STK_RELAY__SIMULATOR__CALLBACK_DELAY_MS", "1000"),
        ],
    )
    .await?;
    let base = node.url().to_owned();
    let n = 200;
    let paid: Vec<PushResponse> = stream::iter(0..n)
        .map(|i| {
            let base = base.clone();
            async move { push(&base, api_key, &format!("2547{:05}0{:02}", i, i % 100)).await }
        })
        .buffer_unordered(32)
        .try_collect()
        .await?;
    let results: Vec<(String, String)> = stream::iter(paid)
        .map(|p| {
            let base = base.clone();
            async move {
                let mut ws = WsClient::connect(&ws_url(&base, &p.checkout_request_id, &p.token))
                    .await
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                let done = final_of(&mut ws).await?;
                let close = ws.expect_end(STEP).await?;
                ensure!(
                    close.map(u16::from) == Some(1000),
                    "closed with {close:?} after the result"
                );
                Ok::<_, anyhow::Error>((
                    p.checkout_request_id,
                    done.data.status.as_str().to_owned(),
                ))
            }
        })
        .buffer_unordered(n)
        .try_collect()
        .await?;
    ensure!(
        results.len() == n,
        "{} results for {n} payments",
        results.len()
    );
    let ok = results.iter().filter(|(_, s)| s == "SUCCESS").count();
    ensure!(ok == n, "{ok} of {n} succeeded: {results:?}");
    let mut ids: Vec<&String> = results.iter().map(|(id, _)| id).collect();
    ids.sort();
    ids.dedup();
    ensure!(ids.len() == n, "two sockets saw the same payment");
    Ok(())
}
