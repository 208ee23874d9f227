//! A Sentinel-managed Redis on one machine: the primary (a [`RedisServer`] the caller
//! started), two replicas (so that one is left to acknowledge `WAIT` after the other is
//! promoted), and three `redis-server --sentinel` processes with generated
//! configurations, all on free ports of 127.0.0.1. No extra package: Debian's
//! `redis-server` runs as a sentinel with `--sentinel`.
//!
//! Failure detection is fast for tests: `down-after-milliseconds` 3000, quorum 2, and
//! `failover-timeout` 2000: when the three sentinels split their votes (each notices
//! the death at once and votes for itself), the next election comes after 4 s instead
//! of the 20 s that the default would make, longer than the tests wait for a result.
//! Not below 3000: with 1000, on a loaded 2-core machine (CI), two sentinels once found
//! the replica they had just promoted silent for a second and failed over a second
//! time; the demoted node then rejoined as a replica only after Sentinel's 10 s role
//! check (and a full sync after Redis's 5 s diskless-sync delay), so the new primary had
//! no replica to acknowledge `WAIT` for 15 s and every write was refused that long (CI,
//! 2026-12-03: a result later than the test waited). The delay is left at Redis's default:
//! with `repl-diskless-sync-delay 0` the Redis Cluster harness test failed 3 of 6 runs (a
//! primary restarted as a replica left its successor in `cluster_state:fail`).
//!
//! With TLS files ([`SentinelSet::start`]'s `tls`, the primary started with
//! [`RedisOptions::tls`] and [`RedisOptions::tls_replication`]) everything is TLS: the
//! replicas sync from the primary's TLS port and announce their own, the sentinels
//! monitor the primary's TLS port and reach every node and each other over TLS
//! (`tls-replication yes`, presenting the client certificate), so every address they
//! name is a TLS one, and they listen on a TLS port ([`SentinelSet::addrs`]) besides
//! their plain one, which stays for the harness's own queries, as with
//! [`RedisServer`]. Client certificates are optional (`tls-auth-clients optional`), as
//! on the data nodes.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{anyhow, bail, Context as _, Result};
use tokio::process::{Child, Command};

use crate::redis_server::{free_port, RedisOptions, RedisServer, TlsFiles};
use crate::{wait, STEP};

/// The name the sentinels monitor the primary under.
pub const MASTER_NAME: &str = "stk-e2e";

/// One sentinel process.
pub struct Sentinel {
    /// The plain port (the harness's queries).
    pub port: u16,
    /// The TLS port, when started with TLS files.
    pub tls_port: Option<u16>,
    _child: Child,
}

/// The replicas and the sentinels watching a primary.
pub struct SentinelSet {
    pub replicas: Vec<RedisServer>,
    pub sentinels: Vec<Sentinel>,
    tls: bool,
}

fn program() -> String {
    std::env::var("STK_E2E_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned())
}

impl SentinelSet {
    /// Starts two replicas of `primary` and `n` sentinels, and waits until the replicas
    /// are in sync and every sentinel knows them and the other sentinels. With `tls`
    /// (the primary's certificates; it must have been started with them and with
    /// [`RedisOptions::tls_replication`]) all of it is TLS, see the module comment.
    pub async fn start(
        log_dir: &Path,
        primary: &RedisServer,
        n: usize,
        tls: Option<&TlsFiles>,
    ) -> Result<Self> {
        let primary_port = match tls {
            Some(_) => primary
                .tls_port()
                .context("sentinel over TLS needs a primary with a TLS port")?,
            None => primary.port(),
        };
        let mut replicas = Vec::new();
        for i in 0..2 {
            replicas.push(
                RedisServer::start(
                    log_dir,
                    RedisOptions {
                        replica_of: Some(primary_port),
                        name: Some(format!("replica{i}")),
                        tls: tls.cloned(),
                        tls_replication: tls.is_some(),
                        ..RedisOptions::default()
                    },
                )
                .await
                .with_context(|| format!("starting replica{i}"))?,
            );
        }
        let mut sentinels = Vec::with_capacity(n);
        for i in 0..n {
            sentinels.push(
                Sentinel::start(log_dir, i, primary_port, tls)
                    .await
                    .with_context(|| format!("starting sentinel{i}"))?,
            );
        }
        let set = Self {
            replicas,
            sentinels,
            tls: tls.is_some(),
        };
        set.wait_settled(primary_port).await?;
        Ok(set)
    }

    /// Whether everything is TLS (see the module comment).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The port of `server` that the sentinels monitor and name: its TLS port when the
    /// set is TLS, else its plain port.
    pub fn data_port(&self, server: &RedisServer) -> u16 {
        match (self.tls, server.tls_port()) {
            (true, Some(p)) => p,
            _ => server.port(),
        }
    }

    /// `host:port,host:port,…` of the sentinels, for the nodes: their TLS ports when
    /// the set is TLS.
    pub fn addrs(&self) -> String {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.tls_port.unwrap_or(s.port)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until every sentinel names `primary_port` as the primary, knows every replica
    /// in sync and the other sentinels. (Ports as the sentinels name them:
    /// [`SentinelSet::data_port`].)
    pub async fn wait_settled(&self, primary_port: u16) -> Result<()> {
        let others = self.sentinels.len().saturating_sub(1);
        let want = self.replicas.len();
        wait::until("sentinels to settle", STEP * 4, || async move {
            for s in &self.sentinels {
                if s.master_port().await? != primary_port {
                    return Ok(None);
                }
                let replicas: Vec<Vec<String>> =
                    s.command(&["SENTINEL", "replicas", MASTER_NAME]).await?;
                let linked = replicas
                    .iter()
                    .filter(|r| {
                        let flags = field(r, "flags").unwrap_or_default();
                        field(r, "master-link-status") == Some("ok")
                            && flags.contains("slave")
                            && !flags.contains("down")
                    })
                    .count()
                    >= want;
                let peers: Vec<Vec<String>> =
                    s.command(&["SENTINEL", "sentinels", MASTER_NAME]).await?;
                if !linked || peers.len() < others {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        })
        .await
    }

    /// The primary's port according to the first sentinel that answers.
    pub async fn master_port(&self) -> Result<u16> {
        let mut last = anyhow!("no sentinel");
        for s in &self.sentinels {
            match s.master_port().await {
                Ok(p) => return Ok(p),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Waits until every sentinel names another primary than `old_port`; returns it.
    pub async fn wait_new_master(&self, old_port: u16) -> Result<u16> {
        wait::until("sentinels to name a new primary", STEP * 4, || async move {
            let mut seen = None;
            for s in &self.sentinels {
                let p = s.master_port().await?;
                if p == old_port || seen.is_some_and(|q| q != p) {
                    return Ok(None);
                }
                seen = Some(p);
            }
            Ok(seen)
        })
        .await
    }

    /// `SENTINEL FAILOVER`: promote the replica now, without agreement.
    pub async fn force_failover(&self) -> Result<()> {
        let s = self
            .sentinels
            .first()
            .ok_or_else(|| anyhow!("no sentinel"))?;
        let ok: String = s.command(&["SENTINEL", "FAILOVER", MASTER_NAME]).await?;
        if ok != "OK" {
            bail!("SENTINEL FAILOVER: {ok}");
        }
        Ok(())
    }
}

/// The value after `name` in a flat `[name, value, …]` reply.
fn field<'a>(flat: &'a [String], name: &str) -> Option<&'a str> {
    flat.chunks(2)
        .find(|kv| kv.first().map(String::as_str) == Some(name))
        .and_then(|kv| kv.get(1))
        .map(String::as_str)
}

impl Sentinel {
    async fn start(
        log_dir: &Path,
        i: usize,
        primary_port: u16,
        tls: Option<&TlsFiles>,
    ) -> Result<Self> {
        let port = free_port().await?;
        let tls_port = match tls {
            Some(_) => Some(free_port().await?),
            None => None,
        };
        let conf: PathBuf = log_dir.join(format!("sentinel{i}.conf"));
        let dir = log_dir.join(format!("sentinel{i}-data"));
        std::fs::create_dir_all(&dir)?;
        let mut text = format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\n",
            dir = dir.display()
        );
        if let (Some(files), Some(tls_port)) = (tls, tls_port) {
            // `tls-replication yes`: the sentinel connects to the data nodes and to the
            // other sentinels over TLS, and announces its TLS port to them.
            text.push_str(&format!(
                "tls-port {tls_port}\n\
                 tls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
                 tls-client-cert-file {}\ntls-client-key-file {}\n\
                 tls-auth-clients optional\ntls-replication yes\n",
                files.server_cert.display(),
                files.server_key.display(),
                files.ca_cert.display(),
                files.client_cert.display(),
                files.client_key.display(),
            ));
        }
        text.push_str(&format!(
            "sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} 2\n\
             sentinel down-after-milliseconds {MASTER_NAME} 3000\n\
             sentinel failover-timeout {MASTER_NAME} 2000\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n"
        ));
        std::fs::write(&conf, text)?;
        let log_path = log_dir.join(format!("sentinel{i}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let log2 = log.try_clone()?;
        let child = Command::new(program())
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .kill_on_drop(true)
            .spawn()
            .context("spawning redis-server --sentinel")?;
        let s = Self {
            port,
            tls_port,
            _child: child,
        };
        wait::until("sentinel PING", STEP, || async {
            Ok(s.command::<String>(&["PING"]).await.ok())
        })
        .await
        .with_context(|| format!("see {}", log_path.display()))?;
        Ok(s)
    }

    async fn command<T: redis::FromRedisValue>(&self, args: &[&str]) -> Result<T> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", self.port))?;
        let mut conn = tokio::time::timeout(STEP, client.get_multiplexed_async_connection())
            .await
            .context("connecting to a sentinel")??;
        let mut cmd = redis::cmd(args.first().copied().unwrap_or("PING"));
        for a in args.iter().skip(1) {
            cmd.arg(*a);
        }
        Ok(tokio::time::timeout(STEP, cmd.query_async(&mut conn))
            .await
            .with_context(|| format!("{args:?} timed out"))??)
    }

    async fn master_port(&self) -> Result<u16> {
        let addr: Option<(String, String)> = self
            .command(&["SENTINEL", "get-master-addr-by-name", MASTER_NAME])
            .await?;
        let (_, port) = addr.ok_or_else(|| anyhow!("sentinel does not know the primary"))?;
        Ok(port.parse()?)
    }
}
