//! The command pool: `pool_size` multiplexed connections, each a
//! `redis::aio::ConnectionManager` that pipelines concurrent commands and reconnects by
//! itself. Callers take them round-robin; there is no per-checkout PING and no lock on
//! the hot path. Connections are opened lazily and re-tried on the next use if Redis
//! was down, so a node starts (and reports not-ready) without Redis.
//!
//! With the broker's subscriber connection, a node holds `pool_size + 1` Redis
//! connections, whatever its client count.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::ExposeSecret;
use tokio::sync::OnceCell;

use super::StoreError;
use crate::config::RedisSettings;

#[derive(Clone)]
pub struct RedisPool {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    slots: Vec<OnceCell<ConnectionManager>>,
    next: AtomicUsize,
    connect_timeout: Duration,
    command_timeout: Duration,
}

impl RedisPool {
    pub fn new(settings: &RedisSettings) -> Result<Self, StoreError> {
        let client = redis::Client::open(settings.url.expose_secret())
            .map_err(|e| StoreError::Unavailable(format!("invalid redis url ({:?})", e.kind())))?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                slots: (0..settings.pool_size.max(1))
                    .map(|_| OnceCell::new())
                    .collect(),
                next: AtomicUsize::new(0),
                connect_timeout: settings.connect_timeout(),
                command_timeout: settings.command_timeout(),
            }),
        })
    }

    /// The bound on one command round trip.
    pub fn command_timeout(&self) -> Duration {
        self.inner.command_timeout
    }

    /// A connection handle (cheap to clone; shares the underlying connection).
    pub async fn get(&self) -> Result<ConnectionManager, StoreError> {
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.slots.len();
        self.slot(i).await
    }

    async fn slot(&self, i: usize) -> Result<ConnectionManager, StoreError> {
        let inner = &self.inner;
        let conn = inner.slots[i]
            .get_or_try_init(|| async {
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(inner.connect_timeout)
                    .set_response_timeout(inner.command_timeout)
                    .set_number_of_retries(2)
                    .set_max_delay(500);
                tokio::time::timeout(
                    inner.connect_timeout,
                    ConnectionManager::new_with_config(inner.client.clone(), cfg),
                )
                .await
                .map_err(|_| StoreError::Timeout)?
                .map_err(StoreError::from)
            })
            .await?;
        Ok(conn.clone())
    }

    /// Opens every connection now, so the connection count is constant from the start.
    pub async fn warm_up(&self) -> Result<(), StoreError> {
        for i in 0..self.inner.slots.len() {
            self.slot(i).await?;
        }
        Ok(())
    }

    /// `PING` on one connection, for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.get().await?;
        tokio::time::timeout(
            self.inner.command_timeout,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await
        .map_err(|_| StoreError::Timeout)??;
        Ok(())
    }
}
