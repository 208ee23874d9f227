//! Payment state in Redis, and the one script that changes a status.
//!
//! - [`pool`]: the small command pool (a fixed set of multiplexed, self-reconnecting
//!   connections), separate from the broker's subscriber connection.
//! - [`payments`]: [`payments::PaymentStore`]: record a pending payment, apply a final
//!   outcome, read a state. `payment.lua` is the only code that writes a status; it
//!   writes and publishes atomically.

pub mod payments;
pub mod pool;

pub use payments::{ApplyOutcome, PaymentStore, RecordOutcome};
pub use pool::RedisPool;

/// Failures talking to Redis.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    #[error("redis timed out")]
    Timeout,
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        if e.is_timeout() {
            StoreError::Timeout
        } else if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
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
