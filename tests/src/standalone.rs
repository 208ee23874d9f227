//! The standalone process (`stk-relay`) as a child of the harness: in memory, with its
//! in-process simulator and the demo, on a free port.

use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};

use crate::bins::{self, Binaries};
use crate::cluster::kv;
use crate::process::Node;

pub struct StandaloneNode {
    pub node: Node,
    pub log_dir: PathBuf,
}

impl StandaloneNode {
    /// Starts `stk-relay` with its defaults on a free loopback port; `env` is added
    /// (`STK_RELAY__…` variables).
    pub async fn start(name: &str, env: &[(String, String)]) -> Result<Self> {
        let bins: &'static Binaries = tokio::task::spawn_blocking(bins::binaries)
            .await
            .map_err(|e| anyhow!("building the service binaries panicked: {e}"))?;
        let log_dir = bins.target_dir.join("e2e-logs").join(name);
        let _ = std::fs::remove_dir_all(&log_dir);
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        eprintln!("e2e: {name}: logs in {}", log_dir.display());
        let level = std::env::var("STK_E2E_LOG_LEVEL").unwrap_or_else(|_| "info".into());
        let base = vec![
            kv("STK_RELAY__SERVER__HOST", "127.0.0.1"),
            kv("STK_RELAY__SERVER__PORT", "0"),
            kv("STK_RELAY__TELEMETRY__LEVEL", &level),
        ];
        let env = [base, env.to_vec()].concat();
        let node = Node::spawn("stk-relay", &bins.standalone, &[], &env, &log_dir)
            .await
            .context("starting stk-relay")?;
        Ok(Self { node, log_dir })
    }

    pub fn url(&self) -> &str {
        self.node.url()
    }
}
