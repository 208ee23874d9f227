//! Signed webhooks to the merchant's backend: every gateway with `[merchant]` webhooks
//! on runs one [`Deliverer`].
//!
//! `payment.lua` appends an event to a Redis stream in the same step that publishes a
//! final state (or a version-3 correction), for payments pushed with a webhook target.
//! The deliverer:
//! - **moves** new entries from the stream (consumer group [`queue::GROUP`], this
//!   gateway's own consumer name) into the queue, every [`MOVE_INTERVAL`]; entries that
//!   a dead gateway read and never moved are taken over after [`STALE_ENTRY`]
//!   (`XAUTOCLAIM`). Moving is one atomic step, so an entry is queued once;
//! - **delivers** due events, at most `merchant.webhook_concurrency` at once. Each is
//!   leased for the attempt's timeout plus [`LEASE_MARGIN`] before it is sent, so a
//!   gateway that dies mid-attempt only delays it: another one takes it when the lease
//!   ends. Delivery is therefore at least once, and the event id is stable across
//!   attempts so that the receiver de-duplicates;
//! - **signs** each attempt (`shared::webhook::sign`, a fresh `t`), POSTs it with a
//!   bounded timeout and no redirects, and counts only a 2xx as delivered. A failure is
//!   retried after `webhook_retry_first_ms` × 2^(attempt − 1), capped at
//!   `webhook_retry_max_secs`, with jitter (between half and all of it); once the event
//!   is older than `webhook_max_age_secs` (since publication or its last replay) a
//!   failure dead-letters it (`stk-relay-admin webhooks dead`, `webhooks replay`).
//!
//! Order: not guaranteed across payments. Within one payment the final event comes
//! before its correction: a correction is not sent while the final is still queued
//! (due, or leased to an attempt); once the final is delivered or dead-lettered, it is.
//!
//! History: each attempt's outcome is appended to its payment's history
//! (`webhook_attempt`: event id, attempt number, HTTP status or error kind, delivered,
//! retry or dead) after it is recorded in the queue, best effort.
//!
//! On shutdown the deliverer stops claiming at once; attempts in flight end within their
//! timeout, or with the process. An attempt whose outcome was not recorded is sent again
//! when its lease ends, by another gateway or by this one after a restart.

pub mod queue;

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use rand::Rng;
use secrecy::ExposeSecret;
use serde_json::value::RawValue;
use stk_relay_shared::history::{self, HistoryEvent, StoredEntry, WebhookAttempt};
use stk_relay_shared::ids::CheckoutRequestId;
use stk_relay_shared::keyspace::Keyspace;
use stk_relay_shared::metrics::{self, WebhookOutcome};
use stk_relay_shared::shutdown::Shutdown;
use stk_relay_shared::store::{PaymentStore, RedisPool, StoreError};
use stk_relay_shared::webhook::{self, EventType, WebhookEvent};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::config::MerchantSettings;
use queue::{Queue, Record};

/// How often new stream entries are looked for.
pub const MOVE_INTERVAL: Duration = Duration::from_millis(100);
/// How often due events are looked for when nothing woke the deliverer.
pub const DUE_INTERVAL: Duration = Duration::from_millis(100);
/// A stream entry read by a consumer that has not moved it for this long is taken over.
pub const STALE_ENTRY: Duration = Duration::from_secs(30);
/// How often stale stream entries are looked for.
const STALE_INTERVAL: Duration = Duration::from_secs(5);
/// A lease outlasts its attempt's timeout by this much.
pub const LEASE_MARGIN: Duration = Duration::from_secs(2);
/// Most entries moved per step.
const MOVE_BATCH: usize = 200;
/// Pause after a Redis error before trying again.
const ERROR_PAUSE: Duration = Duration::from_millis(500);

/// The delivery worker of one gateway.
#[derive(Clone)]
pub struct Deliverer {
    queue: Queue,
    settings: Arc<MerchantSettings>,
    http: reqwest::Client,
    consumer: Arc<str>,
    /// Where attempts are recorded in the payments' history.
    store: PaymentStore,
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// How long after the `attempts`-th failure (from 1) the next attempt comes: the
/// doubling bound, then a uniform draw between its half and all of it.
pub fn backoff(settings: &MerchantSettings, attempts: u32) -> Duration {
    let first = settings.retry_first().as_millis() as u64;
    let cap = settings.retry_max().as_millis() as u64;
    let shift = attempts.saturating_sub(1).min(40);
    let bound = first.saturating_mul(1u64 << shift).min(cap).max(1);
    let ms = rand::thread_rng().gen_range(bound / 2..=bound);
    Duration::from_millis(ms)
}

/// What one attempt came to. `kind` names a failure without a status for the history
/// (`timeout`, `connect`, `request`, `no_url`, `bad_event`).
enum Attempt {
    Delivered(u16),
    Failed {
        status: Option<u16>,
        error: String,
        kind: &'static str,
    },
}

/// The payment an event id (`evt_<CheckoutRequestID>_v<version>`) is about.
fn payment_of(event_id: &str) -> Option<CheckoutRequestId> {
    let (id, _) = event_id.strip_prefix("evt_")?.rsplit_once("_v")?;
    CheckoutRequestId::parse(id).ok()
}

impl Deliverer {
    pub fn new(
        settings: MerchantSettings,
        pool: RedisPool,
        keys: Keyspace,
        store: PaymentStore,
    ) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout())
            .connect_timeout(settings.timeout())
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("stk-relay-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("webhook HTTP client: {e}"))?;
        let tag: u64 = rand::thread_rng().gen();
        Ok(Self {
            queue: Queue::new(pool, keys),
            settings: Arc::new(settings),
            http,
            consumer: Arc::from(format!("gw-{tag:016x}")),
            store,
        })
    }

    /// Starts moving and delivering until `shutdown` fires.
    pub fn spawn(self, shutdown: Shutdown) -> JoinHandle<()> {
        tokio::spawn(async move {
            let wake = Arc::new(Notify::new());
            let mover = tokio::spawn(self.clone().move_entries(wake.clone()));
            tokio::select! {
                _ = shutdown.wait() => {}
                _ = self.deliver(wake) => {}
            }
            mover.abort();
            tracing::debug!("webhook deliverer stopped");
        })
    }

    /// Moves stream entries into the queue; wakes the deliverer when it moved some.
    async fn move_entries(self, wake: Arc<Notify>) {
        let mut group_ready = false;
        let mut last_stale = tokio::time::Instant::now();
        loop {
            if !group_ready {
                match self.queue.ensure_group().await {
                    Ok(()) => group_ready = true,
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook stream group not ready; retrying");
                        tokio::time::sleep(ERROR_PAUSE).await;
                        continue;
                    }
                }
            }
            let stale = last_stale.elapsed() >= STALE_INTERVAL;
            let read = if stale {
                last_stale = tokio::time::Instant::now();
                self.queue
                    .claim_stale(&self.consumer, STALE_ENTRY, MOVE_BATCH)
                    .await
            } else {
                self.queue.read_new(&self.consumer, MOVE_BATCH).await
            };
            let moved = match read {
                Ok(entries) => match self.queue.enqueue(&entries, now_ms()).await {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(error = %e, "moving webhook events failed; retrying");
                        0
                    }
                },
                Err(StoreError::Protocol(m)) if m.contains("NOGROUP") => {
                    group_ready = false;
                    0
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the webhook stream failed; retrying");
                    tokio::time::sleep(ERROR_PAUSE).await;
                    0
                }
            };
            if moved > 0 {
                wake.notify_one();
            }
            if moved < MOVE_BATCH {
                tokio::time::sleep(MOVE_INTERVAL).await;
            }
        }
    }

    /// Claims due events and sends them, bounded by `webhook_concurrency`.
    async fn deliver(&self, wake: Arc<Notify>) {
        let slots = Arc::new(Semaphore::new(self.settings.webhook_concurrency));
        let lease = self.settings.timeout() + LEASE_MARGIN;
        loop {
            let free = slots.available_permits();
            let mut claimed = 0;
            if free > 0 {
                match self.queue.claim(now_ms(), lease, free).await {
                    Ok(records) => {
                        claimed = records.len();
                        for record in records {
                            let Ok(permit) = slots.clone().try_acquire_owned() else {
                                break; // Cannot happen: at most `free` were claimed.
                            };
                            let this = self.clone();
                            let freed = wake.clone();
                            tokio::spawn(async move {
                                this.attempt(record).await;
                                drop(permit);
                                // A slot is free: claim again without waiting for the poll.
                                freed.notify_one();
                            });
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "claiming due webhook events failed; retrying");
                        tokio::time::sleep(ERROR_PAUSE).await;
                        continue;
                    }
                }
            }
            if claimed == 0 || slots.available_permits() == 0 {
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(DUE_INTERVAL) => {}
                }
            }
        }
    }

    /// One attempt at one event, and its outcome recorded, in a span naming the event
    /// and its payment.
    async fn attempt(&self, record: Record) {
        let payment = payment_of(&record.id);
        let span = tracing::info_span!(
            "webhook",
            event_id = %record.id,
            checkout_request_id = %payment.as_ref().map_or("", |id| id.as_str())
        );
        tracing::Instrument::instrument(self.attempt_in_span(record, payment), span).await
    }

    /// `payment` is the event's payment ([`payment_of`]), where the attempt is recorded
    /// in the history.
    async fn attempt_in_span(&self, mut record: Record, payment: Option<CheckoutRequestId>) {
        let outcome = self.send(&record).await;
        let now = now_ms();
        let attempt = record.attempts + 1;
        let (http_status, error_kind) = match &outcome {
            Attempt::Delivered(status) => (Some(*status), None),
            Attempt::Failed { status, kind, .. } => {
                (*status, status.is_none().then(|| (*kind).to_owned()))
            }
        };
        let (result, hist_outcome) = match outcome {
            Attempt::Delivered(status) => {
                metrics::webhook(WebhookOutcome::Delivered);
                tracing::info!(status, attempt, "webhook delivered");
                (
                    self.queue.done(&record.id).await,
                    history::WebhookOutcome::Delivered,
                )
            }
            Attempt::Failed { status, error, .. } => {
                record.attempts += 1;
                record.last_status = status;
                record.last_error = Some(error.clone());
                let age = Duration::from_millis(u64::try_from(now - record.since).unwrap_or(0));
                if age >= self.settings.max_age() {
                    metrics::webhook(WebhookOutcome::DeadLettered);
                    tracing::error!(attempts = record.attempts, status = ?status, error = %error, "webhook dead-lettered: not delivered within merchant.webhook_max_age_secs");
                    (
                        self.queue.dead(&record, now).await.map(|_| ()),
                        history::WebhookOutcome::Dead,
                    )
                } else {
                    metrics::webhook(WebhookOutcome::Failed);
                    let wait = backoff(&self.settings, record.attempts);
                    tracing::warn!(attempts = record.attempts, status = ?status, error = %error, retry_in_ms = wait.as_millis() as u64, "webhook attempt failed");
                    let next = now + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2);
                    (
                        self.queue.retry(&record, next).await.map(|_| ()),
                        history::WebhookOutcome::Retry,
                    )
                }
            }
        };
        if let Err(e) = result {
            // The lease still holds the event: it is attempted again when it ends.
            tracing::warn!(error = %e, "could not record a webhook attempt; it is retried when its lease ends");
        }
        if let Some(id) = payment {
            let entry = StoredEntry::new(
                Utc::now(),
                HistoryEvent::WebhookAttempt(WebhookAttempt {
                    event_id: record.id.clone(),
                    attempt,
                    http_status,
                    error: error_kind,
                    outcome: hist_outcome,
                }),
            );
            self.store.append_history(&id, &[entry]).await;
        }
    }

    /// Signs and POSTs the event.
    async fn send(&self, record: &Record) -> Attempt {
        let Some(kind) = EventType::parse(&record.kind) else {
            return Attempt::Failed {
                status: None,
                error: format!("unknown event type {:?}", record.kind),
                kind: "bad_event",
            };
        };
        let created_at = Utc
            .timestamp_millis_opt(record.created)
            .single()
            .unwrap_or_else(Utc::now)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let data = match RawValue::from_string(record.state.clone()) {
            Ok(d) => d,
            Err(e) => {
                return Attempt::Failed {
                    status: None,
                    error: format!("stored state is not JSON: {e}"),
                    kind: "bad_event",
                }
            }
        };
        let body = match serde_json::to_string(&WebhookEvent {
            id: &record.id,
            kind,
            created_at: &created_at,
            data: &data,
        }) {
            Ok(b) => b,
            Err(e) => {
                return Attempt::Failed {
                    status: None,
                    error: format!("encoding the event: {e}"),
                    kind: "bad_event",
                }
            }
        };
        let url = if record.url == "*" {
            self.settings.webhook_url.as_str()
        } else {
            record.url.as_str()
        };
        if url.is_empty() {
            return Attempt::Failed {
                status: None,
                error: "merchant.webhook_url is not set".into(),
                kind: "no_url",
            };
        }
        let t = u64::try_from(Utc::now().timestamp()).unwrap_or(0);
        let signature = webhook::sign(
            self.settings.webhook_secret.expose_secret().as_bytes(),
            t,
            body.as_bytes(),
        );
        let sent = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(webhook::SIGNATURE_HEADER, signature)
            .header(webhook::EVENT_ID_HEADER, &record.id)
            .header(webhook::ATTEMPT_HEADER, (record.attempts + 1).to_string())
            .body(body)
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => Attempt::Delivered(resp.status().as_u16()),
            Ok(resp) => Attempt::Failed {
                status: Some(resp.status().as_u16()),
                error: format!("answered {}", resp.status()),
                kind: "status",
            },
            // reqwest's error names the URL; keep only its kind (a URL may hold a secret).
            Err(e) => {
                let (kind, error) = if e.is_timeout() {
                    ("timeout", "no answer within merchant.webhook_timeout_ms")
                } else if e.is_connect() {
                    ("connect", "could not connect")
                } else {
                    ("request", "request failed")
                };
                Attempt::Failed {
                    status: None,
                    error: error.into(),
                    kind,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(first_ms: u64, max_secs: u64) -> MerchantSettings {
        MerchantSettings {
            webhook_url: "https://shop.example/hooks".into(),
            webhook_secret: secrecy::SecretString::from("x".repeat(32)),
            allowed_webhook_hosts: Vec::new(),
            webhook_timeout_ms: 1000,
            webhook_retry_first_ms: first_ms,
            webhook_retry_max_secs: max_secs,
            webhook_max_age_secs: 3 * 86_400,
            webhook_concurrency: 4,
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_its_cap() {
        let s = settings(1000, 3600);
        for attempts in 1..=30u32 {
            let bound = (1000u64 << (attempts - 1).min(40)).min(3_600_000);
            for _ in 0..50 {
                let d = backoff(&s, attempts).as_millis() as u64;
                assert!(
                    (bound / 2..=bound).contains(&d),
                    "attempt {attempts}: {d} ms outside {}..={bound}",
                    bound / 2
                );
            }
        }
        // The first retry is about a second.
        assert!(backoff(&s, 1) <= Duration::from_secs(1));
        assert!(backoff(&s, 1) >= Duration::from_millis(500));
    }
}
