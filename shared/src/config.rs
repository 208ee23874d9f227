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
///
/// Every key set by the file, `extra` or the environment must exist in `defaults` (or be
/// listed in `optional_keys`): a misspelt key stops the service with an error that names
/// it and the closest known key, instead of being silently ignored.
pub fn load<T: DeserializeOwned>(
    defaults: &str,
    file: Option<&Path>,
    extra: Option<&str>,
    env_prefix: &str,
    list_keys: &[&str],
) -> Result<T, ConfigError> {
    load_checked(defaults, file, extra, env_prefix, list_keys, &[])
}

/// [`load`] with keys that are known although `defaults` leaves them unset.
pub fn load_checked<T: DeserializeOwned>(
    defaults: &str,
    file: Option<&Path>,
    extra: Option<&str>,
    env_prefix: &str,
    list_keys: &[&str],
    optional_keys: &[&str],
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
    check_unknown_keys(defaults, &cfg, env_prefix, optional_keys)?;
    Ok(cfg.try_deserialize()?)
}

/// Dotted paths of every leaf (a value that is not a table) of a configuration tree.
fn leaf_paths(value: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaf_paths(v, &path, out);
            }
        }
        _ => out.push(prefix.to_owned()),
    }
}

fn tree_of(cfg: &config::Config) -> Result<serde_json::Value, ConfigError> {
    cfg.clone()
        .try_deserialize::<serde_json::Value>()
        .map_err(ConfigError::Load)
}

/// Edit distance between two short strings, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The known key closest to `unknown`.
pub fn closest_key<'a>(unknown: &str, known: &'a [String]) -> Option<&'a str> {
    known
        .iter()
        .min_by_key(|k| distance(unknown, k))
        .map(String::as_str)
}

/// Every key a service knows: the dotted path of each value in its `defaults`, and the
/// `optional_keys` that the defaults leave unset.
pub fn known_keys(defaults: &str, optional_keys: &[&str]) -> Result<Vec<String>, ConfigError> {
    let known_cfg = config::Config::builder()
        .add_source(config::File::from_str(defaults, config::FileFormat::Toml))
        .build()?;
    let mut known = Vec::new();
    leaf_paths(&tree_of(&known_cfg)?, "", &mut known);
    known.extend(optional_keys.iter().map(|k| (*k).to_owned()));
    Ok(known)
}

/// The environment variables (`<PREFIX>__SECTION__KEY`) named in a text (a manifest, a
/// compose file, a script) that are not keys of the service: the deploy files' check.
pub fn unknown_env_keys_in(
    text: &str,
    env_prefix: &str,
    defaults: &str,
    optional_keys: &[&str],
) -> Result<Vec<String>, ConfigError> {
    let known = known_keys(defaults, optional_keys)?;
    let marker = format!("{env_prefix}__");
    let mut unknown = Vec::new();
    for (i, _) in text.match_indices(&marker) {
        if i > 0 && text.as_bytes()[i - 1].is_ascii_alphanumeric() {
            continue;
        }
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let path = name[marker.len()..].replace("__", ".").to_ascii_lowercase();
        // Empty, or the documentation's own placeholder (`…__SECTION__KEY`).
        if path.is_empty() || path.ends_with('.') || path == "section.key" {
            continue;
        }
        if !known.contains(&path) && !unknown.contains(&name) {
            unknown.push(name);
        }
    }
    Ok(unknown)
}

/// The files that ship configuration for the services: everything under `deploy/` and
/// `scripts/` of the repository at `repo_root`.
pub fn deploy_files(repo_root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut dirs = vec![repo_root.join("deploy"), repo_root.join("scripts")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Every `<PREFIX>__…` variable set by the [`deploy_files`] that is not a key of the
/// service, as `file: VARIABLE`, and how many variables were looked at.
pub fn unknown_keys_in_deploy_files(
    repo_root: &Path,
    env_prefix: &str,
    defaults: &str,
    optional_keys: &[&str],
) -> Result<(Vec<String>, usize), ConfigError> {
    let marker = format!("{env_prefix}__");
    let mut unknown = Vec::new();
    let mut seen = 0;
    let files = deploy_files(repo_root)
        .map_err(|e| ConfigError::Invalid(format!("reading deploy files: {e}")))?;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        seen += text.matches(&marker).count();
        for k in unknown_env_keys_in(&text, env_prefix, defaults, optional_keys)? {
            unknown.push(format!("{}: {k}", f.display()));
        }
    }
    Ok((unknown, seen))
}

fn check_unknown_keys(
    defaults: &str,
    cfg: &config::Config,
    env_prefix: &str,
    optional_keys: &[&str],
) -> Result<(), ConfigError> {
    let known = known_keys(defaults, optional_keys)?;
    let mut given = Vec::new();
    leaf_paths(&tree_of(cfg)?, "", &mut given);
    let mut unknown: Vec<&String> = given.iter().filter(|k| !known.contains(k)).collect();
    unknown.sort();
    let Some(first) = unknown.first() else {
        return Ok(());
    };
    let env_name = format!(
        "{env_prefix}__{}",
        first.replace('.', "__").to_ascii_uppercase()
    );
    let origin = if std::env::var_os(&env_name).is_some() {
        format!(" (from the environment variable {env_name})")
    } else {
        String::new()
    };
    let hint = closest_key(first, &known)
        .map(|k| format!("; the closest known key is `{k}`"))
        .unwrap_or_default();
    let more = if unknown.len() > 1 {
        format!(
            " (and {} more: {})",
            unknown.len() - 1,
            unknown[1..]
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        String::new()
    };
    Err(ConfigError::Invalid(format!(
        "unknown configuration key `{first}`{origin}{hint}{more}"
    )))
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
    /// Keys that are valid although `DEFAULTS` leaves them unset (commented out).
    const OPTIONAL_KEYS: &'static [&'static str] = &[];

    /// Checks the loaded values once; a service refuses to start on an error.
    fn validate(&self) -> Result<(), ConfigError>;

    /// Defaults, then the file from `--config` or `<PREFIX>_CONFIG`, then the environment.
    fn load() -> Result<Self, ConfigError> {
        let file = config_path_from_args(Self::ENV_PREFIX);
        Self::load_with(file.as_deref(), None)
    }

    /// Defaults, then `file`, then `extra` TOML (tests and embedders), then the environment.
    fn load_with(file: Option<&Path>, extra: Option<&str>) -> Result<Self, ConfigError> {
        let s: Self = load_checked(
            Self::DEFAULTS,
            file,
            extra,
            Self::ENV_PREFIX,
            Self::LIST_KEYS,
            Self::OPTIONAL_KEYS,
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
    /// HTTP worker threads; 0 means automatic ([`ServerSettings::effective_workers`]).
    pub workers: usize,
    /// How long a graceful shutdown may take before connections are dropped.
    pub shutdown_timeout_ms: u64,
    /// Listen backlog: connections the kernel queues before they are accepted. The
    /// kernel silently caps it at `net.core.somaxconn`; see [`crate::http::bind`].
    pub backlog: u32,
    /// Proxies (CIDR blocks or addresses) whose `X-Forwarded-For` is believed; see
    /// [`crate::net::client_ip`].
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

impl ServerSettings {
    /// The HTTP worker threads to start, also the size of the process's own runtime
    /// (its Redis connections, the broker, background tasks): `workers` when set, else
    /// one fewer than the CPUs available, at least one. On 2 cores that is one of each,
    /// which the neutral rig measured better than two of each: p99 at 10,000 clients and
    /// 1,000 callbacks/s 1.25–1.30 ms instead of 1.53–1.63, and at 6,000 callbacks/s
    /// 10 ms instead of 81 (BENCHMARKS.md, thread layout).
    pub fn effective_workers(&self) -> usize {
        if self.workers > 0 {
            return self.workers;
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        cpus.saturating_sub(1).max(1)
    }

    /// The process's runtime, sized by [`ServerSettings::effective_workers`] unless
    /// `TOKIO_WORKER_THREADS` says otherwise.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.enable_all();
        if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
            builder.worker_threads(self.effective_workers());
        }
        builder.build()
    }
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
        if self.backlog == 0 || i32::try_from(self.backlog).is_err() {
            return Err(ConfigError::Invalid(format!(
                "server.backlog must be between 1 and {}",
                i32::MAX
            )));
        }
        Ok(())
    }
}

/// Which Redis deployment a node talks to (`redis.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One server (or one endpoint that a managed service fails over behind): `redis.url`.
    #[default]
    Standalone,
    /// A primary found through Redis Sentinel: `redis.sentinels` and `redis.master_name`;
    /// `redis.url` gives only the scheme, credentials and database of the data nodes.
    Sentinel,
    /// Redis Cluster (7.0 or later): `redis.cluster_nodes` names some nodes to start
    /// from; `redis.url` gives only the scheme and credentials. Payment states are
    /// published with sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`).
    Cluster,
}

/// How to reach Redis.
#[derive(Debug, Clone, Deserialize)]
pub struct RedisSettings {
    /// `redis://[:password@]host:port[/db]`, or `rediss://` for TLS. Secret, because it
    /// may hold a password.
    pub url: SecretString,
    /// Prefix of every key and channel name.
    pub key_prefix: String,
    /// Connections in the command pool (the subscriber connection is extra).
    pub pool_size: usize,
    pub connect_timeout_ms: u64,
    /// Bound on one command round trip, including waiting for a pooled connection.
    pub command_timeout_ms: u64,
    #[serde(default)]
    pub mode: RedisMode,
    /// After each payment-state write (pending record, final outcome), `WAIT` for this
    /// many replicas to hold it, or fail the write as unavailable (503, retried). 0: do
    /// not wait. Closes the failover window in which an acknowledged write is lost.
    #[serde(default)]
    pub wait_replicas: u32,
    /// The bound of that `WAIT`.
    #[serde(default = "default_wait_replicas_timeout_ms")]
    pub wait_replicas_timeout_ms: u64,
    /// Sentinel mode: `host:port` of each sentinel.
    #[serde(default)]
    pub sentinels: Vec<String>,
    /// Sentinel mode: the name the sentinels monitor the primary under.
    #[serde(default)]
    pub master_name: String,
    /// Cluster mode: `host:port` of cluster nodes to discover the cluster from.
    #[serde(default)]
    pub cluster_nodes: Vec<String>,
    /// Sentinel mode: the sentinels' own password (`requirepass` of the sentinels); empty
    /// for none. The data nodes' password is the one in `url`.
    #[serde(default = "no_secret")]
    pub sentinel_password: SecretString,
    /// Sentinel mode: talk TLS to the sentinels too, with the same CA and client
    /// certificate as the data nodes.
    #[serde(default)]
    pub sentinel_tls: bool,
    /// `rediss://`: PEM file of the CA(s) that signed the server certificate; empty for
    /// the built-in web PKI roots.
    #[serde(default)]
    pub tls_ca_file: String,
    /// `rediss://`: PEM client certificate (chain) for servers that require one; set with
    /// `tls_key_file`.
    #[serde(default)]
    pub tls_cert_file: String,
    /// `rediss://`: PEM private key of `tls_cert_file`.
    #[serde(default)]
    pub tls_key_file: String,
}

impl RedisSettings {
    /// Settings for one server at `url`, everything else at its default (tests, tools).
    pub fn standalone(url: impl Into<String>, key_prefix: impl Into<String>) -> Self {
        Self {
            url: SecretString::from(url.into()),
            key_prefix: key_prefix.into(),
            pool_size: 4,
            connect_timeout_ms: 2000,
            command_timeout_ms: 2000,
            mode: RedisMode::Standalone,
            wait_replicas: 0,
            wait_replicas_timeout_ms: default_wait_replicas_timeout_ms(),
            sentinels: Vec::new(),
            master_name: String::new(),
            cluster_nodes: Vec::new(),
            sentinel_password: SecretString::from(String::new()),
            sentinel_tls: false,
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
        }
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.command_timeout_ms)
    }

    /// Whether the data nodes are reached over TLS (`rediss://`).
    pub fn uses_tls(&self) -> bool {
        self.url.expose_secret().starts_with("rediss://")
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let url = self.url.expose_secret();
        if !url.starts_with("redis://") && !url.starts_with("rediss://") {
            return Err(ConfigError::Invalid(
                "redis.url must start with redis:// or rediss:// (TLS)".into(),
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
        if self.wait_replicas > 0
            && (self.wait_replicas_timeout_ms == 0
                || self.wait_replicas_timeout_ms >= self.command_timeout_ms)
        {
            return Err(ConfigError::Invalid(
                "redis.wait_replicas_timeout_ms must be above 0 and below command_timeout_ms"
                    .into(),
            ));
        }
        let tls_files = [&self.tls_ca_file, &self.tls_cert_file, &self.tls_key_file];
        if !self.uses_tls() && tls_files.iter().any(|f| !f.is_empty()) {
            return Err(ConfigError::Invalid(
                "redis.tls_ca_file, tls_cert_file and tls_key_file need a rediss:// url".into(),
            ));
        }
        if self.tls_cert_file.is_empty() != self.tls_key_file.is_empty() {
            return Err(ConfigError::Invalid(
                "redis.tls_cert_file and redis.tls_key_file are set together or not at all".into(),
            ));
        }
        match self.mode {
            RedisMode::Standalone => {
                self.no_sentinel_keys()?;
                self.no_cluster_nodes()?;
            }
            RedisMode::Sentinel => {
                if self.sentinels.is_empty() {
                    return Err(ConfigError::Invalid(
                        "redis.mode = \"sentinel\" needs redis.sentinels (host:port, ...)".into(),
                    ));
                }
                parse_host_ports("sentinels", &self.sentinels).map_err(ConfigError::Invalid)?;
                if self.master_name.is_empty() {
                    return Err(ConfigError::Invalid(
                        "redis.mode = \"sentinel\" needs redis.master_name".into(),
                    ));
                }
                if self.sentinel_tls && !self.uses_tls() {
                    return Err(ConfigError::Invalid(
                        "redis.sentinel_tls needs a rediss:// url (the data nodes use TLS too)"
                            .into(),
                    ));
                }
                self.no_cluster_nodes()?;
            }
            RedisMode::Cluster => {
                if self.cluster_nodes.is_empty() {
                    return Err(ConfigError::Invalid(
                        "redis.mode = \"cluster\" needs redis.cluster_nodes (host:port, ...)"
                            .into(),
                    ));
                }
                parse_host_ports("cluster_nodes", &self.cluster_nodes)
                    .map_err(ConfigError::Invalid)?;
                self.no_sentinel_keys()?;
            }
        }
        Ok(())
    }

    fn no_sentinel_keys(&self) -> Result<(), ConfigError> {
        if self.sentinels.is_empty() && self.master_name.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(
                "redis.sentinels and redis.master_name need redis.mode = \"sentinel\"".into(),
            ))
        }
    }

    fn no_cluster_nodes(&self) -> Result<(), ConfigError> {
        if self.cluster_nodes.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(
                "redis.cluster_nodes needs redis.mode = \"cluster\"".into(),
            ))
        }
    }
}

fn default_wait_replicas_timeout_ms() -> u64 {
    500
}

fn no_secret() -> SecretString {
    SecretString::from(String::new())
}

/// Every entry of the list under `redis.<key>` as `host:port` ([`parse_host_port`]), or
/// an error naming the first that is not.
pub fn parse_host_ports(key: &str, list: &[String]) -> Result<Vec<(String, u16)>, String> {
    list.iter()
        .map(|s| parse_host_port(s).ok_or_else(|| format!("redis.{key}: {s:?} is not host:port")))
        .collect()
}

/// `host:port` (a bracketed IPv6 host allowed), port non-zero.
pub fn parse_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.trim().rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    (!host.is_empty()).then(|| (host.to_owned(), port))
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

/// Values shipped as examples in `deploy/` and `scripts/`. A node refuses to start with
/// any of them unless `dev.allow_insecure` is set. (The simulator's own credentials are
/// not here: Daraja itself refuses them.)
pub const EXAMPLE_VALUES: &[&str] = &[
    "https://callbacks.example.com",
    "replace-me",
    "replace-with-at-least-32-random-characters-cb",
    "replace-with-at-least-32-random-characters-sub",
    "replace-with-api-key-1-0123456789",
    "replace-with-api-key-2-0123456789",
    "dev-api-key-0123456789",
    "dev-subscribe-secret-0123456789abcdef",
    "dev-callback-secret-0123456789abcdef",
];

/// Whether `value` is one of [`EXAMPLE_VALUES`] or has their shape (`replace-with…`,
/// a `change-me` password).
pub fn is_example_value(value: &str) -> bool {
    let v = value.trim();
    EXAMPLE_VALUES.contains(&v) || v.starts_with("replace-with") || v.contains("change-me")
}

/// Refuses a secret that is an example value.
pub fn check_not_example(name: &str, value: &SecretString) -> Result<(), ConfigError> {
    if is_example_value(value.expose_secret()) {
        return Err(ConfigError::Invalid(format!(
            "{name} is an example value from the documentation or deploy/; set a real one"
        )));
    }
    Ok(())
}

/// Whether the host of an `http(s)://host[:port]/…` URL is a loopback name or address.
pub fn is_loopback_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The rules for the public base URL put into every CallBackURL: an http(s) URL without
/// whitespace or a trailing slash; https outside loopback; not a reserved example domain;
/// nothing Daraja is known to reject ("mpesa" anywhere in it, `../shared/daraja.md`).
/// `allow_insecure` (development) lifts the https and example rules.
pub fn check_callback_base_url(
    name: &str,
    url: &str,
    allow_insecure: bool,
) -> Result<(), ConfigError> {
    let bad = |why: &str| Err(ConfigError::Invalid(format!("{name} {why}")));
    if url.contains(char::is_whitespace) {
        return bad("must not contain whitespace (Daraja rejects such a CallBackURL)");
    }
    if url.to_ascii_lowercase().contains("mpesa") {
        return bad("must not contain \"mpesa\" anywhere (Daraja rejects such a CallBackURL)");
    }
    if !(url.starts_with("https://") || url.starts_with("http://")) || url.ends_with('/') {
        return bad("must be an http(s) URL without a trailing slash");
    }
    if allow_insecure {
        return Ok(());
    }
    if url.starts_with("http://") && !is_loopback_url(url) {
        return bad("must be https:// outside loopback (Daraja posts payment results to it)");
    }
    let host = url
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split(['/', ':', '?', '#'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let reserved = ["example.com", "example.net", "example.org"]
        .iter()
        .any(|d| host == *d || host.ends_with(&format!(".{d}")))
        || host.ends_with(".example")
        || host.ends_with(".invalid");
    if reserved || is_example_value(url) {
        return bad("is the placeholder or a reserved example domain; set the public URL of your ingest nodes");
    }
    Ok(())
}

/// A rotation's previous key: empty (no rotation), or a real secret different from the
/// current one.
pub fn check_previous_secret(
    name: &str,
    current: &SecretString,
    previous: &SecretString,
) -> Result<(), ConfigError> {
    let p = previous.expose_secret();
    if p.is_empty() {
        return Ok(());
    }
    require_secret(&format!("{name}_previous"), previous, 32)?;
    if p == current.expose_secret() {
        return Err(ConfigError::Invalid(format!(
            "{name}_previous must differ from {name} (leave it empty when not rotating)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn automatic_workers_leave_a_core_and_never_reach_zero() {
        let mut s = ServerSettings {
            host: "127.0.0.1".into(),
            port: 0,
            workers: 3,
            shutdown_timeout_ms: 1000,
            backlog: 16,
            trusted_proxies: Vec::new(),
        };
        assert_eq!(s.effective_workers(), 3);
        s.workers = 0;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(s.effective_workers(), cpus.saturating_sub(1).max(1));
        assert!(s.effective_workers() >= 1);
    }

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
secret = ""
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
    fn redis_topology_settings_are_checked_at_load() {
        let base = || RedisSettings::standalone("rediss://h:6380", "p");
        assert!(base().validate().is_ok(), "rediss:// is accepted");
        let mut s = base();
        s.url = SecretString::from("http://h".to_owned());
        assert!(s.validate().is_err());
        let mut s = RedisSettings::standalone("redis://h:1", "p");
        s.tls_ca_file = "/ca.pem".into();
        assert!(s.validate().is_err(), "TLS files need rediss://");
        let mut s = base();
        s.tls_cert_file = "/c.pem".into();
        assert!(s.validate().is_err(), "a certificate needs its key");
        let mut s = base();
        s.mode = RedisMode::Cluster;
        assert!(s.validate().is_err(), "cluster mode needs nodes");
        s.cluster_nodes = vec!["10.0.0.1:7000".into(), "[::1]:7001".into()];
        assert!(s.validate().is_ok());
        s.cluster_nodes.push("nohost".into());
        assert!(s.validate().is_err());
        let mut s = base();
        s.cluster_nodes = vec!["10.0.0.1:7000".into()];
        assert!(s.validate().is_err(), "cluster nodes need cluster mode");
        let mut s = base();
        s.mode = RedisMode::Sentinel;
        assert!(s.validate().is_err(), "sentinel mode needs sentinels");
        s.sentinels = vec!["10.0.0.1:26379".into(), "[::1]:26379".into()];
        assert!(s.validate().is_err(), "sentinel mode needs a master name");
        s.master_name = "m".into();
        assert!(s.validate().is_ok());
        s.sentinels.push("nohost".into());
        assert!(s.validate().is_err());
        let mut s = base();
        s.sentinels = vec!["h:1".into()];
        assert!(s.validate().is_err(), "sentinels without sentinel mode");
        let mut s = base();
        s.wait_replicas = 1;
        s.wait_replicas_timeout_ms = s.command_timeout_ms;
        assert!(s.validate().is_err(), "the WAIT must fit in a command");
        assert_eq!(parse_host_port("[::1]:26379"), Some(("::1".into(), 26379)));
        assert_eq!(parse_host_port("h:0"), None);
    }

    #[test]
    fn unknown_keys_are_refused_with_the_closest_known_one() {
        std::env::set_var("CFGTEST3__REDIS__POOL_SIZ", "5");
        let r: Result<Sample, _> = load(DEFAULTS, None, None, "CFGTEST3", &[]);
        let msg = r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("`redis.pool_siz`"), "{msg}");
        assert!(msg.contains("CFGTEST3__REDIS__POOL_SIZ"), "{msg}");
        assert!(msg.contains("`redis.pool_size`"), "{msg}");
        // The same from a file (here: extra TOML).
        let r: Result<Sample, _> = load(
            DEFAULTS,
            None,
            Some("[redis]\nkey_prefx = \"x\"\n"),
            "CFGTEST4",
            &[],
        );
        let msg = r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("`redis.key_prefx`") && msg.contains("`redis.key_prefix`"),
            "{msg}"
        );
        // Optional keys are known.
        let r: Result<Sample, _> = load_checked(
            DEFAULTS,
            None,
            Some("[redis]\nextra_opt = 1\n"),
            "CFGTEST5",
            &[],
            &["redis.extra_opt"],
        );
        assert!(r.is_ok());
    }

    #[test]
    fn callback_base_url_rules() {
        let ok = |u: &str| check_callback_base_url("u", u, false).is_ok();
        assert!(ok("https://pay.shop.co.ke"));
        assert!(ok("http://127.0.0.1:8081"));
        assert!(ok("http://localhost:8081"));
        assert!(ok("http://[::1]:8081"));
        assert!(!ok("https://callbacks.example.com"));
        assert!(!ok("https://cb.example.org"));
        assert!(!ok("http://cb.shop.co.ke"));
        assert!(!ok("https://shop.co.ke/mpesa"));
        assert!(!ok("https://MPesa-cb.shop.co.ke"));
        assert!(!ok("https://shop.co.ke/a b"));
        assert!(!ok("https://shop.co.ke/"));
        assert!(check_callback_base_url("u", "http://ingest:8081", true).is_ok());
        assert!(check_callback_base_url("u", "http://x/mpesa", true).is_err());
    }

    /// Every secret-like value shipped in deploy/ is refused.
    #[test]
    fn every_example_value_in_deploy_is_refused() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let files: Vec<PathBuf> = deploy_files(&root)
            .unwrap()
            .into_iter()
            .filter(|f| f.starts_with(root.join("deploy")))
            .collect();
        let mut checked = 0;
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            for line in text.lines() {
                let line = line.trim();
                if line.starts_with('#') {
                    continue;
                }
                let Some((k, v)) = line.split_once(": ") else {
                    continue;
                };
                let k = k.trim().to_ascii_uppercase();
                let secretish = ["SECRET", "API__KEYS", "API-KEYS", "PUBLIC_BASE_URL"]
                    .iter()
                    .any(|m| k.contains(m))
                    && !k.contains("SECRETKEYREF");
                let v = v.split(" #").next().unwrap_or(v).trim().trim_matches('"');
                let compose_dev = f.to_string_lossy().contains("compose");
                if !secretish || v.is_empty() || v.starts_with('{') || compose_dev {
                    continue;
                }
                if k.contains("PUBLIC_BASE_URL") {
                    assert!(
                        check_callback_base_url("u", v, false).is_err(),
                        "{}: {k} = {v} would be accepted",
                        f.display()
                    );
                } else {
                    for item in v.split(',') {
                        assert!(
                            is_example_value(item),
                            "{}: {k} = {item} would be accepted",
                            f.display()
                        );
                    }
                }
                checked += 1;
            }
        }
        assert!(checked >= 6, "only {checked} values found in deploy/");
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
