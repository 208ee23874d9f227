//! Reconciliation: asks Daraja (STK Push Query) about payments whose callback has not
//! come, and closes those nothing confirms.
//!
//! Every gateway runs one [`Reconciler`] task. Each round it claims due payments from
//! the shared [`Schedule`] (atomic, exactly one node per payment per claim, limited by
//! the cluster's Query budget) and decides each one:
//!
//! | the payment | decision |
//! |---|---|
//! | gone, or already final | removed from the due set; no query (a query never changes a final state) |
//! | PENDING for `max_age_secs` or more | FAILED, reason `UNCONFIRMED`, through the store's trusted mode; removed |
//! | otherwise | STK Push Query: a final answer is applied in trusted mode (one final state, one event; ResultCode 0 gives SUCCESS without a receipt, as Query gives none) and the payment is removed; any other answer is not a verdict and the payment is rescheduled with backoff |
//!
//! Not verdicts (rescheduled, never applied): "being processed" (HTTP 500
//! `500.001.1001`), ResultCode 4999, `400.002.02` Invalid CheckoutRequestID (Daraja may
//! not know the id yet), rate limits (HTTP 429, spike arrest, `500.003.02`/`.03`), other
//! 4xx/5xx, timeouts, transport errors and OAuth failures. See [`classify`].
//!
//! The status is never written here: the store's Lua script is the only writer. Each
//! decision is logged at info with `checkout_request_id` and its cause. Every wait is
//! bounded: the claim and the store calls by `redis.command_timeout_ms`, each query by
//! `daraja.request_timeout_ms`, the handling of one claimed payment by 4/5 of
//! `claim_ttl_secs` (the payments of one claim are handled side by side), and the task
//! stops when the shutdown handle fires (a claim it held then expires after
//! `claim_ttl_secs`, and another node takes over).
//!
//! History: each query is recorded in the payment's history as `query_asked` (stamped
//! when it was sent) and `query_answer`. With a verdict both go in the same store step as
//! the `final` entry; otherwise they are appended once the payment is rescheduled, best
//! effort ([`PaymentStore::append_history`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use stk_relay_shared::daraja::client::StkQueryStatus;
use stk_relay_shared::daraja::types::codes;
use stk_relay_shared::daraja::{DarajaClient, DarajaError};
use stk_relay_shared::history::{HistoryEvent, QueryAnswer, QueryAsked, StoredEntry};
use stk_relay_shared::ids::CheckoutRequestId;
use stk_relay_shared::metrics::{self, ReconcileOutcome};
use stk_relay_shared::payment::{PaymentOutcome, PaymentState, ResultCode, ResultSource};
use stk_relay_shared::shutdown::Shutdown;
use stk_relay_shared::store::{ApplyOutcome, PaymentStore, Schedule, StoreError};
use tokio::task::JoinHandle;

use crate::config::ReconcileSettings;

/// How long `400.002.02` Invalid CheckoutRequestID is read as "Daraja does not know the
/// id yet" in the logs. Later it is logged at warn; it is still not a verdict.
const UNKNOWN_ID_GRACE: Duration = Duration::from_secs(300);

/// Why a Query answer is not a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotYet {
    /// HTTP 500 `500.001.1001` "being processed", or ResultCode 4999.
    BeingProcessed,
    /// `400.002.02` Invalid CheckoutRequestID: Daraja may not know the id yet.
    UnknownToDaraja,
    /// HTTP 429, a spike-arrest fault, `500.003.02` or `500.003.03`.
    RateLimited,
    /// Any other error answer from Daraja (4xx or 5xx), or one we cannot decode.
    DarajaError,
    /// No answer in time, or no connection.
    Unreachable,
    /// The OAuth token request failed.
    OAuth,
}

impl NotYet {
    /// Its `outcome` in `stk_relay_gateway_reconcile_total`.
    pub fn metric(self) -> ReconcileOutcome {
        match self {
            Self::BeingProcessed => ReconcileOutcome::BeingProcessed,
            Self::UnknownToDaraja => ReconcileOutcome::UnknownToDaraja,
            Self::RateLimited => ReconcileOutcome::RateLimited,
            Self::DarajaError => ReconcileOutcome::DarajaError,
            Self::Unreachable => ReconcileOutcome::Unreachable,
            Self::OAuth => ReconcileOutcome::OAuthFailed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BeingProcessed => "being_processed",
            Self::UnknownToDaraja => "unknown_to_daraja",
            Self::RateLimited => "rate_limited",
            Self::DarajaError => "daraja_error",
            Self::Unreachable => "unreachable",
            Self::OAuth => "oauth_failed",
        }
    }
}

/// What a Query answer means for the payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Final for this CheckoutRequestID.
    Final {
        result_code: ResultCode,
        result_desc: String,
    },
    /// Keep waiting.
    NotYet(NotYet),
}

/// Reads a Query result. Only a decoded 200 answer with a ResultCode other than 4999 is
/// a verdict; everything else keeps the payment pending.
pub fn classify(result: &Result<StkQueryStatus, DarajaError>) -> Verdict {
    let err = match result {
        Ok(StkQueryStatus::Final {
            result_code,
            result_desc,
            ..
        }) => {
            return Verdict::Final {
                result_code: result_code.clone(),
                result_desc: result_desc.clone(),
            }
        }
        Ok(StkQueryStatus::Pending) => return Verdict::NotYet(NotYet::BeingProcessed),
        Err(e) => e,
    };
    let cause = match err {
        e if e.is_rate_limited() => NotYet::RateLimited,
        DarajaError::Api { status: 429, .. } => NotYet::RateLimited,
        DarajaError::Api {
            error_code,
            error_message,
            ..
        } if error_code == codes::INVALID_FIELD
            && error_message
                .to_ascii_lowercase()
                .contains("checkoutrequestid") =>
        {
            NotYet::UnknownToDaraja
        }
        DarajaError::Api { .. } | DarajaError::UnexpectedResponse { .. } => NotYet::DarajaError,
        DarajaError::Auth { .. } => NotYet::OAuth,
        DarajaError::Timeout { .. }
        | DarajaError::Transport(_)
        | DarajaError::ConnectionLost(_) => NotYet::Unreachable,
        DarajaError::InvalidRequest(_) | DarajaError::Config(_) => NotYet::DarajaError,
    };
    Verdict::NotYet(cause)
}

/// The `query_answer` history entry for a Query result that was not a verdict: Daraja's
/// error code and message when it gave one, and always the cause.
pub fn not_yet_answer(result: &Result<StkQueryStatus, DarajaError>, cause: NotYet) -> QueryAnswer {
    let (code, desc) = match result {
        Err(DarajaError::Api {
            error_code,
            error_message,
            ..
        }) => (
            ResultCode::from_text(error_code),
            Some(stk_relay_shared::text::clean_external(error_message).into_owned()),
        ),
        _ => (None, None),
    };
    QueryAnswer {
        result_code: code,
        result_desc: desc,
        error: Some(cause.as_str().to_owned()),
    }
}

/// When a payment that got no verdict is next due: a quarter of its age, within
/// `[retry_min_ms, retry_max_ms]` (the maximum for a rate limit), with up to 10 %
/// jitter, and never later than the moment it reaches `max_age_secs`.
pub fn next_due(
    settings: &ReconcileSettings,
    created: DateTime<Utc>,
    now: DateTime<Utc>,
    cause: NotYet,
    jitter: f64,
) -> DateTime<Utc> {
    let age_ms = (now - created).num_milliseconds().max(0) as u64;
    let base = match cause {
        NotYet::RateLimited => settings.retry_max_ms,
        _ => (age_ms / 4).clamp(settings.retry_min_ms, settings.retry_max_ms),
    };
    let jittered = base + (base as f64 * jitter.clamp(0.0, 0.1)) as u64;
    let at = now + chrono::Duration::milliseconds(jittered as i64);
    let deadline = created + chrono::Duration::seconds(settings.max_age_secs as i64);
    at.min(deadline.max(now))
}

/// The reconciliation task of one gateway.
pub struct Reconciler {
    pub store: PaymentStore,
    pub schedule: Schedule,
    pub daraja: DarajaClient,
    pub settings: ReconcileSettings,
}

/// What one claimed payment came to.
enum Handled {
    /// A query was sent.
    Queried,
    /// No query was sent; its token goes back to the bucket.
    NoQuery,
}

impl Reconciler {
    /// Runs until `shutdown` fires.
    pub fn spawn(self, shutdown: Shutdown) -> JoinHandle<()> {
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.wait() => {}
                () = self.run() => {}
            }
            tracing::info!("reconciliation stopped");
        })
    }

    async fn run(&self) {
        let pause = self.settings.poll_interval();
        loop {
            let full = match self.round().await {
                Ok(n) => n >= self.settings.batch,
                Err(e) => {
                    tracing::warn!(error = %e, "reconciliation round failed; retrying");
                    false
                }
            };
            // A full batch suggests more is due: go again at once (the budget still bounds it).
            if !full {
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// Claims due payments and handles each. Returns how many were claimed.
    async fn round(&self) -> Result<usize, StoreError> {
        let s = &self.settings;
        let claimed = self
            .schedule
            .claim(Utc::now(), s.batch, s.claim_ttl(), s.max_queries_per_minute)
            .await?;
        // The claimed payments are handled side by side, each bounded well inside its
        // claim, so that no claim expires while its query may still be running.
        let bound = s.claim_ttl() * 4 / 5;
        let results = futures_util::future::join_all(
            claimed
                .iter()
                .map(|id| tokio::time::timeout(bound, self.handle(id))),
        )
        .await;
        let mut unused = 0;
        for (id, result) in claimed.iter().zip(results) {
            match result {
                Ok(Ok(Handled::Queried)) => {}
                Ok(Ok(Handled::NoQuery)) => unused += 1,
                Ok(Err(e)) => {
                    metrics::reconcile(ReconcileOutcome::RedisError);
                    // The claim expires by itself; the payment is due again then.
                    tracing::warn!(checkout_request_id = %id, error = %e, "reconcile: redis failed mid-way; the payment is due again when its claim expires");
                    unused += 1;
                }
                Err(_) => {
                    metrics::reconcile(ReconcileOutcome::TimedOut);
                    tracing::warn!(checkout_request_id = %id, bound_ms = bound.as_millis() as u64, "reconcile: handling took too long; the payment is due again when its claim expires");
                }
            }
        }
        if unused > 0 {
            if let Err(e) = self.schedule.refund(unused, s.max_queries_per_minute).await {
                tracing::debug!(error = %e, "could not refund query tokens");
            }
        }
        Ok(claimed.len())
    }

    async fn handle(&self, id: &CheckoutRequestId) -> Result<Handled, StoreError> {
        let Some(json) = self.store.get(id).await? else {
            tracing::info!(checkout_request_id = %id, cause = "gone", "reconcile: no such payment; dropped from the due set");
            metrics::reconcile(ReconcileOutcome::Gone);
            self.schedule.remove(id).await?;
            return Ok(Handled::NoQuery);
        };
        let state: PaymentState = match serde_json::from_str(&json) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(checkout_request_id = %id, error = %e, "reconcile: stored state unreadable; dropped from the due set");
                metrics::reconcile(ReconcileOutcome::Unreadable);
                self.schedule.remove(id).await?;
                return Ok(Handled::NoQuery);
            }
        };
        if state.status.is_final() {
            tracing::info!(checkout_request_id = %id, status = state.status.as_str(), cause = "already_final", "reconcile: payment already final; no query");
            metrics::reconcile(ReconcileOutcome::AlreadyFinal);
            self.schedule.remove(id).await?;
            return Ok(Handled::NoQuery);
        }
        let created = state.timestamp;
        let now = Utc::now();
        if now - created >= chrono::Duration::seconds(self.settings.max_age_secs as i64) {
            let outcome = PaymentOutcome::unconfirmed(now);
            let applied = self.store.apply_trusted(id, &outcome, &[]).await?;
            tracing::info!(
                checkout_request_id = %id,
                cause = "max_age",
                max_age_secs = self.settings.max_age_secs,
                result = result_name(&applied),
                "reconcile: no final answer within max_age_secs; closed as FAILED/UNCONFIRMED"
            );
            metrics::reconcile(ReconcileOutcome::Unconfirmed);
            self.schedule.remove(id).await?;
            return Ok(Handled::NoQuery);
        }

        let asked = StoredEntry::new(now, HistoryEvent::QueryAsked(QueryAsked {}));
        let answer = self.daraja.stk_query(id).await;
        let now = Utc::now();
        match classify(&answer) {
            Verdict::Final {
                result_code,
                result_desc,
            } => {
                let code = result_code.to_string();
                let outcome = PaymentOutcome::from_code(result_code, result_desc, now)
                    .with_source(ResultSource::StkQuery);
                let answered = StoredEntry::new(
                    now,
                    HistoryEvent::QueryAnswer(QueryAnswer {
                        result_code: outcome.result_code.clone(),
                        result_desc: Some(outcome.result_desc.clone()),
                        error: None,
                    }),
                );
                let applied = self
                    .store
                    .apply_trusted(id, &outcome, &[asked, answered])
                    .await?;
                tracing::info!(
                    checkout_request_id = %id,
                    cause = "query_final",
                    result_code = %code,
                    status = outcome.status.as_str(),
                    result = result_name(&applied),
                    "reconcile: STK Push Query gave a final answer"
                );
                metrics::reconcile(ReconcileOutcome::QueryFinal);
                self.schedule.remove(id).await?;
            }
            Verdict::NotYet(cause) => {
                // Up to 10 %, from the clock's sub-millisecond digits: spreads nodes apart.
                let jitter = f64::from(now.timestamp_subsec_nanos() % 1_000_000) / 10_000_000.0;
                let due = next_due(&self.settings, created, now, cause, jitter);
                self.schedule.schedule(id, due).await?;
                let answered = StoredEntry::new(
                    now,
                    HistoryEvent::QueryAnswer(not_yet_answer(&answer, cause)),
                );
                self.store.append_history(id, &[asked, answered]).await;
                metrics::reconcile(cause.metric());
                let in_ms = (due - now).num_milliseconds();
                let age = (now - created).to_std().unwrap_or_default();
                if cause == NotYet::UnknownToDaraja && age > UNKNOWN_ID_GRACE {
                    tracing::warn!(checkout_request_id = %id, cause = cause.as_str(), next_in_ms = in_ms, "reconcile: Daraja still does not know this CheckoutRequestID; not a verdict, rescheduled");
                } else {
                    tracing::info!(checkout_request_id = %id, cause = cause.as_str(), next_in_ms = in_ms, "reconcile: no verdict yet; rescheduled");
                }
            }
        }
        Ok(Handled::Queried)
    }
}

fn result_name(a: &ApplyOutcome) -> &'static str {
    match a {
        ApplyOutcome::Applied { .. } => "applied",
        ApplyOutcome::Corrected { .. } => "corrected",
        ApplyOutcome::Mismatch { .. } => "mismatch",
        ApplyOutcome::Duplicate => "already_final",
        ApplyOutcome::AwaitingConfirmation => "awaiting_confirmation",
        ApplyOutcome::Early => "early",
        ApplyOutcome::EarlyFull => "early_full",
        ApplyOutcome::Forbidden => "forbidden",
        ApplyOutcome::NotFound => "not_found",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    fn api(status: u16, code: &str, message: &str) -> Result<StkQueryStatus, DarajaError> {
        Err(DarajaError::Api {
            status,
            error_code: code.into(),
            error_message: message.into(),
            request_id: "r".into(),
        })
    }

    #[test]
    fn only_a_final_answer_is_a_verdict() {
        use NotYet as N;
        let cases: Vec<(Result<StkQueryStatus, DarajaError>, NotYet)> = vec![
            (Ok(StkQueryStatus::Pending), N::BeingProcessed),
            (
                api(400, "400.002.02", "Bad Request - Invalid CheckoutRequestID"),
                N::UnknownToDaraja,
            ),
            (
                api(
                    429,
                    "policies.ratelimit.SpikeArrestViolation",
                    "Spike arrest violation",
                ),
                N::RateLimited,
            ),
            (api(429, "fault", "Too many requests"), N::RateLimited),
            (
                api(500, "500.003.02", "Spike Arrest Violation"),
                N::RateLimited,
            ),
            (api(500, "500.003.03", "Quota Violation"), N::RateLimited),
            (
                api(500, "500.003.01", "Internal Server Error"),
                N::DarajaError,
            ),
            (
                api(500, "500.001.1001", "Wrong credentials"),
                N::DarajaError,
            ),
            (api(503, "503", "Service Unavailable"), N::DarajaError),
            (
                api(400, "400.002.02", "Bad Request - Invalid Timestamp"),
                N::DarajaError,
            ),
            (
                Err(DarajaError::UnexpectedResponse {
                    status: 502,
                    detail: "<html>".into(),
                }),
                N::DarajaError,
            ),
            (
                Err(DarajaError::Timeout {
                    may_have_reached_daraja: true,
                }),
                N::Unreachable,
            ),
            (
                Err(DarajaError::Transport("refused".into())),
                N::Unreachable,
            ),
            (
                Err(DarajaError::ConnectionLost("reset".into())),
                N::Unreachable,
            ),
            (
                Err(DarajaError::Auth {
                    status: 400,
                    error_code: "400.008.01".into(),
                    error_message: "Invalid Authentication passed".into(),
                }),
                N::OAuth,
            ),
        ];
        for (answer, cause) in &cases {
            assert_eq!(classify(answer), Verdict::NotYet(*cause), "{answer:?}");
        }
        let fin = Ok(StkQueryStatus::Final {
            merchant_request_id: "m".into(),
            result_code: ResultCode::Code(1032),
            result_desc: "Request cancelled by user".into(),
        });
        assert_eq!(
            classify(&fin),
            Verdict::Final {
                result_code: ResultCode::Code(1032),
                result_desc: "Request cancelled by user".into()
            }
        );
    }

    fn settings() -> ReconcileSettings {
        crate::config::default_reconcile()
    }

    #[test]
    fn backoff_grows_is_capped_and_stops_at_max_age() {
        let s = settings();
        let t0: DateTime<Utc> = "2024-07-21T09:00:00Z".parse().unwrap();
        let at = |secs: i64| t0 + chrono::Duration::seconds(secs);
        let gap =
            |now: DateTime<Utc>, cause| (next_due(&s, t0, now, cause, 0.0) - now).num_seconds();
        assert_eq!(gap(at(60), NotYet::BeingProcessed), 15);
        assert_eq!(gap(at(20), NotYet::BeingProcessed), 10);
        assert_eq!(gap(at(400), NotYet::BeingProcessed), 60);
        assert_eq!(gap(at(60), NotYet::RateLimited), 60);
        // Never past max_age.
        assert_eq!(
            next_due(&s, t0, at(580), NotYet::BeingProcessed, 0.0),
            at(600)
        );
        assert_eq!(next_due(&s, t0, at(700), NotYet::Unreachable, 0.0), at(700));
        // Jitter adds at most 10 %.
        let j = next_due(&s, t0, at(60), NotYet::BeingProcessed, 0.5);
        assert_eq!((j - at(60)).num_milliseconds(), 16_500);
    }
}
