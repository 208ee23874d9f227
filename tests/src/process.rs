//! A running service process (gateway, ingest or simulator).
//!
//! The process is started with its configuration in the environment and must print one
//! line containing `listening on http://HOST:PORT` on stdout; that URL is how the
//! harness reaches it. stdout and stderr go to `<log dir>/<name>.stdout.log` and
//! `<name>.stderr.log`; when a test panics, the paths are printed. The process is
//! killed when the [`Node`] is dropped.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use std::io::Write as _;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// What a process prints once it accepts connections.
pub const LISTENING_MARKER: &str = "listening on http://";

/// How long a process may take to print its listening line.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A gateway process.
pub type Gateway = Node;
/// A callback-ingest process.
pub type Ingest = Node;
/// The Daraja simulator process.
pub type Sim = Node;

/// A child process of the harness.
pub struct Node {
    name: String,
    url: String,
    pid: u32,
    child: Child,
    stdout_log: PathBuf,
    stderr_log: PathBuf,
}

impl Node {
    /// Spawns `program` with `args` and `envs` (added to the inherited environment) and
    /// waits for its listening line.
    pub async fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(String, String)],
        log_dir: &Path,
    ) -> Result<Self> {
        let stdout_log = log_dir.join(format!("{name}.stdout.log"));
        let stderr_log = log_dir.join(format!("{name}.stderr.log"));
        let stderr_file = std::fs::File::create(&stderr_log)
            .with_context(|| format!("creating {}", stderr_log.display()))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr_file))
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", program.display()))?;
        let pid = child.id().ok_or_else(|| anyhow!("{name} has no pid"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("{name}: stdout not captured"))?;
        let mut out_file = std::fs::File::create(&stdout_log)
            .with_context(|| format!("creating {}", stdout_log.display()))?;

        // Copy stdout to its log for the process's whole life, and report the URL of the
        // first listening line.
        let (url_tx, url_rx) = oneshot::channel::<String>();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut url_tx = Some(url_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = parse_listening(&line) {
                    if let Some(tx) = url_tx.take() {
                        let _ = tx.send(url);
                    }
                }
                // Small appends to a local file; blocking is negligible here.
                let _ = writeln!(out_file, "{line}");
            }
        });

        let mut node = Self {
            name: name.to_owned(),
            url: String::new(),
            pid,
            child,
            stdout_log,
            stderr_log,
        };
        match tokio::time::timeout(START_TIMEOUT, url_rx).await {
            Ok(Ok(url)) => {
                node.url = url;
                Ok(node)
            }
            Ok(Err(_)) => {
                let status = tokio::time::timeout(Duration::from_secs(2), node.child.wait())
                    .await
                    .ok()
                    .and_then(|r| r.ok());
                Err(anyhow!(
                    "{name} exited ({status:?}) before printing its listening line\n{}",
                    node.log_tails()
                ))
            }
            Err(_) => Err(anyhow!(
                "{name} printed no listening line within {START_TIMEOUT:?}\n{}",
                node.log_tails()
            )),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `ws://127.0.0.1:PORT`
    pub fn ws_url(&self) -> String {
        self.url.replacen("http://", "ws://", 1)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn stderr_log(&self) -> &Path {
        &self.stderr_log
    }

    pub fn stdout_log(&self) -> &Path {
        &self.stdout_log
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, and wait until the process is gone.
    pub async fn kill(&mut self) -> Result<()> {
        self.child.start_kill().ok();
        tokio::time::timeout(crate::STEP, self.child.wait())
            .await
            .with_context(|| format!("{} did not exit after SIGKILL", self.name))??;
        Ok(())
    }

    /// SIGTERM, and wait (at most `within`) for the process to exit by itself.
    pub async fn terminate(&mut self, within: Duration) -> Result<ExitStatus> {
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .context("running kill -TERM")?;
        anyhow::ensure!(status.success(), "kill -TERM {} failed", self.pid);
        tokio::time::timeout(within, self.child.wait())
            .await
            .with_context(|| format!("{} did not exit within {within:?} of SIGTERM", self.name))?
            .context("waiting for exit")
    }

    /// The last lines of both logs, for error messages.
    pub fn log_tails(&self) -> String {
        format!(
            "--- {} (last lines)\n{}\n--- {} (last lines)\n{}",
            self.stdout_log.display(),
            tail(&self.stdout_log, 20),
            self.stderr_log.display(),
            tail(&self.stderr_log, 20)
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "e2e: {} logs: {} {}",
                self.name,
                self.stdout_log.display(),
                self.stderr_log.display()
            );
        }
    }
}

/// The URL in a line such as `stk-relay-gateway listening on http://127.0.0.1:4000`
/// (also when the line is a JSON log record).
pub fn parse_listening(line: &str) -> Option<String> {
    let at = line.find(LISTENING_MARKER)?;
    let rest = &line[at + "listening on ".len()..];
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == ',')
        .unwrap_or(rest.len());
    let url = rest[..end].trim_end_matches('/');
    (url.len() > "http://".len()).then(|| url.to_owned())
}

fn tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("<unreadable: {e}>"),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_listening;

    #[test]
    fn listening_lines() {
        assert_eq!(
            parse_listening("stk-relay-gateway listening on http://127.0.0.1:4000").as_deref(),
            Some("http://127.0.0.1:4000")
        );
        assert_eq!(
            parse_listening(r#"{"msg":"daraja-sim listening on http://127.0.0.1:9/"}"#).as_deref(),
            Some("http://127.0.0.1:9")
        );
        assert_eq!(parse_listening("starting"), None);
    }
}
