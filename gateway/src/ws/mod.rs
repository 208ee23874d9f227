//! Browser WebSockets.
//!
//! - [`protocol`]: what the browser receives: frames and close codes.
//! - [`session`]: one async function per socket: a `select!` over client frames, the
//!   payment feed, the heartbeat and shutdown.
//! - [`compat`]: the frames of a compatibility socket (`/sessions/{token}/websocket`).

pub mod compat;
pub mod protocol;
pub mod session;
