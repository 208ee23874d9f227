//! The webhook queue in Redis: [`Queue`] moves events from the stream that
//! `payment.lua` appends to into a due set, leases due events to delivery workers, and
//! records each attempt's outcome (`queue.lua`, one atomic step each). The admin CLI
//! lists and replays dead letters through the same type.
//!
//! Keys (`Keyspace::webhook_*`, hash tag `{w}`): the stream, the records (event id →
//! [`Record`] JSON), the due set (event id → next attempt, Unix ms) and the dead letters
//! (event id → when given up).

use std::sync::Arc;
use std::time::Duration;

use redis::{Script, Value};
use serde::{Deserialize, Serialize};
use stk_relay_shared::keyspace::Keyspace;
use stk_relay_shared::store::{RedisPool, StoreError};

static QUEUE_LUA: &str = include_str!("queue.lua");

/// The consumer group the gateways read the stream in.
pub const GROUP: &str = "delivery";

/// One event and its delivery so far, as kept in the records hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// `evt_<CheckoutRequestID>_v<version>`.
    pub id: String,
    /// `payment.final` or `payment.corrected`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `*` for `merchant.webhook_url`, or the push's own URL.
    pub url: String,
    /// The STATE JSON, as published.
    pub state: String,
    /// When the state was published (Unix ms: the stream entry's time).
    pub created: i64,
    /// Failed attempts since it was queued (or replayed).
    pub attempts: u32,
    /// Since when its age counts (Unix ms): `created`, or the time of a replay.
    pub since: i64,
    /// The last failed attempt: its HTTP status, if it got one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    /// The last failed attempt: what went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// A stream entry read for moving: its id and the record made from it.
pub struct Entry {
    pub entry_id: String,
    pub record: Record,
}

/// A dead letter, for the admin CLI.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub record: Record,
    /// When it was given up (Unix ms).
    pub dead_at: i64,
}

#[derive(Clone)]
pub struct Queue {
    pool: RedisPool,
    keys: Keyspace,
    script: Arc<Script>,
}

fn protocol(e: impl std::fmt::Display) -> StoreError {
    StoreError::Protocol(e.to_string())
}

impl Queue {
    pub fn new(pool: RedisPool, keys: Keyspace) -> Self {
        Self {
            pool,
            keys,
            script: Arc::new(Script::new(QUEUE_LUA)),
        }
    }

    async fn bounded<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, StoreError>>,
    {
        tokio::time::timeout(self.pool.command_timeout(), f)
            .await
            .map_err(|_| StoreError::timed_out())?
    }

    async fn run<T: redis::FromRedisValue>(&self, args: &[String]) -> Result<T, StoreError> {
        let mut conn = self.pool.get().await?;
        let mut inv = self.script.key(self.keys.webhook_stream());
        inv.key(self.keys.webhook_events())
            .key(self.keys.webhook_due())
            .key(self.keys.webhook_dead());
        for a in args {
            inv.arg(a);
        }
        self.bounded(async { Ok(inv.invoke_async(&mut conn).await?) })
            .await
    }

    /// Creates the consumer group (and the stream) unless it exists.
    pub async fn ensure_group(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.get().await?;
        let r: Result<Value, redis::RedisError> = self
            .bounded(async {
                Ok(redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(self.keys.webhook_stream())
                    .arg(GROUP)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async(&mut conn)
                    .await)
            })
            .await?;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// New stream entries for `consumer` (at most `count`), without blocking.
    pub async fn read_new(&self, consumer: &str, count: usize) -> Result<Vec<Entry>, StoreError> {
        let mut conn = self.pool.get().await?;
        let v: Value = self
            .bounded(async {
                Ok(redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(GROUP)
                    .arg(consumer)
                    .arg("COUNT")
                    .arg(count)
                    .arg("STREAMS")
                    .arg(self.keys.webhook_stream())
                    .arg(">")
                    .query_async(&mut conn)
                    .await?)
            })
            .await?;
        // [[stream, [[id, [field, value, ...]], ...]]] or nil.
        let entries = match v {
            Value::Nil => return Ok(Vec::new()),
            Value::Array(streams) => streams
                .into_iter()
                .next()
                .and_then(|s| match s {
                    Value::Array(mut kv) if kv.len() == 2 => kv.pop(),
                    _ => None,
                })
                .unwrap_or(Value::Nil),
            Value::Map(m) => m.into_iter().next().map(|(_, v)| v).unwrap_or(Value::Nil),
            other => return Err(protocol(format!("XREADGROUP: unexpected {other:?}"))),
        };
        parse_entries(entries)
    }

    /// Entries another consumer read and did not move for `min_idle` (it died):
    /// claimed for `consumer`, at most `count`.
    pub async fn claim_stale(
        &self,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let mut conn = self.pool.get().await?;
        let v: Value = self
            .bounded(async {
                Ok(redis::cmd("XAUTOCLAIM")
                    .arg(self.keys.webhook_stream())
                    .arg(GROUP)
                    .arg(consumer)
                    .arg(u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX))
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut conn)
                    .await?)
            })
            .await?;
        // [next cursor, [[id, fields], ...], [deleted ids]]
        match v {
            Value::Array(mut parts) if parts.len() >= 2 => parse_entries(parts.swap_remove(1)),
            other => Err(protocol(format!("XAUTOCLAIM: unexpected {other:?}"))),
        }
    }

    /// Moves read entries into the queue (due now). Returns how many were moved.
    pub async fn enqueue(&self, entries: &[Entry], now_ms: i64) -> Result<usize, StoreError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let mut args: Vec<String> = Vec::with_capacity(3 + entries.len() * 3);
        args.push("enqueue".into());
        args.push(now_ms.to_string());
        args.push(GROUP.into());
        for e in entries {
            args.push(e.entry_id.clone());
            args.push(e.record.id.clone());
            args.push(serde_json::to_string(&e.record).map_err(protocol)?);
        }
        self.run(&args).await
    }

    /// Leases up to `most` due events for `lease`.
    pub async fn claim(
        &self,
        now_ms: i64,
        lease: Duration,
        most: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        let raw: Vec<String> = self
            .run(&[
                "claim".into(),
                now_ms.to_string(),
                lease_ms.to_string(),
                most.to_string(),
            ])
            .await?;
        let mut out = Vec::with_capacity(raw.len() / 2);
        for pair in raw.chunks(2) {
            match pair {
                [id, rec] => match serde_json::from_str::<Record>(rec) {
                    Ok(r) => out.push(r),
                    Err(e) => {
                        tracing::error!(event_id = %id, error = %e, "unreadable webhook record dropped");
                        let _: i64 = self.run(&["done".into(), id.clone()]).await?;
                    }
                },
                _ => return Err(protocol("queue.lua claim: odd reply")),
            }
        }
        Ok(out)
    }

    /// The event was acknowledged: forgotten.
    pub async fn done(&self, id: &str) -> Result<(), StoreError> {
        let _: i64 = self.run(&["done".into(), id.to_owned()]).await?;
        Ok(())
    }

    /// The attempt failed: the record is updated and the event is due at `next_ms`.
    pub async fn retry(&self, record: &Record, next_ms: i64) -> Result<bool, StoreError> {
        let rec = serde_json::to_string(record).map_err(protocol)?;
        let n: i64 = self
            .run(&["retry".into(), record.id.clone(), rec, next_ms.to_string()])
            .await?;
        Ok(n == 1)
    }

    /// Given up: kept as a dead letter.
    pub async fn dead(&self, record: &Record, now_ms: i64) -> Result<bool, StoreError> {
        let rec = serde_json::to_string(record).map_err(protocol)?;
        let n: i64 = self
            .run(&["dead".into(), record.id.clone(), rec, now_ms.to_string()])
            .await?;
        Ok(n == 1)
    }

    /// Queues a dead letter again, due now. False if `id` is not a dead letter.
    pub async fn replay(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let n: i64 = self
            .run(&["replay".into(), id.to_owned(), now_ms.to_string()])
            .await?;
        Ok(n == 1)
    }

    /// The oldest `limit` dead letters.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        let mut conn = self.pool.get().await?;
        let stop = i64::try_from(limit).unwrap_or(i64::MAX).max(1) - 1;
        let ids: Vec<(String, i64)> = self
            .bounded(async {
                Ok(redis::cmd("ZRANGE")
                    .arg(self.keys.webhook_dead())
                    .arg(0)
                    .arg(stop)
                    .arg("WITHSCORES")
                    .query_async(&mut conn)
                    .await?)
            })
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let recs: Vec<Option<String>> = self
            .bounded(async {
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(self.keys.webhook_events());
                for (id, _) in &ids {
                    cmd.arg(id);
                }
                Ok(cmd.query_async(&mut conn).await?)
            })
            .await?;
        Ok(ids
            .into_iter()
            .zip(recs)
            .filter_map(|((_, dead_at), rec)| {
                let record = serde_json::from_str(rec.as_deref()?).ok()?;
                Some(DeadLetter { record, dead_at })
            })
            .collect())
    }

    /// How many events are queued (due or leased) and how many are dead letters.
    pub async fn sizes(&self) -> Result<(u64, u64), StoreError> {
        let mut conn = self.pool.get().await?;
        self.bounded(async {
            Ok(redis::pipe()
                .cmd("ZCARD")
                .arg(self.keys.webhook_due())
                .cmd("ZCARD")
                .arg(self.keys.webhook_dead())
                .query_async(&mut conn)
                .await?)
        })
        .await
    }
}

/// `[[id, [field, value, ...]], ...]` → entries. An entry without the fields
/// `payment.lua` writes cannot be delivered: it is logged, and returned with an empty
/// event id, which the move acknowledges and deletes without queueing anything.
fn parse_entries(v: Value) -> Result<Vec<Entry>, StoreError> {
    let Value::Array(items) = v else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(mut pair) = item else {
            continue;
        };
        if pair.len() != 2 {
            continue;
        }
        let fields = pair.pop();
        let id = match pair.pop() {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
            _ => continue,
        };
        let mut get = std::collections::HashMap::new();
        if let Some(Value::Array(kv)) = fields {
            for p in kv.chunks(2) {
                if let [Value::BulkString(k), Value::BulkString(v)] = p {
                    get.insert(
                        String::from_utf8_lossy(k).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    );
                }
            }
        }
        let created = id
            .split_once('-')
            .and_then(|(ms, _)| ms.parse::<i64>().ok())
            .unwrap_or(0);
        match (
            get.remove("id"),
            get.remove("type"),
            get.remove("url"),
            get.remove("state"),
        ) {
            (Some(eid), Some(kind), Some(url), Some(state)) => out.push(Entry {
                entry_id: id,
                record: Record {
                    id: eid,
                    kind,
                    url,
                    state,
                    created,
                    attempts: 0,
                    since: created,
                    last_status: None,
                    last_error: None,
                },
            }),
            _ => {
                tracing::error!(entry = %id, "webhook stream entry without its fields; dropped");
                out.push(Entry {
                    entry_id: id,
                    record: Record {
                        id: String::new(),
                        kind: String::new(),
                        url: String::new(),
                        state: String::new(),
                        created,
                        attempts: 0,
                        since: created,
                        last_status: None,
                        last_error: None,
                    },
                });
            }
        }
    }
    Ok(out)
}
