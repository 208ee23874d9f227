//! A browser-side WebSocket client that yields parsed server messages.
//!
//! Text frames are parsed as [`ServerMessageOwned`]; a frame that does not parse is an
//! error (the protocol has no other text frames). Pings are reported, so a test can use
//! the server's heartbeat as the "later event" that shows nothing else was sent.

use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use futures_util::StreamExt as _;
use stk_relay_shared::api::{MessageType, ServerMessageOwned};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// One thing that happened on the socket.
#[derive(Debug)]
pub enum WsEvent {
    Message(ServerMessageOwned),
    Ping,
    /// The server sent a Close frame (or the stream ended cleanly without one: `None`).
    Closed(Option<CloseFrame<'static>>),
    /// The connection broke without a close handshake (e.g. the server was killed).
    Dropped(String),
}

/// Why a connection attempt failed.
#[derive(Debug)]
pub enum WsConnectError {
    /// The server answered the upgrade request with a non-101 status.
    Http {
        status: u16,
        body: String,
    },
    Other(String),
}

impl std::fmt::Display for WsConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Http { status, body } => write!(f, "upgrade refused: HTTP {status}: {body}"),
            Self::Other(e) => write!(f, "connect failed: {e}"),
        }
    }
}

impl std::error::Error for WsConnectError {}

/// An open WebSocket to `/v1/payments/{id}/ws`.
pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    finished: bool,
    last_text: Option<String>,
}

impl WsClient {
    /// Connects (bounded by [`crate::STEP`]).
    pub async fn connect(url: &str) -> Result<Self, WsConnectError> {
        let fut = tokio_tungstenite::connect_async(url);
        match tokio::time::timeout(crate::STEP, fut).await {
            Err(_) => Err(WsConnectError::Other(format!(
                "timed out connecting to {url}"
            ))),
            Ok(Ok((stream, _resp))) => Ok(Self {
                stream,
                finished: false,
                last_text: None,
            }),
            Ok(Err(tungstenite::Error::Http(resp))) => Err(WsConnectError::Http {
                status: resp.status().as_u16(),
                body: resp
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default(),
            }),
            Ok(Err(e)) => Err(WsConnectError::Other(e.to_string())),
        }
    }

    /// The text of the last server message, exactly as it arrived.
    pub fn last_raw(&self) -> Option<&str> {
        self.last_text.as_deref()
    }

    /// The next event, waiting at most `within`.
    pub async fn next_event(&mut self, within: Duration) -> Result<WsEvent> {
        if self.finished {
            bail!("the socket is already closed");
        }
        loop {
            let frame = tokio::time::timeout(within, self.stream.next())
                .await
                .map_err(|_| anyhow!("no WebSocket event within {within:?}"))?;
            let msg = match frame {
                None => {
                    self.finished = true;
                    return Ok(WsEvent::Closed(None));
                }
                Some(Err(e)) => {
                    self.finished = true;
                    return Ok(match e {
                        tungstenite::Error::ConnectionClosed => WsEvent::Closed(None),
                        other => WsEvent::Dropped(other.to_string()),
                    });
                }
                Some(Ok(m)) => m,
            };
            match msg {
                Message::Text(text) => {
                    let parsed: ServerMessageOwned = serde_json::from_str(&text)
                        .with_context(|| format!("unparseable server message: {text}"))?;
                    self.last_text = Some(text.to_string());
                    return Ok(WsEvent::Message(parsed));
                }
                Message::Ping(_) => return Ok(WsEvent::Ping),
                Message::Pong(_) => continue,
                Message::Close(frame) => {
                    self.finished = true;
                    return Ok(WsEvent::Closed(frame.map(CloseFrame::into_owned)));
                }
                Message::Binary(b) => bail!("unexpected binary frame of {} bytes", b.len()),
                Message::Frame(_) => continue,
            }
        }
    }

    /// The next server message, skipping pings; a close is an error.
    pub async fn next_message(&mut self, within: Duration) -> Result<ServerMessageOwned> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let ev = match self.next_event(left).await {
                Ok(ev) => ev,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    bail!("no server message within {within:?} (only pings): {e}")
                }
                Err(e) => return Err(e),
            };
            match ev {
                WsEvent::Message(m) => return Ok(m),
                WsEvent::Ping => continue,
                other => bail!("socket ended while waiting for a message: {other:?}"),
            }
        }
    }

    /// The next message, which must be of `kind`.
    pub async fn expect(&mut self, kind: MessageType) -> Result<ServerMessageOwned> {
        self.expect_within(kind, crate::STEP).await
    }

    /// The next message within `within`, which must be of `kind`.
    pub async fn expect_within(
        &mut self,
        kind: MessageType,
        within: Duration,
    ) -> Result<ServerMessageOwned> {
        let m = self.next_message(within).await?;
        if m.kind != kind {
            bail!("expected {kind:?}, got {:?}: {:?}", m.kind, m.data);
        }
        Ok(m)
    }

    /// Shows that the server sends no further message: reads until `pings` server pings
    /// arrived or the server closed the socket, failing on any message. Needs a server
    /// heartbeat shorter than `within`.
    pub async fn expect_no_message(&mut self, pings: usize, within: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        let mut seen = 0;
        while seen < pings {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await.with_context(|| {
                format!("waiting for ping {} of {pings} as a quiet marker", seen + 1)
            })? {
                WsEvent::Message(m) => bail!("unexpected further message: {m:?}"),
                WsEvent::Ping => seen += 1,
                WsEvent::Closed(_) | WsEvent::Dropped(_) => return Ok(()),
            }
        }
        Ok(())
    }

    /// Waits for the server to end the connection; returns the close code if it sent one.
    pub async fn expect_end(&mut self, within: Duration) -> Result<Option<CloseCode>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await? {
                WsEvent::Ping => continue,
                WsEvent::Message(m) => bail!("expected the socket to end, got {m:?}"),
                WsEvent::Closed(frame) => return Ok(frame.map(|f| f.code)),
                WsEvent::Dropped(_) => return Ok(None),
            }
        }
    }

    /// Closes from the client side (best effort).
    pub async fn close(mut self) {
        if !self.finished {
            let _ = tokio::time::timeout(Duration::from_secs(2), self.stream.close(None)).await;
        }
    }
}
