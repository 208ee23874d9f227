//! What both stk-relay services speak. No HTTP handlers live here.
//!
//! - [`ids`]: newtypes parsed at the edge: `CheckoutRequestId`, `Msisdn`, `Amount`, …
//! - [`daraja`]: Daraja wire formats, password/timestamp, callback parsing, the client.
//! - [`payment`]: `PaymentState` (the public STATE) and its one transition.
//! - [`api`]: the public API's wire types and the stable error-code table.
//! - [`history`]: a payment's history entries (wire type, stored form, bound).
//! - [`keyspace`]: the only place Redis key and channel names are built.
//! - [`store`]: payment state in Redis or in memory: the one set of rules that changes a status.
//! - [`broker`]: the pub/sub `Broker` trait and its Redis and in-memory implementations.
//! - [`backends`]: the storage and broker a node runs on, chosen by configuration.
//! - [`text`]: cleaning text from outside, and escaping JSON for browsers.
//! - [`token`]: HMAC-signed subscribe and callback tokens.
//! - [`webhook`]: the webhook event body and its `Stk-Relay-Signature` (sign and verify).
//! - [`session_token`]: merchant-signed checkout session tokens of the compatibility routes.
//! - [`compat`]: wire types of the Durable Objects compatibility routes.
//! - [`net`]: CIDR lists and the client address behind trusted proxies.
//! - [`http`]: edge helpers for the HTTP services: the listener, a redacting request span, bounded bodies.
//! - [`limits`]: the open-file limit (`RLIMIT_NOFILE`) every service raises at start.
//! - [`config`]: layered configuration loading and the shared settings sections.
//! - [`telemetry`]: tracing set-up (text or JSON).
//! - [`metrics`]: every Prometheus metric's name and labels, and the separate `/metrics` listener.
//! - [`shutdown`]: the explicit shutdown handle.

pub mod api;
pub mod backends;
pub mod broker;
pub mod compat;
pub mod config;
pub mod daraja;
pub mod history;
pub mod http;
pub mod ids;
pub mod keyspace;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod payment;
pub mod session_token;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod token;
pub mod webhook;
