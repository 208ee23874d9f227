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
//! | 1011 | internal error | reconnect with backoff |
//! | 1013 | try again later (Redis unavailable) | reconnect with backoff |

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

pub fn try_again_later() -> CloseReason {
    CloseReason {
        code: CloseCode::Again,
        description: Some("temporarily unavailable; reconnect".into()),
    }
}

/// Largest frame accepted from a browser. Browsers send nothing but pings/pongs and
/// close frames, so this is small.
pub const MAX_CLIENT_FRAME: usize = 4 * 1024;
