//! The Redis broker: one dedicated pub/sub connection per process, owned by one task.
//!
//! The task takes `Subscribe` / `Release` commands, reference-counts channels, fans
//! messages out locally through one `broadcast` per channel, and after a reconnect
//! re-subscribes every channel that still has holders before raising `Resync`.
//! Subscriptions are never made on pooled connections.
//!
//! Channel states: `Subscribing` (SUBSCRIBE sent, waiters queued) → `Active` →
//! `Unsubscribing` (UNSUBSCRIBE sent; a new holder waits for its confirmation and then
//! subscribes again, so SUBSCRIBE/UNSUBSCRIBE for one channel never cross).
//!
//! The connection is proven end to end, not trusted: after every (re)connect, and then
//! every [`PROBE_INTERVAL`], the task publishes a probe on a channel only it subscribes
//! to and expects it back within [`PROBE_TIMEOUT`]. A SUBSCRIBE that Redis refused (the
//! client library reports those as success), or a half-open TCP connection, therefore
//! ends in a reconnect instead of silently missing results.
//!
//! Every wait is bounded, and a bound that expires is treated as a broken connection:
//! the connection is dropped and rebuilt, as on any other failure.
//! - SUBSCRIBE and UNSUBSCRIBE: `redis.command_timeout_ms` each.
//! - The reconnect (TCP connect and handshake within `redis.connect_timeout_ms`, then the
//!   re-SUBSCRIBE of every held channel and the probe round trip) within
//!   [`reconnect_bound`]: connect timeout + 2 × command timeout.
//! - The periodic probe: [`PROBE_TIMEOUT`].
//!
//! While disconnected, the next attempt is due at a fixed deadline (backoff from 50 ms
//! doubling to 2 s) that no incoming request moves, and the timer is polled before the
//! command queue, so a stream of subscribe requests cannot delay the reconnect. A
//! subscribe request that arrives after an attempt has failed is refused at once (the
//! gateway answers 503 and the browser retries); one that arrives before the first
//! attempt after a disconnect waits for it, within its own timeout.
//!
//! The connection comes from the pool's [`Topology`] (`subscriber_connection`): the
//! current primary (asking the sentinels again on every reconnect, in Sentinel mode),
//! plain or TLS, with the pool's keepalive and `TCP_USER_TIMEOUT`. A failover therefore
//! looks like any other loss here: Sentinel kills the demoted node's clients, and the
//! task reconnects to the new primary, re-subscribes and raises `Resync`.
//!
//! In Redis Cluster the handle is the same, but the task is [`super::cluster`]'s: sharded
//! pub/sub, one connection per shard.
//!
//! The command queue is unbounded on purpose: every entry belongs to one live
//! `Subscription` (one `Subscribe`, one `Release`), so its length is bounded by the
//! number of subscriptions, which the gateway caps; `Drop` must be able to release
//! without awaiting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::{Broker, BrokerError, Payload, Release, Subscription, FANOUT_CAPACITY};
use crate::config::RedisSettings;
use crate::keyspace::Keyspace;
use crate::store::pool::RedisPool;
use crate::store::topology::Topology;

type Reply = oneshot::Sender<Subscription>;

pub(crate) enum Command {
    Subscribe { channel: Arc<str>, reply: Reply },
    Release { channel: Arc<str> },
}

enum Internal {
    /// A SUBSCRIBE or UNSUBSCRIBE on `generation` did not answer in time.
    Stalled {
        generation: u64,
        what: &'static str,
    },
    ProbeNotSent {
        seq: u64,
    },
    Subscribed {
        channel: Arc<str>,
        generation: u64,
        ok: bool,
    },
    Unsubscribed {
        channel: Arc<str>,
        generation: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Subscribing,
    Active,
    Unsubscribing,
}

struct Entry {
    tx: broadcast::Sender<Payload>,
    refs: usize,
    state: State,
    waiters: Vec<Reply>,
}

/// The Redis implementation of [`Broker`].
#[derive(Clone)]
pub struct RedisBroker {
    cmd_tx: mpsc::UnboundedSender<Command>,
    connected: Arc<AtomicBool>,
    channels: Arc<AtomicUsize>,
    subscribe_timeout: Duration,
    pool: RedisPool,
}

impl RedisBroker {
    /// Starts the subscriber task. It connects in the background (and keeps
    /// reconnecting), so this succeeds even while Redis is down.
    pub fn start(settings: &RedisSettings, pool: RedisPool) -> Result<Self, BrokerError> {
        let topology = pool.topology().clone();
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let connected = Arc::new(AtomicBool::new(false));
        let channels = Arc::new(AtomicUsize::new(0));
        if topology.sharded_pubsub() {
            let task = super::cluster::ClusterTask::new(
                pool.clone(),
                settings.connect_timeout(),
                settings.command_timeout(),
                cmd_tx.clone(),
                cmd_rx,
                connected.clone(),
                channels.clone(),
            );
            tokio::spawn(task.run());
        } else {
            let node_id = {
                use rand::RngCore;
                let mut raw = [0u8; 8];
                rand::thread_rng().fill_bytes(&mut raw);
                raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
            };
            let probe_channel: Arc<str> =
                Arc::from(Keyspace::new(settings.key_prefix.clone()).node_probe_channel(&node_id));
            let task = Task {
                pool: pool.clone(),
                probe_channel,
                probe_seq: 0,
                probe_outstanding: None,
                topology,
                connect_timeout: settings.connect_timeout(),
                command_timeout: settings.command_timeout(),
                refusing: false,
                cmd_tx: cmd_tx.clone(),
                cmd_rx,
                internal: mpsc::unbounded_channel(),
                entries: HashMap::new(),
                sink: None,
                generation: 0,
                connected: connected.clone(),
                channels: channels.clone(),
                resync: watch::channel(0u64).0,
            };
            tokio::spawn(task.run());
        }
        Ok(Self {
            cmd_tx,
            connected,
            channels,
            subscribe_timeout: settings.connect_timeout() + settings.command_timeout(),
            pool,
        })
    }
}

impl Broker for RedisBroker {
    fn subscribe(&self, channel: &str) -> BoxFuture<'_, Result<Subscription, BrokerError>> {
        let channel: Arc<str> = Arc::from(channel);
        async move {
            let (reply, rx) = oneshot::channel();
            self.cmd_tx
                .send(Command::Subscribe { channel, reply })
                .map_err(|_| BrokerError::Closed)?;
            match tokio::time::timeout(self.subscribe_timeout, rx).await {
                Ok(Ok(sub)) => Ok(sub),
                // The task dropped the reply: the subscription failed.
                Ok(Err(_)) => Err(BrokerError::Unavailable(
                    "redis did not accept the subscription".into(),
                )),
                Err(_) => Err(BrokerError::Timeout),
            }
        }
        .boxed()
    }

    fn publish(&self, channel: &str, payload: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        let channel = channel.to_owned();
        let payload = payload.to_owned();
        async move {
            publish_on_pool(&self.pool, &channel, &payload)
                .await
                .map_err(BrokerError::Unavailable)
        }
        .boxed()
    }

    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn channel_count(&self) -> usize {
        self.channels.load(Ordering::Relaxed)
    }
}

struct Task {
    pool: RedisPool,
    probe_channel: Arc<str>,
    probe_seq: u64,
    /// The probe in flight and when it was sent.
    probe_outstanding: Option<(u64, Instant)>,
    topology: Topology,
    connect_timeout: Duration,
    command_timeout: Duration,
    /// Set after a failed connect attempt: subscribe requests are refused at once until
    /// the next attempt succeeds.
    refusing: bool,
    cmd_tx: mpsc::UnboundedSender<Command>,
    cmd_rx: mpsc::UnboundedReceiver<Command>,
    internal: (
        mpsc::UnboundedSender<Internal>,
        mpsc::UnboundedReceiver<Internal>,
    ),
    entries: HashMap<Arc<str>, Entry>,
    sink: Option<PubSubSink>,
    generation: u64,
    connected: Arc<AtomicBool>,
    channels: Arc<AtomicUsize>,
    resync: watch::Sender<u64>,
}

/// How often a connected subscriber proves it still receives messages.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a probe may take to come back before the connection is replaced.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause between attempts to publish the reconnect probe.
const PROBE_RETRY: Duration = Duration::from_millis(20);

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The bound on one whole reconnect: TCP connect and handshake (connect timeout), the
/// re-SUBSCRIBE of every held channel and the probe round trip (a command timeout each).
pub fn reconnect_bound(connect_timeout: Duration, command_timeout: Duration) -> Duration {
    connect_timeout + command_timeout * 2
}

impl Task {
    async fn run(mut self) {
        let mut stream: Option<PubSubStream> = None;
        let mut backoff = Duration::ZERO;
        // When the next connect attempt is due. A deadline, not a sleep re-created per
        // loop: commands arriving meanwhile must not push the attempt back.
        let mut reconnect_at = tokio::time::Instant::now();
        let mut primary_moved = self.topology.watch_epoch();
        let mut probe_tick = tokio::time::interval(PROBE_INTERVAL);
        probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if stream.is_none() {
                tokio::select! {
                    biased;
                    _ = tokio::time::sleep_until(reconnect_at) => {
                        let bound = reconnect_bound(self.connect_timeout, self.command_timeout);
                        primary_moved.borrow_and_update();
                        let attempt = tokio::time::timeout(bound, self.connect()).await;
                        match attempt.unwrap_or_else(|_| Err("reconnect timed out".to_string())) {
                            Ok(s) => {
                                stream = Some(s);
                                backoff = Duration::ZERO;
                                self.refusing = false;
                            }
                            Err(e) => {
                                backoff = (backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                                reconnect_at = tokio::time::Instant::now() + backoff;
                                self.on_connect_failed();
                                crate::metrics::broker_connect_failed();
                                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "redis subscriber connection failed");
                            }
                        }
                    }
                    cmd = self.cmd_rx.recv() => match cmd {
                        Some(cmd) => self.on_command(cmd),
                        None => break,
                    },
                    Some(i) = self.internal.1.recv() => {
                        // Nothing to drop: already disconnected.
                        let _ = self.on_internal(i);
                    }
                }
                continue;
            }
            let Some(s) = stream.as_mut() else { continue };
            let lost = tokio::select! {
                biased;
                msg = s.next() => match msg {
                    Some(msg) => {
                        self.on_message(msg);
                        None
                    }
                    None => Some("redis subscriber connection lost; reconnecting"),
                },
                cmd = self.cmd_rx.recv() => match cmd {
                    Some(cmd) => {
                        self.on_command(cmd);
                        None
                    }
                    None => break,
                },
                Some(i) = self.internal.1.recv() => self.on_internal(i),
                Ok(()) = primary_moved.changed() => {
                    Some("the redis primary moved; reconnecting to the new one")
                }
                _ = probe_tick.tick() => {
                    (!self.probe()).then_some("redis subscriber missed its probe; reconnecting")
                }
            };
            if let Some(why) = lost {
                tracing::warn!("{why}");
                crate::metrics::broker_reconnect(reconnect_reason(why));
                stream = None;
                self.on_disconnect();
                backoff = BACKOFF_MIN;
                reconnect_at = tokio::time::Instant::now() + BACKOFF_MIN;
            }
        }
        self.connected.store(false, Ordering::Relaxed);
        tracing::debug!("redis broker task stopped");
    }

    /// Opens the subscriber connection where the topology says the primary is.
    async fn open(&self) -> Result<redis::aio::PubSub, String> {
        self.topology.subscriber_connection().await
    }

    /// Opens the connection, re-subscribes every held channel, then tells every holder
    /// to resync. The caller bounds the whole of it by [`reconnect_bound`]; each step has
    /// its own bound too.
    async fn connect(&mut self) -> Result<PubSubStream, String> {
        let deadline = tokio::time::Instant::now()
            + reconnect_bound(self.connect_timeout, self.command_timeout);
        let conn = tokio::time::timeout(self.connect_timeout, self.open())
            .await
            .map_err(|_| "connect timed out".to_string())??;
        let (sink, mut stream) = conn.split();
        self.generation += 1;
        let held: Vec<Arc<str>> = self
            .entries
            .iter()
            .filter(|(_, e)| e.refs > 0)
            .map(|(k, _)| k.clone())
            .collect();
        self.entries.retain(|_, e| e.refs > 0);
        let resubscribe = futures_util::stream::iter(held.into_iter().map(|ch| {
            let mut sink = sink.clone();
            async move {
                let r = sink.subscribe(ch.as_ref()).await;
                (ch, r)
            }
        }))
        .buffer_unordered(256)
        .collect::<Vec<_>>();
        let results = tokio::time::timeout_at(
            deadline.min(tokio::time::Instant::now() + self.command_timeout),
            resubscribe,
        )
        .await
        .map_err(|_| "re-subscribe timed out".to_string())?;
        if let Some((_, Err(e))) = results.iter().find(|(_, r)| r.is_err()) {
            return Err(format!("re-subscribe failed: {e}"));
        }
        self.verify(&sink, &mut stream, deadline).await?;
        self.sink = Some(sink);
        for (ch, _) in results {
            if let Some(entry) = self.entries.get_mut(&ch) {
                entry.state = State::Active;
                let waiters = std::mem::take(&mut entry.waiters);
                self.reply_waiters(&ch, waiters);
            }
            // Every holder may have given up while we were reconnecting.
            if let Some(entry) = self.entries.get_mut(&ch) {
                if entry.refs == 0 {
                    entry.state = State::Unsubscribing;
                    self.send_unsubscribe(ch);
                }
            }
        }
        self.channels.store(self.entries.len(), Ordering::Relaxed);
        self.connected.store(true, Ordering::Relaxed);
        self.resync.send_modify(|v| *v += 1);
        tracing::info!(
            channels = self.entries.len(),
            generation = self.generation,
            "redis subscriber connected"
        );
        Ok(stream)
    }

    /// Subscribes the probe channel and waits for one probe to come back through the new
    /// connection, all before `deadline`. Messages for other channels that arrive
    /// meanwhile are fanned out.
    async fn verify(
        &mut self,
        sink: &PubSubSink,
        stream: &mut PubSubStream,
        deadline: tokio::time::Instant,
    ) -> Result<(), String> {
        let mut sink = sink.clone();
        let step = |t: Duration| deadline.min(tokio::time::Instant::now() + t);
        tokio::time::timeout_at(
            step(self.command_timeout),
            sink.subscribe(self.probe_channel.as_ref()),
        )
        .await
        .map_err(|_| "probe subscribe timed out".to_string())?
        .map_err(|e| format!("probe subscribe failed: {e}"))?;
        self.probe_seq += 1;
        let seq = self.probe_seq;
        // After a Redis restart, each pooled connection fails its first command (and then
        // reconnects by itself), and round-robin may hand out one of those: retry on the
        // next connection until the step's bound.
        let publish_by = step(self.command_timeout);
        loop {
            let r = tokio::time::timeout_at(
                publish_by,
                publish_probe(&self.pool, &self.probe_channel, seq),
            )
            .await
            .map_err(|_| "probe publish timed out".to_string())?;
            match r {
                Ok(()) => break,
                Err(e) if tokio::time::Instant::now() + PROBE_RETRY < publish_by => {
                    tracing::debug!(error = %e, "probe publish failed; retrying");
                    tokio::time::sleep(PROBE_RETRY).await;
                }
                Err(e) => return Err(format!("probe publish failed: {e}")),
            }
        }
        let until = step(self.connect_timeout);
        loop {
            let msg = tokio::time::timeout_at(until, stream.next())
                .await
                .map_err(|_| "probe did not come back: subscriptions are not live".to_string())?
                .ok_or_else(|| "connection closed during probe".to_string())?;
            if msg.get_channel_name() == self.probe_channel.as_ref() {
                if probe_seq_of(&msg) == Some(seq) {
                    self.probe_outstanding = None;
                    return Ok(());
                }
            } else {
                self.on_message(msg);
            }
        }
    }

    /// Sends the next periodic probe. Returns false if the previous one is overdue.
    fn probe(&mut self) -> bool {
        if let Some((_, sent)) = self.probe_outstanding {
            return sent.elapsed() <= PROBE_TIMEOUT;
        }
        self.probe_seq += 1;
        let seq = self.probe_seq;
        self.probe_outstanding = Some((seq, Instant::now()));
        let pool = self.pool.clone();
        let channel = self.probe_channel.clone();
        let tx = self.internal.0.clone();
        tokio::spawn(async move {
            if let Err(e) = publish_probe(&pool, &channel, seq).await {
                // The command pool is down, not necessarily the subscriber: no verdict.
                tracing::debug!(error = %e, "probe publish failed");
                let _ = tx.send(Internal::ProbeNotSent { seq });
            }
        });
        true
    }

    /// After a failed connect attempt: every queued subscribe request is refused now
    /// (the caller answers 503 and the browser retries) instead of waiting for an
    /// attempt that may fail too, and new ones are refused until a connect succeeds.
    /// Channels still held by live subscriptions stay, to be re-subscribed.
    fn on_connect_failed(&mut self) {
        self.refusing = true;
        self.sink = None;
        self.connected.store(false, Ordering::Relaxed);
        self.entries.retain(|_, entry| {
            let waiters = std::mem::take(&mut entry.waiters);
            entry.refs = entry.refs.saturating_sub(waiters.len());
            entry.state = State::Subscribing;
            entry.refs > 0
        });
        self.channels.store(self.entries.len(), Ordering::Relaxed);
    }

    fn on_disconnect(&mut self) {
        // The first attempt after a loss is expected to succeed: requests wait for it.
        self.refusing = false;
        self.probe_outstanding = None;
        self.sink = None;
        self.connected.store(false, Ordering::Relaxed);
        for entry in self.entries.values_mut() {
            // Everything held is re-subscribed on reconnect.
            entry.state = State::Subscribing;
        }
    }

    fn on_message(&mut self, msg: redis::Msg) {
        if msg.get_channel_name() == self.probe_channel.as_ref() {
            if let (Some(seq), Some((want, sent))) = (probe_seq_of(&msg), self.probe_outstanding) {
                if seq == want {
                    crate::metrics::broker_probe(sent.elapsed());
                    self.probe_outstanding = None;
                }
            }
            return;
        }
        let Some(entry) = self.entries.get(msg.get_channel_name()) else {
            return;
        };
        match std::str::from_utf8(msg.get_payload_bytes()) {
            Ok(text) => {
                // No receiver only means every holder is gone and a release is queued.
                let _ = entry.tx.send(Arc::from(text));
            }
            Err(_) => tracing::warn!(
                channel = msg.get_channel_name(),
                "non-UTF-8 payload dropped"
            ),
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Subscribe { channel, reply } => {
                if self.refusing && self.sink.is_none() {
                    // Dropping the reply tells the caller that Redis is unavailable.
                    drop(reply);
                    return;
                }
                let entry = self
                    .entries
                    .entry(channel.clone())
                    .or_insert_with(|| Entry {
                        tx: broadcast::channel(FANOUT_CAPACITY).0,
                        refs: 0,
                        state: State::Subscribing,
                        waiters: Vec::new(),
                    });
                entry.refs += 1;
                let fresh = entry.refs == 1 && entry.waiters.is_empty();
                match entry.state {
                    State::Active => {
                        if let Some(sub) = self.make_subscription(&channel) {
                            // A failed send drops `sub`, whose Drop releases the reference.
                            let _ = reply.send(sub);
                        }
                    }
                    State::Subscribing => {
                        entry.waiters.push(reply);
                        if fresh {
                            self.send_subscribe(channel);
                        }
                    }
                    State::Unsubscribing => entry.waiters.push(reply),
                }
                self.channels.store(self.entries.len(), Ordering::Relaxed);
            }
            Command::Release { channel } => {
                let Some(entry) = self.entries.get_mut(&channel) else {
                    return;
                };
                entry.refs = entry.refs.saturating_sub(1);
                if entry.refs == 0 {
                    match entry.state {
                        State::Active => {
                            entry.state = State::Unsubscribing;
                            self.send_unsubscribe(channel);
                        }
                        State::Subscribing if self.sink.is_none() => {
                            self.entries.remove(&channel);
                        }
                        // Confirmation pending: handled when it arrives.
                        State::Subscribing | State::Unsubscribing => {}
                    }
                }
                self.channels.store(self.entries.len(), Ordering::Relaxed);
            }
        }
    }

    /// Handles a task-internal event. Returns why the connection must be rebuilt, if it
    /// must.
    fn on_internal(&mut self, i: Internal) -> Option<&'static str> {
        match i {
            Internal::Stalled { generation, what } => {
                if generation == self.generation && self.sink.is_some() {
                    tracing::warn!(command = what, "redis subscriber command timed out");
                    return Some("redis subscriber stalled; reconnecting");
                }
            }
            Internal::ProbeNotSent { seq } => {
                if self.probe_outstanding.is_some_and(|(want, _)| want == seq) {
                    self.probe_outstanding = None;
                }
            }
            Internal::Subscribed {
                channel,
                generation,
                ok,
            } => {
                if generation != self.generation {
                    return None; // The reconnect path re-subscribed it.
                }
                let entry = self.entries.get_mut(&channel)?;
                if entry.state != State::Subscribing {
                    return None;
                }
                let waiters = std::mem::take(&mut entry.waiters);
                if !ok {
                    // Dropping the waiters tells each subscriber it failed.
                    entry.refs = entry.refs.saturating_sub(waiters.len());
                    drop(waiters);
                    if entry.refs == 0 {
                        self.entries.remove(&channel);
                    }
                } else {
                    entry.state = State::Active;
                    self.reply_waiters(&channel, waiters);
                    if let Some(entry) = self.entries.get_mut(&channel) {
                        if entry.refs == 0 {
                            entry.state = State::Unsubscribing;
                            self.send_unsubscribe(channel);
                        }
                    }
                }
                self.channels.store(self.entries.len(), Ordering::Relaxed);
            }
            Internal::Unsubscribed {
                channel,
                generation,
            } => {
                if generation != self.generation {
                    return None;
                }
                let entry = self.entries.get_mut(&channel)?;
                if entry.state != State::Unsubscribing {
                    return None;
                }
                if entry.refs > 0 {
                    entry.state = State::Subscribing;
                    self.send_subscribe(channel);
                } else {
                    self.entries.remove(&channel);
                }
                self.channels.store(self.entries.len(), Ordering::Relaxed);
            }
        }
        None
    }

    /// Hands each waiter its subscription. A waiter that gave up is not counted.
    fn reply_waiters(&mut self, channel: &Arc<str>, waiters: Vec<Reply>) {
        for w in waiters {
            if w.is_closed() {
                if let Some(entry) = self.entries.get_mut(channel) {
                    entry.refs = entry.refs.saturating_sub(1);
                }
                continue;
            }
            if let Some(sub) = self.make_subscription(channel) {
                // If the waiter went away just now, dropping `sub` queues its release.
                let _ = w.send(sub);
            }
        }
    }

    fn make_subscription(&self, channel: &Arc<str>) -> Option<Subscription> {
        let entry = self.entries.get(channel)?;
        Some(Subscription::new(
            entry.tx.subscribe(),
            self.resync.subscribe(),
            Release::Redis(self.cmd_tx.clone(), channel.clone()),
        ))
    }

    fn send_subscribe(&self, channel: Arc<str>) {
        let Some(mut sink) = self.sink.clone() else {
            return; // Subscribed on reconnect.
        };
        let tx = self.internal.0.clone();
        let generation = self.generation;
        let bound = self.command_timeout;
        tokio::spawn(async move {
            let ok = match tokio::time::timeout(bound, sink.subscribe(channel.as_ref())).await {
                Ok(Ok(())) => true,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "SUBSCRIBE failed");
                    false
                }
                Err(_) => {
                    // The waiters stay queued; the reconnect re-subscribes the channel.
                    let _ = tx.send(Internal::Stalled {
                        generation,
                        what: "SUBSCRIBE",
                    });
                    return;
                }
            };
            let _ = tx.send(Internal::Subscribed {
                channel,
                generation,
                ok,
            });
        });
    }

    fn send_unsubscribe(&self, channel: Arc<str>) {
        let Some(mut sink) = self.sink.clone() else {
            return;
        };
        let tx = self.internal.0.clone();
        let generation = self.generation;
        let bound = self.command_timeout;
        tokio::spawn(async move {
            match tokio::time::timeout(bound, sink.unsubscribe(channel.as_ref())).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "UNSUBSCRIBE failed"),
                Err(_) => {
                    let _ = tx.send(Internal::Stalled {
                        generation,
                        what: "UNSUBSCRIBE",
                    });
                    return;
                }
            }
            let _ = tx.send(Internal::Unsubscribed {
                channel,
                generation,
            });
        });
    }
}

/// The metrics reason of a connection rebuild, from its log message.
pub(crate) fn reconnect_reason(why: &str) -> crate::metrics::ReconnectReason {
    use crate::metrics::ReconnectReason;
    if why.contains("probe") {
        ReconnectReason::ProbeMissed
    } else if why.contains("stalled") {
        ReconnectReason::Stalled
    } else {
        ReconnectReason::ConnectionLost
    }
}

/// `PUBLISH` on a pooled command connection, bounded by the command timeout;
/// `SPUBLISH` where pub/sub is sharded (cluster mode).
pub(crate) async fn publish_on_pool(
    pool: &RedisPool,
    channel: &str,
    payload: &str,
) -> Result<(), String> {
    let mut conn = pool.get().await.map_err(|e| e.to_string())?;
    let verb = if pool.topology().sharded_pubsub() {
        "SPUBLISH"
    } else {
        "PUBLISH"
    };
    tokio::time::timeout(
        pool.command_timeout(),
        redis::cmd(verb)
            .arg(channel)
            .arg(payload)
            .query_async::<i64>(&mut conn),
    )
    .await
    .map_err(|_| "timed out".to_string())?
    .map(|_| ())
    .map_err(|e| e.to_string())
}

async fn publish_probe(pool: &RedisPool, channel: &str, seq: u64) -> Result<(), String> {
    publish_on_pool(pool, channel, &seq.to_string()).await
}

fn probe_seq_of(msg: &redis::Msg) -> Option<u64> {
    std::str::from_utf8(msg.get_payload_bytes())
        .ok()?
        .parse()
        .ok()
}
