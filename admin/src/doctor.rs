//! `doctor`: a node's settings as Daraja will see them. Each check is PASS or FAIL with a
//! one-line fix; a FAIL makes the command exit non-zero.
//!
//! 1. The gateway's configuration passes the gateway's own validation.
//! 2. `callbacks.public_base_url` is https, has no whitespace and does not contain
//!    "mpesa" (Daraja refuses such CallBackURLs), and its host resolves.
//! 3. `GET <callback base>/healthz` answers 200 through that public URL.
//! 4. OAuth against `daraja.base_url` with the configured consumer key and secret
//!    succeeds (the shared Daraja client's token call; the token is dropped unseen).
//! 5. Redis answers PING in the configured `redis.mode`.
//!
//! Every network step is bounded by [`NETWORK_TIMEOUT`] (Daraja: its own
//! `daraja.request_timeout_ms` too; Redis: `redis.command_timeout_ms`).

use std::time::Duration;

use serde::Serialize;
use stk_relay_gateway::config::GatewaySettings;
use stk_relay_shared::config::Settings as _;
use stk_relay_shared::daraja::DarajaClient;
use stk_relay_shared::store::RedisPool;

use crate::output::{Report, Table};

/// The bound on each network check.
pub const NETWORK_TIMEOUT: Duration = Duration::from_secs(5);

/// One check's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub pass: bool,
    /// What was found (never a secret).
    pub detail: String,
    /// How to fix it; empty when it passed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub fix: String,
}

impl Check {
    fn pass(name: &str, detail: impl Into<String>) -> Self {
        Self {
            name: name.to_owned(),
            pass: true,
            detail: detail.into(),
            fix: String::new(),
        }
    }

    fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name: name.to_owned(),
            pass: false,
            detail: detail.into(),
            fix: fix.into(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Doctor {
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl From<Doctor> for Report {
    fn from(d: Doctor) -> Self {
        let mut t = Table::with_header(["RESULT", "CHECK", "DETAIL"]);
        for c in &d.checks {
            t.row([
                if c.pass { "PASS" } else { "FAIL" }.to_owned(),
                c.name.clone(),
                c.detail.clone(),
            ]);
            if !c.fix.is_empty() {
                t.row([String::new(), String::new(), format!("fix: {}", c.fix)]);
            }
        }
        let failed = d.checks.iter().filter(|c| !c.pass).count();
        let text = format!(
            "{t}{}\n",
            if failed == 0 {
                "all checks passed".to_owned()
            } else {
                format!("{failed} of {} checks failed", d.checks.len())
            }
        );
        Report {
            ok: d.ok,
            text,
            json: serde_json::to_value(&d).unwrap_or_default(),
        }
    }
}

const URL_KEY: &str = "callbacks.public_base_url (GATEWAY__CALLBACKS__PUBLIC_BASE_URL)";

/// The offline checks of the callback base URL: https, no whitespace, no "mpesa".
pub fn url_checks(url: &str) -> Vec<Check> {
    let mut out = Vec::new();
    let name = "callback URL is https";
    out.push(if url.starts_with("https://") {
        Check::pass(name, url)
    } else {
        Check::fail(
            name,
            format!("{url:?} is not https"),
            format!("set {URL_KEY} to the https:// URL of your ingest nodes; Daraja posts results only to https"),
        )
    });
    let name = "callback URL has no whitespace";
    out.push(if url.contains(char::is_whitespace) {
        Check::fail(
            name,
            format!("{url:?} contains whitespace"),
            format!("remove the spaces, tabs or newlines from {URL_KEY}"),
        )
    } else {
        Check::pass(name, "none")
    });
    let name = "callback URL avoids \"mpesa\"";
    out.push(if url.to_ascii_lowercase().contains("mpesa") {
        Check::fail(
            name,
            format!("{url:?} contains \"mpesa\""),
            format!("use a host and path without the word \"mpesa\" (any case) in {URL_KEY}; Daraja rejects such CallBackURLs"),
        )
    } else {
        Check::pass(name, "not present")
    });
    out
}

/// Host and port of an http(s) URL.
pub fn host_port(url: &str) -> Option<(String, u16)> {
    let u = reqwest::Url::parse(url.trim()).ok()?;
    let host = u.host_str()?.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_owned(), u.port_or_known_default()?))
}

async fn resolves(url: &str) -> Check {
    let name = "callback host resolves";
    let Some((host, port)) = host_port(url) else {
        return Check::fail(
            name,
            format!("{url:?} is not a URL with a host"),
            format!("set {URL_KEY} to a URL such as https://callbacks.your-shop.co.ke"),
        );
    };
    let looked_up = tokio::time::timeout(
        NETWORK_TIMEOUT,
        tokio::net::lookup_host((host.as_str(), port)),
    )
    .await
    .map(|r| r.map(|mut addrs| addrs.next()));
    match looked_up {
        Ok(Ok(first)) => match first {
            Some(a) => Check::pass(name, format!("{host} → {}", a.ip())),
            None => Check::fail(
                name,
                format!("{host}: no address"),
                "publish an A or AAAA record for the callback host",
            ),
        },
        Ok(Err(e)) => Check::fail(
            name,
            format!("{host}: {e}"),
            "publish an A or AAAA record for the callback host in public DNS",
        ),
        Err(_) => Check::fail(
            name,
            format!("{host}: no answer within {}s", NETWORK_TIMEOUT.as_secs()),
            "check this machine's DNS resolver and the callback host's DNS records",
        ),
    }
}

async fn healthz(url: &str) -> Check {
    let name = "callback URL reaches an ingest (/healthz)";
    let target = format!("{}/healthz", url.trim_end_matches('/'));
    let client = match reqwest::Client::builder()
        .use_rustls_tls()
        .connect_timeout(NETWORK_TIMEOUT)
        .timeout(NETWORK_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => return Check::fail(name, format!("HTTP client: {e}"), "report this as a bug"),
    };
    let fix = format!(
        "make {target} reach a callback-ingest node from the internet (DNS, TLS certificate, load balancer route to /healthz)"
    );
    match client.get(&target).send().await {
        Ok(r) if r.status() == reqwest::StatusCode::OK => {
            Check::pass(name, format!("GET {target} → 200"))
        }
        Ok(r) => Check::fail(name, format!("GET {target} → {}", r.status()), fix),
        Err(e) if e.is_timeout() => Check::fail(
            name,
            format!(
                "GET {target}: no answer within {}s",
                NETWORK_TIMEOUT.as_secs()
            ),
            fix,
        ),
        Err(e) => Check::fail(name, format!("GET {target}: {}", error_chain(&e)), fix),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

async fn oauth(s: &GatewaySettings) -> Check {
    let name = "Daraja OAuth";
    let base = s.daraja.base_url.trim_end_matches('/').to_owned();
    let client = match DarajaClient::new(s.daraja.clone()) {
        Ok(c) => c,
        Err(e) => {
            return Check::fail(
                name,
                e.to_string(),
                "fix the [daraja] section (GATEWAY__DARAJA__…): base_url, consumer_key, consumer_secret, passkey, shortcode",
            )
        }
    };
    let bound = Duration::from_millis(s.daraja.request_timeout_ms).min(NETWORK_TIMEOUT * 3);
    match tokio::time::timeout(bound, client.access_token()).await {
        Ok(Ok(_token)) => Check::pass(name, format!("{base}: token received")),
        Ok(Err(e)) => Check::fail(
            name,
            format!("{base}: {e}"),
            "check daraja.consumer_key and daraja.consumer_secret against the app on developer.safaricom.co.ke, and that daraja.base_url is sandbox or production as the app is",
        ),
        Err(_) => Check::fail(
            name,
            format!("{base}: no token within {}s", bound.as_secs()),
            "check that this node can reach daraja.base_url over HTTPS (firewall, proxy, DNS)",
        ),
    }
}

async fn redis_ping(s: &GatewaySettings) -> Check {
    let mode = format!("{:?}", s.redis.mode).to_ascii_lowercase();
    let name = "Redis PING";
    let fix = "check redis.url, redis.mode and its sentinels / cluster_nodes (GATEWAY__REDIS__…), and that Redis is up and reachable from this node";
    if let Err(e) = s.redis.validate() {
        return Check::fail(name, e.to_string(), fix);
    }
    let mut redis = s.redis.clone();
    redis.pool_size = 1;
    let pool = match RedisPool::new(&redis) {
        Ok(p) => p,
        Err(e) => return Check::fail(name, format!("{mode}: {e}"), fix),
    };
    match pool.ping().await {
        Ok(()) => Check::pass(
            name,
            format!("{mode}: PONG (key prefix {:?})", s.redis.key_prefix),
        ),
        Err(e) => Check::fail(name, format!("{mode}: {e}"), fix),
    }
}

/// Runs every check. The network checks run one after another, each bounded.
pub async fn run(s: &GatewaySettings) -> Doctor {
    let mut checks = Vec::new();
    checks.push(match s.validate() {
        Ok(()) => Check::pass(
            "gateway configuration is valid",
            "as stk-relay-gateway validates it",
        ),
        Err(e) => Check::fail(
            "gateway configuration is valid",
            e.to_string(),
            "correct the named key; stk-relay-gateway refuses to start until then",
        ),
    });
    let url = s.callbacks.public_base_url.as_str();
    checks.extend(url_checks(url));
    checks.push(resolves(url).await);
    checks.push(healthz(url).await);
    checks.push(oauth(s).await);
    checks.push(redis_ping(s).await);
    Doctor {
        ok: checks.iter().all(|c| c.pass),
        checks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(url: &str) -> Vec<bool> {
        url_checks(url).iter().map(|c| c.pass).collect()
    }

    #[test]
    fn the_callback_url_rules() {
        assert_eq!(verdicts("https://cb.shop.co.ke"), [true, true, true]);
        assert_eq!(verdicts("http://cb.shop.co.ke"), [false, true, true]);
        assert_eq!(verdicts("https://cb.shop.co.ke/a b"), [true, false, true]);
        assert_eq!(verdicts("https://MPesa-cb.shop.co.ke"), [true, true, false]);
        assert_eq!(verdicts("https://cb.shop.co.ke/m-pesa"), [true, true, true]);
        let http = &url_checks("http://127.0.0.1:9")[0];
        assert!(http.fix.contains("https://"), "{}", http.fix);
        assert!(http.fix.contains("GATEWAY__CALLBACKS__PUBLIC_BASE_URL"));
    }

    #[test]
    fn host_and_port() {
        assert_eq!(
            host_port("https://cb.shop.co.ke"),
            Some(("cb.shop.co.ke".into(), 443))
        );
        assert_eq!(
            host_port("http://127.0.0.1:8081/x"),
            Some(("127.0.0.1".into(), 8081))
        );
        assert_eq!(host_port("https://[::1]:9"), Some(("::1".into(), 9)));
        assert_eq!(host_port("not a url"), None);
    }

    #[test]
    fn the_table_shows_verdicts_and_fixes() {
        let d = Doctor {
            ok: false,
            checks: vec![
                Check::pass("a", "fine"),
                Check::fail("b", "broken", "do this"),
            ],
        };
        let r: Report = d.into();
        assert!(!r.ok);
        assert_eq!(
            r.text,
            "RESULT  CHECK  DETAIL\nPASS    a      fine\nFAIL    b      broken\n               fix: do this\n1 of 2 checks failed\n"
        );
        assert_eq!(r.json["checks"][1]["fix"], "do this");
        assert!(r.json["checks"][0].get("fix").is_none());
    }
}
