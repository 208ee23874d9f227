//! The subscriber task for Redis Cluster: sharded pub/sub (`SSUBSCRIBE`), with one
//! connection per shard that this process has channels on, all owned by one task. It
//! takes the same commands as the single-connection task in [`super::redis`], and the
//! [`super::redis::RedisBroker`] handle starts one or the other by topology.
//!
//! A payment channel carries its payment's hash tag, so it lives in one slot, and the
//! slot in one shard. The task learns which primary serves which slots from
//! `CLUSTER SLOTS` (asked through the command pool: at start, every [`PROBE_INTERVAL`],
//! and whenever a channel has to find its shard again), and sends each `SSUBSCRIBE` on
//! the connection to that slot's primary, opening the connection if it has none yet.
//!
//! A channel leaves its shard in three ways, and each ends the same way:
//! - the shard's slots move away (`redis-cli --cluster reshard`, or a failover that
//!   demotes the primary): Redis sends an unsolicited `sunsubscribe` for the channel;
//! - an `SSUBSCRIBE` is answered `MOVED` or `ASK` (the map was stale), or any error;
//! - the shard's connection breaks, stalls or misses its `PING`: every channel on it
//!   leaves.
//!
//! The channel's entry (and with it every local subscription) stays; it is marked as
//! having missed messages, the slot map is asked again, and the channel is subscribed
//! on whichever primary now owns its slot. Once that `SSUBSCRIBE` is confirmed, the
//! channel's holders get [`super::BrokerEvent::Resync`] and re-read the stored state, so
//! a result published while the channel was between shards is not lost. Map refreshes
//! after failures back off from 50 ms to 2 s.
//!
//! Bounds: opening a shard connection (TCP, TLS, `AUTH`) within the connect timeout
//! plus one command timeout; every command sent on it (`SSUBSCRIBE`, `SUNSUBSCRIBE`,
//! `PING`) must be answered within the command timeout, or the connection is dropped
//! and its channels move as above; `CLUSTER SLOTS` within the command timeout.
//!
//! A shard connection that no channel has used for [`IDLE_CLOSE`] is closed, so a node
//! holds connections only to the shards its browsers wait on.
//!
//! The connections speak RESP2 through [`super::resp`], because redis-rs's pub/sub
//! connection neither knows `ssubscribe` replies nor shows an unsolicited
//! `sunsubscribe`. A node holds at most one subscriber connection per shard, whatever
//! its client count.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;

use super::redis::{Command, PROBE_INTERVAL};
use super::resp::{self, Frame};
use super::{Payload, Release, Subscription, FANOUT_CAPACITY};
use crate::store::pool::RedisPool;
use crate::store::slot;
use crate::store::topology::Topology;

type Reply = oneshot::Sender<Subscription>;

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often the task checks its bounds and its retries.
const TICK: Duration = Duration::from_millis(50);
/// A shard connection no channel has used for this long is closed: a node holds
/// connections only to the shards its browsers wait on.
pub const IDLE_CLOSE: Duration = Duration::from_secs(30);
/// For this long after a shard sent a slot's channels away (an unsolicited
/// `sunsubscribe`), a slot map that still names that shard for the slot is taken as
/// stale: the node that answered `CLUSTER SLOTS` has not heard of the change yet.
const EVICTED_TRUST: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not subscribed anywhere: waits for the slot map to name its shard.
    Unplaced,
    /// `SSUBSCRIBE` sent to its shard.
    Subscribing,
    Active,
    /// `SUNSUBSCRIBE` sent; a new holder waits for it and then subscribes again.
    Unsubscribing,
}

struct Entry {
    tx: broadcast::Sender<Payload>,
    /// Bumped when the channel is subscribed again after it may have missed messages.
    resync: watch::Sender<u64>,
    refs: usize,
    state: State,
    waiters: Vec<Reply>,
    slot: u16,
    /// The shard (primary `host:port`) it is subscribed on, or being subscribed on.
    shard: Option<Arc<str>>,
    /// Left a shard while held: its holders must resync once it is subscribed again.
    missed: bool,
}

enum Pending {
    Sub(Arc<str>),
    Unsub(Arc<str>),
    Ping(Instant),
}

struct Shard {
    generation: u64,
    writer: mpsc::UnboundedSender<Vec<u8>>,
    /// Commands sent and not yet answered, in order, with when each was sent.
    pending: VecDeque<(Pending, Instant)>,
    up: bool,
    last_ping: Instant,
    /// Since when no channel has used it.
    idle_since: Option<Instant>,
}

enum Io {
    Up,
    Frame(Frame),
    Down(String),
}

struct IoEvent {
    shard: Arc<str>,
    generation: u64,
    io: Io,
}

type MapResult = Result<SlotMap, String>;

/// `CLUSTER SLOTS`, reduced to each slot range's primary.
struct SlotMap {
    /// `(first slot, last slot, "host:port")`, sorted.
    ranges: Vec<(u16, u16, Arc<str>)>,
}

impl SlotMap {
    fn owner(&self, slot: u16) -> Option<&Arc<str>> {
        let i = self.ranges.partition_point(|(_, end, _)| *end < slot);
        self.ranges
            .get(i)
            .filter(|(start, _, _)| *start <= slot)
            .map(|(_, _, a)| a)
    }

    fn parse(v: redis::Value) -> Result<Self, String> {
        use redis::Value;
        let Value::Array(rows) = v else {
            return Err("CLUSTER SLOTS: not an array".into());
        };
        let mut ranges = Vec::with_capacity(rows.len());
        for row in rows {
            let Value::Array(row) = row else {
                return Err("CLUSTER SLOTS: a row is not an array".into());
            };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(node))) =
                (row.first(), row.get(1), row.get(2))
            else {
                return Err("CLUSTER SLOTS: unexpected row".into());
            };
            let (Some(Value::BulkString(host)), Some(Value::Int(port))) =
                (node.first(), node.get(1))
            else {
                return Err("CLUSTER SLOTS: unexpected node".into());
            };
            let host = String::from_utf8_lossy(host);
            if host.is_empty() || host == "?" {
                return Err("CLUSTER SLOTS: a primary has no address".into());
            }
            let (Ok(start), Ok(end)) = (u16::try_from(*start), u16::try_from(*end)) else {
                return Err("CLUSTER SLOTS: slot out of range".into());
            };
            let addr = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            ranges.push((start, end, Arc::from(addr)));
        }
        ranges.sort_by_key(|(start, _, _)| *start);
        Ok(Self { ranges })
    }
}

pub(super) struct ClusterTask {
    pool: RedisPool,
    topology: Topology,
    connect_timeout: Duration,
    command_timeout: Duration,
    cmd_tx: mpsc::UnboundedSender<Command>,
    cmd_rx: mpsc::UnboundedReceiver<Command>,
    io: (
        mpsc::UnboundedSender<IoEvent>,
        mpsc::UnboundedReceiver<IoEvent>,
    ),
    maps: (
        mpsc::UnboundedSender<MapResult>,
        mpsc::UnboundedReceiver<MapResult>,
    ),
    entries: HashMap<Arc<str>, Entry>,
    shards: HashMap<Arc<str>, Shard>,
    map: Option<SlotMap>,
    /// Slots whose shard sent their channels away, with that shard and when: see
    /// [`EVICTED_TRUST`].
    evicted: HashMap<u16, (Arc<str>, Instant)>,
    /// A refresh is in flight.
    map_asking: bool,
    /// A refresh is needed (a channel must find its shard).
    map_wanted: bool,
    /// When the next refresh may start (backoff after failures) or is due anyway.
    map_not_before: Instant,
    map_due: Instant,
    map_ok: bool,
    backoff: Duration,
    generation: u64,
    connected: Arc<AtomicBool>,
    channels: Arc<AtomicUsize>,
}

impl ClusterTask {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        pool: RedisPool,
        connect_timeout: Duration,
        command_timeout: Duration,
        cmd_tx: mpsc::UnboundedSender<Command>,
        cmd_rx: mpsc::UnboundedReceiver<Command>,
        connected: Arc<AtomicBool>,
        channels: Arc<AtomicUsize>,
    ) -> Self {
        let now = Instant::now();
        Self {
            topology: pool.topology().clone(),
            pool,
            connect_timeout,
            command_timeout,
            cmd_tx,
            cmd_rx,
            io: mpsc::unbounded_channel(),
            maps: mpsc::unbounded_channel(),
            entries: HashMap::new(),
            shards: HashMap::new(),
            map: None,
            evicted: HashMap::new(),
            map_asking: false,
            map_wanted: true,
            map_not_before: now,
            map_due: now,
            map_ok: false,
            backoff: Duration::ZERO,
            generation: 0,
            connected,
            channels,
        }
    }

    pub(super) async fn run(mut self) {
        self.ask_map();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                Some(ev) = self.io.1.recv() => self.on_io(ev),
                Some(map) = self.maps.1.recv() => self.on_map(map),
                cmd = self.cmd_rx.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                _ = tick.tick() => self.on_tick(),
            }
            self.publish_status();
        }
        self.connected.store(false, Ordering::Relaxed);
        tracing::debug!("redis cluster subscriber task stopped");
    }

    fn publish_status(&self) {
        self.channels.store(self.entries.len(), Ordering::Relaxed);
        let placed = self
            .entries
            .values()
            .all(|e| e.refs == 0 || e.state != State::Unplaced);
        self.connected
            .store(self.map_ok && placed, Ordering::Relaxed);
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Subscribe { channel, reply } => {
                if !self.map_ok && !self.map_asking {
                    // Redis did not answer the last time it was asked: refuse at once
                    // (503, the browser retries) rather than queue, until it does.
                    drop(reply);
                    return;
                }
                let entry = self
                    .entries
                    .entry(channel.clone())
                    .or_insert_with(|| Entry {
                        tx: broadcast::channel(FANOUT_CAPACITY).0,
                        resync: watch::channel(0).0,
                        refs: 0,
                        state: State::Unplaced,
                        waiters: Vec::new(),
                        slot: slot::of(channel.as_bytes()),
                        shard: None,
                        missed: false,
                    });
                entry.refs += 1;
                match entry.state {
                    State::Active => {
                        let sub = make_subscription(entry, &self.cmd_tx, &channel);
                        // A failed send drops `sub`, whose Drop releases the reference.
                        let _ = reply.send(sub);
                    }
                    State::Unplaced => {
                        entry.waiters.push(reply);
                        self.place(&channel);
                    }
                    State::Subscribing | State::Unsubscribing => entry.waiters.push(reply),
                }
            }
            Command::Release { channel } => {
                let Some(entry) = self.entries.get_mut(&channel) else {
                    return;
                };
                entry.refs = entry.refs.saturating_sub(1);
                if entry.refs > 0 {
                    return;
                }
                match entry.state {
                    State::Active => self.unsubscribe(&channel),
                    State::Unplaced if entry.waiters.is_empty() => {
                        self.entries.remove(&channel);
                    }
                    // Answered when the confirmation arrives.
                    State::Unplaced | State::Subscribing | State::Unsubscribing => {}
                }
            }
        }
    }

    /// Subscribes an unplaced channel on its slot's primary, if the map names one;
    /// otherwise asks for the map (the channel is placed when it arrives).
    fn place(&mut self, channel: &Arc<str>) {
        let Some(entry) = self.entries.get(channel) else {
            return;
        };
        if entry.state != State::Unplaced {
            return;
        }
        let Some(owner) = self.map.as_ref().and_then(|m| m.owner(entry.slot)).cloned() else {
            self.map_wanted = true;
            return;
        };
        if self
            .evicted
            .get(&entry.slot)
            .is_some_and(|(by, at)| *by == owner && at.elapsed() < EVICTED_TRUST)
        {
            // The shard that just sent this slot away: the map is stale. A demoted
            // primary would even accept the SSUBSCRIBE (as its new primary's replica)
            // before that primary forwards it the shard's messages.
            self.map_wanted = true;
            return;
        }
        if !self.shards.contains_key(&owner) {
            self.open_shard(owner.clone());
        }
        let Some(shard) = self.shards.get_mut(&owner) else {
            return;
        };
        let cmd = redis::cmd("SSUBSCRIBE")
            .arg(channel.as_ref())
            .get_packed_command();
        if shard.writer.send(cmd).is_err() {
            return; // Its I/O task ended; the Down event re-places the channel.
        }
        shard
            .pending
            .push_back((Pending::Sub(channel.clone()), Instant::now()));
        tracing::trace!(shard = %owner, channel = %channel, "SSUBSCRIBE sent");
        if let Some(entry) = self.entries.get_mut(channel) {
            entry.state = State::Subscribing;
            entry.shard = Some(owner);
        }
    }

    fn unsubscribe(&mut self, channel: &Arc<str>) {
        if self.send_unsubscribe(channel) {
            if let Some(entry) = self.entries.get_mut(channel) {
                entry.state = State::Unsubscribing;
            }
        } else {
            self.entries.remove(channel);
        }
    }

    /// Sends `SUNSUBSCRIBE` for a channel on its shard; false if it has no live shard.
    fn send_unsubscribe(&mut self, channel: &Arc<str>) -> bool {
        let Some(shard) = self
            .entries
            .get(channel)
            .and_then(|e| e.shard.as_ref())
            .and_then(|s| self.shards.get_mut(s))
        else {
            return false;
        };
        let cmd = redis::cmd("SUNSUBSCRIBE")
            .arg(channel.as_ref())
            .get_packed_command();
        if shard.writer.send(cmd).is_err() {
            return false;
        }
        shard
            .pending
            .push_back((Pending::Unsub(channel.clone()), Instant::now()));
        true
    }

    /// Moves a held channel off a shard that the newest slot map says is not its
    /// slot's primary: `SUNSUBSCRIBE` there, then (on the confirmation) `SSUBSCRIBE` on
    /// the owner, and a resync of its holders once that is confirmed.
    fn relocate(&mut self, channel: &Arc<str>) {
        let sent = self.send_unsubscribe(channel);
        let Some(entry) = self.entries.get_mut(channel) else {
            return;
        };
        entry.missed = true;
        if sent {
            entry.state = State::Unsubscribing;
        } else {
            entry.state = State::Unplaced;
            entry.shard = None;
            self.place(channel);
        }
    }

    fn open_shard(&mut self, addr: Arc<str>) {
        self.generation += 1;
        let (writer, rx) = mpsc::unbounded_channel();
        let now = Instant::now();
        self.shards.insert(
            addr.clone(),
            Shard {
                generation: self.generation,
                writer,
                pending: VecDeque::new(),
                up: false,
                last_ping: now,
                idle_since: None,
            },
        );
        let io = ShardIo {
            topology: self.topology.clone(),
            shard: addr,
            generation: self.generation,
            events: self.io.0.clone(),
            bound: self.connect_timeout + self.command_timeout,
        };
        tokio::spawn(io.run(rx));
    }

    fn on_io(&mut self, ev: IoEvent) {
        let Some(shard) = self.shards.get_mut(&ev.shard) else {
            return;
        };
        if shard.generation != ev.generation {
            return;
        }
        match ev.io {
            Io::Up => {
                shard.up = true;
                // The bounds of commands queued while connecting start now.
                let now = Instant::now();
                for (_, at) in shard.pending.iter_mut() {
                    *at = now;
                }
                shard.last_ping = now;
                tracing::info!(shard = %ev.shard, "redis cluster subscriber connected to a shard");
            }
            Io::Down(why) => {
                let was_up = shard.up;
                self.shard_lost(&ev.shard, &why, was_up);
            }
            Io::Frame(frame) => self.on_frame(&ev.shard, frame),
        }
    }

    fn on_frame(&mut self, addr: &Arc<str>, frame: Frame) {
        let items = match frame {
            Frame::Array(Some(items)) => items,
            Frame::Error(e) => return self.on_error_reply(addr, e),
            // A connection subscribed to nothing answers PING outside pub/sub's format.
            Frame::Simple(s) if s.eq_ignore_ascii_case("pong") => {
                if let Some(Pending::Ping(sent)) =
                    self.pop_if(addr, |p| matches!(p, Pending::Ping(_)))
                {
                    crate::metrics::broker_probe(sent.elapsed());
                }
                return;
            }
            other => {
                tracing::debug!(shard = %addr, reply = ?other, "unexpected reply on a shard subscriber");
                return;
            }
        };
        let kind = items.first().and_then(Frame::bytes).unwrap_or_default();
        let channel = items
            .get(1)
            .and_then(Frame::bytes)
            .and_then(|b| std::str::from_utf8(b).ok());
        match (kind, channel) {
            (b"smessage", Some(channel)) => {
                let Some(entry) = self.entries.get(channel) else {
                    return;
                };
                if entry.shard.as_ref() != Some(addr) {
                    return;
                }
                match items.get(2).and_then(Frame::bytes).map(std::str::from_utf8) {
                    // No receiver only means every holder is gone and a release is queued.
                    Some(Ok(text)) => {
                        let _ = entry.tx.send(Arc::from(text));
                    }
                    _ => tracing::warn!(channel, "non-UTF-8 payload dropped"),
                }
            }
            (b"ssubscribe", Some(channel)) => {
                let channel: Arc<str> = Arc::from(channel);
                self.pop_if(addr, |p| matches!(p, Pending::Sub(c) if *c == channel));
                self.on_subscribed(addr, &channel);
            }
            (b"sunsubscribe", Some(channel)) => {
                let channel: Arc<str> = Arc::from(channel);
                let asked = self
                    .pop_if(addr, |p| matches!(p, Pending::Unsub(c) if *c == channel))
                    .is_some();
                self.on_unsubscribed(addr, &channel, asked);
            }
            (b"pong", _) => {
                if let Some(Pending::Ping(sent)) =
                    self.pop_if(addr, |p| matches!(p, Pending::Ping(_)))
                {
                    crate::metrics::broker_probe(sent.elapsed());
                }
            }
            _ => tracing::debug!(shard = %addr, "unexpected message on a shard subscriber"),
        }
    }

    /// Pops the shard's oldest pending command if `matches` says it is the one answered.
    fn pop_if(&mut self, addr: &Arc<str>, matches: impl Fn(&Pending) -> bool) -> Option<Pending> {
        let shard = self.shards.get_mut(addr)?;
        if shard.pending.front().is_some_and(|(p, _)| matches(p)) {
            shard.pending.pop_front().map(|(p, _)| p)
        } else {
            None
        }
    }

    fn on_subscribed(&mut self, addr: &Arc<str>, channel: &Arc<str>) {
        let Some(slot) = self.entries.get(channel).map(|e| e.slot) else {
            return;
        };
        let owner = self.map.as_ref().and_then(|m| m.owner(slot));
        let elsewhere = owner.is_some_and(|o| o != addr);
        let Some(entry) = self.entries.get_mut(channel) else {
            return;
        };
        if entry.state != State::Subscribing || entry.shard.as_ref() != Some(addr) {
            return;
        }
        entry.state = State::Active;
        if elsewhere && entry.refs > 0 {
            // The map changed while the SSUBSCRIBE was on its way (a failover: this
            // node may now be a replica that its new primary does not yet forward the
            // shard's messages to). The waiters are answered once it is on the owner.
            self.relocate(channel);
            return;
        }
        if entry.missed {
            entry.missed = false;
            entry.resync.send_modify(|v| *v += 1);
        }
        for w in std::mem::take(&mut entry.waiters) {
            if w.is_closed() {
                entry.refs = entry.refs.saturating_sub(1);
                continue;
            }
            // If the waiter went away just now, dropping `sub` queues its release.
            let _ = w.send(make_subscription(entry, &self.cmd_tx, channel));
        }
        if entry.refs == 0 {
            self.unsubscribe(channel);
        }
    }

    fn on_unsubscribed(&mut self, addr: &Arc<str>, channel: &Arc<str>, asked: bool) {
        let Some(entry) = self.entries.get_mut(channel) else {
            return;
        };
        if entry.shard.as_ref() != Some(addr) {
            return;
        }
        if !asked && entry.state != State::Unsubscribing {
            // The channel's slot moved away from this shard.
            tracing::debug!(shard = %addr, slot = entry.slot, "a channel's slot moved; following it");
            crate::metrics::broker_reconnect(crate::metrics::ReconnectReason::ConnectionLost);
            if entry.state == State::Active {
                entry.missed = true;
            }
            entry.state = State::Unplaced;
            entry.shard = None;
            let slot = entry.slot;
            self.evicted.insert(slot, (addr.clone(), Instant::now()));
            self.want_map_now();
            return;
        }
        entry.shard = None;
        entry.state = State::Unplaced;
        if entry.refs > 0 {
            self.place(channel);
        } else {
            self.entries.remove(channel);
        }
    }

    fn on_error_reply(&mut self, addr: &Arc<str>, error: String) {
        let Some(shard) = self.shards.get_mut(addr) else {
            return;
        };
        let Some((pending, _)) = shard.pending.pop_front() else {
            tracing::debug!(shard = %addr, error, "error reply with nothing pending");
            return;
        };
        match pending {
            Pending::Sub(channel) => {
                // MOVED or ASK: the map was stale (a migration or a failover); anything
                // else (CLUSTERDOWN, TRYAGAIN): try again after a fresh map.
                tracing::debug!(shard = %addr, error, "SSUBSCRIBE refused; asking for the slot map");
                if let Some(entry) = self.entries.get_mut(&channel) {
                    if entry.shard.as_ref() == Some(addr) && entry.state == State::Subscribing {
                        entry.state = State::Unplaced;
                        entry.shard = None;
                    }
                }
                self.want_map_now();
            }
            Pending::Unsub(channel) => {
                // The node no longer has it subscribed: as good as confirmed.
                self.on_unsubscribed(addr, &channel, true);
            }
            Pending::Ping(_) => {
                let why = format!("PING refused: {error}");
                self.shard_lost(addr, &why, true);
            }
        }
    }

    /// A shard's connection is gone (or never came up): its channels look for their
    /// shards again, and each held one resyncs once re-subscribed.
    fn shard_lost(&mut self, addr: &Arc<str>, why: &str, was_up: bool) {
        self.shards.remove(addr);
        if was_up {
            tracing::warn!(shard = %addr, reason = why, "redis cluster shard subscriber lost; moving its channels");
            crate::metrics::broker_reconnect(super::redis::reconnect_reason(why));
        } else {
            tracing::warn!(shard = %addr, error = why, "redis cluster shard subscriber could not connect");
            crate::metrics::broker_connect_failed();
        }
        self.entries.retain(|_, entry| {
            if entry.shard.as_ref() != Some(addr) {
                return true;
            }
            if entry.state == State::Active {
                entry.missed = true;
            }
            entry.state = State::Unplaced;
            entry.shard = None;
            if !was_up {
                // Queued subscribe requests are refused now (503, the browser retries)
                // instead of waiting for a shard that may not come back soon.
                let waiters = std::mem::take(&mut entry.waiters);
                entry.refs = entry.refs.saturating_sub(waiters.len());
            }
            entry.refs > 0 || !entry.waiters.is_empty()
        });
        self.fail_backoff();
        self.map_wanted = true;
    }

    fn want_map_now(&mut self) {
        self.map_wanted = true;
        self.ask_map();
    }

    fn fail_backoff(&mut self) {
        self.backoff = (self.backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
        self.map_not_before = Instant::now() + self.backoff;
    }

    /// Starts a `CLUSTER SLOTS` through the pool, unless one is in flight or the
    /// backoff says not yet.
    fn ask_map(&mut self) {
        let now = Instant::now();
        if self.map_asking || now < self.map_not_before {
            return;
        }
        self.map_asking = true;
        self.map_wanted = false;
        self.map_due = now + PROBE_INTERVAL;
        let pool = self.pool.clone();
        let tx = self.maps.0.clone();
        let bound = self.command_timeout;
        tokio::spawn(async move {
            let r = tokio::time::timeout(bound, async {
                let mut conn = pool.get().await.map_err(|e| e.to_string())?;
                let v: redis::Value = redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                SlotMap::parse(v)
            })
            .await
            .unwrap_or_else(|_| Err("CLUSTER SLOTS timed out".into()));
            let _ = tx.send(r);
        });
    }

    fn on_map(&mut self, map: MapResult) {
        self.map_asking = false;
        match map {
            Ok(map) => {
                self.evicted.retain(|slot, (by, at)| {
                    at.elapsed() < EVICTED_TRUST && map.owner(*slot) == Some(by)
                });
                // Held channels on a shard that is no longer their slot's primary
                // (one that a stale map had named) move to the owner.
                let misplaced: Vec<Arc<str>> = self
                    .entries
                    .iter()
                    .filter(|(_, e)| {
                        e.state == State::Active
                            && e.refs > 0
                            && map
                                .owner(e.slot)
                                .is_some_and(|o| e.shard.as_ref() != Some(o))
                    })
                    .map(|(c, _)| c.clone())
                    .collect();
                self.map = Some(map);
                self.map_ok = true;
                if !misplaced.is_empty() {
                    tracing::info!(
                        channels = misplaced.len(),
                        "channels not on their slot's primary; moving them"
                    );
                }
                for channel in &misplaced {
                    self.relocate(channel);
                }
                let unplaced: Vec<Arc<str>> = self
                    .entries
                    .iter()
                    .filter(|(_, e)| e.state == State::Unplaced)
                    .map(|(c, _)| c.clone())
                    .collect();
                for channel in &unplaced {
                    self.place(channel);
                }
                let waiting = self
                    .entries
                    .values()
                    .filter(|e| e.state == State::Unplaced)
                    .count();
                if unplaced.len() > waiting {
                    // Debug: while a shard is down this repeats with every map refresh.
                    tracing::debug!(
                        channels = unplaced.len() - waiting,
                        still_unplaced = waiting,
                        "channels sent to their slots' primaries"
                    );
                }
                if waiting == 0 {
                    self.backoff = Duration::ZERO;
                } else {
                    self.fail_backoff();
                    self.map_wanted = true;
                }
                // A shard that lost all its channels, or that the map no longer names,
                // is closed.
                let used: std::collections::HashSet<Arc<str>> = self
                    .entries
                    .values()
                    .filter_map(|e| e.shard.clone())
                    .collect();
                let named = |a: &Arc<str>| {
                    self.map
                        .as_ref()
                        .is_some_and(|m| m.ranges.iter().any(|(_, _, o)| o == a))
                };
                let idle: Vec<Arc<str>> = self
                    .shards
                    .keys()
                    .filter(|a| !used.contains(*a) && !named(a))
                    .cloned()
                    .collect();
                for a in idle {
                    self.shards.remove(&a);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "asking the redis cluster for its slot map failed");
                self.map_ok = false;
                self.fail_backoff();
                self.map_wanted = true;
                // Queued subscribe requests of channels without a shard are refused.
                self.entries.retain(|_, entry| {
                    if entry.state == State::Unplaced {
                        let waiters = std::mem::take(&mut entry.waiters);
                        entry.refs = entry.refs.saturating_sub(waiters.len());
                    }
                    entry.refs > 0 || entry.state != State::Unplaced
                });
            }
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        if (self.map_wanted || now >= self.map_due) && !self.map_asking {
            self.ask_map();
        }
        // Bounds and liveness of every shard connection; idle ones are closed.
        let used: std::collections::HashSet<&Arc<str>> = self
            .entries
            .values()
            .filter_map(|e| e.shard.as_ref())
            .collect();
        let mut lost = Vec::new();
        let mut idle = Vec::new();
        for (addr, shard) in self.shards.iter_mut() {
            if used.contains(addr) || !shard.pending.is_empty() {
                shard.idle_since = None;
            } else if shard.idle_since.get_or_insert(now).elapsed() >= IDLE_CLOSE {
                idle.push(addr.clone());
                continue;
            }
            if !shard.up {
                continue; // The I/O task bounds the connect itself.
            }
            if let Some((_, sent)) = shard.pending.front() {
                if now.duration_since(*sent) > self.command_timeout {
                    lost.push((addr.clone(), "redis subscriber stalled on a shard"));
                    continue;
                }
            }
            if now.duration_since(shard.last_ping) >= PROBE_INTERVAL {
                shard.last_ping = now;
                let ping = redis::cmd("PING").get_packed_command();
                if shard.writer.send(ping).is_ok() {
                    shard.pending.push_back((Pending::Ping(now), now));
                }
            }
        }
        for addr in idle {
            tracing::debug!(shard = %addr, "closing an idle shard subscriber");
            self.shards.remove(&addr);
        }
        for (addr, why) in lost {
            self.shard_lost(&addr, why, true);
        }
    }
}

fn make_subscription(
    entry: &Entry,
    cmd_tx: &mpsc::UnboundedSender<Command>,
    channel: &Arc<str>,
) -> Subscription {
    Subscription::new(
        entry.tx.subscribe(),
        entry.resync.subscribe(),
        Release::Redis(cmd_tx.clone(), channel.clone()),
    )
}

/// One shard connection's I/O: connects and authenticates, writes the commands it is
/// given, and hands every reply to the task. Ends when the task drops its sender or the
/// connection fails (reported as `Down`).
struct ShardIo {
    topology: Topology,
    shard: Arc<str>,
    generation: u64,
    events: mpsc::UnboundedSender<IoEvent>,
    bound: Duration,
}

impl ShardIo {
    fn send(&self, io: Io) -> bool {
        self.events
            .send(IoEvent {
                shard: self.shard.clone(),
                generation: self.generation,
                io,
            })
            .is_ok()
    }

    async fn run(self, mut commands: mpsc::UnboundedReceiver<Vec<u8>>) {
        let why = match self.serve(&mut commands).await {
            Ok(()) => return, // The task let go of this shard.
            Err(why) => why,
        };
        self.send(Io::Down(why));
    }

    async fn connect(
        &self,
    ) -> Result<(Box<dyn crate::store::topology::NodeStream>, Vec<u8>), String> {
        let (host, port) = crate::config::parse_host_port(&self.shard)
            .ok_or_else(|| format!("bad shard address {}", self.shard))?;
        let mut stream = self.topology.node_stream(&host, port).await?;
        let mut buf = Vec::with_capacity(4096);
        let info = self.topology.data_info();
        if let Some(password) = &info.password {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = &info.username {
                auth.arg(user);
            }
            auth.arg(password);
            stream
                .write_all(&auth.get_packed_command())
                .await
                .map_err(|e| format!("AUTH: {e}"))?;
            stream.flush().await.map_err(|e| format!("AUTH: {e}"))?;
            match read_frame(&mut stream, &mut buf).await? {
                Frame::Simple(ok) if ok == "OK" => {}
                // The reply of a refused AUTH names no secret.
                Frame::Error(e) => return Err(format!("AUTH refused: {e}")),
                other => return Err(format!("AUTH: unexpected reply {other:?}")),
            }
        }
        Ok((stream, buf))
    }

    async fn serve(&self, commands: &mut mpsc::UnboundedReceiver<Vec<u8>>) -> Result<(), String> {
        let (stream, mut buf) = tokio::time::timeout(self.bound, self.connect())
            .await
            .map_err(|_| "connect timed out".to_string())??;
        if !self.send(Io::Up) {
            return Ok(());
        }
        let (mut rd, mut wr) = tokio::io::split(stream);
        loop {
            tokio::select! {
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { return Ok(()) };
                    wr.write_all(&cmd).await.map_err(|e| format!("write: {e}"))?;
                    // More queued commands go out in the same flush.
                    while let Ok(more) = commands.try_recv() {
                        wr.write_all(&more).await.map_err(|e| format!("write: {e}"))?;
                    }
                    wr.flush().await.map_err(|e| format!("write: {e}"))?;
                }
                n = rd.read_buf(&mut buf) => {
                    let n = n.map_err(|e| format!("read: {e}"))?;
                    if n == 0 {
                        return Err("connection closed".into());
                    }
                    let mut used = 0;
                    while let Some((frame, len)) = resp::parse(&buf[used..])? {
                        used += len;
                        if !self.send(Io::Frame(frame)) {
                            return Ok(());
                        }
                    }
                    buf.drain(..used);
                }
            }
        }
    }
}

/// Reads one reply (the caller bounds the time).
async fn read_frame(
    stream: &mut Box<dyn crate::store::topology::NodeStream>,
    buf: &mut Vec<u8>,
) -> Result<Frame, String> {
    loop {
        if let Some((frame, used)) = resp::parse(buf)? {
            buf.drain(..used);
            return Ok(frame);
        }
        let n = stream
            .read_buf(buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    #[test]
    fn the_slot_map_names_each_slots_primary() {
        let v = Value::Array(vec![
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                node("10.0.0.2", 7001),
            ]),
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("10.0.0.1", 7000),
            ]),
            Value::Array(vec![
                Value::Int(10923),
                Value::Int(16383),
                node("::1", 7002),
            ]),
        ]);
        let m = SlotMap::parse(v).unwrap();
        assert_eq!(m.owner(0).map(|a| &**a), Some("10.0.0.1:7000"));
        assert_eq!(m.owner(5460).map(|a| &**a), Some("10.0.0.1:7000"));
        assert_eq!(m.owner(5461).map(|a| &**a), Some("10.0.0.2:7001"));
        assert_eq!(m.owner(16383).map(|a| &**a), Some("[::1]:7002"));
        let gap = SlotMap::parse(Value::Array(vec![Value::Array(vec![
            Value::Int(100),
            Value::Int(200),
            node("h", 1),
        ])]))
        .unwrap();
        assert_eq!(gap.owner(99), None);
        assert_eq!(gap.owner(201), None);
        assert!(SlotMap::parse(Value::Int(1)).is_err());
        assert!(SlotMap::parse(Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(1),
            node("", 1),
        ])]))
        .is_err());
    }
}
