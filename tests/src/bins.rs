//! Where the service binaries are, and building them once per test process.
//!
//! Cargo only sets `CARGO_BIN_EXE_<name>` for a package's own tests, so this package
//! finds the binaries next to its own executable: `…/target/<profile>/deps/<test>` or
//! `…/target/<profile>/<bin>` both lead to `…/target/<profile>/`.
//!
//! The first caller checks that every binary exists and is newer than every source file
//! of the service packages (`shared`, `gateway`, `callback-ingest`, `daraja-sim`,
//! `standalone`, `admin`, the workspace `Cargo.toml`/`Cargo.lock`). If not, it runs
//! `cargo build --bins -p <the five packages>` in the same profile and target dir, so
//! the suite never runs stale binaries. (It does not build when they are fresh: a build
//! from here selects other packages than the outer `cargo test`, so Cargo would unify
//! features differently and rebuild shared dependencies back and forth.) A failed build
//! fails every test with cargo's output. `STK_E2E_SKIP_BUILD=1` never builds;
//! `STK_E2E_FORCE_BUILD=1` always does. A missing binary is always an error.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

pub const GATEWAY_BIN: &str = "stk-relay-gateway";
pub const INGEST_BIN: &str = "stk-relay-callback-ingest";
pub const SIM_BIN: &str = "daraja-sim";
pub const STANDALONE_BIN: &str = "stk-relay";
pub const ADMIN_BIN: &str = "stk-relay-admin";
const PACKAGES: [&str; 5] = [
    "stk-relay-gateway",
    "stk-relay-callback-ingest",
    "stk-relay-daraja-sim",
    "stk-relay",
    "stk-relay-admin",
];

/// Paths of the service binaries and of the target dir they live in.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub gateway: PathBuf,
    pub ingest: PathBuf,
    pub sim: PathBuf,
    /// The standalone process (`stk-relay`).
    pub standalone: PathBuf,
    /// The operator CLI (`stk-relay-admin`).
    pub admin: PathBuf,
    /// `…/target`
    pub target_dir: PathBuf,
    /// `…/target/<profile>`
    pub profile_dir: PathBuf,
}

/// The binaries, built once per process. Panics (failing the test) when they cannot be had.
pub fn binaries() -> &'static Binaries {
    static BINS: OnceLock<Result<Binaries, String>> = OnceLock::new();
    match BINS.get_or_init(locate_and_build) {
        Ok(b) => b,
        Err(e) => panic!("e2e: service binaries unavailable: {e}"),
    }
}

/// The workspace root (this package's parent directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `…/target/<profile>` of the running executable.
pub fn profile_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| format!("{} has no parent", exe.display()))?
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir
            .parent()
            .ok_or_else(|| format!("{} has no parent", dir.display()))?
            .to_path_buf();
    }
    Ok(dir)
}

fn locate_and_build() -> Result<Binaries, String> {
    let profile_dir = profile_dir()?;
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| format!("{} has no parent", profile_dir.display()))?
        .to_path_buf();
    let bins = Binaries {
        gateway: profile_dir.join(GATEWAY_BIN),
        ingest: profile_dir.join(INGEST_BIN),
        sim: profile_dir.join(SIM_BIN),
        standalone: profile_dir.join(STANDALONE_BIN),
        admin: profile_dir.join(ADMIN_BIN),
        target_dir,
        profile_dir,
    };
    let flag = |name: &str| std::env::var(name).is_ok_and(|v| v == "1");
    if !flag("STK_E2E_SKIP_BUILD") && (flag("STK_E2E_FORCE_BUILD") || !fresh(&bins)) {
        build(&bins)?;
    }
    let missing: Vec<String> = bins
        .all()
        .iter()
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    if !missing.is_empty() {
        return Err(format!("missing after build: {}", missing.join(", ")));
    }
    Ok(bins)
}

impl Binaries {
    /// Every binary the suite runs.
    fn all(&self) -> [&PathBuf; 5] {
        [
            &self.gateway,
            &self.ingest,
            &self.sim,
            &self.standalone,
            &self.admin,
        ]
    }
}

/// Whether every binary exists and is newer than every service source file.
fn fresh(bins: &Binaries) -> bool {
    let root = workspace_root();
    let mut newest = SystemTime::UNIX_EPOCH;
    for f in ["Cargo.toml", "Cargo.lock"] {
        newest = newest.max(mtime(&root.join(f)));
    }
    for dir in [
        "shared",
        "gateway",
        "callback-ingest",
        "daraja-sim",
        "standalone",
        "admin",
        "clients/js/src",
    ] {
        newest = newest.max(newest_under(&root.join(dir)));
    }
    bins.all().iter().all(|b| b.is_file() && mtime(b) > newest)
}

fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn newest_under(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return newest;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if p.is_dir() {
            newest = newest.max(newest_under(&p));
        } else {
            newest = newest.max(mtime(&p));
        }
    }
    newest
}

fn build(bins: &Binaries) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace_root())
        .arg("build")
        .arg("--bins")
        .arg("--target-dir")
        .arg(&bins.target_dir);
    for p in PACKAGES {
        cmd.arg("-p").arg(p);
    }
    match bins.profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.arg("--profile").arg(other);
        }
    }
    eprintln!("e2e: building service binaries: {cmd:?}");
    let out = cmd.output().map_err(|e| format!("running {cargo}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`cargo build` failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}
