//! The Daraja simulator's control API, as the tests use it.
//!
//! The simulator picks a push's outcome from the last three digits of the phone number
//! (see `daraja-sim/README.md`); the tests mostly use [`MANUAL`] (no callback until
//! `POST /sim/complete`) so that they decide when and where a callback arrives.

use std::collections::HashMap;

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};
use stk_relay_daraja_sim::{RecordedRequest, RequestKind, SentCallback};
use stk_relay_shared::daraja::types::StkPushRequest;

/// Phone suffix: no callback until `POST /sim/complete`.
pub const MANUAL: &str = "333";
/// Phone suffix: a success callback, sent twice.
pub const DUPLICATE: &str = "222";
/// Phone suffix: no callback ever.
pub const NO_CALLBACK: &str = "999";
/// Phone suffix: no callback, and STK Query answers "being processed" forever.
pub const STUCK: &str = "444";

/// Default simulator credentials.
pub const CONSUMER_KEY: &str = "sim-consumer-key";
pub const CONSUMER_SECRET: &str = "sim-consumer-secret";
pub const SHORTCODE: &str = "174379";
pub const PASSKEY: &str = "bfb279f9aa9bdbcf158e97dd71a467cd2e0c893059b10f78e6b72ada1ed2c919";

/// A phone number `2547NNNNN<suffix>`, distinct for each `n` below 100 000.
pub fn phone(n: u32, suffix: &str) -> String {
    format!("2547{:05}{suffix}", n % 100_000)
}

/// A client for one simulator.
#[derive(Clone)]
pub struct SimControl {
    base: String,
    http: reqwest::Client,
}

impl SimControl {
    pub fn new(base: &str, http: reqwest::Client) -> Self {
        Self {
            base: base.to_owned(),
            http,
        }
    }

    async fn get_json(&self, path: &str) -> Result<Value> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .timeout(crate::STEP)
            .send()
            .await
            .with_context(|| format!("GET sim {path}"))?;
        let status = resp.status();
        let body = resp.text().await?;
        if !status.is_success() {
            bail!("GET sim {path}: {status}: {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("GET sim {path}: not JSON: {body}"))
    }

    async fn post_json(&self, path: &str, body: Value) -> Result<Value> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .timeout(crate::STEP)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("POST sim {path}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("POST sim {path}: {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// `GET /sim/records`: every request the simulator received.
    pub async fn records(&self) -> Result<Value> {
        self.get_json("/sim/records").await
    }

    /// `GET /sim/callbacks`: every callback the simulator sent, with the answer it got.
    pub async fn callbacks(&self) -> Result<Value> {
        self.get_json("/sim/callbacks").await
    }

    /// `POST /sim/complete`: sends the callback of a manual-mode push now.
    pub async fn complete(&self, checkout_request_id: &str, result_code: i64) -> Result<Value> {
        self.post_json(
            "/sim/complete",
            json!({ "checkout_request_id": checkout_request_id, "result_code": result_code }),
        )
        .await
    }

    /// `POST /sim/callbacks/resend`: sends a push's last callback again.
    pub async fn resend(&self, checkout_request_id: &str) -> Result<Value> {
        self.post_json(
            "/sim/callbacks/resend",
            json!({ "checkout_request_id": checkout_request_id }),
        )
        .await
    }

    /// `GET /sim/records`, typed.
    pub async fn push_records(&self) -> Result<Vec<RecordedRequest>> {
        let v = self.records().await?;
        serde_json::from_value(v).context("/sim/records is not a list of RecordedRequest")
    }

    /// `GET /sim/callbacks`, typed.
    pub async fn sent_callbacks(&self) -> Result<Vec<SentCallback>> {
        let v = self.callbacks().await?;
        serde_json::from_value(v).context("/sim/callbacks is not a list of SentCallback")
    }

    /// `POST /sim/complete`, typed: the callback the simulator sent and the answer it got.
    pub async fn complete_sent(
        &self,
        checkout_request_id: &str,
        result_code: i64,
    ) -> Result<SentCallback> {
        let v = self.complete(checkout_request_id, result_code).await?;
        serde_json::from_value(v).context("/sim/complete did not answer a SentCallback")
    }

    /// `POST /sim/callbacks/resend`, typed.
    pub async fn resend_sent(&self, checkout_request_id: &str) -> Result<SentCallback> {
        let v = self.resend(checkout_request_id).await?;
        serde_json::from_value(v).context("/sim/callbacks/resend did not answer a SentCallback")
    }

    /// The CallBackURL of every accepted push, by the phone number it was sent to.
    ///
    /// The simulator's records do not carry the CheckoutRequestID it assigned (that is
    /// in its answer, not in the request), so the tests give every push its own phone
    /// number and correlate on it.
    pub async fn callback_urls_by_phone(&self) -> Result<HashMap<String, Vec<String>>> {
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        for r in self.push_records().await? {
            if r.kind != RequestKind::StkPush || r.status != 200 {
                continue;
            }
            let Some(body) = r.body else { continue };
            let push: StkPushRequest = serde_json::from_value(body)
                .context("a recorded STK push body is not an StkPushRequest")?;
            out.entry(push.phone_number)
                .or_default()
                .push(push.callback_url);
        }
        Ok(out)
    }

    /// The CallBackURL of the one accepted push to `phone`.
    pub async fn callback_url_for_phone(&self, phone: &str) -> Result<String> {
        let mut all = self.callback_urls_by_phone().await?;
        match all.remove(phone).as_deref() {
            Some([one]) => Ok(one.clone()),
            Some(many) => bail!("{} pushes to {phone}; cannot tell them apart", many.len()),
            None => bail!("the simulator has no accepted push to {phone}"),
        }
    }

    /// How many callbacks the simulator has sent for a push.
    pub async fn callbacks_sent_for(&self, checkout_request_id: &str) -> Result<Vec<SentCallback>> {
        Ok(self
            .sent_callbacks()
            .await?
            .into_iter()
            .filter(|c| c.checkout_request_id == checkout_request_id)
            .collect())
    }
}

/// The path (and query) of a URL: what to POST to another ingest node.
pub fn path_of(url: &str) -> Result<String> {
    let u = reqwest::Url::parse(url).with_context(|| format!("bad CallBackURL {url}"))?;
    Ok(match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_owned(),
    })
}
