//! A private `redis-server` child process on a free port.
//!
//! It binds 127.0.0.1 only, is killed when dropped, and can be killed (SIGKILL) and
//! restarted on the same port, so a test can take Redis away from running services.
//! By default it keeps nothing on disk; with [`RedisOptions::persistent`] it writes an
//! append-only file with `fsync` on every write, so state survives `kill -9`.
//!
//! With [`RedisOptions::tls`] it also listens for TLS on a second port
//! ([`RedisServer::tls_url`]); the plain port stays, on 127.0.0.1, for the harness's own
//! checks and control commands, and `CLIENT LIST`'s `laddr` tells which port a client
//! came in on. With [`RedisOptions::replica_of`] it replicates another server. With
//! [`RedisOptions::cluster`] it is a Redis Cluster node (see [`crate::redis_cluster`],
//! which forms the cluster out of such nodes).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

use crate::wait;

/// How a test's Redis is configured.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// Append-only file with `appendfsync always`, so data survives SIGKILL.
    pub persistent: bool,
    /// Also listen for TLS with these certificates.
    pub tls: Option<TlsFiles>,
    /// `--replicaof 127.0.0.1 <port>`.
    pub replica_of: Option<u16>,
    /// File name stem of the log and data directory (default `redis`), so that several
    /// servers can share a test's log directory.
    pub name: Option<String>,
    /// A Redis Cluster node: `--cluster-enabled yes` with its bus on a second free port
    /// (explicit `--cluster-port`: the default port+10000 overflows above 55535), the
    /// node table in `<log dir>/<name>-nodes.conf` (removed on [`RedisServer::start`],
    /// kept across [`RedisServer::restart`] so the node rejoins as itself),
    /// `--cluster-node-timeout 1000` and no reads while the cluster is down. With
    /// [`RedisOptions::tls`] the bus and replication use TLS too, the node presenting the
    /// client certificate when it connects to another node.
    pub cluster: bool,
    /// With [`RedisOptions::tls`] and not a cluster node: `--tls-replication yes`,
    /// presenting the client certificate. As a replica it then connects to its primary
    /// over TLS (so [`RedisOptions::replica_of`] names the primary's TLS port) and
    /// announces its own TLS port; any server may become a replica later (Sentinel
    /// demotes an old primary), so a Sentinel-managed primary needs it too.
    pub tls_replication: bool,
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, made by
/// the `openssl` CLI. All PEM.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// Generates a fresh CA (`<stem>-ca`), a server and a client certificate in `dir`.
    pub fn generate(dir: &Path, stem: &str) -> Result<Self> {
        let p = |n: &str| dir.join(format!("{stem}-{n}"));
        let files = Self {
            ca_cert: p("ca.pem"),
            server_cert: p("server.pem"),
            server_key: p("server-key.pem"),
            client_cert: p("client.pem"),
            client_key: p("client-key.pem"),
        };
        let ca_key = p("ca-key.pem");
        let path = |x: &Path| x.display().to_string();
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={stem} test CA"),
            "-keyout",
            &path(&ca_key),
            "-out",
            &path(&files.ca_cert),
        ])?;
        let leaf = |cn: &str, key: &Path, cert: &Path, ext: &str| -> Result<()> {
            let csr = p(&format!("{cn}.csr"));
            let extfile = p(&format!("{cn}.ext"));
            std::fs::write(&extfile, ext)?;
            openssl(&[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                &path(key),
                "-out",
                &path(&csr),
            ])?;
            openssl(&[
                "x509",
                "-req",
                "-in",
                &path(&csr),
                "-CA",
                &path(&files.ca_cert),
                "-CAkey",
                &path(&ca_key),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &path(&extfile),
                "-out",
                &path(cert),
            ])
        };
        leaf(
            "server",
            &files.server_key,
            &files.server_cert,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )?;
        leaf(
            "client",
            &files.client_key,
            &files.client_cert,
            "extendedKeyUsage=clientAuth\n",
        )?;
        Ok(files)
    }
}

fn openssl(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .context("running openssl (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "openssl {}: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A running (or deliberately stopped) `redis-server`.
pub struct RedisServer {
    port: u16,
    tls_port: Option<u16>,
    bus_port: Option<u16>,
    opts: RedisOptions,
    log_path: PathBuf,
    data_dir: PathBuf,
    nodes_conf: PathBuf,
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
        let stem = opts.name.clone().unwrap_or_else(|| "redis".to_owned());
        let log_path = log_dir.join(format!("{stem}.log"));
        let data_dir = log_dir.join(format!("{stem}-data"));
        let nodes_conf = log_dir.join(format!("{stem}-nodes.conf"));
        if opts.cluster {
            // A node table left by an earlier run would make this node rejoin that cluster.
            match std::fs::remove_file(&nodes_conf) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("removing {}", nodes_conf.display()))
                }
            }
        }
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
            let tls_port = match opts.tls {
                Some(_) => Some(free_port().await?),
                None => None,
            };
            let bus_port = match opts.cluster {
                true => Some(free_port().await?),
                false => None,
            };
            let mut server = Self {
                port,
                tls_port,
                bus_port,
                opts: opts.clone(),
                log_path: log_path.clone(),
                data_dir: data_dir.clone(),
                nodes_conf: nodes_conf.clone(),
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

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// The TLS port, when started with [`RedisOptions::tls`].
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// `rediss://127.0.0.1:<tls port>`, when started with [`RedisOptions::tls`].
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port.map(|p| format!("rediss://127.0.0.1:{p}"))
    }

    /// The cluster bus port, when started with [`RedisOptions::cluster`].
    pub fn bus_port(&self) -> Option<u16> {
        self.bus_port
    }

    /// Whether the process runs (it does unless [`RedisServer::kill`]ed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
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
            // A replica still writes the RDB it receives during a full sync: into the
            // test's own directory, never the working directory.
            std::fs::create_dir_all(&self.data_dir)
                .with_context(|| format!("creating {}", self.data_dir.display()))?;
            cmd.args(["--appendonly", "no", "--dir"])
                .arg(&self.data_dir);
        }
        if let (Some(tls), Some(tls_port)) = (&self.opts.tls, self.tls_port) {
            cmd.arg("--tls-port")
                .arg(tls_port.to_string())
                .arg("--tls-cert-file")
                .arg(&tls.server_cert)
                .arg("--tls-key-file")
                .arg(&tls.server_key)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca_cert)
                .args(["--tls-auth-clients", "optional"]);
        }
        if let Some(bus_port) = self.bus_port {
            cmd.args(["--cluster-enabled", "yes", "--cluster-port"])
                .arg(bus_port.to_string())
                .arg("--cluster-config-file")
                .arg(&self.nodes_conf)
                .args([
                    "--cluster-node-timeout",
                    "1000",
                    "--cluster-allow-reads-when-down",
                    "no",
                ]);
            if let Some(tls) = &self.opts.tls {
                cmd.args(["--tls-cluster", "yes", "--tls-replication", "yes"])
                    .arg("--tls-client-cert-file")
                    .arg(&tls.client_cert)
                    .arg("--tls-client-key-file")
                    .arg(&tls.client_key);
            }
        }
        if let (Some(tls), true, false) =
            (&self.opts.tls, self.opts.tls_replication, self.opts.cluster)
        {
            cmd.args(["--tls-replication", "yes"])
                .arg("--tls-client-cert-file")
                .arg(&tls.client_cert)
                .arg("--tls-client-key-file")
                .arg(&tls.client_key);
        }
        if let Some(primary) = self.opts.replica_of {
            cmd.args(["--replicaof", "127.0.0.1"])
                .arg(primary.to_string());
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
