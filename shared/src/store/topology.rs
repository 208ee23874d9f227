//! Where Redis is and how to reach it: the one place that knows the deployment's shape.
//! The command pool ([`super::pool`]) and the broker's subscriber
//! ([`crate::broker::redis`]) ask it for connections and never branch on the mode.
//!
//! - **Standalone** (`redis.mode = "standalone"`): one address, from `redis.url`. A
//!   managed service that fails over behind one DNS name (ElastiCache's primary
//!   endpoint, Memorystore, Azure Cache) is this mode too.
//! - **Sentinel** (`redis.mode = "sentinel"`): every new connection first asks the
//!   sentinels (`SENTINEL get-master-addr-by-name`, all at once, the first answer wins)
//!   where the primary is, and a command connection then checks with `ROLE` that the
//!   node really is a primary (a sentinel can be behind). `redis.url` gives only the
//!   scheme, credentials and database of the data nodes.
//! - **Cluster** (`redis.mode = "cluster"`): command connections are redis-rs cluster
//!   connections, started from `redis.cluster_nodes`, which route each command by its
//!   key's slot and follow `MOVED`, `ASK` and failovers themselves. Publishing is sharded
//!   ([`Topology::sharded_pubsub`]: `SPUBLISH`), and the subscriber is
//!   [`crate::broker::cluster`], which opens one connection per shard it has channels on
//!   through [`Topology::node_stream`]. `redis.url` gives only the scheme and
//!   credentials (Redis Cluster has database 0 only).
//!
//! Failover: in Sentinel mode a watcher task asks the sentinels every
//! [`SENTINEL_POLL`] where the primary is; when the answer changes it bumps the
//! topology's epoch ([`Topology::epoch`], [`Topology::watch_epoch`]), and the pool and
//! the subscriber drop every connection opened in an older epoch. This matters after a
//! forced failover, when the old primary keeps accepting writes until Sentinel gets round
//! to demoting it: writes sent there are lost. Besides, a connection that gets
//! `READONLY`, `MASTERDOWN` or `NOREPLICAS` (it reached a demoted primary, a replica, or
//! a primary cut off from its replicas), or whose connection broke while the mode has a movable
//! primary, must be replaced rather than repaired in place: [`Topology::replace_after`]
//! says so, and the pool then opens a new one through [`Topology::command_connection`],
//! which asks the sentinels again. The subscriber reconnects through
//! [`Topology::subscriber_connection`] after any loss (Sentinel kills every client of a
//! node it reconfigures), then re-subscribes and raises `Resync`.
//!
//! TLS (`rediss://`) uses rustls, the same stack as our HTTP client, with the roots of
//! `redis.tls_ca_file` (else the built-in web PKI roots) and an optional client
//! certificate. Command connections are opened by redis-rs (`Client::build_with_tls`),
//! which applies our TCP options before the handshake. The subscriber's TCP socket is
//! opened here, given the same options ([`super::pool::configure_socket`]), and wrapped
//! in TLS here with an equivalent rustls configuration built from the same files,
//! because redis-rs 0.32 opens pub/sub connections without TCP options.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{
    ClientTlsConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo,
    TlsCertificates,
};
use secrecy::ExposeSecret;
use tokio_rustls::rustls;

use tokio::sync::watch;

use super::pool::{configure_socket, Conn};
use crate::config::{parse_host_ports, RedisMode, RedisSettings};

/// How a node finds its Redis primary and opens connections to it.
#[derive(Clone)]
pub struct Topology {
    inner: Arc<Inner>,
}

/// How often, in Sentinel mode, the watcher asks the sentinels where the primary is.
pub const SENTINEL_POLL: Duration = Duration::from_millis(250);

struct Inner {
    /// Bumped whenever the sentinels name a different primary.
    epoch: watch::Sender<u64>,
    /// Rounds of the watcher so far (Sentinel mode).
    polls: std::sync::atomic::AtomicU64,
    mode: Mode,
    /// Credentials, database and protocol of the data nodes (from `redis.url`).
    data: RedisConnectionInfo,
    tls: Option<Tls>,
    connect_timeout: Duration,
    command_timeout: Duration,
}

enum Mode {
    Standalone {
        host: String,
        port: u16,
    },
    Sentinel {
        sentinels: Vec<(String, u16)>,
        master_name: String,
        auth: RedisConnectionInfo,
        tls: bool,
    },
    Cluster {
        seeds: Vec<(String, u16)>,
    },
}

/// A byte stream to one Redis node, plain or TLS, for the cluster subscriber.
pub trait NodeStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> NodeStream for T {}

struct Tls {
    /// For redis-rs (command connections).
    certs: TlsCertificates,
    /// For the subscriber's hand-opened socket.
    config: Arc<rustls::ClientConfig>,
}

/// Why the topology could not be set up from the settings. Never holds the URL.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TopologyError(String);

fn read_pem(key: &str, path: &str) -> Result<Option<Vec<u8>>, TopologyError> {
    if path.is_empty() {
        return Ok(None);
    }
    std::fs::read(path)
        .map(Some)
        .map_err(|e| TopologyError(format!("redis.{key}: reading {path}: {e}")))
}

impl Tls {
    fn load(settings: &RedisSettings) -> Result<Self, TopologyError> {
        let ca = read_pem("tls_ca_file", &settings.tls_ca_file)?;
        let cert = read_pem("tls_cert_file", &settings.tls_cert_file)?;
        let key = read_pem("tls_key_file", &settings.tls_key_file)?;
        let client = match (cert, key) {
            (Some(client_cert), Some(client_key)) => Some(ClientTlsConfig {
                client_cert,
                client_key,
            }),
            _ => None,
        };
        let config = rustls_config(ca.as_deref(), client.as_ref())?;
        Ok(Self {
            certs: TlsCertificates {
                client_tls: client,
                root_cert: ca,
            },
            config: Arc::new(config),
        })
    }
}

/// The rustls client configuration of the subscriber: the same roots and client
/// certificate that redis-rs uses for the command connections.
fn rustls_config(
    ca: Option<&[u8]>,
    client: Option<&ClientTlsConfig>,
) -> Result<rustls::ClientConfig, TopologyError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| TopologyError(format!("redis.tls_ca_file: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| TopologyError(format!("redis.tls_ca_file: {e}")))?;
            }
            if roots.is_empty() {
                return Err(TopologyError(
                    "redis.tls_ca_file holds no certificate".into(),
                ));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    match client {
        Some(c) => {
            let chain = CertificateDer::pem_slice_iter(&c.client_cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TopologyError(format!("redis.tls_cert_file: {e}")))?;
            let key = PrivateKeyDer::from_pem_slice(&c.client_key)
                .map_err(|e| TopologyError(format!("redis.tls_key_file: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TopologyError(format!("redis client certificate: {e}")))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

impl Topology {
    /// Reads the TLS files and parses the URL; opens nothing.
    pub fn new(settings: &RedisSettings) -> Result<Self, TopologyError> {
        let info = settings
            .url
            .expose_secret()
            .into_connection_info()
            // The error may quote the URL, which may hold a password: keep only its kind.
            .map_err(|e| TopologyError(format!("invalid redis url ({:?})", e.kind())))?;
        let (host, port, url_tls) = match &info.addr {
            ConnectionAddr::Tcp(h, p) => (h.clone(), *p, false),
            ConnectionAddr::TcpTls { host, port, .. } => (host.clone(), *port, true),
            ConnectionAddr::Unix(_) => {
                return Err(TopologyError(
                    "redis.url: unix sockets are not supported".into(),
                ))
            }
        };
        let tls = if url_tls {
            Some(Tls::load(settings)?)
        } else {
            None
        };
        let mode = match settings.mode {
            RedisMode::Standalone => Mode::Standalone { host, port },
            RedisMode::Sentinel => {
                let sentinels =
                    parse_host_ports("sentinels", &settings.sentinels).map_err(TopologyError)?;
                let password = settings.sentinel_password.expose_secret();
                Mode::Sentinel {
                    sentinels,
                    master_name: settings.master_name.clone(),
                    auth: RedisConnectionInfo {
                        password: (!password.is_empty()).then(|| password.to_owned()),
                        ..RedisConnectionInfo::default()
                    },
                    tls: settings.sentinel_tls,
                }
            }
            RedisMode::Cluster => {
                if info.redis.db != 0 {
                    return Err(TopologyError(
                        "redis.url: Redis Cluster has database 0 only".into(),
                    ));
                }
                let seeds = parse_host_ports("cluster_nodes", &settings.cluster_nodes)
                    .map_err(TopologyError)?;
                if seeds.is_empty() {
                    return Err(TopologyError(
                        "redis.mode = \"cluster\" needs redis.cluster_nodes".into(),
                    ));
                }
                Mode::Cluster { seeds }
            }
        };
        let watched = matches!(mode, Mode::Sentinel { .. });
        let topology = Self {
            inner: Arc::new(Inner {
                epoch: watch::channel(0).0,
                polls: std::sync::atomic::AtomicU64::new(0),
                mode,
                data: info.redis,
                tls,
                connect_timeout: settings.connect_timeout(),
                command_timeout: settings.command_timeout(),
            }),
        };
        if watched {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(watch_primary(Arc::downgrade(&topology.inner)));
                }
                Err(_) => tracing::warn!("no runtime: the sentinels are asked only on connect"),
            }
        }
        Ok(topology)
    }

    /// The current epoch: it changes when the primary moves (Sentinel mode).
    pub fn epoch(&self) -> u64 {
        *self.inner.epoch.borrow()
    }

    /// A receiver that wakes when the primary moves.
    pub fn watch_epoch(&self) -> watch::Receiver<u64> {
        self.inner.epoch.subscribe()
    }

    /// A client for one node, with the data nodes' credentials and TLS.
    fn client_for(
        &self,
        host: &str,
        port: u16,
        redis: RedisConnectionInfo,
        tls: bool,
    ) -> Result<redis::Client, String> {
        let addr = self.addr(host, port, tls);
        let info = ConnectionInfo { addr, redis };
        match (&self.inner.tls, tls) {
            (Some(t), true) => redis::Client::build_with_tls(info, t.certs.clone()),
            _ => redis::Client::open(info),
        }
        .map_err(|e| format!("redis client for {host}:{port}: {e}"))
    }

    /// Whether the primary can move under this node without its address changing
    /// (Sentinel), so that a forced failover can lose writes it acknowledged
    /// (see the ingest's journal).
    pub fn primary_can_move(&self) -> bool {
        matches!(self.inner.mode, Mode::Sentinel { .. })
    }

    /// Whether payment states travel by sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`):
    /// in cluster mode, so that a message stays within its shard.
    pub fn sharded_pubsub(&self) -> bool {
        matches!(self.inner.mode, Mode::Cluster { .. })
    }

    /// Where the primary is now. (Cluster mode has one per shard: the seeds' first.)
    async fn primary(&self) -> Result<(String, u16), String> {
        match &self.inner.mode {
            Mode::Standalone { host, port } => Ok((host.clone(), *port)),
            Mode::Cluster { seeds } => seeds
                .first()
                .cloned()
                .ok_or_else(|| "no cluster node configured".to_string()),
            Mode::Sentinel {
                sentinels,
                master_name,
                auth,
                tls,
            } => {
                let asks = sentinels.iter().map(|(host, port)| {
                    self.ask_sentinel(host, *port, master_name, auth.clone(), *tls)
                        .boxed()
                });
                let all = futures_util::future::select_ok(asks);
                match tokio::time::timeout(self.inner.connect_timeout, all).await {
                    Ok(Ok((addr, _))) => Ok(addr),
                    Ok(Err(e)) => Err(format!("no sentinel named the primary: {e}")),
                    Err(_) => Err("no sentinel answered in time".into()),
                }
            }
        }
    }

    async fn ask_sentinel(
        &self,
        host: &str,
        port: u16,
        master_name: &str,
        auth: RedisConnectionInfo,
        tls: bool,
    ) -> Result<(String, u16), String> {
        let client = self.client_for(host, port, auth, tls)?;
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(self.inner.connect_timeout)
            .set_response_timeout(self.inner.command_timeout);
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .map_err(|e| format!("sentinel {host}:{port}: {e}"))?;
        let addr: Option<(String, String)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(master_name)
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("sentinel {host}:{port}: {e}"))?;
        let (h, p) = addr.ok_or_else(|| {
            format!("sentinel {host}:{port} does not know the name {master_name:?}")
        })?;
        let p = p
            .parse::<u16>()
            .map_err(|_| format!("sentinel {host}:{port} named a bad port {p:?}"))?;
        Ok((h, p))
    }

    /// A new self-reconnecting command connection to the current primary (in cluster
    /// mode: to the cluster). In Sentinel mode, a node that is not (or no longer) a
    /// primary is refused.
    pub async fn command_connection(&self, cfg: ConnectionManagerConfig) -> Result<Conn, String> {
        if let Mode::Cluster { seeds } = &self.inner.mode {
            return self.cluster_connection(seeds).await.map(Conn::Cluster);
        }
        self.single_connection(cfg).await.map(Conn::Single)
    }

    async fn cluster_connection(
        &self,
        seeds: &[(String, u16)],
    ) -> Result<redis::cluster_async::ClusterConnection, String> {
        let nodes = seeds
            .iter()
            .map(|(host, port)| ConnectionInfo {
                addr: self.addr(host, *port, self.uses_tls()),
                redis: self.inner.data.clone(),
            })
            .collect::<Vec<_>>();
        let mut builder = redis::cluster::ClusterClientBuilder::new(nodes)
            .connection_timeout(self.inner.connect_timeout)
            .response_timeout(self.inner.command_timeout)
            // Redirections (MOVED, ASK, TRYAGAIN during a migration, CLUSTERDOWN during a
            // failover) are retried within the caller's command timeout.
            .retries(4)
            .min_retry_wait(10)
            .max_retry_wait(200)
            .tcp_settings(super::pool::tcp_settings());
        if let Some(tls) = &self.inner.tls {
            builder = builder.certs(tls.certs.clone());
        }
        let client = builder
            .build()
            .map_err(|e| format!("redis cluster client: {e}"))?;
        client
            .get_async_connection()
            .await
            .map_err(|e| format!("redis cluster: {e}"))
    }

    fn addr(&self, host: &str, port: u16, tls: bool) -> ConnectionAddr {
        if tls {
            ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host.to_owned(), port)
        }
    }

    async fn single_connection(
        &self,
        cfg: ConnectionManagerConfig,
    ) -> Result<ConnectionManager, String> {
        let (host, port) = self.primary().await?;
        let client = self.client_for(&host, port, self.inner.data.clone(), self.uses_tls())?;
        let mut conn = ConnectionManager::new_with_config(client, cfg)
            .await
            .map_err(|e| e.to_string())?;
        if matches!(self.inner.mode, Mode::Sentinel { .. }) {
            let role: Vec<redis::Value> = redis::cmd("ROLE")
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("ROLE on {host}:{port}: {e}"))?;
            let is_primary = matches!(
                role.first(),
                Some(redis::Value::BulkString(b)) if b.as_slice() == b"master"
            );
            if !is_primary {
                return Err(format!(
                    "{host}:{port} is not a primary (yet); asking the sentinels again"
                ));
            }
        }
        Ok(conn)
    }

    fn uses_tls(&self) -> bool {
        self.inner.tls.is_some()
    }

    /// The data nodes' credentials and protocol settings (from `redis.url`).
    pub fn data_info(&self) -> &RedisConnectionInfo {
        &self.inner.data
    }

    /// A byte stream to one node (cluster mode: a shard's primary), with the pool's TCP
    /// options, in TLS when the data nodes use it. Nothing is sent on it yet. The caller
    /// bounds the time.
    pub async fn node_stream(&self, host: &str, port: u16) -> Result<Box<dyn NodeStream>, String> {
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("{host}:{port}: {e}"))?;
        configure_socket(&tcp).map_err(|e| format!("setting TCP options: {e}"))?;
        match &self.inner.tls {
            None => Ok(Box::new(tcp)),
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                    .map_err(|e| format!("{host}: not a TLS server name: {e}"))?;
                let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS to {host}:{port}: {e}"))?;
                Ok(Box::new(stream))
            }
        }
    }

    /// A new pub/sub connection to the current primary, with the pool's TCP options. The
    /// caller bounds the time.
    pub async fn subscriber_connection(&self) -> Result<redis::aio::PubSub, String> {
        let (host, port) = self.primary().await?;
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("{host}:{port}: {e}"))?;
        configure_socket(&tcp).map_err(|e| format!("setting TCP options: {e}"))?;
        match &self.inner.tls {
            None => redis::aio::PubSub::new(&self.inner.data, tcp).await,
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| format!("{host}: not a TLS server name: {e}"))?;
                let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS to {host}:{port}: {e}"))?;
                redis::aio::PubSub::new(&self.inner.data, stream).await
            }
        }
        .map_err(|e| e.to_string())
    }

    /// Whether a connection that returned `e` must be replaced by a new one from
    /// [`Topology::command_connection`] rather than left to repair itself: it reached a
    /// node that is not the primary (`READONLY`, `MASTERDOWN`), or, where the primary
    /// can move (Sentinel), the connection broke (its own reconnect would go back to the
    /// old address).
    pub fn replace_after(&self, e: &redis::RedisError) -> bool {
        if is_not_primary(e) {
            return true;
        }
        match self.inner.mode {
            // A cluster connection follows failovers and reconnects by itself.
            Mode::Standalone { .. } | Mode::Cluster { .. } => false,
            Mode::Sentinel { .. } => {
                e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()
            }
        }
    }
}

/// Asks the sentinels where the primary is, every [`SENTINEL_POLL`], and bumps the epoch
/// when the answer changes. Stops when the topology is dropped.
async fn watch_primary(inner: std::sync::Weak<Inner>) {
    let mut known: Option<(String, u16)> = None;
    let mut tick = tokio::time::interval(SENTINEL_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let topology = Topology { inner };
        topology
            .inner
            .polls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match topology.primary().await {
            Ok(addr) => {
                tracing::trace!(primary = ?addr, "the sentinels answered");
                if known.as_ref().is_some_and(|k| *k != addr) {
                    tracing::warn!(
                        from = ?known,
                        to = ?addr,
                        "the sentinels name a new redis primary; replacing every connection"
                    );
                    topology.inner.epoch.send_modify(|e| *e += 1);
                }
                known = Some(addr);
            }
            Err(e) => tracing::debug!(error = %e, "asking the sentinels failed"),
        }
    }
}

/// `READONLY`, `MASTERDOWN` or `NOREPLICAS`, also when raised inside a script.
pub fn is_not_primary(e: &redis::RedisError) -> bool {
    if matches!(
        e.kind(),
        redis::ErrorKind::ReadOnly | redis::ErrorKind::MasterDown
    ) {
        return true;
    }
    let code = e.code().unwrap_or_default();
    let detail = e.detail().unwrap_or_default();
    ["READONLY", "MASTERDOWN", "NOREPLICAS"]
        .iter()
        .any(|c| code == *c || detail.contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sentinel_topology_needs_no_server_to_be_built() {
        let mut s = RedisSettings::standalone("redis://:pw@ignored:1/2", "t");
        s.mode = RedisMode::Sentinel;
        s.sentinels = vec!["127.0.0.1:26379".into(), "[::1]:26380".into()];
        s.master_name = "m".into();
        let t = Topology::new(&s).unwrap();
        assert_eq!(t.inner.data.db, 2);
        assert_eq!(t.inner.data.password.as_deref(), Some("pw"));
        assert!(!t.uses_tls());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_watcher_keeps_asking() {
        let mut s = RedisSettings::standalone("redis://ignored:1", "t");
        s.mode = RedisMode::Sentinel;
        s.sentinels = vec!["127.0.0.1:1".into()];
        s.master_name = "m".into();
        s.connect_timeout_ms = 100;
        let t = Topology::new(&s).unwrap();
        tokio::time::sleep(SENTINEL_POLL * 5).await;
        let polls = t.inner.polls.load(std::sync::atomic::Ordering::Relaxed);
        assert!(polls >= 3, "{polls} polls");
    }

    #[test]
    fn a_bad_url_error_does_not_quote_the_password() {
        let s = RedisSettings::standalone("redis://:hunter2@host:notaport", "t");
        let e = Topology::new(&s)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn readonly_means_reconnect() {
        let e = redis::RedisError::from((
            redis::ErrorKind::ReadOnly,
            "You can't write against a read only replica.",
        ));
        assert!(is_not_primary(&e));
        let t = Topology::new(&RedisSettings::standalone("redis://h:1", "t")).unwrap();
        assert!(t.replace_after(&e));
        let io = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(
            !t.replace_after(&io),
            "standalone repairs its own connections"
        );
    }
}
