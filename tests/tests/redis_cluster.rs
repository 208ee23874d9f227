//! Redis Cluster mode end to end: three primaries, each with a replica, real
//! `redis-server` processes; two gateways and two ingests in `redis.mode = "cluster"`
//! with sharded pub/sub. 1,000 payments spread over every shard; then a shard's
//! failover, and a slot migration with `redis-cli --cluster reshard`, each while
//! callbacks stream in. Every browser gets its result once, none twice, and the stored
//! states are final.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{ensure, Context as _, Result};
use stk_relay_e2e::inflight::{deliver_all, each_completed_once, pending_payments};
use stk_relay_e2e::redis_cluster::{slot_of, RedisClusterSet};
use stk_relay_e2e::ws::WsClient;
use stk_relay_e2e::{daraja, expect, wait, Cluster, ClusterOptions, STEP};
use stk_relay_shared::api::PushResponse;

fn cluster() -> ClusterOptions {
    ClusterOptions {
        redis_cluster: true,
        ..ClusterOptions::default()
    }
}

fn set(c: &Cluster) -> Result<&RedisClusterSet> {
    c.redis_cluster.as_ref().context("no redis cluster")
}

/// How many of the payments each primary (by port) holds.
async fn per_shard(
    set: &RedisClusterSet,
    open: &[(u32, PushResponse)],
) -> Result<HashMap<u16, usize>> {
    let mut counts = HashMap::new();
    for (_, p) in open {
        let port = set
            .primary_port_for_slot(slot_of(&p.checkout_request_id))
            .await?;
        *counts.entry(port).or_insert(0) += 1;
    }
    Ok(counts)
}

/// Each primary has exactly one subscriber connection from each gateway.
async fn one_subscriber_per_shard_per_gateway(c: &Cluster) -> Result<usize> {
    let set = set(c)?;
    let mut total = 0;
    for primary in set.primaries().await? {
        let port = primary.port();
        let subs = set.subscriber_count(port).await?;
        ensure!(
            subs == c.gateways.len(),
            "primary {port} has {subs} subscriber connections for {} gateways",
            c.gateways.len()
        );
        total += subs;
    }
    Ok(total)
}

/// Every stored state is the success its callback carried.
async fn all_stored_success(c: &Cluster, open: &[(u32, PushResponse)]) -> Result<()> {
    for (amount, p) in open {
        let id = &p.checkout_request_id;
        let s = c.payment_state(0, id, &p.token).await?;
        expect::success(&s, id, *amount, &daraja::receipt(*amount))
            .with_context(|| format!("stored state of payment {amount}"))?;
    }
    Ok(())
}

async fn all_ready(c: &Cluster) -> Result<()> {
    for i in 0..c.gateways.len() {
        c.wait_ready(c.gateway(i).url(), STEP).await?;
    }
    for i in 0..c.ingests.len() {
        c.wait_ready(c.ingest(i).url(), STEP).await?;
    }
    Ok(())
}

fn split(made: Vec<(u32, PushResponse, WsClient)>) -> (Vec<(u32, PushResponse)>, Vec<WsClient>) {
    made.into_iter().map(|(a, p, ws)| ((a, p), ws)).unzip()
}

/// 1,000 payments whose ids spread over all three shards, browsers on both gateways:
/// each gets its result once. Each gateway holds one subscriber connection per shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_mode_delivers_1000_payments_across_every_shard() -> Result<()> {
    const N: u32 = 1000;
    let c = Cluster::start_with("cluster_1000", cluster()).await?;
    let (open, mut sockets) = split(pending_payments(&c, N).await?);
    let shards = per_shard(set(&c)?, &open).await?;
    eprintln!("cluster_1000: payments per primary: {shards:?}");
    ensure!(
        shards.len() == 3,
        "payments on {} shards only",
        shards.len()
    );
    let subs = one_subscriber_per_shard_per_gateway(&c).await?;
    eprintln!(
        "cluster_1000: {subs} subscriber connections for {} gateways and {N} sockets",
        c.gateways.len()
    );
    let done = AtomicUsize::new(0);
    let (delivered, completed) = tokio::join!(
        deliver_all(&c, &open, &done, STEP * 4),
        each_completed_once(&open, &mut sockets, STEP * 4)
    );
    delivered?;
    let completed = completed?;
    ensure!(completed == N as usize, "{completed} of {N} completed");
    all_stored_success(&c, &open).await?;
    eprintln!("cluster_1000: {N} payments, {completed} delivered once each, 0 lost, 0 duplicated");
    Ok(())
}

#[derive(Clone, Copy, Debug)]
enum Change {
    /// `CLUSTER FAILOVER` on a shard's replica.
    Failover,
    /// `redis-cli --cluster reshard` of this many slots from one primary to another.
    Reshard(u32),
    /// A primary is SIGKILLed; its replica is promoted; the old primary is started
    /// again and rejoins as the replica (until then `WAIT 1` fails on that shard: 503,
    /// and the callbacks are retried as Daraja would).
    Kill,
}

/// `N` payments pending with sockets on both gateways; the change lands after a third of
/// the callbacks have been accepted, while the rest stream in. Every result arrives
/// once, every node is ready again, and every stored state is final.
async fn change_under_load(name: &str, change: Change) -> Result<()> {
    const N: u32 = 300;
    let mut c = Cluster::start_with(name, cluster()).await?;
    // Taken out, so that a primary can be killed (which needs it mutable) while the
    // cluster is in use.
    let mut set = c.redis_cluster.take().context("no redis cluster")?;
    let (open, mut sockets) = split(pending_payments(&c, N).await?);
    let before = per_shard(&set, &open).await?;
    // The shard with the most payments changes.
    let (&target, _) = before
        .iter()
        .max_by_key(|(_, n)| **n)
        .context("no payments")?;
    let done = AtomicUsize::new(0);
    let act = async {
        wait::until("100 callbacks accepted", STEP * 2, || async {
            Ok((done.load(Ordering::Relaxed) >= 100).then_some(()))
        })
        .await?;
        let at = done.load(Ordering::Relaxed);
        let t = tokio::time::Instant::now();
        match change {
            Change::Kill => {
                let new = set.kill_primary(target).await?;
                eprintln!(
                    "{name}: primary {target} killed after {at} callbacks; {new} promoted in {:?}",
                    t.elapsed()
                );
                set.restart(target).await?;
                eprintln!("{name}: {target} back as a replica after {:?}", t.elapsed());
            }
            Change::Failover => {
                let new = set.failover(target).await?;
                eprintln!(
                    "{name}: primary {target} failed over to {new} after {at} callbacks, in {:?}",
                    t.elapsed()
                );
            }
            Change::Reshard(slots) => {
                let to = *before
                    .keys()
                    .find(|p| **p != target)
                    .context("only one shard")?;
                set.reshard_spawn(target, to, slots).await?.await??;
                eprintln!(
                    "{name}: {slots} slots moved from {target} to {to} after {at} callbacks, in {:?}",
                    t.elapsed()
                );
            }
        }
        Ok::<_, anyhow::Error>(())
    };
    let (delivered, acted, completed) = tokio::join!(
        deliver_all(&c, &open, &done, STEP * 4),
        act,
        each_completed_once(&open, &mut sockets, STEP * 4)
    );
    delivered?;
    acted?;
    let completed = completed?;
    ensure!(completed == N as usize, "{completed} of {N} completed");
    let after = per_shard(&set, &open).await?;
    if let Change::Reshard(_) = change {
        let moved =
            before.get(&target).copied().unwrap_or(0) - after.get(&target).copied().unwrap_or(0);
        eprintln!("{name}: payments whose slot moved: {moved}");
        ensure!(
            moved > 0,
            "no payment's slot moved: {before:?} -> {after:?}"
        );
    }
    all_ready(&c).await?;
    all_stored_success(&c, &open).await?;

    eprintln!("{name}: {N} payments, {completed} delivered once each, 0 lost, 0 duplicated");
    Ok(())
}

/// A shard fails over (`CLUSTER FAILOVER`) with callbacks streaming in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_shard_failover_under_load() -> Result<()> {
    change_under_load("cluster_failover", Change::Failover).await
}

/// A primary dies with callbacks streaming in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_primary_killed_under_load() -> Result<()> {
    change_under_load("cluster_killed", Change::Kill).await
}

/// 2,000 slots move between primaries (`redis-cli --cluster reshard`, keys and all)
/// with callbacks streaming in: the channels follow their slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_reshard_under_load() -> Result<()> {
    change_under_load("cluster_reshard", Change::Reshard(2000)).await
}

/// Cluster mode over TLS (`rediss://`, the test CA and a client certificate, TLS between
/// the nodes too): the delivery path works, and every connection of every node, the
/// shard subscribers included, is on a TLS port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mode_over_tls() -> Result<()> {
    const N: u32 = 30;
    let c = Cluster::start_with(
        "cluster_tls",
        ClusterOptions {
            redis_tls: true,
            ..cluster()
        },
    )
    .await?;
    let set = set(&c)?;
    let (open, mut sockets) = split(pending_payments(&c, N).await?);
    let subs = one_subscriber_per_shard_per_gateway(&c).await?;
    let mut clients = 0;
    for node in set.nodes() {
        let tls_port = node.tls_port().context("a node without a TLS port")?;
        for client in set.clients(node.port()).await? {
            // The nodes' own replication links aside.
            if client
                .get("flags")
                .is_some_and(|f| f.contains('S') || f.contains('M'))
            {
                continue;
            }
            let laddr = client.get("laddr").unwrap_or_default();
            ensure!(
                laddr.ends_with(&format!(":{tls_port}")),
                "a client of node {} not on its TLS port: {:?}",
                node.port(),
                client.0
            );
            clients += 1;
        }
    }
    eprintln!("cluster_tls: {clients} TLS clients on the nodes, {subs} of them shard subscribers");
    let done = AtomicUsize::new(0);
    let (delivered, completed) = tokio::join!(
        deliver_all(&c, &open, &done, STEP * 4),
        each_completed_once(&open, &mut sockets, STEP * 4)
    );
    delivered?;
    ensure!(completed? == N as usize);
    all_stored_success(&c, &open).await
}
