//! What happens to a callback once it is through the door.
//!
//! - [`handle`]: one callback from raw token and body to the store; used by the route and
//!   by the spool's replay alike.
//! - [`validate`]: whether a callback is trusted (its token), before anything is parsed.
//! - [`apply`]: applying the parsed outcome to the store, retrying briefly while Redis
//!   is unreachable.

pub mod apply;
pub mod handle;
pub mod validate;
