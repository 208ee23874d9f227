//! Pub/sub between the services: the [`Broker`] trait, its Redis implementation
//! ([`redis::RedisBroker`]) and its in-memory one ([`memory::MemoryBroker`]), chosen by
//! configuration at run time.
//!
//! # Guarantees
//! - **What is delivered.** A [`Subscription`] receives every message published on its
//!   channel after [`Broker::subscribe`] has returned, in publish order, while the
//!   backend connection stays up. Publishes before that are not replayed: callers read
//!   the stored state *after* subscribing, so nothing can slip between the two.
//! - **What is stored.** Nothing. The broker is fire-and-forget; the payment state lives
//!   in the store (`crate::store`), and every message is a full state carrying its
//!   version, so receivers deduplicate by version.
//! - **On disconnect.** The Redis broker reconnects with backoff, re-subscribes every
//!   channel that still has subscribers, and then raises [`BrokerEvent::Resync`] on every
//!   subscription: messages may have been missed, so the holder re-reads the state.
//!   A subscription whose receiver falls behind (a slow consumer) also gets `Resync`.
//!   While disconnected, [`Broker::subscribe`] waits for the first reconnect attempt;
//!   once an attempt has failed it fails at once with [`BrokerError::Unavailable`] until
//!   one succeeds, so callers answer 503 instead of queueing. No number of subscribe
//!   requests delays the next attempt.
//! - **Bounds.** Every step with the Redis backend has a timeout (SUBSCRIBE,
//!   UNSUBSCRIBE, the probe, the whole reconnect); an expired one is handled as a broken
//!   connection: it is dropped and rebuilt. See [`redis`].
//! - **Fan-out.** One upstream subscription per channel per process, reference-counted:
//!   the first local subscriber subscribes, dropping the last one unsubscribes. All
//!   channels share one dedicated connection (in Redis Cluster, one per shard: see
//!   [`cluster`]), so a node's Redis connection count does not grow with its clients.

mod cluster;
pub mod memory;
pub mod redis;
mod resp;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::sync::{broadcast, mpsc, watch};

/// A published message: the STATE JSON, shared between all local subscribers.
pub type Payload = Arc<str>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    #[error("broker backend unavailable: {0}")]
    Unavailable(String),
    #[error("broker is shut down")]
    Closed,
    #[error("timed out waiting for the broker")]
    Timeout,
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerEvent {
    /// A message published on the channel.
    Message(Payload),
    /// Messages may have been missed (reconnect or lag): re-read the stored state.
    Resync,
    /// The broker is gone for good (process shutting down).
    Closed,
}

/// A pub/sub backend. See the module docs for its guarantees.
pub trait Broker: Send + Sync + 'static {
    /// Subscribes to `channel`. Resolves once the backend has acknowledged the
    /// subscription, so that a read of the stored state made afterwards cannot miss a
    /// publish.
    fn subscribe(&self, channel: &str) -> BoxFuture<'_, Result<Subscription, BrokerError>>;

    /// Publishes `payload` on `channel`. (With Redis, payment states are published by the
    /// store's script instead, atomically with the write.)
    fn publish(&self, channel: &str, payload: &str) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// Whether the backend connection is up, for readiness checks.
    fn is_connected(&self) -> bool;

    /// How many channels this process is subscribed to upstream.
    fn channel_count(&self) -> usize;
}

/// Handle given back to the broker when a subscription is dropped.
pub(crate) enum Release {
    Redis(mpsc::UnboundedSender<redis::Command>, Arc<str>),
    Memory(std::sync::Weak<memory::Shared>, Arc<str>),
}

/// One local subscription to one channel. Dropping it releases the channel's reference.
pub struct Subscription {
    rx: broadcast::Receiver<Payload>,
    resync: watch::Receiver<u64>,
    release: Option<Release>,
}

impl Subscription {
    pub(crate) fn new(
        rx: broadcast::Receiver<Payload>,
        resync: watch::Receiver<u64>,
        release: Release,
    ) -> Self {
        Self {
            rx,
            resync,
            release: Some(release),
        }
    }

    /// Waits for the next event. Cancel-safe: usable in `select!`.
    pub async fn recv(&mut self) -> BrokerEvent {
        tokio::select! {
            biased;
            r = self.rx.recv() => match r {
                Ok(p) => BrokerEvent::Message(p),
                Err(broadcast::error::RecvError::Lagged(_)) => BrokerEvent::Resync,
                Err(broadcast::error::RecvError::Closed) => BrokerEvent::Closed,
            },
            r = self.resync.changed() => match r {
                Ok(()) => BrokerEvent::Resync,
                Err(_) => BrokerEvent::Closed,
            },
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        match self.release.take() {
            Some(Release::Redis(tx, channel)) => {
                // An error means the broker task is gone; nothing is left to release.
                let _ = tx.send(redis::Command::Release { channel });
            }
            Some(Release::Memory(shared, channel)) => {
                if let Some(shared) = shared.upgrade() {
                    shared.release(&channel);
                }
            }
            None => {}
        }
    }
}

/// Capacity of each channel's local fan-out buffer. A channel carries at most three
/// states in its life (final, and a correction; a session channel one), so a receiver
/// this far behind is stuck and is told to resync. Every held channel allocates this
/// many slots: kept small, it is part of each idle connection's memory.
pub const FANOUT_CAPACITY: usize = 4;
