//! `stk-relay`: the whole product in one process, composed from the gateway, the
//! callback ingest and the Daraja simulator as libraries. It holds no payment logic of
//! its own.
//!
//! - [`config`]: the `[node]` and `[simulator]` sections, and the services' settings read
//!   from one file and one environment prefix.
//! - [`startup`]: binds one port, starts the simulator, builds the backends (memory or
//!   Redis), the gateway and the ingest, and serves them together with the demo.

pub mod config;
pub mod startup;
