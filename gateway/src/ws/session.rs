//! One WebSocket session: a single async function, a `select!` over shutdown, the
//! payment feed, client frames, the heartbeat and the connection's end of life. No
//! actors, no shared locks.
//!
//! Every frame sent (text, ping, pong, close) is bounded by `ws.send_timeout_ms`. A
//! client that stops reading fills the socket buffers and then actix-ws's bounded
//! outbound queue; the next send times out, the session ends and releases its slot, and
//! the TCP connection is reset through [`ClientSocket`] (actix would otherwise keep the
//! stuck connection open, and a graceful stop would wait for it). A connection lives at
//! most `ws.max_lifetime_secs`, then closes with 1001 so the client reconnects.
//!
//! SSE streams have no task of their own (actix polls them), so
//! [`ClientSocket::watch_stream`] cuts one that has not ended within the send timeout
//! of the shutdown or of its maximum lifetime.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::Extensions;
use actix_web::HttpRequest;
use actix_ws::{CloseReason, Message, MessageStream, Session};
use futures_util::StreamExt;
use stk_relay_shared::metrics::{self, Transport};
use stk_relay_shared::shutdown::Shutdown;

use crate::feed::{FeedEvent, PaymentFeed};
use crate::startup::ConnectionGuard;
use crate::ws::protocol;

/// Where a session's frames come from: the payment feed (`/v1/payments/{id}/ws`), or
/// the compatibility feed (`crate::ws::compat`, `/sessions/{token}/websocket`).
pub trait FrameSource {
    /// The next frame to send. Must be cancel-safe: it runs inside `select!`.
    fn next_frame(&mut self) -> impl std::future::Future<Output = FeedEvent>;
    /// Whether the last frame has been handed out (the session then closes with 1000).
    fn is_done(&self) -> bool;
    /// When the frame last handed out arrived from the broker, if it did and this source
    /// keeps track (the delivery histogram starts there).
    fn take_received(&mut self) -> Option<Instant> {
        None
    }
}

impl FrameSource for PaymentFeed {
    async fn next_frame(&mut self) -> FeedEvent {
        self.next().await
    }

    fn is_done(&self) -> bool {
        PaymentFeed::is_done(self)
    }

    fn take_received(&mut self) -> Option<Instant> {
        PaymentFeed::take_received(self)
    }
}

pub struct SessionConfig {
    pub heartbeat_interval: Duration,
    pub client_timeout: Duration,
    /// Bound on one outbound frame.
    pub send_timeout: Duration,
    /// When the connection must end, whatever happens.
    pub max_lifetime: Duration,
}

impl From<&crate::config::WsSettings> for SessionConfig {
    fn from(ws: &crate::config::WsSettings) -> Self {
        Self {
            heartbeat_interval: ws.heartbeat_interval(),
            client_timeout: ws.client_timeout(),
            send_timeout: ws.send_timeout(),
            max_lifetime: ws.max_lifetime(),
        }
    }
}

/// A duplicate handle of a client connection's socket, recorded for every connection
/// by `HttpServer::on_connect` ([`ClientSocket::remember`]; it costs one file
/// descriptor per connection). It lets a session cut a client that stopped reading.
#[derive(Clone)]
pub struct ClientSocket(Arc<socket2::Socket>);

impl ClientSocket {
    /// `HttpServer::on_connect` hook: keeps a duplicate of the TCP socket in the
    /// connection's data.
    pub fn remember(conn: &dyn Any, ext: &mut Extensions) {
        if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
            match socket2::SockRef::from(tcp).try_clone() {
                Ok(dup) => {
                    ext.insert(ClientSocket(Arc::new(dup)));
                }
                Err(e) => tracing::debug!(error = %e, "cannot keep a socket handle"),
            }
        }
    }

    /// The socket of the connection that carries `req`, if it was recorded.
    pub fn of(req: &HttpRequest) -> Option<Self> {
        req.conn_data::<ClientSocket>().cloned()
    }

    /// Watches a response stream that actix drives (SSE), which has no task of its own:
    /// once it should have ended (shutdown, or `lifetime` passed), it gets `grace` to do
    /// so; if it still exists then (its client stopped reading, so actix stopped polling
    /// it), the connection is cut, which releases its slot. The stream holds the returned
    /// token; dropping it (the stream ended) ends the watch.
    pub fn watch_stream(
        socket: Option<Self>,
        shutdown: Shutdown,
        lifetime: Duration,
        grace: Duration,
    ) -> tokio::sync::oneshot::Sender<()> {
        let (alive, mut ended) = tokio::sync::oneshot::channel::<()>();
        if let Some(socket) = socket {
            // In the caller's span (`sse`), so the line below carries checkout_request_id.
            let span = tracing::Span::current();
            actix_web::rt::spawn(tracing::Instrument::instrument(
                async move {
                    tokio::select! {
                        _ = &mut ended => return,
                        _ = shutdown.wait() => {}
                        _ = tokio::time::sleep(lifetime) => {}
                    }
                    if tokio::time::timeout(grace, &mut ended).await.is_err() {
                        tracing::info!("event stream client is not reading; disconnecting");
                        socket.cut();
                    }
                },
                span,
            ));
        }
        alive
    }

    /// Ends the connection now: unsent data is discarded (the peer gets a reset once
    /// the last handle closes), and actix's pending write fails, so it lets go of it.
    pub fn cut(&self) {
        let _ = self.0.set_linger(Some(Duration::ZERO));
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
}

/// Why a send did not complete.
enum SendError {
    /// The client is gone or the session was closed.
    Closed,
    /// The client did not take the frame within the send timeout.
    TimedOut,
}

struct Out {
    session: Session,
    timeout: Duration,
    socket: Option<ClientSocket>,
}

/// Awaits one send, at most `timeout`. On expiry the connection is cut.
/// Boxed by its callers: a send is rare in an idle connection's life, and inline its
/// timer and channel futures would make every session future (one per connection) that
/// much larger.
async fn bounded<F>(
    timeout: Duration,
    socket: Option<&ClientSocket>,
    what: &'static str,
    fut: F,
) -> Result<(), SendError>
where
    F: std::future::Future<Output = Result<(), actix_ws::Closed>>,
{
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(SendError::Closed),
        Err(_) => {
            tracing::info!(
                frame = what,
                timeout_ms = timeout.as_millis() as u64,
                "websocket client is not reading; disconnecting"
            );
            if let Some(s) = socket {
                s.cut();
            }
            Err(SendError::TimedOut)
        }
    }
}

impl Out {
    async fn text(&mut self, text: String) -> Result<(), SendError> {
        let fut = self.session.text(text);
        Box::pin(bounded(self.timeout, self.socket.as_ref(), "text", fut)).await
    }

    async fn ping(&mut self) -> Result<(), SendError> {
        let fut = self.session.ping(b"");
        Box::pin(bounded(self.timeout, self.socket.as_ref(), "ping", fut)).await
    }

    async fn pong(&mut self, bytes: &[u8]) -> Result<(), SendError> {
        let fut = self.session.pong(bytes);
        Box::pin(bounded(self.timeout, self.socket.as_ref(), "pong", fut)).await
    }

    async fn close(self, reason: Option<CloseReason>) {
        let Out {
            session,
            timeout,
            socket,
        } = self;
        let _ = Box::pin(bounded(
            timeout,
            socket.as_ref(),
            "close",
            session.close(reason),
        ))
        .await;
    }
}

/// Runs the session to its end. `first` is the snapshot frame from `PaymentFeed::open`
/// (none when the source yields every frame itself).
#[allow(clippy::too_many_arguments)]
pub async fn run<F: FrameSource>(
    session: Session,
    msgs: MessageStream,
    mut feed: F,
    first: Option<String>,
    cfg: SessionConfig,
    shutdown: Shutdown,
    socket: Option<ClientSocket>,
    _guard: ConnectionGuard,
) {
    let expires = tokio::time::sleep(cfg.max_lifetime);
    tokio::pin!(expires);
    let mut out = Out {
        session,
        timeout: cfg.send_timeout,
        socket,
    };
    let mut msgs = msgs.max_frame_size(protocol::MAX_CLIENT_FRAME);
    if let Some(first) = first {
        if out.text(first).await.is_err() {
            return;
        }
    }
    if feed.is_done() {
        out.close(Some(protocol::completed())).await;
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
            _ = &mut expires => {
                tracing::debug!("websocket reached its maximum lifetime");
                break Some(protocol::going_away(protocol::MAX_LIFETIME_REASON));
            }
            ev = feed.next_frame() => match ev {
                FeedEvent::Frame(frame) => {
                    if out.text(frame).await.is_err() {
                        return;
                    }
                    if let Some(at) = feed.take_received() {
                        metrics::delivered(Transport::WebSocket, at.elapsed());
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
                    if out.pong(&bytes).await.is_err() {
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
                if out.ping().await.is_err() {
                    return;
                }
            }
        }
    };
    out.close(reason).await;
}
