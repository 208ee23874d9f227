//! `stk-relay-admin` (issue 10, part 3) against a real cluster: the binary runs as its own
//! process with the gateway's environment, and reads what the gateway and the ingest
//! wrote: a completed and a pending payment, the pending list, an ingest's spool (empty,
//! then holding a callback spooled while Redis was down), and `doctor` on the test
//! configuration (plain-http callback URL: FAIL with its fix; Redis and OAuth: PASS).
//! The same reads then run against a Redis Cluster (`redis.mode = "cluster"`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context as _, Result};
use stk_relay_e2e::admin::{admin, gateway_env, run, run_json, stdout};
use stk_relay_e2e::cluster::kv;
use stk_relay_e2e::{daraja, random_alnum, sim, wait, Cluster, ClusterOptions, STEP};

/// A fresh spool directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Result<Self> {
        let d = std::env::temp_dir().join(format!("stk-e2e-admin-{tag}-{}", random_alnum(10)));
        std::fs::create_dir_all(&d)?;
        Ok(Self(d))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every secret of the cluster's configuration, named.
fn secrets_of(c: &Cluster) -> Vec<(&'static str, String)> {
    vec![
        ("API key", c.api_key.clone()),
        ("subscribe secret", c.subscribe_secret.clone()),
        ("callback secret", c.callback_secret.clone()),
        ("consumer key", sim::CONSUMER_KEY.to_owned()),
        ("consumer secret", sim::CONSUMER_SECRET.to_owned()),
        ("passkey", sim::PASSKEY.to_owned()),
    ]
}

/// The `type` of each history entry in `payment show --json`'s output, in order.
fn history_kinds(j: &serde_json::Value) -> Result<Vec<&str>> {
    Ok(j["history"]["entries"]
        .as_array()
        .with_context(|| format!("no history in the JSON: {j}"))?
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect())
}

fn masked(phone: &str) -> String {
    format!("{}******{}", &phone[..4], &phone[phone.len() - 2..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reads_payments_spool_and_checks_the_node() -> Result<()> {
    let spool = TempDir::new("spool")?;
    let opts = ClusterOptions {
        gateways: 1,
        ingests: 1,
        ingest_env_each: vec![vec![kv(
            "INGEST__CALLBACKS__SPOOL_DIR",
            &spool.path().display().to_string(),
        )]],
        ..ClusterOptions::default()
    };
    let mut c = Cluster::start_with("admin", opts).await?;
    let env = gateway_env(&c);

    // One completed payment and two pending ones.
    let done_phone = sim::phone(1, sim::MANUAL);
    let done = c.push(0, &done_phone, 150).await?;
    let receipt = daraja::receipt(1);
    c.deliver_success(0, &done, 150, &receipt).await?;
    let pending_phones = [sim::phone(2, sim::MANUAL), sim::phone(3, sim::MANUAL)];
    let mut pending = Vec::new();
    for (i, phone) in pending_phones.iter().enumerate() {
        pending.push(c.push(0, phone, 20 + i as u32).await?);
    }
    let all_phones: Vec<&str> = std::iter::once(done_phone.as_str())
        .chain(pending_phones.iter().map(String::as_str))
        .collect();
    let tokens: Vec<&str> = std::iter::once(done.token.as_str())
        .chain(pending.iter().map(|p| p.token.as_str()))
        .collect();
    let secrets = secrets_of(&c);
    // No secret, subscribe token or full phone number in any output.
    let check = |out: &str| -> Result<()> {
        for (what, s) in &secrets {
            ensure!(!out.contains(s.as_str()), "output shows the {what}:\n{out}");
        }
        for p in &all_phones {
            ensure!(!out.contains(p), "output shows the full phone {p}:\n{out}");
        }
        for t in &tokens {
            ensure!(!out.contains(t), "output shows a subscribe token:\n{out}");
        }
        Ok(())
    };

    // payment show: completed, table and JSON.
    let id = done.checkout_request_id.as_str();
    let table = run(&env, &["payment", "show", id], true).await?;
    check(&table)?;
    for want in [
        "SUCCESS",
        receipt.as_str(),
        "150",
        &masked(&done_phone),
        "CALLBACK",
        id,
    ] {
        ensure!(
            table.contains(want),
            "`payment show` lacks {want:?}:\n{table}"
        );
    }
    let j = run_json(&env, &["payment", "show", id], true).await?;
    check(&j.to_string())?;
    ensure!(j["found"] == true, "{j}");
    let st = &j["state"];
    ensure!(
        st["status"] == "SUCCESS"
            && st["mpesaReceiptNumber"] == receipt.as_str()
            && st["amount"] == 150
            && st["phoneNumber"] == masked(&done_phone).as_str()
            && st["resultCode"] == 0
            && st["resultSource"] == "CALLBACK"
            && st["version"] == 2
            && st["completedAt"].is_string()
            && j.get("nextQueryAt").is_none(),
        "completed payment: {j}"
    );
    // Its history: the table's lines, and the same entries in the JSON.
    let lines: Vec<&str> = table.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("history: 3 entries"))
        .with_context(|| format!("no history header:\n{table}"))?;
    let entries = &lines[at + 2..];
    ensure!(
        entries.len() == 3
            && entries[0].contains(" pushed ")
            && entries[0].contains("accountReference=E2E")
            && entries[0].contains(&format!("phoneNumber={}", masked(&done_phone)))
            && entries[1].contains(" callback ")
            && entries[1].contains("decision=applied")
            && entries[1].contains(&format!("mpesaReceiptNumber={receipt}"))
            && entries[2].contains(" final ")
            && entries[2].contains("cause=callback")
            && entries[2].contains("status=SUCCESS"),
        "history lines:\n{table}"
    );
    let kinds = history_kinds(&j)?;
    ensure!(
        kinds == ["pushed", "callback", "final"] && j["history"]["truncated"] == 0,
        "history in the JSON: {j}"
    );
    ensure!(
        j["history"]["entries"][1]["decision"] == "applied"
            && j["history"]["entries"][2]["cause"] == "callback",
        "{j}"
    );

    // payment show: pending.
    let pid = pending[0].checkout_request_id.as_str();
    let table = run(&env, &["payment", "show", pid], true).await?;
    check(&table)?;
    ensure!(
        table.contains("PENDING") && table.contains(&masked(&pending_phones[0])),
        "{table}"
    );
    let j = run_json(&env, &["payment", "show", pid], true).await?;
    ensure!(
        j["state"]["status"] == "PENDING"
            && j["state"]["version"] == 1
            && j["state"]["amount"] == 20
            && j["state"]["completedAt"].is_null()
            && j["nextQueryAt"].is_string(),
        "pending payment: {j}"
    );
    ensure!(
        table.contains("history: 1 entry") && j["history"]["entries"][0]["type"] == "pushed",
        "pending payment's history: {table}\n{j}"
    );

    // An unknown id: a clear message and exit code 1.
    let out = run(
        &env,
        &["payment", "show", "ws_CO_000000000000unknown"],
        false,
    )
    .await?;
    ensure!(
        out.contains("no payment ws_CO_000000000000unknown"),
        "{out}"
    );
    let j = run_json(
        &env,
        &["payment", "show", "ws_CO_000000000000unknown"],
        false,
    )
    .await?;
    ensure!(j["found"] == false, "{j}");

    // payments pending: exactly the two pending ones.
    let j = run_json(&env, &["payments", "pending", "--older-than", "0s"], true).await?;
    check(&j.to_string())?;
    let listed: BTreeSet<&str> = j["pending"]
        .as_array()
        .context("pending is not a list")?
        .iter()
        .filter_map(|p| p["checkoutRequestId"].as_str())
        .collect();
    let want: BTreeSet<&str> = pending
        .iter()
        .map(|p| p.checkout_request_id.as_str())
        .collect();
    ensure!(listed == want, "listed {listed:?}, want {want:?}: {j}");
    let table = run(&env, &["payments", "pending", "--older-than", "0s"], true).await?;
    check(&table)?;
    ensure!(
        want.iter().all(|id| table.contains(id)) && !table.contains(id),
        "{table}"
    );
    let j = run_json(&env, &["payments", "pending", "--older-than", "2h"], true).await?;
    ensure!(j["pending"].as_array().is_some_and(Vec::is_empty), "{j}");

    // doctor: the test's callback URL is plain http on loopback.
    let o = admin(&env, &["doctor"]).await?;
    let table = stdout(&o);
    check(&table)?;
    ensure!(
        o.status.code() == Some(1),
        "doctor exited {:?}:\n{table}",
        o.status
    );
    let line = |name: &str| {
        table
            .lines()
            .find(|l| l.contains(name))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    ensure!(line("callback URL is https").starts_with("FAIL"), "{table}");
    ensure!(
        table.contains("fix: set callbacks.public_base_url"),
        "{table}"
    );
    for pass in [
        "gateway configuration is valid",
        "callback URL has no whitespace",
        "callback URL avoids",
        "callback host resolves",
        "/healthz",
        "Daraja OAuth",
        "Redis PING",
    ] {
        ensure!(line(pass).starts_with("PASS"), "{pass}:\n{table}");
    }
    let j = run_json(&env, &["doctor"], false).await?;
    check(&j.to_string())?;
    let checks = j["checks"].as_array().context("checks")?;
    let https = checks
        .iter()
        .find(|c| c["name"] == "callback URL is https")
        .context("no https check")?;
    ensure!(
        https["pass"] == false
            && https["fix"]
                .as_str()
                .is_some_and(|f| f.contains("https://")),
        "{j}"
    );
    ensure!(
        checks.iter().filter(|c| c["pass"] == false).count() == 1,
        "only the https check may fail: {j}"
    );

    // spool status: a directory no ingest uses, then the running ingest's empty spool.
    let idle = TempDir::new("idle")?;
    let dir = idle.path().display().to_string();
    let j = run_json(&env, &["spool", "status", "--dir", &dir], true).await?;
    ensure!(
        j["records"] == 0 && j["bytes"] == 0 && j["lock"]["held"] == false,
        "{j}"
    );
    let dir = spool.path().display().to_string();
    let ingest_pid = c.ingest(0).pid();
    let j = run_json(&env, &["spool", "status", "--dir", &dir], true).await?;
    ensure!(
        j["records"] == 0 && j["lock"]["held"] == true && j["lock"]["pid"] == ingest_pid,
        "{j}"
    );
    let table = run(&env, &["spool", "status", "--dir", &dir], true).await?;
    ensure!(
        table.contains("records    0") && table.contains(&format!("held by pid {ingest_pid}")),
        "{table}"
    );

    // With Redis down, a callback is acknowledged from the spool; the admin sees it.
    let path = c.callback_path_for(pid).await?;
    c.redis.kill().await?;
    wait::until("ingest0 spooling", STEP, || async {
        let (status, body) = c.readyz_json(c.ingest(0).url()).await?;
        Ok((status == 200 && body["status"] == "spooling").then_some(()))
    })
    .await?;
    let body = daraja::success(
        &pending[0].merchant_request_id,
        pid,
        20,
        &daraja::receipt(2),
        &pending_phones[0],
    );
    c.deliver_callback(0, &path, &body).await?;
    let j = run_json(&env, &["spool", "status", "--dir", &dir], true).await?;
    ensure!(
        j["records"] == 1
            && j["bytes"].as_u64().is_some_and(|b| b > 0)
            && j["segments"] == 1
            && j["oldestReceivedAt"].is_string()
            && j["oldestAgeSecs"].as_u64().is_some_and(|a| a < 60)
            && j["lock"]["held"] == true,
        "{j}"
    );
    let table = run(&env, &["spool", "status", "--dir", &dir], true).await?;
    check(&table)?;
    ensure!(
        table.contains("records    1") && !table.contains(&path),
        "{table}"
    );
    Ok(())
}

/// The same reads with `redis.mode = "cluster"`: the admin reaches the payment keys and
/// the due set (different slots) through the shared cluster topology.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reads_a_redis_cluster() -> Result<()> {
    let opts = ClusterOptions {
        gateways: 1,
        ingests: 1,
        redis_cluster: true,
        ..ClusterOptions::default()
    };
    let c = Cluster::start_with("admin_redis_cluster", opts).await?;
    let env = gateway_env(&c);
    let done = c.push(0, &sim::phone(11, sim::MANUAL), 300).await?;
    let receipt = daraja::receipt(11);
    c.deliver_success(0, &done, 300, &receipt).await?;
    let pending = c.push(0, &sim::phone(12, sim::MANUAL), 40).await?;

    let j = run_json(&env, &["payment", "show", &done.checkout_request_id], true).await?;
    ensure!(
        j["state"]["status"] == "SUCCESS" && j["state"]["mpesaReceiptNumber"] == receipt.as_str(),
        "{j}"
    );
    // The history list shares the payment's slot: payment.lua wrote it in Cluster mode.
    let kinds = history_kinds(&j)?;
    ensure!(kinds == ["pushed", "callback", "final"], "{j}");
    let j = run_json(
        &env,
        &["payment", "show", &pending.checkout_request_id],
        true,
    )
    .await?;
    ensure!(j["state"]["status"] == "PENDING", "{j}");
    let j = run_json(&env, &["payments", "pending", "--older-than", "0s"], true).await?;
    let listed: Vec<&str> = j["pending"]
        .as_array()
        .context("pending is not a list")?
        .iter()
        .filter_map(|p| p["checkoutRequestId"].as_str())
        .collect();
    ensure!(
        listed == [pending.checkout_request_id.as_str()],
        "listed {listed:?}: {j}"
    );
    let j = run_json(&env, &["doctor"], false).await?;
    let redis = j["checks"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "Redis PING"))
        .context("no Redis check")?;
    ensure!(
        redis["pass"] == true
            && redis["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("cluster")),
        "{j}"
    );
    Ok(())
}
