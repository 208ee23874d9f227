//! The gateway's configuration, loaded exactly as `stk-relay-gateway` loads it: its
//! embedded defaults, then the file (`--config`), then `GATEWAY__…` variables, with the
//! same list keys and the same unknown-key check.
//!
//! It is not validated as a whole here: `payment show` needs only `[redis]`, and
//! `doctor` reports the gateway's own validation as one of its checks instead of
//! refusing to run. Commands validate the sections they use.

use std::path::Path;

use stk_relay_gateway::config::GatewaySettings;
use stk_relay_shared::config::{load_checked, ConfigError, Settings};
use stk_relay_shared::keyspace::Keyspace;
use stk_relay_shared::store::{RedisPool, StoreError};

/// Loads the gateway configuration without validating it.
pub fn load(file: Option<&Path>) -> Result<GatewaySettings, ConfigError> {
    load_checked(
        GatewaySettings::DEFAULTS,
        file,
        None,
        GatewaySettings::ENV_PREFIX,
        GatewaySettings::LIST_KEYS,
        GatewaySettings::OPTIONAL_KEYS,
    )
}

/// A one-connection pool over the configured topology (standalone, Sentinel or
/// Cluster), after checking the `[redis]` section, and the keyspace under its prefix.
pub fn redis(s: &GatewaySettings) -> Result<(RedisPool, Keyspace), crate::error::AdminError> {
    s.redis.validate()?;
    let mut redis = s.redis.clone();
    redis.pool_size = 1;
    let pool = RedisPool::new(&redis)?;
    Ok((pool, Keyspace::new(s.redis.key_prefix.clone())))
}

/// Runs `cmd` on a pooled connection within the pool's command timeout.
pub async fn query<T: redis::FromRedisValue>(
    pool: &RedisPool,
    cmd: &redis::Cmd,
) -> Result<T, StoreError> {
    tokio::time::timeout(pool.command_timeout(), async {
        let mut conn = pool.get().await?;
        cmd.query_async::<T>(&mut conn)
            .await
            .map_err(StoreError::from)
    })
    .await
    .map_err(|_| StoreError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_file_is_read_as_the_gateway_reads_it() {
        let path = std::env::temp_dir().join(format!(
            "stk-admin-settings-{}-{}.toml",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
        ));
        std::fs::write(
            &path,
            "[redis]\nkey_prefix = \"shop-a\"\nmode = \"cluster\"\ncluster_nodes = [\"10.0.0.1:7000\"]\n\n[callbacks]\npublic_base_url = \"https://cb.shop.co.ke\"\n",
        )
        .unwrap();
        let s = load(Some(&path)).unwrap();
        assert_eq!(s.redis.key_prefix, "shop-a");
        assert_eq!(s.redis.mode, stk_relay_shared::config::RedisMode::Cluster);
        assert_eq!(s.callbacks.public_base_url, "https://cb.shop.co.ke");
        // Not validated as a whole (no API keys, no secrets) ...
        assert!(s.validate().is_err());
        // ... but [redis] is, before a connection is made.
        assert!(s.redis.validate().is_ok());

        // A misspelt key is refused, as the gateway refuses it.
        std::fs::write(&path, "[redis]\nkey_prefx = \"x\"\n").unwrap();
        let err = load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("redis.key_prefix"), "{err}");
        std::fs::remove_file(&path).unwrap();
    }
}
