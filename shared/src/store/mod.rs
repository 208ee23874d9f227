//! Payment state, and the one set of rules that changes a status.
//!
//! [`Storage`] says where state lives, chosen by configuration at run time: Redis (the
//! cluster), or this process's memory (standalone mode). Everything above it
//! ([`PaymentStore`], [`Schedule`], the gateway's idempotency records) takes a `Storage`
//! and never branches on the backend itself, except to talk to it.
//!
//! - [`pool`]: the small command pool (a fixed set of multiplexed, self-reconnecting
//!   connections), separate from the broker's subscriber connection.
//! - [`topology`]: where Redis is (one server, or the primary Sentinel names; plain or
//!   TLS); the one place that opens connections, for the pool and the broker alike.
//! - [`payments`]: [`payments::PaymentStore`]: record a pending payment, apply a final
//!   outcome, read a state and the payment's history. `payment.lua` is the only code
//!   that writes a status; it writes, records the history and publishes atomically
//!   (`history.lua` appends the history entries written from Rust).
//! - [`schedule`]: [`schedule::Schedule`]: the due set of pending payments for STK Push
//!   Query and the cluster's shared Query budget (`schedule.lua`).
//! - [`memory`]: [`memory::MemoryStorage`]: the in-memory backend. Its payment table
//!   follows `payment.lua` rule for rule, and `shared/tests/store_cases.rs` runs one
//!   table of cases against both backends.

pub mod memory;
pub mod payments;
pub mod pool;
pub mod schedule;
pub mod slot;
pub mod topology;

pub use payments::{
    webhooks_supported, ApplyOutcome, CallbackBinding, PaymentStore, RecordOutcome,
};
pub use pool::RedisPool;
pub use schedule::Schedule;

pub use memory::MemoryStorage;

/// Where payment state lives.
#[derive(Clone)]
pub enum Storage {
    /// Redis: the cluster's shared state (a fixed pool of command connections).
    Redis(RedisPool),
    /// This process's memory: standalone mode. Lost when the process stops.
    Memory(MemoryStorage),
}

impl Storage {
    /// Checks that the backend answers (PING for Redis; memory always does).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Storage::Redis(pool) => pool.ping().await,
            Storage::Memory(_) => Ok(()),
        }
    }

    /// The bound on one backend round trip.
    pub fn command_timeout(&self) -> std::time::Duration {
        match self {
            Storage::Redis(pool) => pool.command_timeout(),
            Storage::Memory(_) => std::time::Duration::from_secs(1),
        }
    }

    /// A second handle for a background writer: for Redis a pool of one connection of
    /// its own (see `gateway::pending`), for memory the same tables.
    pub fn for_writer(&self, redis: &crate::config::RedisSettings) -> Result<Storage, StoreError> {
        match self {
            Storage::Redis(_) => Ok(Storage::Redis(RedisPool::new(
                &crate::config::RedisSettings {
                    pool_size: 1,
                    ..redis.clone()
                },
            )?)),
            Storage::Memory(m) => Ok(Storage::Memory(m.clone())),
        }
    }
}

/// Runs `op` and retries it while Redis is unreachable (`Unavailable` or `Timeout`),
/// with backoff from 25 ms doubling to 400 ms, as long as the next attempt starts within
/// `budget`. Other errors, and the last unreachable one, are returned as they are.
/// `what` names the operation in the retry log line.
pub async fn retry_while_unavailable<T, F, Fut>(
    budget: std::time::Duration,
    what: &str,
    mut op: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + budget;
    let mut delay = Duration::from_millis(25);
    loop {
        match op().await {
            Err(e @ (StoreError::Unavailable(_) | StoreError::Timeout))
                if Instant::now() + delay < deadline =>
            {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "redis unavailable; retrying {what}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(400));
            }
            other => return other,
        }
    }
}

/// Failures talking to Redis.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    #[error("redis timed out")]
    Timeout,
    #[error("unexpected reply from the store: {0}")]
    Protocol(String),
}

impl From<redis::RedisError> for StoreError {
    /// Every failed Redis command passes here, so it is also where they are counted
    /// (`stk_relay_redis_errors_total`).
    fn from(e: redis::RedisError) -> Self {
        let err = Self::classify(e);
        use crate::metrics::RedisErrorKind;
        crate::metrics::redis_error(match &err {
            StoreError::Timeout => RedisErrorKind::Timeout,
            StoreError::Unavailable(_) => RedisErrorKind::Unavailable,
            StoreError::Protocol(_) => RedisErrorKind::Refused,
        });
        err
    }
}

impl StoreError {
    /// A bound on a Redis step expired (a checkout, a command, a script with its `WAIT`):
    /// counted with the failed commands, as `kind="timeout"`.
    pub fn timed_out() -> Self {
        crate::metrics::redis_error(crate::metrics::RedisErrorKind::Timeout);
        StoreError::Timeout
    }

    fn classify(e: redis::RedisError) -> Self {
        if e.is_timeout() {
            StoreError::Timeout
        } else if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            // A demoted primary or a replica, during a failover: the pool replaces the
            // connection, and the next attempt reaches the new primary.
            || topology::is_not_primary(&e)
            || matches!(
                e.kind(),
                redis::ErrorKind::BusyLoadingError
                    | redis::ErrorKind::TryAgain
                    | redis::ErrorKind::ClusterDown
                    | redis::ErrorKind::MasterDown
            )
        {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Protocol(e.to_string())
        }
    }
}
