//! Runs the headless-Chromium scripts of `tests/browser/` (Playwright over Debian's
//! `chromium`) as child processes and reads their JSON lines. `scripts/test.sh` installs
//! Chromium and the scripts' npm dependencies; a missing one fails the test with the fix.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::bins::workspace_root;

/// `tests/browser/`.
pub fn scripts_dir() -> PathBuf {
    workspace_root().join("tests").join("browser")
}

/// Where the tests put screenshots: `docs/screenshots/` when `STK_E2E_SCREENSHOTS=docs`
/// (to refresh the ones the README shows), else the test's log directory.
pub fn screenshot_path(log_dir: &Path, name: &str) -> PathBuf {
    if std::env::var("STK_E2E_SCREENSHOTS").is_ok_and(|v| v == "docs") {
        workspace_root().join("docs").join("screenshots").join(name)
    } else {
        log_dir.join(name)
    }
}

fn check_setup() -> Result<()> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).is_file() {
        bail!("{chromium} is missing: run scripts/test.sh, which installs Debian's chromium");
    }
    if !scripts_dir()
        .join("node_modules")
        .join("playwright-core")
        .is_dir()
    {
        bail!(
            "tests/browser/node_modules is missing: run scripts/test.sh (npm ci in tests/browser)"
        );
    }
    Ok(())
}

/// One running script.
pub struct BrowserRun {
    child: Child,
    events: mpsc::Receiver<Value>,
    log: PathBuf,
    seen: Vec<Value>,
}

impl BrowserRun {
    /// Starts `node tests/browser/<script>` with `envs`; its stderr goes to
    /// `<log_dir>/<name>.browser.log`.
    pub fn start(
        script: &str,
        name: &str,
        envs: &[(String, String)],
        log_dir: &Path,
    ) -> Result<Self> {
        check_setup()?;
        let log = log_dir.join(format!("{name}.browser.log"));
        let err =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = Command::new("node")
            .arg(scripts_dir().join(script))
            .current_dir(scripts_dir())
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .context("spawning node (scripts/test.sh installs Node.js)")?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("node stdout not captured"))?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let v = serde_json::from_str::<Value>(&line)
                    .unwrap_or_else(|_| serde_json::json!({"event": "unparsed", "line": line}));
                if tx.send(v).await.is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            events: rx,
            log,
            seen: Vec::new(),
        })
    }

    fn context(&self) -> String {
        let stderr = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
        format!(
            "events so far: {}\nbrowser stderr (last lines):\n{}",
            serde_json::to_string(&self.seen).unwrap_or_default(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    /// Waits for the event named `name` (skipping others), within `within`.
    pub async fn wait_event(&mut self, name: &str, within: Duration) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(v)) => {
                    self.seen.push(v.clone());
                    let ev = v.get("event").and_then(Value::as_str).unwrap_or("");
                    if ev == name {
                        return Ok(v);
                    }
                    if ev == "failed" {
                        bail!("browser script failed: {v}\n{}", self.context());
                    }
                }
                Ok(None) => bail!("browser script ended before {name:?}\n{}", self.context()),
                Err(_) => bail!(
                    "no {name:?} from the browser within {within:?}\n{}",
                    self.context()
                ),
            }
        }
    }

    /// Waits for the `done` event and the script's successful exit.
    pub async fn done(mut self, within: Duration) -> Result<Value> {
        let v = self.wait_event("done", within).await?;
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .map_err(|_| anyhow!("browser script did not exit after done\n{}", self.context()))??;
        if !status.success() {
            bail!("browser script exited with {status}\n{}", self.context());
        }
        Ok(v)
    }
}
