//! `e2e-bench`: end-to-end delivery latency and Redis connection use of a local cluster.
//!
//! `cargo run --release -p stk-relay-e2e --bin e2e-bench -- --payments 1000`
//!
//! Starts a cluster (release binaries when run from `target/release`), creates N pending
//! payments (simulator manual mode), opens one WebSocket per payment spread over both
//! gateways, then for each payment takes t0 just before POSTing its callback to an
//! ingest node and t1 when its socket receives PAYMENT_COMPLETED. Prints latency
//! percentiles and the Redis connections each node holds (counted from `/proc`: the
//! node's sockets whose peer is the Redis port) with one socket per gateway and with
//! all N open, as markdown tables for BENCHMARKS.md.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use clap::Parser;
use futures_util::{stream, StreamExt as _, TryStreamExt as _};
use stk_relay_e2e::process::Node;
use stk_relay_e2e::ws::WsClient;
use stk_relay_e2e::{daraja, expect, sim, Cluster, ClusterOptions};
use stk_relay_shared::api::{MessageType, PushResponse};

#[derive(Parser)]
#[command(
    name = "e2e-bench",
    about = "End-to-end delivery latency of a local stk-relay cluster"
)]
struct Args {
    /// Pending payments, and open WebSockets (one per payment).
    #[arg(long, default_value_t = 1000)]
    payments: u32,
    /// Callbacks in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Pushes and WebSocket connects in flight at once.
    #[arg(long, default_value_t = 64)]
    setup_concurrency: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.payments >= 1, "--payments must be at least 1");
    let opts = ClusterOptions {
        log_level: "warn".to_owned(),
        heartbeat_ms: 15_000,
        ..ClusterOptions::default()
    };
    let started = Instant::now();
    let c = Cluster::start_with("bench", opts).await?;
    eprintln!("cluster up in {:?}", started.elapsed());

    // One socket per gateway.
    let mut probes = Vec::new();
    for gw in 0..2 {
        let p = c
            .push(gw, &sim::phone(99_000 + gw as u32, sim::MANUAL), 1)
            .await?;
        let mut ws = c.ws_connect(gw, &p.checkout_request_id, &p.token).await?;
        ws.expect(MessageType::PaymentUpdate).await?;
        probes.push(ws);
    }
    let at_one = conn_counts(&c).await?;
    let rss_one = gateway_rss(&c)?;

    // N payments, N sockets.
    let n = args.payments;
    let t = Instant::now();
    let pushes: Vec<(u32, PushResponse)> = stream::iter(0..n)
        .map(|i| {
            let c = &c;
            async move {
                let p = c
                    .push((i % 2) as usize, &sim::phone(i, sim::MANUAL), 10 + i % 1000)
                    .await
                    .with_context(|| format!("push {i}"))?;
                Ok::<_, anyhow::Error>((i, p))
            }
        })
        .buffer_unordered(args.setup_concurrency)
        .try_collect()
        .await?;
    let push_secs = t.elapsed().as_secs_f64();
    eprintln!("{n} pushes in {push_secs:.2}s");

    let t0s: Arc<Vec<OnceLock<Instant>>> = Arc::new((0..n).map(|_| OnceLock::new()).collect());
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<u32>(n as usize);
    let connect_gate = Arc::new(tokio::sync::Semaphore::new(args.setup_concurrency));
    let mut tasks = Vec::with_capacity(n as usize);
    for (i, p) in &pushes {
        let gw = ((i + 1) % 2) as usize;
        let url = c.ws_url(gw, &p.checkout_request_id, &p.token);
        let (i, id, ready_tx, t0s) = (
            *i,
            p.checkout_request_id.clone(),
            ready_tx.clone(),
            t0s.clone(),
        );
        let gate = connect_gate.clone();
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await?;
            let mut ws = WsClient::connect(&url).await?;
            expect::pending(
                &ws.expect(MessageType::PaymentUpdate).await?.data,
                &id,
                10 + i % 1000,
            )?;
            drop(permit);
            ready_tx.send(i).await?;
            let done = ws
                .next_message(Duration::from_secs(120))
                .await
                .with_context(|| format!("payment {i}"))?;
            let t1 = Instant::now();
            ensure!(
                done.kind == MessageType::PaymentCompleted,
                "payment {i}: {done:?}"
            );
            let t0 = *t0s[i as usize]
                .get()
                .context("completed before its callback was sent")?;
            ws.close().await;
            Ok::<_, anyhow::Error>(t1.duration_since(t0))
        }));
    }
    drop(ready_tx);
    let t = Instant::now();
    for _ in 0..n {
        tokio::time::timeout(Duration::from_secs(120), ready_rx.recv())
            .await
            .context("sockets did not all open")?
            .context("a socket task failed while opening")?;
    }
    eprintln!("{n} sockets open in {:.2}s", t.elapsed().as_secs_f64());
    let at_n = conn_counts(&c).await?;
    let rss_n = gateway_rss(&c)?;

    let ids: Vec<&str> = pushes
        .iter()
        .map(|(_, p)| p.checkout_request_id.as_str())
        .collect();
    let paths = c.callback_paths_for(&ids).await?;
    let bodies: Vec<(u32, String, Vec<u8>)> = pushes
        .iter()
        .map(|(i, p)| {
            let id = p.checkout_request_id.as_str();
            let body = daraja::success(
                &p.merchant_request_id,
                id,
                10 + i % 1000,
                &daraja::receipt(*i),
                &c.phone_of(id)?,
            );
            Ok((*i, paths[id].clone(), serde_json::to_vec(&body)?))
        })
        .collect::<Result<_>>()?;
    let t = Instant::now();
    stream::iter(bodies)
        .map(|(i, path, body)| {
            let (c, t0s) = (&c, &t0s);
            async move {
                let _ = t0s[i as usize].set(Instant::now());
                let resp = c.post_callback_bytes((i % 2) as usize, &path, body).await?;
                if resp.status() != 200 {
                    bail!("callback {i}: HTTP {}", resp.status());
                }
                Ok(())
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    let send_secs = t.elapsed().as_secs_f64();
    let mut lat = Vec::with_capacity(n as usize);
    for task in tasks {
        lat.push(task.await??);
    }
    let all_secs = t.elapsed().as_secs_f64();
    lat.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pct = |q: f64| {
        let idx = ((q * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1;
        ms(lat[idx])
    };

    println!(
        "\n### End-to-end delivery latency (callback POST → PAYMENT_COMPLETED on the socket)\n"
    );
    println!(
        "Machine: {} CPUs; {} binaries; one Redis, 2 gateways, 2 ingest nodes, simulator, \
         load generator, all on one host.\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        stk_relay_e2e::bins::profile_dir()
            .ok()
            .and_then(|d| d.file_name().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_default()
    );
    println!("| payments / open sockets | callbacks in flight | p50 ms | p90 ms | p99 ms | max ms | callbacks/s |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {n} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} |",
        args.concurrency,
        pct(0.50),
        pct(0.90),
        pct(0.99),
        ms(lat[lat.len() - 1]),
        f64::from(n) / all_secs
    );
    println!(
        "\nPushes: {n} in {push_secs:.2}s ({:.0}/s, {} in flight). Callbacks sent in {send_secs:.2}s.",
        f64::from(n) / push_secs,
        args.setup_concurrency
    );
    println!("\n### Redis connections per node\n");
    println!(
        "| node | with 1 socket per gateway | with {} sockets ({} per gateway) |",
        n + 2,
        n / 2 + 1
    );
    println!("|---|---|---|");
    for ((name, one), (_, many)) in at_one.iter().zip(at_n.iter()) {
        println!("| {name} | {one} | {many} |");
    }
    println!("\n### Gateway memory (RSS)\n");
    println!(
        "| node | with 1 socket | with {} sockets | per added socket |",
        n / 2 + 1
    );
    println!("|---|---|---|---|");
    for ((name, one), (_, many)) in rss_one.iter().zip(rss_n.iter()) {
        let per = (*many as f64 - *one as f64) / f64::from((n / 2).max(1));
        println!(
            "| {name} | {:.1} MiB | {:.1} MiB | {per:.1} KiB |",
            *one as f64 / 1024.0,
            *many as f64 / 1024.0
        );
    }
    for p in probes {
        p.close().await;
    }
    Ok(())
}

/// Resident memory of each gateway process, in KiB (`VmRSS` of `/proc/<pid>/status`).
fn gateway_rss(c: &Cluster) -> Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for node in &c.gateways {
        let status = std::fs::read_to_string(format!("/proc/{}/status", node.pid()))
            .with_context(|| format!("/proc/{}/status", node.pid()))?;
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .with_context(|| format!("no VmRSS for {}", node.name()))?;
        out.push((node.name().to_owned(), kib));
    }
    Ok(out)
}

/// Redis connections held by each node, and all of Redis's clients (`CLIENT LIST`,
/// without the connection that asks).
async fn conn_counts(c: &Cluster) -> Result<Vec<(String, usize)>> {
    let port = c.redis.port();
    let mut out = Vec::new();
    for node in c.gateways.iter().chain(c.ingests.iter()) {
        out.push((node.name().to_owned(), redis_conns(node, port)?));
    }
    let list = c.redis.client_list().await?;
    out.push((
        "all Redis clients (CLIENT LIST)".to_owned(),
        list.lines().count().saturating_sub(1),
    ));
    Ok(out)
}

/// Established TCP connections of `node` whose peer port is `redis_port`, found by
/// matching the socket inodes of `/proc/<pid>/fd` with `/proc/net/tcp{,6}`.
fn redis_conns(node: &Node, redis_port: u16) -> Result<usize> {
    let pid = node.pid();
    let mut inodes = HashSet::new();
    for fd in
        std::fs::read_dir(format!("/proc/{pid}/fd")).with_context(|| format!("/proc/{pid}/fd"))?
    {
        let Ok(fd) = fd else { continue };
        if let Ok(target) = std::fs::read_link(fd.path()) {
            let t = target.to_string_lossy();
            if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                inodes.insert(inode.to_owned());
            }
        }
    }
    let want = format!(":{redis_port:04X}");
    let mut count = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 {
                continue;
            }
            // cols: sl local rem st ... inode(9)
            if cols[2].ends_with(&want) && cols[3] == "01" && inodes.contains(cols[9]) {
                count += 1;
            }
        }
    }
    Ok(count)
}
