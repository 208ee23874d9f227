//! Configuration from the environment. In its own test binary: it sets process
//! environment variables, which the other tests' configuration loads would see.

use stk_relay_gateway::config::GatewaySettings;
use stk_relay_shared::config::Settings;

#[test]
fn a_misspelt_environment_variable_stops_the_gateway() {
    let base = r#"
[api]
keys = ["test-api-key-0123456789"]
[tokens]
subscribe_secret = "subscribe-secret-0123456789abcdef0123"
callback_secret = "callback-secret-0123456789abcdef01234"
[callbacks]
public_base_url = "https://pay.shop.co.ke"
[daraja]
consumer_key = "k"
consumer_secret = "s"
passkey = "p"
"#;
    assert!(GatewaySettings::load_with(None, Some(base)).is_ok());
    std::env::set_var("GATEWAY__API__ALLOWED_ORIGIN", "https://shop.example");
    let e = GatewaySettings::load_with(None, Some(base))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    std::env::remove_var("GATEWAY__API__ALLOWED_ORIGIN");
    assert!(e.contains("GATEWAY__API__ALLOWED_ORIGIN"), "{e}");
    assert!(e.contains("`api.allowed_origins`"), "{e}");
}

/// Every `GATEWAY__…` variable that the shipped deploy files and scripts set is a key the
/// service knows (an unknown one would stop it at start).
#[test]
fn deploy_files_use_only_known_keys() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let (unknown, seen) = stk_relay_shared::config::unknown_keys_in_deploy_files(
        &root,
        "GATEWAY",
        GatewaySettings::DEFAULTS,
        GatewaySettings::OPTIONAL_KEYS,
    )
    .unwrap();
    assert!(unknown.is_empty(), "unknown keys: {unknown:?}");
    assert!(seen > 10, "only {seen} GATEWAY__ variables found");
}
