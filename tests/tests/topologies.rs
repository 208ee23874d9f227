//! Redis topologies other than one plain server: TLS (`rediss://` with a test CA and a
//! client certificate) and Sentinel (a primary, two replicas, three sentinels), each with
//! the whole delivery path over it, and Sentinel through a forced failover and through
//! the primary's death with 200 payments in flight, and Sentinel all over TLS through a
//! forced failover.

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{ensure, Context as _, Result};
use stk_relay_e2e::cluster::kv;
use stk_relay_e2e::inflight::{deliver_all, each_completed_once, pending_payments};
use stk_relay_e2e::redis_server::{RedisServer, TlsFiles};
use stk_relay_e2e::{daraja, expect, sim, wait, Cluster, ClusterOptions, STEP};
use stk_relay_shared::api::MessageType;

fn tls() -> ClusterOptions {
    ClusterOptions {
        redis_tls: true,
        ..ClusterOptions::default()
    }
}

fn sentinel() -> ClusterOptions {
    ClusterOptions {
        sentinel: true,
        ..ClusterOptions::default()
    }
}

/// Every node talks to Redis over TLS only (checked with `CLIENT LIST`'s local port):
/// push on one gateway, socket on the other, callback through ingest, the result once.
/// A node given another CA stays alive and not ready instead of crashing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_redis_carries_the_whole_delivery_path() -> Result<()> {
    let mut c = Cluster::start_with("tls_redis", tls()).await?;
    let tls_port = c.redis.tls_port().context("no TLS port")?;

    let p = c.push(0, &sim::phone(1, sim::MANUAL), 10).await?;
    let mut ws = c.ws_connect(1, &p.checkout_request_id, &p.token).await?;
    expect::pending(
        &ws.expect(MessageType::PaymentUpdate).await?.data,
        &p.checkout_request_id,
        10,
    )?;
    c.deliver_success(1, &p, 10, &daraja::receipt(10)).await?;
    let done = ws.expect(MessageType::PaymentCompleted).await?;
    expect::success(&done.data, &p.checkout_request_id, 10, &daraja::receipt(10))?;
    ws.expect_no_message(1, STEP).await?;

    // Every node's command connections and every gateway's subscriber are on the TLS
    // port. Only this query itself uses the plain port.
    let list = c.redis.client_list().await?;
    let mut tls_clients = 0;
    for line in list.lines().filter(|l| !l.contains("cmd=client|list")) {
        ensure!(
            line.contains(&format!("laddr=127.0.0.1:{tls_port} ")),
            "a client on the plain port: {line}"
        );
        tls_clients += 1;
    }
    let nodes = c.gateways.len() + c.ingests.len();
    ensure!(
        tls_clients >= nodes * 2,
        "{tls_clients} TLS clients for {nodes} nodes:\n{list}"
    );
    let subscribers = list.lines().filter(|l| l.contains("sub=1")).count();
    ensure!(
        subscribers >= c.gateways.len(),
        "{subscribers} subscribers over TLS:\n{list}"
    );

    // Another CA: the server certificate does not verify. The gateway stays alive and
    // answers not ready (within its command timeout), and says why in its log.
    let other = TlsFiles::generate(&c.log_dir, "other")?;
    c.gateways[1].kill().await?;
    c.respawn_gateway(
        1,
        &[kv(
            "GATEWAY__REDIS__TLS_CA_FILE",
            &other.ca_cert.display().to_string(),
        )],
    )
    .await?;
    let url = c.gateway(1).url().to_owned();
    for _ in 0..3 {
        ensure!(c.healthz(&url).await? == 200, "wrong-CA gateway not alive");
        let ready = c
            .http
            .get(format!("{url}/readyz"))
            .timeout(STEP)
            .send()
            .await?
            .status()
            .as_u16();
        ensure!(ready == 503, "wrong-CA gateway answered readyz {ready}");
    }
    let log_path = c.gateway(1).stderr_log().to_owned();
    wait::until("the certificate error in the log", STEP, || async {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        Ok(log.contains("UnknownIssuer").then_some(()))
    })
    .await?;
    Ok(())
}

#[derive(Clone, Copy, Debug)]
enum Failure {
    /// `SENTINEL FAILOVER`: the replica is promoted while the old primary still runs.
    Forced,
    /// The primary is SIGKILLed; the sentinels notice and elect the replica.
    PrimaryKilled,
}

/// The common part of both failover tests: 200 payments pending and replicated, their
/// callbacks streaming in when the failure happens (after 50 have been accepted); then
/// every result arrives once, every node is ready again, and the new primary holds every
/// final state.
async fn failover_under_load(name: &str, failure: Failure) -> Result<()> {
    const N: u32 = 200;
    let c = Cluster::start_with(name, sentinel()).await?;
    let set = c.sentinel.as_ref().context("no sentinels")?;
    let (open, mut sockets): (Vec<_>, Vec<_>) = pending_payments(&c, N)
        .await?
        .into_iter()
        .map(|(amount, p, ws)| ((amount, p), ws))
        .unzip();
    // The pending records are on the replica before the failover: a deployment gets the
    // same from `min-replicas-to-write` (see docs/reliability.md).
    let acked: i64 = c.redis.command(&["WAIT", "1", "2000"]).await?;
    ensure!(
        acked >= 1,
        "the replica did not acknowledge the pending records"
    );

    let done = AtomicUsize::new(0);
    let started = tokio::time::Instant::now();
    let old = c.redis.port();
    let fail = async {
        wait::until("50 callbacks accepted", STEP * 2, || async {
            Ok((done.load(Ordering::Relaxed) >= 50).then_some(()))
        })
        .await?;
        let at = done.load(Ordering::Relaxed);
        match failure {
            Failure::Forced => set.force_failover().await?,
            Failure::PrimaryKilled => {
                let pid = c.redis.pid().context("primary not running")?;
                let st = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status()?;
                ensure!(st.success(), "kill -9 {pid} failed");
            }
        }
        let t = tokio::time::Instant::now();
        let new = set.wait_new_master(old).await?;
        eprintln!(
            "{name}: {failure:?} after {at} callbacks; sentinels named port {new} in {:?}",
            t.elapsed()
        );
        Ok::<_, anyhow::Error>(new)
    };
    // The sockets are read all along, as browsers would (an unread socket would miss
    // its heartbeats and be closed).
    let (delivered, new_port, completed) = tokio::join!(
        deliver_all(&c, &open, &done, STEP * 4),
        fail,
        each_completed_once(&open, &mut sockets, STEP * 4)
    );
    delivered?;
    let completed = completed?;
    let new_port = new_port?;
    let promoted = set
        .replicas
        .iter()
        .find(|r| r.port() == new_port)
        .context("a replica was not promoted")?;
    eprintln!(
        "{name}: {} callbacks accepted in {:?}",
        done.load(Ordering::Relaxed),
        started.elapsed()
    );
    for i in 0..c.gateways.len() {
        c.wait_ready(c.gateway(i).url(), STEP).await?;
    }
    for i in 0..c.ingests.len() {
        c.wait_ready(c.ingest(i).url(), STEP).await?;
    }
    // Stored states. After a crash every acknowledged write is on the new primary
    // (`wait_replicas = 1`). After a forced failover the old primary keeps accepting
    // writes until the nodes move (<= 250 ms after the sentinels switch), and the other
    // replica acknowledges them until Sentinel repoints it and it resyncs from the new
    // primary, dropping them: such a result reached its browser (above), but its stored
    // state went back to PENDING until the ingest's journal applies the recent callbacks
    // again (callback-ingest/src/journal.rs), about 2.5 s after the switch. So every
    // stored state must be final within a few seconds; how many were PENDING at the
    // first look is reported.
    let regressed = AtomicUsize::new(usize::MAX);
    wait::until("every stored state final", STEP, || {
        let (c, open, regressed) = (&c, &open, &regressed);
        async move {
            let mut pending = 0;
            for (amount, p) in open {
                let id = &p.checkout_request_id;
                let s = c.payment_state(0, id, &p.token).await?;
                match expect::success(&s, id, *amount, &daraja::receipt(*amount)) {
                    Ok(()) => {}
                    Err(_)
                        if matches!(failure, Failure::Forced)
                            && expect::pending(&s, id, *amount).is_ok() =>
                    {
                        pending += 1
                    }
                    Err(e) => {
                        return Err(e.context(format!(
                            "stored state of payment {amount} after the failover"
                        )))
                    }
                }
            }
            // The first look is the one reported.
            let _ = regressed.compare_exchange(
                usize::MAX,
                pending,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            Ok((pending == 0).then_some(()))
        }
    })
    .await?;
    eprintln!(
        "{name}: stored states back to PENDING at the first look: {}; all final now",
        regressed.load(Ordering::Relaxed)
    );
    if let Failure::Forced = failure {
        // The old primary still runs (now a replica): no node is left on it, not even
        // idle pool connections that never got an error.
        wait::until("every node to leave the old primary", STEP, || async {
            let list = c.redis.client_list().await?;
            let left: Vec<&str> = list
                .lines()
                .filter(|l| {
                    !l.contains("cmd=client|list")
                        && !l.contains("name=sentinel-")
                        && !l.contains("flags=S")
                        && !l.contains("flags=M")
                })
                .collect();
            if left.is_empty() {
                Ok(Some(()))
            } else {
                Ok(None)
            }
        })
        .await?;
    }
    // The new primary holds them (not only a gateway's view).
    let role: Vec<redis::Value> = promoted.command(&["ROLE"]).await?;
    ensure!(
        matches!(role.first(), Some(redis::Value::BulkString(b)) if b.as_slice() == b"master"),
        "the promoted replica is not the primary: {role:?}"
    );
    eprintln!(
        "{name}: {N} payments, {completed} results delivered once each, 0 lost, 0 duplicated"
    );
    Ok(())
}

/// `SENTINEL FAILOVER` with 200 payments in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_forced_failover_with_200_payments_in_flight() -> Result<()> {
    failover_under_load("sentinel_forced", Failure::Forced).await
}

/// The primary is SIGKILLed with 200 payments in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_primary_killed_with_200_payments_in_flight() -> Result<()> {
    failover_under_load("sentinel_killed", Failure::PrimaryKilled).await
}

/// Sentinel mode end to end with no failure: the nodes find the primary by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_mode_delivers() -> Result<()> {
    let c = Cluster::start_with("sentinel_plain", sentinel()).await?;
    let p = c.push(0, &sim::phone(7, sim::MANUAL), 7).await?;
    let mut ws = c.ws_connect(1, &p.checkout_request_id, &p.token).await?;
    expect::pending(
        &ws.expect(MessageType::PaymentUpdate).await?.data,
        &p.checkout_request_id,
        7,
    )?;
    c.deliver_success(0, &p, 7, &daraja::receipt(7)).await?;
    let done = ws.expect(MessageType::PaymentCompleted).await?;
    expect::success(&done.data, &p.checkout_request_id, 7, &daraja::receipt(7))?;
    ws.expect_no_message(1, STEP).await
}

/// Our nodes' clients of one data node (not this query, not its link to its own
/// primary, not a replica's link or a sentinel): how many, how many subscribed, and
/// every client of any kind that is not on the node's TLS port.
async fn clients_of(server: &RedisServer) -> Result<(usize, usize, Vec<String>)> {
    let tls_port = server.tls_port().context("no TLS port")?;
    let list = server.client_list().await?;
    let (mut ours, mut subscribed, mut plain) = (0, 0, Vec::new());
    // `flags=M`: a replica's own connection to its primary (its laddr is a local
    // ephemeral port). Everything else came in through a listening port.
    for line in list
        .lines()
        .filter(|l| !l.contains("cmd=client|list") && !l.contains("flags=M"))
    {
        if !line.contains(&format!("laddr=127.0.0.1:{tls_port} ")) {
            plain.push(line.to_owned());
        }
        if !line.contains("name=sentinel-") && !line.contains("flags=S") {
            ours += 1;
            if line.contains(" sub=1") {
                subscribed += 1;
            }
        }
    }
    Ok((ours, subscribed, plain))
}

/// Sentinel with everything over TLS: `rediss://` data nodes, replication over TLS, the
/// sentinels monitoring and naming the data nodes' TLS ports and listening on TLS
/// themselves (`redis.sentinel_tls`). A forced failover with 50 payments in flight
/// (after 15 callbacks): every result arrives once, every node is ready again, every
/// stored state is final, and every client of every data node is on its TLS port.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_over_tls_fails_over_with_payments_in_flight() -> Result<()> {
    const N: u32 = 50;
    let name = "sentinel_tls";
    let c = Cluster::start_with(
        name,
        ClusterOptions {
            redis_tls: true,
            sentinel: true,
            ..ClusterOptions::default()
        },
    )
    .await?;
    let set = c.sentinel.as_ref().context("no sentinels")?;
    ensure!(set.is_tls(), "the sentinels are not TLS");
    let old = set.data_port(&c.redis);
    ensure!(
        set.master_port().await? == old,
        "the sentinels do not name the primary's TLS port {old}"
    );
    let (open, mut sockets): (Vec<_>, Vec<_>) = pending_payments(&c, N)
        .await?
        .into_iter()
        .map(|(amount, p, ws)| ((amount, p), ws))
        .unzip();
    let acked: i64 = c.redis.command(&["WAIT", "1", "2000"]).await?;
    ensure!(
        acked >= 1,
        "the replica did not acknowledge the pending records"
    );

    let done = AtomicUsize::new(0);
    let started = tokio::time::Instant::now();
    let fail = async {
        wait::until("15 callbacks accepted", STEP * 2, || async {
            Ok((done.load(Ordering::Relaxed) >= 15).then_some(()))
        })
        .await?;
        let at = done.load(Ordering::Relaxed);
        set.force_failover().await?;
        let t = tokio::time::Instant::now();
        let new = set.wait_new_master(old).await?;
        eprintln!(
            "{name}: forced failover after {at} callbacks; sentinels named TLS port {new} in {:?}",
            t.elapsed()
        );
        Ok::<_, anyhow::Error>(new)
    };
    let (delivered, new_port, completed) = tokio::join!(
        deliver_all(&c, &open, &done, STEP * 4),
        fail,
        each_completed_once(&open, &mut sockets, STEP * 4)
    );
    delivered?;
    let completed = completed?;
    let new_port = new_port?;
    let promoted = set
        .replicas
        .iter()
        .find(|r| set.data_port(r) == new_port)
        .context("a replica was not promoted")?;
    eprintln!(
        "{name}: {} callbacks accepted in {:?}",
        done.load(Ordering::Relaxed),
        started.elapsed()
    );
    for i in 0..c.gateways.len() {
        c.wait_ready(c.gateway(i).url(), STEP).await?;
    }
    for i in 0..c.ingests.len() {
        c.wait_ready(c.ingest(i).url(), STEP).await?;
    }
    // As in `failover_under_load` (Forced): a stored state may be PENDING for a while
    // until the ingest's journal applies the callback again; final within a few seconds.
    let regressed = AtomicUsize::new(usize::MAX);
    wait::until("every stored state final", STEP, || {
        let (c, open, regressed) = (&c, &open, &regressed);
        async move {
            let mut pending = 0;
            for (amount, p) in open {
                let id = &p.checkout_request_id;
                let s = c.payment_state(0, id, &p.token).await?;
                if expect::success(&s, id, *amount, &daraja::receipt(*amount)).is_err() {
                    expect::pending(&s, id, *amount)
                        .with_context(|| format!("stored state of payment {amount}"))?;
                    pending += 1;
                }
            }
            let _ = regressed.compare_exchange(
                usize::MAX,
                pending,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            Ok((pending == 0).then_some(()))
        }
    })
    .await?;
    eprintln!(
        "{name}: stored states back to PENDING at the first look: {}; all final now",
        regressed.load(Ordering::Relaxed)
    );

    // Every node has moved to the new primary over TLS (the gateways' subscribers too)
    // and left the old one.
    let nodes = c.gateways.len() + c.ingests.len();
    wait::until("every node on the new primary only", STEP, || async {
        let (ours, subscribed, _) = clients_of(promoted).await?;
        let (left, _, _) = clients_of(&c.redis).await?;
        Ok((ours >= nodes && subscribed >= c.gateways.len() && left == 0).then_some(()))
    })
    .await?;
    // Every client of every data node (ours, the replicas' links, the sentinels) is on
    // its TLS port.
    let servers = std::iter::once(("old primary".to_owned(), &c.redis)).chain(
        set.replicas
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("replica{i}"), r)),
    );
    for (label, server) in servers {
        let (ours, subscribed, plain) = clients_of(server).await?;
        ensure!(
            plain.is_empty(),
            "{label} {}: clients on the plain port:\n{}",
            server.port(),
            plain.join("\n")
        );
        let role = if std::ptr::eq(server, promoted) {
            format!("{label}, the new primary,")
        } else {
            label
        };
        eprintln!(
            "{name}: {role} (TLS port {}): {ours} clients of our nodes ({subscribed} subscribed), all on TLS",
            server.tls_port().unwrap_or_default()
        );
    }
    let role: Vec<redis::Value> = promoted.command(&["ROLE"]).await?;
    ensure!(
        matches!(role.first(), Some(redis::Value::BulkString(b)) if b.as_slice() == b"master"),
        "the promoted replica is not the primary: {role:?}"
    );
    eprintln!(
        "{name}: {N} payments, {completed} results delivered once each, 0 lost, 0 duplicated"
    );
    Ok(())
}
