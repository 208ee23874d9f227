//! Per-source limits on refused requests: a token bucket per client address, in this
//! process only (every node keeps its own; the limits are per node).
//!
//! Only refusals spend tokens: a bad token, a bad body, a source outside
//! `callbacks.allowed_sources`, a token bound to another payment. Valid callbacks never
//! spend one, so Daraja's few addresses keep a full bucket however many results they
//! deliver. A source that keeps failing is first slowed to `limits.refused_per_minute`
//! refusals a minute after its `limits.refused_burst`, then, with an empty bucket,
//! refused with 429 before its body is read. Even then a request whose token verifies
//! is let through (the route checks it, a constant-time HMAC): an attacker that shares an
//! address with Daraja (a proxy missing from `server.trusted_proxies`) can never get
//! Daraja's genuine callbacks refused.
//!
//! The table of sources is bounded (`limits.max_sources`). A source whose bucket has
//! refilled is indistinguishable from a new one and is dropped first; when every entry
//! is still spending, the one idle longest is evicted. IPv6 sources are counted per /64,
//! the block a single host usually controls.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Instant;

use crate::config::LimitSettings;

/// One source's budget of refusals.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// The per-source token buckets of refused requests.
pub struct RefusalLimiter {
    burst: f64,
    per_sec: f64,
    max_sources: usize,
    table: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RefusalLimiter {
    pub fn new(settings: &LimitSettings) -> Self {
        Self {
            burst: f64::from(settings.refused_burst),
            per_sec: f64::from(settings.refused_per_minute) / 60.0,
            max_sources: settings.max_sources.max(1),
            table: Mutex::new(HashMap::new()),
        }
    }

    fn enabled(&self) -> bool {
        self.burst > 0.0
    }

    /// Whether `source` has used up its refusals: its next refused-looking request gets 429.
    pub fn is_limited(&self, source: IpAddr) -> bool {
        self.is_limited_at(source, Instant::now())
    }

    /// Spends one token of `source` for a refused request.
    pub fn refused(&self, source: IpAddr) {
        self.refused_at(source, Instant::now());
    }

    /// How many sources are tracked now.
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Bucket>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_sec).min(self.burst);
        b.updated = now;
    }

    fn is_limited_at(&self, source: IpAddr, now: Instant) -> bool {
        if !self.enabled() {
            return false;
        }
        let key = key_of(source);
        let mut table = self.lock();
        match table.get_mut(&key) {
            Some(b) => {
                self.refill(b, now);
                b.tokens < 1.0
            }
            None => false,
        }
    }

    fn refused_at(&self, source: IpAddr, now: Instant) {
        if !self.enabled() {
            return;
        }
        let key = key_of(source);
        let mut table = self.lock();
        if !table.contains_key(&key) && table.len() >= self.max_sources {
            self.make_room(&mut table, now);
        }
        let b = table.entry(key).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        self.refill(b, now);
        b.tokens = (b.tokens - 1.0).max(0.0);
        if b.tokens < 1.0 {
            tracing::warn!(source = %key, "source refused too often; limited until it refills");
        }
    }

    /// Drops every source whose bucket has refilled; if none has, the longest idle one.
    fn make_room(&self, table: &mut HashMap<IpAddr, Bucket>, now: Instant) {
        let before = table.len();
        table.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
            b.tokens + elapsed * self.per_sec < self.burst
        });
        if table.len() < before {
            return;
        }
        let oldest = table.iter().min_by_key(|(_, b)| b.updated).map(|(k, _)| *k);
        if let Some(k) = oldest {
            table.remove(&k);
        }
    }
}

/// The table key: the address itself for IPv4, its /64 for IPv6.
fn key_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & (u128::MAX << 64);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limiter(burst: u32, per_minute: u32, max: usize) -> RefusalLimiter {
        RefusalLimiter::new(&LimitSettings {
            refused_burst: burst,
            refused_per_minute: per_minute,
            max_sources: max,
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn burst_then_limited_then_refills() {
        let l = limiter(3, 60, 100);
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        for _ in 0..3 {
            assert!(!l.is_limited_at(a, t0));
            l.refused_at(a, t0);
        }
        assert!(l.is_limited_at(a, t0));
        // Another source is unaffected.
        assert!(!l.is_limited_at(ip("10.0.0.2"), t0));
        // 60 per minute: one token a second.
        assert!(l.is_limited_at(a, t0 + Duration::from_millis(900)));
        assert!(!l.is_limited_at(a, t0 + Duration::from_millis(1100)));
    }

    #[test]
    fn off_when_burst_is_zero() {
        let l = limiter(0, 60, 100);
        let a = ip("10.0.0.1");
        for _ in 0..100 {
            l.refused(a);
        }
        assert!(!l.is_limited(a));
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn table_is_bounded_and_evicts_idle_sources_first() {
        let l = limiter(2, 60, 10);
        let t0 = Instant::now();
        let attacker = ip("192.0.2.1");
        l.refused_at(attacker, t0);
        l.refused_at(attacker, t0);
        for i in 0..1000u32 {
            let t = t0 + Duration::from_millis(u64::from(i));
            l.refused_at(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)), t);
            assert!(l.tracked() <= 10);
        }
        assert!(l.tracked() <= 10);
    }

    #[test]
    fn refilled_entries_are_dropped_before_spending_ones() {
        let l = limiter(2, 60, 2);
        let t0 = Instant::now();
        let spent = ip("192.0.2.1");
        let idle = ip("192.0.2.2");
        l.refused_at(idle, t0);
        l.refused_at(spent, t0 + Duration::from_secs(5));
        l.refused_at(spent, t0 + Duration::from_secs(5));
        // `idle` has refilled by now; `spent` has not: the newcomer replaces `idle`.
        l.refused_at(ip("192.0.2.3"), t0 + Duration::from_secs(5));
        assert!(l.is_limited_at(spent, t0 + Duration::from_secs(5)));
        assert_eq!(l.tracked(), 2);
    }

    #[test]
    fn ipv6_counts_per_64() {
        let l = limiter(2, 1, 100);
        l.refused(ip("2001:db8:1:2::1"));
        l.refused(ip("2001:db8:1:2::ffff"));
        assert!(l.is_limited(ip("2001:db8:1:2:abcd::9")));
        assert!(!l.is_limited(ip("2001:db8:1:3::1")));
        assert_eq!(l.tracked(), 1);
    }
}
