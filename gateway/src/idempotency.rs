//! `Idempotency-Key` for `POST /v1/stk/push`, kept in Redis so any gateway node sees it.
//!
//! A record holds the hash of the (normalised) request and, once done, the response.
//! The first request claims the key (`in_progress`); a repeat with the same body gets
//! the stored response, with another body 409 `IDEMPOTENCY_KEY_REUSED`, and while the
//! first is still running 409 `IDEMPOTENCY_IN_PROGRESS`. A request that certainly sent
//! no push (validation, a Daraja rejection) releases the key so it can be retried.
//!
//! Money first: a claimed key never expires while its push may still be live. The
//! in-progress TTL is at least the payment's TTL plus Daraja's request timeout (see
//! `startup.rs`), so a retry can never prompt the buyer a second time. A gateway that
//! crashes mid-push leaves the key `in_progress`: every retry with that key answers 409
//! `IDEMPOTENCY_IN_PROGRESS` until the record expires; the merchant must not reuse the
//! key for a new attempt (a new key is a new payment, and may prompt again).
//!
//! The outcome (or the release) is written after the push's pending record, by the
//! push route or, while Redis is unreachable, by the pending-write queue
//! (`crate::pending`), in order. It carries the request hash again, so a record lost
//! with a Redis restart is re-created whole (never as a record a retry could claim).

use std::time::Duration;

use redis::Script;
use stk_relay_shared::keyspace::Keyspace;
use stk_relay_shared::store::memory::IdemBegin;
use stk_relay_shared::store::{Storage, StoreError};

/// Longest accepted `Idempotency-Key`.
pub const MAX_KEY_LEN: usize = 255;

const BEGIN_LUA: &str = r#"
-- KEYS[1] record; ARGV[1] request hash; ARGV[2] in-progress ttl seconds
local cur = redis.call('HMGET', KEYS[1], 'hash', 'state', 'status', 'response')
if not cur[1] then
  redis.call('HSET', KEYS[1], 'hash', ARGV[1], 'state', 'in_progress')
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return {'NEW'}
end
if cur[1] ~= ARGV[1] then return {'CONFLICT'} end
if cur[2] ~= 'done' then return {'IN_PROGRESS'} end
return {'REPLAY', cur[3], cur[4]}
"#;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// The key is ours; go ahead.
    New,
    /// Seen before with the same body: answer with this.
    Replay {
        status: u16,
        body: String,
    },
    Conflict,
    InProgress,
}

#[derive(Clone)]
pub struct Idempotency {
    storage: Storage,
    keys: Keyspace,
    ttl: Duration,
    in_progress_ttl: Duration,
    begin: std::sync::Arc<Script>,
}

/// Checks the header value: 1 to 255 visible ASCII characters.
pub fn valid_key(k: &str) -> bool {
    !k.is_empty() && k.len() <= MAX_KEY_LEN && k.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

impl Idempotency {
    /// `ttl`: how long a finished key is remembered. `in_progress_ttl`: how long a
    /// claimed key lives before its outcome is stored; it must outlive the push.
    pub fn new(storage: Storage, keys: Keyspace, ttl: Duration, in_progress_ttl: Duration) -> Self {
        Self {
            storage,
            keys,
            ttl,
            in_progress_ttl,
            begin: std::sync::Arc::new(Script::new(BEGIN_LUA)),
        }
    }

    /// Claims or looks up `key` for `client_id`. Returns the record's Redis key too.
    pub async fn begin(
        &self,
        client_id: &str,
        key: &str,
        request_hash: &str,
    ) -> Result<(Begin, String), StoreError> {
        let rkey = self.keys.idempotency(client_id, key);
        let pool = match &self.storage {
            Storage::Redis(pool) => pool,
            Storage::Memory(m) => {
                let begin = match m.idem_begin(&rkey, request_hash, self.in_progress_ttl) {
                    IdemBegin::New => Begin::New,
                    IdemBegin::Conflict => Begin::Conflict,
                    IdemBegin::InProgress => Begin::InProgress,
                    IdemBegin::Replay { status, body } => Begin::Replay { status, body },
                };
                return Ok((begin, rkey));
            }
        };
        let mut conn = pool.get().await?;
        // The claim is replicated before the push goes out (`redis.wait_replicas`): a
        // failover must not forget it and let a retry send a second prompt.
        let reply: Vec<String> = tokio::time::timeout(pool.command_timeout(), async {
            let reply = self
                .begin
                .key(&rkey)
                .arg(request_hash)
                .arg(self.in_progress_ttl.as_secs().max(1))
                .invoke_async(&mut conn)
                .await?;
            pool.replicated(&mut conn, &rkey).await?;
            Ok::<_, StoreError>(reply)
        })
        .await
        .map_err(|_| StoreError::timed_out())??;
        let mut it = reply.into_iter();
        let begin = match it.next().as_deref() {
            Some("NEW") => Begin::New,
            Some("CONFLICT") => Begin::Conflict,
            Some("IN_PROGRESS") => Begin::InProgress,
            Some("REPLAY") => {
                let status = it.next().and_then(|s| s.parse().ok()).ok_or_else(|| {
                    StoreError::Protocol("idempotency record without status".into())
                })?;
                let body = it.next().ok_or_else(|| {
                    StoreError::Protocol("idempotency record without body".into())
                })?;
                Begin::Replay { status, body }
            }
            other => return Err(StoreError::Protocol(format!("idempotency: {other:?}"))),
        };
        Ok((begin, rkey))
    }

    /// Stores the response of a finished request for the full TTL (never shorter than
    /// the in-progress TTL).
    pub async fn complete(
        &self,
        rkey: &str,
        request_hash: &str,
        status: u16,
        body: &str,
    ) -> Result<(), StoreError> {
        let pool = match &self.storage {
            Storage::Redis(pool) => pool,
            Storage::Memory(m) => {
                m.idem_complete(
                    rkey,
                    request_hash,
                    status,
                    body,
                    self.ttl.max(self.in_progress_ttl),
                );
                return Ok(());
            }
        };
        let mut conn = pool.get().await?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(
                rkey,
                &[
                    ("hash", request_hash),
                    ("state", "done"),
                    ("status", &status.to_string()),
                    ("response", body),
                ],
            )
            .ignore()
            .expire(rkey, self.ttl.max(self.in_progress_ttl).as_secs() as i64)
            .ignore();
        tokio::time::timeout(pool.command_timeout(), async {
            pipe.query_async::<()>(&mut conn).await?;
            pool.replicated(&mut conn, rkey).await
        })
        .await
        .map_err(|_| StoreError::timed_out())??;
        Ok(())
    }

    /// Releases a claimed key after a request that certainly sent no push.
    pub async fn abort(&self, rkey: &str) -> Result<(), StoreError> {
        let pool = match &self.storage {
            Storage::Redis(pool) => pool,
            Storage::Memory(m) => {
                m.idem_remove(rkey);
                return Ok(());
            }
        };
        let mut conn = pool.get().await?;
        tokio::time::timeout(
            pool.command_timeout(),
            redis::cmd("DEL").arg(rkey).query_async::<i64>(&mut conn),
        )
        .await
        .map_err(|_| StoreError::timed_out())??;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::valid_key;

    #[test]
    fn key_shape() {
        assert!(valid_key("order-123"));
        assert!(!valid_key(""));
        assert!(!valid_key("has space"));
        assert!(!valid_key(&"a".repeat(256)));
        assert!(!valid_key("naïve"));
    }
}
