//! What a node runs on: where state lives ([`Storage`]) and how results travel between
//! nodes ([`Broker`]). Chosen by configuration at run time, in one place: a cluster node
//! uses Redis for both; standalone mode uses this process's memory for both, shared by
//! the gateway and the ingest it serves on one port.

use std::sync::Arc;

use crate::broker::memory::MemoryBroker;
use crate::broker::redis::RedisBroker;
use crate::broker::Broker;
use crate::config::RedisSettings;
use crate::store::{MemoryStorage, RedisPool, Storage};

/// A node's storage and broker.
#[derive(Clone)]
pub struct Backends {
    pub storage: Storage,
    pub broker: Arc<dyn Broker>,
}

impl Backends {
    /// Redis for both: a command pool and the one subscriber connection. Connects
    /// lazily: a Redis that is down at start only makes the node not ready.
    pub async fn redis(settings: &RedisSettings) -> Result<Self, String> {
        let pool = RedisPool::open(settings).await.map_err(|e| e.to_string())?;
        let broker = RedisBroker::start(settings, pool.clone()).map_err(|e| e.to_string())?;
        Ok(Self {
            storage: Storage::Redis(pool),
            broker: Arc::new(broker),
        })
    }

    /// This process's memory for both: state is lost when the process stops.
    pub fn memory() -> Self {
        let broker = MemoryBroker::new();
        Self {
            storage: Storage::Memory(MemoryStorage::new(broker.clone())),
            broker: Arc::new(broker),
        }
    }

    /// Whether state lives in this process only.
    pub fn is_memory(&self) -> bool {
        matches!(self.storage, Storage::Memory(_))
    }
}
