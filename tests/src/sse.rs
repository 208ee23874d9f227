//! A browser-side Server-Sent Events client for `/v1/payments/{id}/events`.
//!
//! It parses the `text/event-stream` framing (blank-line separated blocks of `event:`,
//! `data:` and `:comment` lines) and yields [`SseEvent`]s whose data is parsed as
//! [`ServerMessageOwned`].

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use stk_relay_shared::api::{MessageType, ServerMessageOwned};

/// One block of the stream.
#[derive(Debug)]
pub enum SseEvent {
    Message {
        /// The `event:` name, if the block had one.
        event: Option<String>,
        message: Box<ServerMessageOwned>,
    },
    /// A block of comments only (a heartbeat).
    Comment,
    /// The server ended the stream.
    Ended,
}

/// An open event stream.
pub struct SseClient {
    resp: reqwest::Response,
    buf: String,
    ready: VecDeque<SseEvent>,
    ended: bool,
}

impl SseClient {
    /// Wraps a response that was already checked to be a 200 event stream.
    pub fn new(resp: reqwest::Response) -> Self {
        Self {
            resp,
            buf: String::new(),
            ready: VecDeque::new(),
            ended: false,
        }
    }

    /// The next event, waiting at most `within`.
    pub async fn next_event(&mut self, within: Duration) -> Result<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(ev) = self.ready.pop_front() {
                return Ok(ev);
            }
            if self.ended {
                return Ok(SseEvent::Ended);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let chunk = tokio::time::timeout(left, self.resp.chunk())
                .await
                .map_err(|_| anyhow!("no SSE event within {within:?}"))?
                .context("reading the event stream")?;
            match chunk {
                None => self.ended = true,
                Some(bytes) => {
                    self.buf.push_str(&String::from_utf8_lossy(&bytes));
                    if self.buf.contains('\r') {
                        self.buf = self.buf.replace("\r\n", "\n").replace('\r', "\n");
                    }
                    self.drain_blocks()?;
                }
            }
        }
    }

    /// The next message, skipping heartbeats; the end of the stream is an error.
    pub async fn next_message(
        &mut self,
        within: Duration,
    ) -> Result<(Option<String>, ServerMessageOwned)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await? {
                SseEvent::Message { event, message } => return Ok((event, *message)),
                SseEvent::Comment => continue,
                SseEvent::Ended => bail!("the event stream ended while waiting for a message"),
            }
        }
    }

    /// The next message, which must be of `kind` and carry the event name `kind`.
    pub async fn expect(&mut self, kind: MessageType) -> Result<ServerMessageOwned> {
        let (event, m) = self.next_message(crate::STEP).await?;
        if m.kind != kind {
            bail!("expected {kind:?}, got {:?}: {:?}", m.kind, m.data);
        }
        if event.as_deref() != Some(kind.as_str()) {
            bail!("expected event name {}, got {event:?}", kind.as_str());
        }
        Ok(m)
    }

    fn drain_blocks(&mut self) -> Result<()> {
        while let Some(at) = self.buf.find("\n\n") {
            let block: String = self.buf[..at].to_owned();
            self.buf.drain(..at + 2);
            if let Some(ev) = parse_block(&block)? {
                self.ready.push_back(ev);
            }
        }
        Ok(())
    }
}

fn parse_block(block: &str) -> Result<Option<SseEvent>> {
    let mut event = None;
    let mut data: Option<String> = None;
    let mut comments = 0;
    for line in block.lines() {
        if line.starts_with(':') {
            comments += 1;
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => event = Some(value.to_owned()),
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            _ => {}
        }
    }
    match data {
        Some(d) => {
            let message: ServerMessageOwned =
                serde_json::from_str(&d).with_context(|| format!("unparseable SSE data: {d}"))?;
            Ok(Some(SseEvent::Message {
                event,
                message: Box::new(message),
            }))
        }
        None if comments > 0 || event.is_none() => Ok(Some(SseEvent::Comment)),
        None => bail!("SSE block with an event name but no data: {block}"),
    }
}
