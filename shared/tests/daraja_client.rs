//! The Daraja client against the simulator over real HTTP, plus a tiny scripted server
//! for answers the simulator never gives (an always-rejected token, spike arrest,
//! oversized bodies).

// Tests may unwrap: a panic is a failed assertion.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use stk_relay_daraja_sim::{RequestKind, SimConfig, Simulator, SANDBOX_PASSKEY};
use stk_relay_shared::daraja::client::{
    DarajaClient, DarajaClientSettings, StkPush, StkQueryStatus, TransactionType,
};
use stk_relay_shared::daraja::error::SPIKE_ARREST_FAULT;
use stk_relay_shared::daraja::{password, DarajaError};
use stk_relay_shared::ids::{AccountReference, Amount, CheckoutRequestId, Msisdn, TransactionDesc};
use stk_relay_shared::payment::ResultCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(10);

fn settings(base_url: &str) -> DarajaClientSettings {
    DarajaClientSettings {
        base_url: base_url.to_owned(),
        consumer_key: SecretString::from("sim-consumer-key".to_owned()),
        consumer_secret: SecretString::from("sim-consumer-secret".to_owned()),
        passkey: SecretString::from(SANDBOX_PASSKEY.to_owned()),
        shortcode: "174379".into(),
        transaction_type: TransactionType::PayBill,
        party_b: None,
        request_timeout_ms: 5_000,
        connect_timeout_ms: 2_000,
        token_refresh_margin_secs: 300,
    }
}

async fn sim_with(config: SimConfig) -> Simulator {
    Simulator::start(config, "127.0.0.1:0").await.unwrap()
}

async fn sim() -> Simulator {
    sim_with(SimConfig {
        callback_delay_ms: 50,
        ..SimConfig::default()
    })
    .await
}

fn client(sim: &Simulator) -> DarajaClient {
    DarajaClient::new(settings(&sim.base_url())).unwrap()
}

fn push(phone: &str) -> StkPush {
    StkPush {
        phone: Msisdn::parse(phone).unwrap(),
        amount: Amount::new(10).unwrap(),
        account_reference: AccountReference::parse("INV-42").unwrap(),
        description: None,
        // Nothing listens on port 9: the simulator records the failed delivery.
        callback_url: "http://127.0.0.1:9/v1/callbacks/stk/secret-token".into(),
    }
}

fn pushes_by_status(sim: &Simulator) -> Vec<u16> {
    sim.records()
        .iter()
        .filter(|r| r.kind == RequestKind::StkPush)
        .map(|r| r.status)
        .collect()
}

#[tokio::test]
async fn token_is_cached_across_calls() {
    let sim = sim().await;
    let c = client(&sim);
    let a = c.stk_push(&push("0708374149")).await.unwrap();
    let b = c.clone().stk_push(&push("0708374149")).await.unwrap();
    assert_ne!(a.checkout_request_id, b.checkout_request_id);
    assert_eq!(sim.token_requests(), 1);
    assert_eq!(sim.push_count(), 2);
    let t1 = c.access_token().await.unwrap();
    let t2 = c.access_token().await.unwrap();
    assert_eq!(t1.expose_secret(), t2.expose_secret());
    assert_eq!(sim.token_requests(), 1);
    sim.stop().await;
}

#[tokio::test]
async fn token_is_refreshed_before_it_expires() {
    // Tokens live 2 s; the 300 s margin is capped at half the lifetime, so the client
    // replaces its token after 1 s, while the simulator would still accept it.
    let sim = sim_with(SimConfig {
        token_ttl_secs: 2,
        ..SimConfig::default()
    })
    .await;
    let c = client(&sim);
    c.stk_push(&push("0708374149")).await.unwrap();
    c.stk_push(&push("0708374149")).await.unwrap();
    assert_eq!(sim.token_requests(), 1);
    // Waiting for the clock is the point of this test, not a synchronisation.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    c.stk_push(&push("0708374149")).await.unwrap();
    assert_eq!(sim.token_requests(), 2);
    // Proactive: no push was ever rejected for its token.
    assert_eq!(pushes_by_status(&sim), vec![200, 200, 200]);
    sim.stop().await;
}

#[tokio::test]
async fn rejected_token_is_replaced_and_the_call_retried_once() {
    let sim = sim().await;
    let c = client(&sim);
    c.stk_push(&push("0708374149")).await.unwrap();
    sim.expire_tokens();
    let r = c.stk_push(&push("0708374149")).await;
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(sim.token_requests(), 2);
    assert_eq!(pushes_by_status(&sim), vec![200, 404, 200]);
    let rejected = sim.records().into_iter().find(|r| r.status == 404).unwrap();
    assert_eq!(rejected.error_code.as_deref(), Some("404.001.03"));

    // Same for the query.
    let id = CheckoutRequestId::parse(&r.unwrap().checkout_request_id).unwrap();
    sim.expire_tokens();
    assert!(c.stk_query(&id).await.is_ok());
    assert_eq!(sim.token_requests(), 3);
    sim.stop().await;
}

#[tokio::test]
async fn concurrent_callers_share_one_token_request() {
    let sim = sim().await;
    let c = client(&sim);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.stk_push(&push("0708374149")).await })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        assert!(ids.insert(r.checkout_request_id));
    }
    assert_eq!(sim.token_requests(), 1);
    assert_eq!(sim.push_count(), 50);
    sim.stop().await;
}

#[tokio::test]
async fn concurrent_callers_share_one_failed_token_request() {
    let sim = sim().await;
    let mut s = settings(&sim.base_url());
    s.consumer_secret = SecretString::from("wrong-secret".to_owned());
    let c = DarajaClient::new(s).unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.stk_push(&push("0708374149")).await })
        })
        .collect();
    for t in tasks {
        let e = t.await.unwrap().unwrap_err();
        assert!(matches!(e, DarajaError::Auth { .. }), "{e:?}");
    }
    // Callers that waited for a failed fetch got its error; only callers arriving
    // after it finished may try again. Far fewer than one per caller.
    assert!(sim.token_requests() < 20, "{}", sim.token_requests());
    sim.stop().await;
}

#[tokio::test]
async fn push_body_has_eat_timestamp_and_matching_password() {
    let sim = sim().await;
    let c = client(&sim);
    let before = chrono::Utc::now();
    c.stk_push(&push("0708374149")).await.unwrap();
    let rec = sim
        .records()
        .into_iter()
        .find(|r| r.kind == RequestKind::StkPush)
        .unwrap();
    assert_eq!(rec.status, 200);
    let body = rec.body.unwrap();
    let ts = body["Timestamp"].as_str().unwrap().to_owned();
    assert_eq!(ts.len(), 14);
    // Read as EAT, the timestamp is "now"; a UTC timestamp would be three hours off.
    let at = password::parse_timestamp(&ts).unwrap();
    assert!((at - before).num_seconds().abs() <= 5, "{ts}");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(body["Password"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        String::from_utf8(raw).unwrap(),
        format!("174379{SANDBOX_PASSKEY}{ts}")
    );
    assert_eq!(body["BusinessShortCode"], "174379");
    assert_eq!(body["TransactionType"], "CustomerPayBillOnline");
    assert_eq!(body["Amount"], "10");
    assert_eq!(body["PartyA"], "254708374149");
    assert_eq!(body["PhoneNumber"], "254708374149");
    assert_eq!(body["PartyB"], "174379");
    assert_eq!(body["AccountReference"], "INV-42");
    assert_eq!(body["TransactionDesc"], "INV-42");
    assert_eq!(
        body["CallBackURL"],
        "http://127.0.0.1:9/v1/callbacks/stk/secret-token"
    );
    sim.stop().await;
}

#[tokio::test]
async fn buy_goods_sends_the_till_as_party_b() {
    let sim = sim_with(SimConfig {
        till_number: Some("5000001".into()),
        ..SimConfig::default()
    })
    .await;
    let mut s = settings(&sim.base_url());
    s.transaction_type = TransactionType::BuyGoods;
    s.party_b = Some("5000001".into());
    let c = DarajaClient::new(s).unwrap();
    let mut p = push("0708374149");
    p.description = Some(TransactionDesc::parse("Groceries").unwrap());
    c.stk_push(&p).await.unwrap();
    let body = sim.records()[1].body.clone().unwrap();
    assert_eq!(body["TransactionType"], "CustomerBuyGoodsOnline");
    assert_eq!(body["PartyB"], "5000001");
    assert_eq!(body["TransactionDesc"], "Groceries");
    sim.stop().await;
}

#[tokio::test]
async fn bad_consumer_secret_is_an_auth_error_without_secrets() {
    let sim = sim().await;
    let mut s = settings(&sim.base_url());
    s.consumer_secret = SecretString::from("wrong-consumer-secret".to_owned());
    let c = DarajaClient::new(s).unwrap();
    let e = c.stk_push(&push("0708374149")).await.unwrap_err();
    match &e {
        DarajaError::Auth {
            status, error_code, ..
        } => {
            assert_eq!(*status, 400);
            assert_eq!(error_code, "400.008.01");
        }
        other => panic!("expected Auth, got {other:?}"),
    }
    assert!(!e.may_have_reached_daraja());
    assert_eq!(sim.push_count(), 0);
    let text = format!("{e} {e:?} {c:?}");
    for secret in ["wrong-consumer-secret", SANDBOX_PASSKEY, "secret-token"] {
        assert!(!text.contains(secret), "{text}");
    }
    sim.stop().await;
}

#[tokio::test]
async fn wrong_passkey_is_an_api_error_and_not_retried() {
    let sim = sim().await;
    let mut s = settings(&sim.base_url());
    s.passkey = SecretString::from("not-the-passkey".to_owned());
    let c = DarajaClient::new(s).unwrap();
    let e = c.stk_push(&push("0708374149")).await.unwrap_err();
    match &e {
        DarajaError::Api {
            status,
            error_code,
            error_message,
            request_id,
        } => {
            assert_eq!(*status, 500);
            assert_eq!(error_code, "500.001.1001");
            assert_eq!(error_message, "Wrong credentials");
            assert!(!request_id.is_empty());
        }
        other => panic!("expected Api, got {other:?}"),
    }
    assert_eq!(e.daraja_error_code(), Some("500.001.1001"));
    assert_eq!(sim.push_count(), 1, "a 5xx push is never retried");
    assert!(!format!("{e} {e:?}").contains("not-the-passkey"));
    sim.stop().await;
}

#[tokio::test]
async fn unreachable_daraja_is_a_transport_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = DarajaClient::new(settings(&format!("http://127.0.0.1:{port}"))).unwrap();
    let e = c.stk_push(&push("0708374149")).await.unwrap_err();
    assert!(matches!(e, DarajaError::Transport(_)), "{e:?}");
    assert!(!e.may_have_reached_daraja());
    assert!(!e.is_timeout());
}

#[tokio::test]
async fn slow_daraja_is_a_timeout_that_may_have_reached_it_and_is_not_retried() {
    let sim = sim_with(SimConfig {
        response_delay_ms: 3_000,
        callback_delay_ms: 10,
        ..SimConfig::default()
    })
    .await;
    let mut s = settings(&sim.base_url());
    s.request_timeout_ms = 500;
    s.connect_timeout_ms = 500;
    let c = DarajaClient::new(s).unwrap();
    let e = c.stk_push(&push("0708374149")).await.unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    assert!(matches!(
        e,
        DarajaError::Timeout {
            may_have_reached_daraja: true
        }
    ));
    assert_eq!(sim.push_count(), 1);
    // It did reach Daraja: the push goes on and its callback is sent.
    assert!(sim.wait_for_callbacks(1, WAIT).await);
    assert_eq!(sim.push_count(), 1);
    sim.stop().await;
}

#[tokio::test]
async fn query_pending_then_final() {
    let sim = sim().await;
    let c = client(&sim);
    // A phone ending 333 stays pending until completed.
    let r = c.stk_push(&push("0708374333")).await.unwrap();
    let id = CheckoutRequestId::parse(&r.checkout_request_id).unwrap();
    assert_eq!(c.stk_query(&id).await.unwrap(), StkQueryStatus::Pending);
    sim.complete(id.as_str(), ResultCode::Code(1032))
        .await
        .unwrap();
    assert_eq!(
        c.stk_query(&id).await.unwrap(),
        StkQueryStatus::Final {
            merchant_request_id: r.merchant_request_id.clone(),
            result_code: ResultCode::Code(1032),
            result_desc: "Request cancelled by user".into(),
        }
    );

    // A normal push is final once its callback has gone out.
    let ok = c.stk_push(&push("0708374149")).await.unwrap();
    assert!(sim.wait_for_callbacks(2, WAIT).await);
    let ok_id = CheckoutRequestId::parse(&ok.checkout_request_id).unwrap();
    match c.stk_query(&ok_id).await.unwrap() {
        StkQueryStatus::Final { result_code, .. } => assert!(result_code.is_success()),
        StkQueryStatus::Pending => panic!("expected a final answer"),
    }

    let unknown = CheckoutRequestId::parse("ws_CO_00000000000000000").unwrap();
    let e = c.stk_query(&unknown).await.unwrap_err();
    assert_eq!(e.daraja_error_code(), Some("400.002.02"));
    sim.stop().await;
}

#[tokio::test]
async fn invalid_callback_url_is_refused_before_sending() {
    let sim = sim().await;
    let c = client(&sim);
    let mut p = push("0708374149");
    p.callback_url = "https://example.com/has space".into();
    let e = c.stk_push(&p).await.unwrap_err();
    assert!(matches!(e, DarajaError::InvalidRequest(_)), "{e:?}");
    assert_eq!(sim.push_count(), 0);
    sim.stop().await;
}

// ---- a scripted server for answers the simulator never gives ----------------------

type Script = fn(&str) -> Vec<u8>;

/// Serves one request per connection, answering what `script(path)` returns (a full
/// HTTP response), and counts requests per path.
struct Scripted {
    base: String,
    hits: Arc<Mutex<Vec<String>>>,
}

impl Scripted {
    async fn start(script: Script) -> Scripted {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let hits: Arc<Mutex<Vec<String>>> = Arc::default();
        let h = Arc::clone(&hits);
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let h = Arc::clone(&h);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // Headers, then Content-Length bytes of body.
                    let head_end = loop {
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break p + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let path = head
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or("")
                        .split('?')
                        .next()
                        .unwrap_or("")
                        .to_owned();
                    h.lock().unwrap().push(path.clone());
                    let _ = sock.write_all(&script(&path)).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Scripted { base, hits }
    }

    fn hits(&self, path: &str) -> usize {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|p| *p == path)
            .count()
    }
}

fn response(status: u16, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const TOKEN_PATH: &str = "/oauth/v1/generate";
const PUSH_PATH: &str = "/mpesa/stkpush/v1/processrequest";

fn token_or(path: &str, other: impl FnOnce() -> Vec<u8>) -> Vec<u8> {
    if path == TOKEN_PATH {
        response(200, r#"{"access_token":"tok","expires_in":"3599"}"#)
    } else {
        other()
    }
}

#[tokio::test]
async fn a_token_rejected_twice_is_an_error_after_one_retry() {
    let s = Scripted::start(|p| {
        token_or(p, || {
            response(
                404,
                r#"{"requestId":"1-2-3","errorCode":"404.001.03","errorMessage":"Invalid Access Token"}"#,
            )
        })
    })
    .await;
    let c = DarajaClient::new(settings(&s.base)).unwrap();
    let e = c.stk_push(&push("0708374149")).await.unwrap_err();
    assert!(e.is_invalid_token(), "{e:?}");
    assert_eq!(s.hits(PUSH_PATH), 2);
    assert_eq!(s.hits(TOKEN_PATH), 2);
}

#[tokio::test]
async fn spike_arrest_maps_to_its_fault_code_and_is_not_retried() {
    let s = Scripted::start(|p| {
        token_or(p, || {
            response(
                429,
                r#"{"fault":{"faultstring":"Spike arrest violation. Allowed rate : MessageRate{messagesPerPeriod=5}","detail":{"errorcode":"policies.ratelimit.SpikeArrestViolation"}}}"#,
            )
        })
    })
    .await;
    let c = DarajaClient::new(settings(&s.base)).unwrap();
    let e = c.stk_push(&push("0708374149")).await.unwrap_err();
    assert_eq!(e.daraja_error_code(), Some(SPIKE_ARREST_FAULT));
    assert!(e.is_rate_limited());
    assert_eq!(s.hits(PUSH_PATH), 1);
}

#[tokio::test]
async fn server_errors_on_push_are_never_retried() {
    let s = Scripted::start(|p| token_or(p, || response(503, "<html>Service Unavailable</html>")))
        .await;
    let c = DarajaClient::new(settings(&s.base)).unwrap();
    let e = c.stk_push(&push("0708374149")).await.unwrap_err();
    assert!(
        matches!(e, DarajaError::UnexpectedResponse { status: 503, .. }),
        "{e:?}"
    );
    assert!(e.may_have_reached_daraja());
    assert_eq!(s.hits(PUSH_PATH), 1);
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    // Declared too large.
    let s = Scripted::start(|p| token_or(p, || response(200, &" ".repeat(100 * 1024)))).await;
    let c = DarajaClient::new(settings(&s.base)).unwrap();
    let e = c.stk_push(&push("0708374149")).await.unwrap_err();
    assert!(
        matches!(&e, DarajaError::UnexpectedResponse { detail, .. } if detail.contains("larger")),
        "{e:?}"
    );
    // Undeclared length, streamed until the connection closes.
    let s = Scripted::start(|p| {
        token_or(p, || {
            let mut r =
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n"
                    .to_vec();
            r.extend(vec![b' '; 200 * 1024]);
            r
        })
    })
    .await;
    let c = DarajaClient::new(settings(&s.base)).unwrap();
    let e = c.stk_push(&push("0708374149")).await.unwrap_err();
    assert!(
        matches!(&e, DarajaError::UnexpectedResponse { detail, .. } if detail.contains("larger")),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_token_response_with_a_numeric_lifetime_is_accepted() {
    let s = Scripted::start(|p| {
        if p == TOKEN_PATH {
            response(200, r#"{"access_token":"tok","expires_in":3599}"#)
        } else {
            response(
                200,
                r#"{"MerchantRequestID":"2654-4b64-97ff-b827b542881d3130","CheckoutRequestID":"ws_CO_1007202409152617172396192","ResponseCode":"0","ResponseDescription":"Success. Request accepted for processing","CustomerMessage":"Success. Request accepted for processing"}"#,
            )
        }
    })
    .await;
    let c = DarajaClient::new(settings(&s.base)).unwrap();
    let r = c.stk_push(&push("0708374149")).await.unwrap();
    assert_eq!(r.checkout_request_id, "ws_CO_1007202409152617172396192");
    assert_eq!(s.hits(TOKEN_PATH), 1);
}
