//! Building and running the gateway.
//!
//! [`Gateway::build`] wires the backends ([`Backends`]: Redis, a command pool and one
//! subscriber connection, for a cluster node; memory in standalone mode), the Daraja
//! client, the reconciliation task ([`crate::reconcile`]) and the pending writer.
//! [`Application`] adds the HTTP server and binds, so `port = 0` works. The node starts while Redis is down and reports
//! not-ready until it is back. The reconciliation task stops with the shutdown handle.
//!
//! Shutdown (actix's own graceful stop does not cover upgraded sockets, so the gateway
//! owns it): the handle fires → `/readyz` answers 503 and new sockets are refused →
//! every WebSocket closes with 1001 and every SSE stream ends → the server stops
//! accepting and drains in-flight requests, bounded by `server.shutdown_timeout_ms` →
//! queued pending writes are flushed within what is left of that bound, and each one
//! that could not be written is logged at error with its CheckoutRequestID → the
//! broker is dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_cors::Cors;
use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use stk_relay_shared::backends::Backends;
use stk_relay_shared::broker::Broker;
use stk_relay_shared::config::ServerSettings;
use stk_relay_shared::daraja::DarajaClient;
use stk_relay_shared::http::RedactedRootSpan;
use stk_relay_shared::ids::CheckoutRequestId;
use stk_relay_shared::keyspace::Keyspace;
use stk_relay_shared::metrics::{self, Collector, MetricsServer, Transport};
use stk_relay_shared::shutdown::Shutdown;
use stk_relay_shared::store::{webhooks_supported, PaymentStore, Schedule, Storage};
use stk_relay_shared::token::{CallbackTokens, SubscribeTokens};
use tokio::sync::Notify;
use tracing_actix_web::TracingLogger;

use crate::auth::ApiKeys;
use crate::config::{GatewaySettings, WsSettings};
use crate::error::ApiError;
use crate::idempotency::Idempotency;
use crate::reconcile::Reconciler;
use crate::webhooks::Deliverer;

use crate::pending::{self, PendingWrites};
use crate::routes;

/// Counts open WebSocket and SSE connections and caps them: per node
/// (`ws.max_connections`), per payment (`ws.max_connections_per_payment`) and per
/// client address (`ws.max_connections_per_ip`, 0 = off).
///
/// The per-payment and per-address maps hold an entry only while a connection admitted
/// under the node cap holds it, so neither grows beyond `ws.max_connections` entries.
pub struct Connections {
    open: AtomicUsize,
    max: usize,
    idle: Notify,
    max_per_payment: usize,
    max_per_ip: usize,
    by_payment: Mutex<HashMap<CheckoutRequestId, usize>>,
    by_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl Connections {
    pub fn new(ws: &WsSettings) -> Self {
        Self {
            open: AtomicUsize::new(0),
            max: ws.max_connections,
            idle: Notify::new(),
            max_per_payment: ws.max_connections_per_payment,
            max_per_ip: ws.max_connections_per_ip,
            by_payment: Mutex::new(HashMap::new()),
            by_ip: Mutex::new(HashMap::new()),
        }
    }

    pub fn current(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Takes one slot of `key` unless it already holds `max`.
    fn take<K: std::hash::Hash + Eq>(map: &Mutex<HashMap<K, usize>>, key: K, max: usize) -> bool {
        let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    fn give_back<K: std::hash::Hash + Eq>(map: &Mutex<HashMap<K, usize>>, key: &K) {
        let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(key);
            }
        }
    }
}

/// Held by one open connection; releases its slots when dropped.
pub struct ConnectionGuard {
    conns: Arc<Connections>,
    payment: Option<CheckoutRequestId>,
    ip: Option<IpAddr>,
    /// Counted in `stk_relay_gateway_connections` under this transport.
    transport: Option<Transport>,
}

impl ConnectionGuard {
    /// Counts this connection in the open-connections gauge of `transport` until it is
    /// dropped.
    pub fn count_as(&mut self, transport: Transport) {
        if self.transport.is_none() {
            metrics::connections(transport, 1.0);
            self.transport = Some(transport);
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Some(t) = self.transport.take() {
            metrics::connections(t, -1.0);
        }
        if let Some(id) = self.payment.take() {
            Connections::give_back(&self.conns.by_payment, &id);
        }
        if let Some(ip) = self.ip.take() {
            Connections::give_back(&self.conns.by_ip, &ip);
        }
        if self.conns.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.conns.idle.notify_waiters();
        }
    }
}

/// What every handler shares.
pub struct AppState {
    pub settings: GatewaySettings,
    pub store: PaymentStore,
    /// Payments due for STK Push Query (reconciliation).
    pub schedule: Schedule,
    pub broker: Arc<dyn Broker>,
    pub idempotency: Idempotency,
    pub daraja: DarajaClient,
    pub api_keys: ApiKeys,
    pub subscribe_tokens: SubscribeTokens,
    pub callback_tokens: CallbackTokens,
    pub shutdown: Shutdown,
    pub connections: Arc<Connections>,
    /// Pending records (and idempotency outcomes) not yet written to Redis.
    pub pending: PendingWrites,
}

impl AppState {
    /// Admits one more long-lived connection for `payment` from the client at `ip`, or
    /// refuses: 503 while draining or at the node's cap, 429 at the payment's or the
    /// address's cap.
    pub fn admit(
        &self,
        payment: &CheckoutRequestId,
        ip: Option<IpAddr>,
    ) -> Result<ConnectionGuard, ApiError> {
        if self.shutdown.is_draining() {
            return Err(ApiError::Unavailable("node is draining".into()));
        }
        let conns = &self.connections;
        let prev = conns.open.fetch_add(1, Ordering::SeqCst);
        let mut guard = ConnectionGuard {
            conns: conns.clone(),
            payment: None,
            ip: None,
            transport: None,
        };
        if prev >= conns.max {
            return Err(ApiError::Unavailable("connection limit reached".into()));
        }
        if !Connections::take(&conns.by_payment, payment.clone(), conns.max_per_payment) {
            tracing::warn!(
                checkout_request_id = %payment,
                max = conns.max_per_payment,
                "connection refused: per-payment limit"
            );
            return Err(ApiError::TooManyConnections(
                "too many open connections for this payment".into(),
            ));
        }
        guard.payment = Some(payment.clone());
        if let (Some(ip), true) = (ip, conns.max_per_ip > 0) {
            if !Connections::take(&conns.by_ip, ip, conns.max_per_ip) {
                tracing::warn!(
                    checkout_request_id = %payment,
                    max = conns.max_per_ip,
                    "connection refused: per-address limit"
                );
                return Err(ApiError::TooManyConnections(
                    "too many open connections from this address".into(),
                ));
            }
            guard.ip = Some(ip);
        }
        Ok(guard)
    }
}

/// The gateway's state and background tasks, without a server of its own:
/// [`Application`] serves it alone, and standalone mode serves it beside the ingest on
/// one port. Both use [`Gateway::configure`] for the routes and the same shutdown steps.
pub struct Gateway {
    state: web::Data<AppState>,
    writer: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// Wires the store, the broker, the Daraja client, the reconciliation task and the
    /// pending writer on `backends`.
    pub async fn build(
        settings: GatewaySettings,
        shutdown: Shutdown,
        backends: Backends,
    ) -> std::io::Result<Self> {
        if settings.dev.allow_insecure {
            tracing::warn!("dev.allow_insecure is on: example secrets and plain-http URLs are accepted; never use this in production");
        }
        let Backends { storage, broker } = backends;
        let keys = Keyspace::new(settings.redis.key_prefix.clone());
        let store = PaymentStore::new(
            storage.clone(),
            keys.clone(),
            Duration::from_secs(settings.payments.ttl_secs),
        );
        let schedule = Schedule::new(storage.clone(), keys.clone());

        // A claimed key must outlive its push: the payment's TTL plus Daraja's timeout.
        let push_lifetime = Duration::from_secs(settings.payments.ttl_secs)
            + Duration::from_millis(settings.daraja.request_timeout_ms)
            + Duration::from_secs(1);
        let idempotency = Idempotency::new(
            storage.clone(),
            keys.clone(),
            Duration::from_secs(settings.payments.idempotency_ttl_secs),
            push_lifetime,
        );
        let daraja = DarajaClient::new(settings.daraja.clone()).map_err(invalid)?;
        if settings.merchant.webhooks_enabled() {
            let pool = match &storage {
                Storage::Redis(pool) if webhooks_supported(&storage) => pool.clone(),
                _ => {
                    return Err(invalid(
                        "merchant webhooks need Redis in mode \"standalone\" or \"sentinel\" (not the memory store, not yet Redis Cluster)",
                    ))
                }
            };
            Deliverer::new(settings.merchant.clone(), pool, keys.clone(), store.clone())
                .map_err(invalid)?
                .spawn(shutdown.clone());
        }
        Reconciler {
            store: store.clone(),
            schedule: schedule.clone(),
            daraja: daraja.clone(),
            settings: settings.reconcile.clone(),
        }
        .spawn(shutdown.clone());
        let state = web::Data::new(AppState {
            store,
            schedule,
            broker,
            idempotency,
            daraja,
            api_keys: ApiKeys::new(settings.api.keys.clone()),
            subscribe_tokens: SubscribeTokens::new(settings.tokens.subscribe_keys()),
            callback_tokens: CallbackTokens::new(settings.tokens.callback_keys()),
            shutdown: shutdown.clone(),
            connections: Arc::new(Connections::new(&settings.ws)),
            pending: PendingWrites::new(
                settings.payments.pending_queue_max,
                Duration::from_secs(settings.payments.ttl_secs),
            ),
            settings: settings.clone(),
        });
        // The background writer has a connection of its own (see `pending::WriterStores`).
        let writer_storage = storage.for_writer(&settings.redis).map_err(invalid)?;
        let writer_stores = pending::WriterStores {
            store: PaymentStore::new(
                writer_storage.clone(),
                keys.clone(),
                Duration::from_secs(settings.payments.ttl_secs),
            ),
            idempotency: Idempotency::new(
                writer_storage,
                keys.clone(),
                Duration::from_secs(settings.payments.idempotency_ttl_secs),
                push_lifetime,
            ),
        };
        let writer = tokio::spawn(pending::run_writer(state.clone(), writer_stores));
        Ok(Self { state, writer })
    }

    /// Reads the node's states into their gauges before each scrape: upstream channels,
    /// the pub/sub connection, queued pending writes.
    pub fn metrics_collector(&self) -> Collector {
        let state = self.state.clone();
        Arc::new(move || {
            metrics::set_gauge(
                metrics::GATEWAY_CHANNELS,
                state.broker.channel_count() as f64,
            );
            metrics::set_gauge(
                metrics::BROKER_CONNECTED,
                if state.broker.is_connected() {
                    1.0
                } else {
                    0.0
                },
            );
            metrics::set_gauge(metrics::GATEWAY_PENDING_QUEUED, state.pending.len() as f64);
        })
    }

    /// The shared state (for routes composed beside the gateway's, such as the demo's).
    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// Registers the gateway's routes and state on an `App`: health, push, payment
    /// reads, WebSocket and SSE. Not the fallback: the server adds its own.
    pub fn configure(&self) -> impl Fn(&mut web::ServiceConfig) + Clone + Send + 'static {
        let data = self.state.clone();
        move |cfg: &mut web::ServiceConfig| {
            let mut cors = Cors::default()
                .allowed_methods(["GET"])
                .allowed_headers([actix_web::http::header::AUTHORIZATION])
                .max_age(600);
            for o in &data.settings.api.allowed_origins {
                cors = cors.allowed_origin(o);
            }
            cfg.app_data(data.clone())
                .route("/healthz", web::get().to(routes::health::healthz))
                .route("/readyz", web::get().to(routes::health::readyz))
                .route("/v1/stk/push", web::post().to(routes::push::push))
                .route("/v1/client.js", web::get().to(routes::demo::client_js))
                .route(
                    "/v1/payments/{checkout_request_id}/ws",
                    web::get().to(routes::payments::ws),
                )
                .service(
                    web::scope("/v1/payments/{checkout_request_id}")
                        .wrap(cors)
                        .route("", web::get().to(routes::payments::get_payment))
                        .route("/events", web::get().to(routes::payments::events))
                        .route("/history", web::get().to(routes::payments::history)),
                );
            if data.settings.compat.enabled {
                routes::compat::register(cfg, &data);
            }
        }
    }

    /// The first shutdown steps, run when the handle fires: readiness is already 503 and
    /// sessions close by themselves; this waits (bounded) for them, then stops `server`.
    /// The receiver gets the deadline for [`Gateway::finish`].
    pub fn spawn_drain(
        &self,
        server: actix_web::dev::ServerHandle,
    ) -> tokio::sync::oneshot::Receiver<tokio::time::Instant> {
        let shutdown = self.state.shutdown.clone();
        let state = self.state.clone();
        let bound = self.state.settings.server.shutdown_timeout();
        let (deadline_tx, deadline_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            shutdown.wait().await;
            let _ = deadline_tx.send(tokio::time::Instant::now() + bound);
            tracing::info!(
                open = state.connections.current(),
                "draining: closing sockets"
            );
            // Sessions watch the same handle and close with 1001 by themselves.
            let drained = async {
                loop {
                    let idle = state.connections.idle.notified();
                    if state.connections.current() == 0 {
                        break;
                    }
                    idle.await;
                }
            };
            if tokio::time::timeout(bound, drained).await.is_err() {
                tracing::warn!(open = state.connections.current(), "drain bound reached");
            }
            server.stop(true).await;
        });
        deadline_rx
    }

    /// The last shutdown step, after the server has stopped: flushes queued pending
    /// writes until `deadline` and logs each one that could not be written.
    pub async fn finish(self, mut deadline: tokio::sync::oneshot::Receiver<tokio::time::Instant>) {
        let bound = self.state.settings.server.shutdown_timeout();
        let deadline = deadline
            .try_recv()
            .unwrap_or_else(|_| tokio::time::Instant::now() + bound);
        let queued = self.state.pending.len();
        if queued > 0 {
            tracing::info!(queued, "flushing queued pending writes");
        }
        let flushed = self.state.pending.flush(deadline).await;
        self.writer.abort();
        if !flushed {
            let lost = self.state.pending.abandon_all();
            tracing::error!(lost, "shutdown: queued pending writes could not be written");
        }
    }
}

pub struct Application {
    port: u16,
    server_settings: ServerSettings,
    server: Server,
    gateway: Gateway,
    metrics: Option<MetricsServer>,
}

fn invalid(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
}

impl Application {
    /// A cluster gateway: Redis for storage and broker.
    pub async fn build(settings: GatewaySettings, shutdown: Shutdown) -> std::io::Result<Self> {
        let backends = Backends::redis(&settings.redis).await.map_err(invalid)?;
        Self::build_with(settings, shutdown, backends).await
    }

    /// A gateway on the given backends, serving alone on `server.host:server.port`.
    pub async fn build_with(
        settings: GatewaySettings,
        shutdown: Shutdown,
        backends: Backends,
    ) -> std::io::Result<Self> {
        let gateway = Gateway::build(settings.clone(), shutdown, backends).await?;
        let listener = stk_relay_shared::http::bind(&settings.server)?;
        let port = listener.local_addr()?.port();
        let metrics = MetricsServer::start(&settings.metrics, vec![gateway.metrics_collector()])?;
        let configure = gateway.configure();
        let server = HttpServer::new(move || {
            App::new()
                .wrap(TracingLogger::<RedactedRootSpan>::new())
                .configure(configure.clone())
                .default_service(web::to(routes::fallback))
        })
        .on_connect(crate::ws::session::ClientSocket::remember);
        let server = stk_relay_shared::http::configure(server, listener, &settings.server)?;
        Ok(Self {
            port,
            server_settings: settings.server.clone(),
            server: server.run(),
            gateway,
            metrics,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://<host>:<port>`, with `0.0.0.0` shown as `127.0.0.1`.
    pub fn base_url(&self) -> String {
        self.server_settings.local_url(self.port)
    }

    /// The metrics listener's address, when `metrics.bind` is set.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().map(MetricsServer::local_addr)
    }

    /// Serves until the shutdown handle fires, then runs the shutdown sequence.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let deadline = self.gateway.spawn_drain(self.server.handle());
        let r = self.server.await;
        self.gateway.finish(deadline).await;
        if let Some(m) = self.metrics {
            m.stop().await;
        }
        tracing::info!("stopped");
        r
    }
}
