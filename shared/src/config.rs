//! Layered configuration shared by every binary: embedded defaults, then an optional
//! file, then environment variables.
//!
//! Each service embeds its commented `config/default.toml` with `include_str!` and calls
//! [`load`]. Environment variables map to TOML paths with `__`:
//! `GATEWAY__DARAJA__CONSUMER_KEY` sets `[daraja] consumer_key` of the gateway. The file
//! path comes from `--config <path>` or from `<PREFIX>_CONFIG` (e.g. `GATEWAY_CONFIG`).
//! Secrets deserialize into `secrecy::SecretString`, whose `Debug` prints `[REDACTED]`.
//!
//! The pieces used by more than one service (Redis, HTTP server, telemetry) are here;
//! each service adds its own sections and validates the whole once at load.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not load configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Loads `T` from `defaults` (TOML text), then `file` if given, then `extra` (TOML text,
/// used by tests and embedders), then env vars that start with `<env_prefix>__`. Keys
/// listed in `list_keys` are split on commas when they come from the environment.
pub fn load<T: DeserializeOwned>(
    defaults: &str,
    file: Option<&Path>,
    extra: Option<&str>,
    env_prefix: &str,
    list_keys: &[&str],
) -> Result<T, ConfigError> {
    // No type guessing: a secret made of digits must stay a string with its leading
    // zeros. Numbers and booleans are converted from the string where the target field
    // is numeric or boolean. List keys are split on commas here, explicitly.
    let env = config::Environment::with_prefix(env_prefix)
        .prefix_separator("__")
        .separator("__");
    let mut builder = config::Config::builder()
        .add_source(config::File::from_str(defaults, config::FileFormat::Toml));
    if let Some(path) = file {
        builder = builder.add_source(config::File::from(path.to_path_buf()).required(true));
    }
    if let Some(extra) = extra {
        builder = builder.add_source(config::File::from_str(extra, config::FileFormat::Toml));
    }
    for key in list_keys {
        let var = format!(
            "{env_prefix}__{}",
            key.replace('.', "__").to_ascii_uppercase()
        );
        if let Ok(raw) = std::env::var(&var) {
            let items: Vec<String> = raw
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            builder = builder.set_override(*key, items)?;
        }
    }
    let cfg = builder.add_source(env).build()?;
    Ok(cfg.try_deserialize()?)
}

/// A service's whole configuration: where its defaults and environment variables come
/// from, and how it is validated. `load` / `load_with` are the only ways to build one, so
/// every value a service runs with has passed `validate`.
pub trait Settings: DeserializeOwned {
    /// The commented `config/default.toml`, embedded.
    const DEFAULTS: &'static str;
    /// `GATEWAY` → `GATEWAY__SECTION__KEY` variables and `GATEWAY_CONFIG`.
    const ENV_PREFIX: &'static str;
    /// Keys whose environment value is a comma-separated list.
    const LIST_KEYS: &'static [&'static str] = &[];

    /// Checks the loaded values once; a service refuses to start on an error.
    fn validate(&self) -> Result<(), ConfigError>;

    /// Defaults, then the file from `--config` or `<PREFIX>_CONFIG`, then the environment.
    fn load() -> Result<Self, ConfigError> {
        let file = config_path_from_args(Self::ENV_PREFIX);
        Self::load_with(file.as_deref(), None)
    }

    /// Defaults, then `file`, then `extra` TOML (tests and embedders), then the environment.
    fn load_with(file: Option<&Path>, extra: Option<&str>) -> Result<Self, ConfigError> {
        let s: Self = load(
            Self::DEFAULTS,
            file,
            extra,
            Self::ENV_PREFIX,
            Self::LIST_KEYS,
        )?;
        s.validate()?;
        Ok(s)
    }
}

/// The config file path: `--config <path>` / `--config=<path>` on the command line, else
/// the `<env_prefix>_CONFIG` variable.
pub fn config_path_from_args(env_prefix: &str) -> Option<PathBuf> {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(p));
        }
    }
    std::env::var_os(format!("{env_prefix}_CONFIG")).map(PathBuf::from)
}

/// Where and how an HTTP server listens.
#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    pub host: String,
    /// 0 picks a free port (tests do this).
    pub port: u16,
    /// Worker threads; 0 means one per core.
    pub workers: usize,
    /// How long a graceful shutdown may take before connections are dropped.
    pub shutdown_timeout_ms: u64,
    /// Proxies (CIDR blocks or addresses) whose `X-Forwarded-For` is believed; see
    /// [`crate::net::client_ip`].
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

impl ServerSettings {
    /// The URL a local client reaches the server at once bound to `port`
    /// (`0.0.0.0` is shown as `127.0.0.1`).
    pub fn local_url(&self, port: u16) -> String {
        let host = if self.host == "0.0.0.0" {
            "127.0.0.1"
        } else {
            &self.host
        };
        format!("http://{host}:{port}")
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    /// The parsed `trusted_proxies` (checked by [`ServerSettings::validate`]).
    pub fn trusted_proxies(&self) -> Vec<crate::net::Cidr> {
        crate::net::parse_cidrs(&self.trusted_proxies).unwrap_or_default()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::net::parse_cidrs(&self.trusted_proxies)
            .map_err(|e| ConfigError::Invalid(format!("server.trusted_proxies: {e}")))?;
        Ok(())
    }
}

/// How to reach Redis.
#[derive(Debug, Clone, Deserialize)]
pub struct RedisSettings {
    /// `redis://[:password@]host:port[/db]`. Secret, because it may hold a password.
    pub url: SecretString,
    /// Prefix of every key and channel name.
    pub key_prefix: String,
    /// Connections in the command pool (the subscriber connection is extra).
    pub pool_size: usize,
    pub connect_timeout_ms: u64,
    /// Bound on one command round trip, including waiting for a pooled connection.
    pub command_timeout_ms: u64,
}

impl RedisSettings {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.command_timeout_ms)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let url = self.url.expose_secret();
        if !url.starts_with("redis://") {
            return Err(ConfigError::Invalid(
                "redis.url must start with redis:// (TLS to Redis is not supported yet)".into(),
            ));
        }
        if self.key_prefix.is_empty()
            || !self
                .key_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_:.".contains(&b))
        {
            return Err(ConfigError::Invalid(
                "redis.key_prefix must be non-empty and use only letters, digits, '-', '_', ':' and '.'"
                    .into(),
            ));
        }
        if self.pool_size == 0 || self.pool_size > 256 {
            return Err(ConfigError::Invalid(
                "redis.pool_size must be between 1 and 256".into(),
            ));
        }
        Ok(())
    }
}

/// Requires a secret to be set and at least `min_len` bytes long.
pub fn require_secret(name: &str, s: &SecretString, min_len: usize) -> Result<(), ConfigError> {
    if s.expose_secret().len() < min_len {
        return Err(ConfigError::Invalid(format!(
            "{name} must be set and at least {min_len} characters long"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Sample {
        redis: RedisSettings,
        list: Vec<String>,
        #[serde(default)]
        secret: Option<SecretString>,
    }

    const DEFAULTS: &str = r#"
list = ["a"]
[redis]
url = "redis://127.0.0.1:6379"
key_prefix = "stk"
pool_size = 8
connect_timeout_ms = 1000
command_timeout_ms = 1000
"#;

    #[test]
    fn defaults_then_file_then_env() {
        let dir = std::env::temp_dir().join(format!("stk-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "[redis]\npool_size = 3\nkey_prefix = \"fromfile\"\n").unwrap();
        // A unique prefix keeps this test's variables away from any other.
        std::env::set_var("CFGTEST1__REDIS__KEY_PREFIX", "fromenv");
        std::env::set_var("CFGTEST1__LIST", "x,y");
        std::env::set_var("CFGTEST1__REDIS__POOL_SIZE", "5");
        std::env::set_var("CFGTEST1__SECRET", "000123456789012345678901234567890");
        let s: Sample = load(DEFAULTS, Some(&file), None, "CFGTEST1", &["list"]).unwrap();
        assert_eq!(s.redis.pool_size, 5);
        assert_eq!(
            s.secret
                .as_ref()
                .map(|x| x.expose_secret().to_owned())
                .as_deref(),
            Some("000123456789012345678901234567890")
        );
        assert_eq!(s.redis.key_prefix, "fromenv");
        assert_eq!(s.list, vec!["x".to_string(), "y".to_string()]);
        assert!(s.redis.validate().is_ok());
        assert!(!format!("{:?}", s.redis).contains("6379"));
    }

    #[test]
    fn missing_file_is_an_error() {
        let r: Result<Sample, _> = load(
            DEFAULTS,
            Some(Path::new("/nonexistent/x.toml")),
            None,
            "CFGTEST2",
            &[],
        );
        assert!(r.is_err());
    }
}
