//! Debian's `nginx` in front of the cluster, running `deploy/nginx/stk-relay.conf`.
//!
//! The shipped file is a template: [`render`] fills in its placeholders (listen ports,
//! upstream addresses, the access logs' directory); a small main configuration written by
//! the harness sets what a non-root nginx needs (its own prefix directory, error log, pid
//! file and temp paths) and `include`s the rendered file in its `http { }` block.
//!
//! nginx runs in the foreground (`daemon off`) with its master process, as in production,
//! on two free ports of 127.0.0.1: one for the gateways, one for the ingest nodes. The
//! upstream nodes need not run yet: a test usually starts nginx first, on ports it then
//! hands to the cluster ([`crate::ClusterOptions::gateway_ports`]).
//!
//! Program: `STK_E2E_NGINX`, else `/usr/sbin/nginx` (Debian's package), else `nginx` on
//! `PATH`. Files: `target/e2e-logs/<test>.nginx/` (config, `error.log`, the access logs
//! `stk-relay-gateway.log` and `stk-relay-callbacks.log`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use tokio::process::{Child, Command};

use crate::bins::{self, Binaries};
use crate::redis_server::free_port;
use crate::wait;

/// The shipped configuration, relative to the workspace root.
pub const TEMPLATE: &str = "deploy/nginx/stk-relay.conf";

/// The nginx program to run.
pub fn program() -> PathBuf {
    if let Ok(p) = std::env::var("STK_E2E_NGINX") {
        return PathBuf::from(p);
    }
    let debian = Path::new("/usr/sbin/nginx");
    if debian.exists() {
        return debian.to_owned();
    }
    PathBuf::from("nginx")
}

/// What to put behind nginx: `host:port` of each gateway and each ingest node.
#[derive(Debug, Clone)]
pub struct Upstreams {
    pub gateways: Vec<String>,
    pub ingests: Vec<String>,
}

/// Fills in the template's placeholders. A `server {{GATEWAY_1}} …;` line is repeated for
/// each gateway (and `{{INGEST_1}}` for each ingest node); lines naming a further
/// numbered placeholder (`{{GATEWAY_2}}`, …) are dropped, so any number of nodes fits.
/// Fails if a placeholder is left.
pub fn render(
    template: &str,
    up: &Upstreams,
    gateway_listen: &str,
    ingest_listen: &str,
    log_dir: &str,
) -> Result<String> {
    if up.gateways.is_empty() || up.ingests.is_empty() {
        bail!("nginx needs at least one gateway and one ingest node");
    }
    let mut out = String::with_capacity(template.len() + 256);
    for line in template.lines() {
        let is_comment = line.trim_start().starts_with('#');
        let mut expanded = false;
        for (prefix, nodes) in [("{{GATEWAY_", &up.gateways), ("{{INGEST_", &up.ingests)] {
            let Some(at) = line.find(prefix) else {
                continue;
            };
            let rest = &line[at + prefix.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if digits.is_empty() || is_comment {
                continue;
            }
            let placeholder = format!("{prefix}{digits}}}}}");
            if digits == "1" {
                for node in nodes {
                    out.push_str(&line.replace(&placeholder, node));
                    out.push('\n');
                }
            }
            expanded = true;
        }
        if !expanded {
            out.push_str(line);
            out.push('\n');
        }
    }
    let out = out
        .replace("{{GATEWAY_LISTEN}}", gateway_listen)
        .replace("{{INGEST_LISTEN}}", ingest_listen)
        .replace("{{LOG_DIR}}", log_dir);
    let code: String = out
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    if let Some(at) = code.find("{{") {
        let end = code[at..].find("}}").map_or(code.len(), |e| at + e + 2);
        bail!("placeholder {} left in the nginx config", &code[at..end]);
    }
    Ok(out)
}

/// A running nginx. Stopped (SIGTERM to the master, which stops its workers) when dropped.
pub struct Nginx {
    dir: PathBuf,
    conf: PathBuf,
    gateway_port: u16,
    ingest_port: u16,
    child: Option<Child>,
    pid: u32,
}

impl Nginx {
    /// Renders the shipped config for `up`, starts nginx on two free ports and waits until
    /// both ports answer HTTP (with anything: the upstreams may not be up yet).
    pub async fn start(test_name: &str, up: &Upstreams) -> Result<Self> {
        let bins: &'static Binaries = tokio::task::spawn_blocking(bins::binaries)
            .await
            .map_err(|e| anyhow!("building the service binaries panicked: {e}"))?;
        let dir = bins
            .target_dir
            .join("e2e-logs")
            .join(format!("{test_name}.nginx"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("tmp"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let template_path = bins::workspace_root().join(TEMPLATE);
        let template = std::fs::read_to_string(&template_path)
            .with_context(|| format!("reading {}", template_path.display()))?;
        eprintln!("e2e: {test_name}: nginx files in {}", dir.display());

        // Another process may take a probed port before nginx binds it; nginx then exits
        // and we try other ports.
        let mut last = None;
        for _ in 0..5 {
            let (gateway_port, ingest_port) = (free_port().await?, free_port().await?);
            if gateway_port == ingest_port {
                continue;
            }
            let site = render(
                &template,
                up,
                &format!("127.0.0.1:{gateway_port}"),
                &format!("127.0.0.1:{ingest_port}"),
                &dir.display().to_string(),
            )?;
            std::fs::write(dir.join("stk-relay.conf"), site)?;
            let conf = dir.join("nginx.conf");
            std::fs::write(&conf, main_conf(&dir))?;
            let mut nginx = Self {
                dir: dir.clone(),
                conf,
                gateway_port,
                ingest_port,
                child: None,
                pid: 0,
            };
            match nginx.spawn_and_wait().await {
                Ok(()) => return Ok(nginx),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("nginx did not start")))
    }

    /// `http://127.0.0.1:PORT` of the gateway server.
    pub fn gateway_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.gateway_port)
    }

    /// `ws://127.0.0.1:PORT` of the gateway server.
    pub fn gateway_ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.gateway_port)
    }

    /// `http://127.0.0.1:PORT` of the callback server.
    pub fn ingest_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ingest_port)
    }

    pub fn ingest_port(&self) -> u16 {
        self.ingest_port
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn error_log(&self) -> PathBuf {
        self.dir.join("error.log")
    }

    /// The last lines of nginx's error log, for failure messages.
    pub fn error_tail(&self) -> String {
        let text = std::fs::read_to_string(self.error_log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Re-renders the config for `up` (same ports) and reloads nginx (SIGHUP): new workers
    /// start with it, old ones finish their connections. Waits until the master logged
    /// the reload and started a new worker.
    pub async fn reload(&mut self, up: &Upstreams) -> Result<()> {
        let template = std::fs::read_to_string(bins::workspace_root().join(TEMPLATE))?;
        let site = render(
            &template,
            up,
            &format!("127.0.0.1:{}", self.gateway_port),
            &format!("127.0.0.1:{}", self.ingest_port),
            &self.dir.display().to_string(),
        )?;
        std::fs::write(self.dir.join("stk-relay.conf"), site)?;
        let before = self.count_in_error_log("reconfiguring");
        signal(self.pid, "HUP")?;
        wait::until("nginx to reload", crate::STEP, || async {
            let log = std::fs::read_to_string(self.error_log()).unwrap_or_default();
            let reloaded = log.matches("reconfiguring").count() > before;
            let after = log.rsplit("reconfiguring").next().unwrap_or("");
            if log.contains("[emerg]") && reloaded {
                bail!("nginx refused the new config:\n{}", self.error_tail());
            }
            Ok((reloaded && after.contains("start worker process")).then_some(()))
        })
        .await
    }

    /// Graceful stop (SIGQUIT: workers finish their requests), bounded by `within`.
    pub async fn stop(&mut self, within: Duration) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            signal(self.pid, "QUIT")?;
            tokio::time::timeout(within, child.wait())
                .await
                .context("nginx did not stop after SIGQUIT")??;
        }
        Ok(())
    }

    fn count_in_error_log(&self, needle: &str) -> usize {
        std::fs::read_to_string(self.error_log())
            .unwrap_or_default()
            .matches(needle)
            .count()
    }

    async fn spawn_and_wait(&mut self) -> Result<()> {
        let dir = self.dir.display().to_string();
        let stderr = std::fs::File::create(self.dir.join("nginx.stderr.log"))?;
        let mut child = Command::new(program())
            .arg("-p")
            .arg(&self.dir)
            .arg("-c")
            .arg(&self.conf)
            .arg("-e")
            .arg(self.error_log())
            .arg("-g")
            .arg(format!("daemon off; pid {dir}/nginx.pid;"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", program().display()))?;
        self.pid = child.id().ok_or_else(|| anyhow!("nginx has no pid"))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let urls = [self.gateway_url(), self.ingest_url()];
        let answered = wait::until("nginx to answer on both ports", crate::STEP, || {
            let exited = child.try_wait();
            let http = http.clone();
            let urls = urls.clone();
            async move {
                if let Ok(Some(status)) = exited {
                    bail!("nginx exited: {status}");
                }
                for url in &urls {
                    // Any HTTP answer will do (502 while the upstreams are down).
                    http.get(format!("{url}/healthz")).send().await?;
                }
                Ok(Some(()))
            }
        })
        .await;
        match answered {
            Ok(()) => {
                self.child = Some(child);
                Ok(())
            }
            Err(e) => {
                // TERM first, so that the master takes its workers (and ports) with it.
                let _ = signal(self.pid, "TERM");
                if tokio::time::timeout(Duration::from_secs(3), child.wait())
                    .await
                    .is_err()
                {
                    child.start_kill().ok();
                    let _ = child.wait().await;
                }
                Err(e.context(format!(
                    "nginx did not start; error log:\n{}\nstderr: {}",
                    self.error_tail(),
                    std::fs::read_to_string(self.dir.join("nginx.stderr.log")).unwrap_or_default()
                )))
            }
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if std::thread::panicking() {
                eprintln!("e2e: nginx files: {}", self.dir.display());
            }
            // SIGTERM, not SIGKILL: a killed master would leave its workers running, still
            // holding the listening ports. Bounded; kill_on_drop is the fallback.
            let _ = signal(self.pid, "TERM");
            let deadline = std::time::Instant::now() + Duration::from_secs(3);
            while std::time::Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn signal(pid: u32, sig: &str) -> Result<()> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    anyhow::ensure!(status.success(), "kill -{sig} {pid} failed");
    Ok(())
}

/// The main configuration: everything that differs from a system nginx (prefix-local
/// files, room for many connections) and an `include` of the rendered `stk-relay.conf`.
/// One worker process, so that round-robin is one sequence: two requests in a row go to
/// two different upstreams (a test relies on it to know a request's gateway).
fn main_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "# Written by tests/src/nginx.rs; the site itself is stk-relay.conf.\n\
         worker_processes 1;\n\
         worker_rlimit_nofile 8192;\n\
         error_log {d}/error.log notice;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
         \x20   client_body_temp_path {d}/tmp/client_body;\n\
         \x20   proxy_temp_path {d}/tmp/proxy;\n\
         \x20   fastcgi_temp_path {d}/tmp/fastcgi;\n\
         \x20   uwsgi_temp_path {d}/tmp/uwsgi;\n\
         \x20   scgi_temp_path {d}/tmp/scgi;\n\
         \x20   include {d}/stk-relay.conf;\n\
         }}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_any_number_of_nodes_and_leaves_no_placeholder() {
        let template = std::fs::read_to_string(bins::workspace_root().join(TEMPLATE)).unwrap();
        let up = Upstreams {
            gateways: vec![
                "10.0.0.1:8080".into(),
                "10.0.0.2:8080".into(),
                "10.0.0.3:8080".into(),
            ],
            ingests: vec!["10.0.1.1:8081".into()],
        };
        let out = render(&template, &up, "8080", "8081", "/var/log/nginx").unwrap();
        assert!(out.contains("server 10.0.0.3:8080 max_fails=0;"), "{out}");
        assert_eq!(out.matches("server 10.0.1.1:8081").count(), 1);
        assert!(!out.contains("server {{"), "{out}");
        assert!(out.contains("listen 8080;") && out.contains("listen 8081;"));
    }
}
