//! A merchant's webhook endpoint for tests: plain HTTP/1.1 on a free loopback port,
//! keep-alive, answering each request as the test scripts it (a status, or never), and
//! reporting every request, with its headers, raw body and arrival time, and every
//! connection the sender closed while a request on it went unanswered.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How to answer one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// This status, with an empty body.
    Status(u16),
    /// No answer: the connection is held until the sender gives up or dies.
    Hang,
}

/// One request received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The connection it came on (numbered from 1).
    pub conn: u64,
    pub method: String,
    pub path: String,
    /// Header names lowercased.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub at: Instant,
    /// How it was answered.
    pub reply: Reply,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

#[derive(Debug, Clone)]
pub enum Event {
    Request(Received),
    /// The sender closed connection `conn` while a request on it was unanswered.
    Abandoned {
        conn: u64,
    },
}

struct Plan {
    next: VecDeque<Reply>,
    then: Reply,
}

/// The endpoint. Stops when dropped.
pub struct Receiver {
    url: String,
    plan: Arc<Mutex<Plan>>,
    events: mpsc::UnboundedReceiver<Event>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// Listens on a free port: the first requests get `first`, in order, and every later
    /// one gets `then`.
    pub async fn start(first: &[Reply], then: Reply) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hooks/stk", listener.local_addr()?);
        let plan = Arc::new(Mutex::new(Plan {
            next: first.iter().copied().collect(),
            then,
        }));
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(accept(listener, plan.clone(), tx));
        Ok(Self {
            url,
            plan,
            events,
            task,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// From now on every request gets `reply`.
    pub fn answer_all(&self, reply: Reply) {
        let mut p = self.plan.lock().unwrap_or_else(|e| e.into_inner());
        p.next.clear();
        p.then = reply;
    }

    /// The next event, within `within`.
    pub async fn next_event(&mut self, within: Duration) -> Result<Event> {
        tokio::time::timeout(within, self.events.recv())
            .await
            .map_err(|_| anyhow!("no webhook event within {within:?}"))?
            .context("the receiver stopped")
    }

    /// The next request, within `within` (abandoned connections are skipped).
    pub async fn next_request(&mut self, within: Duration) -> Result<Received> {
        let end = Instant::now() + within;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if let Event::Request(r) = self.next_event(left).await? {
                return Ok(r);
            }
        }
    }
}

async fn accept(listener: TcpListener, plan: Arc<Mutex<Plan>>, tx: mpsc::UnboundedSender<Event>) {
    let ids = AtomicU64::new(0);
    while let Ok((sock, _)) = listener.accept().await {
        let conn = ids.fetch_add(1, Ordering::Relaxed) + 1;
        tokio::spawn(serve(sock, conn, plan.clone(), tx.clone()));
    }
}

/// Serves one keep-alive connection until it closes.
async fn serve(
    mut sock: TcpStream,
    conn: u64,
    plan: Arc<Mutex<Plan>>,
    tx: mpsc::UnboundedSender<Event>,
) {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let Some((head_len, method, path, headers)) = read_head(&mut sock, &mut buf).await else {
            return;
        };
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_len + len {
            match sock.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        let body = buf[head_len..head_len + len].to_vec();
        buf.drain(..head_len + len);
        let reply = {
            let mut p = plan.lock().unwrap_or_else(|e| e.into_inner());
            let then = p.then;
            p.next.pop_front().unwrap_or(then)
        };
        let _ = tx.send(Event::Request(Received {
            conn,
            method,
            path,
            headers,
            body,
            at: Instant::now(),
            reply,
        }));
        match reply {
            Reply::Status(code) => {
                let resp = format!(
                    "HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: keep-alive\r\n\r\n"
                );
                if sock.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            }
            Reply::Hang => {
                // Read until the sender closes (it gave up, or died).
                let mut sink = [0u8; 1024];
                loop {
                    match sock.read(&mut sink).await {
                        Ok(0) | Err(_) => {
                            let _ = tx.send(Event::Abandoned { conn });
                            return;
                        }
                        Ok(_) => {}
                    }
                }
            }
        }
    }
}

/// Reads a request head: (its length, method, path, headers). `None` at EOF.
async fn read_head(
    sock: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Option<(usize, String, String, HashMap<String, String>)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&buf[..end]).into_owned();
            let mut lines = text.split("\r\n");
            let mut first = lines.next()?.split(' ');
            let method = first.next()?.to_owned();
            let path = first.next()?.to_owned();
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            return Some((end + 4, method, path, headers));
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        match sock.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}
