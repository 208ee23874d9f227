//! One WebSocket session: a single async function, a `select!` over shutdown, the
//! payment feed, client frames and the heartbeat. No actors, no shared locks.

use std::time::{Duration, Instant};

use actix_ws::{Message, MessageStream, Session};
use futures_util::StreamExt;
use stk_relay_shared::shutdown::Shutdown;

use crate::feed::{FeedEvent, PaymentFeed};
use crate::startup::ConnectionGuard;
use crate::ws::protocol;

/// Bound on one outbound send: a socket too slow to take a frame in this time is closed.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

pub struct SessionConfig {
    pub heartbeat_interval: Duration,
    pub client_timeout: Duration,
}

async fn send(session: &mut Session, text: String) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, session.text(text)).await,
        Ok(Ok(()))
    )
}

/// Runs the session to its end. `first` is the snapshot frame from `PaymentFeed::open`.
pub async fn run(
    mut session: Session,
    msgs: MessageStream,
    mut feed: PaymentFeed,
    first: String,
    cfg: SessionConfig,
    shutdown: Shutdown,
    _guard: ConnectionGuard,
) {
    let mut msgs = msgs.max_frame_size(protocol::MAX_CLIENT_FRAME);
    if !send(&mut session, first).await {
        return;
    }
    if feed.is_done() {
        let _ = session.close(Some(protocol::completed())).await;
        return;
    }
    let mut heartbeat = tokio::time::interval_at(
        tokio::time::Instant::now() + cfg.heartbeat_interval,
        cfg.heartbeat_interval,
    );
    let mut last_heard = Instant::now();
    let stopping = shutdown.wait();
    tokio::pin!(stopping);

    let reason = loop {
        tokio::select! {
            biased;
            _ = &mut stopping => break Some(protocol::going_away("server shutting down")),
            ev = feed.next() => match ev {
                FeedEvent::Frame(frame) => {
                    if !send(&mut session, frame).await {
                        return;
                    }
                    if feed.is_done() {
                        break Some(protocol::completed());
                    }
                }
                FeedEvent::Closed => break Some(protocol::going_away("broker closed")),
            },
            msg = msgs.next() => match msg {
                Some(Ok(Message::Ping(bytes))) => {
                    last_heard = Instant::now();
                    if session.pong(&bytes).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None => break None,
                Some(Ok(_)) => last_heard = Instant::now(),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "websocket protocol error");
                    break None;
                }
            },
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > cfg.client_timeout {
                    break Some(protocol::going_away("idle timeout"));
                }
                if session.ping(b"").await.is_err() {
                    return;
                }
            }
        }
    };
    let _ = session.close(reason).await;
}
