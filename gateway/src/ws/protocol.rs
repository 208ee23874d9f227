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
//! | 1001 | server going away (shutdown, idle timeout) | reconnect, any node |
//! | 1005 / 1006 | connection lost without a close frame | reconnect with backoff |
//!
//! Problems known before the upgrade (bad token, unknown payment, Redis unavailable,
//! node draining or full) are answered with an HTTP error instead of a socket.

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

/// Largest frame accepted from a browser. Browsers send nothing but pings/pongs and
/// close frames, so this is small.
pub const MAX_CLIENT_FRAME: usize = 4 * 1024;
