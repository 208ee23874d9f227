//! The in-memory payment table: `payment.lua`'s rules, in Rust.
//!
//! [`PaymentTable::call`] takes the script's KEYS and ARGV and gives its reply, so the
//! store above parses one format for both backends. Each payment is one record (the
//! script's hash fields) with a deadline, as the Redis key's TTL.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Every payment record, keyed by its Redis key name.
#[derive(Default)]
pub struct PaymentTable {
    records: Mutex<HashMap<String, Record>>,
}

/// One payment's fields, as in the Redis hash.
#[derive(Default, Clone)]
struct Record {
    fields: HashMap<String, String>,
    expires: Option<Instant>,
}

impl PaymentTable {
    /// Runs `payment.lua` on the record `key`: `args` is its ARGV, `publish(channel,
    /// payload)` is its PUBLISH on `channel`, called under the table's lock.
    pub fn call(
        &self,
        key: &str,
        channel: &str,
        args: &[&str],
        now: Instant,
        publish: &mut dyn FnMut(&str, &str),
    ) -> Result<Vec<String>, String> {
        let _ = (key, channel, args, now, publish, &self.records);
        Err("payment table: not implemented".into())
    }

    /// The record's `state` field, if it is alive.
    pub fn state(&self, key: &str, now: Instant) -> Option<String> {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let r = records.get(key)?;
        if r.expires.is_some_and(|t| t <= now) {
            return None;
        }
        r.fields.get("state").cloned()
    }
}
