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
    pub dev: DevSettings,
}

/// Development-only relaxations.
#[derive(Debug, Clone, Deserialize)]
pub struct DevSettings {
    /// Accept the example secrets of deploy/ (the compose file). Never in production.
    pub allow_insecure: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TokenSettings {
    pub callback_secret: SecretString,
    /// During a key rotation, the previous key, still accepted. Empty: none.
    pub callback_secret_previous: SecretString,
    /// Oldest callback token accepted, by its issue time.
    pub callback_ttl_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CallbackSettings {
    pub max_body_bytes: usize,
    pub redis_retry_budget_ms: u64,
    /// How long a callback that beat its pending write is kept for it.
    pub early_ttl_secs: u64,
    /// Confirm every success callback with STK Push Query before SUCCESS is published.
    pub confirm_with_query: bool,
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
        if !self.dev.allow_insecure {
            shared_config::check_not_example(
                "tokens.callback_secret",
                &self.tokens.callback_secret,
            )?;
            shared_config::check_not_example("redis.url", &self.redis.url)?;
        }
        shared_config::check_previous_secret(
            "tokens.callback_secret",
            &self.tokens.callback_secret,
            &self.tokens.callback_secret_previous,
        )?;
        if !(60..=7 * 86_400).contains(&self.tokens.callback_ttl_secs) {
            return Err(ConfigError::Invalid(
                "tokens.callback_ttl_secs must be between 60 and 604800".into(),
            ));
        }
        if !(10..=86_400).contains(&self.callbacks.early_ttl_secs) {
            return Err(ConfigError::Invalid(
                "callbacks.early_ttl_secs must be between 10 and 86400".into(),
            ));
        }
        Ok(())
    }
}

impl IngestSettings {
    pub fn retry_budget(&self) -> Duration {
        Duration::from_millis(self.callbacks.redis_retry_budget_ms)
    }

    pub fn callback_token_ttl(&self) -> Duration {
        Duration::from_secs(self.tokens.callback_ttl_secs)
    }

    /// The callback keys: current and, during a rotation, previous.
    pub fn callback_keys(&self) -> stk_relay_shared::token::Keyring {
        stk_relay_shared::token::Keyring::new(
            self.tokens.callback_secret.clone(),
            Some(self.tokens.callback_secret_previous.clone()),
        )
    }
}
