//! The Daraja HTTP client: a cached OAuth token, STK Push and STK Push Query.
//!
//! - **Token.** Fetched with client credentials, cached, and refreshed
//!   `token_refresh_margin_secs` before it expires (at most half its lifetime early, so a
//!   short-lived token is not fetched on every call). The refresh is single-flight:
//!   concurrent callers wait for one request and share its token, or its failure. When
//!   Daraja rejects a token (HTTP 401 or `404.001.03`) it is dropped and the call is
//!   retried once with a fresh one; a rejected token means the call was never processed.
//! - **Timestamps.** Generated once per request in EAT ([`password::timestamp`]) and used
//!   in both the `Password` and the body.
//! - **Retries.** Only where nothing can have happened upstream: a connection that could
//!   not be opened (the request was never sent) is retried once for OAuth, push and
//!   query. A push that may have reached Daraja (timeout after connecting, a broken
//!   connection, any 5xx) is never retried: the caller gets an error whose
//!   [`DarajaError::may_have_reached_daraja`] says so and must reconcile with a query.
//! - **Bounds.** Connect and whole-request timeouts on every call; response bodies are
//!   read up to [`MAX_RESPONSE_BYTES`]; redirects are not followed.
//! - **Secrets.** The consumer secret, passkey, token and `Password` never reach a log
//!   line, an error or a `Debug` string. Phone numbers are logged masked.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::config::{require_secret, ConfigError};
use crate::daraja::error::DarajaError;
use crate::daraja::password;
use crate::daraja::types::{
    codes, ErrorBody, FaultBody, StkPushRequest, StkPushResponse, StkQueryRequest,
    StkQueryResponse, TokenResponse, BUY_GOODS, PAYBILL,
};
use crate::ids::{AccountReference, Amount, CheckoutRequestId, Msisdn, ShortCode, TransactionDesc};
use crate::payment::ResultCode;

/// Largest response body the client reads. Anything larger is an error.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

const OAUTH_PATH: &str = "/oauth/v1/generate";
const STK_PUSH_PATH: &str = "/mpesa/stkpush/v1/processrequest";
const STK_QUERY_PATH: &str = "/mpesa/stkpushquery/v1/query";

/// Paybill or till. In configuration: `"paybill"` or `"buy_goods"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransactionType {
    #[serde(rename = "paybill")]
    PayBill,
    #[serde(rename = "buy_goods")]
    BuyGoods,
}

impl TransactionType {
    /// Daraja's `TransactionType` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PayBill => PAYBILL,
            Self::BuyGoods => BUY_GOODS,
        }
    }
}

fn default_request_timeout_ms() -> u64 {
    15_000
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_token_refresh_margin_secs() -> u64 {
    300
}

/// The `[daraja]` settings section. `Debug` prints no secret.
#[derive(Clone, Deserialize)]
pub struct DarajaClientSettings {
    /// `https://sandbox.safaricom.co.ke` or `https://api.safaricom.co.ke`; a trailing
    /// slash is ignored.
    pub base_url: String,
    pub consumer_key: SecretString,
    pub consumer_secret: SecretString,
    pub passkey: SecretString,
    /// `BusinessShortCode`: the paybill, or for tills the store/HO number; 5–7 digits.
    pub shortcode: String,
    pub transaction_type: TransactionType,
    /// `PartyB`: the till number for `buy_goods`. Defaults to `shortcode`.
    #[serde(default)]
    pub party_b: Option<String>,
    /// Bound on one whole HTTP exchange, body included.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Refresh the token this long before it expires.
    #[serde(default = "default_token_refresh_margin_secs")]
    pub token_refresh_margin_secs: u64,
}

impl fmt::Debug for DarajaClientSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DarajaClientSettings")
            .field("base_url", &self.base_url)
            .field("consumer_key", &"[REDACTED]")
            .field("consumer_secret", &"[REDACTED]")
            .field("passkey", &"[REDACTED]")
            .field("shortcode", &self.shortcode)
            .field("transaction_type", &self.transaction_type)
            .field("party_b", &self.party_b)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("token_refresh_margin_secs", &self.token_refresh_margin_secs)
            .finish()
    }
}

impl DarajaClientSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(format!("daraja.{m}")));
        let base = self.base_url.trim_end_matches('/');
        match reqwest::Url::parse(base) {
            Ok(u)
                if (u.scheme() == "https" || u.scheme() == "http")
                    && u.host_str().is_some()
                    && u.query().is_none()
                    && u.fragment().is_none() => {}
            _ => {
                return invalid(
                    "base_url must be an http(s) URL such as https://sandbox.safaricom.co.ke",
                )
            }
        }
        require_secret("daraja.consumer_key", &self.consumer_key, 1)?;
        require_secret("daraja.consumer_secret", &self.consumer_secret, 1)?;
        require_secret("daraja.passkey", &self.passkey, 1)?;
        if ShortCode::parse(&self.shortcode).is_err() {
            return invalid("shortcode must be 5 to 7 digits");
        }
        if let Some(p) = &self.party_b {
            if ShortCode::parse(p).is_err() {
                return invalid("party_b must be 5 to 7 digits");
            }
        }
        if self.connect_timeout_ms == 0 || self.request_timeout_ms == 0 {
            return invalid("request_timeout_ms and connect_timeout_ms must be greater than 0");
        }
        if self.connect_timeout_ms > self.request_timeout_ms {
            return invalid("connect_timeout_ms must not exceed request_timeout_ms");
        }
        if self.token_refresh_margin_secs >= 3600 {
            return invalid(
                "token_refresh_margin_secs must be less than 3600 (tokens live an hour)",
            );
        }
        Ok(())
    }

    /// `PartyB`: `party_b`, else the shortcode.
    pub fn party_b(&self) -> &str {
        self.party_b.as_deref().unwrap_or(&self.shortcode)
    }
}

/// One STK push to send.
#[derive(Clone)]
pub struct StkPush {
    /// Pays and receives the PIN prompt (`PartyA` and `PhoneNumber`).
    pub phone: Msisdn,
    pub amount: Amount,
    pub account_reference: AccountReference,
    /// `TransactionDesc`; when `None` the account reference is sent (it fits: 12 ≤ 13).
    pub description: Option<TransactionDesc>,
    /// `CallBackURL`: an http(s) URL without whitespace. It usually carries a secret
    /// token, so `Debug` shows only its origin.
    pub callback_url: String,
}

impl fmt::Debug for StkPush {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StkPush")
            .field("phone", &self.phone)
            .field("amount", &self.amount)
            .field("account_reference", &self.account_reference)
            .field("description", &self.description)
            .field("callback_url", &url_origin(&self.callback_url))
            .finish()
    }
}

fn url_origin(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!("{}/…", u.origin().ascii_serialization()),
        Err(_) => "<invalid>".to_owned(),
    }
}

/// What STK Push Query says about a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StkQueryStatus {
    /// Not decided yet: keep waiting. HTTP 500 `500.001.1001` "The transaction is being
    /// processed", or a 200 answer with [`QUERY_STILL_PROCESSING`] (4999).
    Pending,
    /// Final for this CheckoutRequestID. Only `ResultCode` 0 means paid.
    Final {
        merchant_request_id: String,
        result_code: ResultCode,
        result_desc: String,
    },
}

/// The STK Push Query `ResultCode` for "the transaction is still under processing": not
/// a verdict.
pub const QUERY_STILL_PROCESSING: i64 = 4999;

/// The Daraja client. Cheap to clone; clones share the token cache and connection pool.
#[derive(Clone)]
pub struct DarajaClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    settings: DarajaClientSettings,
    base: String,
    /// The cached token. A sync lock, never held across an `.await`.
    token: RwLock<Option<CachedToken>>,
    /// Held by the one caller that fetches a token.
    refresh: tokio::sync::Mutex<()>,
    /// Completed token fetches, and the failure of the last one if it failed: callers
    /// that waited for a failed fetch share its error instead of each trying again.
    fetches: AtomicU64,
    last_failure: Mutex<Option<(u64, DarajaError)>>,
    generation: AtomicU64,
}

struct CachedToken {
    token: SecretString,
    refresh_at: Instant,
    generation: u64,
}

impl fmt::Debug for DarajaClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DarajaClient")
            .field("base_url", &self.inner.base)
            .field("shortcode", &self.inner.settings.shortcode)
            .finish_non_exhaustive()
    }
}

/// How long after it was issued a token should be replaced: `margin` before expiry,
/// but never earlier than half its lifetime.
fn refresh_after(expires_in_secs: u64, margin_secs: u64) -> Duration {
    let margin = margin_secs.min(expires_in_secs / 2);
    Duration::from_secs(expires_in_secs - margin)
}

#[derive(Clone, Copy)]
enum Op {
    Push,
    Query,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Self::Push => "push",
            Self::Query => "query",
        }
    }
}

impl DarajaClient {
    /// Validates the settings and builds the HTTP client (rustls, timeouts, no redirects).
    pub fn new(settings: DarajaClientSettings) -> Result<Self, DarajaError> {
        settings
            .validate()
            .map_err(|e| DarajaError::Config(e.to_string()))?;
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
            .timeout(Duration::from_millis(settings.request_timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("stk-relay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| DarajaError::Config(describe(&e)))?;
        let base = settings.base_url.trim_end_matches('/').to_owned();
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                settings,
                base,
                token: RwLock::new(None),
                refresh: tokio::sync::Mutex::new(()),
                fetches: AtomicU64::new(0),
                last_failure: Mutex::new(None),
                generation: AtomicU64::new(0),
            }),
        })
    }

    pub fn settings(&self) -> &DarajaClientSettings {
        &self.inner.settings
    }

    /// A valid access token, from the cache when it is fresh.
    pub async fn access_token(&self) -> Result<SecretString, DarajaError> {
        self.token().await.map(|(t, _)| t)
    }

    /// Sends an STK push. `Ok` means Daraja queued the prompt; it is never proof of
    /// payment. On error, [`DarajaError::may_have_reached_daraja`] tells whether the push
    /// may still be live.
    pub async fn stk_push(&self, req: &StkPush) -> Result<StkPushResponse, DarajaError> {
        let span = tracing::info_span!(
            "daraja.stk_push",
            phone = %req.phone,
            amount = req.amount.get(),
            checkout_request_id = tracing::field::Empty,
        );
        async {
            check_callback_url(&req.callback_url)?;
            let s = &self.inner.settings;
            let desc = req
                .description
                .as_ref()
                .map(|d| d.as_str().to_owned())
                .unwrap_or_else(|| req.account_reference.as_str().chars().take(13).collect());
            let build = |timestamp: String, password: String| StkPushRequest {
                business_short_code: s.shortcode.clone(),
                password,
                timestamp,
                transaction_type: s.transaction_type.as_str().to_owned(),
                amount: req.amount.get().to_string(),
                party_a: req.phone.as_str().to_owned(),
                party_b: s.party_b().to_owned(),
                phone_number: req.phone.as_str().to_owned(),
                callback_url: req.callback_url.clone(),
                account_reference: req.account_reference.as_str().to_owned(),
                transaction_desc: Some(desc.clone()),
            };
            let (status, body) = self.call(Op::Push, STK_PUSH_PATH, build).await?;
            let resp = parse_push_response(status, &body)?;
            tracing::Span::current()
                .record("checkout_request_id", resp.checkout_request_id.as_str());
            tracing::info!("STK push accepted by Daraja");
            Ok(resp)
        }
        .instrument(span.clone())
        .await
        .inspect_err(|e| span.in_scope(|| log_error("STK push failed", e)))
    }

    /// Asks Daraja where a push stands. "Being processed" is [`StkQueryStatus::Pending`].
    pub async fn stk_query(&self, id: &CheckoutRequestId) -> Result<StkQueryStatus, DarajaError> {
        let span = tracing::info_span!("daraja.stk_query", checkout_request_id = %id);
        async {
            let s = &self.inner.settings;
            let build = |timestamp: String, password: String| StkQueryRequest {
                business_short_code: s.shortcode.clone(),
                password,
                timestamp,
                checkout_request_id: id.as_str().to_owned(),
            };
            let (status, body) = self.call(Op::Query, STK_QUERY_PATH, build).await?;
            let result = parse_query_response(status, &body, id)?;
            tracing::debug!(
                pending = matches!(result, StkQueryStatus::Pending),
                "STK query answered"
            );
            Ok(result)
        }
        .instrument(span.clone())
        .await
        .inspect_err(|e| span.in_scope(|| log_error("STK query failed", e)))
    }

    /// Sends one authenticated POST: token, timestamp and password, the connect-error
    /// retry, and the once-only retry after a rejected token. Returns the status and body
    /// of any other answer.
    async fn call<B: Serialize>(
        &self,
        op: Op,
        path: &str,
        build: impl Fn(String, String) -> B,
    ) -> Result<(u16, bytes::Bytes), DarajaError> {
        let url = format!("{}{}", self.inner.base, path);
        let mut auth_retried = false;
        loop {
            let (token, generation) = self.token().await?;
            // One timestamp per request, shared by the password and the body.
            let timestamp = password::timestamp(Utc::now());
            let pw = password::password(
                &self.inner.settings.shortcode,
                &self.inner.settings.passkey,
                &timestamp,
            );
            let body = build(timestamp, pw);
            let (status, bytes) = self
                .send(|| {
                    self.inner
                        .http
                        .post(&url)
                        .bearer_auth(token.expose_secret())
                        .json(&body)
                })
                .await?;
            if (status == 401 || status == 404)
                && !auth_retried
                && parse_error(status, &bytes).is_invalid_token()
            {
                tracing::info!(
                    op = op.as_str(),
                    status,
                    "Daraja rejected the access token; fetching a new one and retrying once"
                );
                self.invalidate(generation);
                auth_retried = true;
                continue;
            }
            return Ok((status, bytes));
        }
    }

    /// Sends a request, retrying once if the connection could not be opened (the
    /// request was never sent), and reads the body up to [`MAX_RESPONSE_BYTES`].
    async fn send(
        &self,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<(u16, bytes::Bytes), DarajaError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match build().send().await {
                Ok(resp) => return read_limited(resp).await,
                Err(e) => {
                    let err = map_reqwest_error(&e);
                    if matches!(err, DarajaError::Transport(_)) && attempt == 1 {
                        tracing::debug!(error = %err, "could not connect to Daraja; retrying once");
                        continue;
                    }
                    return Err(err);
                }
            }
        }
    }

    fn cached_fresh(&self) -> Option<(SecretString, u64)> {
        let guard = self.inner.token.read().unwrap_or_else(|p| p.into_inner());
        match &*guard {
            Some(t) if Instant::now() < t.refresh_at => Some((t.token.clone(), t.generation)),
            _ => None,
        }
    }

    /// The cached token, or a fresh one from a single-flight fetch.
    async fn token(&self) -> Result<(SecretString, u64), DarajaError> {
        if let Some(t) = self.cached_fresh() {
            return Ok(t);
        }
        let seen = self.inner.fetches.load(Ordering::SeqCst);
        let _guard = self.inner.refresh.lock().await;
        if let Some(t) = self.cached_fresh() {
            return Ok(t);
        }
        // A fetch that finished while we waited failed: share its error.
        {
            let last = self
                .inner
                .last_failure
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some((n, err)) = &*last {
                if *n > seen {
                    return Err(err.clone());
                }
            }
        }
        let result = self.fetch_token().await;
        let n = self.inner.fetches.fetch_add(1, Ordering::SeqCst) + 1;
        let mut last = self
            .inner
            .last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match result {
            Ok((token, expires_in)) => {
                *last = None;
                let generation = self.inner.generation.fetch_add(1, Ordering::SeqCst) + 1;
                let refresh_at = Instant::now()
                    + refresh_after(expires_in, self.inner.settings.token_refresh_margin_secs);
                *self.inner.token.write().unwrap_or_else(|p| p.into_inner()) = Some(CachedToken {
                    token: token.clone(),
                    refresh_at,
                    generation,
                });
                tracing::debug!(expires_in, "fetched a Daraja access token");
                Ok((token, generation))
            }
            Err(e) => {
                *last = Some((n, e.clone()));
                Err(e)
            }
        }
    }

    /// Drops the cached token if it is the one that was rejected (a newer one stays).
    fn invalidate(&self, generation: u64) {
        let mut guard = self.inner.token.write().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_some_and(|t| t.generation == generation) {
            *guard = None;
        }
    }

    async fn fetch_token(&self) -> Result<(SecretString, u64), DarajaError> {
        let s = &self.inner.settings;
        let url = format!("{}{}", self.inner.base, OAUTH_PATH);
        let (status, body) = self
            .send(|| {
                self.inner
                    .http
                    .get(&url)
                    .query(&[("grant_type", "client_credentials")])
                    .basic_auth(
                        s.consumer_key.expose_secret(),
                        Some(s.consumer_secret.expose_secret()),
                    )
            })
            .await
            .map_err(|e| match e {
                // The token request timing out means the push or query was never sent.
                DarajaError::Timeout { .. } => DarajaError::Timeout {
                    may_have_reached_daraja: false,
                },
                // Likewise for a connection lost during the token request.
                DarajaError::ConnectionLost(m) => DarajaError::Transport(m),
                other => other,
            })?;
        if status != 200 {
            return Err(match parse_error(status, &body) {
                DarajaError::Api {
                    status,
                    error_code,
                    error_message,
                    ..
                } => DarajaError::Auth {
                    status,
                    error_code,
                    error_message,
                },
                DarajaError::UnexpectedResponse { status, detail } => DarajaError::Auth {
                    status,
                    error_code: String::new(),
                    error_message: detail,
                },
                other => other,
            });
        }
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| DarajaError::Auth {
                status,
                error_code: String::new(),
                error_message: format!("undecodable token response: {e}"),
            })?;
        if parsed.access_token.is_empty() || parsed.expires_in == 0 {
            return Err(DarajaError::Auth {
                status,
                error_code: String::new(),
                error_message: "token response without a token or lifetime".into(),
            });
        }
        Ok((SecretString::from(parsed.access_token), parsed.expires_in))
    }
}

fn log_error(what: &str, e: &DarajaError) {
    if e.may_have_reached_daraja() {
        tracing::warn!(error = %e, may_have_reached_daraja = true, "{what}");
    } else {
        tracing::warn!(error = %e, may_have_reached_daraja = false, "{what}");
    }
}

fn check_callback_url(url: &str) -> Result<(), DarajaError> {
    let bad =
        || DarajaError::InvalidRequest("callback_url must be an http(s) URL without spaces".into());
    if url.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    match reqwest::Url::parse(url) {
        Ok(u) if (u.scheme() == "https" || u.scheme() == "http") && u.host_str().is_some() => {
            Ok(())
        }
        _ => Err(bad()),
    }
}

/// The error chain of a reqwest error, without the request URL.
fn describe(e: &reqwest::Error) -> String {
    let mut out = String::new();
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = source {
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s.to_string());
        source = s.source();
    }
    if out.is_empty() {
        out = e.to_string();
    }
    out
}

fn map_reqwest_error(e: &reqwest::Error) -> DarajaError {
    if e.is_timeout() {
        DarajaError::Timeout {
            may_have_reached_daraja: !e.is_connect(),
        }
    } else if e.is_connect() {
        DarajaError::Transport(describe(e))
    } else if e.is_builder() {
        DarajaError::InvalidRequest(describe(e))
    } else {
        DarajaError::ConnectionLost(describe(e))
    }
}

async fn read_limited(mut resp: reqwest::Response) -> Result<(u16, bytes::Bytes), DarajaError> {
    let status = resp.status().as_u16();
    let too_large = || DarajaError::UnexpectedResponse {
        status,
        detail: format!("response body larger than {MAX_RESPONSE_BYTES} bytes"),
    };
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| map_reqwest_error(&e))? {
        if buf.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((status, buf.freeze()))
}

/// A short, printable excerpt of an unexpected body.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text
        .chars()
        .take(200)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > 200 {
        out.push('…');
    }
    if out.trim().is_empty() {
        "empty body".into()
    } else {
        out
    }
}

/// Turns a non-success answer into an error: Daraja's error body, an Apigee fault, or
/// an undecodable body.
fn parse_error(status: u16, body: &[u8]) -> DarajaError {
    if let Ok(e) = serde_json::from_slice::<ErrorBody>(body) {
        return DarajaError::Api {
            status,
            error_code: e.error_code,
            error_message: e.error_message,
            request_id: e.request_id,
        };
    }
    if let Ok(f) = serde_json::from_slice::<FaultBody>(body) {
        return DarajaError::Api {
            status,
            error_code: f
                .fault
                .detail
                .map(|d| d.errorcode)
                .unwrap_or_else(|| "fault".to_owned()),
            error_message: f.fault.faultstring,
            request_id: String::new(),
        };
    }
    DarajaError::UnexpectedResponse {
        status,
        detail: snippet(body),
    }
}

fn parse_push_response(status: u16, body: &[u8]) -> Result<StkPushResponse, DarajaError> {
    if !(200..300).contains(&status) {
        return Err(parse_error(status, body));
    }
    let resp: StkPushResponse =
        serde_json::from_slice(body).map_err(|e| DarajaError::UnexpectedResponse {
            status,
            detail: format!("undecodable STK push response: {e}"),
        })?;
    if resp.response_code.trim() != "0" {
        return Err(DarajaError::Api {
            status,
            error_code: resp.response_code,
            error_message: resp.response_description,
            request_id: resp.merchant_request_id,
        });
    }
    if CheckoutRequestId::parse(&resp.checkout_request_id).is_err() {
        return Err(DarajaError::UnexpectedResponse {
            status,
            detail: "STK push response with a malformed CheckoutRequestID".into(),
        });
    }
    Ok(resp)
}

/// STK Push Query's "still pending" answer: HTTP 500, `500.001.1001`, "The transaction
/// is being processed". The code is overloaded, so the message decides.
fn is_pending(err: &DarajaError) -> bool {
    matches!(err, DarajaError::Api { status: 500, error_code, error_message, .. }
        if error_code == codes::GENERIC_500
            && error_message.to_ascii_lowercase().contains("being processed"))
}

fn parse_query_response(
    status: u16,
    body: &[u8],
    id: &CheckoutRequestId,
) -> Result<StkQueryStatus, DarajaError> {
    if !(200..300).contains(&status) {
        let err = parse_error(status, body);
        if is_pending(&err) {
            return Ok(StkQueryStatus::Pending);
        }
        return Err(err);
    }
    let resp: StkQueryResponse =
        serde_json::from_slice(body).map_err(|e| DarajaError::UnexpectedResponse {
            status,
            detail: format!("undecodable STK query response: {e}"),
        })?;
    if resp.checkout_request_id != id.as_str() {
        return Err(DarajaError::UnexpectedResponse {
            status,
            detail: "STK query answered for another CheckoutRequestID".into(),
        });
    }
    // A request Daraja did not accept carries no verdict, whatever ResultCode says.
    if resp.response_code.trim() != "0" {
        return Err(DarajaError::Api {
            status,
            error_code: resp.response_code,
            error_message: resp.response_description,
            request_id: String::new(),
        });
    }
    let result_code = ResultCode::from_text(&resp.result_code).ok_or_else(|| {
        DarajaError::UnexpectedResponse {
            status,
            detail: "STK query response with a malformed ResultCode".into(),
        }
    })?;
    if result_code == ResultCode::Code(QUERY_STILL_PROCESSING) {
        return Ok(StkQueryStatus::Pending);
    }
    Ok(StkQueryStatus::Final {
        merchant_request_id: resp.merchant_request_id,
        result_code,
        result_desc: resp.result_desc,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    fn settings() -> DarajaClientSettings {
        DarajaClientSettings {
            base_url: "https://sandbox.safaricom.co.ke/".into(),
            consumer_key: SecretString::from("key".to_owned()),
            consumer_secret: SecretString::from("very-secret-consumer".to_owned()),
            passkey: SecretString::from("very-secret-passkey".to_owned()),
            shortcode: "174379".into(),
            transaction_type: TransactionType::PayBill,
            party_b: None,
            request_timeout_ms: 10_000,
            connect_timeout_ms: 2_000,
            token_refresh_margin_secs: 300,
        }
    }

    #[test]
    fn settings_validate_and_never_print_secrets() {
        let s = settings();
        assert!(s.validate().is_ok());
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("very-secret"), "{dbg}");
        assert_eq!(s.party_b(), "174379");

        let mut bad = settings();
        bad.shortcode = "12ab".into();
        assert!(bad.validate().is_err());
        let mut bad = settings();
        bad.base_url = "ftp://x".into();
        assert!(bad.validate().is_err());
        let mut bad = settings();
        bad.passkey = SecretString::from(String::new());
        assert!(bad.validate().is_err());
        let mut bad = settings();
        bad.connect_timeout_ms = 20_000;
        assert!(bad.validate().is_err());
        let mut bad = settings();
        bad.party_b = Some("till".into());
        assert!(bad.validate().is_err());
        let mut bad = settings();
        bad.token_refresh_margin_secs = 3600;
        assert!(bad.validate().is_err());
        assert!(DarajaClient::new(bad).is_err());
    }

    #[test]
    fn settings_deserialize_with_defaults() {
        let s: DarajaClientSettings = serde_json::from_str(
            r#"{"base_url":"https://api.safaricom.co.ke","consumer_key":"k","consumer_secret":"s",
                "passkey":"p","shortcode":"600000","transaction_type":"buy_goods","party_b":"5000001"}"#,
        )
        .unwrap();
        assert_eq!(s.transaction_type, TransactionType::BuyGoods);
        assert_eq!(s.transaction_type.as_str(), "CustomerBuyGoodsOnline");
        assert_eq!(TransactionType::PayBill.as_str(), "CustomerPayBillOnline");
        assert_eq!(s.party_b(), "5000001");
        assert_eq!(s.token_refresh_margin_secs, 300);
        assert!(s.validate().is_ok());
        let t: TransactionType = serde_json::from_str(r#""paybill""#).unwrap();
        assert_eq!(t, TransactionType::PayBill);
    }

    #[test]
    fn refresh_margin_arithmetic() {
        assert_eq!(refresh_after(3599, 300), Duration::from_secs(3299));
        assert_eq!(refresh_after(3599, 0), Duration::from_secs(3599));
        // Never earlier than half the lifetime.
        assert_eq!(refresh_after(2, 300), Duration::from_secs(1));
        assert_eq!(refresh_after(1, 300), Duration::from_secs(1));
    }

    #[test]
    fn error_bodies_map() {
        let e = parse_error(
            400,
            br#"{"requestId":"1-2-3","errorCode":"400.002.02","errorMessage":"Bad Request - Invalid Amount"}"#,
        );
        assert_eq!(e.daraja_error_code(), Some("400.002.02"));
        let e = parse_error(
            429,
            br#"{"fault":{"faultstring":"Spike arrest violation. Allowed rate : 5ps","detail":{"errorcode":"policies.ratelimit.SpikeArrestViolation"}}}"#,
        );
        assert_eq!(
            e.daraja_error_code(),
            Some(crate::daraja::error::SPIKE_ARREST_FAULT)
        );
        assert!(e.is_rate_limited());
        let e = parse_error(502, b"<html>bad gateway</html>");
        assert!(matches!(
            e,
            DarajaError::UnexpectedResponse { status: 502, .. }
        ));
        let e = parse_error(
            404,
            br#"{"requestId":"x","errorCode":"404.001.03","errorMessage":"Invalid Access Token"}"#,
        );
        assert!(e.is_invalid_token());
    }

    #[test]
    fn query_pending_versus_errors() {
        let id = CheckoutRequestId::parse("ws_CO_21072024125130652700961992").unwrap();
        let pending = br#"{"requestId":"ws_CO_21072024125130652700961992","errorCode":"500.001.1001","errorMessage":"The transaction is being processed"}"#;
        assert_eq!(
            parse_query_response(500, pending, &id).unwrap(),
            StkQueryStatus::Pending
        );
        let wrong =
            br#"{"requestId":"r","errorCode":"500.001.1001","errorMessage":"Wrong credentials"}"#;
        assert_eq!(
            parse_query_response(500, wrong, &id)
                .unwrap_err()
                .daraja_error_code(),
            Some("500.001.1001")
        );
        let done = br#"{"ResponseCode":"0","ResponseDescription":"The service request has been accepted successsfully","MerchantRequestID":"m-1","CheckoutRequestID":"ws_CO_21072024125130652700961992","ResultCode":"1032","ResultDesc":"Request cancelled by user"}"#;
        assert_eq!(
            parse_query_response(200, done, &id).unwrap(),
            StkQueryStatus::Final {
                merchant_request_id: "m-1".into(),
                result_code: ResultCode::Code(1032),
                result_desc: "Request cancelled by user".into(),
            }
        );
        let other = CheckoutRequestId::parse("ws_CO_other").unwrap();
        assert!(parse_query_response(200, done, &other).is_err());
    }

    #[test]
    fn query_answers_that_are_not_verdicts() {
        let id = CheckoutRequestId::parse("ws_CO_21072024125130652700961992").unwrap();
        // ResultCode 4999: still under processing.
        let still = br#"{"ResponseCode":"0","ResponseDescription":"The service request has been accepted successsfully","MerchantRequestID":"m-1","CheckoutRequestID":"ws_CO_21072024125130652700961992","ResultCode":"4999","ResultDesc":"The transaction is still under processing"}"#;
        assert_eq!(
            parse_query_response(200, still, &id).unwrap(),
            StkQueryStatus::Pending
        );
        // A ResponseCode other than 0: no verdict, even with a ResultCode.
        let refused = br#"{"ResponseCode":"1","ResponseDescription":"Rejected","MerchantRequestID":"m-1","CheckoutRequestID":"ws_CO_21072024125130652700961992","ResultCode":"1032","ResultDesc":"Request cancelled by user"}"#;
        assert!(parse_query_response(200, refused, &id).is_err());
        // Invalid CheckoutRequestID (Daraja may not know the id yet).
        let unknown = br#"{"requestId":"r","errorCode":"400.002.02","errorMessage":"Bad Request - Invalid CheckoutRequestID"}"#;
        assert_eq!(
            parse_query_response(400, unknown, &id)
                .unwrap_err()
                .daraja_error_code(),
            Some("400.002.02")
        );
        // Spike arrest (Apigee) and 500.003.02.
        let spike = br#"{"fault":{"faultstring":"Spike arrest violation. Allowed rate : 5ps","detail":{"errorcode":"policies.ratelimit.SpikeArrestViolation"}}}"#;
        assert!(parse_query_response(429, spike, &id)
            .unwrap_err()
            .is_rate_limited());
        let busy = br#"{"requestId":"r","errorCode":"500.003.02","errorMessage":"Spike Arrest Violation"}"#;
        assert!(parse_query_response(500, busy, &id)
            .unwrap_err()
            .is_rate_limited());
        // Other 5xx, an HTML error page, an empty 200.
        assert!(parse_query_response(503, b"<html>unavailable</html>", &id).is_err());
        assert!(parse_query_response(200, b"", &id).is_err());
        let no_result = br#"{"ResponseCode":"0","ResponseDescription":"ok","MerchantRequestID":"m-1","CheckoutRequestID":"ws_CO_21072024125130652700961992","ResultCode":"","ResultDesc":""}"#;
        assert!(parse_query_response(200, no_result, &id).is_err());
    }

    #[test]
    fn push_response_checks() {
        let ok = br#"{"MerchantRequestID":"2654-4b64-97ff-b827b542881d3130","CheckoutRequestID":"ws_CO_1007202409152617172396192","ResponseCode":"0","ResponseDescription":"Success. Request accepted for processing","CustomerMessage":"Success. Request accepted for processing"}"#;
        assert!(parse_push_response(200, ok).is_ok());
        let not_zero = br#"{"MerchantRequestID":"m","CheckoutRequestID":"ws_CO_1","ResponseCode":"1","ResponseDescription":"Rejected","CustomerMessage":"Rejected"}"#;
        assert_eq!(
            parse_push_response(200, not_zero)
                .unwrap_err()
                .daraja_error_code(),
            Some("1")
        );
        let e = parse_push_response(200, b"{").unwrap_err();
        assert!(e.may_have_reached_daraja());
    }

    #[test]
    fn callback_urls_are_checked_and_hidden() {
        assert!(check_callback_url("https://example.com/cb/abc").is_ok());
        assert!(check_callback_url("http://127.0.0.1:8080/cb").is_ok());
        assert!(check_callback_url("https://example.com/c b").is_err());
        assert!(check_callback_url(" https://example.com/cb").is_err());
        assert!(check_callback_url("ftp://example.com/cb").is_err());
        assert!(check_callback_url("").is_err());
        let push = StkPush {
            phone: Msisdn::parse("0712345678").unwrap(),
            amount: Amount::new(10).unwrap(),
            account_reference: AccountReference::parse("INV1").unwrap(),
            description: None,
            callback_url: "https://example.com/cb/secret-token".into(),
        };
        let dbg = format!("{push:?}");
        assert!(!dbg.contains("secret-token"), "{dbg}");
        assert!(!dbg.contains("712345678"), "{dbg}");
    }
}
