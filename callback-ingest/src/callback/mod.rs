//! What happens to a callback once it is through the door.
//!
//! - [`validate`]: whether a callback is trusted (its token), before anything is parsed.
//! - [`apply`]: applying the parsed outcome to the store, retrying briefly while Redis
//!   is unreachable.

pub mod apply;
pub mod validate;
