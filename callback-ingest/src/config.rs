//! The callback-ingest configuration: `config/default.toml`, then a file, then
//! `INGEST__…` environment variables. See `docs/configuration.md`.

use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use stk_relay_shared::config::{self as shared_config, ConfigError, RedisSettings, ServerSettings};
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

impl IngestSettings {
    /// Loads defaults, the optional file (`--config` or `INGEST_CONFIG`) and the env.
    pub fn load() -> Result<Self, ConfigError> {
        let file = shared_config::config_path_from_args(ENV_PREFIX);
        Self::load_from(file.as_deref())
    }

    pub fn load_from(file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        Self::load_with(file, None)
    }

    /// Like [`Self::load_from`], with `extra` TOML layered over the file (for tests and
    /// embedders).
    pub fn load_with(
        file: Option<&std::path::Path>,
        extra: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let s: Self = shared_config::load(DEFAULTS, file, extra, ENV_PREFIX, &[])?;
        s.validate()?;
        Ok(s)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.redis.validate()?;
        shared_config::require_secret("tokens.callback_secret", &self.tokens.callback_secret, 32)?;
        if !(1024..=1024 * 1024).contains(&self.callbacks.max_body_bytes) {
            return Err(ConfigError::Invalid(
                "callbacks.max_body_bytes must be between 1024 and 1048576".into(),
            ));
        }
        if self.payments.ttl_secs == 0 {
            return Err(ConfigError::Invalid(
                "payments.ttl_secs must be positive".into(),
            ));
        }
        Ok(())
    }

    pub fn retry_budget(&self) -> Duration {
        Duration::from_millis(self.callbacks.redis_retry_budget_ms)
    }
}
