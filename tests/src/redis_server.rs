//! A private `redis-server` child process on a free port.
//!
//! It binds 127.0.0.1 only, is killed when dropped, and can be killed (SIGKILL) and
//! restarted on the same port, so a test can take Redis away from running services.
//! By default it keeps nothing on disk; with [`RedisOptions::persistent`] it writes an
//! append-only file with `fsync` on every write, so state survives `kill -9`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

use crate::wait;

/// How a test's Redis is configured.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedisOptions {
    /// Append-only file with `appendfsync always`, so data survives SIGKILL.
    pub persistent: bool,
}

/// A running (or deliberately stopped) `redis-server`.
pub struct RedisServer {
    port: u16,
    opts: RedisOptions,
    log_path: PathBuf,
    data_dir: PathBuf,
    child: Option<Child>,
}

/// A free TCP port on 127.0.0.1: bind port 0, read the port, release it.
pub async fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn redis_server_program() -> String {
    std::env::var("STK_E2E_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned())
}

impl RedisServer {
    /// Starts Redis on a free port and waits until it answers PING. `log_dir` receives
    /// `redis.log` (and the AOF directory when persistent).
    pub async fn start(log_dir: &Path, opts: RedisOptions) -> Result<Self> {
        let log_path = log_dir.join("redis.log");
        let data_dir = log_dir.join("redis-data");
        if opts.persistent {
            // Fresh data for a fresh test run: a leftover AOF would leak old state in.
            let _ = std::fs::remove_dir_all(&data_dir);
            std::fs::create_dir_all(&data_dir)
                .with_context(|| format!("creating {}", data_dir.display()))?;
        }
        // Another process may take the free port between our probe and Redis's bind;
        // then Redis exits, and we try another port.
        let mut last = None;
        for _ in 0..5 {
            let port = free_port().await?;
            let mut server = Self {
                port,
                opts,
                log_path: log_path.clone(),
                data_dir: data_dir.clone(),
                child: None,
            };
            match server.spawn_and_wait().await {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("redis-server did not start")))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// SIGKILL, and wait for the process to be gone. The port is free afterwards.
    pub async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.start_kill().ok();
            tokio::time::timeout(crate::STEP, child.wait())
                .await
                .context("redis-server did not exit after SIGKILL")??;
        }
        Ok(())
    }

    /// Starts Redis again on the same port (killing it first if it still runs) and waits
    /// until it answers PING (after loading its AOF, when persistent).
    pub async fn restart(&mut self) -> Result<()> {
        self.kill().await?;
        self.spawn_and_wait()
            .await
            .with_context(|| format!("restarting redis on port {}", self.port))
    }

    /// A control connection that stays open (so it keeps working while `maxclients`
    /// refuses new connections).
    pub async fn control(&self) -> Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url())?;
        tokio::time::timeout(crate::STEP, client.get_multiplexed_async_connection())
            .await
            .context("connecting to redis")?
            .context("connecting to redis")
    }

    /// Runs one command on a fresh connection (for test control: `CLIENT KILL`, `ACL`).
    pub async fn command<T: redis::FromRedisValue>(&self, args: &[&str]) -> Result<T> {
        let client = redis::Client::open(self.url())?;
        let mut conn = tokio::time::timeout(crate::STEP, client.get_multiplexed_async_connection())
            .await
            .context("connecting to redis")??;
        let mut cmd = redis::cmd(args.first().copied().unwrap_or("PING"));
        for a in args.iter().skip(1) {
            cmd.arg(*a);
        }
        let v = tokio::time::timeout(crate::STEP, cmd.query_async(&mut conn))
            .await
            .with_context(|| format!("{args:?} timed out"))?
            .with_context(|| format!("{args:?}"))?;
        Ok(v)
    }

    /// `CLIENT LIST`, raw.
    pub async fn client_list(&self) -> Result<String> {
        self.command(&["CLIENT", "LIST"]).await
    }

    async fn spawn_and_wait(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        let log2 = log.try_clone()?;
        let port = self.port;
        let port_arg = port.to_string();
        let mut cmd = Command::new(redis_server_program());
        cmd.args(["--port", &port_arg, "--bind", "127.0.0.1", "--save", ""]);
        if self.opts.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
                .arg(&self.data_dir);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", redis_server_program()))?;
        let ready = wait::until("redis PING", crate::STEP, || {
            let exited = child.try_wait();
            async move {
                if let Ok(Some(status)) = exited {
                    bail!("redis-server exited: {status}");
                }
                Ok(ping(port).await.ok().filter(|ok| *ok))
            }
        })
        .await;
        match ready {
            Ok(_) => {
                self.child = Some(child);
                Ok(())
            }
            Err(e) => {
                child.start_kill().ok();
                let _ = child.wait().await;
                Err(e.context(format!("see {}", self.log_path.display())))
            }
        }
    }
}

/// One PING over a fresh connection; `Ok(true)` on `+PONG` (not while loading).
pub async fn ping(port: u16) -> Result<bool> {
    let fut = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"*1\r\n$4\r\nPING\r\n").await?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await?;
        Ok::<_, anyhow::Error>(buf[..n].starts_with(b"+PONG"))
    };
    tokio::time::timeout(Duration::from_millis(500), fut)
        .await
        .map_err(|_| anyhow!("PING timed out"))?
}
