//! In a real headless Chromium (Debian's `chromium`, driven by `playwright-core`; see
//! `tests/browser/`): the demo checkout of the standalone process for each outcome, and
//! the browser client (`/v1/client.js`) against a two-gateway cluster with real Redis
//! behind a load-balancer stand-in: its gateway killed mid-payment, WebSocket upgrades
//! refused (SSE fallback), and SSE refused too (polling fallback).

use std::time::Duration;

use anyhow::{ensure, Result};
use serde_json::Value;
use stk_relay_e2e::browser::{screenshot_path, BrowserRun};
use stk_relay_e2e::cluster::kv;
use stk_relay_e2e::proxy::{addr_of, Proxy, Rules};
use stk_relay_e2e::standalone::StandaloneNode;
use stk_relay_e2e::Cluster;

/// The demo page's whole run: push, prompt, result (and Try again for retryable ones).
const DEMO_RUN: Duration = Duration::from_secs(100);

async fn demo(outcome: &str, expect: &str, viewport: &str) -> Result<Value> {
    let name = format!("browser-demo-{outcome}");
    let node = StandaloneNode::start(
        &name,
        &[
            kv("STK_RELAY__SIMULATOR__CALLBACK_DELAY_MS", "1500"),
            kv("STK_RELAY__SIMULATOR__RECONCILE_AFTER_SECS", "2"),
        ],
    )
    .await?;
    let shot = screenshot_path(&node.log_dir, &format!("demo-{outcome}.png"));
    let run = BrowserRun::start(
        "demo.mjs",
        &name,
        &[
            kv("BASE_URL", node.url()),
            kv("OUTCOME", outcome),
            kv("EXPECT", expect),
            kv("VIEWPORT", viewport),
            kv("SCREENSHOT", &shot.display().to_string()),
        ],
        &node.log_dir,
    )?;
    let done = run.done(DEMO_RUN).await?;
    ensure!(
        done["state"] == expect,
        "page ended as {} instead of {expect}: {done}",
        done["state"]
    );
    ensure!(shot.is_file(), "no screenshot at {}", shot.display());
    Ok(done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_success_shows_the_receipt() -> Result<()> {
    let done = demo("success", "success", "phone").await?;
    let receipt = done["receipt"].as_str().unwrap_or("");
    ensure!(
        receipt.len() == 10,
        "receipt {receipt:?} is not an M-Pesa receipt number: {done}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_cancel_offers_try_again() -> Result<()> {
    let done = demo("cancelled", "failed", "phone").await?;
    ensure!(done["reasonCode"] == "CANCELLED_BY_USER", "{done}");
    ensure!(
        done["checkoutIds"].as_array().is_some_and(|a| a.len() == 2),
        "Try again started no new push: {done}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_wrong_pin_offers_try_again() -> Result<()> {
    let done = demo("wrong_pin", "failed", "desktop").await?;
    ensure!(done["reasonCode"] == "WRONG_PIN", "{done}");
    ensure!(
        done["checkoutIds"].as_array().is_some_and(|a| a.len() == 2),
        "Try again started no new push: {done}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_timeout_and_insufficient_funds() -> Result<()> {
    let done = demo("timeout", "failed", "desktop").await?;
    ensure!(done["reasonCode"] == "TIMEOUT", "{done}");
    let done = demo("insufficient_funds", "failed", "phone").await?;
    ensure!(done["reasonCode"] == "INSUFFICIENT_FUNDS", "{done}");
    Ok(())
}

/// No callback ever comes: reconciliation asks STK Push Query and the page shows the
/// success it reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_no_callback_is_settled_by_reconciliation() -> Result<()> {
    demo("no_callback", "success", "desktop").await?;
    Ok(())
}

/// A cluster of two gateways behind the proxy (gateway 0 first), and one payment that
/// the simulator holds until `/sim/complete` (phone ending in 333).
async fn watched_payment(name: &str, rules: Rules) -> Result<(Cluster, Proxy, String, BrowserRun)> {
    let cluster = Cluster::start(name).await?;
    let proxy = Proxy::start(
        vec![
            addr_of(cluster.gateway(0).url())?,
            addr_of(cluster.gateway(1).url())?,
        ],
        rules,
    )
    .await?;
    let push = cluster.push(1, "254708374333", 10).await?;
    let mut run = BrowserRun::start(
        "watch.mjs",
        name,
        &[
            kv("BASE_URL", &proxy.url()),
            kv("CHECKOUT_ID", &push.checkout_request_id),
            kv("TOKEN", &push.token),
            kv(
                "WATCH_OPTIONS",
                r#"{"backoff":{"initialMs":200,"maxMs":1000}}"#,
            ),
        ],
        &cluster.log_dir,
    )?;
    let first = run.wait_event("update", Duration::from_secs(30)).await?;
    ensure!(
        first["status"] == "PENDING",
        "first update is not the pending snapshot: {first}"
    );
    Ok((cluster, proxy, push.checkout_request_id, run))
}

fn check_done(done: &Value) -> Result<()> {
    ensure!(
        done["finals"] == 1,
        "onFinal called {} times: {done}",
        done["finals"]
    );
    ensure!(done["final"]["status"] == "SUCCESS", "final state: {done}");
    ensure!(
        done["errors"].as_array().is_some_and(Vec::is_empty),
        "client errors: {done}"
    );
    Ok(())
}

fn count(requests: &[String], f: impl Fn(&str) -> bool) -> usize {
    requests.iter().filter(|l| f(l)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reconnects_to_the_other_gateway_when_its_own_dies() -> Result<()> {
    let (mut cluster, proxy, id, run) =
        watched_payment("browser-failover", Rules::default()).await?;
    // The browser's socket is on gateway 0 (the proxy's first choice): kill it.
    cluster.gateways[0].kill().await?;
    // The browser reconnects through the proxy, now to gateway 1; then the result lands.
    proxy
        .wait_for(Duration::from_secs(30), "a socket on gateway 1", |seen| {
            seen.iter().any(|l| l.ends_with("/ws to 1"))
        })
        .await?;
    cluster.sim_ctl.complete(&id, 0).await?;
    let done = run.done(Duration::from_secs(60)).await?;
    check_done(&done)?;
    let requests = proxy.requests();
    ensure!(
        count(&requests, |l| l.contains("/events")
            || l.starts_with("refused"))
            == 0,
        "the client left WebSocket after a node failure: {requests:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_falls_back_to_sse_when_upgrades_are_refused() -> Result<()> {
    let rules = Rules {
        refuse_upgrades: true,
        ..Rules::default()
    };
    let (cluster, proxy, id, run) = watched_payment("browser-sse", rules).await?;
    // Complete the payment only once the browser has given up on WebSocket and holds an
    // event stream.
    proxy
        .wait_for(Duration::from_secs(30), "event stream", |seen| {
            seen.iter()
                .any(|l| l.starts_with("forwarded") && l.contains("/events "))
        })
        .await?;
    cluster.sim_ctl.complete(&id, 0).await?;
    let done = run.done(Duration::from_secs(60)).await?;
    check_done(&done)?;
    let requests = proxy.requests();
    ensure!(
        count(&requests, |l| l.starts_with("forwarded")
            && l.contains("/ws "))
            == 0,
        "an upgrade got through: {requests:?}"
    );
    ensure!(proxy.refused() >= 1, "the proxy refused no upgrade");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_falls_back_to_polling_when_sse_is_refused_too() -> Result<()> {
    let rules = Rules {
        refuse_upgrades: true,
        refuse_paths: vec!["/events".into()],
    };
    let (cluster, proxy, id, run) = watched_payment("browser-poll", rules).await?;
    // Complete the payment only once the browser polls: a GET of the payment after an
    // event stream was refused.
    let poll_path = format!("forwarded /v1/payments/{id} to ");
    proxy
        .wait_for(Duration::from_secs(30), "polling GET", |seen| {
            seen.iter()
                .skip_while(|l| !(l.starts_with("refused") && l.ends_with("/events")))
                .any(|l| l.starts_with(&poll_path))
        })
        .await?;
    cluster.sim_ctl.complete(&id, 0).await?;
    let done = run.done(Duration::from_secs(60)).await?;
    check_done(&done)?;
    let requests = proxy.requests();
    ensure!(
        count(&requests, |l| l.starts_with("forwarded")
            && (l.contains("/ws ") || l.contains("/events ")))
            == 0,
        "a refused route got through: {requests:?}"
    );
    Ok(())
}

/// A component written for the Durable Objects design, in the browser: its WebSocket on
/// gateway 0 (the page's origin), its initiate on gateway 1 (cross-origin, allowed by
/// `api.allowed_origins`). Then the same with a tampered session token: refused, no push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_routes_work_across_nodes_and_refuse_a_tampered_token() -> Result<()> {
    use secrecy::SecretString;
    use stk_relay_e2e::cluster::ClusterOptions;
    use stk_relay_e2e::random_alnum;
    use stk_relay_shared::session_token::{SessionPayload, SessionTokens};

    let secret = random_alnum(48);
    let mut cluster = Cluster::start_with(
        "browser-compat",
        ClusterOptions {
            gateway_env: vec![
                kv("GATEWAY__COMPAT__ENABLED", "true"),
                kv("GATEWAY__COMPAT__SESSION_SECRET", &secret),
            ],
            ..ClusterOptions::default()
        },
    )
    .await?;
    // Gateway 1 takes the initiate from the page served by gateway 0.
    let shop = cluster.gateway(0).url().to_owned();
    cluster.gateways[1]
        .terminate(Duration::from_secs(10))
        .await?;
    cluster
        .respawn_gateway(1, &[kv("GATEWAY__API__ALLOWED_ORIGINS", &shop)])
        .await?;
    cluster
        .wait_ready(cluster.gateway(1).url(), stk_relay_e2e::STEP)
        .await?;
    let keys = SessionTokens::new(SecretString::from(secret), None);
    let mint = || {
        keys.issue(&SessionPayload {
            sid: format!("cs_{}", random_alnum(24)),
            amount: 10.into(),
            account_reference: "ORDER-1".into(),
            phone: None,
            desc: None,
            exp: chrono::Utc::now().timestamp() + 600,
        })
    };
    let body = r#"{"phoneNumber":"254708374149","amount":10,"accountReference":"ORDER-1"}"#;
    let run = |token: String, name: &str| {
        BrowserRun::start(
            "compat.mjs",
            name,
            &[
                kv("WS_BASE", &shop),
                kv("INITIATE_BASE", cluster.gateway(1).url()),
                kv("SESSION_TOKEN", &token),
                kv("BODY", body),
            ],
            &cluster.log_dir,
        )
    };

    let done = run(mint()?, "compat-ok")?
        .done(Duration::from_secs(60))
        .await?;
    ensure!(done["initiate"]["status"] == 200, "initiate: {done}");
    let kinds: Vec<&str> = done["messages"]
        .as_array()
        .map(|m| m.iter().filter_map(|m| m["type"].as_str()).collect())
        .unwrap_or_default();
    ensure!(
        kinds == ["STK_INITIATED", "PAYMENT_COMPLETED"],
        "messages: {done}"
    );
    let completed = &done["messages"][1]["data"];
    ensure!(completed["status"] == "SUCCESS", "{done}");
    ensure!(
        completed["mpesaReceiptNumber"]
            .as_str()
            .is_some_and(|r| r.len() == 10),
        "{done}"
    );
    ensure!(done["close"]["code"] == 1000, "close: {done}");
    let pushes = cluster.sim_ctl.records().await?;
    let pushes_before = pushes
        .as_array()
        .map_or(0, |r| r.iter().filter(|r| r["kind"] == "stk_push").count());

    // The same token with one payload character changed: the signature no longer holds.
    let token = mint()?;
    let mut chars: Vec<char> = token.chars().collect();
    chars[5] = if chars[5] == 'A' { 'B' } else { 'A' };
    let tampered: String = chars.into_iter().collect();
    let done = run(tampered, "compat-tampered")?
        .done(Duration::from_secs(60))
        .await?;
    ensure!(
        done["initiate"]["status"] == 401,
        "tampered initiate: {done}"
    );
    ensure!(
        done["opened"] != true && done["messages"].as_array().is_some_and(Vec::is_empty),
        "tampered socket: {done}"
    );
    let pushes = cluster.sim_ctl.records().await?;
    let pushes_after = pushes
        .as_array()
        .map_or(0, |r| r.iter().filter(|r| r["kind"] == "stk_push").count());
    ensure!(
        pushes_after == pushes_before,
        "a tampered token started a push"
    );
    Ok(())
}
