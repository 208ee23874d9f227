//! The callback-ingest configuration: `config/default.toml`, then a file, then
//! `INGEST__…` environment variables. See `docs/configuration.md`.

use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use stk_relay_shared::config::{
    self as shared_config, ConfigError, RedisSettings, ServerSettings, Settings,
};
use stk_relay_shared::metrics::MetricsSettings;
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
    pub limits: LimitSettings,
    pub dev: DevSettings,
    pub metrics: MetricsSettings,
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
    /// Directory of the local spool (`crate::spool`); empty = no spool.
    pub spool_dir: String,
    /// Bound on the spool's size on disk, in bytes.
    pub spool_max_bytes: u64,
    /// Source networks (CIDR blocks) allowed to post callbacks; empty = any source.
    pub allowed_sources: Vec<String>,
}

/// Per-source limits on refused requests (`crate::limits`). Per node.
#[derive(Debug, Clone, Deserialize)]
pub struct LimitSettings {
    /// Refused requests a source may make in a row; 0 turns the limit off.
    pub refused_burst: u32,
    /// Refused requests per minute a source regains, up to `refused_burst`.
    pub refused_per_minute: u32,
    /// Most sources tracked at once (idle ones are evicted first).
    pub max_sources: usize,
}

impl Settings for IngestSettings {
    const DEFAULTS: &'static str = DEFAULTS;
    const ENV_PREFIX: &'static str = ENV_PREFIX;
    const LIST_KEYS: &'static [&'static str] = &[
        "server.trusted_proxies",
        "callbacks.allowed_sources",
        "redis.sentinels",
        "redis.cluster_nodes",
    ];

    fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.redis.validate()?;
        self.metrics.validate()?;
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
        check_cidrs("callbacks.allowed_sources", &self.callbacks.allowed_sources)?;
        if !self.callbacks.spool_dir.is_empty() {
            let min = self.callbacks.max_body_bytes as u64 + 4096;
            if self.callbacks.spool_max_bytes < min {
                return Err(ConfigError::Invalid(format!(
                    "callbacks.spool_max_bytes must be at least {min} (callbacks.max_body_bytes + 4096), so that one callback fits"
                )));
            }
        }
        if self.limits.refused_burst > 0 {
            if self.limits.refused_per_minute == 0 {
                return Err(ConfigError::Invalid(
                    "limits.refused_per_minute must be positive when limits.refused_burst is set"
                        .into(),
                ));
            }
            if !(1..=1_000_000).contains(&self.limits.max_sources) {
                return Err(ConfigError::Invalid(
                    "limits.max_sources must be between 1 and 1000000".into(),
                ));
            }
        }
        if !(10..=86_400).contains(&self.callbacks.early_ttl_secs) {
            return Err(ConfigError::Invalid(
                "callbacks.early_ttl_secs must be between 10 and 86400".into(),
            ));
        }
        Ok(())
    }
}

fn check_cidrs(key: &str, list: &[String]) -> Result<(), ConfigError> {
    stk_relay_shared::net::parse_cidrs(list)
        .map(|_| ())
        .map_err(|e| ConfigError::Invalid(format!("{key}: {e}")))
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

    /// The spool directory, if the spool is on.
    pub fn spool_dir(&self) -> Option<std::path::PathBuf> {
        (!self.callbacks.spool_dir.is_empty()).then(|| self.callbacks.spool_dir.clone().into())
    }

    /// The parsed `callbacks.allowed_sources` (checked by `validate`); empty = any source.
    pub fn allowed_sources(&self) -> Vec<stk_relay_shared::net::Cidr> {
        stk_relay_shared::net::parse_cidrs(&self.callbacks.allowed_sources).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(extra: &str) -> Result<IngestSettings, ConfigError> {
        let base = "[tokens]\ncallback_secret = \"0123456789abcdef0123456789abcdef\"\n";
        IngestSettings::load_with(None, Some(&format!("{base}{extra}")))
    }

    #[test]
    fn defaults_are_valid_and_leave_spool_and_allowlist_off() {
        let s = load("").unwrap();
        assert!(s.spool_dir().is_none());
        assert!(s.allowed_sources().is_empty());
        assert_eq!(s.limits.refused_burst, 20);
    }

    #[test]
    fn new_keys_are_validated() {
        let s =
            load("[callbacks]\nallowed_sources = [\"196.201.212.0/22\", \"10.0.0.1\"]\n").unwrap();
        assert_eq!(s.allowed_sources().len(), 2);
        for bad in [
            "[callbacks]\nallowed_sources = [\"196.201.212.0/33\"]\n",
            "[callbacks]\nspool_dir = \"/tmp/x\"\nspool_max_bytes = 4096\n",
            "[limits]\nrefused_burst = 5\nrefused_per_minute = 0\n",
            "[limits]\nmax_sources = 0\n",
        ] {
            assert!(load(bad).is_err(), "{bad}");
        }
        // Without a spool, its size is not checked.
        assert!(load("[callbacks]\nspool_max_bytes = 1\n").is_ok());
    }

    #[test]
    fn server_backlog_defaults_to_4096_and_is_validated() {
        assert_eq!(load("").unwrap().server.backlog, 4096);
        assert_eq!(
            load("[server]\nbacklog = 128\n").unwrap().server.backlog,
            128
        );
        let err = load("[server]\nbacklog = 0\n").expect_err("backlog 0");
        assert!(err.to_string().contains("server.backlog"), "{err}");
    }
}
