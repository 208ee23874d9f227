//! Configuration of the `stk-relay` binary: its own `[node]` and `[simulator]` sections,
//! and the gateway's and the ingest's sections, read from one file and one environment
//! prefix (`STK_RELAY__…`). `config/default.toml` holds the union of both services'
//! defaults; a test checks that it lists every key of each.
//!
//! Loading happens in two passes. The first reads `[node]`, `[simulator]`, `[server]`,
//! `[ws]` and `[telemetry]`; the process then binds its port and starts the simulator.
//! The second reads the gateway's and the ingest's settings with what the process has
//! decided laid over the file (the simulator's address, generated secrets), and
//! validates them as their own binaries would.

use std::path::Path;

use serde::Deserialize;
use stk_relay_callback_ingest::config::IngestSettings;
use stk_relay_gateway::config::{GatewaySettings, WsSettings};
use stk_relay_shared::config::{
    load_checked, ConfigError, RedisSettings, ServerSettings, Settings,
};
use stk_relay_shared::metrics::MetricsSettings;
use stk_relay_shared::telemetry::TelemetrySettings;

/// The built-in defaults.
pub const DEFAULTS: &str = include_str!("../config/default.toml");
/// `STK_RELAY__SECTION__KEY` variables and `STK_RELAY_CONFIG`.
pub const ENV_PREFIX: &str = "STK_RELAY";

/// What the process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Gateway and callback ingest on one port.
    All,
}

/// Where state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Memory,
    Redis,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NodeSettings {
    pub role: Role,
    pub store: StoreKind,
    pub simulator: bool,
    pub demo: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SimulatorSettings {
    pub callback_delay_ms: u64,
    pub reconcile_after_secs: u64,
}

/// The first pass: what the process needs before it can build the services.
#[derive(Debug, Clone, Deserialize)]
pub struct StandaloneSettings {
    pub node: NodeSettings,
    pub simulator: SimulatorSettings,
    pub server: ServerSettings,
    /// The gateway's `[ws]`, for the open-file limit its `max_connections` needs.
    pub ws: WsSettings,
    pub redis: RedisSettings,
    pub telemetry: TelemetrySettings,
    pub metrics: MetricsSettings,
}

fn list_keys() -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = GatewaySettings::LIST_KEYS.to_vec();
    for k in IngestSettings::LIST_KEYS {
        if !keys.contains(k) {
            keys.push(k);
        }
    }
    keys
}

fn optional_keys() -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = GatewaySettings::OPTIONAL_KEYS.to_vec();
    keys.extend_from_slice(IngestSettings::OPTIONAL_KEYS);
    keys
}

fn load<T: serde::de::DeserializeOwned>(
    file: Option<&Path>,
    extra: Option<&str>,
) -> Result<T, ConfigError> {
    load_checked(
        DEFAULTS,
        file,
        extra,
        ENV_PREFIX,
        &list_keys(),
        &optional_keys(),
    )
}

impl StandaloneSettings {
    /// The first pass. `extra` is TOML laid over the file (tests use it).
    pub fn load(file: Option<&Path>, extra: Option<&str>) -> Result<Self, ConfigError> {
        let s: Self = load(file, extra)?;
        s.server.validate()?;
        s.metrics.validate()?;
        if s.node.demo && !s.node.simulator {
            return Err(ConfigError::Invalid(
                "node.demo needs node.simulator = true: the demo's push endpoint has no API key, so with the real Daraja any visitor could prompt real phones".into(),
            ));
        }
        if s.node.store == StoreKind::Redis {
            s.redis.validate()?;
        }
        Ok(s)
    }

    /// The gateway's and the ingest's settings: the same sources with `overlay` (TOML)
    /// laid over the file, each validated as its own binary validates it.
    pub fn services(
        file: Option<&Path>,
        overlay: &str,
    ) -> Result<(GatewaySettings, IngestSettings), ConfigError> {
        let gateway: GatewaySettings = load(file, Some(overlay))?;
        gateway.validate()?;
        let ingest: IngestSettings = load(file, Some(overlay))?;
        ingest.validate()?;
        Ok((gateway, ingest))
    }

    /// The secrets as configured (before anything is generated), to see which are unset.
    pub fn configured_secrets(file: Option<&Path>) -> Result<ConfiguredSecrets, ConfigError> {
        let g: GatewaySettings = load(file, None)?;
        use secrecy::ExposeSecret;
        Ok(ConfiguredSecrets {
            api_keys: !g.api.keys.is_empty(),
            subscribe_secret: !g.tokens.subscribe_secret.expose_secret().is_empty(),
            callback_secret: !g.tokens.callback_secret.expose_secret().is_empty(),
        })
    }
}

/// Which secrets the configuration sets.
#[derive(Debug, Clone, Copy)]
pub struct ConfiguredSecrets {
    pub api_keys: bool,
    pub subscribe_secret: bool,
    pub callback_secret: bool,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn keys(toml_text: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut section = String::new();
        for line in toml_text.lines().map(str::trim) {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = s.to_owned();
            } else if let Some((k, _)) = line.split_once('=') {
                out.insert(format!("{section}.{}", k.trim()));
            }
        }
        out
    }

    #[test]
    fn defaults_hold_every_key_of_both_services() {
        let ours = keys(DEFAULTS);
        let gateway = keys(include_str!("../../gateway/config/default.toml"));
        let ingest = keys(include_str!("../../callback-ingest/config/default.toml"));
        let missing: Vec<_> = gateway
            .union(&ingest)
            .filter(|k| !ours.contains(*k))
            .collect();
        assert!(
            missing.is_empty(),
            "missing from standalone defaults: {missing:?}"
        );
        let own: BTreeSet<_> = ours
            .difference(&gateway.union(&ingest).cloned().collect())
            .cloned()
            .collect();
        let expected: BTreeSet<String> = [
            "node.role",
            "node.store",
            "node.simulator",
            "node.demo",
            "simulator.callback_delay_ms",
            "simulator.reconcile_after_secs",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        assert_eq!(own, expected);
    }

    #[test]
    fn server_backlog_and_ws_cap_are_read_in_the_first_pass() {
        let s = StandaloneSettings::load(None, None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.server.backlog, 4096);
        assert_eq!(s.ws.max_connections, 10_000);
        let s = StandaloneSettings::load(None, Some("[server]\nbacklog = 512\n"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.server.backlog, 512);
        let e =
            StandaloneSettings::load(None, Some("[server]\nbacklog = 0\n")).expect_err("backlog 0");
        assert!(e.to_string().contains("server.backlog"), "{e}");
    }

    #[test]
    fn demo_without_the_simulator_is_refused() {
        let e = StandaloneSettings::load(None, Some("[node]\nsimulator = false\n"))
            .expect_err("refused");
        assert!(e.to_string().contains("node.demo"), "{e}");
        assert!(
            StandaloneSettings::load(None, Some("[node]\nsimulator = false\ndemo = false\n"))
                .is_ok()
        );
    }
}
