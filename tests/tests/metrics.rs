//! Prometheus metrics, scraped from the real processes during an e2e run: counters move
//! by exactly what happened, histograms count what they time, gauges come back to rest,
//! no label carries a payment id or a phone number, and `/metrics` is served only on the
//! metrics listener, never on the public port.

use std::collections::HashMap;

use anyhow::{bail, ensure, Context as _, Result};
use stk_relay_e2e::cluster::kv;
use stk_relay_e2e::redis_server::free_port;
use stk_relay_e2e::{sim, wait, Cluster, ClusterOptions, STEP};
use stk_relay_shared::api::MessageType;

/// A sample's labels, as written.
type Labels = Vec<(String, String)>;

/// One scrape: every sample, by metric name.
struct Scrape {
    text: String,
    samples: HashMap<String, Vec<(Labels, f64)>>,
}

impl Scrape {
    fn parse(text: String) -> Result<Self> {
        let mut samples: HashMap<String, Vec<(Labels, f64)>> = HashMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .with_context(|| format!("sample without a value: {line}"))?;
            let value: f64 = value
                .parse()
                .with_context(|| format!("bad value in {line}"))?;
            let (name, labels) = match series.split_once('{') {
                None => (series, Vec::new()),
                Some((name, rest)) => {
                    let body = rest
                        .strip_suffix('}')
                        .with_context(|| format!("bad labels in {line}"))?;
                    let mut labels = Vec::new();
                    for pair in body.split(',').filter(|p| !p.is_empty()) {
                        let (k, v) = pair
                            .split_once('=')
                            .with_context(|| format!("bad label in {line}"))?;
                        labels.push((k.to_owned(), v.trim_matches('"').to_owned()));
                    }
                    (name, labels)
                }
            };
            samples
                .entry(name.to_owned())
                .or_default()
                .push((labels, value));
        }
        Ok(Self { text, samples })
    }

    /// The sum of `name`'s samples whose labels include every pair of `want` (0 when
    /// there is none yet: a series appears on its first use).
    fn get(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.samples
            .get(name)
            .map(|series| {
                series
                    .iter()
                    .filter(|(labels, _)| {
                        want.iter()
                            .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
                    })
                    .map(|(_, v)| v)
                    .sum()
            })
            .unwrap_or(0.0)
    }
}

async fn scrape(http: &reqwest::Client, port: u16) -> Result<Scrape> {
    let resp = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .timeout(STEP)
        .send()
        .await
        .with_context(|| format!("GET /metrics on port {port}"))?;
    ensure!(resp.status() == 200, "/metrics answered {}", resp.status());
    Scrape::parse(resp.text().await?)
}

/// Checks that `after - before` of a sample is exactly `want`.
fn moved(
    before: &Scrape,
    after: &Scrape,
    name: &str,
    labels: &[(&str, &str)],
    want: f64,
) -> Result<()> {
    let got = after.get(name, labels) - before.get(name, labels);
    if (got - want).abs() > f64::EPSILON {
        bail!(
            "{name} {labels:?} moved by {got}, expected {want}\n{}",
            after.text
        );
    }
    Ok(())
}

const PAYMENTS: u32 = 20;
const OVER_SSE: u32 = 3;
const DUPLICATED: u32 = 2;

/// A one-gateway, one-ingest cluster whose nodes serve metrics on two free ports; returns
/// the cluster and the two ports. A free port can be taken by another process between
/// being found and being bound (the node then exits with "Address already in use"), so
/// a node that exits at start is started again with new ports, at most three times.
async fn start_with_metrics(name: &str) -> Result<(Cluster, u16, u16)> {
    let mut last = None;
    for _ in 0..3 {
        let gw_metrics = free_port().await?;
        let mut ingest_metrics = free_port().await?;
        while ingest_metrics == gw_metrics {
            ingest_metrics = free_port().await?;
        }
        let started = Cluster::start_with(
            name,
            ClusterOptions {
                gateways: 1,
                ingests: 1,
                gateway_env: vec![kv(
                    "GATEWAY__METRICS__BIND",
                    &format!("127.0.0.1:{gw_metrics}"),
                )],
                ingest_env: vec![kv(
                    "INGEST__METRICS__BIND",
                    &format!("127.0.0.1:{ingest_metrics}"),
                )],
                ..ClusterOptions::default()
            },
        )
        .await;
        match started {
            Ok(c) => return Ok((c, gw_metrics, ingest_metrics)),
            // A node that exits at start (the port was taken) is started again; a real
            // start-up failure fails all three tries.
            Err(e) if format!("{e:#}").contains("before printing its listening line") => {
                last = Some(e)
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no cluster started")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened() -> Result<()> {
    let (c, gw_metrics, ingest_metrics) = start_with_metrics("metrics").await?;

    // The public ports do not serve metrics.
    for base in [c.gateway(0).url(), c.ingest(0).url()] {
        let resp = c
            .http
            .get(format!("{base}/metrics"))
            .timeout(STEP)
            .send()
            .await?;
        ensure!(
            resp.status() == 404,
            "{base}/metrics answered {}",
            resp.status()
        );
    }

    let gw0 = scrape(&c.http, gw_metrics).await?;
    let in0 = scrape(&c.http, ingest_metrics).await?;
    ensure!(
        gw0.get("stk_relay_ready", &[]) == 1.0,
        "gateway not ready:\n{}",
        gw0.text
    );
    ensure!(
        in0.get("stk_relay_ready", &[]) == 1.0,
        "ingest not ready:\n{}",
        in0.text
    );

    // 20 payments, each watched over WebSocket before its callback is sent.
    let mut ids = Vec::new();
    let mut phones = Vec::new();
    for n in 0..PAYMENTS {
        let phone = sim::phone(n + 1, sim::MANUAL);
        let p = c.push(0, &phone, 100 + n).await?;
        let id = p.checkout_request_id.clone();
        let mut ws = c.ws_connect(0, &id, &p.token).await?;
        ws.expect(MessageType::PaymentUpdate).await?;
        let sent = c.sim_ctl.complete_sent(&id, 0).await?;
        ensure!(
            sent.status == Some(200),
            "callback for {id}: {:?}",
            sent.status
        );
        ws.expect(MessageType::PaymentCompleted).await?;
        ws.expect_end(STEP).await?;
        ids.push(id);
        phones.push(phone);
    }

    // Three more watched over SSE.
    for n in 0..OVER_SSE {
        let phone = sim::phone(300 + n, sim::MANUAL);
        let p = c.push(0, &phone, 70).await?;
        let id = p.checkout_request_id.clone();
        let mut sse = c.sse_connect(0, &id, &p.token).await?;
        sse.expect(MessageType::PaymentUpdate).await?;
        let sent = c.sim_ctl.complete_sent(&id, 0).await?;
        ensure!(
            sent.status == Some(200),
            "callback for {id}: {:?}",
            sent.status
        );
        sse.expect(MessageType::PaymentCompleted).await?;
        drop(sse);
        ids.push(id);
        phones.push(phone);
    }

    // Two payments whose callback the simulator sends twice: one applied, one duplicate.
    for n in 0..DUPLICATED {
        let phone = sim::phone(500 + n, sim::DUPLICATE);
        let p = c.push(0, &phone, 50).await?;
        let id = p.checkout_request_id.clone();
        wait::until("both callbacks answered", STEP, || async {
            let sent = c.sim_ctl.callbacks_sent_for(&id).await?;
            Ok((sent.len() == 2 && sent.iter().all(|s| s.status == Some(200))).then_some(()))
        })
        .await?;
        ids.push(id);
        phones.push(phone);
    }

    // One forged callback: a token nobody signed.
    let forged = c
        .post_callback(
            0,
            "/v1/callbacks/stk/forged-token-0123456789",
            &serde_json::json!({"Body": {"stkCallback": {}}}),
        )
        .await?;
    ensure!(
        forged.status() == 403,
        "forged callback answered {}",
        forged.status()
    );

    // Sockets and channels come back to rest; the pub/sub probe has been timed.
    let gw1 = wait::until("gateway gauges at rest", STEP, || async {
        let s = scrape(&c.http, gw_metrics).await?;
        let rest = s.get("stk_relay_gateway_connections", &[]) == 0.0
            && s.get("stk_relay_gateway_channels", &[]) == 0.0
            && s.get("stk_relay_broker_probe_seconds_count", &[]) >= 1.0;
        Ok(rest.then_some(s))
    })
    .await?;
    let in1 = scrape(&c.http, ingest_metrics).await?;

    let total = f64::from(PAYMENTS + OVER_SSE + DUPLICATED);
    let dup = f64::from(DUPLICATED);
    let callbacks = "stk_relay_ingest_callbacks_total";
    moved(&in0, &in1, callbacks, &[("outcome", "applied")], total)?;
    moved(&in0, &in1, callbacks, &[("outcome", "duplicate")], dup)?;
    moved(&in0, &in1, callbacks, &[("outcome", "forbidden")], 1.0)?;
    moved(&in0, &in1, callbacks, &[], total + dup + 1.0)?;
    moved(
        &in0,
        &in1,
        "stk_relay_ingest_callback_publish_seconds_count",
        &[],
        total,
    )?;
    // Every publish took less than the largest bucket's bound.
    moved(
        &in0,
        &in1,
        "stk_relay_ingest_callback_publish_seconds_bucket",
        &[("le", "10")],
        total,
    )?;

    let pushes = "stk_relay_gateway_pushes_total";
    moved(
        &gw0,
        &gw1,
        pushes,
        &[("outcome", "accepted"), ("daraja_code", "none")],
        total,
    )?;
    moved(&gw0, &gw1, pushes, &[], total)?;
    let delivery = "stk_relay_gateway_delivery_seconds_count";
    moved(
        &gw0,
        &gw1,
        delivery,
        &[("transport", "websocket")],
        f64::from(PAYMENTS),
    )?;
    moved(
        &gw0,
        &gw1,
        delivery,
        &[("transport", "sse")],
        f64::from(OVER_SSE),
    )?;
    moved(&gw0, &gw1, "stk_relay_broker_reconnects_total", &[], 0.0)?;
    moved(&gw0, &gw1, "stk_relay_redis_errors_total", &[], 0.0)?;
    moved(&in0, &in1, "stk_relay_redis_errors_total", &[], 0.0)?;
    ensure!(
        gw1.get("stk_relay_broker_connected", &[]) == 1.0,
        "broker not connected"
    );

    // Labels are bounded: no payment id and no phone number anywhere in a scrape.
    for text in [&gw1.text, &in1.text] {
        for v in ids.iter().chain(phones.iter()) {
            ensure!(
                !text.contains(v.as_str()),
                "{v} appears in a scrape:\n{text}"
            );
        }
    }
    Ok(())
}

/// Standalone mode: one listener carries the gateway's and the ingest's metrics, and the
/// public port does not serve them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_serves_gateway_and_ingest_metrics_on_one_listener() -> Result<()> {
    let port = free_port().await?;
    let api_key = "e2e-standalone-metrics-0123456789";
    let node = stk_relay_e2e::standalone::StandaloneNode::start(
        "metrics_standalone",
        &[
            kv("STK_RELAY__METRICS__BIND", &format!("127.0.0.1:{port}")),
            kv("STK_RELAY__API__KEYS", api_key),
            kv("STK_RELAY__SIMULATOR__CALLBACK_DELAY_MS", "20"),
        ],
    )
    .await?;
    let http = reqwest::Client::new();
    let base = node.url();
    let public = http
        .get(format!("{base}/metrics"))
        .timeout(STEP)
        .send()
        .await?;
    ensure!(
        public.status() == 404,
        "public /metrics answered {}",
        public.status()
    );
    let ready = http
        .get(format!("{base}/readyz"))
        .timeout(STEP)
        .send()
        .await?;
    ensure!(ready.status() == 200, "/readyz answered {}", ready.status());

    let resp = http
        .post(format!("{base}/v1/stk/push"))
        .timeout(STEP)
        .bearer_auth(api_key)
        .json(&serde_json::json!({
            "phone": sim::phone(7, "000"),
            "amount": 10,
            "account_reference": "E2E",
        }))
        .send()
        .await?;
    ensure!(resp.status() == 200, "push answered {}", resp.status());

    let s = wait::until("the callback counted", STEP, || async {
        let s = scrape(&http, port).await?;
        Ok((s.get(
            "stk_relay_ingest_callbacks_total",
            &[("outcome", "applied")],
        ) == 1.0)
            .then_some(s))
    })
    .await?;
    ensure!(
        s.get("stk_relay_gateway_pushes_total", &[("outcome", "accepted")]) == 1.0,
        "push not counted:\n{}",
        s.text
    );
    ensure!(
        s.get("stk_relay_ingest_callback_publish_seconds_count", &[]) == 1.0,
        "publish not timed:\n{}",
        s.text
    );
    ensure!(
        s.get("stk_relay_ready", &[]) == 1.0,
        "readiness not recorded:\n{}",
        s.text
    );
    Ok(())
}

/// A Redis restart shows in the metrics: the pub/sub connection is rebuilt, readiness
/// goes down and comes back (two changes), and Redis errors are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_is_counted() -> Result<()> {
    let (mut c, gw_metrics, ingest_metrics) = start_with_metrics("metrics_redis_restart").await?;
    let gw0 = scrape(&c.http, gw_metrics).await?;
    let in0 = scrape(&c.http, ingest_metrics).await?;

    c.redis.kill().await?;
    let gw_url = c.gateway(0).url().to_owned();
    let ingest_url = c.ingest(0).url().to_owned();
    c.wait_unready(&gw_url, STEP).await?;
    c.wait_unready(&ingest_url, STEP).await?;
    let down = scrape(&c.http, gw_metrics).await?;
    ensure!(
        down.get("stk_relay_ready", &[]) == 0.0,
        "ready while Redis is down:\n{}",
        down.text
    );
    ensure!(
        down.get("stk_relay_broker_connected", &[]) == 0.0,
        "broker connected while Redis is down:\n{}",
        down.text
    );
    c.redis.restart().await?;
    c.wait_ready(&gw_url, STEP).await?;
    c.wait_ready(&ingest_url, STEP).await?;

    let gw1 = scrape(&c.http, gw_metrics).await?;
    let in1 = scrape(&c.http, ingest_metrics).await?;
    // Down, then up: at least two changes (more only if a probe caught a flicker).
    for (before, after) in [(&gw0, &gw1), (&in0, &in1)] {
        let changes = after.get("stk_relay_readiness_changes_total", &[])
            - before.get("stk_relay_readiness_changes_total", &[]);
        ensure!(
            changes >= 2.0,
            "readiness changes {changes}:\n{}",
            after.text
        );
    }
    let reconnects = gw1.get("stk_relay_broker_reconnects_total", &[])
        - gw0.get("stk_relay_broker_reconnects_total", &[]);
    ensure!(
        reconnects >= 1.0,
        "no broker reconnect counted:\n{}",
        gw1.text
    );
    ensure!(
        gw1.get("stk_relay_broker_connected", &[]) == 1.0,
        "broker not back"
    );
    let errors = in1.get("stk_relay_redis_errors_total", &[])
        - in0.get("stk_relay_redis_errors_total", &[])
        + gw1.get("stk_relay_redis_errors_total", &[])
        - gw0.get("stk_relay_redis_errors_total", &[]);
    ensure!(
        errors >= 1.0,
        "no Redis error counted:\n{}\n{}",
        gw1.text,
        in1.text
    );
    Ok(())
}
