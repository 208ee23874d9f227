//! The cross-process end-to-end harness: it runs the real binaries against a real
//! `redis-server` and checks the public contract from the outside.
//!
//! - [`bins`]: finds the service binaries under the target dir, building them once if needed.
//! - [`redis_server`]: a private `redis-server` on a free port that can be killed and restarted.
//! - [`sentinel`]: a replica and three sentinels around a [`redis_server`], for failover tests.
//! - [`redis_cluster`]: a Redis Cluster of [`redis_server`] nodes (primaries with a replica
//!   each) that can fail over, lose a primary and reshard under load.
//! - [`process`]: a running service process: its URL, its logs, `kill` and `terminate`.
//! - [`cluster`]: one Redis, the simulator, two gateways and two ingest nodes, plus the
//!   merchant-side and browser-side helpers the tests use.
//! - [`sim`]: the simulator's control API (`/sim/records`, `/sim/complete`, …).
//! - [`daraja`]: Daraja-format callback bodies, built in Daraja's exact shape.
//! - [`expect`]: shared checks on a payment's state.
//! - [`ws`] and [`sse`]: small browser clients that yield parsed server messages.
//! - [`wait`]: bounded waiting on a condition (readiness), never a fixed sleep.
//! - [`browser`]: runs the headless-Chromium scripts of `tests/browser/` and reads their events.
//! - [`standalone`]: the `stk-relay` process (memory, simulator, demo) on a free port.
//! - [`proxy`]: a load-balancer stand-in in front of gateways that can refuse upgrades or paths.
//! - [`nginx`]: Debian's nginx running `deploy/nginx/stk-relay.conf` in front of the cluster.
//! - [`admin`]: runs `stk-relay-admin` with a cluster gateway's environment.
//! - [`webhook_receiver`]: a merchant's webhook endpoint whose answers a test scripts.
//!
//! Running: `cargo test -p stk-relay-e2e` (needs `redis-server` on `PATH`, or
//! `STK_E2E_REDIS_SERVER=<path>`, and `redis-cli` or `STK_E2E_REDIS_CLI=<path>` for
//! [`redis_cluster`]; `tests/tests/nginx.rs` also needs Debian's `nginx`, at
//! `/usr/sbin/nginx` or `STK_E2E_NGINX=<path>`; the service binaries are built on first use when stale,
//! see [`bins`]). Logs of every process: `target/e2e-logs/<test>/`. The benchmark:
//! `cargo run --release -p stk-relay-e2e --bin e2e-bench -- --payments 1000`.
//!
//! Every await in the harness is bounded by [`STEP`] unless stated otherwise, so a broken
//! system fails a test quickly instead of hanging it.

pub mod admin;
pub mod bins;
pub mod browser;
pub mod cluster;
pub mod daraja;
pub mod expect;
pub mod inflight;
pub mod nginx;
pub mod process;
pub mod proxy;
pub mod redis_cluster;
pub mod redis_server;
pub mod sentinel;
pub mod sim;
pub mod sse;
pub mod standalone;
pub mod wait;
pub mod webhook_receiver;
pub mod ws;

use std::time::Duration;

pub use cluster::{Cluster, ClusterOptions};

/// The bound on one await: a message, a response, a readiness check.
pub const STEP: Duration = Duration::from_secs(10);

/// A random lowercase alphanumeric string, for secrets, key prefixes and receipts.
pub fn random_alnum(len: usize) -> String {
    use rand::distributions::Alphanumeric;
    use rand::Rng as _;
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(|b| char::from(b).to_ascii_lowercase())
        .collect()
}
