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
        let sub = broker
            .subscribe(&store.keyspace().payment_channel(&id))
            .await?;
        let state = store.get(&id).await?.ok_or(FeedError::NotFound)?;
        let h = head(&state)?;
        let frame = frame_for(h.status, &state);
        Ok((
            Self {
                sub,
                store: store.clone(),
                id,
                last_version: h.version,
                done: h.status.is_final(),
                needs_resync: false,
                resync_failures: 0,
            },
            frame,
        ))
    }

    /// Whether the final state has been handed out.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Waits for the next frame to send. Cancel-safe. After the final frame it waits
    /// forever (callers stop asking once `is_done`).
    pub async fn next(&mut self) -> FeedEvent {
        loop {
            if self.done {
                return std::future::pending().await;
            }
            if self.needs_resync {
                match self.store.get(&self.id).await {
                    Ok(Some(state)) => {
                        self.needs_resync = false;
                        self.resync_failures = 0;
                        if let Some(f) = self.accept(&state) {
                            return FeedEvent::Frame(f);
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
                            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                        }
                    }
                }
                continue;
            }
            match self.sub.recv().await {
                BrokerEvent::Message(state) => {
                    if let Some(f) = self.accept(&state) {
                        return FeedEvent::Frame(f);
                    }
                }
                BrokerEvent::Resync => self.needs_resync = true,
                BrokerEvent::Closed => return FeedEvent::Closed,
            }
        }
    }

    /// Turns a newer state into a frame; older or equal versions are dropped.
    fn accept(&mut self, state: &str) -> Option<String> {
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
        Some(frame_for(h.status, state))
    }
}
