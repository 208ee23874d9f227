//! Building and running the one process: the listener, the simulator (when configured),
//! the backends, the gateway and the ingest, and one HTTP server with both route sets
//! (and the demo's). The order matters: the port is bound first, because the callback
//! URL the simulator calls and the gateway hands to Daraja names it.
//!
//! Shutdown follows the gateway's sequence ([`Gateway::spawn_drain`], then
//! [`Gateway::finish`]), then the simulator stops.

use std::path::{Path, PathBuf};

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use base64::Engine as _;
use rand::RngCore;
use stk_relay_callback_ingest::startup::Ingest;
use stk_relay_daraja_sim::{SimConfig, Simulator};
use stk_relay_gateway::routes;
use stk_relay_gateway::routes::demo::DemoOptions;
use stk_relay_gateway::startup::Gateway;
use stk_relay_shared::backends::Backends;
use stk_relay_shared::http::RedactedRootSpan;
use stk_relay_shared::metrics::MetricsServer;
use stk_relay_shared::shutdown::Shutdown;
use tracing_actix_web::TracingLogger;

use crate::config::{StandaloneSettings, StoreKind};

/// A random secret of `bytes` bytes, base64url.
fn random_secret(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// Secrets generated for this run (only where the configuration left them unset, and
/// only with in-memory state: a cluster's nodes must share theirs).
#[derive(Debug, Default, Clone)]
pub struct Generated {
    pub api_key: Option<String>,
    pub subscribe_secret: Option<String>,
    pub callback_secret: Option<String>,
}

/// TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub struct Standalone {
    port: u16,
    base_url: String,
    server: Server,
    gateway: Gateway,
    sim: Option<Simulator>,
    generated: Generated,
    demo: bool,
    memory: bool,
    metrics: Option<MetricsServer>,
}

fn invalid(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
}

impl Standalone {
    /// Loads the configuration from `file` (and the environment) with `extra` TOML laid
    /// over it, binds, and starts everything.
    pub async fn build(
        settings: StandaloneSettings,
        file: Option<PathBuf>,
        shutdown: Shutdown,
    ) -> std::io::Result<Self> {
        let file: Option<&Path> = file.as_deref();
        let listener = stk_relay_shared::http::bind(&settings.server)?;
        let port = listener.local_addr()?.port();
        let base_url = settings.server.local_url(port);

        let memory = settings.node.store == StoreKind::Memory;
        let mut overlay = String::new();
        let mut generated = Generated::default();
        if memory {
            let configured = StandaloneSettings::configured_secrets(file).map_err(invalid)?;
            overlay.push_str("[api]\n");
            if !configured.api_keys {
                let key = format!("sk_demo_{}", random_secret(18));
                overlay.push_str(&format!("keys = [{}]\n", toml_str(&key)));
                generated.api_key = Some(key);
            }
            overlay.push_str("[tokens]\n");
            if !configured.subscribe_secret {
                let s = random_secret(32);
                overlay.push_str(&format!("subscribe_secret = {}\n", toml_str(&s)));
                generated.subscribe_secret = Some(s);
            }
            if !configured.callback_secret {
                let s = random_secret(32);
                overlay.push_str(&format!("callback_secret = {}\n", toml_str(&s)));
                generated.callback_secret = Some(s);
            }
        }
        let sim = if settings.node.simulator {
            let config = SimConfig {
                consumer_key: random_secret(12),
                consumer_secret: random_secret(24),
                passkey: random_secret(24),
                callback_delay_ms: settings.simulator.callback_delay_ms,
                ..SimConfig::default()
            };
            let sim = Simulator::start(config.clone(), "127.0.0.1:0").await?;
            overlay.push_str(&format!(
                "[daraja]\nbase_url = {}\nconsumer_key = {}\nconsumer_secret = {}\npasskey = {}\nshortcode = {}\ntransaction_type = \"paybill\"\n",
                toml_str(&sim.base_url()),
                toml_str(&config.consumer_key),
                toml_str(&config.consumer_secret),
                toml_str(&config.passkey),
                toml_str(&config.shortcode),
            ));
            // The simulator calls back this process over plain http on loopback.
            overlay.push_str(&format!(
                "[callbacks]\npublic_base_url = {}\n[dev]\nallow_insecure = true\n[reconcile]\nafter_secs = {}\n",
                toml_str(&base_url),
                settings.simulator.reconcile_after_secs.max(1),
            ));
            Some(sim)
        } else {
            None
        };

        let (gateway_settings, ingest_settings) =
            StandaloneSettings::services(file, &overlay).map_err(invalid)?;
        let backends = match settings.node.store {
            StoreKind::Memory => Backends::memory(),
            StoreKind::Redis => Backends::redis(&settings.redis).await.map_err(invalid)?,
        };
        let prompt_secs = 60;
        let gateway = Gateway::build(gateway_settings, shutdown.clone(), backends.clone()).await?;
        let ingest = Ingest::build(ingest_settings, shutdown, backends.storage.clone()).await?;

        let metrics = MetricsServer::start(
            &settings.metrics,
            vec![gateway.metrics_collector(), ingest.metrics_collector()],
        )?;
        let gateway_routes = gateway.configure();
        let ingest_routes = ingest.configure_callbacks();
        let demo = settings.node.demo;
        let demo_routes = routes::demo::configure(DemoOptions {
            simulator: settings.node.simulator,
            prompt_secs,
        });
        let server = HttpServer::new(move || {
            let app = App::new()
                .wrap(TracingLogger::<RedactedRootSpan>::new())
                .configure(gateway_routes.clone())
                .configure(ingest_routes.clone());
            let app = if demo {
                app.configure(demo_routes.clone())
            } else {
                app
            };
            app.default_service(web::to(routes::fallback))
        })
        .on_connect(stk_relay_gateway::ws::session::ClientSocket::remember);
        let server = stk_relay_shared::http::configure(server, listener, &settings.server)?;
        Ok(Self {
            port,
            base_url,
            server: server.run(),
            gateway,
            sim,
            generated,
            demo,
            memory,
            metrics,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://<host>:<port>`, with `0.0.0.0` shown as `127.0.0.1`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// What `main` prints at start: where to look, and the secrets made for this run.
    pub fn banner(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!("stk-relay listening on {}\n", self.base_url));
        if self.demo {
            out.push_str(&format!("  demo checkout:  {}/demo/\n", self.base_url));
        }
        out.push_str(&format!(
            "  state:          {}\n",
            if self.memory {
                "in memory (lost when this process stops)"
            } else {
                "Redis (redis.url)"
            }
        ));
        match &self.sim {
            Some(sim) => out.push_str(&format!(
                "  Daraja:         in-process simulator at {}\n",
                sim.base_url()
            )),
            None => out.push_str("  Daraja:         daraja.base_url\n"),
        }
        if let Some(m) = &self.metrics {
            out.push_str(&format!(
                "  metrics:        http://{}/metrics\n",
                m.local_addr()
            ));
        }
        let g = &self.generated;
        if g.api_key.is_some() || g.subscribe_secret.is_some() || g.callback_secret.is_some() {
            out.push_str("  generated for this run (set them in the config to keep them):\n");
        }
        if let Some(k) = &g.api_key {
            out.push_str(&format!("    api.keys                 {k}\n"));
        }
        if let Some(k) = &g.subscribe_secret {
            out.push_str(&format!("    tokens.subscribe_secret  {k}\n"));
        }
        if let Some(k) = &g.callback_secret {
            out.push_str(&format!("    tokens.callback_secret   {k}\n"));
        }
        if let Some(k) = &g.api_key {
            out.push_str(&format!(
                "  try: curl -s {}/v1/stk/push -H 'Authorization: Bearer {k}' -H 'Content-Type: application/json' -d '{{\"phone\":\"0712345678\",\"amount\":10,\"account_reference\":\"ORDER-1\"}}'\n",
                self.base_url
            ));
        }
        out
    }

    /// Serves until the shutdown handle fires, then runs the gateway's shutdown sequence
    /// and stops the simulator.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let deadline = self.gateway.spawn_drain(self.server.handle());
        let r = self.server.await;
        self.gateway.finish(deadline).await;
        if let Some(sim) = self.sim {
            sim.stop().await;
        }
        if let Some(m) = self.metrics {
            m.stop().await;
        }
        tracing::info!("stopped");
        r
    }
}
