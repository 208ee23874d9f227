//! One table of cases for [`PaymentStore`], run against both backends: Redis
//! (`payment.lua`, on a `redis-server` this test starts on a free port) and memory
//! (`store::memory::payment::PaymentTable`).
//!
//! A case is a sequence of steps (record a pending payment, apply a callback, apply a
//! trusted outcome, read the state), each with the reply it must get, then the final STATE
//! and the messages that must have been published on the payment's channel. Every case
//! runs on both backends; each must match the table, and the two must agree on every
//! state they return and publish (compared as parsed JSON: key order may differ), and on
//! the payment's history (compared without `at`, the one field whose clock differs).
//!
//! The Redis half never skips: without `redis-server` the test fails and says so. The
//! machine's own Redis is never touched: the test's server listens on a free port of its
//! own, and each case uses its own key prefix.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use stk_relay_shared::backends::Backends;
use stk_relay_shared::broker::BrokerEvent;
use stk_relay_shared::config::RedisSettings;
use stk_relay_shared::history::{
    HistoryEvent, PaymentHistory, QueryAnswer, QueryAsked, StoredEntry, WebhookAttempt,
    WebhookOutcome, MAX_ENTRIES,
};
use stk_relay_shared::ids::{CheckoutRequestId, MerchantRequestId};
use stk_relay_shared::keyspace::Keyspace;
use stk_relay_shared::payment::{
    FailureReason, PaymentOutcome, PaymentState, PaymentStatus, ResultCode, ResultSource,
};
use stk_relay_shared::store::payments::MAX_EARLY_RECORDS;
use stk_relay_shared::store::{ApplyOutcome, CallbackBinding, PaymentStore, RecordOutcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bound on every wait: a store call, a subscription, a published message.
const WAIT: Duration = Duration::from_secs(5);
/// Published on the channel after the steps: everything before it was the steps'.
const SENTINEL: &str = "{\"sentinel\":true}";

const MRID: &str = "2654-4b64-97ff-b827b542881d3130";
const OTHER_MRID: &str = "9999-9999-9999-999999999999";
const PHD: &str = "phd-of-the-pushed-phone";
const OTHER_PHD: &str = "phd-of-another-phone";
const AMOUNT: u32 = 100;
const PHONE: &str = "2547******92";
const RECEIPT: &str = "NLJ7RT61SV";

// ---- the test's own redis-server ----

/// A `redis-server` on a free port, killed when dropped.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    async fn start() -> Self {
        let mut last = String::new();
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("no free local port")
                .port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot start redis-server ({e}): this test needs it and never skips; \
                         install it (apt-get install redis-server, or scripts/test.sh)"
                    )
                });
            let mut server = RedisServer { child, port };
            match server.wait_ready().await {
                Ok(()) => return server,
                // Dropping `server` kills it; the port may have been taken: try another.
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not come up: {last}");
    }

    /// Waits (bounded) until the server answers PING.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "redis-server on port {} exited: {status}",
                    self.port
                ));
            }
            if ping(self.port).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("no PONG on port {} within 10 s", self.port));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn settings(&self) -> RedisSettings {
        RedisSettings {
            pool_size: 2,
            ..RedisSettings::standalone(self.url(), "store-cases")
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn ping(port: u16) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await.ok()?;
        Some(buf.starts_with(b"+PONG"))
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), attempt).await,
        Ok(Some(true))
    )
}

// ---- states, outcomes and bindings ----

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_721_555_490 + secs, 0).expect("a valid time")
}

fn pending_state(id: &CheckoutRequestId) -> PaymentState {
    PaymentState::pending(
        id.clone(),
        MerchantRequestId::parse(MRID).expect("a valid MerchantRequestID"),
        AMOUNT,
        PHONE.into(),
        at(0),
    )
}

/// A success callback for `amount`, with its metadata.
fn paid(amount: u32) -> PaymentOutcome {
    let mut o = PaymentOutcome::from_code(
        ResultCode::Code(0),
        "The service request is processed successfully.".into(),
        at(10),
    )
    .with_source(ResultSource::Callback);
    o.mpesa_receipt_number = Some(RECEIPT.into());
    o.amount = Some(amount);
    o.phone_number = Some(PHONE.into());
    o.transaction_date = Some("2024-07-21T12:51:38+03:00".into());
    o
}

fn success() -> PaymentOutcome {
    paid(AMOUNT)
}

/// A genuine callback arriving after the payment was closed as UNCONFIRMED.
fn late_success() -> PaymentOutcome {
    let mut o = paid(AMOUNT);
    o.completed_at = at(900);
    o
}

/// A 1032 callback that (hostile or buggy) carries success metadata: none of it may
/// reach the state.
fn cancelled_with_metadata() -> PaymentOutcome {
    let mut o = PaymentOutcome::from_code(
        ResultCode::Code(1032),
        "Request cancelled by user".into(),
        at(20),
    )
    .with_source(ResultSource::Callback);
    o.mpesa_receipt_number = Some("FAKE000000".into());
    o.amount = Some(1);
    o.phone_number = Some("2541******00".into());
    o.transaction_date = Some("2024-07-21T12:51:50+03:00".into());
    o
}

fn query_success() -> PaymentOutcome {
    PaymentOutcome::from_code(
        ResultCode::Code(0),
        "The service request is processed successfully.".into(),
        at(30),
    )
    .with_source(ResultSource::StkQuery)
}

fn query_timeout() -> PaymentOutcome {
    PaymentOutcome::from_code(
        ResultCode::Code(1037),
        "DS timeout user cannot be reached".into(),
        at(30),
    )
    .with_source(ResultSource::StkQuery)
}

/// The push as the gateway normalises it for the history.
fn pushed() -> stk_relay_shared::history::Pushed {
    stk_relay_shared::history::Pushed {
        amount: AMOUNT,
        phone_number: PHONE.into(),
        account_reference: "ORDER-1".into(),
        description: Some("Payment".into()),
        webhook: false,
    }
}

fn binding(mrid: &str, phd: &str) -> CallbackBinding {
    CallbackBinding {
        mrid: mrid.into(),
        phd: phd.into(),
    }
}

fn good() -> CallbackBinding {
    binding(MRID, PHD)
}

// ---- the table's vocabulary ----

/// Expected reply of `record_pending`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rec {
    Pending,
    AppliedEarly,
    PendingMismatch(String),
    PendingConfirmation,
    AlreadyExists,
    Collision,
}

/// Expected reply of `apply_callback` / `apply_trusted`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Apply {
    Applied,
    Corrected,
    Mismatch(String),
    AwaitingConfirmation,
    Duplicate,
    Early,
    EarlyFull,
    Forbidden,
    NotFound,
}

enum Step {
    Pending {
        nonce: String,
        phd: &'static str,
        /// The pushed amount (always set by the gateway; `None` tests the script's guard).
        amount: Option<u32>,
        expect: Rec,
    },
    Callback {
        nonce: String,
        outcome: PaymentOutcome,
        binding: CallbackBinding,
        confirm: bool,
        expect: Apply,
    },
    Trusted {
        outcome: PaymentOutcome,
        expect: Apply,
    },
    /// `get`: `None`, or the status and version of the state.
    Get {
        expect: Option<(PaymentStatus, u64)>,
    },
    /// `append_history` of one webhook attempt with this outcome.
    Webhook(WebhookOutcome),
}

fn pending(nonce: &str, expect: Rec) -> Step {
    Step::Pending {
        nonce: nonce.into(),
        phd: PHD,
        amount: Some(AMOUNT),
        expect,
    }
}

/// A pending record with its own phone digest and amount.
fn pending_with(nonce: &str, phd: &'static str, amount: Option<u32>, expect: Rec) -> Step {
    Step::Pending {
        nonce: nonce.into(),
        phd,
        amount,
        expect,
    }
}

fn callback(nonce: &str, outcome: PaymentOutcome, expect: Apply) -> Step {
    callback_with(nonce, outcome, good(), false, expect)
}

fn callback_with(
    nonce: &str,
    outcome: PaymentOutcome,
    binding: CallbackBinding,
    confirm: bool,
    expect: Apply,
) -> Step {
    Step::Callback {
        nonce: nonce.into(),
        outcome,
        binding,
        confirm,
        expect,
    }
}

fn trusted(outcome: PaymentOutcome, expect: Apply) -> Step {
    Step::Trusted { outcome, expect }
}

fn get(expect: Option<(PaymentStatus, u64)>) -> Step {
    Step::Get { expect }
}

/// The fields of the final STATE the table pins.
#[derive(Debug, Clone, PartialEq)]
struct Final {
    status: PaymentStatus,
    version: u64,
    reason: Option<FailureReason>,
    receipt: Option<&'static str>,
    amount: Option<u32>,
    source: Option<ResultSource>,
}

impl Final {
    fn of(s: &PaymentState) -> Final {
        Final {
            status: s.status,
            version: s.version,
            reason: s.reason,
            receipt: match s.mpesa_receipt_number.as_deref() {
                None => None,
                Some(RECEIPT) => Some(RECEIPT),
                // Any other receipt fails the comparison, visibly.
                Some(_) => Some("<another receipt>"),
            },
            amount: s.amount,
            source: s.result_source,
        }
    }
}

fn still_pending() -> Option<Final> {
    Some(Final {
        status: PaymentStatus::Pending,
        version: 1,
        reason: None,
        receipt: None,
        amount: Some(AMOUNT),
        source: None,
    })
}

fn paid_by(version: u64, source: ResultSource) -> Option<Final> {
    Some(Final {
        status: PaymentStatus::Success,
        version,
        reason: None,
        receipt: Some(RECEIPT),
        amount: Some(AMOUNT),
        source: Some(source),
    })
}

fn failed(reason: FailureReason, source: ResultSource) -> Option<Final> {
    Some(Final {
        status: PaymentStatus::Failed,
        version: 2,
        reason: Some(reason),
        receipt: None,
        amount: Some(AMOUNT),
        source: Some(source),
    })
}

struct Case {
    name: &'static str,
    steps: Vec<Step>,
    /// The state `get` returns after the steps.
    end: Option<Final>,
    /// Status and version of each message published on the channel, in order.
    published: Vec<(PaymentStatus, u64)>,
    /// The `amountMismatch` field after the steps (read from Redis only: the memory table
    /// has no reader for it; its unit tests check it).
    flag: Option<&'static str>,
    /// The history after the steps, one [`summary`] per entry, and how many entries were
    /// dropped; `None`: not pinned (the backends must still agree).
    history: Option<(Vec<String>, u64)>,
}

/// An expected history: `entries` summaries, `truncated` dropped.
fn hist(entries: &[&str], truncated: u64) -> Option<(Vec<String>, u64)> {
    Some((entries.iter().map(|e| (*e).to_owned()).collect(), truncated))
}

/// One entry in a word: `pushed`, `callback:<decision>[:<fields>]`, `query_asked`,
/// `query_answer:<code>`, `webhook_attempt:<outcome>`, `final:<cause>:<status>:v<version>`.
fn summary(e: &HistoryEvent) -> String {
    let j = serde_json::to_value(e).unwrap_or_default();
    let s = |k: &str| match &j[k] {
        Value::String(x) => x.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    };
    match e {
        HistoryEvent::Pushed(_) => "pushed".into(),
        HistoryEvent::Callback(c) => match &c.fields {
            Some(f) => format!("callback:{}:{}", s("decision"), f.join(",")),
            None => format!("callback:{}", s("decision")),
        },
        HistoryEvent::QueryAsked(_) => "query_asked".into(),
        HistoryEvent::QueryAnswer(_) => format!("query_answer:{}", s("resultCode")),
        HistoryEvent::WebhookAttempt(_) => format!("webhook_attempt:{}", s("outcome")),
        HistoryEvent::Final(_) => {
            format!("final:{}:{}:v{}", s("cause"), s("status"), s("version"))
        }
    }
}

const SUCCESS_V2: (PaymentStatus, u64) = (PaymentStatus::Success, 2);

fn cases() -> Vec<Case> {
    use Apply as A;
    use PaymentStatus::{Failed, Pending, Success};
    let early_nonces: Vec<String> = (1..=MAX_EARLY_RECORDS).map(|i| format!("e{i}")).collect();
    let mut early_cap: Vec<Step> = early_nonces
        .iter()
        .map(|n| callback(n, success(), A::Early))
        .collect();
    early_cap.extend([
        callback("e-one-too-many", success(), A::EarlyFull),
        // The same nonce again never overwrites its early record.
        callback("e1", paid(1), A::Duplicate),
        get(None),
        pending("e1", Rec::AppliedEarly),
    ]);
    vec![
        Case {
            name: "pending_then_success",
            steps: vec![
                pending("n1", Rec::Pending),
                get(Some((Pending, 1))),
                callback("n1", success(), A::Applied),
            ],
            end: paid_by(2, ResultSource::Callback),
            published: vec![SUCCESS_V2],
            flag: None,
            history: hist(
                &["pushed", "callback:applied", "final:callback:SUCCESS:v2"],
                0,
            ),
        },
        Case {
            name: "pending_then_cancelled_with_metadata",
            steps: vec![
                pending("n1", Rec::Pending),
                callback("n1", cancelled_with_metadata(), A::Applied),
            ],
            end: failed(FailureReason::CancelledByUser, ResultSource::Callback),
            published: vec![(Failed, 2)],
            flag: None,
            history: hist(
                &["pushed", "callback:applied", "final:callback:FAILED:v2"],
                0,
            ),
        },
        Case {
            name: "duplicate_callback",
            steps: vec![
                pending("n1", Rec::Pending),
                callback("n1", success(), A::Applied),
                callback("n1", success(), A::Duplicate),
                callback("n1", cancelled_with_metadata(), A::Duplicate),
            ],
            end: paid_by(2, ResultSource::Callback),
            published: vec![SUCCESS_V2],
            flag: None,
            history: hist(
                &[
                    "pushed",
                    "callback:applied",
                    "final:callback:SUCCESS:v2",
                    "callback:duplicate",
                    "callback:duplicate",
                ],
                0,
            ),
        },
        Case {
            name: "early_then_pending",
            steps: vec![
                callback("n1", success(), A::Early),
                get(None),
                pending("n1", Rec::AppliedEarly),
                get(Some((Success, 2))),
            ],
            end: paid_by(2, ResultSource::Callback),
            published: vec![SUCCESS_V2],
            flag: None,
            history: hist(
                &["callback:early", "pushed", "final:callback:SUCCESS:v2"],
                0,
            ),
        },
        Case {
            name: "early_then_pending_mismatch",
            steps: vec![
                callback("n1", paid(1), A::Early),
                pending("n1", Rec::PendingMismatch("amount".into())),
            ],
            end: still_pending(),
            published: vec![],
            flag: Some("amount"),
            history: hist(&["callback:early", "pushed"], 0),
        },
        Case {
            name: "early_with_confirm_then_query",
            steps: vec![
                callback_with("n1", success(), good(), true, A::Early),
                pending("n1", Rec::PendingConfirmation),
                get(Some((Pending, 1))),
                trusted(query_success(), A::Applied),
            ],
            end: paid_by(2, ResultSource::Callback),
            published: vec![SUCCESS_V2],
            flag: None,
            history: None,
        },
        Case {
            name: "early_of_another_nonce_is_dropped",
            steps: vec![
                callback("n2", success(), A::Early),
                pending("n1", Rec::Pending),
                callback("n2", success(), A::Forbidden),
            ],
            end: still_pending(),
            published: vec![],
            flag: None,
            history: None,
        },
        Case {
            name: "pending_retry_same_nonce",
            steps: vec![
                pending("n1", Rec::Pending),
                pending("n1", Rec::AlreadyExists),
            ],
            end: still_pending(),
            published: vec![],
            flag: None,
            history: hist(&["pushed"], 0),
        },
        Case {
            name: "pending_other_nonce",
            steps: vec![pending("n1", Rec::Pending), pending("n2", Rec::Collision)],
            end: still_pending(),
            published: vec![],
            flag: None,
            history: None,
        },
        Case {
            name: "callback_wrong_nonce",
            steps: vec![
                pending("n1", Rec::Pending),
                callback("n2", success(), A::Forbidden),
                get(Some((Pending, 1))),
                callback("n1", success(), A::Applied),
            ],
            end: paid_by(2, ResultSource::Callback),
            published: vec![SUCCESS_V2],
            flag: None,
            history: hist(
                &[
                    "pushed",
                    "callback:forbidden",
                    "callback:applied",
                    "final:callback:SUCCESS:v2",
                ],
                0,
            ),
        },
        Case {
            name: "amount_mismatch",
            steps: vec![
                pending("n1", Rec::Pending),
                callback("n1", paid(1), A::Mismatch("amount".into())),
                get(Some((Pending, 1))),
            ],
            end: still_pending(),
            published: vec![],
            flag: Some("amount"),
            history: hist(&["pushed", "callback:mismatch:amount"], 0),
        },
        Case {
            name: "merchant_request_id_mismatch",
            steps: vec![
                pending("n1", Rec::Pending),
                callback_with(
                    "n1",
                    cancelled_with_metadata(),
                    binding(OTHER_MRID, PHD),
                    false,
                    A::Mismatch("merchantRequestId".into()),
                ),
            ],
            end: still_pending(),
            published: vec![],
            flag: Some("merchantRequestId"),
            history: None,
        },
        Case {
            name: "phone_mismatch_on_success",
            steps: vec![
                pending("n1", Rec::Pending),
                callback_with(
                    "n1",
                    success(),
                    binding(MRID, OTHER_PHD),
                    false,
                    A::Mismatch("phone".into()),
                ),
            ],
            end: still_pending(),
            published: vec![],
            flag: Some("phone"),
            history: None,
        },
        Case {
            name: "phone_not_checked_on_failure",
            steps: vec![
                pending("n1", Rec::Pending),
                callback_with(
                    "n1",
                    cancelled_with_metadata(),
                    binding(MRID, OTHER_PHD),
                    false,
                    A::Applied,
                ),
            ],
            end: failed(FailureReason::CancelledByUser, ResultSource::Callback),
            published: vec![(Failed, 2)],
            flag: None,
            history: None,
        },
        Case {
            name: "phone_not_checked_without_pushed_digest",
            steps: vec![
                pending_with("n1", "", Some(AMOUNT), Rec::Pending),
                callback_with("n1", success(), binding(MRID, OTHER_PHD), false, A::Applied),
            ],
            end: paid_by(2, ResultSource::Callback),
            published: vec![SUCCESS_V2],
            flag: None,
            history: None,
        },
        Case {
            name: "no_pushed_amount_no_callback_success",
            steps: vec![
                pending_with("n1", PHD, None, Rec::Pending),
                callback("n1", success(), A::Mismatch("amount".into())),
                trusted(query_success(), A::Applied),
            ],
            end: Some(Final {
                status: Success,
                version: 2,
                reason: None,
                receipt: None,
                amount: None,
                source: Some(ResultSource::StkQuery),
            }),
            published: vec![SUCCESS_V2],
            flag: Some("amount"),
            history: None,
        },
        Case {
            name: "everything_mismatches",
            steps: vec![
                pending("n1", Rec::Pending),
                callback_with(
                    "n1",
                    paid(1),
                    binding(OTHER_MRID, OTHER_PHD),
                    true,
                    A::Mismatch("merchantRequestId,amount,phone".into()),
                ),
            ],
            end: still_pending(),
            published: vec![],
            flag: Some("merchantRequestId,amount,phone"),
            history: None,
        },
        Case {
            name: "confirm_then_query_success_applies_kept_receipt",
            steps: vec![
                pending("n1", Rec::Pending),
                callback_with("n1", success(), good(), true, A::AwaitingConfirmation),
                get(Some((Pending, 1))),
                trusted(query_success(), A::Applied),
                callback("n1", success(), A::Duplicate),
            ],
            end: paid_by(2, ResultSource::Callback),
            published: vec![SUCCESS_V2],
            flag: None,
            history: hist(
                &[
                    "pushed",
                    "callback:awaiting_confirmation",
                    "query_asked",
                    "query_answer:0",
                    "final:query:SUCCESS:v2",
                    "callback:duplicate",
                ],
                0,
            ),
        },
        Case {
            name: "confirm_then_query_failure",
            steps: vec![
                pending("n1", Rec::Pending),
                callback_with("n1", success(), good(), true, A::AwaitingConfirmation),
                trusted(query_timeout(), A::Applied),
            ],
            end: failed(FailureReason::Timeout, ResultSource::StkQuery),
            published: vec![(Failed, 2)],
            flag: None,
            history: None,
        },
        Case {
            name: "confirm_does_not_hold_a_failure",
            steps: vec![
                pending("n1", Rec::Pending),
                callback_with("n1", cancelled_with_metadata(), good(), true, A::Applied),
            ],
            end: failed(FailureReason::CancelledByUser, ResultSource::Callback),
            published: vec![(Failed, 2)],
            flag: None,
            history: None,
        },
        Case {
            name: "trusted_failure",
            steps: vec![
                pending("n1", Rec::Pending),
                trusted(query_timeout(), A::Applied),
            ],
            end: failed(FailureReason::Timeout, ResultSource::StkQuery),
            published: vec![(Failed, 2)],
            flag: None,
            history: hist(
                &[
                    "pushed",
                    "query_asked",
                    "query_answer:1037",
                    "final:query:FAILED:v2",
                ],
                0,
            ),
        },
        Case {
            name: "trusted_success_has_no_receipt",
            steps: vec![
                pending("n1", Rec::Pending),
                trusted(query_success(), A::Applied),
            ],
            end: Some(Final {
                status: Success,
                version: 2,
                reason: None,
                receipt: None,
                amount: Some(AMOUNT),
                source: Some(ResultSource::StkQuery),
            }),
            published: vec![SUCCESS_V2],
            flag: None,
            history: None,
        },
        Case {
            name: "trusted_on_unknown",
            steps: vec![trusted(query_success(), A::NotFound), get(None)],
            end: None,
            published: vec![],
            flag: None,
            history: None,
        },
        Case {
            name: "trusted_on_early_only",
            steps: vec![
                callback("n1", success(), A::Early),
                trusted(query_timeout(), A::NotFound),
                pending("n1", Rec::AppliedEarly),
            ],
            end: paid_by(2, ResultSource::Callback),
            published: vec![SUCCESS_V2],
            flag: None,
            history: None,
        },
        Case {
            name: "trusted_after_final",
            steps: vec![
                pending("n1", Rec::Pending),
                callback("n1", success(), A::Applied),
                trusted(query_timeout(), A::Duplicate),
            ],
            end: paid_by(2, ResultSource::Callback),
            published: vec![SUCCESS_V2],
            flag: None,
            history: None,
        },
        Case {
            name: "unconfirmed_then_corrected_once",
            steps: vec![
                pending("n1", Rec::Pending),
                trusted(PaymentOutcome::unconfirmed(at(600)), A::Applied),
                get(Some((Failed, 2))),
                trusted(query_success(), A::Duplicate),
                callback("n1", late_success(), A::Corrected),
                callback("n1", late_success(), A::Duplicate),
                trusted(query_success(), A::Duplicate),
            ],
            end: paid_by(3, ResultSource::Callback),
            published: vec![(Failed, 2), (Success, 3)],
            flag: None,
            history: hist(
                &[
                    "pushed",
                    "final:unconfirmed:FAILED:v2",
                    "query_asked",
                    "query_answer:0",
                    "callback:corrected",
                    "final:correction:SUCCESS:v3",
                    "callback:duplicate",
                    "query_asked",
                    "query_answer:0",
                ],
                0,
            ),
        },
        Case {
            name: "unconfirmed_then_mismatching_callback",
            steps: vec![
                pending("n1", Rec::Pending),
                trusted(PaymentOutcome::unconfirmed(at(600)), A::Applied),
                callback("n2", late_success(), A::Forbidden),
                callback("n1", paid(1), A::Mismatch("amount".into())),
            ],
            end: failed(FailureReason::Unconfirmed, ResultSource::Reconciliation),
            published: vec![(Failed, 2)],
            flag: Some("amount"),
            history: None,
        },
        Case {
            name: "early_records_cap",
            steps: early_cap,
            end: paid_by(2, ResultSource::Callback),
            published: vec![SUCCESS_V2],
            flag: None,
            history: None,
        },
        Case {
            name: "get_unknown",
            steps: vec![get(None)],
            end: None,
            published: vec![],
            flag: None,
            history: None,
        },
        Case {
            name: "history_webhook_attempts",
            steps: vec![
                pending("n1", Rec::Pending),
                callback("n1", success(), A::Applied),
                Step::Webhook(WebhookOutcome::Retry),
                Step::Webhook(WebhookOutcome::Delivered),
            ],
            end: paid_by(2, ResultSource::Callback),
            published: vec![SUCCESS_V2],
            flag: None,
            history: hist(
                &[
                    "pushed",
                    "callback:applied",
                    "final:callback:SUCCESS:v2",
                    "webhook_attempt:retry",
                    "webhook_attempt:delivered",
                ],
                0,
            ),
        },
        Case {
            name: "history_not_written_for_unknown",
            steps: vec![Step::Webhook(WebhookOutcome::Dead), get(None)],
            end: None,
            published: vec![],
            flag: None,
            history: None,
        },
        history_bound_case(),
    ]
}

/// More entries than the bound: the earliest are kept (`pushed` first), the places
/// reserved for `final` entries take the final decision, the rest are counted.
fn history_bound_case() -> Case {
    let extra = 70;
    let mut steps = vec![pending("n1", Rec::Pending)];
    steps.extend((0..extra).map(|_| callback("n2", success(), Apply::Forbidden)));
    steps.push(callback("n1", success(), Apply::Applied));
    let kept_forbidden = MAX_ENTRIES - 2 - 1;
    let mut entries = vec!["pushed".to_owned()];
    entries.extend((0..kept_forbidden).map(|_| "callback:forbidden".to_owned()));
    entries.push("final:callback:SUCCESS:v2".to_owned());
    // The forbidden callbacks with no room, and the applied callback's own entry.
    let dropped = (extra - kept_forbidden + 1) as u64;
    Case {
        name: "history_bound",
        steps,
        end: paid_by(2, ResultSource::Callback),
        published: vec![SUCCESS_V2],
        flag: None,
        history: Some((entries, dropped)),
    }
}

/// What reconciliation hands the store with a Query verdict.
fn query_entries(outcome: &PaymentOutcome) -> Vec<StoredEntry> {
    if outcome.result_source != Some(ResultSource::StkQuery) {
        return Vec::new();
    }
    vec![
        StoredEntry::new(
            outcome.completed_at,
            HistoryEvent::QueryAsked(QueryAsked {}),
        ),
        StoredEntry::new(
            outcome.completed_at,
            HistoryEvent::QueryAnswer(QueryAnswer {
                result_code: outcome.result_code.clone(),
                result_desc: Some(outcome.result_desc.clone()),
                error: None,
            }),
        ),
    ]
}

// ---- running a case ----

/// What one backend did in one case, to compare with the other backend.
#[derive(Debug, Default)]
struct Trace {
    /// Per step: the reply, and the STATE it carried (or `get` returned), parsed.
    steps: Vec<(String, Option<Value>)>,
    /// The final `get`, parsed.
    end: Option<Value>,
    /// Every message published on the channel, parsed.
    published: Vec<Value>,
    /// The history's entries without `at`, and `truncated`.
    history: Option<(Vec<HistoryEvent>, u64)>,
}

fn parse(json: &str) -> Value {
    serde_json::from_str(json).unwrap_or_else(|e| Value::String(format!("not JSON ({e}): {json}")))
}

fn record_kind(r: &RecordOutcome) -> (Rec, Option<&str>) {
    match r {
        RecordOutcome::Pending(s) => (Rec::Pending, Some(s)),
        RecordOutcome::AppliedEarly(s) => (Rec::AppliedEarly, Some(s)),
        RecordOutcome::PendingMismatch { state, fields } => {
            (Rec::PendingMismatch(fields.clone()), Some(state))
        }
        RecordOutcome::PendingConfirmation(s) => (Rec::PendingConfirmation, Some(s)),
        RecordOutcome::AlreadyExists(s) => (Rec::AlreadyExists, Some(s)),
        RecordOutcome::Collision => (Rec::Collision, None),
    }
}

fn apply_kind(r: &ApplyOutcome) -> (Apply, Option<&str>) {
    match r {
        ApplyOutcome::Applied { state } => (Apply::Applied, Some(state)),
        ApplyOutcome::Corrected { state } => (Apply::Corrected, Some(state)),
        ApplyOutcome::Mismatch { fields } => (Apply::Mismatch(fields.clone()), None),
        ApplyOutcome::AwaitingConfirmation => (Apply::AwaitingConfirmation, None),
        ApplyOutcome::Duplicate => (Apply::Duplicate, None),
        ApplyOutcome::Early => (Apply::Early, None),
        ApplyOutcome::EarlyFull => (Apply::EarlyFull, None),
        ApplyOutcome::Forbidden => (Apply::Forbidden, None),
        ApplyOutcome::NotFound => (Apply::NotFound, None),
    }
}

/// Status and version of a STATE JSON.
fn head(state: &Value) -> Option<(PaymentStatus, u64)> {
    let s: PaymentState = serde_json::from_value(state.clone()).ok()?;
    Some((s.status, s.version))
}

async fn bounded<T, E: std::fmt::Debug>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(WAIT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e:?}")),
        Err(_) => Err(format!("{what}: no answer within {WAIT:?}")),
    }
}

/// Runs `case` on one backend. Failures are collected, not raised, so one run reports
/// every difference from the table.
async fn run_case(
    backend: &str,
    backends: &Backends,
    redis_url: Option<&str>,
    case: &Case,
) -> Result<(Trace, Vec<String>), String> {
    let id =
        CheckoutRequestId::parse(&format!("ws_CO_{}", case.name)).map_err(|e| e.to_string())?;
    let keys = Keyspace::new(format!("store-cases:{}", case.name));
    let store = PaymentStore::new(
        backends.storage.clone(),
        keys.clone(),
        Duration::from_secs(600),
    );
    let channel = keys.payment_channel(&id);
    let mut sub = bounded("subscribe", backends.broker.subscribe(&channel)).await?;

    let mut trace = Trace::default();
    let mut errors = Vec::new();
    let mut fail = |step: usize, msg: String| {
        errors.push(format!("[{backend}] {}: step {step}: {msg}", case.name))
    };
    // States the steps say they published, in order.
    let mut said_published = Vec::new();
    for (i, step) in case.steps.iter().enumerate() {
        let (kind, state) = match step {
            Step::Pending {
                nonce,
                phd,
                amount,
                expect,
            } => {
                let mut state = pending_state(&id);
                state.amount = *amount;
                let r = bounded(
                    "record_pending",
                    store.record_pending(&state, nonce, phd, "", &pushed()),
                )
                .await?;
                let (got, state) = record_kind(&r);
                if got != *expect {
                    fail(
                        i,
                        format!("record_pending: expected {expect:?}, got {got:?}"),
                    );
                }
                if got == Rec::AppliedEarly {
                    said_published.extend(state.map(parse));
                }
                (format!("{got:?}"), state.map(parse))
            }
            Step::Callback {
                nonce,
                outcome,
                binding,
                confirm,
                expect,
            } => {
                let r = bounded(
                    "apply_callback",
                    store.apply_callback(&id, nonce, outcome, binding, *confirm),
                )
                .await?;
                let (got, state) = apply_kind(&r);
                if got != *expect {
                    fail(
                        i,
                        format!("apply_callback: expected {expect:?}, got {got:?}"),
                    );
                }
                said_published.extend(state.map(parse));
                (format!("{got:?}"), state.map(parse))
            }
            Step::Trusted { outcome, expect } => {
                let r = bounded(
                    "apply_trusted",
                    store.apply_trusted(&id, outcome, &query_entries(outcome)),
                )
                .await?;
                let (got, state) = apply_kind(&r);
                if got != *expect {
                    fail(
                        i,
                        format!("apply_trusted: expected {expect:?}, got {got:?}"),
                    );
                }
                said_published.extend(state.map(parse));
                (format!("{got:?}"), state.map(parse))
            }
            Step::Get { expect } => {
                let state = bounded("get", store.get(&id)).await?.map(|s| parse(&s));
                let got = state.as_ref().and_then(head);
                if state.is_some() && got.is_none() {
                    fail(i, format!("get: not a STATE: {state:?}"));
                } else if got != *expect {
                    fail(i, format!("get: expected {expect:?}, got {got:?}"));
                }
                ("Get".to_owned(), state)
            }
            Step::Webhook(outcome) => {
                let attempt = WebhookAttempt {
                    event_id: format!("evt_{}_v2", id.as_str()),
                    attempt: 1,
                    http_status: Some(500),
                    error: None,
                    outcome: *outcome,
                };
                let entry = StoredEntry::new(Utc::now(), HistoryEvent::WebhookAttempt(attempt));
                bounded::<_, std::convert::Infallible>("append_history", async {
                    store.append_history(&id, &[entry]).await;
                    Ok(())
                })
                .await?;
                ("Webhook".to_owned(), None)
            }
        };
        trace.steps.push((kind, state));
    }

    // The final state, read as the real type.
    let end = bounded("get", store.get(&id)).await?;
    trace.end = end.as_deref().map(parse);
    let got = match end.as_deref().map(serde_json::from_str::<PaymentState>) {
        None => None,
        Some(Ok(s)) => Some(Final::of(&s)),
        Some(Err(e)) => {
            fail(
                case.steps.len(),
                format!("final state is not a STATE ({e}): {end:?}"),
            );
            None
        }
    };
    if got != case.end {
        fail(
            case.steps.len(),
            format!("final state: expected {:?}, got {got:?}", case.end),
        );
    }

    // Everything published on the channel, up to our sentinel.
    bounded(
        "publish sentinel",
        backends.broker.publish(&channel, SENTINEL),
    )
    .await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, sub.recv()).await {
            Err(_) => return Err(format!("[{backend}] {}: sentinel not received", case.name)),
            Ok(BrokerEvent::Message(m)) if &*m == SENTINEL => break,
            Ok(BrokerEvent::Message(m)) => trace.published.push(parse(&m)),
            Ok(other) => {
                return Err(format!(
                    "[{backend}] {}: subscription: {other:?}",
                    case.name
                ))
            }
        }
    }
    let heads: Vec<_> = trace.published.iter().map(head).collect();
    let expected: Vec<_> = case.published.iter().copied().map(Some).collect();
    if heads != expected {
        fail(
            case.steps.len(),
            format!(
                "published: expected {:?}, got {:?}",
                case.published, trace.published
            ),
        );
    }
    if trace.published != said_published {
        fail(
            case.steps.len(),
            format!(
                "published {:?}, but the replies carried {said_published:?}",
                trace.published
            ),
        );
    }

    // The history: `at` stamped now (by either clock), then the table's entries.
    let started = Utc::now() - chrono::Duration::minutes(1);
    let history: Option<PaymentHistory> = bounded("history", store.history(&id)).await?;
    if let Some(h) = &history {
        let future = Utc::now() + chrono::Duration::minutes(1);
        // Entries from a query carry the outcome's (fixed, past) time; the rest are now.
        for e in &h.entries {
            let from_query = matches!(
                e.event,
                HistoryEvent::QueryAsked(_) | HistoryEvent::QueryAnswer(_)
            );
            if !from_query && (e.at < started || e.at > future) {
                fail(
                    case.steps.len(),
                    format!("history entry stamped {}: {e:?}", e.at),
                );
            }
        }
        if h.checkout_request_id != id.as_str() {
            fail(
                case.steps.len(),
                format!("history of {}", h.checkout_request_id),
            );
        }
    }
    if history.is_none() && case.end.is_some() {
        fail(
            case.steps.len(),
            "no history for a known payment".to_owned(),
        );
    }
    trace.history = history.as_ref().map(|h| {
        (
            h.entries.iter().map(|e| e.event.clone()).collect(),
            h.truncated,
        )
    });
    if let Some((want, truncated)) = &case.history {
        let got = history.as_ref().map(|h| {
            let entries: Vec<String> = h.entries.iter().map(|e| summary(&e.event)).collect();
            (entries, h.truncated)
        });
        if got.as_ref() != Some(&(want.clone(), *truncated)) {
            fail(
                case.steps.len(),
                format!("history: expected {:?}, got {got:?}", (want, truncated)),
            );
        }
    }
    // Redis: the list keeps the payment's TTL, and nothing is left for an unknown one.
    if let Some(url) = redis_url {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let mut conn = bounded("connect", client.get_multiplexed_async_connection()).await?;
        let (hash_ttl, list_ttl): (i64, i64) = bounded(
            "PTTL",
            redis::pipe()
                .cmd("PTTL")
                .arg(keys.payment(&id))
                .cmd("PTTL")
                .arg(keys.payment_history(&id))
                .query_async(&mut conn),
        )
        .await?;
        let same = (hash_ttl - list_ttl).abs() < 2_000;
        if hash_ttl == -2 && list_ttl != -2 {
            fail(
                case.steps.len(),
                format!("history without its payment (PTTL {list_ttl})"),
            );
        } else if hash_ttl > 0 && !same {
            fail(
                case.steps.len(),
                format!("history PTTL {list_ttl} ms, payment PTTL {hash_ttl} ms"),
            );
        }
    }

    // The mismatch flag, straight from Redis.
    if let Some(url) = redis_url {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let mut conn = bounded("connect", client.get_multiplexed_async_connection()).await?;
        let flag: Option<String> = bounded(
            "HGET amountMismatch",
            redis::cmd("HGET")
                .arg(keys.payment(&id))
                .arg("amountMismatch")
                .query_async(&mut conn),
        )
        .await?;
        if flag.as_deref() != case.flag {
            fail(
                case.steps.len(),
                format!("amountMismatch: expected {:?}, got {flag:?}", case.flag),
            );
        }
    }
    Ok((trace, errors))
}

/// The differences between what the two backends returned and published.
fn compare(case: &str, memory: &Trace, redis: &Trace) -> Vec<String> {
    let mut out = Vec::new();
    for (i, (m, r)) in memory.steps.iter().zip(&redis.steps).enumerate() {
        if m != r {
            out.push(format!("{case}: step {i}: memory {m:?} but redis {r:?}"));
        }
    }
    if memory.end != redis.end {
        out.push(format!(
            "{case}: final state: memory {:?} but redis {:?}",
            memory.end, redis.end
        ));
    }
    if memory.history != redis.history {
        out.push(format!(
            "{case}: history: memory {:?} but redis {:?}",
            memory.history, redis.history
        ));
    }
    if memory.published != redis.published {
        out.push(format!(
            "{case}: published: memory {:?} but redis {:?}",
            memory.published, redis.published
        ));
    }
    out
}

/// Waits (bounded) until the broker's subscriber connection is up and has raised the
/// `Resync` of its first connect, by a round trip of the sentinel on a channel of its
/// own. After this, a `Resync` during a case is a failure: messages may have been lost.
async fn warm_up(backends: &Backends) {
    let channel = "store-cases:warm-up";
    let mut sub = bounded("subscribe", backends.broker.subscribe(channel))
        .await
        .expect("subscribe to the warm-up channel");
    bounded("publish", backends.broker.publish(channel, SENTINEL))
        .await
        .expect("publish on the warm-up channel");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, sub.recv()).await {
            Ok(BrokerEvent::Message(m)) if &*m == SENTINEL => return,
            Ok(BrokerEvent::Message(_) | BrokerEvent::Resync) => {}
            Ok(BrokerEvent::Closed) => panic!("the Redis broker closed during warm-up"),
            Err(_) => {
                panic!("the Redis broker did not deliver the warm-up message within {WAIT:?}")
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_table_of_cases_on_both_backends() {
    let server = RedisServer::start().await;
    let redis = Backends::redis(&server.settings())
        .await
        .expect("Redis backends");
    warm_up(&redis).await;
    let cases = cases();
    let mut names: Vec<_> = cases.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(
        names.len(),
        cases.len(),
        "case names (and so prefixes) must be unique"
    );

    let mut failures = Vec::new();
    for case in &cases {
        let memory = Backends::memory();
        let m = run_case("memory", &memory, None, case).await;
        let r = run_case("redis", &redis, Some(&server.url()), case).await;
        match (m, r) {
            (Ok((m, m_err)), Ok((r, r_err))) => {
                failures.extend(m_err);
                failures.extend(r_err);
                failures.extend(compare(case.name, &m, &r));
            }
            (m, r) => {
                failures.extend(m.err());
                failures.extend(r.err());
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} checks failed across {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
