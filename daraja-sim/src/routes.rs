//! HTTP handlers: the three Daraja endpoints (through one default service, so that
//! wrong methods and unknown paths get Daraja's answers too) and the `/sim/*` control
//! endpoints.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine as _;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};
use stk_relay_shared::daraja::types::{
    StkPushResponse, StkQueryResponse, TokenResponse, PUSH_ACCEPTED_DESC, QUERY_ACCEPTED_DESC,
};
use stk_relay_shared::http::{read_body, BodyError};
use stk_relay_shared::payment::ResultCode;

use crate::state::{PushLookup, Sim};
use crate::validate::{self, Fault};
use crate::{RecordedRequest, RequestKind, MAX_BODY_BYTES};

pub const OAUTH_PATH: &str = "/oauth/v1/generate";
pub const STK_PUSH_PATH: &str = "/mpesa/stkpush/v1/processrequest";
pub const STK_QUERY_PATH: &str = "/mpesa/stkpushquery/v1/query";

type SimData = web::Data<Arc<Sim>>;

struct Reply {
    status: u16,
    body: Value,
    error_code: Option<String>,
}

impl Reply {
    fn ok<T: serde::Serialize>(body: &T) -> Self {
        Self {
            status: 200,
            body: serde_json::to_value(body).unwrap_or(Value::Null),
            error_code: None,
        }
    }

    fn fault(sim: &Sim, f: &Fault) -> Self {
        Self {
            status: f.status,
            body: serde_json::to_value(f.body(|| sim.request_id())).unwrap_or(Value::Null),
            error_code: Some(f.code.to_owned()),
        }
    }
}

/// Every request that is not a control endpoint: Daraja's API.
pub async fn daraja(sim: SimData, req: HttpRequest, payload: web::Payload) -> HttpResponse {
    let kind = match req.path() {
        OAUTH_PATH => RequestKind::Oauth,
        STK_PUSH_PATH => RequestKind::StkPush,
        STK_QUERY_PATH => RequestKind::StkQuery,
        _ => RequestKind::Other,
    };
    let body = read_body(&req, payload, MAX_BODY_BYTES).await;
    let reply = match &body {
        Err(BodyError::TooLarge { .. }) => Reply::fault(&sim, &Fault::too_large()),
        Err(BodyError::Read(_)) => Reply::fault(&sim, &Fault::invalid("BusinessShortCode")),
        Ok(b) => match kind {
            RequestKind::Oauth => oauth(&sim, &req),
            RequestKind::StkPush => stk_push(&sim, &req, b),
            RequestKind::StkQuery => stk_query(&sim, &req, b),
            RequestKind::Other => Reply::fault(&sim, &Fault::not_found()),
        },
    };
    tracing::debug!(path = req.path(), status = reply.status, error_code = ?reply.error_code, "daraja request");
    sim.record(RecordedRequest {
        seq: 0,
        received_at: Utc::now().to_rfc3339(),
        kind,
        method: req.method().to_string(),
        path: req.path().to_owned(),
        query: Some(req.query_string().to_owned()).filter(|q| !q.is_empty()),
        headers: recorded_headers(&req),
        body: body.as_ref().ok().and_then(|b| recorded_body(b)),
        status: reply.status,
        error_code: reply.error_code.clone(),
    });
    if kind == RequestKind::StkPush && reply.status == 200 {
        sim.wait_while_held().await;
    }
    if matches!(kind, RequestKind::StkPush | RequestKind::StkQuery)
        && sim.config.response_delay_ms > 0
    {
        tokio::time::sleep(Duration::from_millis(sim.config.response_delay_ms)).await;
    }
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status).json(reply.body)
}

fn recorded_headers(req: &HttpRequest) -> BTreeMap<String, String> {
    req.headers()
        .iter()
        .map(|(name, value)| {
            let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
            let v = if name == header::AUTHORIZATION {
                let scheme = v.split_whitespace().next().unwrap_or("");
                format!("{scheme} [REDACTED]")
            } else {
                v
            };
            (name.as_str().to_owned(), v)
        })
        .collect()
}

fn recorded_body(b: &[u8]) -> Option<Value> {
    if b.is_empty() {
        return None;
    }
    Some(
        serde_json::from_slice(b).unwrap_or_else(|_| {
            Value::String(String::from_utf8_lossy(b).chars().take(1024).collect())
        }),
    )
}

fn oauth(sim: &Sim, req: &HttpRequest) -> Reply {
    if req.method() != actix_web::http::Method::GET {
        return Reply::fault(sim, &Fault::method_not_allowed());
    }
    let expected = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        sim.config.consumer_key, sim.config.consumer_secret
    ));
    let authorized = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .is_some_and(|v| v.trim() == expected);
    if !authorized {
        return Reply::fault(sim, &Fault::oauth_invalid_auth());
    }
    let query = web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .unwrap_or_default();
    if query.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return Reply::fault(sim, &Fault::oauth_invalid_grant());
    }
    let (access_token, expires_in) = sim.issue_token();
    Reply::ok(&TokenResponse {
        access_token,
        expires_in,
    })
}

/// Method, Bearer token and content type, in that order.
fn check_api_request(sim: &Sim, req: &HttpRequest) -> Result<(), Fault> {
    if req.method() != actix_web::http::Method::POST {
        return Err(Fault::method_not_allowed());
    }
    let token_ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| sim.token_valid(t.trim()));
    if !token_ok {
        return Err(Fault::invalid_token());
    }
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !json {
        // Daraja reports a wrong content type as an invalid shortcode.
        return Err(Fault::invalid("BusinessShortCode"));
    }
    Ok(())
}

fn stk_push(sim: &Arc<Sim>, req: &HttpRequest, body: &[u8]) -> Reply {
    let valid = match check_api_request(sim, req)
        .and_then(|()| validate::validate_push(&sim.config, body, Utc::now()))
    {
        Ok(v) => v,
        Err(f) => return Reply::fault(sim, &f),
    };
    let push = sim.create_push(
        valid.amount,
        &valid.request.phone_number,
        &valid.request.callback_url,
        valid.not_permitted,
    );
    sim.schedule_outcome(&push);
    Reply::ok(&StkPushResponse {
        merchant_request_id: push.merchant_request_id,
        checkout_request_id: push.checkout_request_id,
        response_code: "0".into(),
        response_description: PUSH_ACCEPTED_DESC.into(),
        customer_message: PUSH_ACCEPTED_DESC.into(),
    })
}

fn stk_query(sim: &Sim, req: &HttpRequest, body: &[u8]) -> Reply {
    let id = match check_api_request(sim, req)
        .and_then(|()| validate::validate_query(&sim.config, body, Utc::now()))
    {
        Ok(id) => id,
        Err(f) => return Reply::fault(sim, &f),
    };
    let Some(push) = sim.push(&id) else {
        return Reply::fault(sim, &Fault::invalid("CheckoutRequestID"));
    };
    // A stuck push (`444`) is "being processed" forever, even once decided.
    let result = if push.behaviour.query_stuck() {
        None
    } else {
        push.result
    };
    match result {
        None => Reply::fault(
            sim,
            &Fault::generic_500("The transaction is being processed").with_request_id(id),
        ),
        Some(r) => Reply::ok(&StkQueryResponse {
            response_code: "0".into(),
            response_description: QUERY_ACCEPTED_DESC.into(),
            merchant_request_id: push.merchant_request_id,
            checkout_request_id: push.checkout_request_id,
            result_code: r.result_code.to_string(),
            result_desc: r.result_desc,
        }),
    }
}

// ---- control endpoints ----------------------------------------------------------

fn control_error(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": message }))
}

fn lookup_error(e: PushLookup) -> HttpResponse {
    match e {
        PushLookup::Unknown => control_error(StatusCode::NOT_FOUND, "unknown CheckoutRequestID"),
        PushLookup::Pending => control_error(
            StatusCode::CONFLICT,
            "the push is still pending; complete it first",
        ),
        PushLookup::AlreadyFinal => {
            control_error(StatusCode::CONFLICT, "the push is already final")
        }
    }
}

fn parse_control<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Box<HttpResponse>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(control_error(
            StatusCode::BAD_REQUEST,
            &format!("invalid JSON body: {e}"),
        ))
    })
}

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

pub async fn records(sim: SimData) -> HttpResponse {
    HttpResponse::Ok().json(sim.records())
}

pub async fn callbacks(sim: SimData) -> HttpResponse {
    HttpResponse::Ok().json(sim.callbacks_sent())
}

pub async fn expire_tokens(sim: SimData) -> HttpResponse {
    let n = sim.expire_tokens();
    HttpResponse::Ok().json(json!({ "expired": n }))
}

#[derive(Deserialize)]
struct ResendRequest {
    checkout_request_id: String,
}

pub async fn resend(sim: SimData, body: web::Bytes) -> HttpResponse {
    let r: ResendRequest = match parse_control(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    match sim.deliver(&r.checkout_request_id).await {
        Ok(sent) => HttpResponse::Ok().json(sent),
        Err(e) => lookup_error(e),
    }
}

#[derive(Deserialize)]
struct CompleteRequest {
    checkout_request_id: String,
    result_code: Value,
}

pub async fn complete(sim: SimData, body: web::Bytes) -> HttpResponse {
    let r: CompleteRequest = match parse_control(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let code = match &r.result_code {
        Value::Number(n) => n.as_i64().map(ResultCode::Code),
        Value::String(s) => ResultCode::from_text(s),
        _ => None,
    };
    let Some(code) = code else {
        return control_error(
            StatusCode::BAD_REQUEST,
            "result_code must be an integer or a short code string",
        );
    };
    if let Err(e) = sim.finalize(&r.checkout_request_id, code) {
        return lookup_error(e);
    }
    match sim.deliver(&r.checkout_request_id).await {
        Ok(sent) => HttpResponse::Ok().json(sent),
        Err(e) => lookup_error(e),
    }
}

#[derive(Deserialize, Default)]
struct HoldRequest {
    max_ms: Option<u64>,
}

/// `POST /sim/hold-pushes` `{"max_ms"?}`: hold accepted pushes' answers until released
/// (at most 30 s).
pub async fn hold_pushes(sim: SimData, body: web::Bytes) -> HttpResponse {
    let r: HoldRequest = if body.is_empty() {
        HoldRequest::default()
    } else {
        match parse_control(&body) {
            Ok(r) => r,
            Err(resp) => return *resp,
        }
    };
    let max = r
        .max_ms
        .map_or(crate::state::MAX_HOLD, Duration::from_millis);
    let max = sim.hold_pushes(max);
    HttpResponse::Ok().json(json!({ "holding": true, "max_ms": max.as_millis() as u64 }))
}

/// `POST /sim/release-pushes`: answers every held push now.
pub async fn release_pushes(sim: SimData) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "released": sim.release_pushes() }))
}

/// `GET /sim/held-pushes`: how many push answers are held right now.
pub async fn held_pushes(sim: SimData) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "held": sim.held_pushes() }))
}
