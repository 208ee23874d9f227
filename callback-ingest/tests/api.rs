//! API tests of callback-ingest's edge: the real `Application` on port 0 with Redis
//! unreachable. They pin the order of checks (token, size, shape) and the JSON errors;
//! the store paths are covered by the cross-process suite in `tests/`.

use secrecy::SecretString;
use serde_json::{json, Value};
use stk_relay_callback_ingest::config::IngestSettings;
use stk_relay_callback_ingest::startup::Application;
use stk_relay_shared::config::Settings as _;
use stk_relay_shared::shutdown::Shutdown;
use stk_relay_shared::token::CallbackTokens;

const CALLBACK_SECRET: &str = "callback-secret-0123456789abcdef01234";

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
    spawn_app_with("").await.expect("build")
}

/// `callbacks_extra`: more `[callbacks]` lines.
async fn spawn_app_with(callbacks_extra: &str) -> std::io::Result<TestApp> {
    let extra = format!(
        r#"
[server]
host = "127.0.0.1"
port = 0
workers = 1
[redis]
url = "redis://127.0.0.1:{}"
connect_timeout_ms = 100
command_timeout_ms = 100
[tokens]
callback_secret = "{CALLBACK_SECRET}"
[callbacks]
redis_retry_budget_ms = 300
{callbacks_extra}
"#,
        dead_port()
    );
    let settings = IngestSettings::load_with(None, Some(&extra)).expect("settings");
    let shutdown = Shutdown::new();
    let app = Application::build(settings, shutdown.clone()).await?;
    let base = app.base_url();
    tokio::spawn(app.run_until_stopped());
    Ok(TestApp {
        base,
        client: reqwest::Client::new(),
        _shutdown: shutdown,
    })
}

fn valid_token() -> String {
    CallbackTokens::new(SecretString::from(CALLBACK_SECRET.to_owned()))
        .issue()
        .token
}

fn success_body() -> String {
    json!({"Body":{"stkCallback":{
        "MerchantRequestID":"29115-34620561-1",
        "CheckoutRequestID":"ws_CO_191220191020363925",
        "ResultCode":0,
        "ResultDesc":"The service request is processed successfully.",
        "CallbackMetadata":{"Item":[
            {"Name":"Amount","Value":1.00},
            {"Name":"MpesaReceiptNumber","Value":"NLJ7RT61SV"},
            {"Name":"TransactionDate","Value":20191219102115u64},
            {"Name":"PhoneNumber","Value":254708374149u64}
        ]}
    }}})
    .to_string()
}

async fn post(app: &TestApp, token: &str, body: String) -> (u16, Value) {
    let resp = app
        .client
        .post(format!("{}/v1/callbacks/stk/{token}", app.base))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON body"))
}

#[tokio::test]
async fn forged_tokens_get_403() {
    let app = spawn_app().await;
    let other = CallbackTokens::new(SecretString::from(
        "another-secret-0123456789abcdef0123".to_owned(),
    ))
    .issue()
    .token;
    for token in [other.as_str(), "abc", "x.y", &"a".repeat(200)] {
        let (status, body) = post(&app, token, success_body()).await;
        assert_eq!(status, 403, "{token}");
        assert_eq!(body["error"]["code"], "FORBIDDEN");
    }
}

#[tokio::test]
async fn malformed_callbacks_get_400_naming_the_field() {
    let app = spawn_app().await;
    let token = valid_token();
    let missing_id =
        json!({"Body":{"stkCallback":{"MerchantRequestID":"m","ResultCode":0}}}).to_string();
    for (body, needle) in [
        ("not json".to_owned(), ""),
        ("{}".to_owned(), "Body"),
        (missing_id, "CheckoutRequestID"),
    ] {
        let (status, err) = post(&app, &token, body.clone()).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(err["error"]["code"], "MALFORMED_REQUEST");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains(needle),
            "{err}"
        );
    }
}

#[tokio::test]
async fn oversized_callbacks_get_413() {
    let app = spawn_app().await;
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(70 * 1024));
    let (status, err) = post(&app, &valid_token(), big).await;
    assert_eq!(status, 413);
    assert_eq!(err["error"]["code"], "PAYLOAD_TOO_LARGE");
}

#[tokio::test]
async fn redis_down_gets_503_after_retrying() {
    let app = spawn_app().await;
    let (status, err) = post(&app, &valid_token(), success_body()).await;
    assert_eq!(status, 503);
    assert_eq!(err["error"]["code"], "SERVICE_UNAVAILABLE");
    let ready = app
        .client
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .expect("request");
    assert_eq!(ready.status().as_u16(), 503);
    let health = app
        .client
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .expect("request");
    assert_eq!(health.status().as_u16(), 200);
}

#[tokio::test]
async fn other_routes_get_json_404_and_405() {
    let app = spawn_app().await;
    let r = app
        .client
        .get(format!("{}/v1/callbacks/stk/abc", app.base))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 405);
    let r = app
        .client
        .get(format!("{}/elsewhere", app.base))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 404);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "NOT_FOUND");
}

/// With a spool, a checked callback that cannot reach Redis is written to disk and
/// acknowledged; readiness stays 200 "spooling"; a second process cannot open the same
/// directory; a forged callback is still refused and never spooled.
#[tokio::test]
async fn redis_down_with_a_spool_acknowledges_and_stays_ready() {
    let dir = std::env::temp_dir().join(format!(
        "stk-ingest-api-spool-{}-{}",
        std::process::id(),
        dead_port()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let extra = format!("spool_dir = {:?}", dir.display().to_string());
    let app = spawn_app_with(&extra).await.expect("build");
    let (status, body) = post(&app, &valid_token(), success_body()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"ResultCode":0,"ResultDesc":"Accepted"}));
    let (status, _) = post(&app, "abc", success_body()).await;
    assert_eq!(status, 403);
    let ready = app
        .client
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .expect("request");
    assert_eq!(ready.status().as_u16(), 200);
    let ready: Value = ready.json().await.expect("JSON");
    assert_eq!(ready["status"], "spooling");
    assert_eq!(ready["spooled"], 1);
    let second = spawn_app_with(&extra).await;
    let err = second
        .err()
        .expect("a second process on the same spool must not start");
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
