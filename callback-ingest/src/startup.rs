//! Building and running the callback-ingest application.
//!
//! `Application::build` connects lazily to Redis (the node starts, and reports not
//! ready, while Redis is down) and binds, so `port = 0` works. `run_until_stopped`
//! serves until the shutdown handle fires, then drains in-flight requests with a bound.

use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use stk_relay_shared::config::ServerSettings;
use stk_relay_shared::http::RedactedRootSpan;
use stk_relay_shared::keyspace::Keyspace;
use stk_relay_shared::metrics::{self, Collector, MetricsServer};
use stk_relay_shared::net::Cidr;
use stk_relay_shared::shutdown::Shutdown;
use stk_relay_shared::store::{PaymentStore, RedisPool, Schedule, Storage};
use stk_relay_shared::token::CallbackTokens;
use tracing_actix_web::TracingLogger;

use crate::config::IngestSettings;
use crate::journal::{self, Journal};
use crate::limits::RefusalLimiter;
use crate::routes;
use crate::spool::{self, Spool};

/// What every handler shares.
pub struct AppState {
    pub settings: IngestSettings,
    pub store: PaymentStore,
    pub callback_tokens: CallbackTokens,
    pub shutdown: Shutdown,
    /// The local spool, when `callbacks.spool_dir` is set.
    pub spool: Option<Arc<Spool>>,
    /// Per-source budgets of refused requests.
    pub limiter: RefusalLimiter,
    /// `callbacks.allowed_sources`, parsed; empty = any source.
    pub allowed_sources: Vec<Cidr>,
    /// `server.trusted_proxies`, parsed.
    pub trusted_proxies: Vec<Cidr>,
    /// The reconciliation due set: a callback that does not match its push, or awaits
    /// confirmation, makes its payment due for an STK Push Query at once.
    pub schedule: Schedule,
    /// Recently applied callbacks, where the Redis primary can move (Sentinel).
    pub journal: Option<Arc<Journal>>,
}

/// The ingest's state and background tasks, without a server of its own:
/// [`Application`] serves it alone, and standalone mode serves it beside the gateway.
pub struct Ingest {
    state: web::Data<AppState>,
}

impl Ingest {
    /// Wires the store on `storage`, the spool (when configured) and its replay task.
    pub async fn build(
        settings: IngestSettings,
        shutdown: Shutdown,
        storage: Storage,
    ) -> std::io::Result<Self> {
        if settings.dev.allow_insecure {
            tracing::warn!("dev.allow_insecure is on: example secrets and plain-http URLs are accepted; never use this in production");
        }
        let store = PaymentStore::new(
            storage,
            Keyspace::new(settings.redis.key_prefix.clone()),
            // Only the gateway's pending write sets a payment's lifetime; the ingest
            // writes final states into records that already have one.
            Duration::from_secs(86_400),
        )
        .with_early_ttl(Duration::from_secs(settings.callbacks.early_ttl_secs));
        let spool = match settings.spool_dir() {
            Some(dir) => {
                let max = settings.callbacks.spool_max_bytes;
                let spool = tokio::task::spawn_blocking(move || Spool::open(&dir, max))
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))?
                    .map_err(|e| std::io::Error::other(format!("callbacks.spool_dir: {e}")))?;
                Some(Arc::new(spool))
            }
            None => None,
        };
        let schedule = Schedule::new(store.storage().clone(), store.keyspace().clone());
        let moving_primary = match store.storage() {
            Storage::Redis(pool) if pool.topology().primary_can_move() => Some(pool.clone()),
            _ => None,
        };
        let journal = moving_primary
            .as_ref()
            .map(|_| Arc::new(Journal::default()));
        let state = web::Data::new(AppState {
            journal: journal.clone(),
            schedule,
            callback_tokens: CallbackTokens::new(settings.callback_keys()),
            store,
            shutdown,
            spool: spool.clone(),
            limiter: RefusalLimiter::new(&settings.limits),
            allowed_sources: settings.allowed_sources(),
            trusted_proxies: settings.server.trusted_proxies(),
            settings,
        });
        if let Some(spool) = spool {
            tokio::spawn(spool::replay(state.clone(), spool));
        }
        if let (Some(pool), Some(journal)) = (moving_primary, journal) {
            tokio::spawn(journal::reapply_on_primary_change(
                state.clone(),
                journal,
                pool.topology().watch_epoch(),
                pool.command_timeout(),
            ));
        }
        Ok(Self { state })
    }

    /// Registers the callback route and the ingest's state on an `App`. Not health
    /// routes or the fallback: the server adds its own.
    /// Reads the spool's size into its gauges before each scrape (no-op without a spool).
    pub fn metrics_collector(&self) -> Collector {
        let spool = self.state.spool.clone();
        Arc::new(move || {
            let Some(spool) = &spool else { return };
            let st = spool.status();
            metrics::set_gauge(metrics::INGEST_SPOOL_RECORDS, st.pending as f64);
            metrics::set_gauge(metrics::INGEST_SPOOL_BYTES, st.bytes as f64);
            metrics::set_gauge(metrics::INGEST_SPOOL_FULL, if st.full { 1.0 } else { 0.0 });
        })
    }

    pub fn configure_callbacks(&self) -> impl Fn(&mut web::ServiceConfig) + Clone + Send + 'static {
        let data = self.state.clone();
        move |cfg: &mut web::ServiceConfig| {
            cfg.app_data(data.clone()).route(
                "/v1/callbacks/stk/{callback_token}",
                web::post().to(routes::stk_callback::stk_callback),
            );
        }
    }
}

pub struct Application {
    port: u16,
    server_settings: ServerSettings,
    server: Server,
    shutdown: Shutdown,
    ingest: Ingest,
    metrics: Option<MetricsServer>,
}

impl Application {
    /// A cluster ingest node: Redis for storage.
    pub async fn build(settings: IngestSettings, shutdown: Shutdown) -> std::io::Result<Self> {
        let pool = RedisPool::open(&settings.redis)
            .await
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let ingest =
            Ingest::build(settings.clone(), shutdown.clone(), Storage::Redis(pool)).await?;
        let listener = stk_relay_shared::http::bind(&settings.server)?;
        let port = listener.local_addr()?.port();
        let metrics = MetricsServer::start(&settings.metrics, vec![ingest.metrics_collector()])?;
        let data = ingest.state.clone();
        let callbacks = ingest.configure_callbacks();
        let server = HttpServer::new(move || {
            App::new()
                .wrap(TracingLogger::<RedactedRootSpan>::new())
                .app_data(data.clone())
                .route("/healthz", web::get().to(routes::health::healthz))
                .route("/readyz", web::get().to(routes::health::readyz))
                .configure(callbacks.clone())
                .default_service(web::to(routes::not_found))
        });
        let server = stk_relay_shared::http::configure(server, listener, &settings.server)?;
        Ok(Self {
            port,
            server_settings: settings.server.clone(),
            server: server.run(),
            shutdown,
            ingest,
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

    /// Serves until shutdown: readiness turns 503 at once, the listener stops, and
    /// in-flight callbacks finish (bounded by `server.shutdown_timeout_ms`).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let handle = self.server.handle();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            shutdown.wait().await;
            tracing::info!("draining");
            handle.stop(true).await;
        });
        let r = self.server.await;
        drop(self.ingest);
        if let Some(m) = self.metrics {
            m.stop().await;
        }
        tracing::info!("stopped");
        r
    }
}
