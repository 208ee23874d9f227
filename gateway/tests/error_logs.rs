//! The gateway's 5xx log lines name the payment: with Redis unreachable, a read of one
//! payment (GET, SSE, WebSocket) fails with 503, and each of its error lines (the cause,
//! tracing-actix-web's error event, the request's "request failed") carries
//! `checkout_request_id` in the JSON format the services write. Its own test binary: it installs the process's global subscriber.

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use stk_relay_gateway::config::GatewaySettings;
use stk_relay_gateway::startup::Application;
use stk_relay_shared::config::Settings as _;
use stk_relay_shared::ids::CheckoutRequestId;
use stk_relay_shared::shutdown::Shutdown;
use stk_relay_shared::telemetry::json_layer;
use stk_relay_shared::token::SubscribeTokens;
use tracing_subscriber::prelude::*;

const API_KEY: &str = "test-api-key-0123456789";
const SUBSCRIBE_SECRET: &str = "subscribe-secret-0123456789abcdef0123";

/// Every log line written, shared with the subscriber's writer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<Value> {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The `checkout_request_id` a line carries in any of its spans (or its own fields).
fn payment_of(line: &Value) -> Option<&str> {
    line.get("checkout_request_id")
        .or_else(|| line.pointer("/span/checkout_request_id"))
        .or_else(|| {
            line.get("spans")?
                .as_array()?
                .iter()
                .find_map(|s| s.get("checkout_request_id"))
        })
        .and_then(Value::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundreds_about_a_payment_log_its_checkout_request_id() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info"))
        .with(json_layer(move || writer.clone()))
        .init();

    let extra = format!(
        r#"
[server]
host = "127.0.0.1"
port = 0
workers = 1
[redis]
url = "redis://127.0.0.1:{redis}"
connect_timeout_ms = 200
command_timeout_ms = 200
[api]
keys = ["{API_KEY}"]
[tokens]
subscribe_secret = "{SUBSCRIBE_SECRET}"
callback_secret = "callback-secret-0123456789abcdef01234"
[callbacks]
public_base_url = "http://127.0.0.1:9"
[daraja]
base_url = "http://127.0.0.1:{daraja}"
consumer_key = "k"
consumer_secret = "s"
passkey = "p"
"#,
        redis = dead_port(),
        daraja = dead_port(),
    );
    let settings = GatewaySettings::load_with(None, Some(&extra)).expect("settings");
    let shutdown = Shutdown::new();
    let app = Application::build(settings, shutdown.clone())
        .await
        .expect("build");
    let base = app.base_url();
    tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();
    let tokens = SubscribeTokens::new(secrecy::SecretString::from(SUBSCRIBE_SECRET.to_owned()));
    let token_for = |id: &str| {
        let id = CheckoutRequestId::parse(id).expect("id");
        tokens.issue(&id, chrono::Utc::now() + chrono::Duration::minutes(5))
    };

    let get_id = "ws_CO_010120240000000001";
    let resp = client
        .get(format!("{base}/v1/payments/{get_id}"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status().as_u16(), 503, "GET with Redis down");

    let sse_id = "ws_CO_010120240000000002";
    let resp = client
        .get(format!(
            "{base}/v1/payments/{sse_id}/events?token={}",
            token_for(sse_id)
        ))
        .send()
        .await
        .expect("SSE");
    assert_eq!(resp.status().as_u16(), 503, "SSE with Redis down");

    let ws_id = "ws_CO_010120240000000003";
    let resp = client
        .get(format!(
            "{base}/v1/payments/{ws_id}/ws?token={}",
            token_for(ws_id)
        ))
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .expect("WS");
    assert_eq!(resp.status().as_u16(), 503, "WebSocket with Redis down");

    let lines = captured.lines();
    for (route, id) in [("GET", get_id), ("SSE", sse_id), ("WS", ws_id)] {
        let about: Vec<&Value> = lines.iter().filter(|l| payment_of(l) == Some(id)).collect();
        let has = |level: &str, message: &str| {
            about.iter().any(|l| {
                l["level"] == level && l["message"].as_str().is_some_and(|m| m.contains(message))
            })
        };
        assert!(
            has("ERROR", "service unavailable"),
            "{route}: no ERROR line with the cause names {id}: {about:#?}"
        );
        assert!(
            has("ERROR", "Error encountered while processing"),
            "{route}: tracing-actix-web's error line does not name {id}: {about:#?}"
        );
        assert!(
            has("WARN", "request failed"),
            "{route}: the request's 'request failed' does not name {id}: {about:#?}"
        );
    }
    // The lines are real JSON lines of the service, not just these.
    assert!(lines.len() >= 6, "{} lines captured", lines.len());
    shutdown.trigger();
}
