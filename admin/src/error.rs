//! [`AdminError`]: what stops a command before it has anything to report.
//!
//! No variant carries a secret: configuration errors name keys, not values, and Redis
//! errors come from the shared store, which never quotes the URL.

use stk_relay_shared::config::ConfigError;
use stk_relay_shared::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Its messages already say "redis …".
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0:?} is not a CheckoutRequestID: {1}")]
    BadId(String, String),
    #[error("spool directory {path}: {source}")]
    Spool {
        path: String,
        #[source]
        source: std::io::Error,
    },
}
