//! What a compatibility socket (`GET /sessions/{token}/websocket`, `docs/compat.md`)
//! receives: `STK_INITIATED` once the session's push is accepted, then
//! `PAYMENT_COMPLETED` once it is final, each at most once per connection, then the
//! session closes with 1000. The frames are `shared::compat::CompatMessage`; the socket
//! loop, heartbeat, send bounds and shutdown are `ws::session`'s.
//!
//! Nothing can slip between the steps, whichever node took the initiate:
//! 1. subscribe to the session's channel, then read the session key
//!    (`crate::sessions`): the push is either already stored or announced later;
//! 2. once the CheckoutRequestID is known, subscribe to the payment's channel, then read
//!    its state (`PaymentFeed::open_states`), as a `/v1/payments/{id}/ws` socket does.
//!
//! A reconnecting socket gets `STK_INITIATED` and, if final, `PAYMENT_COMPLETED` again
//! from the stored state. `PAYMENT_UPDATE`s (pending states) are not part of this
//! protocol and are not sent.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use stk_relay_shared::broker::{Broker, BrokerEvent, Subscription};
use stk_relay_shared::compat::{CompatMessage, PaymentCompleted, StkInitiated};
use stk_relay_shared::ids::CheckoutRequestId;
use stk_relay_shared::payment::PaymentState;
use stk_relay_shared::session_token::SessionId;
use stk_relay_shared::store::PaymentStore;

use crate::feed::{FeedError, FeedEvent, PaymentFeed};
use crate::sessions::{SessionRecord, SessionStore};
use crate::ws::session::FrameSource;

/// Failed re-reads of the session key (after a broker resync) before the socket is
/// closed with 1001 so that the client reconnects.
const MAX_REREAD_ATTEMPTS: u32 = 20;

enum Stage {
    /// No push known yet: subscribed to the session's channel.
    Waiting {
        sub: Subscription,
        /// A resync happened: the key must be read again.
        reread: bool,
        failures: u32,
    },
    /// Following the payment.
    Following(PaymentFeed),
    /// `PAYMENT_COMPLETED` is queued or sent.
    Finished,
}

pub struct CompatFeed {
    broker: Arc<dyn Broker>,
    store: PaymentStore,
    sessions: SessionStore,
    sid: SessionId,
    stage: Stage,
    /// The push, known but not yet followed (kept until following succeeds, so a
    /// cancelled `next_frame` resumes it).
    initiated: Option<StkInitiated>,
    queue: VecDeque<String>,
    /// When the state behind the queued `PAYMENT_COMPLETED` arrived from the broker.
    received: Option<std::time::Instant>,
}

fn encode(m: &CompatMessage) -> Result<String, FeedError> {
    m.encode().map_err(|e| FeedError::BadState(e.to_string()))
}

impl CompatFeed {
    /// Subscribes to the session's channel, then reads the session; if its push is
    /// known, starts following the payment at once.
    pub async fn open(
        broker: &Arc<dyn Broker>,
        store: &PaymentStore,
        sessions: &SessionStore,
        sid: SessionId,
    ) -> Result<Self, FeedError> {
        let sub = broker
            .subscribe(&sessions.keyspace().session_channel(&sid))
            .await?;
        let record = sessions.get(&sid).await?;
        let mut feed = Self {
            broker: broker.clone(),
            store: store.clone(),
            sessions: sessions.clone(),
            sid,
            stage: Stage::Waiting {
                sub,
                reread: false,
                failures: 0,
            },
            initiated: None,
            queue: VecDeque::new(),
            received: None,
        };
        if let SessionRecord::Initiated(json) = record {
            feed.learn(&json);
            feed.follow().await?;
        }
        Ok(feed)
    }

    /// Takes note of an announced or stored push.
    fn learn(&mut self, json: &str) {
        if self.initiated.is_some() || !matches!(self.stage, Stage::Waiting { .. }) {
            return;
        }
        match serde_json::from_str::<StkInitiated>(json) {
            Ok(i) => self.initiated = Some(i),
            Err(e) => tracing::warn!(error = %e, "ignoring an undecodable session record"),
        }
    }

    /// Subscribes to the known push's payment, then reads it; queues `STK_INITIATED`
    /// and, if the payment is already final, `PAYMENT_COMPLETED`.
    async fn follow(&mut self) -> Result<(), FeedError> {
        let Some(initiated) = self.initiated.clone() else {
            return Ok(());
        };
        let id = CheckoutRequestId::parse(&initiated.checkout_request_id)
            .map_err(|e| FeedError::BadState(e.to_string()))?;
        tracing::Span::current().record("checkout_request_id", id.as_str());
        // The pending record may still be queued on the node that pushed (Redis was
        // briefly away): then the feed waits for the first published state.
        let (feed, first) = PaymentFeed::open_states(&self.broker, &self.store, id, true).await?;
        self.initiated = None;
        self.queue
            .push_back(encode(&CompatMessage::StkInitiated(initiated))?);
        match first {
            Some((status, state)) if status.is_final() => {
                self.queue.push_back(completed_frame(&state)?);
                self.stage = Stage::Finished;
            }
            _ => self.stage = Stage::Following(feed),
        }
        Ok(())
    }
}

/// The `PAYMENT_COMPLETED` frame of a final STATE JSON.
fn completed_frame(state: &str) -> Result<String, FeedError> {
    let s: PaymentState =
        serde_json::from_str(state).map_err(|e| FeedError::BadState(e.to_string()))?;
    let done = PaymentCompleted::from_state(&s)
        .ok_or_else(|| FeedError::BadState("state is not final".into()))?;
    encode(&CompatMessage::PaymentCompleted(done))
}

impl FrameSource for CompatFeed {
    async fn next_frame(&mut self) -> FeedEvent {
        loop {
            if let Some(f) = self.queue.pop_front() {
                return FeedEvent::Frame(f);
            }
            if self.initiated.is_some() {
                if let Err(e) = self.follow().await {
                    tracing::warn!(error = %e, "cannot follow the session's payment; closing");
                    return FeedEvent::Closed;
                }
                continue;
            }
            match &mut self.stage {
                Stage::Finished => return std::future::pending().await,
                Stage::Waiting {
                    reread: reread @ true,
                    failures,
                    ..
                } => match self.sessions.get(&self.sid).await {
                    Ok(record) => {
                        *reread = false;
                        *failures = 0;
                        if let SessionRecord::Initiated(json) = record {
                            self.learn(&json);
                        }
                    }
                    Err(e) => {
                        // Redis is coming back (a retry of a failed read, bounded).
                        *failures += 1;
                        tracing::debug!(error = %e, attempt = *failures, "session re-read failed");
                        if *failures > MAX_REREAD_ATTEMPTS {
                            return FeedEvent::Closed;
                        }
                        let ms = 50u64 << (*failures).min(4);
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                },
                Stage::Waiting { sub, reread, .. } => match sub.recv().await {
                    BrokerEvent::Message(json) => self.learn(&json),
                    BrokerEvent::Resync => *reread = true,
                    BrokerEvent::Closed => return FeedEvent::Closed,
                },
                Stage::Following(feed) => match feed.next_state().await {
                    Some((status, state)) if status.is_final() => {
                        self.received = feed.take_received();
                        self.stage = Stage::Finished;
                        match completed_frame(&state) {
                            Ok(f) => self.queue.push_back(f),
                            Err(e) => {
                                tracing::error!(error = %e, "cannot translate a final state");
                                return FeedEvent::Closed;
                            }
                        }
                    }
                    // Pending states are not part of this protocol.
                    Some(_) => {}
                    None => return FeedEvent::Closed,
                },
            }
        }
    }

    fn is_done(&self) -> bool {
        matches!(self.stage, Stage::Finished) && self.queue.is_empty()
    }

    fn take_received(&mut self) -> Option<std::time::Instant> {
        // Only once the frame it belongs to has been handed out.
        if self.queue.is_empty() {
            self.received.take()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use stk_relay_shared::broker::memory::MemoryBroker;
    use stk_relay_shared::ids::MerchantRequestId;
    use stk_relay_shared::keyspace::Keyspace;
    use stk_relay_shared::payment::{PaymentOutcome, ResultCode};
    use stk_relay_shared::store::{MemoryStorage, Storage};

    async fn frame(feed: &mut CompatFeed) -> CompatMessage {
        let ev = tokio::time::timeout(Duration::from_secs(5), feed.next_frame())
            .await
            .expect("a frame in time");
        match ev {
            FeedEvent::Frame(f) => serde_json::from_str(&f).unwrap(),
            FeedEvent::Closed => panic!("feed closed"),
        }
    }

    /// On the memory backend: a socket opened before the initiate learns the push from
    /// the session channel (the payment's record may not be stored yet: it then waits
    /// for the first published state), skips pending states, and gets one completion.
    /// (The memory payment table is another change's; the states are published here as
    /// the store publishes them.)
    #[tokio::test]
    async fn memory_backend_initiated_then_completed() {
        let mem = MemoryBroker::new();
        let storage = Storage::Memory(MemoryStorage::new(mem.clone()));
        let keys = Keyspace::new("t");
        let broker: Arc<dyn Broker> = Arc::new(mem);
        let store = PaymentStore::new(storage.clone(), keys.clone(), Duration::from_secs(600));
        let sessions = SessionStore::new(storage, keys.clone());
        let sid = SessionId::parse("cs_0123456789abcdef").unwrap();

        let mut feed = CompatFeed::open(&broker, &store, &sessions, sid.clone())
            .await
            .unwrap();
        assert!(!feed.is_done());

        let id = CheckoutRequestId::parse("ws_CO_1").unwrap();
        let initiated = StkInitiated {
            status: "PENDING".into(),
            checkout_request_id: "ws_CO_1".into(),
            merchant_request_id: "29115-1".into(),
            timestamp: "2025-01-01T10:00:00Z".into(),
        };
        let json = serde_json::to_string(&initiated).unwrap();
        sessions
            .bind(&broker, &sid, &json, Duration::from_secs(600))
            .await
            .unwrap();
        assert_eq!(
            frame(&mut feed).await,
            CompatMessage::StkInitiated(initiated.clone())
        );
        assert!(!feed.is_done());

        let mut state = PaymentState::pending(
            id.clone(),
            MerchantRequestId::parse("29115-1").unwrap(),
            100,
            "2547******78".into(),
            Utc::now(),
        );
        let channel = keys.payment_channel(&id);
        let pending_json = serde_json::to_string(&state).unwrap();
        broker.publish(&channel, &pending_json).await.unwrap();
        let code = ResultCode::from_text("1032").unwrap();
        let outcome =
            PaymentOutcome::from_code(code, "Request cancelled by user".into(), Utc::now());
        state.apply(&outcome);
        let final_json = serde_json::to_string(&state).unwrap();
        broker.publish(&channel, &final_json).await.unwrap();
        // A duplicate of the final state is not sent again.
        broker.publish(&channel, &final_json).await.unwrap();

        let CompatMessage::PaymentCompleted(done) = frame(&mut feed).await else {
            panic!("expected PAYMENT_COMPLETED");
        };
        assert_eq!(done.status, stk_relay_shared::compat::CompatStatus::Failed);
        assert_eq!(done.reason.as_deref(), Some("Request cancelled by user"));
        assert_eq!(done.reason_code.as_deref(), Some("CANCELLED_BY_USER"));
        assert_eq!(done.checkout_request_id, "ws_CO_1");
        assert!(feed.is_done());

        // A socket opened later learns the push from the stored session record.
        let mut again = CompatFeed::open(&broker, &store, &sessions, sid)
            .await
            .unwrap();
        assert_eq!(
            frame(&mut again).await,
            CompatMessage::StkInitiated(initiated)
        );
    }
}
