//! Running the operator CLI, `stk-relay-admin`, against a test cluster: as its own
//! process, with the environment a gateway of the cluster runs with.

use std::process::Output;

use anyhow::{ensure, Context as _, Result};
use serde_json::Value;

use crate::cluster::kv;
use crate::{bins, sim, Cluster, STEP};

/// The environment a gateway of `c` runs with (the harness's gateway settings): its
/// Redis Cluster when it has one, else its one redis-server.
pub fn gateway_env(c: &Cluster) -> Vec<(String, String)> {
    let redis = match &c.redis_cluster {
        Some(set) => vec![
            kv("GATEWAY__REDIS__URL", "redis://cluster.invalid:6379"),
            kv("GATEWAY__REDIS__MODE", "cluster"),
            kv("GATEWAY__REDIS__CLUSTER_NODES", &set.seeds()),
        ],
        None => vec![kv("GATEWAY__REDIS__URL", &c.redis.url())],
    };
    let rest = vec![
        kv("GATEWAY__REDIS__KEY_PREFIX", &c.key_prefix),
        kv("GATEWAY__API__KEYS", &c.api_key),
        kv("GATEWAY__TOKENS__SUBSCRIBE_SECRET", &c.subscribe_secret),
        kv("GATEWAY__TOKENS__CALLBACK_SECRET", &c.callback_secret),
        kv("GATEWAY__CALLBACKS__PUBLIC_BASE_URL", c.ingest(0).url()),
        kv("GATEWAY__DARAJA__BASE_URL", c.sim.url()),
        kv("GATEWAY__DARAJA__CONSUMER_KEY", sim::CONSUMER_KEY),
        kv("GATEWAY__DARAJA__CONSUMER_SECRET", sim::CONSUMER_SECRET),
        kv("GATEWAY__DARAJA__PASSKEY", sim::PASSKEY),
        kv("GATEWAY__DARAJA__SHORTCODE", sim::SHORTCODE),
    ];
    [redis, rest].concat()
}

/// Runs `stk-relay-admin args…` with `env`, bounded by [`STEP`].
pub async fn admin(env: &[(String, String)], args: &[&str]) -> Result<Output> {
    let bins = tokio::task::spawn_blocking(bins::binaries).await?;
    let mut cmd = tokio::process::Command::new(&bins.admin);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env_remove("GATEWAY_CONFIG")
        .kill_on_drop(true);
    tokio::time::timeout(STEP, cmd.output())
        .await
        .with_context(|| format!("stk-relay-admin {args:?} did not finish within {STEP:?}"))?
        .with_context(|| format!("running stk-relay-admin {args:?}"))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs it and checks the exit code (`ok`: 0, else 1); returns stdout.
pub async fn run(env: &[(String, String)], args: &[&str], ok: bool) -> Result<String> {
    let o = admin(env, args).await?;
    let out = stdout(&o);
    ensure!(
        o.status.code() == Some(if ok { 0 } else { 1 }),
        "stk-relay-admin {args:?} exited {:?}\nstdout:\n{out}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(out)
}

pub async fn run_json(env: &[(String, String)], args: &[&str], ok: bool) -> Result<Value> {
    let args = [args, &["--json"]].concat();
    let out = run(env, &args, ok).await?;
    serde_json::from_str(&out).with_context(|| format!("{args:?}: not one JSON document:\n{out}"))
}
