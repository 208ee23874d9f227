//! API tests of the gateway's edge: the real `Application` on port 0, with Redis and
//! Daraja unreachable. They pin authentication, input validation, body limits and the
//! JSON error format, none of which may touch Redis or Daraja. The paths that do are
//! covered by the cross-process suite in `tests/`.

use serde_json::{json, Value};
use stk_relay_gateway::config::GatewaySettings;
use stk_relay_gateway::startup::Application;
use stk_relay_shared::config::Settings as _;
use stk_relay_shared::shutdown::Shutdown;

const API_KEY: &str = "test-api-key-0123456789";

/// A port with nothing listening on it (bound, then released).
fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

struct TestApp {
    base: String,
    client: reqwest::Client,
    _shutdown: Shutdown,
}

async fn spawn_app() -> TestApp {
    spawn_app_with("").await
}

async fn spawn_app_with(more: &str) -> TestApp {
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
max_body_bytes = 1024
allowed_origins = ["https://shop.example"]
[tokens]
subscribe_secret = "subscribe-secret-0123456789abcdef0123"
callback_secret = "callback-secret-0123456789abcdef01234"
[callbacks]
public_base_url = "http://127.0.0.1:9"
[daraja]
base_url = "http://127.0.0.1:{daraja}"
consumer_key = "k"
consumer_secret = "s"
passkey = "p"
{more}
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
    TestApp {
        base,
        client: reqwest::Client::new(),
        _shutdown: shutdown,
    }
}

async fn error_of(resp: reqwest::Response) -> (u16, String, String) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.expect("error body is JSON");
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

impl TestApp {
    async fn push(&self, auth: Option<&str>, body: String) -> reqwest::Response {
        let mut req = self
            .client
            .post(format!("{}/v1/stk/push", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send().await.expect("request")
    }
}

#[tokio::test]
async fn push_requires_an_api_key() {
    let app = spawn_app().await;
    let body = json!({"phone":"0712345678","amount":10,"account_reference":"A1"}).to_string();
    for auth in [
        None,
        Some("Bearer wrong-key-0123456789"),
        Some("Basic abc"),
        Some(API_KEY),
    ] {
        let (status, code, _) = error_of(app.push(auth, body.clone()).await).await;
        assert_eq!((status, code.as_str()), (401, "UNAUTHORIZED"), "{auth:?}");
    }
}

#[tokio::test]
async fn malformed_bodies_get_400_naming_the_problem() {
    let app = spawn_app().await;
    let auth = Some(format!("Bearer {API_KEY}"));
    let cases = [
        ("not json", "invalid JSON"),
        ("[]", "invalid JSON"),
        ("null", "invalid JSON"),
        (r#"{"phone":"0712345678","amount":10}"#, "account_reference"),
        (
            r#"{"phone":"0712345678","amount":10,"account_reference":"A","extra":1}"#,
            "extra",
        ),
        (
            r#"{"phone":12,"amount":10,"account_reference":"A"}"#,
            "invalid type",
        ),
    ];
    for (body, needle) in cases {
        let (status, code, message) = error_of(app.push(auth.as_deref(), body.into()).await).await;
        assert_eq!(
            (status, code.as_str()),
            (400, "MALFORMED_REQUEST"),
            "{body}"
        );
        assert!(message.contains(needle), "{body}: {message}");
    }
}

#[tokio::test]
async fn invalid_values_get_422_naming_the_field() {
    let app = spawn_app().await;
    let auth = Some(format!("Bearer {API_KEY}"));
    let cases = [
        (
            json!({"phone":"0812345678","amount":10,"account_reference":"A"}),
            "phone",
        ),
        (
            json!({"phone":"+255712345678","amount":10,"account_reference":"A"}),
            "phone",
        ),
        (
            json!({"phone":"0712345678","amount":10.5,"account_reference":"A"}),
            "amount",
        ),
        (
            json!({"phone":"0712345678","amount":0,"account_reference":"A"}),
            "amount",
        ),
        (
            json!({"phone":"0712345678","amount":250001,"account_reference":"A"}),
            "amount",
        ),
        (
            json!({"phone":"0712345678","amount":"ten","account_reference":"A"}),
            "amount",
        ),
        (
            json!({"phone":"0712345678","amount":10,"account_reference":"ORDER-1234567"}),
            "account_reference",
        ),
        (
            json!({"phone":"0712345678","amount":10,"account_reference":""}),
            "account_reference",
        ),
        (
            json!({"phone":"0712345678","amount":10,"account_reference":"A","description":"fourteen chars"}),
            "description",
        ),
    ];
    for (body, field) in cases {
        let (status, code, message) =
            error_of(app.push(auth.as_deref(), body.to_string()).await).await;
        assert_eq!(
            (status, code.as_str()),
            (422, "VALIDATION_FAILED"),
            "{body}"
        );
        assert!(message.starts_with(field), "{body}: {message}");
    }
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let app = spawn_app().await;
    let big = format!(
        r#"{{"phone":"0712345678","amount":10,"account_reference":"{}"}}"#,
        "A".repeat(2000)
    );
    let (status, code, _) = error_of(app.push(Some(&format!("Bearer {API_KEY}")), big).await).await;
    assert_eq!((status, code.as_str()), (413, "PAYLOAD_TOO_LARGE"));
}

#[tokio::test]
async fn bad_idempotency_keys_get_400() {
    let app = spawn_app().await;
    let resp = app
        .client
        .post(format!("{}/v1/stk/push", app.base))
        .header("authorization", format!("Bearer {API_KEY}"))
        .header("idempotency-key", "has spaces in it")
        .body(json!({"phone":"0712345678","amount":10,"account_reference":"A"}).to_string())
        .send()
        .await
        .expect("request");
    let (status, code, message) = error_of(resp).await;
    assert_eq!((status, code.as_str()), (400, "MALFORMED_REQUEST"));
    assert!(message.contains("Idempotency-Key"));
}

#[tokio::test]
async fn valid_push_with_redis_down_gets_503_not_a_push() {
    let app = spawn_app().await;
    let resp = app
        .client
        .post(format!("{}/v1/stk/push", app.base))
        .header("authorization", format!("Bearer {API_KEY}"))
        .header("idempotency-key", "order-1")
        .body(json!({"phone":"0712345678","amount":10,"account_reference":"A"}).to_string())
        .send()
        .await
        .expect("request");
    let (status, code, message) = error_of(resp).await;
    assert_eq!((status, code.as_str()), (503, "SERVICE_UNAVAILABLE"));
    assert!(
        !message.contains("redis://"),
        "5xx bodies stay generic: {message}"
    );
    // Without an Idempotency-Key too: no prompt is sent for a payment that cannot be
    // recorded (Daraja is unreachable here, so a push attempt would give 502).
    let body = json!({"phone":"0712345678","amount":10,"account_reference":"A"}).to_string();
    let (status, code, _) =
        error_of(app.push(Some(&format!("Bearer {API_KEY}")), body).await).await;
    assert_eq!((status, code.as_str()), (503, "SERVICE_UNAVAILABLE"));
}

#[tokio::test]
async fn payment_reads_need_a_valid_token() {
    let app = spawn_app().await;
    let id = "ws_CO_21072024125130652700961992";
    for url in [
        format!("{}/v1/payments/{id}", app.base),
        format!("{}/v1/payments/{id}?token=123.abc", app.base),
        format!(
            "{}/v1/payments/{id}/events?token=99999999999.AAAA",
            app.base
        ),
        format!("{}/v1/payments/{id}/ws?token=", app.base),
    ] {
        let (status, code, _) = error_of(app.client.get(&url).send().await.expect("request")).await;
        assert_eq!((status, code.as_str()), (401, "UNAUTHORIZED"), "{url}");
    }
    // The browser token cannot be replaced by a merchant key on the WebSocket route.
    let resp = app
        .client
        .get(format!("{}/v1/payments/{id}/ws", app.base))
        .header("authorization", format!("Bearer {API_KEY}"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 401);
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let app = spawn_app().await;
    let (status, code, _) = error_of(
        app.client
            .get(format!("{}/nope", app.base))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!((status, code.as_str()), (404, "NOT_FOUND"));
    let (status, code, _) = error_of(
        app.client
            .get(format!("{}/v1/stk/push", app.base))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!((status, code.as_str()), (405, "METHOD_NOT_ALLOWED"));
}

#[tokio::test]
async fn health_is_up_and_readiness_follows_redis() {
    let app = spawn_app().await;
    let h = app
        .client
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .expect("request");
    assert_eq!(h.status().as_u16(), 200);
    let r = app
        .client
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 503);
}

#[test]
fn configuration_is_validated_at_load() {
    let err = GatewaySettings::load_with(None, None).expect_err("defaults lack secrets");
    assert!(err.to_string().contains("must be set"), "{err}");
    let short = r#"
[api]
keys = ["short"]
[daraja]
consumer_key = "k"
consumer_secret = "s"
passkey = "p"
"#;
    let err = GatewaySettings::load_with(None, Some(short)).expect_err("short key");
    assert!(err.to_string().contains("16"), "{err}");
}

#[tokio::test]
async fn non_json_content_types_get_415() {
    let app = spawn_app().await;
    let resp = app
        .client
        .post(format!("{}/v1/stk/push", app.base))
        .header("authorization", format!("Bearer {API_KEY}"))
        .header("content-type", "text/plain")
        .body(json!({"phone":"0712345678","amount":10,"account_reference":"A"}).to_string())
        .send()
        .await
        .expect("request");
    let (status, code, _) = error_of(resp).await;
    assert_eq!((status, code.as_str()), (415, "UNSUPPORTED_MEDIA_TYPE"));
}

#[tokio::test]
async fn unknown_payment_subpaths_get_404() {
    let app = spawn_app().await;
    let resp = app
        .client
        .get(format!("{}/v1/payments/ws_CO_1/other", app.base))
        .send()
        .await
        .expect("request");
    let (status, code, _) = error_of(resp).await;
    assert_eq!((status, code.as_str()), (404, "NOT_FOUND"));
}

#[tokio::test]
async fn cors_allows_configured_origins_only() {
    let app = spawn_app().await;
    let url = format!("{}/v1/payments/ws_CO_1", app.base);
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, &url)
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let ok = preflight("https://shop.example").await.expect("request");
    assert_eq!(
        ok.headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("https://shop.example")
    );
    let other = preflight("https://evil.example").await.expect("request");
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn websockets_from_other_origins_are_refused() {
    let app = spawn_app().await;
    let tokens = stk_relay_shared::token::SubscribeTokens::new(secrecy::SecretString::from(
        "subscribe-secret-0123456789abcdef0123".to_owned(),
    ));
    let id = stk_relay_shared::ids::CheckoutRequestId::parse("ws_CO_1").expect("id");
    let token = tokens.issue(&id, chrono::Utc::now() + chrono::Duration::minutes(5));
    let resp = app
        .client
        .get(format!("{}/v1/payments/ws_CO_1/ws?token={token}", app.base))
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("request");
    let (status, code, _) = error_of(resp).await;
    assert_eq!((status, code.as_str()), (403, "FORBIDDEN"));
    // From the allowed origin the same request passes the origin check and reaches the
    // upgrade (which this plain GET is not): 400, not 403.
    let resp = app
        .client
        .get(format!("{}/v1/payments/ws_CO_1/ws?token={token}", app.base))
        .header("origin", "https://shop.example")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 400);
}

/// A valid configuration (as the tests above use), with `more` appended.
fn config_with(more: &str) -> Result<GatewaySettings, String> {
    let base = format!(
        r#"
[api]
keys = ["{API_KEY}"]
[tokens]
subscribe_secret = "subscribe-secret-0123456789abcdef0123"
callback_secret = "callback-secret-0123456789abcdef01234"
[daraja]
consumer_key = "k"
consumer_secret = "s"
passkey = "p"
{more}
"#
    );
    GatewaySettings::load_with(None, Some(&base)).map_err(|e| e.to_string())
}

#[test]
fn configuration_refuses_what_would_hurt() {
    // The shipped placeholder callback URL.
    let e = config_with("").unwrap_err();
    assert!(e.contains("callbacks.public_base_url"), "{e}");
    let ok = "[callbacks]\npublic_base_url = \"https://pay.shop.co.ke\"\n";
    assert!(config_with(ok).is_ok());
    // Plain http outside loopback, "mpesa" in the URL.
    for url in ["http://pay.shop.co.ke", "https://pay.shop.co.ke/mpesa"] {
        let e = config_with(&format!("[callbacks]\npublic_base_url = \"{url}\"\n")).unwrap_err();
        assert!(e.contains("callbacks.public_base_url"), "{url}: {e}");
    }
    // A misspelt key names itself and the closest known one.
    let e = config_with(&format!("{ok}[ws]\nmax_conections = 5\n")).unwrap_err();
    assert!(
        e.contains("`ws.max_conections`") && e.contains("`ws.max_connections`"),
        "{e}"
    );
    // Equal HMAC secrets; an example secret from deploy/.
    let same = format!(
        "{ok}[tokens]\nsubscribe_secret = \"same-secret-0123456789abcdef01234567\"\ncallback_secret = \"same-secret-0123456789abcdef01234567\"\n"
    );
    // (The [tokens] table is given twice: TOML refuses that, so build it without the base.)
    let e = GatewaySettings::load_with(
        None,
        Some(&format!(
            "[api]\nkeys = [\"{API_KEY}\"]\n[daraja]\nconsumer_key = \"k\"\nconsumer_secret = \"s\"\npasskey = \"p\"\n{same}"
        )),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("must differ"), "{e}");
    let example = format!(
        "[callbacks]\npublic_base_url = \"https://pay.shop.co.ke\"\n[tokens]\nsubscribe_secret = \"replace-with-at-least-32-random-characters-sub\"\ncallback_secret = \"callback-secret-0123456789abcdef01234\"\n[api]\nkeys = [\"{API_KEY}\"]\n[daraja]\nconsumer_key = \"k\"\nconsumer_secret = \"s\"\npasskey = \"p\"\n"
    );
    let e = GatewaySettings::load_with(None, Some(&example))
        .unwrap_err()
        .to_string();
    assert!(e.contains("example value"), "{e}");
}

#[tokio::test]
async fn history_needs_the_api_key_and_redis() {
    let app = spawn_app().await;
    let url = format!(
        "{}/v1/payments/ws_CO_21072024125130652700961992/history",
        app.base
    );
    for auth in [
        None,
        Some("Bearer 99999999999.AAAA"),
        Some("Bearer wrong-key"),
    ] {
        let mut req = app.client.get(&url);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let (status, code, _) = error_of(req.send().await.expect("request")).await;
        assert_eq!((status, code.as_str()), (401, "UNAUTHORIZED"), "{auth:?}");
    }
    // With the key it reads Redis, which is down here.
    let resp = app
        .client
        .get(&url)
        .header("authorization", format!("Bearer {API_KEY}"))
        .send()
        .await
        .expect("request");
    let (status, code, _) = error_of(resp).await;
    assert_eq!((status, code.as_str()), (503, "SERVICE_UNAVAILABLE"));
    let (status, code, _) = error_of(app.client.post(&url).send().await.expect("request")).await;
    assert_eq!((status, code.as_str()), (405, "METHOD_NOT_ALLOWED"));
}
