//! Everything about talking to Safaricom's Daraja API (M-Pesa Express / STK Push).
//!
//! - [`types`]: the request and response bodies, spelled as Daraja spells them.
//! - [`password`]: the EAT timestamp and the `Password` field.
//! - [`callback`]: parsing the STK callback that Daraja POSTs to us.
//! - [`client`]: the HTTP client: cached OAuth token, STK Push, STK Push Query.
//! - [`error`]: [`DarajaError`], the typed failures of the client.

pub mod callback;
pub mod client;
pub mod error;
pub mod password;
pub mod types;

pub use client::{DarajaClient, DarajaClientSettings, TransactionType};
pub use error::DarajaError;
