//! A Daraja (M-Pesa Express / STK Push) simulator for tests and demos.
//!
//! It validates requests as Daraja does and answers with Daraja's real formats and error
//! bodies (`shared/daraja.md`), using the wire types of `stk_relay_shared::daraja::types`.
//! Start it in-process with [`Simulator::start`] (port 0 works), or run the `daraja-sim`
//! binary; see `daraja-sim/README.md`.
//!
//! - [`outcome`]: how a push ends, chosen by the last three digits of `PhoneNumber`.
//! - [`validate`]: request validation and Daraja's error bodies.
//! - `state`: tokens, pushes, the request log and sent callbacks, in one place.
//! - `routes`: the HTTP handlers (Daraja's endpoints and `/sim/*` control endpoints).
//!
//! # Endpoints
//!
//! Daraja's: `GET /oauth/v1/generate?grant_type=client_credentials` (Basic auth),
//! `POST /mpesa/stkpush/v1/processrequest`, `POST /mpesa/stkpushquery/v1/query`.
//!
//! Control (never expose them publicly):
//!
//! | endpoint | does |
//! |---|---|
//! | `GET /healthz` | `{"status":"ok"}` |
//! | `GET /sim/records` | every Daraja request received, in order ([`RecordedRequest`]) |
//! | `GET /sim/callbacks` | every callback sent, with the receiver's answer ([`SentCallback`]) |
//! | `POST /sim/expire-tokens` | invalidates all issued tokens: `{"expired": n}` |
//! | `POST /sim/callbacks/resend` `{"checkout_request_id"}` | sends the callback of a final push again; answers the [`SentCallback`] |
//! | `POST /sim/complete` `{"checkout_request_id","result_code"}` | decides a pending push now (e.g. a "manual" one) and sends its callback |
//! | `POST /sim/hold-pushes` `{"max_ms"?}` | from now on, accepted pushes are answered only on release (at most 30 s later) |
//! | `POST /sim/release-pushes` | answers every held push now and stops holding: `{"released": n}` |
//! | `GET /sim/held-pushes` | `{"held": n}`: push answers being held right now |
//!
//! # Outcomes
//!
//! See [`outcome`]: e.g. a phone ending `132` is cancelled (1032), `999` never gets its
//! callback, `222` gets it twice, `333` waits for `POST /sim/complete`, `444` is "being processed"
//! forever; any other succeeds.

pub mod outcome;
mod routes;
mod state;
pub mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpServer};
use serde::{Deserialize, Serialize};

use crate::state::Sim;

/// Largest request body the simulator reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The public sandbox passkey (`shared/daraja.md`, test vector).
pub const SANDBOX_PASSKEY: &str =
    "bfb279f9aa9bdbcf158e97dd71a467cd2e0c893059b10f78e6b72ada1ed2c919";
/// The sandbox paybill shortcode.
pub const SANDBOX_SHORTCODE: &str = "174379";

/// How the simulator behaves. `Default` gives sandbox-like values.
#[derive(Clone)]
pub struct SimConfig {
    pub consumer_key: String,
    pub consumer_secret: String,
    pub passkey: String,
    /// The `BusinessShortCode` it accepts.
    pub shortcode: String,
    /// For `CustomerBuyGoodsOnline`: the till `PartyB` must name. `None` accepts any.
    pub till_number: Option<String>,
    /// Time from an accepted push to its callback.
    pub callback_delay_ms: u64,
    /// Lifetime of issued tokens (`expires_in`).
    pub token_ttl_secs: u64,
    /// Artificial delay before answering STK Push and Query (not OAuth), to test
    /// client timeouts. The push is accepted (and its callback scheduled) first.
    pub response_delay_ms: u64,
    /// How far a `Timestamp` may be from the current EAT time.
    pub timestamp_tolerance_secs: u64,
    /// Timeout of a callback POST to the receiver.
    pub callback_timeout_ms: u64,
    /// How many requests, callbacks and pushes are kept (oldest forgotten first; a
    /// forgotten push is an unknown CheckoutRequestID to STK Query).
    pub max_records: usize,
    /// HTTP worker threads.
    pub workers: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            consumer_key: "sim-consumer-key".into(),
            consumer_secret: "sim-consumer-secret".into(),
            passkey: SANDBOX_PASSKEY.into(),
            shortcode: SANDBOX_SHORTCODE.into(),
            till_number: None,
            callback_delay_ms: 200,
            token_ttl_secs: 3599,
            response_delay_ms: 0,
            timestamp_tolerance_secs: 300,
            callback_timeout_ms: 5_000,
            max_records: 10_000,
            workers: 2,
        }
    }
}

impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("consumer_key", &self.consumer_key)
            .field("consumer_secret", &"[REDACTED]")
            .field("passkey", &"[REDACTED]")
            .field("shortcode", &self.shortcode)
            .field("till_number", &self.till_number)
            .field("callback_delay_ms", &self.callback_delay_ms)
            .field("token_ttl_secs", &self.token_ttl_secs)
            .field("response_delay_ms", &self.response_delay_ms)
            .field("timestamp_tolerance_secs", &self.timestamp_tolerance_secs)
            .field("callback_timeout_ms", &self.callback_timeout_ms)
            .field("max_records", &self.max_records)
            .field("workers", &self.workers)
            .finish()
    }
}

/// Which Daraja endpoint a request was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    Oauth,
    StkPush,
    StkQuery,
    /// Any other path (answered `404.001.01`).
    Other,
}

/// One request the simulator received, as `GET /sim/records` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// Increases across records and callbacks.
    pub seq: u64,
    pub received_at: String,
    pub kind: RequestKind,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Lower-case names; `authorization` keeps only its scheme (`Bearer [REDACTED]`).
    pub headers: BTreeMap<String, String>,
    /// The parsed JSON body (a string when it was not JSON).
    pub body: Option<serde_json::Value>,
    /// The HTTP status the simulator answered.
    pub status: u16,
    /// Daraja's `errorCode` when it answered an error.
    pub error_code: Option<String>,
}

/// One callback the simulator POSTed, as `GET /sim/callbacks` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentCallback {
    pub seq: u64,
    pub checkout_request_id: String,
    pub url: String,
    /// The callback JSON exactly as sent.
    pub body: serde_json::Value,
    /// The receiver's HTTP status; `None` when it could not be reached.
    pub status: Option<u16>,
    /// Why delivery failed, when it did.
    pub error: Option<String>,
    pub sent_at: String,
}

/// A running simulator.
pub struct Simulator {
    sim: Arc<Sim>,
    addr: std::net::SocketAddr,
    handle: actix_web::dev::ServerHandle,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Simulator {
    /// Binds `bind` (e.g. `127.0.0.1:0`) and serves on the current tokio runtime.
    pub async fn start(config: SimConfig, bind: &str) -> std::io::Result<Simulator> {
        let listener = TcpListener::bind(bind)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let workers = config.workers.max(1);
        let sim = Arc::new(Sim::new(config)?);
        let data = web::Data::new(Arc::clone(&sim));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
                .route("/healthz", web::get().to(routes::healthz))
                .route("/sim/records", web::get().to(routes::records))
                .route("/sim/callbacks", web::get().to(routes::callbacks))
                .route("/sim/expire-tokens", web::post().to(routes::expire_tokens))
                .route("/sim/callbacks/resend", web::post().to(routes::resend))
                .route("/sim/complete", web::post().to(routes::complete))
                .route("/sim/hold-pushes", web::post().to(routes::hold_pushes))
                .route(
                    "/sim/release-pushes",
                    web::post().to(routes::release_pushes),
                )
                .route("/sim/held-pushes", web::get().to(routes::held_pushes))
                .default_service(web::to(routes::daraja))
        })
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)?
        .run();
        let handle = server.handle();
        let server = tokio::spawn(server);
        tracing::info!(%addr, "daraja-sim listening");
        Ok(Simulator {
            sim,
            addr,
            handle,
            server,
        })
    }

    /// `http://127.0.0.1:PORT`: use it as the client's `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    pub fn config(&self) -> &SimConfig {
        &self.sim.config
    }

    /// Every Daraja request received (OAuth, push, query, others), in order.
    pub fn records(&self) -> Vec<RecordedRequest> {
        self.sim.records()
    }

    /// STK Push requests received, accepted or not.
    pub fn push_count(&self) -> usize {
        self.sim.push_count()
    }

    /// OAuth token requests received, successful or not.
    pub fn token_requests(&self) -> usize {
        self.sim.token_requests()
    }

    /// Callbacks sent so far, with the receiver's answers.
    pub fn callbacks_sent(&self) -> Vec<SentCallback> {
        self.sim.callbacks_sent()
    }

    /// Resolves `true` once at least `n` callbacks have been sent (delivered or not),
    /// `false` if `timeout` passes first. Awaits a notification; it does not poll.
    pub async fn wait_for_callbacks(&self, n: usize, timeout: Duration) -> bool {
        self.sim.wait_for_callbacks(n, timeout).await
    }

    /// Invalidates every issued token: the next push or query gets `404.001.03`.
    pub fn expire_tokens(&self) {
        self.sim.expire_tokens();
    }

    /// Decides a pending push now and sends its callback, like `POST /sim/complete`.
    pub async fn complete(
        &self,
        checkout_request_id: &str,
        result_code: stk_relay_shared::payment::ResultCode,
    ) -> Option<SentCallback> {
        self.sim.finalize(checkout_request_id, result_code).ok()?;
        self.sim.deliver(checkout_request_id).await.ok()
    }

    /// Sends the callback of a final push again, like `POST /sim/callbacks/resend`.
    pub async fn resend_callback(&self, checkout_request_id: &str) -> Option<SentCallback> {
        self.sim.deliver(checkout_request_id).await.ok()
    }

    /// Holds accepted pushes' answers (at most `max`, and at most 30 s), like
    /// `POST /sim/hold-pushes`.
    pub fn hold_pushes(&self, max: Duration) {
        self.sim.hold_pushes(max);
    }

    /// Answers every held push now, like `POST /sim/release-pushes`.
    pub fn release_pushes(&self) -> usize {
        self.sim.release_pushes()
    }

    /// Push answers held right now.
    pub fn held_pushes(&self) -> usize {
        self.sim.held_pushes()
    }

    /// Stops serving and cancels callbacks not yet due.
    pub async fn stop(self) {
        self.sim.shutdown.send_replace(true);
        self.handle.stop(true).await;
        let _ = self.server.await;
    }
}
