//! The in-memory backend of [`super::Storage`], for standalone mode: one process, no
//! Redis. It keeps what Redis keeps for the cluster (payments, the reconciliation due
//! set and Query budget, idempotency records), with the same expiry, and publishes
//! final states on a [`MemoryBroker`] at the moment it writes them, under the same lock,
//! so a subscriber that subscribes and then reads can never miss one.
//!
//! - [`payment`]: the payment table, `payment.lua`'s rules in Rust, with the same
//!   arguments and replies, so [`super::PaymentStore`] parses one reply format.
//! - this module: the due set, the Query budget and idempotency records.
//!
//! Memory is bounded by expiry: every entry has a deadline, and expired entries are
//! swept as writes come in (a bounded amount of work per write).

pub mod payment;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::broker::memory::MemoryBroker;

use payment::PaymentTable;

/// Shared handle to the in-memory tables (cheap to clone).
#[derive(Clone)]
pub struct MemoryStorage {
    inner: Arc<Inner>,
}

struct Inner {
    payments: PaymentTable,
    due: Mutex<DueSet>,
    bucket: Mutex<Option<(f64, i64)>>,
    idempotency: Mutex<IdemTable>,
    /// Compatibility sessions (`SET NX EX` / `SET EX` / `GET` on string keys).
    sessions: Mutex<SessionTable>,
    broker: MemoryBroker,
    /// Reference point for the budget's clock (Redis uses its own TIME).
    epoch: Instant,
}

/// A sorted set of (score, member), with a member → score index: Redis's ZSET.
#[derive(Default)]
struct DueSet {
    by_score: BTreeSet<(i64, String)>,
    score: HashMap<String, i64>,
}

impl DueSet {
    fn add(&mut self, member: &str, score: i64) {
        if let Some(old) = self.score.insert(member.to_owned(), score) {
            self.by_score.remove(&(old, member.to_owned()));
        }
        self.by_score.insert((score, member.to_owned()));
    }

    fn remove(&mut self, member: &str) -> bool {
        match self.score.remove(member) {
            Some(old) => {
                self.by_score.remove(&(old, member.to_owned()));
                true
            }
            None => false,
        }
    }
}

/// Idempotency records, swept of expired ones whenever the table has doubled since the
/// last sweep (amortised constant work per write).
struct IdemTable {
    map: HashMap<String, IdemRecord>,
    sweep_at: usize,
}

impl Default for IdemTable {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            sweep_at: 1024,
        }
    }
}

impl IdemTable {
    fn sweep(&mut self, now: Instant) {
        if self.map.len() >= self.sweep_at {
            self.map.retain(|_, r| r.expires > now);
            self.sweep_at = (self.map.len() * 2).max(1024);
        }
    }
}

/// One idempotency record, as the Redis hash holds it.
#[derive(Clone)]
struct IdemRecord {
    hash: String,
    done: Option<(u16, String)>,
    expires: Instant,
}

/// What beginning an idempotent request found (the same replies as the Redis script).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdemBegin {
    New,
    Conflict,
    InProgress,
    Replay { status: u16, body: String },
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MemoryStorage {
    /// Empty tables that publish final states on `broker`.
    pub fn new(broker: MemoryBroker) -> Self {
        Self {
            inner: Arc::new(Inner {
                payments: PaymentTable::default(),
                due: Mutex::new(DueSet::default()),
                bucket: Mutex::new(None),
                idempotency: Mutex::new(IdemTable::default()),
                sessions: Mutex::new(SessionTable::default()),
                broker,
                epoch: Instant::now(),
            }),
        }
    }

    /// The broker final states are published on.
    pub fn broker(&self) -> &MemoryBroker {
        &self.inner.broker
    }

    /// `payment.lua` with the same KEYS and ARGV: see [`PaymentTable::call`].
    pub fn payment_call(
        &self,
        key: &str,
        channel: &str,
        args: &[&str],
    ) -> Result<Vec<String>, String> {
        let broker = &self.inner.broker;
        self.inner
            .payments
            .call(key, channel, args, Instant::now(), &mut |ch, payload| {
                broker.publish_now(ch, payload)
            })
    }

    /// A payment's `histDropped` and history items, if it has a status.
    pub fn payment_history(&self, key: &str) -> Option<(u64, Vec<String>)> {
        self.inner.payments.history(key, Instant::now())
    }

    /// `history.lua`: appends stamped entries to an existing payment's history.
    pub fn payment_append_history(&self, key: &str, entries: &[String]) -> bool {
        self.inner
            .payments
            .append_history(key, entries, Instant::now())
    }

    /// A payment's STATE JSON (HGET state).
    pub fn payment_state(&self, key: &str) -> Option<String> {
        self.inner.payments.state(key, Instant::now())
    }

    // ---- the reconciliation due set (a ZSET) and budget (schedule.lua) ----

    /// ZADD: makes `member` due at `score` (Unix ms).
    pub fn due_add(&self, member: &str, score: i64) {
        lock(&self.inner.due).add(member, score);
    }

    /// ZADD LT: moves `member` to `score` only if that is earlier (or it is absent).
    pub fn due_add_lt(&self, member: &str, score: i64) {
        let mut due = lock(&self.inner.due);
        match due.score.get(member) {
            Some(&old) if old <= score => {}
            _ => due.add(member, score),
        }
    }

    /// ZREM.
    pub fn due_remove(&self, member: &str) -> bool {
        lock(&self.inner.due).remove(member)
    }

    /// ZSCORE.
    pub fn due_score(&self, member: &str) -> Option<i64> {
        lock(&self.inner.due).score.get(member).copied()
    }

    /// ZCARD.
    pub fn due_count(&self) -> u64 {
        lock(&self.inner.due).score.len() as u64
    }

    fn now_ms(&self) -> i64 {
        i64::try_from(self.inner.epoch.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// The bucket's tokens now, refilled `cap` per 60 s up to `cap` (a missing bucket is
    /// full; one untouched for two minutes is dropped, as its Redis key expires).
    fn bucket_now(&self, b: &Option<(f64, i64)>, cap: f64) -> (f64, i64) {
        let now = self.now_ms();
        let (mut tokens, ts) = match *b {
            Some((t, ts)) if now - ts <= 120_000 => (t, ts),
            _ => (cap, now),
        };
        if now > ts {
            tokens = cap.min(tokens + (now - ts) as f64 * cap / 60_000.0);
        }
        (tokens.max(0.0), now)
    }

    /// `schedule.lua` "claim": up to min(batch, whole tokens) members due at `now_ms`,
    /// oldest first, each moved to `now_ms + ttl_ms`.
    pub fn due_claim(
        &self,
        now_ms: i64,
        batch: usize,
        ttl_ms: u64,
        max_per_minute: u32,
    ) -> Vec<String> {
        let cap = f64::from(max_per_minute.max(1));
        let mut bucket = lock(&self.inner.bucket);
        let (tokens, ts) = self.bucket_now(&bucket, cap);
        let n = batch.min(tokens.floor() as usize);
        if n < 1 {
            *bucket = Some((tokens, ts));
            return Vec::new();
        }
        let mut due = lock(&self.inner.due);
        let claimed: Vec<String> = due
            .by_score
            .iter()
            .take_while(|(score, _)| *score <= now_ms)
            .take(n)
            .map(|(_, m)| m.clone())
            .collect();
        let until = now_ms.saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX));
        for m in &claimed {
            due.add(m, until);
        }
        *bucket = Some((tokens - claimed.len() as f64, ts));
        claimed
    }

    /// `schedule.lua` "refund": gives back `count` tokens, capped. Returns the tokens.
    pub fn due_refund(&self, count: usize, max_per_minute: u32) -> f64 {
        let cap = f64::from(max_per_minute.max(1));
        let mut bucket = lock(&self.inner.bucket);
        let (tokens, ts) = self.bucket_now(&bucket, cap);
        let tokens = cap.min(tokens + count as f64);
        *bucket = Some((tokens, ts));
        tokens
    }

    // ---- idempotency records ----

    /// Claims `key` for a request with body hash `hash`, or reports what holds it.
    pub fn idem_begin(&self, key: &str, hash: &str, in_progress_ttl: Duration) -> IdemBegin {
        let now = Instant::now();
        let mut table = lock(&self.inner.idempotency);
        table.sweep(now);
        let map = &mut table.map;
        match map.get(key) {
            Some(r) if r.expires > now => {
                if r.hash != hash {
                    IdemBegin::Conflict
                } else if let Some((status, body)) = &r.done {
                    IdemBegin::Replay {
                        status: *status,
                        body: body.clone(),
                    }
                } else {
                    IdemBegin::InProgress
                }
            }
            _ => {
                map.insert(
                    key.to_owned(),
                    IdemRecord {
                        hash: hash.to_owned(),
                        done: None,
                        expires: now + in_progress_ttl.max(Duration::from_secs(1)),
                    },
                );
                IdemBegin::New
            }
        }
    }

    /// Stores a finished request's response for `ttl`.
    pub fn idem_complete(&self, key: &str, hash: &str, status: u16, body: &str, ttl: Duration) {
        let now = Instant::now();
        let mut table = lock(&self.inner.idempotency);
        table.sweep(now);
        table.map.insert(
            key.to_owned(),
            IdemRecord {
                hash: hash.to_owned(),
                done: Some((status, body.to_owned())),
                expires: now + ttl.max(Duration::from_secs(1)),
            },
        );
    }

    /// Releases a claimed key.
    pub fn idem_remove(&self, key: &str) {
        lock(&self.inner.idempotency).map.remove(key);
    }

    // ---- compatibility sessions (string keys with expiry) ----

    /// `SET key value NX EX ttl`: true if `key` was absent (or expired) and is now set.
    pub fn session_claim(&self, key: &str, value: &str, ttl: Duration) -> bool {
        let now = Instant::now();
        let mut t = lock(&self.inner.sessions);
        t.sweep(now);
        if t.map.get(key).is_some_and(|(_, exp)| *exp > now) {
            return false;
        }
        t.map.insert(
            key.to_owned(),
            (value.to_owned(), now + ttl.max(Duration::from_secs(1))),
        );
        true
    }

    /// `SET key value EX ttl`.
    pub fn session_set(&self, key: &str, value: &str, ttl: Duration) {
        let now = Instant::now();
        let mut t = lock(&self.inner.sessions);
        t.sweep(now);
        t.map.insert(
            key.to_owned(),
            (value.to_owned(), now + ttl.max(Duration::from_secs(1))),
        );
    }

    /// `GET key`.
    pub fn session_get(&self, key: &str) -> Option<String> {
        let now = Instant::now();
        lock(&self.inner.sessions)
            .map
            .get(key)
            .filter(|(_, exp)| *exp > now)
            .map(|(v, _)| v.clone())
    }

    /// `DEL key`.
    pub fn session_remove(&self, key: &str) {
        lock(&self.inner.sessions).map.remove(key);
    }
}

/// Compatibility session keys: value and deadline, swept of expired entries whenever
/// the table has doubled since the last sweep (amortised constant work per write).
struct SessionTable {
    map: HashMap<String, (String, Instant)>,
    sweep_at: usize,
}

impl Default for SessionTable {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            sweep_at: 1024,
        }
    }
}

impl SessionTable {
    fn sweep(&mut self, now: Instant) {
        if self.map.len() >= self.sweep_at {
            self.map.retain(|_, (_, exp)| *exp > now);
            self.sweep_at = (self.map.len() * 2).max(1024);
        }
    }
}
