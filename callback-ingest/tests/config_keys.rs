//! The ingest's configuration keys as the deploy files use them.

use stk_relay_callback_ingest::config::IngestSettings;
use stk_relay_shared::config::Settings;

/// Every `INGEST__…` variable that the shipped deploy files and scripts set is a key the
/// service knows (an unknown one would stop it at start).
#[test]
fn deploy_files_use_only_known_keys() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let (unknown, seen) = stk_relay_shared::config::unknown_keys_in_deploy_files(
        &root,
        "INGEST",
        IngestSettings::DEFAULTS,
        IngestSettings::OPTIONAL_KEYS,
    )
    .unwrap();
    assert!(unknown.is_empty(), "unknown keys: {unknown:?}");
    assert!(seen > 10, "only {seen} INGEST__ variables found");
}
