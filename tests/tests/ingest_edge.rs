//! The ingest's edge (issue #6 §2 and §4): the allowlist of source networks, read
//! through trusted proxies only, refusing before the body is read; and the per-source
//! limit on refused requests, which never touches valid callbacks.

use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use serde_json::Value;
use stk_relay_e2e::cluster::kv;
use stk_relay_e2e::{daraja, expect, random_alnum, sim, Cluster, ClusterOptions, STEP};
use stk_relay_shared::api::{ErrorCode, ErrorResponse, PushResponse};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Safaricom's callback addresses sit in this block (`shared/daraja.md` §4).
const DARAJA_NET: &str = "196.201.212.0/22";
const DARAJA_IP: &str = "196.201.212.69";

/// POSTs a callback body with an `X-Forwarded-For` header (if any).
async fn post_from(
    c: &Cluster,
    ingest: usize,
    path: &str,
    body: &Value,
    xff: Option<&str>,
) -> Result<(u16, String)> {
    let mut req = c
        .http
        .post(format!("{}{path}", c.ingest(ingest).url()))
        .timeout(STEP)
        .json(body);
    if let Some(x) = xff {
        req = req.header("X-Forwarded-For", x);
    }
    let resp = req.send().await?;
    Ok((resp.status().as_u16(), resp.text().await?))
}

fn expect_code(got: (u16, String), status: u16, code: ErrorCode, what: &str) -> Result<()> {
    let (s, text) = got;
    ensure!(s == status, "{what}: HTTP {s}, expected {status}: {text}");
    let err: ErrorResponse =
        serde_json::from_str(&text).with_context(|| format!("{what}: not an error: {text}"))?;
    ensure!(err.error.code == code, "{what}: {err:?}");
    Ok(())
}

fn expect_ack(got: (u16, String), what: &str) -> Result<()> {
    ensure!(
        got.0 == 200 && got.1.contains("\"ResultCode\":0"),
        "{what}: {} {}",
        got.0,
        got.1
    );
    Ok(())
}

fn success_body(c: &Cluster, p: &PushResponse, amount: u32, n: u32) -> Result<Value> {
    let id = p.checkout_request_id.as_str();
    Ok(daraja::success(
        &p.merchant_request_id,
        id,
        amount,
        &daraja::receipt(n),
        &c.phone_of(id)?,
    ))
}

fn bad_token_path() -> String {
    format!(
        "/v1/callbacks/stk/{}.{}",
        random_alnum(22),
        random_alnum(43)
    )
}

/// Opens a raw connection and sends only the request head of a POST that announces a
/// body of `content_length` bytes. Returns the stream, to read the answer or send the body.
async fn send_head(
    base: &str,
    path: &str,
    content_length: usize,
    xff: Option<&str>,
) -> Result<TcpStream> {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).await?;
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {content_length}\r\n"
    );
    if let Some(x) = xff {
        head.push_str(&format!("X-Forwarded-For: {x}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await?;
    s.flush().await?;
    Ok(s)
}

/// Reads an HTTP answer until its body holds `needle` or the connection ends.
async fn read_answer(s: &mut TcpStream, needle: &str, within: Duration) -> Result<String> {
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if String::from_utf8_lossy(&buf).contains(needle) {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(within, read)
        .await
        .context("no answer in time")??;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// ingest0 trusts 127.0.0.1 as a proxy; ingest1 trusts only 10.0.0.0/8. Both allow only
/// Daraja's network. A refused source gets 403 FORBIDDEN before it sent its body; an
/// allowed one's request waits for its body, then completes the payment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlist_refuses_before_the_body_and_reads_forwarded_for_only_from_trusted_proxies(
) -> Result<()> {
    let opts = ClusterOptions {
        gateways: 1,
        ingest_env: vec![kv("INGEST__CALLBACKS__ALLOWED_SOURCES", DARAJA_NET)],
        ingest_env_each: vec![
            vec![kv("INGEST__SERVER__TRUSTED_PROXIES", "127.0.0.1")],
            vec![kv("INGEST__SERVER__TRUSTED_PROXIES", "10.0.0.0/8")],
        ],
        ..ClusterOptions::default()
    };
    let c = Cluster::start_with("ingest_allowlist", opts).await?;
    let p = c.push(0, &sim::phone(30_000, sim::MANUAL), 55).await?;
    let id = p.checkout_request_id.as_str();
    let path = c.callback_path_for(id).await?;
    let body = success_body(&c, &p, 55, 1)?;
    let body_bytes = serde_json::to_vec(&body)?;

    // Refused source, valid token: the answer comes although the body never does.
    let mut s = send_head(c.ingest(1).url(), &path, body_bytes.len(), None).await?;
    let answer = read_answer(&mut s, "FORBIDDEN", Duration::from_secs(5))
        .await
        .context("a refused source must be answered before its body is read")?;
    ensure!(
        answer.starts_with("HTTP/1.1 403") && answer.contains("\"code\":\"FORBIDDEN\""),
        "{answer}"
    );
    drop(s);

    // X-Forwarded-For from an untrusted peer is ignored: the peer (127.0.0.1) counts.
    expect_code(
        post_from(&c, 1, &path, &body, Some(DARAJA_IP)).await?,
        403,
        ErrorCode::Forbidden,
        "allowed address forwarded by an untrusted peer",
    )?;
    // From a trusted proxy, the right-most untrusted hop counts, not the left-most.
    expect_code(
        post_from(
            &c,
            0,
            &path,
            &body,
            Some(&format!("{DARAJA_IP}, 203.0.113.9")),
        )
        .await?,
        403,
        ErrorCode::Forbidden,
        "a client that wrote Daraja's address before its own",
    )?;
    // A trusted proxy with no header: the proxy itself is the client, and not allowed.
    expect_code(
        post_from(&c, 0, &path, &body, None).await?,
        403,
        ErrorCode::Forbidden,
        "the proxy's own address",
    )?;
    let s = c.payment_state(0, id, &p.token).await?;
    expect::pending(&s, id, 55)?;

    // Allowed (Daraja's address as the right-most hop, after a trusted proxy): the
    // server waits for the body, and then applies the callback.
    let xff = format!("203.0.113.9, {DARAJA_IP}");
    let mut s = send_head(c.ingest(0).url(), &path, body_bytes.len(), Some(&xff)).await?;
    ensure!(
        read_answer(&mut s, "HTTP/1.1", Duration::from_millis(500))
            .await
            .is_err(),
        "an allowed source was answered before it sent its body"
    );
    s.write_all(&body_bytes).await?;
    let answer = read_answer(&mut s, "\"ResultCode\":0", STEP).await?;
    ensure!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let s = c.payment_state(0, id, &p.token).await?;
    expect::success(&s, id, 55, &daraja::receipt(1))?;
    Ok(())
}

/// Refused requests spend a per-source budget (burst 5, one a minute back); valid
/// callbacks never do.
/// - A source sending bad tokens gets 403 five times, then 429 RATE_LIMITED.
/// - Another source's valid callback is unaffected, and so is a valid callback from the
///   limited source itself (a valid token is never refused by the limit).
/// - A source sending ten valid callbacks (twice the burst) is never limited: its next
///   bad token still gets 403, not 429.
/// - Bad bodies under a valid token count as refusals too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_are_rate_limited_per_source_and_valid_callbacks_never() -> Result<()> {
    let opts = ClusterOptions {
        gateways: 1,
        ingests: 1,
        ingest_env: vec![
            kv("INGEST__SERVER__TRUSTED_PROXIES", "127.0.0.1"),
            kv("INGEST__LIMITS__REFUSED_BURST", "5"),
            kv("INGEST__LIMITS__REFUSED_PER_MINUTE", "1"),
        ],
        ..ClusterOptions::default()
    };
    let c = Cluster::start_with("ingest_rate_limit", opts).await?;
    let mut pushes = Vec::new();
    for i in 0..13 {
        pushes.push(
            c.push(0, &sim::phone(31_000 + i, sim::MANUAL), 20 + i)
                .await?,
        );
    }
    let ids: Vec<&str> = pushes
        .iter()
        .map(|p| p.checkout_request_id.as_str())
        .collect();
    let paths = c.callback_paths_for(&ids).await?;
    let valid = |i: usize| -> Result<(String, Value)> {
        let p = &pushes[i];
        Ok((
            paths[&p.checkout_request_id].clone(),
            success_body(&c, p, 20 + i as u32, i as u32)?,
        ))
    };
    let bad_body = &daraja::failure("m", "ws_CO_1", 0, "x");

    let a = Some("203.0.113.1");
    for n in 0..5 {
        expect_code(
            post_from(&c, 0, &bad_token_path(), bad_body, a).await?,
            403,
            ErrorCode::Forbidden,
            &format!("bad token {n} within the burst"),
        )?;
    }
    for n in 0..2 {
        expect_code(
            post_from(&c, 0, &bad_token_path(), bad_body, a).await?,
            429,
            ErrorCode::RateLimited,
            &format!("bad token {n} after the burst"),
        )?;
    }

    let (path, body) = valid(0)?;
    expect_ack(
        post_from(&c, 0, &path, &body, Some("203.0.113.2")).await?,
        "valid callback from another source",
    )?;
    let (path, body) = valid(1)?;
    expect_ack(
        post_from(&c, 0, &path, &body, a).await?,
        "valid callback from the limited source",
    )?;

    let source_c = Some("203.0.113.3");
    for i in 2..12 {
        let (path, body) = valid(i)?;
        expect_ack(
            post_from(&c, 0, &path, &body, source_c).await?,
            &format!("valid callback {i} from one source"),
        )?;
    }
    expect_code(
        post_from(&c, 0, &bad_token_path(), bad_body, source_c).await?,
        403,
        ErrorCode::Forbidden,
        "first refusal of a source that sent only valid callbacks",
    )?;

    let d = Some("203.0.113.4");
    let (path12, body12) = valid(12)?;
    for n in 0..5 {
        let (s, text) = post_from(&c, 0, &path12, &serde_json::json!({"Body": {}}), d).await?;
        ensure!(s == 400, "bad body {n}: {s} {text}");
    }
    expect_code(
        post_from(&c, 0, &bad_token_path(), bad_body, d).await?,
        429,
        ErrorCode::RateLimited,
        "bad token after five bad bodies",
    )?;
    expect_ack(
        post_from(&c, 0, &path12, &body12, d).await?,
        "valid callback from a source limited by its bad bodies",
    )?;

    for (i, p) in pushes.iter().enumerate() {
        let id = p.checkout_request_id.as_str();
        let s = c.payment_state(0, id, &p.token).await?;
        expect::success(&s, id, 20 + i as u32, &daraja::receipt(i as u32))?;
    }
    Ok(())
}
