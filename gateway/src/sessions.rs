//! Compatibility sessions (`/sessions/{token}/…`, `docs/compat.md`) in Redis, so that
//! any gateway node sees them: one string key per session id,
//! `keyspace::session(sid)`.
//!
//! - [`SessionStore::claim`]: `SET key - NX EX ttl`. The first initiate of a token
//!   claims its session; every later one finds the key and is refused. The claim lives
//!   at least as long as the token is valid, so a token starts at most one push.
//! - [`SessionStore::bind`]: once Daraja accepted the push, the key holds the
//!   `STK_INITIATED` JSON (`shared::compat::StkInitiated`), with the payment's TTL, and
//!   the same JSON is published on `keyspace::session_channel(sid)`. A socket subscribes
//!   to that channel and then reads the key, so it cannot miss the push, whichever node
//!   took the initiate.
//! - [`SessionStore::release`]: a push that certainly reached no phone (validation by
//!   Daraja, Redis down before the push) gives the claim back, so the buyer can retry.

use std::sync::Arc;
use std::time::Duration;

use stk_relay_shared::broker::Broker;
use stk_relay_shared::keyspace::Keyspace;
use stk_relay_shared::session_token::SessionId;
use stk_relay_shared::store::{Storage, StoreError};

/// The value of a claimed session whose push is not accepted yet.
pub const CLAIMED: &str = "-";

#[derive(Clone)]
pub struct SessionStore {
    storage: Storage,
    keys: Keyspace,
}

/// What a session key holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionRecord {
    /// No initiate yet (or its push certainly failed and the claim was given back).
    Absent,
    /// Claimed; the push is under way.
    Claimed,
    /// The push was accepted: the `STK_INITIATED` JSON.
    Initiated(String),
}

impl SessionRecord {
    fn from_value(v: Option<String>) -> Self {
        match v {
            None => Self::Absent,
            Some(v) if v == CLAIMED => Self::Claimed,
            Some(v) => Self::Initiated(v),
        }
    }
}

impl SessionStore {
    pub fn new(storage: Storage, keys: Keyspace) -> Self {
        Self { storage, keys }
    }

    pub fn keyspace(&self) -> &Keyspace {
        &self.keys
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, StoreError> {
        let Storage::Redis(pool) = &self.storage else {
            return Err(StoreError::Protocol("not a Redis backend".into()));
        };
        let mut conn = pool.get().await?;
        tokio::time::timeout(pool.command_timeout(), cmd.query_async(&mut conn))
            .await
            .map_err(|_| StoreError::timed_out())?
            .map_err(StoreError::from)
    }

    /// A write, with `WAIT` for `redis.wait_replicas` replicas (see
    /// [`stk_relay_shared::store::RedisPool::replicated`]).
    async fn run_write<T: redis::FromRedisValue>(
        &self,
        cmd: redis::Cmd,
        key: &str,
    ) -> Result<T, StoreError> {
        let Storage::Redis(pool) = &self.storage else {
            return Err(StoreError::Protocol("not a Redis backend".into()));
        };
        pool.write(&cmd, key).await
    }

    /// Claims `sid` for `ttl`. `false`: it was claimed before.
    pub async fn claim(&self, sid: &SessionId, ttl: Duration) -> Result<bool, StoreError> {
        let key = self.keys.session(sid);
        let ttl = ttl.max(Duration::from_secs(1));
        if let Storage::Memory(m) = &self.storage {
            return Ok(m.session_claim(&key, CLAIMED, ttl));
        }
        let mut cmd = redis::cmd("SET");
        cmd.arg(&key)
            .arg(CLAIMED)
            .arg("NX")
            .arg("EX")
            .arg(ttl.as_secs());
        let set: Option<String> = self.run_write(cmd, &key).await?;
        Ok(set.is_some())
    }

    /// Gives a claim back (its push certainly reached no phone).
    pub async fn release(&self, sid: &SessionId) -> Result<(), StoreError> {
        let key = self.keys.session(sid);
        if let Storage::Memory(m) = &self.storage {
            m.session_remove(&key);
            return Ok(());
        }
        let mut cmd = redis::cmd("DEL");
        cmd.arg(&key);
        let _: i64 = self.run(cmd).await?;
        Ok(())
    }

    /// Stores the accepted push (`STK_INITIATED` JSON) for `ttl`, then announces it on
    /// the session's channel. A failed publish is logged, not returned: the key is
    /// written, and a socket that subscribed before it reads the key after.
    pub async fn bind(
        &self,
        broker: &Arc<dyn Broker>,
        sid: &SessionId,
        initiated_json: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let key = self.keys.session(sid);
        let ttl = ttl.max(Duration::from_secs(1));
        if let Storage::Memory(m) = &self.storage {
            m.session_set(&key, initiated_json, ttl);
        } else {
            let mut cmd = redis::cmd("SET");
            cmd.arg(&key)
                .arg(initiated_json)
                .arg("EX")
                .arg(ttl.as_secs());
            let _: String = self.run_write(cmd, &key).await?;
        }
        if let Err(e) = broker
            .publish(&self.keys.session_channel(sid), initiated_json)
            .await
        {
            tracing::warn!(error = %e, "could not announce the session's push");
        }
        Ok(())
    }

    /// What the session key holds now.
    pub async fn get(&self, sid: &SessionId) -> Result<SessionRecord, StoreError> {
        let key = self.keys.session(sid);
        if let Storage::Memory(m) = &self.storage {
            return Ok(SessionRecord::from_value(m.session_get(&key)));
        }
        let mut cmd = redis::cmd("GET");
        cmd.arg(&key);
        let v: Option<String> = self.run(cmd).await?;
        Ok(SessionRecord::from_value(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stk_relay_shared::broker::memory::MemoryBroker;
    use stk_relay_shared::broker::BrokerEvent;
    use stk_relay_shared::store::MemoryStorage;

    const TTL: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn memory_backend_claims_once_binds_and_announces() {
        let broker = MemoryBroker::new();
        let keys = Keyspace::new("t");
        let s = SessionStore::new(Storage::Memory(MemoryStorage::new(broker.clone())), keys);
        let sid = SessionId::parse("cs_0123456789abcdef").unwrap();
        assert_eq!(s.get(&sid).await.unwrap(), SessionRecord::Absent);
        assert!(s.claim(&sid, TTL).await.unwrap());
        assert!(!s.claim(&sid, TTL).await.unwrap());
        assert_eq!(s.get(&sid).await.unwrap(), SessionRecord::Claimed);
        s.release(&sid).await.unwrap();
        assert!(s.claim(&sid, TTL).await.unwrap());

        let broker: Arc<dyn Broker> = Arc::new(broker);
        let mut sub = broker
            .subscribe(&s.keyspace().session_channel(&sid))
            .await
            .unwrap();
        let json = r#"{"checkoutRequestId":"ws_CO_1"}"#;
        s.bind(&broker, &sid, json, TTL).await.unwrap();
        assert_eq!(
            s.get(&sid).await.unwrap(),
            SessionRecord::Initiated(json.to_owned())
        );
        assert_eq!(sub.recv().await, BrokerEvent::Message(json.into()));
        // Bound is still claimed.
        assert!(!s.claim(&sid, TTL).await.unwrap());
    }
}
