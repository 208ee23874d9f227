//! The ingest's configuration keys as the deploy files use them.

use stk_relay_callback_ingest::config::IngestSettings;
use stk_relay_shared::config::Settings;

/// Every `INGEST__…` variable that the shipped deploy files and scripts set is a key the
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
        seen += text.matches("INGEST__").count();
        let unknown = stk_relay_shared::config::unknown_env_keys_in(
            &text,
            "INGEST",
            IngestSettings::DEFAULTS,
            IngestSettings::OPTIONAL_KEYS,
        )
        .unwrap();
        assert!(
            unknown.is_empty(),
            "{}: unknown keys {unknown:?}",
            f.display()
        );
    }
    assert!(seen > 10, "only {seen} INGEST__ variables found");
}
