//! `webhook-bench`: how many webhooks per second ONE gateway delivers to a local receiver
//! that answers 200 at once (issue 10).
//!
//! `cargo run --release -p stk-relay-e2e --bin webhook-bench -- --events 20000`
//!
//! Starts a cluster with one gateway and one ingest (release binaries when run from
//! `target/release`) and a receiver in this process (`webhook_receiver`, plain HTTP/1.1,
//! keep-alive). Appends N events to the webhook stream in the exact shape `payment.lua`
//! writes (pipelined `XADD`s), so that the figure is the delivery path alone: moving from
//! the stream, claiming, signing, POSTing, acknowledging. Prints one JSON line: events,
//! seconds from the first append to the last request received, events per second, and the
//! CPU seconds of the gateway and of Redis over that time.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use clap::Parser;
use stk_relay_e2e::cluster::kv;
use stk_relay_e2e::webhook_receiver::{Receiver, Reply};
use stk_relay_e2e::{Cluster, ClusterOptions};
use stk_relay_shared::keyspace::Keyspace;

#[derive(Parser)]
#[command(name = "webhook-bench", about = "Webhook delivery rate of one gateway")]
struct Args {
    /// Events to deliver.
    #[arg(long, default_value_t = 20_000)]
    events: u32,
    /// `merchant.webhook_concurrency` of the gateway.
    #[arg(long, default_value_t = 64)]
    concurrency: u32,
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.events >= 1, "--events must be at least 1");
    let mut rx = Receiver::start(&[], Reply::Status(200)).await?;
    let c = Cluster::start_with(
        "webhook_bench",
        ClusterOptions {
            gateways: 1,
            ingests: 1,
            log_level: "warn".to_owned(),
            heartbeat_ms: 15_000,
            gateway_env: vec![
                kv("GATEWAY__MERCHANT__WEBHOOK_URL", rx.url()),
                kv(
                    "GATEWAY__MERCHANT__WEBHOOK_SECRET",
                    "bench-webhook-secret-0123456789abcdef",
                ),
                kv(
                    "GATEWAY__MERCHANT__WEBHOOK_CONCURRENCY",
                    &args.concurrency.to_string(),
                ),
            ],
            ..ClusterOptions::default()
        },
    )
    .await?;
    let keys = Keyspace::new(c.key_prefix.clone());
    let client = redis::Client::open(c.redis.url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let gw = c.gateway(0).pid();
    let redis_pid = c.redis.pid();
    let (gw0, r0) = (cpu_secs(gw), redis_pid.map_or(0.0, cpu_secs));
    let t0 = Instant::now();
    let stream = keys.webhook_stream();
    for chunk in (0..args.events).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            let id = format!("ws_CO_bench_{i}");
            pipe.cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("id")
                .arg(format!("evt_{id}_v2"))
                .arg("type")
                .arg("payment.final")
                .arg("url")
                .arg("*")
                .arg("state")
                .arg(format!(
                    r#"{{"checkoutRequestId":"{id}","status":"SUCCESS","amount":100,"version":2}}"#
                ))
                .ignore();
        }
        let () = pipe.query_async(&mut conn).await?;
    }
    let appended = t0.elapsed();
    let mut got = 0u32;
    while got < args.events {
        rx.next_request(Duration::from_secs(30))
            .await
            .with_context(|| format!("{got} of {} delivered", args.events))?;
        got += 1;
    }
    let took = t0.elapsed();
    let (gw1, r1) = (cpu_secs(gw), redis_pid.map_or(0.0, cpu_secs));
    println!(
        "{}",
        serde_json::json!({
            "scenario": "webhooks",
            "events": args.events,
            "concurrency": args.concurrency,
            "appended_in_s": (appended.as_secs_f64() * 1000.0).round() / 1000.0,
            "seconds": (took.as_secs_f64() * 1000.0).round() / 1000.0,
            "events_per_s": (f64::from(args.events) / took.as_secs_f64()).round(),
            "cpu_s": {
                "gateway": ((gw1 - gw0) * 100.0).round() / 100.0,
                "redis": ((r1 - r0) * 100.0).round() / 100.0,
            },
        })
    );
    Ok(())
}
