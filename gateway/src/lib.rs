//! stk-relay gateway: starts STK pushes for the merchant's backend and tells browsers
//! the result over WebSocket, Server-Sent Events or polling.
//!
//! - [`config`]: `GatewaySettings`, loaded and validated once.
//! - [`startup`]: `Application::build` (binds, so port 0 works), `run_until_stopped`
//!   and the shutdown sequence that covers upgraded sockets.
//! - [`routes`]: HTTP handlers: push, payment state, WebSocket and SSE upgrades, health.
//! - [`auth`]: merchant API keys and browser subscribe tokens.
//! - [`idempotency`]: `Idempotency-Key` records in Redis.
//! - [`sessions`]: compatibility sessions (claim once, then the push) in Redis.
//! - [`pending`]: the bounded background queue of pending writes Redis did not take yet.
//! - [`feed`]: subscribe-then-read: the frames one browser connection receives.
//! - [`ws`]: the WebSocket session loop and the browser protocol.
//! - [`error`]: `ApiError`, mapped to HTTP in one place.
//! - [`reconcile`]: the background task that settles payments without a callback
//!   through STK Push Query, and closes them as `UNCONFIRMED` at `reconcile.max_age_secs`.
//! - [`webhooks`]: signed webhooks to the merchant's backend: the queue in Redis and the
//!   delivery worker (at least once, retried with backoff, dead letters).

pub mod auth;
pub mod config;
pub mod error;
pub mod feed;
pub mod idempotency;
pub mod reconcile;

pub mod pending;
pub mod routes;
pub mod sessions;
pub mod startup;
pub mod webhooks;
pub mod ws;
