//! The in-memory payment table: `payment.lua`'s rules, in Rust, for standalone mode.
//!
//! [`PaymentTable::call`] takes the script's KEYS (the record's key and its channel) and
//! ARGV, and gives the script's reply, so [`crate::store::PaymentStore`] builds one
//! argument list and parses one reply format for both backends. The rules are ported
//! rule for rule; read `payment.lua`'s header for the contract. What this twin models:
//!
//! - **Records.** Each payment is one record: the script's hash fields (`state`, `status`,
//!   `version`, `cbt`, `phd`, `amountMismatch`, `confirm`, `early:<nonce>`) as strings,
//!   plus a deadline, as the Redis key's TTL. A missing hash field is Lua's `false`, as
//!   `HMGET` gives it to the script.
//! - **Expiry.** `EXPIRE` sets the whole record's deadline: `ttl` when the pending record
//!   is written (which resets it), `early ttl` when an early callback is kept. Other
//!   writes (a final state, a mismatch flag, a kept confirmation) leave it as it is. An
//!   expired record behaves as absent and is removed when touched; besides, the table is
//!   swept of expired records whenever it has doubled since the last sweep, so memory is
//!   bounded by about twice the live records.
//! - **JSON.** The script decodes STATE, outcome and binding JSON with cjson, merges and
//!   re-encodes; here `serde_json::Value`. Lua's comparisons are kept: `present(v)` is
//!   "not nil, not null, not empty string", `tonumber(a) ~= tonumber(b)` compares numbers
//!   and numeric strings alike (two values that are not numbers at all compare equal, as
//!   `nil == nil`), and `x or null` turns a missing key (or `false`) into JSON null.
//! - **History.** The history list (`KEYS[3]` in Redis) is the record's `hist`, so it
//!   shares the record's deadline as the Redis list takes the hash's TTL. Entries are
//!   stamped with this process's clock where the script takes Redis's `TIME`; the bound,
//!   the places reserved for `final` entries and `histDropped` are the script's.
//! - **Publishing.** `publish(channel, state)` is called exactly where the script
//!   PUBLISHes, with the table's lock held, after the record is written: a subscriber that
//!   subscribes and then reads can never miss a final state.
//!
//! Where it differs from Redis, on input the store never sends:
//! - A call is all or nothing. It runs on a copy of the record, written back only when
//!   the call succeeds; a Redis script that fails halfway keeps the writes made before
//!   the failure.
//! - Malformed arguments are refused with `Err` where the script might limp on: fewer
//!   arguments than the mode needs (5 for "pending", 3 for a trusted "final", 8 for a
//!   callback "final"), a TTL that is not a positive whole number of seconds (Redis would
//!   delete the key for 0 or less), and JSON that is not an object where the script
//!   indexes it (cjson would decode an array as a table).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

/// A decoded JSON object (a Lua table, as cjson gives it).
type Obj = Map<String, Value>;

/// The table is not swept before it holds this many records.
const SWEEP_MIN: usize = 1024;

/// Every payment record, keyed by its Redis key name.
#[derive(Default)]
pub struct PaymentTable {
    records: Mutex<Records>,
}

struct Records {
    map: HashMap<String, Record>,
    /// Sweep expired records when the table reaches this size.
    sweep_at: usize,
}

impl Default for Records {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            sweep_at: SWEEP_MIN,
        }
    }
}

impl Records {
    /// Removes every expired record once the table has doubled since the last sweep
    /// (amortised constant work per call).
    fn sweep(&mut self, now: Instant) {
        if self.map.len() >= self.sweep_at {
            self.map.retain(|_, r| r.alive(now));
            self.sweep_at = (self.map.len() * 2).max(SWEEP_MIN);
        }
    }

    /// The record at `key` if it is alive; an expired one is removed.
    fn live(&mut self, key: &str, now: Instant) -> Option<&Record> {
        if self.map.get(key).is_some_and(|r| !r.alive(now)) {
            self.map.remove(key);
        }
        self.map.get(key)
    }
}

/// One payment's fields, as in the Redis hash, its history list, and the key's deadline.
#[derive(Default, Clone)]
struct Record {
    fields: HashMap<String, String>,
    /// The history list's items (JSON), oldest first.
    hist: Vec<String>,
    /// `None`: no TTL (a Redis key never given one).
    expires: Option<Instant>,
}

impl Record {
    fn alive(&self, now: Instant) -> bool {
        self.expires.is_none_or(|t| t > now)
    }
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
        let mut records = self.lock();
        records.sweep(now);
        let mut run = Run {
            args,
            now,
            rec: records.live(key, now).cloned(),
            dirty: false,
            published: None,
            hist_now: None,
        };
        let reply = run.script()?;
        if run.dirty {
            match run.rec {
                Some(rec) if !rec.fields.is_empty() => {
                    records.map.insert(key.to_owned(), rec);
                }
                _ => {
                    records.map.remove(key);
                }
            }
        }
        if let Some(state) = &run.published {
            publish(channel, state);
        }
        Ok(reply)
    }

    /// The record's `status` and `histDropped` fields and its history items, if it is
    /// alive and has a status (the reads behind `PaymentStore::history`).
    pub fn history(&self, key: &str, now: Instant) -> Option<(u64, Vec<String>)> {
        let mut records = self.lock();
        let rec = records.live(key, now)?;
        rec.fields.get("status")?;
        let dropped = rec
            .fields
            .get("histDropped")
            .and_then(|d| d.parse().ok())
            .unwrap_or(0);
        Some((dropped, rec.hist.clone()))
    }

    /// Appends already stamped entries (not `final` ones) to an existing record's
    /// history, as `history.lua` does: returns false when no record exists.
    pub fn append_history(&self, key: &str, entries: &[String], now: Instant) -> bool {
        let mut records = self.lock();
        if records.live(key, now).is_none() {
            return false;
        }
        let Some(rec) = records.map.get_mut(key) else {
            return false;
        };
        for e in entries {
            if rec.hist.len() < HIST_MAX - HIST_FINAL_RESERVE {
                rec.hist.push(e.clone());
            } else {
                incr_dropped(rec);
            }
        }
        true
    }

    /// The record's `state` field, if it is alive.
    pub fn state(&self, key: &str, now: Instant) -> Option<String> {
        self.lock().live(key, now)?.fields.get("state").cloned()
    }

    fn lock(&self) -> MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().map.len()
    }
}

use crate::history::{FINAL_RESERVE as HIST_FINAL_RESERVE, MAX_ENTRIES as HIST_MAX};

/// HINCRBY histDropped 1.
fn incr_dropped(rec: &mut Record) {
    let n = rec
        .fields
        .get("histDropped")
        .and_then(|d| d.parse::<u64>().ok())
        .unwrap_or(0);
    rec.fields
        .insert("histDropped".to_owned(), (n + 1).to_string());
}

/// One run of the script on a copy of one record.
struct Run<'a> {
    args: &'a [&'a str],
    now: Instant,
    /// The key as the script sees it: `None` while it does not exist.
    rec: Option<Record>,
    /// Whether `rec` was written.
    dirty: bool,
    /// The STATE JSON the script published, if it did.
    published: Option<String>,
    /// The run's clock for history entries (Unix ms), read once, as the script's TIME.
    hist_now: Option<i64>,
}

fn reply<const N: usize>(parts: [&str; N]) -> Result<Vec<String>, String> {
    Ok(parts.iter().map(|s| (*s).to_owned()).collect())
}

impl<'a> Run<'a> {
    // ---- Redis commands on the one key ----

    /// ARGV[n], 1-based as in Lua.
    fn argv(&self, n: usize) -> Result<&'a str, String> {
        n.checked_sub(1)
            .and_then(|i| self.args.get(i))
            .copied()
            .ok_or_else(|| format!("payment.lua: ARGV[{n}] missing"))
    }

    fn need_args(&self, n: usize, what: &str) -> Result<(), String> {
        if self.args.len() < n {
            return Err(format!(
                "payment.lua: {what} takes {n} arguments, got {}",
                self.args.len()
            ));
        }
        Ok(())
    }

    /// HGET: `None` is the script's `false`.
    fn field(&self, name: &str) -> Option<&str> {
        self.rec.as_ref()?.fields.get(name).map(String::as_str)
    }

    /// HSET: creates the key (without a TTL) if it does not exist.
    fn hset(&mut self, pairs: &[(&str, &str)]) {
        let rec = self.rec.get_or_insert_with(Record::default);
        for (k, v) in pairs {
            rec.fields.insert((*k).to_owned(), (*v).to_owned());
        }
        self.dirty = true;
    }

    /// The names of the `early:<nonce>` fields.
    fn early_fields(&self) -> Vec<String> {
        self.rec
            .iter()
            .flat_map(|r| r.fields.keys())
            .filter(|f| f.starts_with("early:"))
            .cloned()
            .collect()
    }

    /// EXPIRE with `ttl` (ARGV text): the whole record's deadline from now.
    fn expire(&mut self, ttl: &str) -> Result<(), String> {
        let secs = parse_ttl(ttl)?;
        let deadline = self
            .now
            .checked_add(Duration::from_secs(secs))
            .ok_or_else(|| format!("payment.lua: invalid expire time {ttl:?}"))?;
        if let Some(rec) = self.rec.as_mut() {
            rec.expires = Some(deadline);
            self.dirty = true;
        }
        Ok(())
    }

    /// Appends one history entry (the script's `hist`), stamping it if it has no `at`.
    fn hist(&mut self, mut e: Obj) -> Result<(), String> {
        if !e.contains_key("at") {
            let now = *self
                .hist_now
                .get_or_insert_with(|| chrono::Utc::now().timestamp_millis());
            e.insert("at".into(), Value::from(now));
        }
        let room = if is_str(e.get("type"), "final") {
            HIST_MAX
        } else {
            HIST_MAX - HIST_FINAL_RESERVE
        };
        let enc = encode(&e)?;
        let rec = self.rec.get_or_insert_with(Record::default);
        if rec.hist.len() < room {
            rec.hist.push(enc);
        } else {
            incr_dropped(rec);
        }
        self.dirty = true;
        Ok(())
    }

    /// The script's `note`: appends the caller's entries (ARGV[`n`], a JSON array), a
    /// `callback` entry with `decision` and the mismatching fields.
    fn note(&mut self, n: usize, decision: Option<&str>, bad: &str) -> Result<(), String> {
        let arg = match n.checked_sub(1).and_then(|i| self.args.get(i)) {
            None | Some(&"") => return Ok(()),
            Some(a) => *a,
        };
        let entries = match serde_json::from_str::<Value>(arg) {
            Ok(Value::Array(a)) => a,
            _ => return Err(format!("payment.lua: ARGV[{n}] is not a JSON array")),
        };
        for e in entries {
            let Value::Object(mut e) = e else {
                return Err("payment.lua: a history entry is not an object".to_owned());
            };
            if is_str(e.get("type"), "callback") {
                set_or_remove(&mut e, "decision", decision.map(Value::from).as_ref());
                if !bad.is_empty() {
                    let fields = bad.split(',').filter(|f| !f.is_empty()).map(Value::from);
                    e.insert("fields".into(), Value::Array(fields.collect()));
                }
            }
            self.hist(e)?;
        }
        Ok(())
    }

    /// The stored STATE JSON, which every record with a status has.
    fn state_json(&self) -> Result<String, String> {
        self.field("state")
            .map(str::to_owned)
            .ok_or_else(|| "payment.lua: record has a status but no state".to_owned())
    }

    // ---- the script ----

    fn script(&mut self) -> Result<Vec<String>, String> {
        match self.args.first().copied() {
            Some("pending") => self.pending(),
            Some("final") => self.final_(),
            _ => Err("payment.lua: unknown mode".to_owned()),
        }
    }

    fn pending(&mut self) -> Result<Vec<String>, String> {
        self.need_args(5, "mode \"pending\"")?;
        let (nonce, state_arg, ttl, phd) =
            (self.argv(2)?, self.argv(3)?, self.argv(4)?, self.argv(5)?);
        if self.field("status").is_some() {
            if self.field("cbt") == Some(nonce) {
                return Ok(vec!["EXISTS".to_owned(), self.state_json()?]);
            }
            return reply(["COLLISION"]);
        }
        let early = self.field(&format!("early:{nonce}")).map(str::to_owned);
        let stale = self.early_fields();
        if let Some(rec) = self.rec.as_mut() {
            for f in &stale {
                rec.fields.remove(f);
            }
        }
        self.hset(&[
            ("state", state_arg),
            ("status", "PENDING"),
            ("version", "1"),
            ("cbt", nonce),
            ("phd", phd),
        ]);
        self.expire(ttl)?;
        self.note(7, None, "")?;
        let Some(early) = early else {
            return reply(["PENDING", state_arg]);
        };
        let early = decode_obj(&early, "early record")?;
        let state = decode_obj(state_arg, "STATE")?;
        let outcome = object_in(&early, "o")?;
        let binding = object_in(&early, "b")?;
        let bad = mismatch(&state, Some(phd), outcome, binding);
        if !bad.is_empty() {
            self.hset(&[("amountMismatch", &bad)]);
            return reply(["PENDING_MISMATCH", state_arg, &bad]);
        }
        if is_str(early.get("c"), "1") && is_str(outcome.get("status"), "SUCCESS") {
            let kept = encode(outcome)?;
            self.hset(&[("confirm", &kept)]);
            return reply(["PENDING_CONFIRM", state_arg]);
        }
        let enc = self.publish_final(state, outcome, 2, "callback")?;
        Ok(vec!["FINAL".to_owned(), enc])
    }

    fn final_(&mut self) -> Result<Vec<String>, String> {
        self.need_args(3, "mode \"final\"")?;
        let nonce = self.argv(2)?;
        let outcome = decode_obj(self.argv(3)?, "outcome")?;
        let status = self.field("status").map(str::to_owned);
        if nonce.is_empty() {
            // A trusted source: no token check, never an early record.
            let Some(status) = status else {
                return reply(["NOT_FOUND"]);
            };
            self.note(9, None, "")?;
            if status != "PENDING" {
                return Ok(vec!["DUPLICATE".to_owned(), self.state_json()?]);
            }
            let cause = if is_str(outcome.get("reason"), "UNCONFIRMED") {
                "unconfirmed"
            } else {
                "query"
            };
            let mut outcome = outcome;
            if is_str(outcome.get("status"), "SUCCESS") {
                if let Some(kept) = self.field("confirm") {
                    outcome = decode_obj(kept, "kept confirmation")?;
                }
            }
            let state = decode_obj(&self.state_json()?, "STATE")?;
            let enc = self.publish_final(state, &outcome, 2, cause)?;
            return Ok(vec!["APPLIED".to_owned(), enc]);
        }
        self.need_args(8, "a callback in mode \"final\"")?;
        let binding = decode_obj(self.argv(6)?, "binding")?;
        let Some(status) = status else {
            let field = format!("early:{nonce}");
            if self.field(&field).is_some() {
                self.note(9, Some("duplicate"), "")?;
                return reply(["DUPLICATE", ""]);
            }
            let max = lua_tonumber_str(self.argv(7)?)
                .ok_or_else(|| "payment.lua: ARGV[7] is not a number".to_owned())?;
            if self.early_fields().len() as f64 >= max {
                self.note(9, Some("early_full"), "")?;
                return reply(["EARLY_FULL"]);
            }
            let mut entry = Obj::new();
            entry.insert("o".into(), Value::Object(outcome));
            entry.insert("b".into(), Value::Object(binding));
            entry.insert("c".into(), Value::String(self.argv(8)?.to_owned()));
            let entry = encode(&entry)?;
            self.hset(&[(&field, &entry)]);
            self.expire(self.argv(5)?)?;
            self.note(9, Some("early"), "")?;
            return reply(["EARLY"]);
        };
        if self.field("cbt") != Some(nonce) {
            self.note(9, Some("forbidden"), "")?;
            return reply(["FORBIDDEN"]);
        }
        let state_json = self.state_json()?;
        let state = decode_obj(&state_json, "STATE")?;
        let version = self.field("version").and_then(lua_tonumber_str);
        let correcting = status == "FAILED"
            && is_str(state.get("reason"), "UNCONFIRMED")
            && version == Some(2.0);
        if status != "PENDING" && !correcting {
            self.note(9, Some("duplicate"), "")?;
            return Ok(vec!["DUPLICATE".to_owned(), state_json]);
        }
        let bad = mismatch(&state, self.field("phd"), &outcome, &binding);
        if !bad.is_empty() {
            self.hset(&[("amountMismatch", &bad)]);
            self.note(9, Some("mismatch"), &bad)?;
            return reply(["MISMATCH", &bad]);
        }
        if correcting {
            self.note(9, Some("corrected"), "")?;
            let enc = self.publish_final(state, &outcome, 3, "correction")?;
            return Ok(vec!["CORRECTED".to_owned(), enc]);
        }
        if self.argv(8)? == "1" && is_str(outcome.get("status"), "SUCCESS") {
            let raw = self.argv(3)?;
            self.hset(&[("confirm", raw)]);
            self.note(9, Some("awaiting_confirmation"), "")?;
            return reply(["AWAITING_CONFIRMATION"]);
        }
        self.note(9, Some("applied"), "")?;
        let enc = self.publish_final(state, &outcome, 2, "callback")?;
        Ok(vec!["APPLIED".to_owned(), enc])
    }

    /// Merges, writes state, status and version (the TTL stays), and publishes.
    fn publish_final(
        &mut self,
        mut state: Obj,
        outcome: &Obj,
        version: u64,
        cause: &str,
    ) -> Result<String, String> {
        let enc = merge(&mut state, outcome, version)?;
        let status = hash_arg(outcome.get("status"))?;
        let v = version.to_string();
        self.hset(&[("state", &enc), ("status", &status), ("version", &v)]);
        let mut e = Obj::new();
        e.insert("type".into(), Value::from("final"));
        e.insert("cause".into(), Value::from(cause));
        e.insert("status".into(), Value::from(status));
        set_or_remove(&mut e, "reason", outcome.get("reason"));
        e.insert("version".into(), Value::from(version));
        self.hist(e)?;
        self.published = Some(enc.clone());
        Ok(enc)
    }
}

// ---- the script's helpers, with Lua's semantics ----

/// `present(v)`: not nil, not null, not "".
fn present(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    }
}

/// `v == s` for a Lua string `s`.
fn is_str(v: Option<&Value>, s: &str) -> bool {
    matches!(v, Some(Value::String(x)) if x == s)
}

/// Lua's `==` on two decoded JSON values (`None` is nil): numbers by value, tables
/// never equal (they are distinct tables).
fn lua_eq(a: Option<&Value>, b: Option<&Value>) -> bool {
    match (a, b) {
        (None, None) | (Some(Value::Null), Some(Value::Null)) => true,
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x == y,
        (Some(Value::Number(x)), Some(Value::Number(y))) => x.as_f64() == y.as_f64(),
        (Some(Value::String(x)), Some(Value::String(y))) => x == y,
        _ => false,
    }
}

/// `present(f)` for a hash field read by HMGET: a missing one is `false`, which is present.
fn field_present(f: Option<&str>) -> bool {
    f != Some("")
}

/// Lua's `v == f` for a decoded JSON value and a hash field (`None`: `false`).
fn eq_field(v: Option<&Value>, f: Option<&str>) -> bool {
    match (v, f) {
        (Some(Value::Bool(false)), None) => true,
        (Some(Value::String(s)), Some(f)) => s == f,
        _ => false,
    }
}

/// Lua's `tonumber(v)` on a decoded JSON value.
fn lua_tonumber(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => lua_tonumber_str(s),
        _ => None,
    }
}

/// Lua's `tonumber(s)` on a string: decimal (with exponent), or hexadecimal with `0x`,
/// surrounding whitespace allowed.
fn lua_tonumber_str(s: &str) -> Option<f64> {
    let t = s.trim_matches(|c: char| c.is_ascii_whitespace());
    let (neg, body) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let n = hex
            .bytes()
            .filter_map(|b| char::from(b).to_digit(16))
            .fold(0f64, |acc, d| acc * 16.0 + f64::from(d));
        return Some(if neg { -n } else { n });
    }
    if t.is_empty() {
        return None;
    }
    t.parse::<f64>().ok()
}

/// `x or null`: nil and `false` become JSON null.
fn or_null(v: Option<&Value>) -> Value {
    match v {
        None | Some(Value::Bool(false)) => Value::Null,
        Some(v) => v.clone(),
    }
}

/// `t[k] = v`: assigning nil removes the key.
fn set_or_remove(t: &mut Obj, k: &str, v: Option<&Value>) {
    match v {
        Some(v) => {
            t.insert(k.to_owned(), v.clone());
        }
        None => {
            t.remove(k);
        }
    }
}

/// A value as a `redis.call` argument: strings as they are, numbers in decimal.
fn hash_arg(v: Option<&Value>) -> Result<String, String> {
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) => f.to_string(),
            _ => n.to_string(),
        }),
        _ => Err("payment.lua: the outcome's status must be a string".to_owned()),
    }
}

fn decode_obj(json: &str, what: &str) -> Result<Obj, String> {
    match serde_json::from_str::<Value>(json) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(format!("payment.lua: {what} is not a JSON object")),
        Err(e) => Err(format!("payment.lua: cannot decode {what}: {e}")),
    }
}

fn object_in<'o>(o: &'o Obj, k: &str) -> Result<&'o Obj, String> {
    match o.get(k) {
        Some(Value::Object(v)) => Ok(v),
        _ => Err(format!("payment.lua: early record has no object {k:?}")),
    }
}

fn encode(o: &Obj) -> Result<String, String> {
    serde_json::to_string(o).map_err(|e| format!("payment.lua: cannot encode: {e}"))
}

/// A TTL argument: a positive whole number of seconds, as Redis reads integers (no sign,
/// no leading zero, no spaces).
fn parse_ttl(s: &str) -> Result<u64, String> {
    let ok = s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with('0');
    match s.parse::<u64>() {
        Ok(n) if ok && n > 0 => Ok(n),
        _ => Err(format!(
            "payment.lua: TTL {s:?} is not a positive whole number of seconds"
        )),
    }
}

/// What a callback got wrong about the push it claims to complete: "" when nothing.
/// `stored_phd` is the record's `phd` field (`None`: `false`).
fn mismatch(state: &Obj, stored_phd: Option<&str>, outcome: &Obj, binding: &Obj) -> String {
    let mut bad = Vec::new();
    let mrid = binding.get("mrid");
    if present(mrid) && !lua_eq(mrid, state.get("merchantRequestId")) {
        bad.push("merchantRequestId");
    }
    if is_str(outcome.get("status"), "SUCCESS") {
        let (paid, pushed) = (outcome.get("amount"), state.get("amount"));
        if !present(paid) || !present(pushed) || lua_tonumber(paid) != lua_tonumber(pushed) {
            bad.push("amount");
        }
        let phd = binding.get("phd");
        if present(phd) && field_present(stored_phd) && !eq_field(phd, stored_phd) {
            bad.push("phone");
        }
    }
    bad.join(",")
}

/// The transition: the state takes the outcome's result. Only a success carries receipt,
/// amount, phone and transaction date; a failure keeps the pushed amount and phone and
/// has no receipt or date. Returns the encoded state.
fn merge(state: &mut Obj, outcome: &Obj, version: u64) -> Result<String, String> {
    set_or_remove(state, "status", outcome.get("status"));
    for k in ["reason", "resultCode", "resultDesc"] {
        state.insert(k.to_owned(), or_null(outcome.get(k)));
    }
    if is_str(outcome.get("status"), "SUCCESS") {
        for k in [
            "mpesaReceiptNumber",
            "amount",
            "phoneNumber",
            "transactionDate",
        ] {
            if let Some(v) = outcome.get(k).filter(|v| present(Some(v))) {
                state.insert(k.to_owned(), v.clone());
            }
        }
    } else {
        state.insert("mpesaReceiptNumber".to_owned(), Value::Null);
        state.insert("transactionDate".to_owned(), Value::Null);
    }
    set_or_remove(state, "timestamp", outcome.get("completedAt"));
    set_or_remove(state, "completedAt", outcome.get("completedAt"));
    state.insert(
        "resultSource".to_owned(),
        or_null(outcome.get("resultSource")),
    );
    state.insert("version".to_owned(), Value::from(version));
    encode(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEY: &str = "t:pay:{ws_CO_1}";
    const CH: &str = "t:pay:{ws_CO_1}:ch";

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn pending_state() -> String {
        json!({
            "checkoutRequestId": "ws_CO_1", "merchantRequestId": "m-1", "status": "PENDING",
            "reason": null, "resultCode": null, "resultDesc": null, "mpesaReceiptNumber": null,
            "amount": 100, "phoneNumber": "2547******92", "transactionDate": null,
            "timestamp": "2024-07-21T09:51:30Z", "completedAt": null, "resultSource": null,
            "version": 1
        })
        .to_string()
    }

    fn success(amount: Value) -> String {
        json!({
            "status": "SUCCESS", "reason": null, "resultCode": 0, "resultDesc": "ok",
            "mpesaReceiptNumber": "NLJ7RT61SV", "amount": amount, "phoneNumber": null,
            "transactionDate": null, "completedAt": "2024-07-21T09:51:40Z",
            "resultSource": "CALLBACK"
        })
        .to_string()
    }

    /// Runs one call, collecting what it published.
    fn call(
        t: &PaymentTable,
        args: &[&str],
        now: Instant,
    ) -> (Result<Vec<String>, String>, Vec<String>) {
        let mut published = Vec::new();
        let r = t.call(KEY, CH, args, now, &mut |ch, p| {
            assert_eq!(ch, CH);
            published.push(p.to_owned());
        });
        (r, published)
    }

    fn tag(r: &Result<Vec<String>, String>) -> &str {
        match r {
            Ok(v) => v.first().map_or("", String::as_str),
            Err(_) => "ERR",
        }
    }

    fn pending(
        t: &PaymentTable,
        nonce: &str,
        ttl: &str,
        now: Instant,
    ) -> Result<Vec<String>, String> {
        let state = pending_state();
        call(t, &["pending", nonce, &state, ttl, "phd-1"], now).0
    }

    fn callback(
        t: &PaymentTable,
        nonce: &str,
        outcome: &str,
        early_ttl: &str,
        now: Instant,
    ) -> (Result<Vec<String>, String>, Vec<String>) {
        call(
            t,
            &[
                "final",
                nonce,
                outcome,
                "60",
                early_ttl,
                r#"{"mrid":"m-1","phd":""}"#,
                "4",
                "0",
            ],
            now,
        )
    }

    #[test]
    fn applies_once_and_publishes_what_it_writes() {
        let t = PaymentTable::default();
        let t0 = Instant::now();
        assert_eq!(tag(&pending(&t, "n1", "60", t0)), "PENDING");
        let (r, published) = callback(&t, "n1", &success(json!(100)), "300", t0);
        let r = r.unwrap();
        assert_eq!(r[0], "APPLIED");
        assert_eq!(published, vec![r[1].clone()]);
        assert_eq!(t.state(KEY, t0), Some(r[1].clone()));
        let s: Value = serde_json::from_str(&r[1]).unwrap();
        assert_eq!(s["status"], "SUCCESS");
        assert_eq!(s["version"], 2);
        assert_eq!(s["mpesaReceiptNumber"], "NLJ7RT61SV");
        assert_eq!(
            s["phoneNumber"], "2547******92",
            "a null phone keeps the pushed one"
        );
        let (r, published) = callback(&t, "n1", &success(json!(100)), "300", t0);
        assert_eq!(
            r.unwrap(),
            vec!["DUPLICATE".to_owned(), t.state(KEY, t0).unwrap()]
        );
        assert!(published.is_empty());
    }

    #[test]
    fn amounts_compare_as_numbers_whatever_their_json_type() {
        for (paid, ok) in [
            (json!(100), true),
            (json!("100"), true),
            (json!(" 1e2 "), true),
            (json!("0x64"), true),
            (json!(100.0), true),
            (json!(99), false),
            (json!("abc"), false),
            (json!(""), false),
            (json!(null), false),
        ] {
            let t = PaymentTable::default();
            let t0 = Instant::now();
            pending(&t, "n1", "60", t0).unwrap();
            let (r, _) = callback(&t, "n1", &success(paid.clone()), "300", t0);
            let r = r.unwrap();
            if ok {
                assert_eq!(r[0], "APPLIED", "{paid}");
            } else {
                assert_eq!(r, vec!["MISMATCH", "amount"], "{paid}");
                let fields = &t.lock().map[KEY].fields;
                assert_eq!(fields["amountMismatch"], "amount");
                assert_eq!(fields["status"], "PENDING");
            }
        }
    }

    #[test]
    fn a_push_without_amount_never_matches_a_success() {
        let t = PaymentTable::default();
        let t0 = Instant::now();
        let mut state = decode_obj(&pending_state(), "STATE").unwrap();
        state.insert("amount".into(), Value::Null);
        let state = encode(&state).unwrap();
        call(&t, &["pending", "n1", &state, "60", "phd-1"], t0)
            .0
            .unwrap();
        let (r, _) = callback(&t, "n1", &success(json!(null)), "300", t0);
        assert_eq!(
            r.unwrap(),
            vec!["MISMATCH", "amount"],
            "nil == nil must not pass"
        );
        // Two values that are not numbers compare equal, as tonumber gives nil for both.
        let t = PaymentTable::default();
        let mut state = decode_obj(&pending_state(), "STATE").unwrap();
        state.insert("amount".into(), json!("abc"));
        let state = encode(&state).unwrap();
        call(&t, &["pending", "n1", &state, "60", "phd-1"], t0)
            .0
            .unwrap();
        let (r, _) = callback(&t, "n1", &success(json!("xyz")), "300", t0);
        assert_eq!(tag(&r), "APPLIED");
    }

    #[test]
    fn an_expired_record_is_absent_and_removed() {
        let t = PaymentTable::default();
        let t0 = Instant::now();
        pending(&t, "n1", "10", t0).unwrap();
        assert!(t.state(KEY, t0 + secs(9)).is_some());
        assert_eq!(t.state(KEY, t0 + secs(10)), None);
        assert_eq!(t.len(), 0, "removed when touched");
        // A new push may take the id: no EXISTS, no COLLISION.
        assert_eq!(tag(&pending(&t, "n2", "10", t0 + secs(11))), "PENDING");
        let (r, _) = callback(&t, "n1", &success(json!(100)), "300", t0 + secs(11));
        assert_eq!(tag(&r), "FORBIDDEN");
        let (r, _) = call(&t, &["final", "", &success(json!(100))], t0 + secs(30));
        assert_eq!(tag(&r), "NOT_FOUND");
    }

    #[test]
    fn a_final_state_keeps_the_pending_deadline() {
        let t = PaymentTable::default();
        let t0 = Instant::now();
        pending(&t, "n1", "10", t0).unwrap();
        let (r, _) = callback(&t, "n1", &success(json!(100)), "300", t0 + secs(8));
        assert_eq!(tag(&r), "APPLIED");
        assert!(t.state(KEY, t0 + secs(9)).is_some());
        assert_eq!(
            t.state(KEY, t0 + secs(10)),
            None,
            "applying does not extend the TTL"
        );
    }

    #[test]
    fn early_records_live_for_the_early_ttl_and_pending_resets_it() {
        let t = PaymentTable::default();
        let t0 = Instant::now();
        assert_eq!(
            tag(&callback(&t, "n1", &success(json!(100)), "5", t0).0),
            "EARLY"
        );
        assert_eq!(t.state(KEY, t0), None, "an early record has no state");
        // Gone after the early TTL: the pending write finds nothing to apply.
        assert_eq!(tag(&pending(&t, "n1", "60", t0 + secs(5))), "PENDING");

        let t = PaymentTable::default();
        assert_eq!(
            tag(&callback(&t, "n1", &success(json!(100)), "5", t0).0),
            "EARLY"
        );
        let (r, published) = call(
            &t,
            &["pending", "n1", &pending_state(), "60", "phd-1"],
            t0 + secs(3),
        );
        assert_eq!(tag(&r), "FINAL");
        assert_eq!(published.len(), 1);
        assert!(
            t.state(KEY, t0 + secs(62)).is_some(),
            "pending set the TTL to 60 s"
        );
        assert_eq!(t.state(KEY, t0 + secs(63)), None);
    }

    #[test]
    fn early_records_are_capped_and_never_overwritten() {
        let t = PaymentTable::default();
        let t0 = Instant::now();
        for n in ["a", "b", "c", "d"] {
            assert_eq!(
                tag(&callback(&t, n, &success(json!(100)), "300", t0).0),
                "EARLY"
            );
        }
        assert_eq!(
            callback(&t, "e", &success(json!(100)), "300", t0)
                .0
                .unwrap(),
            vec!["EARLY_FULL"]
        );
        assert_eq!(
            callback(&t, "a", &success(json!(1)), "300", t0).0.unwrap(),
            vec!["DUPLICATE", ""]
        );
        // The pending write applies its own nonce's record (the first, not the
        // refused overwrite) and drops the others.
        let r = pending(&t, "a", "60", t0).unwrap();
        assert_eq!(r[0], "FINAL");
        let fields = &t.lock().map[KEY].fields;
        assert!(
            fields.keys().all(|f| !f.starts_with("early:")),
            "{fields:?}"
        );
    }

    #[test]
    fn expired_records_are_swept_when_the_table_doubles() {
        let t = PaymentTable::default();
        let t0 = Instant::now();
        let state = pending_state();
        for i in 0..SWEEP_MIN {
            let key = format!("t:pay:{{{i}}}");
            t.call(
                &key,
                "ch",
                &["pending", "n", &state, "1", ""],
                t0,
                &mut |_, _| {},
            )
            .unwrap();
        }
        assert_eq!(t.len(), SWEEP_MIN);
        // The next write, after they expired, sweeps them all without touching them.
        pending(&t, "n1", "60", t0 + secs(2)).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t.lock().sweep_at, SWEEP_MIN);
    }

    #[test]
    fn bad_input_is_an_error_and_changes_nothing() {
        let t = PaymentTable::default();
        let t0 = Instant::now();
        let ok = success(json!(100));
        assert_eq!(tag(&callback(&t, "n1", &ok, "300", t0).0), "EARLY");
        let binding = r#"{"mrid":"","phd":""}"#;
        for args in [
            vec![],
            vec!["upsert"],
            vec!["pending", "n1"],
            vec!["pending", "n1", "{not json", "60", "phd"],
            vec!["pending", "n1", "[1,2]", "60", "phd"],
            vec!["pending", "n1", "{}", "0", "phd"],
            vec!["pending", "n1", "{}", "-5", "phd"],
            vec!["pending", "n1", "{}", "1.5", "phd"],
            vec!["pending", "n1", "{}", "99999999999999999999", "phd"],
            vec!["final"],
            vec!["final", "", "nope"],
            vec!["final", "n2", &ok],
            vec!["final", "n2", &ok, "60", "300", "{", "4", "0"],
            vec!["final", "n2", &ok, "60", "300", binding, "four", "0"],
            vec!["final", "n2", &ok, "60", "soon", binding, "4", "0"],
            vec!["final", "n2", "42", "60", "300", binding, "4", "0"],
        ] {
            let (r, published) = call(&t, &args, t0);
            assert!(r.is_err(), "{args:?} gave {r:?}");
            assert!(published.is_empty());
        }
        // The early record is still there, alone: the pending write applies it.
        assert_eq!(t.lock().map[KEY].fields.len(), 1);
        assert_eq!(tag(&pending(&t, "n1", "60", t0)), "FINAL");
    }

    #[test]
    fn a_trusted_success_applies_the_kept_callback() {
        let t = PaymentTable::default();
        let t0 = Instant::now();
        pending(&t, "n1", "60", t0).unwrap();
        let (r, published) = call(
            &t,
            &[
                "final",
                "n1",
                &success(json!(100)),
                "60",
                "300",
                "{}",
                "4",
                "1",
            ],
            t0,
        );
        assert_eq!(r.unwrap(), vec!["AWAITING_CONFIRMATION"]);
        assert!(published.is_empty());
        let query = json!({"status": "SUCCESS", "resultCode": 0, "resultDesc": "query",
            "completedAt": "2024-07-21T09:52:00Z", "resultSource": "STK_QUERY"})
        .to_string();
        let (r, published) = call(&t, &["final", "", &query], t0);
        let r = r.unwrap();
        assert_eq!(r[0], "APPLIED");
        assert_eq!(published, vec![r[1].clone()]);
        let s: Value = serde_json::from_str(&r[1]).unwrap();
        assert_eq!(s["mpesaReceiptNumber"], "NLJ7RT61SV");
        assert_eq!(s["resultSource"], "CALLBACK");
    }

    #[test]
    fn merge_follows_lua_for_missing_keys() {
        let mut state = decode_obj(&pending_state(), "STATE").unwrap();
        let outcome = decode_obj(
            r#"{"status":"FAILED","resultCode":1032,"reason":false}"#,
            "o",
        )
        .unwrap();
        let enc = merge(&mut state, &outcome, 2).unwrap();
        let s: Value = serde_json::from_str(&enc).unwrap();
        assert_eq!(s["reason"], Value::Null, "false or null is null");
        assert_eq!(s["resultDesc"], Value::Null);
        assert_eq!(s["resultSource"], Value::Null);
        assert_eq!(s["amount"], 100);
        assert!(
            s.get("timestamp").is_none(),
            "nil removes the key, as in a Lua table"
        );
        assert!(s.get("completedAt").is_none());
    }
}
