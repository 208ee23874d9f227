//! The gateway configuration: `config/default.toml`, then a file, then `GATEWAY__…`
//! environment variables. See `docs/configuration.md`.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use stk_relay_shared::config::{
    self as shared_config, ConfigError, RedisSettings, ServerSettings, Settings,
};
use stk_relay_shared::daraja::DarajaClientSettings;
use stk_relay_shared::metrics::MetricsSettings;
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
    pub reconcile: ReconcileSettings,
    pub dev: DevSettings,
    pub compat: CompatSettings,
    pub metrics: MetricsSettings,
    pub merchant: MerchantSettings,
}

/// `[merchant]`: signed webhooks to the merchant's backend (`gateway::webhooks`).
#[derive(Debug, Clone, Deserialize)]
pub struct MerchantSettings {
    /// Where events go unless a push names its own URL. Empty: nowhere.
    pub webhook_url: String,
    /// The HMAC-SHA256 key of `Stk-Relay-Signature`.
    pub webhook_secret: SecretString,
    /// Hosts a push's own `webhook_url` may name (lowercase, exact).
    pub allowed_webhook_hosts: Vec<String>,
    pub webhook_timeout_ms: u64,
    pub webhook_retry_first_ms: u64,
    pub webhook_retry_max_secs: u64,
    pub webhook_max_age_secs: u64,
    pub webhook_concurrency: usize,
}

impl MerchantSettings {
    /// Whether this gateway sends webhooks (and runs the delivery workers).
    pub fn webhooks_enabled(&self) -> bool {
        !self.webhook_url.is_empty() || !self.allowed_webhook_hosts.is_empty()
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.webhook_timeout_ms)
    }

    pub fn retry_first(&self) -> Duration {
        Duration::from_millis(self.webhook_retry_first_ms)
    }

    pub fn retry_max(&self) -> Duration {
        Duration::from_secs(self.webhook_retry_max_secs)
    }

    pub fn max_age(&self) -> Duration {
        Duration::from_secs(self.webhook_max_age_secs)
    }

    /// Checks a webhook URL: absolute https (http only on loopback or when `insecure`),
    /// a host, no credentials, no whitespace, at most 2,048 bytes. Returns its host,
    /// lowercase.
    pub fn check_url(url: &str, insecure: bool) -> Result<String, String> {
        if url.len() > 2048 || url.contains(char::is_whitespace) {
            return Err("must be at most 2048 characters, without whitespace".into());
        }
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("is not a URL: {e}"))?;
        let host = parsed
            .host_str()
            .map(str::to_ascii_lowercase)
            .ok_or_else(|| "has no host".to_owned())?;
        let loopback = matches!(host.as_str(), "localhost" | "127.0.0.1" | "[::1]");
        match parsed.scheme() {
            "https" => {}
            "http" if insecure || loopback => {}
            _ => return Err("must be https (http only on loopback)".into()),
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err("must not carry credentials".into());
        }
        Ok(host)
    }

    fn validate(&self, insecure: bool) -> Result<(), ConfigError> {
        if !self.webhooks_enabled() {
            return Ok(());
        }
        let invalid = |m: String| Err(ConfigError::Invalid(format!("merchant.{m}")));
        if !self.webhook_url.is_empty() {
            if let Err(e) = Self::check_url(&self.webhook_url, insecure) {
                return invalid(format!("webhook_url {e}"));
            }
        }
        for h in &self.allowed_webhook_hosts {
            if h.is_empty() || h.contains(['/', ':', ' ']) || *h != h.to_ascii_lowercase() {
                return invalid(format!(
                    "allowed_webhook_hosts: {h:?} must be a lowercase host name alone"
                ));
            }
        }
        shared_config::require_secret("merchant.webhook_secret", &self.webhook_secret, 32)?;
        if !insecure {
            shared_config::check_not_example("merchant.webhook_secret", &self.webhook_secret)?;
        }
        if !(100..=120_000).contains(&self.webhook_timeout_ms) {
            return invalid("webhook_timeout_ms must be between 100 and 120000".into());
        }
        if self.webhook_retry_first_ms < 10
            || self.webhook_retry_first_ms > self.webhook_retry_max_secs.saturating_mul(1000)
        {
            return invalid(
                "webhook_retry_first_ms must be at least 10 and at most webhook_retry_max_secs"
                    .into(),
            );
        }
        if self.webhook_max_age_secs == 0 || self.webhook_retry_max_secs == 0 {
            return invalid(
                "webhook_max_age_secs and webhook_retry_max_secs must be positive".into(),
            );
        }
        if !(1..=1000).contains(&self.webhook_concurrency) {
            return invalid("webhook_concurrency must be between 1 and 1000".into());
        }
        Ok(())
    }
}

/// `[compat]`: the Durable Objects compatibility routes (`docs/compat.md`). Off by default.
#[derive(Debug, Clone, Deserialize)]
pub struct CompatSettings {
    /// Serve `/sessions/{token}/initiate` and `/sessions/{token}/websocket`.
    pub enabled: bool,
    /// HMAC key the merchant's backend signs session tokens with. At least 32 bytes
    /// when `enabled`; different from the `tokens.*` secrets.
    pub session_secret: SecretString,
    /// During a rotation, the previous key, still accepted. Empty: none.
    pub session_secret_previous: SecretString,
}

impl CompatSettings {
    pub fn session_tokens(&self) -> stk_relay_shared::session_token::SessionTokens {
        stk_relay_shared::session_token::SessionTokens::new(
            self.session_secret.clone(),
            Some(self.session_secret_previous.clone()),
        )
    }

    fn validate(&self, tokens: &TokenSettings, insecure: bool) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        shared_config::require_secret("compat.session_secret", &self.session_secret, 32)?;
        shared_config::check_previous_secret(
            "compat.session_secret",
            &self.session_secret,
            &self.session_secret_previous,
        )?;
        let s = self.session_secret.expose_secret();
        if s == tokens.subscribe_secret.expose_secret()
            || s == tokens.callback_secret.expose_secret()
        {
            return Err(ConfigError::Invalid(
                "compat.session_secret must differ from the tokens.* secrets".into(),
            ));
        }
        if !insecure {
            shared_config::check_not_example("compat.session_secret", &self.session_secret)?;
        }
        Ok(())
    }
}

/// Development-only relaxations.
#[derive(Debug, Clone, Deserialize)]
pub struct DevSettings {
    /// Accept example secrets and a plain-http callback URL outside loopback (the
    /// compose file and the simulator). Never in production; warned about at start.
    pub allow_insecure: bool,
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
    /// During a key rotation, the previous keys, still accepted. Empty: none.
    pub subscribe_secret_previous: SecretString,
    pub callback_secret_previous: SecretString,
    pub subscribe_ttl_secs: u64,
}

impl TokenSettings {
    pub fn subscribe_keys(&self) -> stk_relay_shared::token::Keyring {
        stk_relay_shared::token::Keyring::new(
            self.subscribe_secret.clone(),
            Some(self.subscribe_secret_previous.clone()),
        )
    }

    pub fn callback_keys(&self) -> stk_relay_shared::token::Keyring {
        stk_relay_shared::token::Keyring::new(
            self.callback_secret.clone(),
            Some(self.callback_secret_previous.clone()),
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct PaymentSettings {
    pub ttl_secs: u64,
    pub idempotency_ttl_secs: u64,
    /// Bound on pushes in flight plus pending writes queued while Redis is unreachable.
    pub pending_queue_max: usize,
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

/// `[reconcile]`: STK Push Query for payments whose callback has not come.
#[derive(Debug, Clone, Deserialize)]
pub struct ReconcileSettings {
    /// A PENDING payment this old (seconds since its pending write) is first queried.
    pub after_secs: u64,
    /// A payment still PENDING at this age becomes FAILED with reason `UNCONFIRMED`.
    pub max_age_secs: u64,
    /// STK Push Queries per minute, shared by every gateway (a token bucket in Redis).
    pub max_queries_per_minute: u32,
    /// How often an idle gateway looks for due payments.
    pub poll_interval_ms: u64,
    /// Most payments one gateway claims at once.
    pub batch: usize,
    /// A claimed payment is due again after this long if its claimer did not finish it.
    pub claim_ttl_secs: u64,
    /// Backoff between queries of one payment: a quarter of its age, within these bounds.
    pub retry_min_ms: u64,
    pub retry_max_ms: u64,
}

impl ReconcileSettings {
    pub fn after(&self) -> Duration {
        Duration::from_secs(self.after_secs)
    }

    pub fn max_age(&self) -> Duration {
        Duration::from_secs(self.max_age_secs)
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    pub fn claim_ttl(&self) -> Duration {
        Duration::from_secs(self.claim_ttl_secs)
    }

    fn validate(&self, payment_ttl_secs: u64, daraja_timeout_ms: u64) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(format!("reconcile.{m}")));
        if self.after_secs == 0 || self.after_secs >= self.max_age_secs {
            return invalid("after_secs must be at least 1 and less than max_age_secs");
        }
        if self.max_age_secs >= payment_ttl_secs {
            return invalid("max_age_secs must be less than payments.ttl_secs");
        }
        if !(1..=100_000).contains(&self.max_queries_per_minute) {
            return invalid("max_queries_per_minute must be between 1 and 100000");
        }
        if !(10..=60_000).contains(&self.poll_interval_ms) {
            return invalid("poll_interval_ms must be between 10 and 60000");
        }
        if !(1..=1000).contains(&self.batch) {
            return invalid("batch must be between 1 and 1000");
        }
        // A query may take two exchanges (token, then query) and, after a rejected
        // token, two more; 4/5 of the claim must cover at least the first two.
        if self.claim_ttl_secs.saturating_mul(800) <= daraja_timeout_ms.saturating_mul(2) {
            return invalid("claim_ttl_secs must exceed 2.5 × daraja.request_timeout_ms");
        }
        if self.retry_min_ms < 100 || self.retry_min_ms > self.retry_max_ms {
            return invalid("retry_min_ms must be at least 100 and at most retry_max_ms");
        }
        if self.retry_max_ms > self.max_age_secs.saturating_mul(1000) {
            return invalid("retry_max_ms must not exceed max_age_secs");
        }
        Ok(())
    }
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

    /// File descriptors a node needs at `max_connections`: two per connection (the
    /// socket and the duplicate kept by `ws::session::ClientSocket`), plus a reserve.
    pub fn open_files_needed(&self) -> u64 {
        stk_relay_shared::limits::open_files_needed(self.max_connections, 2)
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
    const LIST_KEYS: &'static [&'static str] = &[
        "api.keys",
        "api.allowed_origins",
        "server.trusted_proxies",
        "redis.sentinels",
        "redis.cluster_nodes",
        "merchant.allowed_webhook_hosts",
    ];
    const OPTIONAL_KEYS: &'static [&'static str] = &["daraja.party_b"];

    fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.redis.validate()?;
        self.daraja.validate()?;
        self.metrics.validate()?;
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
        let insecure = self.dev.allow_insecure;
        shared_config::check_callback_base_url(
            "callbacks.public_base_url",
            &self.callbacks.public_base_url,
            insecure,
        )?;
        if self.tokens.subscribe_secret.expose_secret()
            == self.tokens.callback_secret.expose_secret()
        {
            return Err(ConfigError::Invalid(
                "tokens.subscribe_secret and tokens.callback_secret must differ".into(),
            ));
        }
        shared_config::check_previous_secret(
            "tokens.subscribe_secret",
            &self.tokens.subscribe_secret,
            &self.tokens.subscribe_secret_previous,
        )?;
        shared_config::check_previous_secret(
            "tokens.callback_secret",
            &self.tokens.callback_secret,
            &self.tokens.callback_secret_previous,
        )?;
        if !insecure {
            for (name, secret) in [
                ("tokens.subscribe_secret", &self.tokens.subscribe_secret),
                ("tokens.callback_secret", &self.tokens.callback_secret),
                ("daraja.consumer_key", &self.daraja.consumer_key),
                ("daraja.consumer_secret", &self.daraja.consumer_secret),
                ("redis.url", &self.redis.url),
            ] {
                shared_config::check_not_example(name, secret)?;
            }
            for k in &self.api.keys {
                shared_config::check_not_example("api.keys", k)?;
            }
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
        if !(1..=1_000_000).contains(&self.payments.pending_queue_max) {
            return Err(ConfigError::Invalid(
                "payments.pending_queue_max must be between 1 and 1000000".into(),
            ));
        }
        if self.ws.heartbeat_interval_ms == 0
            || self.ws.client_timeout_ms <= self.ws.heartbeat_interval_ms
        {
            return Err(ConfigError::Invalid(
                "ws.client_timeout_ms must exceed ws.heartbeat_interval_ms > 0".into(),
            ));
        }
        self.reconcile
            .validate(self.payments.ttl_secs, self.daraja.request_timeout_ms)?;
        self.compat.validate(&self.tokens, insecure)?;
        self.merchant.validate(insecure)?;
        if self.merchant.webhooks_enabled()
            && self.redis.mode == stk_relay_shared::config::RedisMode::Cluster
        {
            return Err(ConfigError::Invalid(
                "merchant webhooks need redis.mode \"standalone\" or \"sentinel\": with Redis Cluster the event stream cannot share a payment's slot (not supported yet)".into(),
            ));
        }
        Ok(())
    }
}

/// The `[reconcile]` defaults of `config/default.toml`, for unit tests.
#[cfg(test)]
pub(crate) fn default_reconcile() -> ReconcileSettings {
    #[derive(Deserialize)]
    struct Only {
        reconcile: ReconcileSettings,
    }
    let only: Only = shared_config::load(DEFAULTS, None, None, "GATEWAY_UNIT_TEST", &[])
        .unwrap_or_else(|e| panic!("default.toml [reconcile]: {e}"));
    only.reconcile
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reconcile() -> ReconcileSettings {
        default_reconcile()
    }

    #[test]
    fn reconcile_settings_are_validated() {
        let ok = reconcile();
        assert!(ok.validate(86_400, 15_000).is_ok());
        type Change = fn(&mut ReconcileSettings);
        let bad: [(&str, Change); 8] = [
            ("after >= max_age", |s| s.after_secs = 600),
            ("after 0", |s| s.after_secs = 0),
            ("budget 0", |s| s.max_queries_per_minute = 0),
            ("poll 0", |s| s.poll_interval_ms = 0),
            ("batch 0", |s| s.batch = 0),
            ("claim too short", |s| s.claim_ttl_secs = 30),
            ("retry min > max", |s| s.retry_min_ms = 70_000),
            ("retry max > max_age", |s| s.retry_max_ms = 601_000),
        ];
        for (what, change) in bad {
            let mut s = reconcile();
            change(&mut s);
            assert!(s.validate(86_400, 15_000).is_err(), "{what} accepted");
        }
        // max_age must be below the payment TTL.
        assert!(ok.validate(600, 15_000).is_err());
    }

    #[test]
    fn reconcile_defaults_load_and_can_be_overridden() {
        let base = r#"
[api]
keys = ["a-merchant-api-key-0123456789"]
[tokens]
subscribe_secret = "subscribe-secret-0123456789abcdef0123"
callback_secret = "callback-secret-0123456789abcdef01234"
[callbacks]
public_base_url = "https://cb.shop.test"
[daraja]
consumer_key = "k"
consumer_secret = "s"
passkey = "p"
"#;
        let s = GatewaySettings::load_with(None, Some(base)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.reconcile.after_secs, 60);
        assert_eq!(s.reconcile.max_age_secs, 600);
        assert_eq!(s.reconcile.max_queries_per_minute, 30);
        assert!(!s.compat.enabled, "compat must be off by default");
        let on = |secret: &str| {
            format!("{base}\n[compat]\nenabled = true\nsession_secret = \"{secret}\"\n")
        };
        let ok = GatewaySettings::load_with(None, Some(&on("session-secret-0123456789abcdef0123")))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(ok.compat.enabled);
        for bad in [
            "",
            "too-short",
            "subscribe-secret-0123456789abcdef0123",
            "replace-with-at-least-32-random-characters-session",
        ] {
            let err = GatewaySettings::load_with(None, Some(&on(bad))).expect_err(bad);
            assert!(err.to_string().contains("compat.session_secret"), "{err}");
        }
        let bad = format!("{base}\n[reconcile]\nafter_secs = 600\n");
        let err = GatewaySettings::load_with(None, Some(&bad)).expect_err("after >= max_age");
        assert!(err.to_string().contains("reconcile.after_secs"), "{err}");
    }

    #[test]
    fn server_backlog_defaults_to_4096_and_is_validated() {
        let base = r#"
[api]
keys = ["a-merchant-api-key-0123456789"]
[tokens]
subscribe_secret = "subscribe-secret-0123456789abcdef0123"
callback_secret = "callback-secret-0123456789abcdef01234"
[callbacks]
public_base_url = "https://cb.shop.test"
[daraja]
consumer_key = "k"
consumer_secret = "s"
passkey = "p"
"#;
        let s = GatewaySettings::load_with(None, Some(base)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.server.backlog, 4096);
        assert_eq!(s.ws.open_files_needed(), 2 * 10_000 + 1024);
        let with = |b: &str| format!("{base}\n[server]\nbacklog = {b}\n");
        let s = GatewaySettings::load_with(None, Some(&with("65535")))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.server.backlog, 65535);
        for bad in ["0", "3000000000"] {
            let err = GatewaySettings::load_with(None, Some(&with(bad))).expect_err(bad);
            assert!(err.to_string().contains("server.backlog"), "{err}");
        }
    }
}
