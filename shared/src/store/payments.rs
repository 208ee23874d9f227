//! [`PaymentStore`]: a payment's state, in Redis or in memory ([`Storage`]).
//!
//! Writes go through `payment.lua` only (see the script's header for its contract), or
//! its in-memory twin ([`super::memory::payment`]), which takes the same arguments and
//! gives the same replies.
//! Reads return the STATE JSON exactly as stored and published, so the gateway can
//! forward it without re-encoding.
//!
//! History ([`crate::history`]): `payment.lua` appends the `pushed`, `callback` and
//! `final` entries in the same step as the write; [`PaymentStore::append_history`]
//! appends the others (`history.lua`), best effort.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use super::{Storage, StoreError};
use crate::history::{
    self, CallbackEntry, HistoryEvent, PaymentHistory, Pushed, StoredEntry, FINAL_RESERVE,
    MAX_ENTRIES,
};
use crate::ids::CheckoutRequestId;
use crate::keyspace::Keyspace;
use crate::payment::{PaymentOutcome, PaymentState};

static PAYMENT_LUA: &str = include_str!("payment.lua");
static HISTORY_LUA: &str = include_str!("history.lua");

/// What recording a pending payment did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// Stored as PENDING; carries the STATE JSON.
    Pending(String),
    /// A callback had already arrived for it: the payment went straight to its final
    /// state, which was published. Carries the final STATE JSON.
    AppliedEarly(String),
    /// A callback had already arrived for it but does not match the push (`fields`
    /// names what differs). Stored as PENDING, flagged; the caller hands it to
    /// reconciliation at once.
    PendingMismatch { state: String, fields: String },
    /// A success callback had already arrived for it and awaits confirmation by STK Push
    /// Query (`callbacks.confirm_with_query`). Stored as PENDING; the caller hands it to
    /// reconciliation at once.
    PendingConfirmation(String),
    /// A record with this payment's own callback nonce already existed (a retry of the
    /// same write); untouched.
    AlreadyExists(String),
    /// A record bound to another callback nonce exists: two pushes were given the same
    /// CheckoutRequestID. Untouched; the caller logs it as an error.
    Collision,
}

/// What applying a final outcome did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// PENDING → final, written and published. Carries the final STATE JSON.
    Applied { state: String },
    /// A genuine callback for a payment closed as `UNCONFIRMED`: recorded as version 3
    /// and published. Carries the corrected STATE JSON.
    Corrected { state: String },
    /// The callback does not match the push it claims to complete (`fields` names what
    /// differs: `amount`, `phone`, `merchantRequestId`). Nothing was applied: the payment
    /// stays PENDING, is flagged `amountMismatch` and is handed to reconciliation.
    Mismatch { fields: String },
    /// A success that passed the checks, kept until STK Push Query confirms it
    /// (`callbacks.confirm_with_query`). The caller hands the payment to reconciliation.
    AwaitingConfirmation,
    /// Already final (a duplicate callback, or a Query answer after the fact): nothing
    /// written, nothing published.
    Duplicate,
    /// No pending record yet: the outcome was kept for the pending write to apply.
    Early,
    /// The callback token does not belong to this payment: nothing changed.
    Forbidden,
    /// No pending record yet, and this payment already holds the most early records
    /// (one per callback token) it may keep: nothing stored.
    EarlyFull,
    /// A trusted outcome for a payment we do not know.
    NotFound,
}

/// What a callback says it is for, checked against the push it claims to complete.
/// Empty fields are not checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CallbackBinding {
    /// The callback's MerchantRequestID.
    pub mrid: String,
    /// `CallbackTokens::phone_digest_with` of the callback's unmasked PhoneNumber.
    pub phd: String,
}

/// Most early records (one per callback token nonce) kept for one CheckoutRequestID.
pub const MAX_EARLY_RECORDS: u32 = 4;

#[derive(Clone)]
pub struct PaymentStore {
    storage: Storage,
    keys: Keyspace,
    /// Shared, not copied: every browser connection's feed holds a clone of the store,
    /// and the script's text is 8 KiB.
    script: Arc<Script>,
    /// `history.lua`.
    history_script: Arc<Script>,
    /// Whether the script gets the webhook stream (KEYS[4]): Redis outside Cluster
    /// mode, where the stream cannot share the payment's slot.
    webhook_stream: bool,
    ttl: Duration,
    early_ttl: Duration,
}

/// The payment script, publishing with `SPUBLISH` where pub/sub is sharded (Redis
/// Cluster) and with `PUBLISH` elsewhere; otherwise the same text.
fn payment_script(storage: &Storage) -> Arc<Script> {
    Arc::new(match storage {
        Storage::Redis(pool) if pool.topology().sharded_pubsub() => {
            Script::new(&PAYMENT_LUA.replace("redis.call('PUBLISH'", "redis.call('SPUBLISH'"))
        }
        _ => Script::new(PAYMENT_LUA),
    })
}

/// Whether final states can carry webhook events on this storage: Redis outside Cluster
/// mode (the event stream would sit in another slot than the payment). The gateway
/// refuses webhook settings where this is false.
pub fn webhooks_supported(storage: &Storage) -> bool {
    matches!(storage, Storage::Redis(pool) if !pool.topology().sharded_pubsub())
}

/// How long an early record (a callback that beat its pending write) is kept unless the
/// caller says otherwise ([`PaymentStore::with_early_ttl`]).
pub const DEFAULT_EARLY_TTL: Duration = Duration::from_secs(300);

impl PaymentStore {
    /// `ttl` bounds how long a payment (pending or final) is kept.
    pub fn new(storage: Storage, keys: Keyspace, ttl: Duration) -> Self {
        Self {
            script: payment_script(&storage),
            history_script: Arc::new(Script::new(HISTORY_LUA)),
            webhook_stream: webhooks_supported(&storage),
            storage,
            keys,
            ttl,
            early_ttl: DEFAULT_EARLY_TTL,
        }
    }

    /// How long a record made only of early callbacks lives.
    pub fn with_early_ttl(mut self, early_ttl: Duration) -> Self {
        self.early_ttl = early_ttl;
        self
    }

    pub fn keyspace(&self) -> &Keyspace {
        &self.keys
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    async fn run(&self, id: &CheckoutRequestId, args: &[&str]) -> Result<Vec<String>, StoreError> {
        let pool = match &self.storage {
            Storage::Redis(pool) => pool,
            Storage::Memory(m) => {
                return m
                    .payment_call(&self.keys.payment(id), &self.keys.payment_channel(id), args)
                    .map_err(StoreError::Protocol)
            }
        };
        let mut conn = pool.get().await?;
        let key = self.keys.payment(id);
        let mut inv = self.script.key(&key);
        inv.key(self.keys.payment_channel(id));
        inv.key(self.keys.payment_history(id));
        if self.webhook_stream {
            inv.key(self.keys.webhook_stream());
        }
        for a in args {
            inv.arg(*a);
        }
        let reply: Vec<String> = tokio::time::timeout(pool.command_timeout(), async {
            let reply = inv.invoke_async(&mut conn).await?;
            pool.replicated(&mut conn, &key).await?;
            Ok::<_, StoreError>(reply)
        })
        .await
        .map_err(|_| StoreError::timed_out())??;
        Ok(reply)
    }

    /// Records a payment Daraja has just accepted, bound to its callback token nonce and
    /// to the keyed digest of the pushed phone (`CallbackTokens::phone_digest`).
    /// `webhook` is where its webhook events go: "" none, "*" the configured URL, or the
    /// push's own URL (see `payment.lua`). `pushed` is the push as normalised, for the
    /// history's first entry.
    pub async fn record_pending(
        &self,
        state: &PaymentState,
        callback_nonce: &str,
        phone_digest: &str,
        webhook: &str,
        pushed: &Pushed,
    ) -> Result<RecordOutcome, StoreError> {
        let json = serde_json::to_string(state).map_err(|e| StoreError::Protocol(e.to_string()))?;
        let hist = history::encode_unstamped(&[HistoryEvent::Pushed(pushed.clone())]);
        let ttl = self.ttl.as_secs().max(1).to_string();
        let reply = self
            .run(
                &state.checkout_request_id,
                &[
                    "pending",
                    callback_nonce,
                    &json,
                    &ttl,
                    phone_digest,
                    webhook,
                    &hist,
                ],
            )
            .await?;
        let mut it = reply.into_iter();
        match (it.next().as_deref(), it.next()) {
            (Some("PENDING"), Some(s)) => Ok(RecordOutcome::Pending(s)),
            (Some("FINAL"), Some(s)) => Ok(RecordOutcome::AppliedEarly(s)),
            (Some("PENDING_MISMATCH"), Some(s)) => Ok(RecordOutcome::PendingMismatch {
                state: s,
                fields: it.next().unwrap_or_default(),
            }),
            (Some("PENDING_CONFIRM"), Some(s)) => Ok(RecordOutcome::PendingConfirmation(s)),
            (Some("EXISTS"), Some(s)) => Ok(RecordOutcome::AlreadyExists(s)),
            (Some("COLLISION"), _) => Ok(RecordOutcome::Collision),
            (tag, _) => Err(StoreError::Protocol(format!(
                "payment.lua pending: {tag:?}"
            ))),
        }
    }

    /// Applies a callback's outcome. `callback_nonce` is the nonce of the callback token
    /// that delivered it; `binding` is what the callback says it is for; with
    /// `confirm_with_query` a success is kept until STK Push Query confirms it.
    pub async fn apply_callback(
        &self,
        id: &CheckoutRequestId,
        callback_nonce: &str,
        outcome: &PaymentOutcome,
        binding: &CallbackBinding,
        confirm_with_query: bool,
    ) -> Result<ApplyOutcome, StoreError> {
        let hist = history::encode_unstamped(&[HistoryEvent::Callback(CallbackEntry::of(outcome))]);
        self.apply(
            id,
            callback_nonce,
            outcome,
            binding,
            confirm_with_query,
            &hist,
        )
        .await
    }

    async fn apply(
        &self,
        id: &CheckoutRequestId,
        callback_nonce: &str,
        outcome: &PaymentOutcome,
        binding: &CallbackBinding,
        confirm: bool,
        hist: &str,
    ) -> Result<ApplyOutcome, StoreError> {
        let json =
            serde_json::to_string(outcome).map_err(|e| StoreError::Protocol(e.to_string()))?;
        let binding =
            serde_json::to_string(binding).map_err(|e| StoreError::Protocol(e.to_string()))?;
        let ttl = self.ttl.as_secs().max(1).to_string();
        let early_ttl = self.early_ttl.as_secs().max(1).to_string();
        let max_early = MAX_EARLY_RECORDS.to_string();
        let reply = self
            .run(
                id,
                &[
                    "final",
                    callback_nonce,
                    &json,
                    &ttl,
                    &early_ttl,
                    &binding,
                    &max_early,
                    if confirm { "1" } else { "0" },
                    hist,
                ],
            )
            .await?;
        let mut it = reply.into_iter();
        match (it.next().as_deref(), it.next()) {
            (Some("APPLIED"), Some(s)) => Ok(ApplyOutcome::Applied { state: s }),
            (Some("CORRECTED"), Some(s)) => Ok(ApplyOutcome::Corrected { state: s }),
            (Some("MISMATCH"), Some(f)) => Ok(ApplyOutcome::Mismatch { fields: f }),
            (Some("AWAITING_CONFIRMATION"), _) => Ok(ApplyOutcome::AwaitingConfirmation),
            (Some("DUPLICATE"), _) => Ok(ApplyOutcome::Duplicate),
            (Some("EARLY"), _) => Ok(ApplyOutcome::Early),
            (Some("EARLY_FULL"), _) => Ok(ApplyOutcome::EarlyFull),
            (Some("FORBIDDEN"), _) => Ok(ApplyOutcome::Forbidden),
            (Some("NOT_FOUND"), _) => Ok(ApplyOutcome::NotFound),
            (tag, _) => Err(StoreError::Protocol(format!("payment.lua final: {tag:?}"))),
        }
    }

    /// Applies an outcome from a trusted source (STK Push Query, or reconciliation
    /// closing a payment as `UNCONFIRMED`): no token check, never an early record, and
    /// never a change to a final state. `history` (e.g. the `query_asked` and
    /// `query_answer` that led to it) is appended in the same step, before the `final`
    /// entry; nothing is appended for a payment that is not found.
    pub async fn apply_trusted(
        &self,
        id: &CheckoutRequestId,
        outcome: &PaymentOutcome,
        history: &[StoredEntry],
    ) -> Result<ApplyOutcome, StoreError> {
        let hist =
            serde_json::to_string(history).map_err(|e| StoreError::Protocol(e.to_string()))?;
        self.apply(id, "", outcome, &CallbackBinding::default(), false, &hist)
            .await
    }

    /// Appends entries (never `final` ones) to a payment's history, best effort: a
    /// failure is logged at warn and never returned, and nothing is written for a payment
    /// that is gone. The list keeps the payment's TTL and bound (`history.lua`).
    pub async fn append_history(&self, id: &CheckoutRequestId, entries: &[StoredEntry]) {
        if entries.is_empty() {
            return;
        }
        if let Err(e) = self.try_append_history(id, entries).await {
            tracing::warn!(checkout_request_id = %id, error = %e, "could not append to the payment's history; entry lost");
        }
    }

    async fn try_append_history(
        &self,
        id: &CheckoutRequestId,
        entries: &[StoredEntry],
    ) -> Result<(), StoreError> {
        let items: Vec<String> = entries.iter().map(StoredEntry::encode).collect();
        let pool = match &self.storage {
            Storage::Redis(pool) => pool,
            Storage::Memory(m) => {
                m.payment_append_history(&self.keys.payment(id), &items);
                return Ok(());
            }
        };
        let mut conn = pool.get().await?;
        let mut inv = self.history_script.key(self.keys.payment(id));
        inv.key(self.keys.payment_history(id));
        inv.arg(MAX_ENTRIES - FINAL_RESERVE);
        for i in &items {
            inv.arg(i);
        }
        tokio::time::timeout(pool.command_timeout(), inv.invoke_async::<i64>(&mut conn))
            .await
            .map_err(|_| StoreError::timed_out())??;
        Ok(())
    }

    /// A payment's history, oldest first, or `None` if no payment (or only an early
    /// callback) is known.
    pub async fn history(
        &self,
        id: &CheckoutRequestId,
    ) -> Result<Option<PaymentHistory>, StoreError> {
        let (dropped, items) = match &self.storage {
            Storage::Memory(m) => match m.payment_history(&self.keys.payment(id)) {
                Some(found) => found,
                None => return Ok(None),
            },
            Storage::Redis(pool) => {
                let mut conn = pool.get().await?;
                let (head, items): ((Option<String>, Option<u64>), Vec<String>) =
                    tokio::time::timeout(
                        pool.command_timeout(),
                        redis::pipe()
                            .cmd("HMGET")
                            .arg(self.keys.payment(id))
                            .arg("status")
                            .arg("histDropped")
                            .cmd("LRANGE")
                            .arg(self.keys.payment_history(id))
                            .arg(0)
                            .arg(-1)
                            .query_async(&mut conn),
                    )
                    .await
                    .map_err(|_| StoreError::timed_out())??;
                if head.0.is_none() {
                    return Ok(None);
                }
                (head.1.unwrap_or(0), items)
            }
        };
        Ok(Some(PaymentHistory {
            checkout_request_id: id.as_str().to_owned(),
            entries: history::decode_stored(id.as_str(), &items),
            truncated: dropped,
        }))
    }

    /// The current STATE JSON, or `None` if no payment (or only an early callback) is known.
    pub async fn get(&self, id: &CheckoutRequestId) -> Result<Option<String>, StoreError> {
        let pool = match &self.storage {
            Storage::Redis(pool) => pool,
            Storage::Memory(m) => return Ok(m.payment_state(&self.keys.payment(id))),
        };
        let mut conn = pool.get().await?;
        let state: Option<String> = tokio::time::timeout(
            pool.command_timeout(),
            redis::cmd("HGET")
                .arg(self.keys.payment(id))
                .arg("state")
                .query_async(&mut conn),
        )
        .await
        .map_err(|_| StoreError::timed_out())??;
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The script's bound is the Rust constant's (the script cannot import it).
    #[test]
    fn the_script_bound_is_the_constant() {
        assert!(PAYMENT_LUA.contains(&format!("local HIST_MAX = {MAX_ENTRIES}\n")));
        assert!(PAYMENT_LUA.contains(&format!("local HIST_FINAL_RESERVE = {FINAL_RESERVE}\n")));
    }
}
