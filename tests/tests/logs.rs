//! What the services write to their logs: never a secret, a token or a full phone
//! number, even at debug level for the project's own crates. The test drives every
//! route that carries one (push with an API key, WebSocket, SSE and GET with a
//! subscribe token, a callback with its callback token, a push whose phone is sent as a
//! JSON number) and then searches every gateway and ingest log.

use anyhow::{ensure, Result};
use stk_relay_e2e::cluster::Auth;
use stk_relay_e2e::{daraja, sim, Cluster, ClusterOptions};
use stk_relay_shared::api::MessageType;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_hold_no_secrets_tokens_or_phone_numbers() -> Result<()> {
    let opts = ClusterOptions {
        log_level:
            "info,stk_relay_gateway=debug,stk_relay_callback_ingest=debug,stk_relay_shared=debug"
                .to_owned(),
        ..ClusterOptions::default()
    };
    let c = Cluster::start_with("logs", opts).await?;
    let phone = sim::phone(4242, sim::MANUAL);
    let p = c.push(0, &phone, 77).await?;
    let id = p.checkout_request_id.as_str();

    let mut ws = c.ws_connect(1, id, &p.token).await?;
    ws.expect(MessageType::PaymentUpdate).await?;
    let mut sse = c.sse_connect(0, id, &p.token).await?;
    sse.expect(MessageType::PaymentUpdate).await?;
    let got = c.get_payment(1, id, Auth::Query(&p.token)).await?;
    ensure!(
        got.status().is_success(),
        "GET with ?token= failed: {}",
        got.status()
    );

    let callback_path = c.callback_path_for(id).await?;
    c.deliver_success(1, &p, 77, &daraja::receipt(77)).await?;
    ws.expect(MessageType::PaymentCompleted).await?;
    sse.expect(MessageType::PaymentCompleted).await?;

    // A phone number sent as a JSON number ends in a 400 whose message quotes the value.
    let resp = c
        .http
        .post(format!("{}/v1/stk/push", c.gateway(0).url()))
        .bearer_auth(&c.api_key)
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"phone":{phone},"amount":5,"account_reference":"X"}}"#
        ))
        .send()
        .await?;
    ensure!(
        resp.status().as_u16() == 400,
        "numeric phone: {}",
        resp.status()
    );
    let body = resp.text().await?;
    ensure!(
        !body.contains(&phone),
        "the 400 body echoes the phone: {body}"
    );

    let callback_token = callback_path
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    ensure!(
        callback_token.len() > 20,
        "callback token not found in {callback_path}"
    );
    let local_phone = format!("0{}", &phone[3..]);
    let forbidden: Vec<(&str, &str)> = vec![
        ("API key", c.api_key.as_str()),
        ("subscribe secret", c.subscribe_secret.as_str()),
        ("callback secret", c.callback_secret.as_str()),
        ("subscribe token", p.token.as_str()),
        ("callback token", callback_token.as_str()),
        ("consumer secret", sim::CONSUMER_SECRET),
        ("passkey", sim::PASSKEY),
        ("phone number", phone.as_str()),
        ("phone number (local form)", local_phone.as_str()),
    ];
    let mut checked = 0;
    for node in c.gateways.iter().chain(c.ingests.iter()) {
        for path in [node.stderr_log(), node.stdout_log()] {
            // Daraja's CheckoutRequestIDs embed the buyer's number without its leading
            // zero (`ws_CO_<date><time><ms><phone digits>…`, so the simulator's do too).
            // The id is the payment's name in every log line; take it out before
            // searching, or a millisecond ending in 0 reads as the local form.
            let text = std::fs::read_to_string(path)?.replace(id, "<checkout_request_id>");
            checked += text.len();
            for (what, value) in &forbidden {
                ensure!(!text.contains(value), "{what} found in {}", path.display());
            }
        }
    }
    // The logs are not empty: the search looked at real output (debug level).
    ensure!(
        checked > 2_000,
        "only {checked} bytes of logs were searched"
    );
    Ok(())
}
