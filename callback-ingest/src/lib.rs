//! stk-relay callback-ingest: a stateless receiver of Daraja STK callbacks.
//!
//! A callback is checked (token, size, shape), turned into a `PaymentOutcome`, and
//! applied through the shared store's one script, which writes the final state and
//! publishes it on the payment's channel atomically.
//!
//! - [`config`]: `IngestSettings`, loaded and validated once.
//! - [`startup`]: `Application::build` (binds, so port 0 works) and `run_until_stopped`.
//! - [`routes`]: HTTP handlers: the callback endpoint and health checks.
//! - [`callback`]: whether a callback is trusted, and how it is applied with retries.
//! - [`error`]: `IngestError`, mapped to HTTP in one place.
//! - [`spool`]: callbacks acknowledged while Redis was down, on disk until replayed.
//! - [`journal`]: the last seconds of applied callbacks, applied again after a Redis
//!   primary change (Sentinel), which can lose writes the old primary acknowledged.
//! - [`limits`]: per-source budgets of refused requests (429 when used up).

pub mod callback;
pub mod config;
pub mod error;
pub mod journal;
pub mod limits;
pub mod routes;
pub mod spool;
pub mod startup;
