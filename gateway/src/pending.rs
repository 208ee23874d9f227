//! The pending-write queue: what a push still owes Redis after Daraja accepted it.
//!
//! A push that Daraja accepted is answered 200 even while Redis is unreachable. Its
//! pending record (`PaymentStore::record_pending`) and then its `Idempotency-Key`
//! outcome are written by one background writer, in the order the pushes were accepted,
//! retried with backoff until Redis answers or the payment's TTL (`payments.ttl_secs`)
//! passes. A job whose TTL passed is dropped with an error line naming its
//! CheckoutRequestID.
//!
//! Bounds: every push reserves a [`Slot`] *before* it contacts Daraja, and holds it until
//! its writes are done (inline, or by the writer). At most `payments.pending_queue_max`
//! pushes are in flight or queued on one node; when none is free the push is refused
//! with 503 and no prompt is sent, because a prompt must never be sent that could not
//! be recorded.
//!
//! While a payment's pending record is queued, [`PendingWrites::is_queued`] is true and
//! the browser routes answer 503 (the browser retries) instead of 404.
//!
//! Shutdown: [`PendingWrites::flush`] waits (bounded) for the queue to empty, then
//! [`PendingWrites::abandon_all`] logs, at error, every job that could not be written,
//! with its CheckoutRequestID (never its callback nonce).
//!
//! [`on_recorded`] is the one place that runs after a pending record is written, whether
//! inline by the push route or by the writer.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use actix_web::web;
use stk_relay_shared::history::Pushed;
use stk_relay_shared::ids::CheckoutRequestId;
use stk_relay_shared::payment::PaymentState;
use stk_relay_shared::store::{PaymentStore, RecordOutcome, Schedule, StoreError};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::idempotency::Idempotency;
use crate::startup::AppState;

/// First and longest pause between two attempts of the writer while Redis is unreachable.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(1000);

/// One push's place in the bound, taken before Daraja is contacted.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

/// The pending record of one accepted push, with the nonce of its callback token.
#[derive(Clone)]
pub struct PendingWrite {
    pub state: PaymentState,
    /// The callback token's nonce: binds the record to this push. Never logged.
    pub nonce: String,
    /// Keyed digest of the pushed phone (`CallbackTokens::phone_digest`), checked against
    /// the callback's phone. Never logged.
    pub phone_digest: String,
    /// Where its webhook events go: "" none, "*" `merchant.webhook_url`, or the push's
    /// own URL.
    pub webhook: String,
    /// The push as normalised, for the payment's history (`pushed`).
    pub pushed: Pushed,
}

/// What to do with the push's `Idempotency-Key` record once its pending record is written.
#[derive(Clone)]
pub enum IdemAction {
    /// Store the response the merchant got, for replay.
    Complete {
        rkey: String,
        request_hash: String,
        status: u16,
        body: String,
    },
    /// Release the key (no push was sent).
    Abort { rkey: String },
}

impl IdemAction {
    fn rkey(&self) -> &str {
        match self {
            Self::Complete { rkey, .. } | Self::Abort { rkey } => rkey,
        }
    }
}

/// The writes one push still owes, in order: the pending record, then the key.
#[derive(Clone)]
pub struct Work {
    pub write: Option<PendingWrite>,
    pub idem: Option<IdemAction>,
}

impl Work {
    fn checkout_id(&self) -> Option<&CheckoutRequestId> {
        self.write.as_ref().map(|w| &w.state.checkout_request_id)
    }
}

struct Job {
    seq: u64,
    work: Work,
    /// After this the payment has expired anyway: the job is dropped.
    deadline: Instant,
    _slot: Slot,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Payments whose pending record is queued and not yet written.
    unwritten: HashMap<CheckoutRequestId, usize>,
    next_seq: u64,
}

impl Queue {
    fn forget_write(&mut self, id: &CheckoutRequestId) {
        if let Some(n) = self.unwritten.get_mut(id) {
            *n -= 1;
            if *n == 0 {
                self.unwritten.remove(id);
            }
        }
    }
}

/// The queue, its bound, and the signals between the routes, the writer and shutdown.
pub struct PendingWrites {
    queue: Mutex<Queue>,
    slots: Arc<Semaphore>,
    ttl: Duration,
    /// A job was added.
    added: Notify,
    /// The queue became empty.
    emptied: Notify,
}

impl PendingWrites {
    /// `cap` bounds pushes in flight plus queued jobs; `ttl` is the payment TTL.
    pub fn new(cap: usize, ttl: Duration) -> Self {
        Self {
            queue: Mutex::new(Queue::default()),
            slots: Arc::new(Semaphore::new(cap)),
            ttl,
            added: Notify::new(),
            emptied: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for one push, or `None` when the node is at its bound.
    pub fn reserve(&self) -> Option<Slot> {
        self.slots
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|p| Slot { _permit: p })
    }

    /// Whether any job is queued: a new write must queue behind it to keep the order.
    pub fn is_busy(&self) -> bool {
        !self.lock().jobs.is_empty()
    }

    /// Whether `id`'s pending record is queued and not yet written.
    pub fn is_queued(&self, id: &CheckoutRequestId) -> bool {
        self.lock().unwritten.contains_key(id)
    }

    /// Number of queued jobs.
    pub fn len(&self) -> usize {
        self.lock().jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues `work` behind every earlier job; `slot` is released when it is done.
    pub fn enqueue(&self, work: Work, slot: Slot) {
        let id = work.checkout_id().cloned();
        let mut q = self.lock();
        if let Some(id) = &id {
            *q.unwritten.entry(id.clone()).or_default() += 1;
        }
        let seq = q.next_seq;
        q.next_seq += 1;
        q.jobs.push_back(Job {
            seq,
            work,
            deadline: Instant::now() + self.ttl,
            _slot: slot,
        });
        let queued = q.jobs.len();
        drop(q);
        match &id {
            Some(id) => tracing::warn!(checkout_request_id = %id, queued, "pending write queued"),
            None => tracing::warn!(queued, "idempotency outcome queued"),
        }
        self.added.notify_one();
    }

    fn head(&self) -> Option<(u64, Work, Instant)> {
        self.lock()
            .jobs
            .front()
            .map(|j| (j.seq, j.work.clone(), j.deadline))
    }

    /// The head's pending record is written: browsers may subscribe.
    fn write_done(&self, seq: u64) {
        let mut q = self.lock();
        let Some(job) = q.jobs.front_mut().filter(|j| j.seq == seq) else {
            return;
        };
        let Some(w) = job.work.write.take() else {
            return;
        };
        q.forget_write(&w.state.checkout_request_id);
    }

    /// The head job is finished (or given up): remove it and release its slot.
    fn pop(&self, seq: u64) {
        let mut q = self.lock();
        if q.jobs.front().is_some_and(|j| j.seq == seq) {
            if let Some(job) = q.jobs.pop_front() {
                if let Some(w) = &job.work.write {
                    q.forget_write(&w.state.checkout_request_id);
                }
            }
        }
        let empty = q.jobs.is_empty();
        drop(q);
        if empty {
            self.emptied.notify_waiters();
        }
    }

    /// Waits until the queue is empty, or until `deadline`. Returns whether it emptied.
    pub async fn flush(&self, deadline: Instant) -> bool {
        loop {
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            emptied.as_mut().enable();
            if self.is_empty() {
                return true;
            }
            if tokio::time::timeout_at(deadline, emptied).await.is_err() {
                return self.is_empty();
            }
        }
    }

    /// Drops every queued job, logging each at error (shutdown with Redis unreachable).
    pub fn abandon_all(&self) -> usize {
        let jobs: Vec<Job> = {
            let mut q = self.lock();
            q.unwritten.clear();
            q.jobs.drain(..).collect()
        };
        for job in &jobs {
            log_abandoned(&job.work, "shutdown bound reached with redis unreachable");
        }
        jobs.len()
    }
}

fn log_abandoned(work: &Work, why: &str) {
    match (&work.write, &work.idem) {
        (Some(w), _) => tracing::error!(
            checkout_request_id = %w.state.checkout_request_id,
            reason = why,
            idempotency_record = work.idem.as_ref().map(IdemAction::rkey).unwrap_or(""),
            "pending write NOT written: payment accepted by Daraja is unknown to Redis"
        ),
        (None, Some(i)) => tracing::error!(
            idempotency_record = i.rkey(),
            reason = why,
            "idempotency outcome NOT written; the key stays in progress until it expires"
        ),
        (None, None) => {}
    }
}

/// The pending write: the payment is first put in the reconciliation due set
/// (`after_secs` after its creation), then recorded. In this order a payment is never
/// recorded without being scheduled, whatever fails in between; an entry whose record
/// never lands is dropped by reconciliation when it finds nothing.
pub async fn write_pending(
    state: &AppState,
    store: &PaymentStore,
    w: &PendingWrite,
) -> Result<RecordOutcome, StoreError> {
    let id = &w.state.checkout_request_id;
    let due =
        w.state.timestamp + chrono::Duration::seconds(state.settings.reconcile.after_secs as i64);
    Schedule::new(store.storage().clone(), store.keyspace().clone())
        .schedule(id, due)
        .await?;
    store
        .record_pending(&w.state, &w.nonce, &w.phone_digest, &w.webhook, &w.pushed)
        .await
}

/// Runs after a payment's pending record is written (or found already written), inline
/// by the push route or by the background writer: logs the outcome, and hands the payment
/// to reconciliation at once when an early callback did not match the push or awaits
/// confirmation ([`write_pending`] already scheduled it for `after_secs`).
///
/// For Redis, use `store` (its pool), not `state.store`: in the writer it is the
/// writer's own connection, which keeps working during shutdown after the HTTP workers
/// (on whose runtimes the shared pool may have reconnected) have stopped.
pub async fn on_recorded(store: &PaymentStore, id: &CheckoutRequestId, outcome: &RecordOutcome) {
    let due_now = || async {
        let schedule = Schedule::new(store.storage().clone(), store.keyspace().clone());
        if let Err(e) = schedule.due_now(id).await {
            tracing::error!(checkout_request_id = %id, error = %e, "could not hand the payment to reconciliation now; it stays due at its scheduled time");
        }
    };
    match outcome {
        RecordOutcome::Pending(_) => tracing::info!(checkout_request_id = %id, "payment pending"),
        RecordOutcome::AppliedEarly(_) => tracing::info!(
            checkout_request_id = %id,
            "callback had already arrived; payment final and published"
        ),
        RecordOutcome::PendingMismatch { fields, .. } => {
            tracing::warn!(checkout_request_id = %id, mismatch = %fields, "an early callback did not match this push; payment pending, handed to reconciliation");
            due_now().await;
        }
        RecordOutcome::PendingConfirmation(_) => {
            tracing::info!(checkout_request_id = %id, "an early success callback awaits confirmation by STK Push Query");
            due_now().await;
        }
        RecordOutcome::AlreadyExists(_) => tracing::warn!(
            checkout_request_id = %id,
            "a record for this CheckoutRequestID already existed; left as is"
        ),
        RecordOutcome::Collision => {}
    }
}

/// Whether an error means "Redis did not answer; try again".
fn unreachable(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable(_) | StoreError::Timeout)
}

/// The writer's own Redis handles, on a pool of its own.
///
/// redis-rs reconnects a pooled connection on the runtime of the task that noticed the
/// failure; for the shared pool that may be an HTTP worker's runtime, which stops first at
/// shutdown. The writer must still write during the shutdown flush, so it has its own
/// connection, created and reconnected only on its own runtime.
pub struct WriterStores {
    pub store: PaymentStore,
    pub idempotency: Idempotency,
}

/// The background writer: takes the head job, writes it, retries while Redis is
/// unreachable, drops it when its payment's TTL passed. Runs until aborted.
pub async fn run_writer(state: web::Data<AppState>, stores: WriterStores) {
    let pending = &state.pending;
    let mut backoff = BACKOFF_MIN;
    loop {
        let added = pending.added.notified();
        let Some((seq, work, deadline)) = pending.head() else {
            added.await;
            continue;
        };
        if Instant::now() >= deadline {
            log_abandoned(&work, "payment TTL passed with redis unreachable");
            pending.pop(seq);
            continue;
        }
        match write_once(&state, &stores, seq, work).await {
            Ok(()) => {
                pending.pop(seq);
                backoff = BACKOFF_MIN;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, queued = pending.len(), "redis unavailable; retrying queued writes");
                tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())))
                    .await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// One attempt at the head job. `Err` only when Redis is unreachable (retry later);
/// other failures are logged and that part of the job is dropped.
async fn write_once(
    state: &AppState,
    stores: &WriterStores,
    seq: u64,
    work: Work,
) -> Result<(), StoreError> {
    if let Some(w) = &work.write {
        let id = &w.state.checkout_request_id;
        match write_pending(state, &stores.store, w).await {
            Ok(RecordOutcome::Collision) => {
                tracing::error!(
                    checkout_request_id = %id,
                    "CheckoutRequestID collision: a record bound to another push exists; queued pending write dropped"
                );
            }
            Ok(outcome) => {
                tracing::info!(checkout_request_id = %id, "queued pending write written");
                on_recorded(&stores.store, id, &outcome).await;
            }
            Err(e) if unreachable(&e) => return Err(e),
            Err(e) => {
                tracing::error!(checkout_request_id = %id, error = %e, "queued pending write failed; dropped");
            }
        }
        state.pending.write_done(seq);
    }
    match &work.idem {
        None => {}
        Some(IdemAction::Complete {
            rkey,
            request_hash,
            status,
            body,
        }) => match stores
            .idempotency
            .complete(rkey, request_hash, *status, body)
            .await
        {
            Ok(()) => {}
            Err(e) if unreachable(&e) => {
                // The pending record is written; only the key is left.
                return Err(e);
            }
            Err(e) => {
                tracing::error!(idempotency_record = %rkey, error = %e, "could not store idempotent response; dropped");
            }
        },
        Some(IdemAction::Abort { rkey }) => match stores.idempotency.abort(rkey).await {
            Ok(()) => {}
            Err(e) if unreachable(&e) => return Err(e),
            Err(e) => {
                tracing::error!(idempotency_record = %rkey, error = %e, "could not release idempotency key; dropped");
            }
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use stk_relay_shared::ids::MerchantRequestId;

    fn write(id: &str) -> Work {
        let state = PaymentState::pending(
            CheckoutRequestId::parse(id).unwrap(),
            MerchantRequestId::parse("m-1").unwrap(),
            10,
            "2547******12".into(),
            chrono::Utc::now(),
        );
        Work {
            write: Some(PendingWrite {
                state,
                nonce: "n".into(),
                phone_digest: "d".into(),
                webhook: String::new(),
                pushed: Pushed {
                    amount: 10,
                    phone_number: "2547******12".into(),
                    account_reference: "ref".into(),
                    description: None,
                    webhook: false,
                },
            }),
            idem: None,
        }
    }

    #[tokio::test]
    async fn bounded_ordered_and_tracks_unwritten_ids() {
        let q = PendingWrites::new(2, Duration::from_secs(60));
        let a = q.reserve().unwrap();
        let b = q.reserve().unwrap();
        assert!(q.reserve().is_none(), "the bound counts in-flight pushes");
        q.enqueue(write("ws_CO_a"), a);
        q.enqueue(write("ws_CO_b"), b);
        let id_a = CheckoutRequestId::parse("ws_CO_a").unwrap();
        assert!(q.is_queued(&id_a));
        let (seq, work, _) = q.head().unwrap();
        assert_eq!(work.checkout_id(), Some(&id_a));
        q.write_done(seq);
        assert!(!q.is_queued(&id_a));
        q.pop(seq);
        assert!(q.reserve().is_some(), "a finished job releases its slot");
        assert!(!q.flush(Instant::now() + Duration::from_millis(20)).await);
        assert_eq!(q.abandon_all(), 1);
        assert!(q.flush(Instant::now()).await);
        assert!(!q.is_queued(&CheckoutRequestId::parse("ws_CO_b").unwrap()));
    }
}
