//! Subscribe-then-read: the frames one browser connection (WebSocket or SSE) receives.
//!
//! [`PaymentFeed::open`] subscribes to the payment's channel first and reads the stored
//! state second, so a final state written between the two cannot be missed. It yields
//! the snapshot frame at once (`PAYMENT_UPDATE` while pending, `PAYMENT_COMPLETED` if
//! final). [`PaymentFeed::next`] then yields at most one `PAYMENT_COMPLETED`, whatever
//! duplicates, reconnects or resyncs happen: states are deduplicated by version.

use std::sync::Arc;

use stk_relay_shared::api::{encode_message, MessageType};
use stk_relay_shared::broker::{Broker, BrokerError, BrokerEvent, Subscription};
use stk_relay_shared::ids::CheckoutRequestId;
use stk_relay_shared::payment::{PaymentStatus, StateHead};
use stk_relay_shared::store::{PaymentStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("payment not found")]
    NotFound,
    #[error("broker: {0}")]
    Broker(#[from] BrokerError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("stored state is not valid: {0}")]
    BadState(String),
}

/// What the connection should do next.
#[derive(Debug)]
pub enum FeedEvent {
    /// Send this text frame.
    Frame(String),
    /// The broker is gone (shutdown); close and let the client reconnect elsewhere.
    Closed,
}

pub struct PaymentFeed {
    sub: Subscription,
    store: PaymentStore,
    id: CheckoutRequestId,
    last_version: u64,
    done: bool,
    /// Set before a re-read and cleared after it, so a cancelled `next` re-reads.
    needs_resync: bool,
    resync_failures: u32,
    /// When the last state handed out arrived from the broker (or was re-read after a
    /// resync): the start of `stk_relay_gateway_delivery_seconds`.
    received: Option<std::time::Instant>,
}

/// Failed re-reads after a resync before the feed waits for the next broker event.
const MAX_RESYNC_ATTEMPTS: u32 = 40;

fn head(state: &str) -> Result<StateHead, FeedError> {
    StateHead::parse(state).map_err(|e| FeedError::BadState(e.to_string()))
}

fn frame_for(status: PaymentStatus, state: &str) -> String {
    let kind = if status.is_final() {
        MessageType::PaymentCompleted
    } else {
        MessageType::PaymentUpdate
    };
    encode_message(kind, state)
}

impl PaymentFeed {
    /// Subscribes, then reads. Returns the feed and the snapshot frame.
    pub async fn open(
        broker: &Arc<dyn Broker>,
        store: &PaymentStore,
        id: CheckoutRequestId,
    ) -> Result<(Self, String), FeedError> {
        let (feed, first) = Self::open_states(broker, store, id, false).await?;
        let (status, state) = first.ok_or(FeedError::NotFound)?;
        Ok((feed, frame_for(status, &state)))
    }

    /// Subscribes, then reads, and yields states instead of frames (for a connection that
    /// speaks another protocol, `crate::ws::compat`). With `allow_missing`, a payment not
    /// stored yet (its pending write is still queued) is no error: the snapshot is `None`
    /// and the feed waits for its first published state.
    pub async fn open_states(
        broker: &Arc<dyn Broker>,
        store: &PaymentStore,
        id: CheckoutRequestId,
        allow_missing: bool,
    ) -> Result<(Self, Option<(PaymentStatus, String)>), FeedError> {
        let sub = broker
            .subscribe(&store.keyspace().payment_channel(&id))
            .await?;
        let (first, last_version) = match store.get(&id).await? {
            Some(state) => {
                let h = head(&state)?;
                (Some((h.status, state)), h.version)
            }
            None if allow_missing => (None, 0),
            None => return Err(FeedError::NotFound),
        };
        let done = first.as_ref().is_some_and(|(s, _)| s.is_final());
        Ok((
            Self {
                sub,
                store: store.clone(),
                id,
                last_version,
                done,
                needs_resync: false,
                resync_failures: 0,
                received: None,
            },
            first,
        ))
    }

    /// Whether the final state has been handed out.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// When the state last handed out by [`PaymentFeed::next`] arrived from the broker;
    /// `None` for the snapshot, or once taken.
    pub fn take_received(&mut self) -> Option<std::time::Instant> {
        self.received.take()
    }

    /// Waits for the next frame to send. Cancel-safe. After the final frame it waits
    /// forever (callers stop asking once `is_done`).
    pub async fn next(&mut self) -> FeedEvent {
        match self.next_state().await {
            Some((status, state)) => FeedEvent::Frame(frame_for(status, &state)),
            None => FeedEvent::Closed,
        }
    }

    /// [`PaymentFeed::next`] before framing: the next newer state, or `None` when the
    /// broker is gone. Cancel-safe.
    pub async fn next_state(&mut self) -> Option<(PaymentStatus, String)> {
        loop {
            if self.done {
                return std::future::pending().await;
            }
            if self.needs_resync {
                // Boxed: the read is rare, and inline it would make every idle
                // connection's session future larger by the size of a Redis round trip.
                match Box::pin(self.store.get(&self.id)).await {
                    Ok(Some(state)) => {
                        self.needs_resync = false;
                        self.resync_failures = 0;
                        if let Some(f) = self.accept(&state) {
                            self.received = Some(std::time::Instant::now());
                            return Some(f);
                        }
                    }
                    Ok(None) => self.needs_resync = false,
                    Err(e) => {
                        // Redis is coming back: the subscriber may be up before the
                        // command pool is. Retry with backoff (this is a retry of a
                        // failed read, not a wait for an event).
                        self.resync_failures += 1;
                        tracing::debug!(error = %e, checkout_request_id = %self.id, attempt = self.resync_failures, "resync read failed");
                        if self.resync_failures > MAX_RESYNC_ATTEMPTS {
                            self.needs_resync = false;
                            self.resync_failures = 0;
                        } else {
                            let ms = 50u64 << self.resync_failures.min(4);
                            Box::pin(tokio::time::sleep(std::time::Duration::from_millis(ms)))
                                .await;
                        }
                    }
                }
                continue;
            }
            match self.sub.recv().await {
                BrokerEvent::Message(state) => {
                    let at = std::time::Instant::now();
                    if let Some(f) = self.accept(&state) {
                        self.received = Some(at);
                        return Some(f);
                    }
                }
                BrokerEvent::Resync => self.needs_resync = true,
                BrokerEvent::Closed => return None,
            }
        }
    }

    /// Passes a newer state on; older or equal versions are dropped.
    fn accept(&mut self, state: &str) -> Option<(PaymentStatus, String)> {
        let h = match head(state) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, checkout_request_id = %self.id, "ignoring undecodable state");
                return None;
            }
        };
        if h.version <= self.last_version {
            return None;
        }
        self.last_version = h.version;
        if h.status.is_final() {
            self.done = true;
        }
        Some((h.status, state.to_owned()))
    }
}
