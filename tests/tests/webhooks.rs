//! Signed webhooks (issue 10, part 1) end to end: real gateways deliver to a real HTTP
//! endpoint that the test scripts (`webhook_receiver`), and the test verifies each
//! signature the way `docs/api.md` tells merchants to.
//!
//! - A receiver that fails three attempts and then answers 200 gets one event, four
//!   times, with one event id; every signature verifies; the queue is empty afterwards.
//! - A gateway killed while its attempt is unanswered: another gateway sends the same
//!   event id once the lease runs out.
//! - A receiver that never answers: the attempts back off on the documented schedule,
//!   the event is dead-lettered (`stk-relay-admin webhooks dead`), and a replay
//!   (`webhooks replay`) delivers it.
//! - A push naming its own webhook URL: allowed hosts only.
//! - Each attempt is in the payment's history (`webhook_attempt`), with its status and
//!   outcome, and the webhook URL is not.

use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use stk_relay_e2e::admin::{gateway_env, run_json};
use stk_relay_e2e::cluster::kv;
use stk_relay_e2e::webhook_receiver::{Event, Received, Receiver, Reply};
use stk_relay_e2e::{daraja, sim, wait, Cluster, ClusterOptions, STEP};
use stk_relay_shared::api::{PushRequest, PushResponse};
use stk_relay_shared::history::{HistoryEvent, WebhookOutcome};

const SECRET: &str = "e2e-webhook-secret-0123456789abcdef-xyz";

/// Verifies `Stk-Relay-Signature` as docs/api.md shows merchants: split `t` and `v1`,
/// HMAC-SHA256 of "<t>.<raw body>" with the secret, hex, constant-time compare, and `t`
/// within 5 minutes of now.
fn verify_as_documented(r: &Received) -> Result<()> {
    let header = r
        .header("Stk-Relay-Signature")
        .context("no Stk-Relay-Signature header")?;
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = Some(v.to_owned()),
            Some(("v1", v)) => v1.push(v.to_owned()),
            _ => {}
        }
    }
    let t = t.context("no t= in the signature")?;
    let age = chrono::Utc::now().timestamp() - t.parse::<i64>()?;
    ensure!(
        age.abs() <= 300,
        "signature timestamp {age} s away from now"
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes())?;
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(&r.body);
    let ok = v1.iter().any(|hex| {
        let bytes: Option<Vec<u8>> = (0..hex.len())
            .step_by(2)
            .map(|i| {
                hex.get(i..i + 2)
                    .and_then(|b| u8::from_str_radix(b, 16).ok())
            })
            .collect();
        bytes.is_some_and(|b| mac.clone().verify_slice(&b).is_ok())
    });
    ensure!(ok, "signature does not verify: {header}");
    Ok(())
}

fn body(r: &Received) -> Result<Value> {
    serde_json::from_slice(&r.body).context("webhook body is not JSON")
}

fn merchant_env(url: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = vec![
        kv("GATEWAY__MERCHANT__WEBHOOK_URL", url),
        kv("GATEWAY__MERCHANT__WEBHOOK_SECRET", SECRET),
    ];
    env.extend(extra.iter().map(|(k, v)| kv(k, v)));
    env
}

async fn start(name: &str, env: Vec<(String, String)>) -> Result<Cluster> {
    Cluster::start_with(
        name,
        ClusterOptions {
            gateway_env: env,
            ..ClusterOptions::default()
        },
    )
    .await
}

/// A pending payment through gateway 0, completed by a success callback.
async fn pay(c: &Cluster, n: u32, amount: u32) -> Result<PushResponse> {
    let p = c.push(0, &sim::phone(n, sim::MANUAL), amount).await?;
    c.deliver_success(0, &p, amount, &daraja::receipt(amount))
        .await?;
    Ok(p)
}

/// The number of events queued and dead, as the CLI reports them.
async fn queue_sizes(c: &Cluster) -> Result<(u64, u64)> {
    let v = run_json(&gateway_env(c), &["webhooks", "dead"], true).await?;
    Ok((
        v["queued"].as_u64().context("queued")?,
        v["deadTotal"].as_u64().context("deadTotal")?,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_retried_until_acknowledged_with_one_signed_event() -> Result<()> {
    let mut rx = Receiver::start(
        &[Reply::Status(500), Reply::Status(503), Reply::Status(404)],
        Reply::Status(200),
    )
    .await?;
    let c = start(
        "webhook_retries",
        merchant_env(
            rx.url(),
            &[("GATEWAY__MERCHANT__WEBHOOK_RETRY_FIRST_MS", "100")],
        ),
    )
    .await?;
    let p = pay(&c, 1, 1500).await?;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(rx.next_request(STEP).await?);
    }
    let first = body(&got[0])?;
    let id = format!("evt_{}_v2", p.checkout_request_id);
    for (i, r) in got.iter().enumerate() {
        verify_as_documented(r).with_context(|| format!("attempt {}", i + 1))?;
        ensure!(r.method == "POST" && r.path == "/hooks/stk");
        ensure!(r.header("content-type") == Some("application/json"));
        ensure!(r.header("Stk-Relay-Event-Id") == Some(id.as_str()));
        ensure!(r.header("Stk-Relay-Attempt") == Some((i + 1).to_string().as_str()));
        let b = body(r)?;
        ensure!(b == first, "attempt {} sent another body", i + 1);
    }
    ensure!(first["id"] == id.as_str(), "event id {}", first["id"]);
    ensure!(first["type"] == "payment.final");
    ensure!(first["data"]["status"] == "SUCCESS");
    ensure!(first["data"]["checkoutRequestId"] == p.checkout_request_id.as_str());
    ensure!(first["data"]["mpesaReceiptNumber"] == daraja::receipt(1500).as_str());
    ensure!(first["data"]["version"] == 2);
    // Backoff: after the k-th failure the next attempt waits 100 ms × 2^(k-1), jittered
    // between half and all of it (plus the poll of up to 100 ms).
    for k in 1..4 {
        let gap = got[k].at - got[k - 1].at;
        let bound = Duration::from_millis(100 << (k - 1));
        ensure!(
            gap >= bound / 2 && gap <= bound + Duration::from_millis(600),
            "gap after failure {k}: {gap:?} (bound {bound:?})"
        );
    }
    // Acknowledged: nothing left to send.
    let (queued, dead) = queue_sizes(&c).await?;
    ensure!(queued == 0 && dead == 0, "queued {queued}, dead {dead}");
    // The payment's history: every attempt, its status and outcome; never the URL.
    let (h, raw) = wait::until("four webhook attempts in the history", STEP, || async {
        let (h, raw) = c.payment_history(1, &p.checkout_request_id).await?;
        let n = h
            .entries
            .iter()
            .filter(|e| matches!(e.event, HistoryEvent::WebhookAttempt(_)))
            .count();
        Ok((n >= 4).then_some((h, raw)))
    })
    .await?;
    let attempts: Vec<_> = h
        .entries
        .iter()
        .filter_map(|e| match &e.event {
            HistoryEvent::WebhookAttempt(a) => Some(a),
            _ => None,
        })
        .collect();
    ensure!(
        attempts
            .iter()
            .all(|a| a.event_id == id && a.error.is_none()),
        "{attempts:?}"
    );
    let summary: Vec<_> = attempts
        .iter()
        .map(|a| (a.attempt, a.http_status, a.outcome))
        .collect();
    use WebhookOutcome::{Delivered, Retry};
    ensure!(
        summary
            == [
                (1, Some(500), Retry),
                (2, Some(503), Retry),
                (3, Some(404), Retry),
                (4, Some(200), Delivered)
            ],
        "{summary:?}"
    );
    ensure!(
        matches!(&h.entries[0].event, HistoryEvent::Pushed(p) if p.webhook),
        "the push had a webhook target: {h:?}"
    );
    ensure!(!raw.contains(rx.url()) && !raw.contains(SECRET), "{raw}");
    eprintln!(
        "webhook_retries: 4 attempts in {:?}, one event id, all signatures verified",
        got[3].at - got[0].at
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_s_attempt_is_taken_over_with_the_same_event_id() -> Result<()> {
    let mut rx = Receiver::start(&[Reply::Hang], Reply::Status(200)).await?;
    let mut c = start(
        "webhook_takeover",
        merchant_env(
            rx.url(),
            &[("GATEWAY__MERCHANT__WEBHOOK_TIMEOUT_MS", "1500")],
        ),
    )
    .await?;
    let p = pay(&c, 2, 700).await?;
    let first = rx.next_request(STEP).await?;
    ensure!(first.reply == Reply::Hang);
    // Which gateway holds the attempt: kill gateway 0; if its connection does not close,
    // gateway 1 holds it: kill that one too (before its 1.5 s timeout) and bring
    // gateway 0 back, so that a gateway that never saw the attempt takes it over.
    c.gateways[0].kill().await?;
    let holder_was_0 = match rx.next_event(Duration::from_millis(700)).await {
        Ok(Event::Abandoned { conn }) => conn == first.conn,
        Ok(Event::Request(r)) => anyhow::bail!("unexpected request {r:?}"),
        Err(_) => false,
    };
    if !holder_was_0 {
        c.gateways[1].kill().await?;
        c.respawn_gateway(0, &[]).await?;
    }
    let second = rx.next_request(STEP).await?;
    ensure!(second.reply == Reply::Status(200));
    ensure!(
        second.conn != first.conn,
        "the same connection after a kill"
    );
    let (a, b) = (body(&first)?, body(&second)?);
    ensure!(a == b, "the takeover sent another body");
    ensure!(a["id"] == format!("evt_{}_v2", p.checkout_request_id).as_str());
    verify_as_documented(&second)?;
    let took = second.at - first.at;
    // The lease: timeout 1.5 s + 2 s margin.
    ensure!(
        took >= Duration::from_millis(3000),
        "taken over after {took:?}, inside the lease"
    );
    eprintln!(
        "webhook_takeover: holder was gateway {}; same event id delivered {took:?} after the first attempt",
        if holder_was_0 { 0 } else { 1 }
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_receiver_gets_backed_off_attempts_then_a_dead_letter_then_a_replay() -> Result<()>
{
    let mut rx = Receiver::start(&[], Reply::Hang).await?;
    let c = start(
        "webhook_dead_letter",
        merchant_env(
            rx.url(),
            &[
                ("GATEWAY__MERCHANT__WEBHOOK_TIMEOUT_MS", "200"),
                ("GATEWAY__MERCHANT__WEBHOOK_RETRY_FIRST_MS", "100"),
                ("GATEWAY__MERCHANT__WEBHOOK_RETRY_MAX_SECS", "1"),
                ("GATEWAY__MERCHANT__WEBHOOK_MAX_AGE_SECS", "3"),
            ],
        ),
    )
    .await?;
    let env = gateway_env(&c);
    let p = pay(&c, 3, 900).await?;
    let id = format!("evt_{}_v2", p.checkout_request_id);
    // Attempts until the event is dead: each takes the 200 ms timeout, then waits
    // 100 ms × 2^(k-1) (at most 1 s), jittered between half and all of it.
    let mut attempts: Vec<Received> = vec![rx.next_request(STEP).await?];
    let dead = loop {
        let v = run_json(&env, &["webhooks", "dead"], true).await?;
        if v["deadTotal"] == 1 {
            break v;
        }
        match rx.next_event(Duration::from_millis(300)).await {
            Ok(Event::Request(r)) => attempts.push(r),
            Ok(Event::Abandoned { .. }) | Err(_) => {}
        }
        ensure!(
            attempts.len() < 30,
            "{} attempts and still not dead",
            attempts.len()
        );
    };
    ensure!(
        attempts.len() >= 4,
        "dead after {} attempts",
        attempts.len()
    );
    for k in 1..attempts.len() {
        let gap = attempts[k].at - attempts[k - 1].at;
        let bound = Duration::from_millis((100u64 << (k - 1)).min(1000));
        let floor = Duration::from_millis(200) + bound / 2;
        ensure!(
            gap + Duration::from_millis(20) >= floor
                && gap <= floor + bound + Duration::from_millis(700),
            "gap before attempt {}: {gap:?} (timeout 200 ms + backoff up to {bound:?})",
            k + 1
        );
        ensure!(body(&attempts[k])?["id"] == id.as_str());
    }
    let letter = &dead["dead"][0];
    ensure!(letter["eventId"] == id.as_str(), "{dead}");
    ensure!(
        letter["attempts"].as_u64() == Some(attempts.len() as u64),
        "{dead}"
    );
    ensure!(letter["target"] == "merchant.webhook_url");
    // Replayed, it is delivered once.
    rx.answer_all(Reply::Status(200));
    let r = run_json(&env, &["webhooks", "replay", &id], true).await?;
    ensure!(r["replayed"] == true, "{r}");
    let delivered = rx.next_request(STEP).await?;
    ensure!(delivered.reply == Reply::Status(200));
    ensure!(body(&delivered)?["id"] == id.as_str());
    verify_as_documented(&delivered)?;
    ensure!(delivered.header("Stk-Relay-Attempt") == Some("1"));
    let (queued, dead_left) = queue_sizes(&c).await?;
    ensure!(
        queued == 0 && dead_left == 0,
        "queued {queued}, dead {dead_left}"
    );
    // A second replay of a delivered event does nothing.
    let again = run_json(&env, &["webhooks", "replay", &id], false).await?;
    ensure!(again["replayed"] == false, "{again}");
    eprintln!(
        "webhook_dead_letter: {} attempts over {:?}, dead-lettered, replayed and delivered",
        attempts.len(),
        attempts[attempts.len() - 1].at - attempts[0].at
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_may_name_its_own_webhook_url_on_an_allowed_host() -> Result<()> {
    let mut own = Receiver::start(&[], Reply::Status(204)).await?;
    let default = Receiver::start(&[], Reply::Status(200)).await?;
    let c = start(
        "webhook_per_push",
        merchant_env(
            default.url(),
            &[("GATEWAY__MERCHANT__ALLOWED_WEBHOOK_HOSTS", "127.0.0.1")],
        ),
    )
    .await?;
    let phone = sim::phone(4, sim::MANUAL);
    let request = |url: &str| PushRequest {
        phone: phone.clone(),
        amount: 300u32.into(),
        account_reference: "E2E".to_owned(),
        description: None,
        webhook_url: Some(url.to_owned()),
    };
    // A host outside the list, and a URL with credentials: refused before any push.
    for bad in [
        "https://evil.example/hooks",
        "http://user:pw@127.0.0.1:9/hooks",
    ] {
        let resp = c.push_raw(0, &request(bad), None).await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        ensure!(status == 400, "{bad}: {status} {text}");
        ensure!(text.contains("webhook_url"), "{bad}: {text}");
    }
    let resp = c.push_raw(0, &request(own.url()), None).await?;
    ensure!(resp.status().as_u16() == 200, "push: {}", resp.status());
    let p: PushResponse = resp.json().await?;
    c.record_phone(&p.checkout_request_id, &phone);
    c.deliver_success(0, &p, 300, &daraja::receipt(300)).await?;
    let r = own.next_request(STEP).await?;
    verify_as_documented(&r)?;
    ensure!(body(&r)?["data"]["checkoutRequestId"] == p.checkout_request_id.as_str());
    let (queued, dead) = queue_sizes(&c).await?;
    ensure!(queued == 0 && dead == 0, "queued {queued}, dead {dead}");
    Ok(())
}
