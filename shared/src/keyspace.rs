//! The only place Redis key and channel names are built.
//!
//! Every name starts with a configurable prefix (so tests and tenants never share a
//! keyspace) and every per-payment name carries the CheckoutRequestID as a Redis Cluster
//! hash tag, `{…}`, so that a payment's state key and its channel map to the same slot.
//!
//! | name | type | holds |
//! |---|---|---|
//! | `<prefix>:pay:{<checkout_request_id>}` | hash | `state` (STATE JSON), `status`, `version`, `cbt` (callback token id), `early` |
//! | `<prefix>:pay:{<checkout_request_id>}:ch` | pub/sub channel | STATE JSON of each new version |
//! | `<prefix>:pay:{<checkout_request_id>}:hist` | list | the payment's history entries (JSON, oldest first, at most `history::MAX_ENTRIES`), with the payment's TTL |
//! | `<prefix>:idem:{<sha256 hex>}` | hash | idempotency record of one `POST /v1/stk/push` |
//! | `<prefix>:node:{<random id>}:probe` | pub/sub channel | liveness probes of one node's subscriber connection |
//! | `<prefix>:reconcile:{q}:due` | sorted set | pending payments by the time (ms) they are next due for an STK Push Query |
//! | `<prefix>:reconcile:{q}:bucket` | hash | the cluster's shared STK Push Query token bucket |
//! | `<prefix>:sess:{<sid>}` | string | a compatibility session: `-` once its token is claimed, then its `STK_INITIATED` JSON |
//! | `<prefix>:sess:{<sid>}:ch` | pub/sub channel | the session's `STK_INITIATED` JSON, published once |
//! | `<prefix>:wh:{w}:stream` | stream | webhook events, appended by `payment.lua` with each final state (consumer group `delivery`) |
//! | `<prefix>:wh:{w}:events` | hash | event id → the event and its delivery record (JSON) |
//! | `<prefix>:wh:{w}:due` | sorted set | event ids by when (Unix ms) their next attempt is due, or their lease ends |
//! | `<prefix>:wh:{w}:dead` | sorted set | dead-lettered event ids by when (Unix ms) they were given up |
//!
//! The reconciliation keys share the hash tag `{q}`, so one script may touch both; the
//! webhook keys share `{w}`.

use sha2::{Digest, Sha256};

use crate::ids::CheckoutRequestId;

/// Builds key and channel names under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyspace {
    prefix: String,
}

impl Keyspace {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The hash holding one payment's state.
    pub fn payment(&self, id: &CheckoutRequestId) -> String {
        format!("{}:pay:{{{}}}", self.prefix, id.as_str())
    }

    /// The channel on which one payment's new states are published.
    pub fn payment_channel(&self, id: &CheckoutRequestId) -> String {
        format!("{}:pay:{{{}}}:ch", self.prefix, id.as_str())
    }

    /// The list of one payment's history entries (same hash tag as the payment, so
    /// `payment.lua` writes it in the same step, also in Redis Cluster).
    pub fn payment_history(&self, id: &CheckoutRequestId) -> String {
        format!("{}:pay:{{{}}}:hist", self.prefix, id.as_str())
    }

    /// A channel only one broker instance subscribes to, used to prove end to end that
    /// its subscriber connection receives messages.
    pub fn node_probe_channel(&self, node_id: &str) -> String {
        format!("{}:node:{{{}}}:probe", self.prefix, node_id)
    }

    /// The stream `payment.lua` appends webhook events to.
    pub fn webhook_stream(&self) -> String {
        format!("{}:wh:{{w}}:stream", self.prefix)
    }

    /// The hash of webhook events being delivered (event id → JSON record).
    pub fn webhook_events(&self) -> String {
        format!("{}:wh:{{w}}:events", self.prefix)
    }

    /// The sorted set of webhook events by when their next attempt is due.
    pub fn webhook_due(&self) -> String {
        format!("{}:wh:{{w}}:due", self.prefix)
    }

    /// The sorted set of dead-lettered webhook events by when they were given up.
    pub fn webhook_dead(&self) -> String {
        format!("{}:wh:{{w}}:dead", self.prefix)
    }

    /// The sorted set of pending payments, scored by when (Unix ms) each is next due
    /// for an STK Push Query.
    pub fn reconcile_due(&self) -> String {
        format!("{}:reconcile:{{q}}:due", self.prefix)
    }

    /// The token bucket that bounds STK Push Queries across the cluster.
    pub fn reconcile_bucket(&self) -> String {
        format!("{}:reconcile:{{q}}:bucket", self.prefix)
    }

    /// Recovers the CheckoutRequestID from a payment channel name, if it is one of ours.
    pub fn checkout_id_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        let rest = channel.strip_prefix(self.prefix.as_str())?;
        let rest = rest.strip_prefix(":pay:{")?;
        rest.strip_suffix("}:ch")
    }

    /// The idempotency record for an `Idempotency-Key` sent by one API client. The key is
    /// hashed together with the client's id, so clients cannot collide or probe each other.
    pub fn idempotency(&self, client_id: &str, idempotency_key: &str) -> String {
        let mut h = Sha256::new();
        h.update(client_id.as_bytes());
        h.update([0u8]);
        h.update(idempotency_key.as_bytes());
        let digest = h.finalize();
        let mut hex = String::with_capacity(64);
        for b in digest {
            use std::fmt::Write as _;
            let _ = write!(hex, "{b:02x}");
        }
        format!("{}:idem:{{{}}}", self.prefix, hex)
    }

    /// A compatibility session (`/sessions/{token}/…`): claimed once, then mapped to its
    /// push. `sid` is a validated `session_token::SessionId`.
    pub fn session(&self, sid: &crate::session_token::SessionId) -> String {
        format!("{}:sess:{{{}}}", self.prefix, sid.as_str())
    }

    /// The channel on which a compatibility session's push is announced.
    pub fn session_channel(&self, sid: &crate::session_token::SessionId) -> String {
        format!("{}:sess:{{{}}}:ch", self.prefix, sid.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_share_a_hash_tag() {
        let ks = Keyspace::new("stk");
        let id = CheckoutRequestId::parse("ws_CO_1").unwrap();
        assert_eq!(ks.payment(&id), "stk:pay:{ws_CO_1}");
        assert_eq!(ks.payment_channel(&id), "stk:pay:{ws_CO_1}:ch");
        assert_eq!(ks.payment_history(&id), "stk:pay:{ws_CO_1}:hist");
        assert_eq!(
            ks.checkout_id_of_channel("stk:pay:{ws_CO_1}:ch"),
            Some("ws_CO_1")
        );
        assert_eq!(ks.checkout_id_of_channel("other:pay:{ws_CO_1}:ch"), None);
        let a = ks.idempotency("merchant-a", "k1");
        let b = ks.idempotency("merchant-b", "k1");
        assert_ne!(a, b);
        assert!(a.starts_with("stk:idem:{") && a.ends_with('}'));
        let sid = crate::session_token::SessionId::parse("cs_0123456789abcdef").unwrap();
        assert_eq!(ks.session(&sid), "stk:sess:{cs_0123456789abcdef}");
        assert_eq!(
            ks.session_channel(&sid),
            "stk:sess:{cs_0123456789abcdef}:ch"
        );
        assert_eq!(ks.checkout_id_of_channel(&ks.session_channel(&sid)), None);
    }
}
