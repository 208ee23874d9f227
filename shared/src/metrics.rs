//! Prometheus metrics: every metric name, its labels and their bounded values, in one
//! place; the recorder; and the separate listener that serves `GET /metrics`.
//!
//! Call sites record through the small functions here (`callback`, `push`, …), which
//! take enums or `&'static str` values from fixed sets: no label ever carries a payment
//! id, a phone number or any other unbounded value, and recording allocates nothing
//! beyond what the `metrics` crate needs on a series' first use.
//!
//! With `metrics.bind` empty (the default) no recorder is installed, and every call
//! here is a no-op of the `metrics` facade. Otherwise [`MetricsServer::start`] installs
//! the process-wide recorder (once per process; standalone mode shares it between the
//! gateway and the ingest) and serves the text exposition format on its own small
//! actix server, never on the public port. Gauges that are states rather than events
//! (channels, spool size, queue length) are read at scrape time by [`Collector`]s.
//!
//! `docs/operations.md` ("Metrics") lists every metric with its meaning, and the alerts
//! built on them.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;

use crate::config::ConfigError;

// ---- names ---------------------------------------------------------------------------

/// Counter, ingest. Callbacks by `outcome` ([`CallbackOutcome`]). A callback refused
/// before the store is counted once; one that reached the store is counted with the
/// store's verdict. A spooled callback is counted `spooled` when acknowledged, and again
/// with its verdict when the spool replays it.
pub const INGEST_CALLBACKS: &str = "stk_relay_ingest_callbacks_total";
/// Histogram (seconds), ingest. A live callback's arrival to its final state written
/// and published (outcomes `applied` and `corrected` only; replays are not timed).
pub const INGEST_CALLBACK_PUBLISH: &str = "stk_relay_ingest_callback_publish_seconds";
/// Gauge, ingest. Spooled callbacks acknowledged and not yet applied.
pub const INGEST_SPOOL_RECORDS: &str = "stk_relay_ingest_spool_records";
/// Gauge, ingest. Bytes of the spool's files on disk.
pub const INGEST_SPOOL_BYTES: &str = "stk_relay_ingest_spool_bytes";
/// Gauge, ingest. 1 while a callback did not fit in the spool (answered 503).
pub const INGEST_SPOOL_FULL: &str = "stk_relay_ingest_spool_full";
/// Counter, ingest. Spool records finished by replay, by `result`: `applied` (went
/// through the store), `dropped` (refused by the normal path).
pub const INGEST_SPOOL_REPLAYED: &str = "stk_relay_ingest_spool_replayed_total";

/// Counter, gateway. STK pushes by `outcome` ([`PushOutcome`]) and `daraja_code`
/// (Daraja's documented error codes, `none`, or `other`: [`daraja_code`]).
pub const GATEWAY_PUSHES: &str = "stk_relay_gateway_pushes_total";
/// Histogram (seconds), gateway. A payment state received from the broker to its frame
/// written to the browser, by `transport` ([`Transport`]). For SSE, "written" is the
/// frame handed to the HTTP response stream. Snapshot frames (sent on connect) are not
/// timed: they did not come from the broker.
pub const GATEWAY_DELIVERY: &str = "stk_relay_gateway_delivery_seconds";
/// Gauge, gateway. Open browser connections, by `transport`.
pub const GATEWAY_CONNECTIONS: &str = "stk_relay_gateway_connections";
/// Gauge, gateway. Channels this node is subscribed to upstream (one per payment with
/// at least one browser here).
pub const GATEWAY_CHANNELS: &str = "stk_relay_gateway_channels";
/// Gauge, gateway. Pending writes queued in memory while Redis does not answer.
pub const GATEWAY_PENDING_QUEUED: &str = "stk_relay_gateway_pending_writes_queued";
/// Counter, gateway. Reconciliation decisions, by `outcome` ([`ReconcileOutcome`]).
pub const GATEWAY_RECONCILE: &str = "stk_relay_gateway_reconcile_total";
/// Counter, gateway. Webhook attempts, by `outcome` ([`WebhookOutcome`]).
pub const GATEWAY_WEBHOOKS: &str = "stk_relay_gateway_webhook_attempts_total";

/// Counter, both. Failed Redis commands, by `kind`: `timeout`, `unavailable` (the
/// connection is down), `refused` (Redis answered with an error).
pub const REDIS_ERRORS: &str = "stk_relay_redis_errors_total";
/// Counter, gateway. Pub/sub connection rebuilds, by `reason`: `connection_lost`,
/// `probe_missed`, `stalled` (a SUBSCRIBE or UNSUBSCRIBE got no answer).
pub const BROKER_RECONNECTS: &str = "stk_relay_broker_reconnects_total";
/// Counter, gateway. Failed attempts to (re)connect the pub/sub connection.
pub const BROKER_CONNECT_FAILURES: &str = "stk_relay_broker_connect_failures_total";
/// Histogram (seconds), gateway. Round trip of the periodic pub/sub probe (publish on
/// the command pool, receipt on the subscriber connection).
pub const BROKER_PROBE: &str = "stk_relay_broker_probe_seconds";
/// Gauge, gateway. 1 while the pub/sub connection is up.
pub const BROKER_CONNECTED: &str = "stk_relay_broker_connected";

/// Gauge, both. The last `/readyz` answer: 1 ready, 0 not.
pub const READY: &str = "stk_relay_ready";
/// Counter, both. Changes of the `/readyz` answer (ready ↔ not ready).
pub const READINESS_CHANGES: &str = "stk_relay_readiness_changes_total";

/// Bucket bounds (seconds) of the latency histograms: 1 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

// ---- bounded label values ------------------------------------------------------------

/// Defines a label enum: each variant has a fixed label value, and [`Static`] gives each
/// variant's series a key built at compile time (no allocation when recording), like
/// `metrics::counter!(name, "outcome" => "applied")` written out per variant.
macro_rules! label_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $label:literal {
            $( $(#[$vmeta:meta])* $variant:ident => $value:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
        }

        impl $name {
            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $value, )*
                }
            }
        }

        impl Static for $name {
            fn counter(self, name: &'static str) -> metrics::Counter {
                match self {
                    $( Self::$variant => metrics::counter!(name, $label => $value), )*
                }
            }

            fn gauge(self, name: &'static str) -> metrics::Gauge {
                match self {
                    $( Self::$variant => metrics::gauge!(name, $label => $value), )*
                }
            }

            fn histogram(self, name: &'static str) -> metrics::Histogram {
                match self {
                    $( Self::$variant => metrics::histogram!(name, $label => $value), )*
                }
            }
        }
    };
}

/// The series of one label value, from keys built at compile time.
trait Static: Copy {
    fn counter(self, name: &'static str) -> metrics::Counter;
    fn gauge(self, name: &'static str) -> metrics::Gauge;
    fn histogram(self, name: &'static str) -> metrics::Histogram;
}

label_enum! {
    /// What became of one callback (`outcome` of [`INGEST_CALLBACKS`]).
    pub enum CallbackOutcome: "outcome" {
        /// Final state written and published.
        Applied => "applied",
        /// A genuine callback after an UNCONFIRMED close, recorded as a correction.
        Corrected => "corrected",
        /// Does not match its push; handed to reconciliation.
        Mismatch => "mismatch",
        /// A success kept until STK Push Query confirms it.
        AwaitingConfirmation => "awaiting_confirmation",
        /// The payment was already final: nothing written or published.
        Duplicate => "duplicate",
        /// Arrived before the pending record; kept for it.
        Early => "early",
        /// Before the pending record, and the payment holds the most early records: 403.
        EarlyFull => "early_full",
        /// No record and no way to keep it.
        NotFound => "not_found",
        /// Bad token, or a token of another payment: 403.
        Forbidden => "forbidden",
        /// The body did not parse: 400.
        Malformed => "malformed",
        /// The body was too large: 413.
        TooLarge => "too_large",
        /// The source is outside `callbacks.allowed_sources`: 403.
        SourceRefused => "source_refused",
        /// The source used up its refusals: 429.
        RateLimited => "rate_limited",
        /// Redis did not answer; written to the spool and acknowledged.
        Spooled => "spooled",
        /// Redis did not answer and the spool had no room: 503.
        SpoolFull => "spool_full",
        /// Redis did not answer and there is no spool: 503.
        Unavailable => "unavailable",
        /// Redis answered with an error: 503.
        RedisError => "redis_error",
    }
}

label_enum! {
    /// What became of one push (`outcome` of [`GATEWAY_PUSHES`]).
    pub enum PushOutcome: "outcome" {
        /// Daraja accepted it and the pending record was written.
        Accepted => "accepted",
        /// Daraja accepted it; the pending write went to the background queue.
        Queued => "queued",
        /// Daraja answered with an error (see `daraja_code`).
        DarajaError => "daraja_error",
        /// Daraja did not answer in time, or could not be reached.
        DarajaUnreachable => "daraja_unreachable",
        /// Accepted by Daraja, but Redis refused the pending write.
        NotRecorded => "not_recorded",
        /// Accepted by Daraja with an id (or a reply) that cannot be used.
        BadResponse => "bad_response",
        /// Refused before Daraja was contacted: the pending-write bound was reached.
        RefusedQueueFull => "refused_queue_full",
    }
}

label_enum! {
    /// A browser transport (`transport` of the gateway's metrics).
    pub enum Transport: "transport" {
        WebSocket => "websocket",
        Sse => "sse",
    }
}

label_enum! {
    /// One reconciliation decision (`outcome` of [`GATEWAY_RECONCILE`]).
    pub enum ReconcileOutcome: "outcome" {
        /// STK Push Query gave a final answer, applied.
        QueryFinal => "query_final",
        /// PENDING past `reconcile.max_age_secs`: closed as FAILED/UNCONFIRMED.
        Unconfirmed => "unconfirmed",
        /// Already final when its turn came; no query.
        AlreadyFinal => "already_final",
        /// The record is gone (expired); no query.
        Gone => "gone",
        /// The stored state could not be read; dropped from the due set.
        Unreadable => "unreadable",
        /// Query answered "being processed" (or ResultCode 4999): rescheduled.
        BeingProcessed => "being_processed",
        /// Daraja does not know the id (yet): rescheduled.
        UnknownToDaraja => "unknown_to_daraja",
        /// Daraja rate-limited the query: rescheduled.
        RateLimited => "rate_limited",
        /// Another error answer from Daraja: rescheduled.
        DarajaError => "daraja_error",
        /// Daraja could not be reached in time: rescheduled.
        Unreachable => "unreachable",
        /// The OAuth token request failed: rescheduled.
        OAuthFailed => "oauth_failed",
        /// Redis failed mid-way; due again when the claim expires.
        RedisError => "redis_error",
        /// Handling took longer than its bound; due again when the claim expires.
        TimedOut => "timed_out",
    }
}

/// Daraja's documented error codes (and Apigee's spike-arrest fault), as label values.
const DARAJA_CODES: &[&str] = &[
    "400.002.02",
    "400.008.01",
    "400.008.02",
    "404.001.01",
    "404.001.03",
    "405.001",
    "500.001.1001",
    "500.003.01",
    "500.003.02",
    "500.003.03",
    crate::daraja::error::SPIKE_ARREST_FAULT,
];

/// The `daraja_code` label for a code from Daraja: the code itself when it is one of
/// Daraja's documented codes, `none` when there is none, else `other`. Never the raw
/// string of an unknown code, so the label stays bounded.
pub fn daraja_code(code: Option<&str>) -> &'static str {
    match code {
        None => "none",
        Some(c) => DARAJA_CODES
            .iter()
            .find(|known| **known == c)
            .copied()
            .unwrap_or("other"),
    }
}

// ---- recording -----------------------------------------------------------------------

/// One callback's outcome.
pub fn callback(outcome: CallbackOutcome) {
    outcome.counter(INGEST_CALLBACKS).increment(1);
}

/// A live callback's final state published, `took` after it arrived.
pub fn callback_published(took: Duration) {
    metrics::histogram!(INGEST_CALLBACK_PUBLISH).record(took.as_secs_f64());
}

/// A spool record finished by replay: `applied` true when it went through the store.
pub fn spool_replayed(applied: bool) {
    if applied {
        metrics::counter!(INGEST_SPOOL_REPLAYED, "result" => "applied").increment(1);
    } else {
        metrics::counter!(INGEST_SPOOL_REPLAYED, "result" => "dropped").increment(1);
    }
}

/// One push's outcome, with the Daraja code label from [`daraja_code`]. (Two labels
/// whose pairs are not spelled out: the key is built per push, which costs nothing next
/// to a call to Daraja.)
pub fn push(outcome: PushOutcome, daraja_code: &'static str) {
    metrics::counter!(GATEWAY_PUSHES, "outcome" => outcome.as_str(), "daraja_code" => daraja_code)
        .increment(1);
}

/// A state from the broker written to a browser `took` after it was received.
pub fn delivered(transport: Transport, took: Duration) {
    transport
        .histogram(GATEWAY_DELIVERY)
        .record(took.as_secs_f64());
}

/// A browser connection opened (`+1.0`) or closed (`-1.0`).
pub fn connections(transport: Transport, delta: f64) {
    transport.gauge(GATEWAY_CONNECTIONS).increment(delta);
}

/// One reconciliation decision.
pub fn reconcile(outcome: ReconcileOutcome) {
    outcome.counter(GATEWAY_RECONCILE).increment(1);
}

label_enum! {
    /// What one webhook attempt came to (`outcome` of [`GATEWAY_WEBHOOKS`]).
    pub enum WebhookOutcome: "outcome" {
        /// Answered 2xx: acknowledged.
        Delivered => "delivered",
        /// Another status, a timeout or no connection: retried later.
        Failed => "failed",
        /// Failed past `merchant.webhook_max_age_secs`: dead-lettered.
        DeadLettered => "dead_lettered",
    }
}

/// One webhook attempt's outcome.
pub fn webhook(outcome: WebhookOutcome) {
    outcome.counter(GATEWAY_WEBHOOKS).increment(1);
}

label_enum! {
    /// Why a Redis command failed (`kind` of [`REDIS_ERRORS`]).
    pub enum RedisErrorKind: "kind" {
        /// No answer in time.
        Timeout => "timeout",
        /// The connection is down.
        Unavailable => "unavailable",
        /// Redis answered with an error.
        Refused => "refused",
    }
}

label_enum! {
    /// Why the pub/sub connection is rebuilt (`reason` of [`BROKER_RECONNECTS`]).
    pub enum ReconnectReason: "reason" {
        /// The connection closed.
        ConnectionLost => "connection_lost",
        /// The periodic probe did not come back in time.
        ProbeMissed => "probe_missed",
        /// A SUBSCRIBE or UNSUBSCRIBE got no answer.
        Stalled => "stalled",
    }
}

/// One failed Redis command.
pub fn redis_error(kind: RedisErrorKind) {
    kind.counter(REDIS_ERRORS).increment(1);
}

/// The pub/sub connection is being rebuilt.
pub fn broker_reconnect(reason: ReconnectReason) {
    reason.counter(BROKER_RECONNECTS).increment(1);
}

/// A (re)connect attempt of the pub/sub connection failed.
pub fn broker_connect_failed() {
    metrics::counter!(BROKER_CONNECT_FAILURES).increment(1);
}

/// A probe came back `took` after it was sent.
pub fn broker_probe(took: Duration) {
    metrics::histogram!(BROKER_PROBE).record(took.as_secs_f64());
}

/// The last readiness answer of this process: 0 unknown, 1 ready, 2 not ready.
static LAST_READINESS: AtomicU8 = AtomicU8::new(0);

/// Records a `/readyz` answer, and a change when it differs from the previous one.
pub fn readiness(ready: bool) {
    let now = if ready { 1 } else { 2 };
    let before = LAST_READINESS.swap(now, Ordering::Relaxed);
    metrics::gauge!(READY).set(if ready { 1.0 } else { 0.0 });
    if before != 0 && before != now {
        metrics::counter!(READINESS_CHANGES).increment(1);
    }
}

/// Sets a gauge without labels (for [`Collector`]s).
pub fn set_gauge(name: &'static str, value: f64) {
    metrics::gauge!(name).set(value);
}

// ---- configuration -------------------------------------------------------------------

/// `[metrics]`: the Prometheus listener.
#[derive(Debug, Clone, Deserialize)]
pub struct MetricsSettings {
    /// `host:port` of the metrics listener (`GET /metrics`), separate from the public
    /// port. Empty: no listener and no recording.
    pub bind: String,
}

impl MetricsSettings {
    /// The address to listen on, `None` when metrics are off.
    pub fn addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let bind = self.bind.trim();
        if bind.is_empty() {
            return Ok(None);
        }
        bind.parse().map(Some).map_err(|_| {
            ConfigError::Invalid(format!(
                "metrics.bind must be empty (off) or an address with a port, like 127.0.0.1:9100 (got {bind:?})"
            ))
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.addr().map(|_| ())
    }
}

// ---- the recorder and the listener ---------------------------------------------------

/// Reads a state into gauges just before each scrape.
pub type Collector = Arc<dyn Fn() + Send + Sync>;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (first call only) and returns its handle.
fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            // Buckets make the latency metrics Prometheus histograms (not summaries), so
            // quantiles can be aggregated across nodes.
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "latency buckets refused; rendering summaries");
                    PrometheusBuilder::new()
                });
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed; /metrics stays empty");
            }
            describe();
            handle
        })
        .clone()
}

/// `# HELP` lines for every metric.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(INGEST_CALLBACKS, "Callbacks received, by outcome");
    describe_counter!(GATEWAY_WEBHOOKS, "Webhook attempts, by outcome");
    describe_histogram!(
        INGEST_CALLBACK_PUBLISH,
        Unit::Seconds,
        "Callback arrival to final state published (live callbacks)"
    );
    describe_gauge!(INGEST_SPOOL_RECORDS, "Spooled callbacks not yet applied");
    describe_gauge!(INGEST_SPOOL_BYTES, Unit::Bytes, "Size of the spool on disk");
    describe_gauge!(INGEST_SPOOL_FULL, "1 while the spool is full");
    describe_counter!(INGEST_SPOOL_REPLAYED, "Spool records finished by replay");
    describe_counter!(GATEWAY_PUSHES, "STK pushes, by outcome and Daraja code");
    describe_histogram!(
        GATEWAY_DELIVERY,
        Unit::Seconds,
        "Broker message received to frame written, by transport"
    );
    describe_gauge!(
        GATEWAY_CONNECTIONS,
        "Open browser connections, by transport"
    );
    describe_gauge!(GATEWAY_CHANNELS, "Upstream pub/sub channel subscriptions");
    describe_gauge!(GATEWAY_PENDING_QUEUED, "Pending writes queued in memory");
    describe_counter!(GATEWAY_RECONCILE, "Reconciliation decisions, by outcome");
    describe_counter!(REDIS_ERRORS, "Failed Redis commands, by kind");
    describe_counter!(BROKER_RECONNECTS, "Pub/sub connection rebuilds, by reason");
    describe_counter!(BROKER_CONNECT_FAILURES, "Failed pub/sub connect attempts");
    describe_histogram!(BROKER_PROBE, Unit::Seconds, "Pub/sub probe round trip");
    describe_gauge!(BROKER_CONNECTED, "1 while the pub/sub connection is up");
    describe_gauge!(READY, "Last readiness answer (1 ready)");
    describe_counter!(READINESS_CHANGES, "Readiness changes");
}

/// How often histogram samples are folded into their buckets between scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The metrics listener: `GET /metrics` on `metrics.bind`, anything else 404.
pub struct MetricsServer {
    addr: SocketAddr,
    server: actix_web::dev::ServerHandle,
    upkeep: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// Installs the recorder and binds `metrics.bind`; `None` when metrics are off.
    /// Each `collectors` entry runs before every scrape. Bind errors are returned, so a
    /// port in use stops the process at start.
    pub fn start(
        settings: &MetricsSettings,
        collectors: Vec<Collector>,
    ) -> std::io::Result<Option<Self>> {
        let Some(addr) = settings
            .addr()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?
        else {
            return Ok(None);
        };
        let handle = install();
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let collectors: Arc<[Collector]> = collectors.into();
        let scrape_handle = handle.clone();
        let server = HttpServer::new(move || {
            let handle = scrape_handle.clone();
            let collectors = collectors.clone();
            App::new().route(
                "/metrics",
                web::get().to(move || {
                    let handle = handle.clone();
                    let collectors = collectors.clone();
                    async move {
                        for c in collectors.iter() {
                            c();
                        }
                        HttpResponse::Ok()
                            .content_type("text/plain; version=0.0.4")
                            .body(handle.render())
                    }
                }),
            )
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)?
        .run();
        let server_handle = server.handle();
        tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::warn!(error = %e, "metrics listener stopped");
            }
        });
        let upkeep = tokio::spawn(async move {
            let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        });
        tracing::info!(address = %addr, "metrics listening");
        Ok(Some(Self {
            addr,
            server: server_handle,
            upkeep,
        }))
    }

    /// The bound address (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the listener (after the service has drained, so a scrape during the drain
    /// still answers).
    pub async fn stop(self) {
        self.upkeep.abort();
        self.server.stop(false).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn daraja_codes_are_bounded() {
        assert_eq!(daraja_code(Some("500.001.1001")), "500.001.1001");
        assert_eq!(
            daraja_code(Some("policies.ratelimit.SpikeArrestViolation")),
            "policies.ratelimit.SpikeArrestViolation"
        );
        assert_eq!(daraja_code(Some("0712345678")), "other");
        assert_eq!(daraja_code(Some("")), "other");
        assert_eq!(daraja_code(None), "none");
    }

    #[test]
    fn bind_is_empty_or_an_address() {
        let s = |b: &str| MetricsSettings { bind: b.into() };
        assert_eq!(s("").addr().unwrap(), None);
        assert_eq!(
            s("127.0.0.1:9100").addr().unwrap(),
            Some("127.0.0.1:9100".parse().unwrap())
        );
        assert!(s("localhost").validate().is_err());
        assert!(s("9100").validate().is_err());
    }

    #[tokio::test]
    async fn the_listener_serves_metrics_and_nothing_else() {
        let collected = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = collected.clone();
        let server = MetricsServer::start(
            &MetricsSettings {
                bind: "127.0.0.1:0".into(),
            },
            vec![Arc::new(move || {
                seen.fetch_add(1, Ordering::Relaxed);
                set_gauge(GATEWAY_CHANNELS, 3.0);
            })],
        )
        .unwrap()
        .unwrap();
        callback(CallbackOutcome::Duplicate);
        delivered(Transport::Sse, Duration::from_millis(3));
        let base = format!("http://{}", server.local_addr());
        let http = reqwest::Client::new();
        let body = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            body.contains("stk_relay_ingest_callbacks_total{outcome=\"duplicate\"} 1"),
            "{body}"
        );
        assert!(body.contains("stk_relay_gateway_channels 3"), "{body}");
        assert!(
            body.contains(
                "stk_relay_gateway_delivery_seconds_bucket{transport=\"sse\",le=\"0.005\"} 1"
            ),
            "{body}"
        );
        assert_eq!(collected.load(Ordering::Relaxed), 1);
        let other = http.get(format!("{base}/")).send().await.unwrap();
        assert_eq!(other.status(), 404);
        server.stop().await;
    }
}
