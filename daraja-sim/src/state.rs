//! The simulator's state, held in one place: issued tokens, pushes and their outcome,
//! the request log and the callbacks sent. One `std::sync::Mutex`, never held across an
//! `.await`; a `watch` channel counts callbacks so tests can await them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::Utc;
use rand::distributions::{Alphanumeric, DistString};
use rand::Rng;
use serde_json::Value;
use stk_relay_shared::daraja::password;
use stk_relay_shared::daraja::types::{
    CallbackItemWire, CallbackMetadataWire, StkCallbackBody, StkCallbackEnvelope, StkCallbackWire,
};
use stk_relay_shared::ids::mask_phone;
use stk_relay_shared::payment::ResultCode;
use tokio::sync::watch;

use crate::outcome::{self, Behaviour};
use crate::{RecordedRequest, SentCallback, SimConfig};

/// Longest a push answer is ever held (`POST /sim/hold-pushes`).
pub const MAX_HOLD: Duration = Duration::from_secs(30);

/// One accepted push.
#[derive(Debug, Clone)]
pub struct Push {
    pub checkout_request_id: String,
    pub merchant_request_id: String,
    pub amount: u32,
    pub phone: String,
    pub callback_url: String,
    pub behaviour: Behaviour,
    pub result: Option<FinalResult>,
}

/// How a push ended.
#[derive(Debug, Clone)]
pub struct FinalResult {
    pub result_code: ResultCode,
    pub result_desc: String,
    /// Success only.
    pub receipt: Option<String>,
    pub transaction_date: u64,
}

#[derive(Default)]
struct State {
    tokens: HashMap<String, Instant>,
    pushes: HashMap<String, Push>,
    /// Push ids, oldest first, so the oldest can be forgotten.
    push_order: VecDeque<String>,
    receipts: HashSet<String>,
    records: VecDeque<RecordedRequest>,
    callbacks: VecDeque<SentCallback>,
    push_count: usize,
    token_requests: usize,
}

pub struct Sim {
    pub config: SimConfig,
    state: Mutex<State>,
    seq: AtomicU64,
    /// Offsets the id counter so that two simulators rarely mint the same id.
    id_offset: u64,
    callbacks_total: watch::Sender<usize>,
    pub http: reqwest::Client,
    pub shutdown: watch::Sender<bool>,
    /// While `Some(until)`, answers to accepted STK pushes are held back (the push is
    /// already accepted and its outcome scheduled) until released or `until` passes.
    hold: watch::Sender<Option<Instant>>,
    /// Push answers being held right now.
    held: std::sync::atomic::AtomicUsize,
    /// The runtime that started the simulator: outcome tasks run there, not on an
    /// actix worker that may stop first.
    rt: Option<tokio::runtime::Handle>,
}

/// Why a control operation on a push failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushLookup {
    Unknown,
    Pending,
    AlreadyFinal,
}

impl Sim {
    pub fn new(config: SimConfig) -> std::io::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.callback_timeout_ms))
            .connect_timeout(Duration::from_millis(config.callback_timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Self {
            config,
            state: Mutex::new(State::default()),
            seq: AtomicU64::new(0),
            id_offset: rand::thread_rng().gen_range(0..1_000_000),
            callbacks_total: watch::channel(0).0,
            http,
            shutdown: watch::channel(false).0,
            hold: watch::channel(None).0,
            held: std::sync::atomic::AtomicUsize::new(0),
            rt: tokio::runtime::Handle::try_current().ok(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// A request id shaped like Daraja's `2654-4b64-97ff-b827b542881d3130`.
    pub fn request_id(&self) -> String {
        let mut r = rand::thread_rng();
        format!(
            "{:04x}-{:04x}-{:04x}-{:012x}{}",
            r.gen::<u16>(),
            r.gen::<u16>(),
            r.gen::<u16>(),
            r.gen::<u64>() & 0xffff_ffff_ffff,
            self.id_offset + self.next_seq()
        )
    }

    // ---- tokens -------------------------------------------------------------------

    pub fn issue_token(&self) -> (String, u64) {
        let token = Alphanumeric.sample_string(&mut rand::thread_rng(), 28);
        let now = Instant::now();
        let mut s = self.lock();
        s.tokens.retain(|_, exp| *exp > now);
        s.tokens.insert(
            token.clone(),
            now + Duration::from_secs(self.config.token_ttl_secs),
        );
        (token, self.config.token_ttl_secs)
    }

    pub fn token_valid(&self, token: &str) -> bool {
        self.lock()
            .tokens
            .get(token)
            .is_some_and(|exp| *exp > Instant::now())
    }

    pub fn expire_tokens(&self) -> usize {
        let mut s = self.lock();
        let n = s.tokens.len();
        s.tokens.clear();
        n
    }

    // ---- records ------------------------------------------------------------------

    pub fn record(&self, mut r: RecordedRequest) {
        use crate::RequestKind;
        let mut s = self.lock();
        match r.kind {
            RequestKind::Oauth => s.token_requests += 1,
            RequestKind::StkPush => s.push_count += 1,
            _ => {}
        }
        r.seq = self.next_seq();
        s.records.push_back(r);
        while s.records.len() > self.config.max_records {
            s.records.pop_front();
        }
    }

    pub fn records(&self) -> Vec<RecordedRequest> {
        self.lock().records.iter().cloned().collect()
    }

    pub fn push_count(&self) -> usize {
        self.lock().push_count
    }

    pub fn token_requests(&self) -> usize {
        self.lock().token_requests
    }

    pub fn callbacks_sent(&self) -> Vec<SentCallback> {
        self.lock().callbacks.iter().cloned().collect()
    }

    pub async fn wait_for_callbacks(&self, n: usize, timeout: Duration) -> bool {
        let mut rx = self.callbacks_total.subscribe();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|total| *total >= n))
            .await
            .is_ok_and(|r| r.is_ok());
        reached
    }

    // ---- holding push answers ---------------------------------------------------------

    /// Holds the answers of accepted STK pushes from now on, for at most `max`
    /// ([`MAX_HOLD`] at most): the caller sees Daraja accept the push only on release.
    pub fn hold_pushes(&self, max: Duration) -> Duration {
        let max = max.min(MAX_HOLD);
        self.hold.send_replace(Some(Instant::now() + max));
        tracing::info!(max_ms = max.as_millis() as u64, "holding STK push answers");
        max
    }

    /// Releases every held push answer and stops holding. Returns how many were held.
    pub fn release_pushes(&self) -> usize {
        let n = self.held.load(Ordering::SeqCst);
        self.hold.send_replace(None);
        tracing::info!(released = n, "STK push answers released");
        n
    }

    /// How many push answers are being held right now.
    pub fn held_pushes(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// Waits while answers are held (until release, the hold's end, or shutdown).
    pub async fn wait_while_held(&self) {
        let mut rx = self.hold.subscribe();
        let Some(until) = *rx.borrow_and_update() else {
            return;
        };
        if until <= Instant::now() {
            return;
        }
        self.held.fetch_add(1, Ordering::SeqCst);
        let mut shutdown = self.shutdown.subscribe();
        tokio::select! {
            _ = rx.wait_for(|h| h.is_none()) => {}
            () = tokio::time::sleep_until(until.into()) => {
                tracing::warn!("push hold ended by its bound");
            }
            _ = shutdown.wait_for(|stopped| *stopped) => {}
        }
        self.held.fetch_sub(1, Ordering::SeqCst);
    }

    // ---- pushes -------------------------------------------------------------------

    /// `ws_CO_` + DDMMYYYYHHMMSS + millis + MSISDN without 254, plus a counter so ids
    /// stay unique under concurrency.
    fn checkout_request_id(&self, phone: &str) -> String {
        let now = Utc::now().with_timezone(&password::eat());
        format!(
            "ws_CO_{}{}{}",
            now.format("%d%m%Y%H%M%S%3f"),
            phone.get(3..).unwrap_or(phone),
            self.id_offset + self.next_seq()
        )
    }

    pub fn create_push(
        &self,
        amount: u32,
        phone: &str,
        callback_url: &str,
        not_permitted: bool,
    ) -> Push {
        let behaviour = if not_permitted {
            Behaviour::Result(2028)
        } else {
            outcome::behaviour_for(phone)
        };
        let push = Push {
            checkout_request_id: self.checkout_request_id(phone),
            merchant_request_id: self.request_id(),
            amount,
            phone: phone.to_owned(),
            callback_url: callback_url.to_owned(),
            behaviour,
            result: None,
        };
        tracing::info!(
            checkout_request_id = %push.checkout_request_id,
            phone = %mask_phone(phone),
            amount,
            behaviour = ?behaviour,
            "push accepted"
        );
        let mut s = self.lock();
        s.pushes
            .insert(push.checkout_request_id.clone(), push.clone());
        s.push_order.push_back(push.checkout_request_id.clone());
        while s.push_order.len() > self.config.max_records {
            let Some(old) = s.push_order.pop_front() else {
                break;
            };
            if let Some(receipt) = s
                .pushes
                .remove(&old)
                .and_then(|p| p.result)
                .and_then(|r| r.receipt)
            {
                s.receipts.remove(&receipt);
            }
        }
        drop(s);
        push
    }

    pub fn push(&self, id: &str) -> Option<Push> {
        self.lock().pushes.get(id).cloned()
    }

    fn new_receipt(s: &mut State) -> String {
        let mut r = rand::thread_rng();
        loop {
            let mut receipt = String::with_capacity(10);
            receipt.push(char::from(b'Q' + r.gen_range(0..10u8)));
            for _ in 0..9 {
                let i = r.gen_range(0..36u8);
                receipt.push(char::from(if i < 10 { b'0' + i } else { b'A' + i - 10 }));
            }
            if s.receipts.insert(receipt.clone()) {
                return receipt;
            }
        }
    }

    /// Decides a pending push. Errors if it is unknown or already final.
    pub fn finalize(&self, id: &str, code: ResultCode) -> Result<Push, PushLookup> {
        let mut s = self.lock();
        match s.pushes.get(id) {
            None => return Err(PushLookup::Unknown),
            Some(p) if p.result.is_some() => return Err(PushLookup::AlreadyFinal),
            Some(_) => {}
        }
        let receipt = code.is_success().then(|| Self::new_receipt(&mut s));
        let date = password::timestamp(Utc::now()).parse::<u64>().unwrap_or(0);
        let desc = outcome::result_desc(&code).to_owned();
        let push = s.pushes.get_mut(id).ok_or(PushLookup::Unknown)?;
        push.result = Some(FinalResult {
            result_code: code,
            result_desc: desc,
            receipt,
            transaction_date: date,
        });
        Ok(push.clone())
    }

    /// The callback body for a final push, exactly in Daraja's shape.
    pub fn callback_body(push: &Push) -> Option<StkCallbackEnvelope> {
        let r = push.result.as_ref()?;
        let metadata = r.receipt.as_ref().map(|receipt| CallbackMetadataWire {
            item: vec![
                CallbackItemWire::new("Amount", push.amount),
                CallbackItemWire::new("MpesaReceiptNumber", receipt.as_str()),
                CallbackItemWire::empty("Balance"),
                CallbackItemWire::new("TransactionDate", r.transaction_date),
                CallbackItemWire::new("PhoneNumber", push.phone.parse::<u64>().unwrap_or(0)),
            ],
        });
        Some(StkCallbackEnvelope {
            body: StkCallbackBody {
                stk_callback: StkCallbackWire {
                    merchant_request_id: push.merchant_request_id.clone(),
                    checkout_request_id: push.checkout_request_id.clone(),
                    result_code: r.result_code.clone(),
                    result_desc: r.result_desc.clone(),
                    callback_metadata: metadata,
                },
            },
        })
    }

    /// After the callback delay, decides the push as its behaviour says and sends (or
    /// withholds) the callback. Manual pushes wait for `finalize` from `/sim/complete`.
    pub fn schedule_outcome(self: &Arc<Self>, push: &Push) {
        let Some(code) = push.behaviour.result_code() else {
            return;
        };
        let sim = Arc::clone(self);
        let id = push.checkout_request_id.clone();
        let behaviour = push.behaviour;
        let delay = Duration::from_millis(self.config.callback_delay_ms);
        let mut shutdown = self.shutdown.subscribe();
        let task = async move {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = shutdown.wait_for(|stopped| *stopped) => return,
            }
            // Already final when `/sim/complete` came first: nothing more to do.
            if sim.finalize(&id, ResultCode::Code(code)).is_err() {
                return;
            }
            let sends = match behaviour {
                Behaviour::Lost => 0,
                Behaviour::Duplicate => 2,
                Behaviour::Processing => 0,
                Behaviour::Result(_) | Behaviour::Manual => 1,
            };
            for _ in 0..sends {
                let _ = sim.deliver(&id).await;
            }
        };
        match &self.rt {
            Some(rt) => {
                rt.spawn(task);
            }
            None => {
                tokio::spawn(task);
            }
        }
    }

    /// POSTs the callback of a final push to its CallBackURL and records the answer.
    pub async fn deliver(&self, id: &str) -> Result<SentCallback, PushLookup> {
        let push = self.push(id).ok_or(PushLookup::Unknown)?;
        let envelope = Self::callback_body(&push).ok_or(PushLookup::Pending)?;
        let body = serde_json::to_value(&envelope).unwrap_or(Value::Null);
        let (status, error) = match self.http.post(&push.callback_url).json(&body).send().await {
            Ok(resp) => (Some(resp.status().as_u16()), None),
            Err(e) => (None, Some(error_chain(&e))),
        };
        tracing::info!(
            checkout_request_id = %push.checkout_request_id,
            receiver_status = ?status,
            error = error.as_deref().unwrap_or(""),
            "callback sent"
        );
        let sent = SentCallback {
            seq: self.next_seq(),
            checkout_request_id: push.checkout_request_id.clone(),
            url: push.callback_url.clone(),
            body,
            status,
            error,
            sent_at: Utc::now().to_rfc3339(),
        };
        {
            let mut s = self.lock();
            s.callbacks.push_back(sent.clone());
            while s.callbacks.len() > self.config.max_records {
                s.callbacks.pop_front();
            }
        }
        self.callbacks_total.send_modify(|n| *n += 1);
        Ok(sent)
    }
}

fn error_chain(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_shaped_like_daraja() {
        let sim = Sim::new(SimConfig::default()).unwrap();
        let mut seen = HashSet::new();
        for _ in 0..1000 {
            let p = sim.create_push(1, "254708374149", "http://127.0.0.1:1/cb", false);
            assert!(p.checkout_request_id.starts_with("ws_CO_"));
            assert!(p.checkout_request_id.contains("708374149"));
            assert!(p.checkout_request_id.len() <= 64);
            assert!(
                stk_relay_shared::ids::CheckoutRequestId::parse(&p.checkout_request_id).is_ok()
            );
            assert!(
                stk_relay_shared::ids::MerchantRequestId::parse(&p.merchant_request_id).is_ok()
            );
            assert!(seen.insert(p.checkout_request_id));
        }
    }

    #[test]
    fn receipts_and_callback_shape() {
        let sim = Sim::new(SimConfig::default()).unwrap();
        let p = sim.create_push(250, "254708374149", "http://127.0.0.1:1/cb", false);
        let done = sim
            .finalize(&p.checkout_request_id, ResultCode::Code(0))
            .unwrap();
        assert_eq!(
            sim.finalize(&p.checkout_request_id, ResultCode::Code(0))
                .unwrap_err(),
            PushLookup::AlreadyFinal
        );
        assert_eq!(
            sim.finalize("nope", ResultCode::Code(0)).unwrap_err(),
            PushLookup::Unknown
        );
        let receipt = done.result.as_ref().unwrap().receipt.clone().unwrap();
        assert_eq!(receipt.len(), 10);
        assert!(receipt
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()));
        let v = serde_json::to_value(Sim::callback_body(&done).unwrap()).unwrap();
        let cb = &v["Body"]["stkCallback"];
        assert_eq!(cb["ResultCode"], serde_json::json!(0));
        let items = cb["CallbackMetadata"]["Item"].as_array().unwrap();
        assert_eq!(items[0], serde_json::json!({"Name":"Amount","Value":250}));
        assert_eq!(items[2], serde_json::json!({"Name":"Balance"}));
        assert!(items[3]["Value"].as_u64().unwrap() > 20_240_000_000_000);
        assert_eq!(items[4]["Value"], serde_json::json!(254708374149_u64));
        // The strict parser used by callback-ingest accepts it.
        let parsed = stk_relay_shared::daraja::callback::parse_callback(v.to_string().as_bytes());
        assert!(parsed.is_ok(), "{parsed:?}");

        let f = sim.create_push(5, "254708374132", "http://127.0.0.1:1/cb", false);
        let f = sim
            .finalize(&f.checkout_request_id, ResultCode::Code(1032))
            .unwrap();
        let v = serde_json::to_value(Sim::callback_body(&f).unwrap()).unwrap();
        assert_eq!(
            v["Body"]["stkCallback"]["ResultCode"],
            serde_json::json!(1032)
        );
        assert_eq!(
            v["Body"]["stkCallback"]["ResultDesc"],
            "Request cancelled by user"
        );
        assert!(v["Body"]["stkCallback"].get("CallbackMetadata").is_none());
    }

    #[tokio::test]
    async fn held_push_answers_wait_for_release_or_the_bound() {
        let sim = Arc::new(Sim::new(SimConfig::default()).unwrap());
        sim.wait_while_held().await; // not holding: returns at once
        assert_eq!(sim.hold_pushes(Duration::from_secs(3600)), MAX_HOLD);
        let waiter = tokio::spawn({
            let sim = Arc::clone(&sim);
            async move { sim.wait_while_held().await }
        });
        tokio::time::timeout(Duration::from_secs(5), async {
            while sim.held_pushes() != 1 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        assert_eq!(sim.release_pushes(), 1);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(sim.held_pushes(), 0);

        // A hold ends by itself at its bound.
        sim.hold_pushes(Duration::from_millis(50));
        tokio::time::timeout(Duration::from_secs(5), sim.wait_while_held())
            .await
            .unwrap();
    }

    #[test]
    fn old_pushes_are_forgotten() {
        let sim = Sim::new(SimConfig {
            max_records: 3,
            ..SimConfig::default()
        })
        .unwrap();
        let ids: Vec<String> = (0..5)
            .map(|_| {
                sim.create_push(1, "254708374149", "http://127.0.0.1:1/cb", false)
                    .checkout_request_id
            })
            .collect();
        assert!(sim.push(&ids[0]).is_none());
        assert!(sim.push(&ids[1]).is_none());
        assert!(ids[2..].iter().all(|id| sim.push(id).is_some()));
    }
}
