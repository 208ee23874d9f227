//! The simulator over real HTTP: Daraja's endpoints with raw requests (so every error
//! body is checked as a client would see it), callbacks to a real receiver, the control
//! endpoints, and the binary.

// Tests may unwrap: a panic is a failed assertion.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use secrecy::SecretString;
use serde_json::{json, Value};
use stk_relay_daraja_sim::{RequestKind, SentCallback, SimConfig, Simulator, SANDBOX_PASSKEY};
use stk_relay_shared::daraja::password;
use stk_relay_shared::payment::ResultCode;

const WAIT: Duration = Duration::from_secs(10);

/// A callback receiver on port 0 that answers `status` and keeps what it got.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Value>>>,
    handle: actix_web::dev::ServerHandle,
}

impl Receiver {
    async fn start(status: u16) -> Receiver {
        let got: Arc<Mutex<Vec<Value>>> = Arc::default();
        let data = web::Data::new(Arc::clone(&got));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = HttpServer::new(move || {
            App::new().app_data(data.clone()).route(
                "/cb/{token}",
                web::post().to(move |got: web::Data<Arc<Mutex<Vec<Value>>>>, body: web::Json<Value>| async move {
                    got.lock().unwrap().push(body.into_inner());
                    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
                        .json(json!({"ResultCode": 0, "ResultDesc": "Accepted"}))
                }),
            )
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Receiver {
            url: format!("http://127.0.0.1:{port}/cb/tok123"),
            got,
            handle,
        }
    }

    fn got(&self) -> Vec<Value> {
        self.got.lock().unwrap().clone()
    }
}

async fn sim() -> Simulator {
    Simulator::start(
        SimConfig {
            callback_delay_ms: 50,
            ..SimConfig::default()
        },
        "127.0.0.1:0",
    )
    .await
    .unwrap()
}

async fn token(http: &reqwest::Client, base: &str) -> String {
    let r: Value = http
        .get(format!(
            "{base}/oauth/v1/generate?grant_type=client_credentials"
        ))
        .basic_auth("sim-consumer-key", Some("sim-consumer-secret"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        r["expires_in"],
        json!("3599"),
        "expires_in is a string on the wire"
    );
    r["access_token"].as_str().unwrap().to_owned()
}

fn push_body(phone: &str, amount: Value, callback_url: &str) -> Value {
    let ts = password::timestamp(chrono::Utc::now());
    json!({
        "BusinessShortCode": "174379",
        "Password": password::password("174379", &SecretString::from(SANDBOX_PASSKEY.to_owned()), &ts),
        "Timestamp": ts,
        "TransactionType": "CustomerPayBillOnline",
        "Amount": amount,
        "PartyA": phone,
        "PartyB": "174379",
        "PhoneNumber": phone,
        "CallBackURL": callback_url,
        "AccountReference": "INV-1",
        "TransactionDesc": "Test"
    })
}

fn query_body(id: &str) -> Value {
    let ts = password::timestamp(chrono::Utc::now());
    json!({
        "BusinessShortCode": 174379,
        "Password": password::password("174379", &SecretString::from(SANDBOX_PASSKEY.to_owned()), &ts),
        "Timestamp": ts,
        "CheckoutRequestID": id
    })
}

async fn post(http: &reqwest::Client, url: String, token: &str, body: &Value) -> (u16, Value) {
    let r = http
        .post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn assert_error(got: &(u16, Value), status: u16, code: &str, message: &str) {
    assert_eq!(got.0, status, "{:?}", got.1);
    assert_eq!(got.1["errorCode"], json!(code), "{:?}", got.1);
    assert_eq!(got.1["errorMessage"], json!(message), "{:?}", got.1);
    assert!(got.1["requestId"].as_str().is_some_and(|s| !s.is_empty()));
}

#[tokio::test]
async fn oauth_checks_basic_auth_and_grant_type() {
    let sim = sim().await;
    let http = reqwest::Client::new();
    let base = sim.base_url();
    let wrong = http
        .get(format!(
            "{base}/oauth/v1/generate?grant_type=client_credentials"
        ))
        .basic_auth("sim-consumer-key", Some("nope"))
        .send()
        .await
        .unwrap();
    let got = (
        wrong.status().as_u16(),
        wrong.json::<Value>().await.unwrap(),
    );
    assert_error(&got, 400, "400.008.01", "Invalid Authentication passed");
    let missing = http
        .get(format!(
            "{base}/oauth/v1/generate?grant_type=client_credentials"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 400);
    let grant = http
        .get(format!("{base}/oauth/v1/generate?grant_type=password"))
        .basic_auth("sim-consumer-key", Some("sim-consumer-secret"))
        .send()
        .await
        .unwrap();
    let got = (
        grant.status().as_u16(),
        grant.json::<Value>().await.unwrap(),
    );
    assert_error(&got, 400, "400.008.02", "Invalid grant type passed");
    let t1 = token(&http, &base).await;
    let t2 = token(&http, &base).await;
    assert_ne!(t1, t2);
    assert_eq!(sim.token_requests(), 5);
    // Secrets do not reach the records.
    let records = serde_json::to_string(&sim.records()).unwrap();
    assert!(!records.contains("sim-consumer-secret"));
    assert!(records.contains("Basic [REDACTED]"));
    sim.stop().await;
}

#[tokio::test]
async fn push_errors_use_daraja_bodies() {
    let sim = sim().await;
    let http = reqwest::Client::new();
    let base = sim.base_url();
    let push_url = format!("{base}/mpesa/stkpush/v1/processrequest");
    let cb = "https://example.com/cb/x";
    let good = push_body("254708374149", json!(1), cb);

    // Token checks.
    let got = post(&http, push_url.clone(), "not-a-token", &good).await;
    assert_error(&got, 404, "404.001.03", "Invalid Access Token");
    let t = token(&http, &base).await;
    sim.expire_tokens();
    let got = post(&http, push_url.clone(), &t, &good).await;
    assert_error(&got, 404, "404.001.03", "Invalid Access Token");
    let t = token(&http, &base).await;

    // Method and content type.
    let r = http.get(&push_url).bearer_auth(&t).send().await.unwrap();
    let got = (r.status().as_u16(), r.json::<Value>().await.unwrap());
    assert_error(&got, 405, "405.001", "Method not allowed");
    let r = http
        .post(&push_url)
        .bearer_auth(&t)
        .header("content-type", "text/plain")
        .body(good.to_string())
        .send()
        .await
        .unwrap();
    let got = (r.status().as_u16(), r.json::<Value>().await.unwrap());
    assert_error(
        &got,
        400,
        "400.002.02",
        "Bad Request - Invalid BusinessShortCode",
    );

    // Fields.
    for (amount, ok) in [
        (json!(0), false),
        (json!("1.00"), false),
        (json!(250_001), false),
        (json!("250000"), true),
    ] {
        let got = post(
            &http,
            push_url.clone(),
            &t,
            &push_body("254708374149", amount.clone(), cb),
        )
        .await;
        if ok {
            assert_eq!(got.0, 200, "{amount}: {:?}", got.1);
        } else {
            assert_error(&got, 400, "400.002.02", "Bad Request - Invalid Amount");
        }
    }
    let got = post(
        &http,
        push_url.clone(),
        &t,
        &push_body("0708374149", json!(1), cb),
    )
    .await;
    assert_error(&got, 400, "400.002.02", "Bad Request - Invalid PartyA");
    let mut b = good.clone();
    b["PhoneNumber"] = json!("254808374149");
    let got = post(&http, push_url.clone(), &t, &b).await;
    assert_error(&got, 400, "400.002.02", "Bad Request - Invalid PhoneNumber");
    let got = post(
        &http,
        push_url.clone(),
        &t,
        &push_body("254708374149", json!(1), "https://example.com/c b"),
    )
    .await;
    assert_error(&got, 400, "400.002.02", "Bad Request - Invalid CallBackURL");
    let mut b = good.clone();
    b["AccountReference"] = json!("THIRTEEN-CHAR");
    let got = post(&http, push_url.clone(), &t, &b).await;
    assert_error(
        &got,
        400,
        "400.002.02",
        "The element AccountReference is invalid",
    );
    let mut b = good.clone();
    b["Password"] = json!("bm9wZQ==");
    let got = post(&http, push_url.clone(), &t, &b).await;
    assert_error(&got, 500, "500.001.1001", "Wrong credentials");

    // Garbage and oversize bodies get Daraja-shaped JSON errors.
    let r = http
        .post(&push_url)
        .bearer_auth(&t)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["errorCode"],
        json!("400.002.02")
    );
    let r = http
        .post(&push_url)
        .bearer_auth(&t)
        .header("content-type", "application/json")
        .body(vec![b' '; 70 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.json::<Value>().await.unwrap()["errorMessage"]
        .as_str()
        .unwrap()
        .contains("too large"));

    // Unknown path.
    let r = http.get(format!("{base}/nope")).send().await.unwrap();
    let got = (r.status().as_u16(), r.json::<Value>().await.unwrap());
    assert_error(&got, 404, "404.001.01", "Resource not found");

    // One accepted push only; no callbacks were due for rejected ones.
    let records = sim.records();
    let accepted = records
        .iter()
        .filter(|r| r.kind == RequestKind::StkPush && r.status == 200)
        .count();
    assert_eq!(accepted, 1);
    assert!(records
        .iter()
        .filter(|r| r.kind == RequestKind::StkPush)
        .all(|r| r
            .headers
            .get("authorization")
            .into_iter()
            .all(|h| h == "Bearer [REDACTED]")));
    sim.stop().await;
}

#[tokio::test]
async fn success_flow_callback_and_query() {
    let sim = sim().await;
    let rx = Receiver::start(200).await;
    let http = reqwest::Client::new();
    let base = sim.base_url();
    let t = token(&http, &base).await;
    let (status, resp) = post(
        &http,
        format!("{base}/mpesa/stkpush/v1/processrequest"),
        &t,
        &push_body("254708374149", json!(250), &rx.url),
    )
    .await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["ResponseCode"], json!("0"));
    assert_eq!(
        resp["ResponseDescription"],
        json!("Success. Request accepted for processing")
    );
    assert_eq!(
        resp["CustomerMessage"],
        json!("Success. Request accepted for processing")
    );
    let id = resp["CheckoutRequestID"].as_str().unwrap().to_owned();
    assert!(id.starts_with("ws_CO_") && id.contains("708374149"), "{id}");

    // Pending first: HTTP 500, 500.001.1001, requestId = CheckoutRequestID. The
    // callback delay (50 ms) cannot pass between the push and this query in a way that
    // matters: if it did, the query must agree with the callback, checked below.
    let query_url = format!("{base}/mpesa/stkpushquery/v1/query");
    let first = post(&http, query_url.clone(), &t, &query_body(&id)).await;
    if first.0 == 500 {
        assert_error(
            &first,
            500,
            "500.001.1001",
            "The transaction is being processed",
        );
        assert_eq!(first.1["requestId"], json!(id));
    }

    assert!(sim.wait_for_callbacks(1, WAIT).await);
    let sent: Vec<SentCallback> = sim.callbacks_sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].status, Some(200));
    let got = rx.got();
    assert_eq!(got.len(), 1);
    let cb = &got[0]["Body"]["stkCallback"];
    assert_eq!(cb["CheckoutRequestID"], json!(id));
    assert_eq!(cb["MerchantRequestID"], resp["MerchantRequestID"]);
    assert_eq!(cb["ResultCode"], json!(0), "a number in callbacks");
    assert_eq!(
        cb["ResultDesc"],
        json!("The service request is processed successfully.")
    );
    let items = cb["CallbackMetadata"]["Item"].as_array().unwrap();
    let item = |name: &str| {
        items
            .iter()
            .find(|i| i["Name"] == json!(name))
            .unwrap()
            .clone()
    };
    assert_eq!(item("Amount")["Value"], json!(250));
    let receipt = item("MpesaReceiptNumber")["Value"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        receipt.len() == 10
            && receipt
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    );
    assert!(item("Balance").get("Value").is_none());
    assert!(item("TransactionDate")["Value"].is_u64());
    assert_eq!(item("PhoneNumber")["Value"], json!(254708374149_u64));
    // What was sent is what the strict parser accepts.
    assert!(
        stk_relay_shared::daraja::callback::parse_callback(got[0].to_string().as_bytes()).is_ok()
    );

    let done = post(&http, query_url.clone(), &t, &query_body(&id)).await;
    assert_eq!(done.0, 200, "{:?}", done.1);
    assert_eq!(
        done.1["ResultCode"],
        json!("0"),
        "a string in query answers"
    );
    assert_eq!(done.1["ResponseCode"], json!("0"));
    assert_eq!(done.1["CheckoutRequestID"], json!(id));

    let unknown = post(&http, query_url, &t, &query_body("ws_CO_000")).await;
    assert_error(
        &unknown,
        400,
        "400.002.02",
        "Bad Request - Invalid CheckoutRequestID",
    );

    // Resend: the same body again.
    let r = http
        .post(format!("{base}/sim/callbacks/resend"))
        .json(&json!({"checkout_request_id": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let got = rx.got();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0], got[1]);
    rx.handle.stop(true).await;
    sim.stop().await;
}

async fn push_ok(
    http: &reqwest::Client,
    sim: &Simulator,
    t: &str,
    phone: &str,
    cb: &str,
) -> String {
    let (status, resp) = post(
        http,
        format!("{}/mpesa/stkpush/v1/processrequest", sim.base_url()),
        t,
        &push_body(phone, json!(10), cb),
    )
    .await;
    assert_eq!(status, 200, "{resp}");
    resp["CheckoutRequestID"].as_str().unwrap().to_owned()
}

/// Queries `id` until the answer is no longer "being processed" (each pending answer
/// must be exactly Daraja's), for at most [`WAIT`].
async fn query_until_final(http: &reqwest::Client, url: &str, t: &str, id: &str) -> (u16, Value) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let q = post(http, url.to_owned(), t, &query_body(id)).await;
        if q.0 != 500 {
            return q;
        }
        assert_being_processed(&q, id);
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} still being processed after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Daraja's exact "still pending" answer to STK Push Query.
fn assert_being_processed(q: &(u16, Value), id: &str) {
    assert_eq!(q.0, 500, "{:?}", q.1);
    assert_eq!(
        q.1,
        json!({
            "requestId": id,
            "errorCode": "500.001.1001",
            "errorMessage": "The transaction is being processed"
        })
    );
}

#[tokio::test]
async fn stuck_push_is_being_processed_forever() {
    let sim = sim().await;
    let rx = Receiver::start(200).await;
    let http = reqwest::Client::new();
    let t = token(&http, &sim.base_url()).await;
    let query_url = format!("{}/mpesa/stkpushquery/v1/query", sim.base_url());
    let stuck = push_ok(&http, &sim, &t, "254708374444", &rx.url).await;
    // A lost push made after it turns final: the callback delay has passed for both.
    let lost = push_ok(&http, &sim, &t, "254708375999", &rx.url).await;
    let q = query_until_final(&http, &query_url, &t, &lost).await;
    assert_eq!(q.1["ResultCode"], json!("0"));
    let q = post(&http, query_url.clone(), &t, &query_body(&stuck)).await;
    assert_being_processed(&q, &stuck);
    assert!(
        sim.callbacks_sent().is_empty(),
        "a stuck push sends no callback"
    );
    // Deciding it sends a (late) callback, and the Query still says "being processed".
    let r = http
        .post(format!("{}/sim/complete", sim.base_url()))
        .json(&json!({"checkout_request_id": stuck, "result_code": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let sent: SentCallback = r.json().await.unwrap();
    assert_eq!(sent.body["Body"]["stkCallback"]["ResultCode"], json!(0));
    assert_eq!(sent.status, Some(200));
    let q = post(&http, query_url, &t, &query_body(&stuck)).await;
    assert_being_processed(&q, &stuck);
    rx.handle.stop(true).await;
    sim.stop().await;
}

#[tokio::test]
async fn outcome_table_over_http() {
    let sim = sim().await;
    let rx = Receiver::start(200).await;
    let http = reqwest::Client::new();
    let t = token(&http, &sim.base_url()).await;
    let cancelled = push_ok(&http, &sim, &t, "254708374132", &rx.url).await;
    let duplicate = push_ok(&http, &sim, &t, "254708374222", &rx.url).await;
    let lost = push_ok(&http, &sim, &t, "254708374999", &rx.url).await;
    let manual = push_ok(&http, &sim, &t, "254708374333", &rx.url).await;
    // 1 (cancelled) + 2 (duplicate) callbacks; the lost one never comes.
    assert!(sim.wait_for_callbacks(3, WAIT).await);
    let ids: Vec<String> = sim
        .callbacks_sent()
        .into_iter()
        .map(|c| c.checkout_request_id)
        .collect();
    assert_eq!(ids.iter().filter(|i| **i == cancelled).count(), 1);
    assert_eq!(ids.iter().filter(|i| **i == duplicate).count(), 2);
    let got = rx.got();
    let for_id = |id: &str| {
        got.iter()
            .find(|b| b["Body"]["stkCallback"]["CheckoutRequestID"] == json!(id))
            .unwrap()["Body"]["stkCallback"]
            .clone()
    };
    assert_eq!(for_id(&cancelled)["ResultCode"], json!(1032));
    assert_eq!(
        for_id(&cancelled)["ResultDesc"],
        json!("Request cancelled by user")
    );
    assert!(for_id(&cancelled).get("CallbackMetadata").is_none());

    // Lost: the query knows the result even though no callback came. Its own delay may
    // not have passed yet when the neighbours' callbacks were seen (they were pushed
    // first), so wait for its own event: the Query answer turning final.
    let query_url = format!("{}/mpesa/stkpushquery/v1/query", sim.base_url());
    let q = query_until_final(&http, &query_url, &t, &lost).await;
    assert_eq!(q.0, 200, "{:?}", q.1);
    assert_eq!(q.1["ResultCode"], json!("0"));
    assert_eq!(q.1["CheckoutRequestID"], json!(lost));
    assert!(!sim
        .callbacks_sent()
        .iter()
        .any(|c| c.checkout_request_id == lost));

    // Manual: pending until completed.
    let q = post(&http, query_url.clone(), &t, &query_body(&manual)).await;
    assert_eq!(q.0, 500);
    let r = http
        .post(format!("{}/sim/complete", sim.base_url()))
        .json(&json!({"checkout_request_id": manual, "result_code": 2001}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let sent: SentCallback = r.json().await.unwrap();
    assert_eq!(sent.body["Body"]["stkCallback"]["ResultCode"], json!(2001));
    assert_eq!(sent.status, Some(200));
    let q = post(&http, query_url, &t, &query_body(&manual)).await;
    assert_eq!(q.1["ResultCode"], json!("2001"));
    assert_eq!(
        q.1["ResultDesc"],
        json!("The initiator information is invalid")
    );
    // Completing twice, or an unknown id, is refused.
    let again = http
        .post(format!("{}/sim/complete", sim.base_url()))
        .json(&json!({"checkout_request_id": manual, "result_code": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 409);
    let unknown = http
        .post(format!("{}/sim/callbacks/resend", sim.base_url()))
        .json(&json!({"checkout_request_id": "ws_CO_nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status().as_u16(), 404);
    let bad = http
        .post(format!("{}/sim/complete", sim.base_url()))
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    assert!(bad.json::<Value>().await.unwrap()["error"].is_string());
    rx.handle.stop(true).await;
    sim.stop().await;
}

#[tokio::test]
async fn receiver_answers_are_recorded_and_control_endpoints_serve_json() {
    let sim = sim().await;
    let rx = Receiver::start(503).await;
    let http = reqwest::Client::new();
    let t = token(&http, &sim.base_url()).await;
    let id = push_ok(&http, &sim, &t, "254708374149", &rx.url).await;
    assert!(sim.wait_for_callbacks(1, WAIT).await);
    let listed: Vec<SentCallback> = http
        .get(format!("{}/sim/callbacks", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].checkout_request_id, id);
    assert_eq!(listed[0].status, Some(503));
    let records: Vec<stk_relay_daraja_sim::RecordedRequest> = http
        .get(format!("{}/sim/records", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        records.iter().map(|r| r.kind).collect::<Vec<_>>(),
        vec![RequestKind::Oauth, RequestKind::StkPush]
    );
    assert!(records.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(
        records[1].body.as_ref().unwrap()["PhoneNumber"],
        json!("254708374149")
    );
    let expired: Value = http
        .post(format!("{}/sim/expire-tokens", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(expired["expired"], json!(1));
    let health: Value = http
        .get(format!("{}/healthz", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], json!("ok"));
    // An unreachable receiver is recorded too.
    let id2 = push_ok(
        &http,
        &sim,
        &token(&http, &sim.base_url()).await,
        "254708374150",
        "http://127.0.0.1:9/cb/x",
    )
    .await;
    assert!(sim.wait_for_callbacks(2, WAIT).await);
    let last = sim.callbacks_sent().pop().unwrap();
    assert_eq!(last.checkout_request_id, id2);
    assert_eq!(last.status, None);
    assert!(last.error.is_some());
    rx.handle.stop(true).await;
    sim.stop().await;
}

#[tokio::test]
async fn in_process_complete_and_wait_timeout() {
    let sim = sim().await;
    let http = reqwest::Client::new();
    let t = token(&http, &sim.base_url()).await;
    let id = push_ok(&http, &sim, &t, "254708374333", "http://127.0.0.1:9/cb/x").await;
    // Manual: nothing is sent on its own.
    assert!(!sim.wait_for_callbacks(1, Duration::from_millis(300)).await);
    let sent = sim.complete(&id, ResultCode::Code(1037)).await.unwrap();
    assert_eq!(sent.body["Body"]["stkCallback"]["ResultCode"], json!(1037));
    assert!(sim.wait_for_callbacks(1, WAIT).await);
    assert!(sim.complete(&id, ResultCode::Code(0)).await.is_none());
    sim.stop().await;
}

#[tokio::test]
async fn binary_prints_its_address_and_serves() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_daraja-sim"))
        .args(["--bind", "127.0.0.1:0", "--callback-delay-ms", "10"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let base = line
        .strip_prefix("daraja-sim listening on ")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        .to_owned();
    assert!(base.starts_with("http://127.0.0.1:"));
    let http = reqwest::Client::new();
    let health: Value = http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], json!("ok"));
    let t = token(&http, &base).await;
    let (status, _) = post(
        &http,
        format!("{base}/mpesa/stkpush/v1/processrequest"),
        &t,
        &push_body("254708374149", json!(1), "http://127.0.0.1:9/cb/x"),
    )
    .await;
    assert_eq!(status, 200);
    child.start_kill().unwrap();
    let _ = child.wait().await;
}
