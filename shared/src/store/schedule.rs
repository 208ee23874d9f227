//! [`Schedule`]: which pending payments are due for an STK Push Query, and the cluster's
//! shared Query budget.
//!
//! - **Due set.** A sorted set (`Keyspace::reconcile_due`): member = CheckoutRequestID,
//!   score = Unix ms when it is next due. The gateway adds a payment when it records it
//!   as PENDING; the ingest makes one due at once when a callback does not match its
//!   push; reconciliation reschedules it with backoff or removes it once final.
//! - **Claim.** `schedule.lua` takes up to `batch` due members, oldest first, and moves
//!   each one's score to `now + claim_ttl`. The script is atomic, so exactly one node
//!   gets a member per claim; a node that dies holding a claim only delays the payment
//!   (it becomes due again when the claim expires).
//! - **Budget.** A token bucket (`Keyspace::reconcile_bucket`) refilled at
//!   `max_per_minute` tokens per 60 s, capacity `max_per_minute`. A claim takes one token
//!   per member; [`Schedule::refund`] gives back the tokens of claims that sent no query
//!   (payment gone, already final, or too old). Refill is measured with Redis's own clock
//!   (`TIME` inside the script), so the budget holds across nodes whatever their clocks
//!   say; due times are the callers' wall-clock ms.
//!
//! Both keys carry the hash tag `{q}`, so one script may touch both under Redis Cluster.
//! The script never touches a payment key (those live in other slots).
//!
//! With [`Storage::Memory`] the same set and bucket live in the process
//! ([`super::memory::MemoryStorage`]), with the same rules.

use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::Script;

use super::{RedisPool, Storage, StoreError};
use crate::ids::CheckoutRequestId;
use crate::keyspace::Keyspace;

static SCHEDULE_LUA: &str = include_str!("schedule.lua");

/// The due set and the Query budget.
#[derive(Clone)]
pub struct Schedule {
    storage: Storage,
    keys: Keyspace,
    script: std::sync::Arc<Script>,
}

impl Schedule {
    pub fn new(storage: Storage, keys: Keyspace) -> Self {
        Self {
            storage,
            keys,
            script: std::sync::Arc::new(Script::new(SCHEDULE_LUA)),
        }
    }

    async fn cmd<T: redis::FromRedisValue>(
        pool: &RedisPool,
        cmd: &mut redis::Cmd,
    ) -> Result<T, StoreError> {
        let mut conn = pool.get().await?;
        tokio::time::timeout(pool.command_timeout(), cmd.query_async(&mut conn))
            .await
            .map_err(|_| StoreError::timed_out())?
            .map_err(StoreError::from)
    }

    /// Makes `id` due at `due_at` (replacing any earlier schedule).
    pub async fn schedule(
        &self,
        id: &CheckoutRequestId,
        due_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let pool = match &self.storage {
            Storage::Redis(pool) => pool,
            Storage::Memory(m) => {
                m.due_add(id.as_str(), due_at.timestamp_millis());
                return Ok(());
            }
        };
        let due = self.keys.reconcile_due();
        let _: i64 = pool
            .write(
                redis::cmd("ZADD")
                    .arg(&due)
                    .arg(due_at.timestamp_millis())
                    .arg(id.as_str()),
                &due,
            )
            .await?;
        Ok(())
    }

    /// Makes `id` due now, unless it is already due earlier. For a payment that must be
    /// reconciled at once (a callback that does not match its push).
    pub async fn due_now(&self, id: &CheckoutRequestId) -> Result<(), StoreError> {
        let pool = match &self.storage {
            Storage::Redis(pool) => pool,
            Storage::Memory(m) => {
                m.due_add_lt(id.as_str(), Utc::now().timestamp_millis());
                return Ok(());
            }
        };
        let due = self.keys.reconcile_due();
        let _: i64 = pool
            .write(
                redis::cmd("ZADD")
                    .arg(&due)
                    .arg("LT")
                    .arg(Utc::now().timestamp_millis())
                    .arg(id.as_str()),
                &due,
            )
            .await?;
        Ok(())
    }

    /// Takes `id` out of the due set (final, or gone).
    pub async fn remove(&self, id: &CheckoutRequestId) -> Result<(), StoreError> {
        let pool = match &self.storage {
            Storage::Redis(pool) => pool,
            Storage::Memory(m) => {
                m.due_remove(id.as_str());
                return Ok(());
            }
        };
        let _: i64 = Self::cmd(
            pool,
            redis::cmd("ZREM")
                .arg(self.keys.reconcile_due())
                .arg(id.as_str()),
        )
        .await?;
        Ok(())
    }

    /// When `id` is next due, if it is scheduled.
    pub async fn due_at(&self, id: &CheckoutRequestId) -> Result<Option<i64>, StoreError> {
        let pool = match &self.storage {
            Storage::Redis(pool) => pool,
            Storage::Memory(m) => return Ok(m.due_score(id.as_str())),
        };
        let score: Option<f64> = Self::cmd(
            pool,
            redis::cmd("ZSCORE")
                .arg(self.keys.reconcile_due())
                .arg(id.as_str()),
        )
        .await?;
        Ok(score.map(|s| s as i64))
    }

    /// How many payments are scheduled.
    pub async fn count(&self) -> Result<u64, StoreError> {
        match &self.storage {
            Storage::Redis(pool) => {
                Self::cmd(pool, redis::cmd("ZCARD").arg(self.keys.reconcile_due())).await
            }
            Storage::Memory(m) => Ok(m.due_count()),
        }
    }

    /// Claims up to `batch` payments due at `now`, oldest first, limited by the tokens in
    /// the shared bucket (one per claim; `max_per_minute` per 60 s, capacity
    /// `max_per_minute`). Each claimed payment is due again at `now + claim_ttl` unless
    /// the claimer reschedules or removes it first. Members that are not valid
    /// CheckoutRequestIDs are removed and not returned.
    pub async fn claim(
        &self,
        now: DateTime<Utc>,
        batch: usize,
        claim_ttl: Duration,
        max_per_minute: u32,
    ) -> Result<Vec<CheckoutRequestId>, StoreError> {
        let ttl_ms = u64::try_from(claim_ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let pool = match &self.storage {
            Storage::Redis(pool) => pool,
            Storage::Memory(m) => {
                let raw = m.due_claim(now.timestamp_millis(), batch.max(1), ttl_ms, max_per_minute);
                let mut out = Vec::with_capacity(raw.len());
                for member in raw {
                    match CheckoutRequestId::parse(&member) {
                        Ok(id) => out.push(id),
                        Err(_) => {
                            m.due_remove(&member);
                        }
                    }
                }
                return Ok(out);
            }
        };
        let mut conn = pool.get().await?;
        let mut inv = self.script.key(self.keys.reconcile_due());
        inv.key(self.keys.reconcile_bucket())
            .arg("claim")
            .arg(now.timestamp_millis())
            .arg(batch.max(1))
            .arg(ttl_ms)
            .arg(max_per_minute.max(1));
        let raw: Vec<String> =
            tokio::time::timeout(pool.command_timeout(), inv.invoke_async(&mut conn))
                .await
                .map_err(|_| StoreError::timed_out())??;
        let mut out = Vec::with_capacity(raw.len());
        for member in raw {
            match CheckoutRequestId::parse(&member) {
                Ok(id) => out.push(id),
                Err(_) => {
                    tracing::warn!("dropping a malformed member of the reconcile due set");
                    let _: i64 = Self::cmd(
                        pool,
                        redis::cmd("ZREM")
                            .arg(self.keys.reconcile_due())
                            .arg(&member),
                    )
                    .await?;
                }
            }
        }
        Ok(out)
    }

    /// Gives back `count` tokens of claims that sent no query, capped at the bucket's
    /// capacity. Returns the tokens now in the bucket.
    pub async fn refund(&self, count: usize, max_per_minute: u32) -> Result<f64, StoreError> {
        if count == 0 {
            return Ok(0.0);
        }
        let pool = match &self.storage {
            Storage::Redis(pool) => pool,
            Storage::Memory(m) => return Ok(m.due_refund(count, max_per_minute)),
        };
        let mut conn = pool.get().await?;
        let mut inv = self.script.key(self.keys.reconcile_due());
        inv.key(self.keys.reconcile_bucket())
            .arg("refund")
            .arg(count)
            .arg(max_per_minute.max(1));
        let tokens: String =
            tokio::time::timeout(pool.command_timeout(), inv.invoke_async(&mut conn))
                .await
                .map_err(|_| StoreError::timed_out())??;
        tokens
            .parse()
            .map_err(|_| StoreError::Protocol(format!("schedule.lua refund: {tokens:?}")))
    }
}
