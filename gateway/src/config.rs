//! The gateway configuration: `config/default.toml`, then a file, then `GATEWAY__…`
//! environment variables. See `docs/configuration.md`.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use stk_relay_shared::config::{
    self as shared_config, ConfigError, RedisSettings, ServerSettings, Settings,
};
use stk_relay_shared::daraja::DarajaClientSettings;
use stk_relay_shared::telemetry::TelemetrySettings;

const DEFAULTS: &str = include_str!("../config/default.toml");
pub const ENV_PREFIX: &str = "GATEWAY";

#[derive(Debug, Clone, Deserialize)]
pub struct GatewaySettings {
    pub server: ServerSettings,
    pub redis: RedisSettings,
    pub telemetry: TelemetrySettings,
    pub api: ApiSettings,
    pub tokens: TokenSettings,
    pub payments: PaymentSettings,
    pub callbacks: CallbackUrlSettings,
    pub daraja: DarajaClientSettings,
    pub ws: WsSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApiSettings {
    pub keys: Vec<SecretString>,
    pub max_body_bytes: usize,
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TokenSettings {
    pub subscribe_secret: SecretString,
    pub callback_secret: SecretString,
    pub subscribe_ttl_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PaymentSettings {
    pub ttl_secs: u64,
    pub idempotency_ttl_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CallbackUrlSettings {
    pub public_base_url: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WsSettings {
    pub heartbeat_interval_ms: u64,
    pub client_timeout_ms: u64,
    pub max_connections: usize,
    pub send_timeout_ms: u64,
    pub max_lifetime_secs: u64,
    pub max_connections_per_payment: usize,
    pub max_connections_per_ip: usize,
}

impl WsSettings {
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    pub fn client_timeout(&self) -> Duration {
        Duration::from_millis(self.client_timeout_ms)
    }

    pub fn send_timeout(&self) -> Duration {
        Duration::from_millis(self.send_timeout_ms)
    }

    pub fn max_lifetime(&self) -> Duration {
        Duration::from_secs(self.max_lifetime_secs)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=60_000).contains(&self.send_timeout_ms) {
            return Err(ConfigError::Invalid(
                "ws.send_timeout_ms must be between 1 and 60000".into(),
            ));
        }
        if !(1..=7 * 24 * 3600).contains(&self.max_lifetime_secs) {
            return Err(ConfigError::Invalid(
                "ws.max_lifetime_secs must be between 1 and 604800".into(),
            ));
        }
        if self.max_connections_per_payment == 0 {
            return Err(ConfigError::Invalid(
                "ws.max_connections_per_payment must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

impl Settings for GatewaySettings {
    const DEFAULTS: &'static str = DEFAULTS;
    const ENV_PREFIX: &'static str = ENV_PREFIX;
    const LIST_KEYS: &'static [&'static str] =
        &["api.keys", "api.allowed_origins", "server.trusted_proxies"];

    fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.redis.validate()?;
        self.daraja.validate()?;
        if self.api.keys.is_empty() {
            return Err(ConfigError::Invalid(
                "api.keys must list at least one API key".into(),
            ));
        }
        for k in &self.api.keys {
            if k.expose_secret().len() < 16 {
                return Err(ConfigError::Invalid(
                    "every api.keys entry must be at least 16 characters".into(),
                ));
            }
        }
        shared_config::require_secret(
            "tokens.subscribe_secret",
            &self.tokens.subscribe_secret,
            32,
        )?;
        shared_config::require_secret("tokens.callback_secret", &self.tokens.callback_secret, 32)?;
        if self.tokens.subscribe_ttl_secs == 0 || self.payments.ttl_secs == 0 {
            return Err(ConfigError::Invalid(
                "tokens.subscribe_ttl_secs and payments.ttl_secs must be positive".into(),
            ));
        }
        let base = &self.callbacks.public_base_url;
        if !(base.starts_with("https://") || base.starts_with("http://"))
            || base.ends_with('/')
            || base.contains(char::is_whitespace)
        {
            return Err(ConfigError::Invalid(
                "callbacks.public_base_url must be an http(s) URL without spaces or a trailing slash"
                    .into(),
            ));
        }
        for o in &self.api.allowed_origins {
            let ok = (o.starts_with("https://") || o.starts_with("http://"))
                && !o.ends_with('/')
                && !o.contains(char::is_whitespace);
            if !ok {
                return Err(ConfigError::Invalid(format!(
                    "api.allowed_origins: {o:?} must be an origin such as https://shop.example"
                )));
            }
        }
        if !(256..=1024 * 1024).contains(&self.api.max_body_bytes) {
            return Err(ConfigError::Invalid(
                "api.max_body_bytes must be between 256 and 1048576".into(),
            ));
        }
        if self.ws.max_connections == 0 || self.ws.max_connections > 1_000_000 {
            return Err(ConfigError::Invalid(
                "ws.max_connections must be between 1 and 1000000".into(),
            ));
        }
        self.ws.validate()?;
        if self.payments.idempotency_ttl_secs < 60 {
            return Err(ConfigError::Invalid(
                "payments.idempotency_ttl_secs must be at least 60".into(),
            ));
        }
        if self.ws.heartbeat_interval_ms == 0
            || self.ws.client_timeout_ms <= self.ws.heartbeat_interval_ms
        {
            return Err(ConfigError::Invalid(
                "ws.client_timeout_ms must exceed ws.heartbeat_interval_ms > 0".into(),
            ));
        }
        Ok(())
    }
}
