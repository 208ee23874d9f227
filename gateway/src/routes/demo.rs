//! The demo checkout: a page that starts a payment and shows it complete in the
//! browser, for standalone mode only. The cluster binary never registers these routes.
//!
//! - `GET /demo/` (and its `app.css`, `app.js`): the page, embedded from
//!   `gateway/demo/` at build time; plain HTML, CSS and JS.
//! - `GET /demo/config.json`: [`DemoConfig`], what the page may offer.
//! - `POST /demo/pay`: starts a push without an API key ([`DemoPayRequest`] →
//!   `PushResponse`). With the in-process simulator the body may name the outcome, which
//!   is passed to the simulator the only way Daraja's format allows: the last three
//!   digits of the phone number (`daraja-sim/README.md`).
//!
//! The browser client itself (`/v1/client.js`) is served by every gateway
//! ([`client_js`]), not only here.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use stk_relay_shared::api::{DemoConfig, DemoPayRequest};
use stk_relay_shared::ids::{AccountReference, Amount, Msisdn, TransactionDesc, ValidationError};

use crate::error::ApiError;
use crate::routes::push::{send_push, ValidPush};
use crate::routes::{parse_json, read_body};
use crate::startup::AppState;

const INDEX_HTML: &str = include_str!("../../demo/index.html");
const APP_CSS: &str = include_str!("../../demo/app.css");
const APP_JS: &str = include_str!("../../demo/app.js");
const CLIENT_JS: &str = include_str!("../../../clients/js/src/index.js");

/// Largest demo request body.
const MAX_BODY: usize = 4096;

/// The simulator outcomes the page may ask for, and the phone suffix that selects each
/// (`daraja-sim/src/outcome.rs` holds the simulator's table; a test checks they agree).
pub const OUTCOMES: &[(&str, &str)] = &[
    ("success", "000"),
    ("cancelled", "132"),
    ("insufficient_funds", "101"),
    ("wrong_pin", "201"),
    ("timeout", "137"),
    ("no_callback", "999"),
];

/// How the demo is set up, given by the process that serves it.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Daraja is the in-process simulator: outcomes may be chosen.
    pub simulator: bool,
    /// The prompt's lifetime shown by the page's countdown.
    pub prompt_secs: u64,
}

/// Registers the demo routes with `options`.
pub fn configure(
    options: DemoOptions,
) -> impl Fn(&mut web::ServiceConfig) + Clone + Send + 'static {
    let options = web::Data::new(options);
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(options.clone())
            .route("/", web::get().to(to_demo))
            .route("/demo", web::get().to(to_demo))
            .route(
                "/demo/",
                web::get().to(|| asset(INDEX_HTML, "text/html; charset=utf-8")),
            )
            .route(
                "/demo/app.css",
                web::get().to(|| asset(APP_CSS, "text/css; charset=utf-8")),
            )
            .route(
                "/demo/app.js",
                web::get().to(|| asset(APP_JS, "text/javascript; charset=utf-8")),
            )
            .route("/demo/config.json", web::get().to(config))
            .route("/demo/pay", web::post().to(pay));
    }
}

async fn to_demo() -> HttpResponse {
    HttpResponse::Found()
        .insert_header((header::LOCATION, "/demo/"))
        .finish()
}

async fn asset(body: &'static str, content_type: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(body)
}

/// `GET /v1/client.js`: the browser client (`clients/js/`), as an ES module.
pub async fn client_js() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .body(CLIENT_JS)
}

async fn config(options: web::Data<DemoOptions>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(DemoConfig {
            simulator: options.simulator,
            prompt_secs: options.prompt_secs,
            outcomes: if options.simulator {
                OUTCOMES.iter().map(|(o, _)| (*o).to_owned()).collect()
            } else {
                Vec::new()
            },
        })
}

/// The phone the simulator should see for `outcome`: the buyer's with its last three
/// digits replaced by the outcome's suffix.
fn phone_for(phone: &Msisdn, outcome: &str) -> Result<Msisdn, ApiError> {
    let suffix = OUTCOMES
        .iter()
        .find(|(o, _)| *o == outcome)
        .map(|(_, s)| *s)
        .ok_or(ValidationError::Invalid {
            field: "outcome",
            reason: "must be one of success, cancelled, insufficient_funds, wrong_pin, timeout, no_callback",
        })?;
    let digits = phone.as_str();
    let head = digits.get(..digits.len().saturating_sub(3)).unwrap_or("");
    Ok(Msisdn::parse(&format!("{head}{suffix}"))?)
}

#[tracing::instrument(name = "demo_pay", skip_all, fields(checkout_request_id = tracing::field::Empty))]
async fn pay(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    options: web::Data<DemoOptions>,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload, MAX_BODY).await?;
    let raw: DemoPayRequest = parse_json(&body)?;
    let mut phone = Msisdn::parse(&raw.phone)?;
    let amount = Amount::from_json(&raw.amount)?;
    match (raw.outcome.as_deref(), options.simulator) {
        (None, _) => {}
        (Some(o), true) => phone = phone_for(&phone, o)?,
        (Some(_), false) => {
            return Err(ValidationError::Invalid {
                field: "outcome",
                reason: "only the simulator can be told an outcome",
            }
            .into())
        }
    }
    let push = ValidPush::new(
        phone,
        amount,
        AccountReference::parse("DEMO")?,
        Some(TransactionDesc::parse("Demo checkout")?),
    );
    let request = stk_relay_shared::http::request_span(&req);
    // `send_push` records the payment's id on this span and the request's.
    let response = send_push(&state, push, &request)
        .await
        .map_err(|f| f.error)?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(response))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_sets_the_last_three_digits() {
        let p = Msisdn::parse("0712345678").expect("valid");
        assert_eq!(
            phone_for(&p, "cancelled").expect("known").as_str(),
            "254712345132"
        );
        assert_eq!(
            phone_for(&p, "success").expect("known").as_str(),
            "254712345000"
        );
        assert!(phone_for(&p, "refund").is_err());
    }

    /// The demo's suffixes give, at the simulator, the results the page promises.
    #[test]
    fn suffixes_agree_with_the_simulator() {
        use stk_relay_daraja_sim::outcome::{behaviour_for, Behaviour};
        let expected = [
            ("success", Behaviour::Result(0)),
            ("cancelled", Behaviour::Result(1032)),
            ("insufficient_funds", Behaviour::Result(1)),
            ("wrong_pin", Behaviour::Result(2001)),
            ("timeout", Behaviour::Result(1037)),
            ("no_callback", Behaviour::Lost),
        ];
        assert_eq!(OUTCOMES.len(), expected.len());
        let p = Msisdn::parse("0712345678").expect("valid");
        for (outcome, behaviour) in expected {
            let phone = phone_for(&p, outcome).expect("known");
            assert_eq!(behaviour_for(phone.as_str()), behaviour, "{outcome}");
        }
    }
}
