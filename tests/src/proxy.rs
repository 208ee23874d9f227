//! A small HTTP-aware TCP proxy standing in for the load balancer in front of the
//! gateways, for browser tests: it sends every connection to the first backend that
//! accepts it (so a test knows where a browser's socket is, and a killed node's
//! browsers fail over to the next), and it can refuse WebSocket upgrades or paths, as a
//! proxy without upgrade support or a broken route would.
//!
//! Each forwarded request other than an upgrade gets `Connection: close`, so every
//! request arrives on a fresh connection and every rule sees every request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy refuses (with 502 and no body).
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Refuse every WebSocket upgrade request.
    pub refuse_upgrades: bool,
    /// Refuse requests whose path contains any of these.
    pub refuse_paths: Vec<String>,
}

pub struct Proxy {
    addr: SocketAddr,
    rules: Arc<Mutex<Rules>>,
    refused: Arc<AtomicUsize>,
    log: Arc<RequestLog>,
    task: tokio::task::JoinHandle<()>,
}

/// Every request the proxy saw, as `"refused <path>"` or `"forwarded <path> to <backend
/// index>"` (the first 10,000), with a notification on each.
#[derive(Default)]
struct RequestLog {
    lines: Mutex<Vec<String>>,
    changed: tokio::sync::Notify,
}

impl RequestLog {
    fn push(&self, line: String) {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() < 10_000 {
            lines.push(line);
        }
        drop(lines);
        self.changed.notify_waiters();
    }
}

const MAX_HEAD: usize = 16 * 1024;

impl Proxy {
    /// Listens on a free loopback port in front of `backends` (tried in order).
    pub async fn start(backends: Vec<SocketAddr>, rules: Rules) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let rules = Arc::new(Mutex::new(rules));
        let refused = Arc::new(AtomicUsize::new(0));
        let log = Arc::new(RequestLog::default());
        let backends = Arc::new(backends);
        let (r, n, l) = (rules.clone(), refused.clone(), log.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (rules, refused, log, backends) =
                    (r.clone(), n.clone(), l.clone(), backends.clone());
                tokio::spawn(async move {
                    let _ = serve(client, &backends, &rules, &refused, &log).await;
                });
            }
        });
        Ok(Self {
            addr,
            rules,
            refused,
            log,
            task,
        })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many requests the rules refused so far.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    /// Waits until the requests seen so far (see [`RequestLog`]) satisfy `done`, within
    /// `within`.
    pub async fn wait_for(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&[String]) -> bool,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let changed = self.log.changed.notified();
            {
                let lines = self.log.lines.lock().unwrap_or_else(|p| p.into_inner());
                if done(&lines) {
                    return Ok(());
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let lines = self.log.lines.lock().unwrap_or_else(|p| p.into_inner());
                anyhow::bail!("proxy: no {what} within {within:?}; requests: {lines:?}");
            }
        }
    }

    /// The requests seen so far (see [`RequestLog`]).
    pub fn requests(&self) -> Vec<String> {
        self.log
            .lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_rules(&self, rules: Rules) {
        *self.rules.lock().unwrap_or_else(|p| p.into_inner()) = rules;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The address in `http://host:port`.
pub fn addr_of(url: &str) -> Result<SocketAddr> {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .with_context(|| format!("not an http://ip:port URL: {url}"))
}

async fn serve(
    mut client: TcpStream,
    backends: &[SocketAddr],
    rules: &Mutex<Rules>,
    refused: &AtomicUsize,
    log: &RequestLog,
) -> Result<()> {
    let mut buf = Vec::with_capacity(2048);
    let head_end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok(i + 4);
            }
            if buf.len() > MAX_HEAD {
                anyhow::bail!("request head too large");
            }
            let mut chunk = [0u8; 2048];
            let n = client.read(&mut chunk).await?;
            if n == 0 {
                anyhow::bail!("closed before a full request head");
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .context("request head timeout")??;
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let path = request_line.split(' ').nth(1).unwrap_or("");
    let headers: Vec<&str> = lines.filter(|l| !l.is_empty()).collect();
    let upgrade = headers.iter().any(|h| {
        h.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("upgrade") && v.trim().eq_ignore_ascii_case("websocket")
        })
    });
    let refuse = {
        let r = rules.lock().unwrap_or_else(|p| p.into_inner());
        (upgrade && r.refuse_upgrades) || r.refuse_paths.iter().any(|p| path.contains(p.as_str()))
    };
    let bare_path = path.split('?').next().unwrap_or("").to_owned();
    if refuse {
        refused.fetch_add(1, Ordering::SeqCst);
        log.push(format!("refused {bare_path}"));
        client
            .write_all(
                b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await?;
        return Ok(());
    }
    let mut forwarded = String::with_capacity(head.len() + 32);
    forwarded.push_str(request_line);
    forwarded.push_str("\r\n");
    for h in &headers {
        let is_connection = h
            .split_once(':')
            .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("connection"));
        if is_connection && !upgrade {
            continue;
        }
        forwarded.push_str(h);
        forwarded.push_str("\r\n");
    }
    if !upgrade {
        forwarded.push_str("Connection: close\r\n");
    }
    forwarded.push_str("\r\n");

    let mut upstream = None;
    for (i, b) in backends.iter().enumerate() {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(b)).await
        {
            upstream = Some((i, s));
            break;
        }
    }
    let Some((backend, mut upstream)) = upstream else {
        client
            .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await?;
        return Ok(());
    };
    log.push(format!("forwarded {bare_path} to {backend}"));
    upstream.write_all(forwarded.as_bytes()).await?;
    upstream.write_all(&buf[head_end..]).await?;
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    Ok(())
}
