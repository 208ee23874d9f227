//! In-process broker for the standalone mode and for tests of code above the broker.
//! Same contract as the Redis broker; it is never disconnected.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::{broadcast, watch};

use super::{Broker, BrokerError, Payload, Release, Subscription, FANOUT_CAPACITY};

/// A channel's local fan-out sender and its holder count.
type ChannelMap = HashMap<Arc<str>, (broadcast::Sender<Payload>, usize)>;

pub(crate) struct Shared {
    channels: Mutex<ChannelMap>,
    resync: watch::Sender<u64>,
}

impl Shared {
    pub(crate) fn release(&self, channel: &str) {
        let mut map = match self.channels.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((_, refs)) = map.get_mut(channel) {
            *refs -= 1;
            if *refs == 0 {
                map.remove(channel);
            }
        }
    }
}

/// A broker that lives inside one process.
#[derive(Clone)]
pub struct MemoryBroker {
    shared: Arc<Shared>,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBroker {
    pub fn new() -> Self {
        let (resync, _) = watch::channel(0);
        Self {
            shared: Arc::new(Shared {
                channels: Mutex::new(HashMap::new()),
                resync,
            }),
        }
    }
}

impl MemoryBroker {
    /// Publishes at once, synchronously: the in-memory store calls this under its own
    /// lock, as `payment.lua` publishes inside its script.
    pub fn publish_now(&self, channel: &str, payload: &str) {
        let map = match self.shared.channels.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((tx, _)) = map.get(channel) {
            // No receivers is not an error: nobody is waiting on this payment here.
            let _ = tx.send(Arc::from(payload));
        }
    }
}

impl Broker for MemoryBroker {
    fn subscribe(&self, channel: &str) -> BoxFuture<'_, Result<Subscription, BrokerError>> {
        let mut map = match self.shared.channels.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let key: Arc<str> = Arc::from(channel);
        let entry = map
            .entry(key.clone())
            .or_insert_with(|| (broadcast::channel(FANOUT_CAPACITY).0, 0));
        entry.1 += 1;
        let sub = Subscription::new(
            entry.0.subscribe(),
            self.shared.resync.subscribe(),
            Release::Memory(Arc::downgrade(&self.shared), key),
        );
        async move { Ok(sub) }.boxed()
    }

    fn publish(&self, channel: &str, payload: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.publish_now(channel, payload);
        async { Ok(()) }.boxed()
    }

    fn is_connected(&self) -> bool {
        true
    }

    fn channel_count(&self) -> usize {
        match self.shared.channels.lock() {
            Ok(m) => m.len(),
            Err(poisoned) => poisoned.into_inner().len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::BrokerEvent;
    use super::*;

    #[tokio::test]
    async fn fan_out_and_reference_counting() {
        let b = MemoryBroker::new();
        let mut s1 = b.subscribe("a").await.unwrap();
        let mut s2 = b.subscribe("a").await.unwrap();
        assert_eq!(b.channel_count(), 1);
        b.publish("a", "x").await.unwrap();
        b.publish("b", "nobody").await.unwrap();
        assert_eq!(s1.recv().await, BrokerEvent::Message(Arc::from("x")));
        assert_eq!(s2.recv().await, BrokerEvent::Message(Arc::from("x")));
        drop(s1);
        assert_eq!(b.channel_count(), 1);
        drop(s2);
        assert_eq!(b.channel_count(), 0);
    }

    #[tokio::test]
    async fn lagging_subscriber_is_told_to_resync() {
        let b = MemoryBroker::new();
        let mut s = b.subscribe("a").await.unwrap();
        for i in 0..(FANOUT_CAPACITY + 4) {
            b.publish("a", &i.to_string()).await.unwrap();
        }
        assert_eq!(s.recv().await, BrokerEvent::Resync);
    }
}
