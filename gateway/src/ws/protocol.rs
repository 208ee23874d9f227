//! What the browser receives over WebSocket (and, as the same JSON, over SSE).
//!
//! Messages are `{"type":"PAYMENT_UPDATE"|"PAYMENT_COMPLETED","data":STATE}`; the types
//! are `shared::api::{MessageType, ServerMessage}` and STATE is
//! `shared::payment::PaymentState`. The server sends the snapshot on open, then at
//! most one `PAYMENT_COMPLETED`, then closes normally.
//!
//! Close codes tell the client what to do:
//!
//! | code | meaning | client should |
//! |---|---|---|
//! | 1000 | payment completed | stop |
//! | 1001 | server going away (shutdown, idle timeout, `ws.max_lifetime_secs` reached) | reconnect, any node |
//! | 1005 / 1006 | connection lost without a close frame | reconnect with backoff |
//!
//! A client that does not read its frames within `ws.send_timeout_ms` is cut without a
//! close frame (1006 on its side).
//!
//! Problems known before the upgrade (bad token, unknown payment, Redis unavailable,
//! node draining or full: 503; too many connections for the payment or from the
//! address: 429 `TOO_MANY_CONNECTIONS`) are answered with an HTTP error instead of a
//! socket. SSE (`/events`) follows the same rules; at its maximum lifetime the stream
//! simply ends, and the browser's `EventSource` reconnects by itself.

use actix_ws::{CloseCode, CloseReason};

pub fn completed() -> CloseReason {
    CloseReason {
        code: CloseCode::Normal,
        description: Some("payment completed".into()),
    }
}

pub fn going_away(why: &str) -> CloseReason {
    CloseReason {
        code: CloseCode::Away,
        description: Some(why.into()),
    }
}

/// Close reason sent with 1001 when a connection reaches `ws.max_lifetime_secs`.
pub const MAX_LIFETIME_REASON: &str = "maximum connection lifetime reached; reconnect";

/// Largest frame accepted from a browser. Browsers send nothing but pings/pongs and
/// close frames, so this is small.
pub const MAX_CLIENT_FRAME: usize = 4 * 1024;
