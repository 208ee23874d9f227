//! The command pool: `pool_size` multiplexed connections, each a
//! `redis::aio::ConnectionManager` that pipelines concurrent commands and reconnects by
//! itself. Callers take them round-robin; there is no per-checkout PING and no lock on
//! the hot path. Connections are opened lazily and re-tried on the next use if Redis
//! was down, so a node starts (and reports not-ready) without Redis.
//!
//! Every wait is bounded:
//! - A checkout ([`RedisPool::get`]) waits at most `redis.command_timeout_ms`, also when
//!   the slot's connection is still being opened. The open itself runs in its own task,
//!   bounded by `redis.connect_timeout_ms`, shared by every caller that needs that slot
//!   (single flight): callers never queue one behind another's stuck attempt, and a
//!   caller that gives up does not cancel the attempt for the others.
//! - [`RedisPool::ping`] (readiness) answers within `redis.command_timeout_ms`, checkout
//!   included.
//! - Every connection (these and the broker's subscriber) has TCP keepalive and, on
//!   Linux, `TCP_USER_TIMEOUT` ([`tcp_settings`], [`configure_socket`]), so a peer that
//!   vanished is noticed by the kernel even when no command is waiting.
//!
//! Where a connection goes is not this module's business: [`Topology`] opens each one
//! (one server, or the primary the sentinels name; plain or TLS). A checkout hands out a
//! [`PooledConnection`], which watches the errors its commands get: when the topology
//! says an error means "wrong node or gone" (`READONLY` after a failover, or a broken
//! connection where the primary can move), the slot drops that connection and the next
//! checkout opens a new one through the topology. Other failures are left to
//! `ConnectionManager`'s own reconnect.
//!
//! With the broker's subscriber connection, a node holds `pool_size + 1` Redis
//! connections, whatever its client count.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::future::{BoxFuture, Shared};
use futures_util::FutureExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::{socket2, TcpSettings};

use super::topology::Topology;
use super::StoreError;
use crate::config::RedisSettings;

/// Idle time before the first TCP keepalive probe.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// Interval between keepalive probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Unanswered probes before the kernel drops the connection.
pub const KEEPALIVE_RETRIES: u32 = 3;
/// `TCP_USER_TIMEOUT` (Linux): how long sent data may stay unacknowledged before the
/// kernel drops the connection.
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(20);

fn keepalive() -> socket2::TcpKeepalive {
    let ka = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL);
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    let ka = ka.with_retries(KEEPALIVE_RETRIES);
    ka
}

/// The TCP options of every Redis command connection: no Nagle delay, keepalive, and
/// `TCP_USER_TIMEOUT` where the OS has it.
pub fn tcp_settings() -> TcpSettings {
    let s = TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive());
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    let s = s.set_user_timeout(TCP_USER_TIMEOUT);
    s
}

/// Applies the same options as [`tcp_settings`] to a socket opened by hand (the
/// broker's subscriber connection, which redis-rs 0.32 opens without settings).
pub fn configure_socket(stream: &tokio::net::TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let sock = socket2::SockRef::from(stream);
    sock.set_tcp_keepalive(&keepalive())?;
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    sock.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT))?;
    Ok(())
}

#[derive(Clone)]
pub struct RedisPool {
    inner: Arc<Inner>,
}

/// Why opening a slot's connection failed (cloneable: every waiter gets it).
#[derive(Clone)]
enum OpenError {
    Timeout,
    Failed(Arc<str>),
}

impl From<OpenError> for StoreError {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::Timeout => StoreError::Timeout,
            OpenError::Failed(m) => StoreError::Unavailable(m.to_string()),
        }
    }
}

type Opening = Shared<BoxFuture<'static, Result<Arc<Held>, OpenError>>>;

/// A slot's connection and the topology epoch it was opened in.
struct Held {
    conn: Conn,
    epoch: u64,
}

/// One command connection, as [`Topology::command_connection`] opens it: to one server
/// (standalone, or the primary the sentinels name), or to a Redis Cluster, where
/// redis-rs routes each command by its key's slot and follows `MOVED` and `ASK` itself.
/// Both pipeline concurrent commands and reconnect by themselves; cloning shares them.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

#[derive(Default)]
struct Slot {
    /// The slot's connection; emptied when it must be replaced (see [`PooledConnection`])
    /// or when the primary has moved since it was opened.
    conn: ArcSwapOption<Held>,
    /// The attempt in flight, awaited by every caller that needs this slot.
    opening: Mutex<Option<Opening>>,
}

struct Inner {
    topology: Topology,
    slots: Vec<Slot>,
    next: AtomicUsize,
    connect_timeout: Duration,
    command_timeout: Duration,
    /// `redis.wait_replicas` and its timeout.
    wait_replicas: u32,
    wait_replicas_timeout: Duration,
}

impl RedisPool {
    pub fn new(settings: &RedisSettings) -> Result<Self, StoreError> {
        let topology =
            Topology::new(settings).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                topology,
                slots: (0..settings.pool_size.max(1))
                    .map(|_| Slot::default())
                    .collect(),
                next: AtomicUsize::new(0),
                connect_timeout: settings.connect_timeout(),
                command_timeout: settings.command_timeout(),
                wait_replicas: settings.wait_replicas,
                wait_replicas_timeout: Duration::from_millis(settings.wait_replicas_timeout_ms),
            }),
        })
    }

    /// With `redis.wait_replicas` > 0: waits until that many replicas hold every write
    /// made so far on `conn` (`WAIT`), and fails as unavailable if fewer do in time. A
    /// write acknowledged by a primary that is being replaced, and never copied, is
    /// thereby reported as failed (and retried) instead of silently lost. `key` is the
    /// key just written: in cluster mode the `WAIT` goes to the primary of its slot only
    /// (redis-rs would otherwise ask every primary).
    pub async fn replicated(
        &self,
        conn: &mut PooledConnection,
        key: &str,
    ) -> Result<(), StoreError> {
        let want = self.inner.wait_replicas;
        if want == 0 {
            return Ok(());
        }
        let mut wait = redis::cmd("WAIT");
        wait.arg(want)
            .arg(self.inner.wait_replicas_timeout.as_millis() as u64);
        let acked: u32 = match &mut conn.conn {
            Conn::Single(_) => wait.query_async(conn).await?,
            Conn::Cluster(c) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let route = Route::new(super::slot::of(key.as_bytes()), SlotAddr::Master);
                let r = c
                    .route_command(
                        &wait,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await
                    .and_then(redis::from_owned_redis_value);
                r?
            }
        };
        if acked < want {
            return Err(StoreError::Unavailable(format!(
                "write reached {acked} of {want} replicas"
            )));
        }
        Ok(())
    }

    /// Runs one write command on `key`, then [`RedisPool::replicated`], all within the
    /// command timeout (checkout included).
    pub async fn write<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        key: &str,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.inner.command_timeout, async {
            let mut conn = self.get().await?;
            let reply: T = cmd.query_async(&mut conn).await?;
            self.replicated(&mut conn, key).await?;
            Ok(reply)
        })
        .await
        .map_err(|_| StoreError::timed_out())?
    }

    /// The bound on one command round trip (and on one checkout).
    pub fn command_timeout(&self) -> Duration {
        self.inner.command_timeout
    }

    /// How this pool reaches Redis; the broker's subscriber uses the same.
    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// A connection handle (cheap to clone; shares the underlying connection). Waits at
    /// most the command timeout.
    pub async fn get(&self) -> Result<PooledConnection, StoreError> {
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.slots.len();
        tokio::time::timeout(self.inner.command_timeout, self.slot(i))
            .await
            .map_err(|_| StoreError::timed_out())?
    }

    async fn slot(&self, i: usize) -> Result<PooledConnection, StoreError> {
        let slot = &self.inner.slots[i];
        let epoch = self.inner.topology.epoch();
        let current = slot.conn.load_full();
        if let Some(old) = current.as_ref().filter(|h| h.epoch != epoch) {
            // The primary moved since this connection was opened.
            slot.conn.compare_and_swap(old, None);
        }
        let held = match current.filter(|h| h.epoch == epoch) {
            Some(conn) => conn,
            None => {
                let opening = {
                    let mut guard = slot.opening.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(conn) = slot.conn.load_full().filter(|h| h.epoch == epoch) {
                        drop(guard);
                        return Ok(self.handle(i, conn));
                    }
                    guard.get_or_insert_with(|| self.start_open(i)).clone()
                };
                opening.await?
            }
        };
        Ok(self.handle(i, held))
    }

    fn handle(&self, slot: usize, held: Arc<Held>) -> PooledConnection {
        PooledConnection {
            conn: held.conn.clone(),
            held,
            slot,
            pool: self.inner.clone(),
        }
    }

    /// Opens slot `i`'s connection in its own task, bounded by the connect timeout. On
    /// success the slot keeps it; either way the slot forgets the attempt.
    fn start_open(&self, i: usize) -> Opening {
        let inner = self.inner.clone();
        let task = tokio::spawn(async move {
            let cfg = ConnectionManagerConfig::new()
                .set_connection_timeout(inner.connect_timeout)
                .set_response_timeout(inner.command_timeout)
                .set_number_of_retries(2)
                .set_max_delay(500)
                .set_tcp_settings(tcp_settings());
            let epoch = inner.topology.epoch();
            let r = match tokio::time::timeout(
                inner.connect_timeout,
                inner.topology.command_connection(cfg),
            )
            .await
            {
                Err(_) => Err(OpenError::Timeout),
                Ok(Err(e)) => Err(OpenError::Failed(Arc::from(e))),
                Ok(Ok(conn)) => Ok(Arc::new(Held { conn, epoch })),
            };
            let slot = &inner.slots[i];
            if let Ok(conn) = &r {
                slot.conn.store(Some(conn.clone()));
            }
            *slot.opening.lock().unwrap_or_else(|p| p.into_inner()) = None;
            r
        });
        async move {
            task.await
                .unwrap_or_else(|e| Err(OpenError::Failed(Arc::from(e.to_string()))))
        }
        .boxed()
        .shared()
    }

    /// A pool for `settings`, warmed up: a Redis that is down at start is logged and
    /// only makes the node not ready (connections keep being retried). Fails only on an
    /// unusable configuration.
    pub async fn open(settings: &RedisSettings) -> Result<Self, StoreError> {
        let pool = Self::new(settings)?;
        if let Err(e) = pool.warm_up().await {
            tracing::warn!(error = %e, "redis not reachable at start; will keep trying");
        }
        Ok(pool)
    }

    /// Starts opening every connection and waits for them, at most the connect timeout,
    /// so the connection count is constant from the start.
    pub async fn warm_up(&self) -> Result<(), StoreError> {
        let all = futures_util::future::join_all((0..self.inner.slots.len()).map(|i| self.slot(i)));
        let results = tokio::time::timeout(self.inner.connect_timeout, all)
            .await
            .map_err(|_| StoreError::timed_out())?;
        results
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map(|_| ())
    }

    /// `PING` on one connection, for readiness checks: answers within the command
    /// timeout, checkout included.
    pub async fn ping(&self) -> Result<(), StoreError> {
        tokio::time::timeout(self.inner.command_timeout, async {
            let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.slots.len();
            let mut conn = self.slot(i).await?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map_err(StoreError::from)
        })
        .await
        .map_err(|_| StoreError::timed_out())??;
        Ok(())
    }
}

/// A checked-out connection: a `ConnectionManager` handle that reports, after each
/// command, whether its slot must get a new connection ([`Topology::replace_after`]).
pub struct PooledConnection {
    conn: Conn,
    /// The slot's connection as handed out; compared before the slot is emptied, so a
    /// late error on an old connection never drops its replacement.
    held: Arc<Held>,
    slot: usize,
    pool: Arc<Inner>,
}

impl PooledConnection {
    fn check<T>(&self, r: &redis::RedisResult<T>) {
        let Err(e) = r else { return };
        if !self.pool.topology.replace_after(e) {
            return;
        }
        let slot = &self.pool.slots[self.slot];
        let prev = slot.conn.compare_and_swap(&self.held, None);
        if prev.as_ref().is_some_and(|p| Arc::ptr_eq(p, &self.held)) {
            tracing::warn!(
                slot = self.slot,
                error = %e,
                "redis connection reached a node that is not the primary, or broke; replacing it"
            );
        }
    }
}

impl ConnectionLike for PooledConnection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        async move {
            let r = self.conn.req_packed_command(cmd).await;
            self.check(&r);
            r
        }
        .boxed()
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        async move {
            let r = self.conn.req_packed_commands(cmd, offset, count).await;
            self.check(&r);
            r
        }
        .boxed()
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    /// A listener that accepts and reads, and never answers: a stalled Redis.
    async fn stalled_redis() -> (u16, tokio::task::JoinHandle<()>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut s, _)) = l.accept().await {
                conns.spawn(async move {
                    let mut buf = [0u8; 1024];
                    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
        });
        (port, task)
    }

    #[tokio::test]
    async fn checkouts_against_a_stalled_redis_are_bounded_by_the_command_timeout() {
        let (port, stub) = stalled_redis().await;
        let settings = RedisSettings {
            pool_size: 2,
            // The open stays stuck much longer than a caller may wait.
            connect_timeout_ms: 5_000,
            command_timeout_ms: 200,
            ..RedisSettings::standalone(format!("redis://127.0.0.1:{port}"), "t")
        };
        let pool = RedisPool::new(&settings).unwrap();
        let started = tokio::time::Instant::now();
        let results = futures_util::future::join_all((0..20).map(|_| {
            let pool = pool.clone();
            async move {
                let t = tokio::time::Instant::now();
                let r = pool.get().await.map(|_| ());
                (t.elapsed(), r)
            }
        }))
        .await;
        for (took, r) in results {
            assert!(matches!(r, Err(StoreError::Timeout)), "checkout succeeded");
            assert!(
                took < Duration::from_millis(700),
                "a checkout took {took:?}"
            );
        }
        let t = tokio::time::Instant::now();
        assert!(matches!(pool.ping().await, Err(StoreError::Timeout)));
        assert!(
            t.elapsed() < Duration::from_millis(700),
            "ping took {:?}",
            t.elapsed()
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        stub.abort();
    }
}
