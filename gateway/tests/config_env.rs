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
    let mut files = vec![root.join("scripts/dev-up.sh")];
    let mut dirs = vec![root.join("deploy")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                files.push(p);
            }
        }
    }
    let mut seen = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        seen += text.matches("GATEWAY__").count();
        let unknown = stk_relay_shared::config::unknown_env_keys_in(
            &text,
            "GATEWAY",
            GatewaySettings::DEFAULTS,
            GatewaySettings::OPTIONAL_KEYS,
        )
        .unwrap();
        assert!(
            unknown.is_empty(),
            "{}: unknown keys {unknown:?}",
            f.display()
        );
    }
    assert!(seen > 10, "only {seen} GATEWAY__ variables found");
}
