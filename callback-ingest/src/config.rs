//! The callback-ingest configuration: `config/default.toml`, then a file, then
//! `INGEST__…` environment variables. See `docs/configuration.md`.

use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use stk_relay_shared::config::{
    self as shared_config, ConfigError, RedisSettings, ServerSettings, Settings,
};
use stk_relay_shared::telemetry::TelemetrySettings;

const DEFAULTS: &str = include_str!("../config/default.toml");
pub const ENV_PREFIX: &str = "INGEST";

#[derive(Debug, Clone, Deserialize)]
pub struct IngestSettings {
    pub server: ServerSettings,
    pub redis: RedisSettings,
    pub telemetry: TelemetrySettings,
    pub tokens: TokenSettings,
    pub callbacks: CallbackSettings,
    pub payments: PaymentSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TokenSettings {
    pub callback_secret: SecretString,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CallbackSettings {
    pub max_body_bytes: usize,
    pub redis_retry_budget_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PaymentSettings {
    pub ttl_secs: u64,
}

impl Settings for IngestSettings {
    const DEFAULTS: &'static str = DEFAULTS;
    const ENV_PREFIX: &'static str = ENV_PREFIX;
    const LIST_KEYS: &'static [&'static str] = &["server.trusted_proxies"];

    fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.redis.validate()?;
        shared_config::require_secret("tokens.callback_secret", &self.tokens.callback_secret, 32)?;
        let max = stk_relay_shared::daraja::callback::MAX_CALLBACK_BYTES;
        if !(1024..=max).contains(&self.callbacks.max_body_bytes) {
            return Err(ConfigError::Invalid(format!(
                "callbacks.max_body_bytes must be between 1024 and {max} (the parser's limit)"
            )));
        }
        if self.callbacks.redis_retry_budget_ms > 30_000 {
            return Err(ConfigError::Invalid(
                "callbacks.redis_retry_budget_ms must be at most 30000: Daraja will not wait longer"
                    .into(),
            ));
        }
        if self.payments.ttl_secs == 0 {
            return Err(ConfigError::Invalid(
                "payments.ttl_secs must be positive".into(),
            ));
        }
        Ok(())
    }
}

impl IngestSettings {
    pub fn retry_budget(&self) -> Duration {
        Duration::from_millis(self.callbacks.redis_retry_budget_ms)
    }
}
