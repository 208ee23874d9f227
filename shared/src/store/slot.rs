//! Redis Cluster hash slots: which of the 16,384 slots a key or a shard channel lives
//! in. The cluster subscriber ([`crate::broker::cluster`]) needs it to pick the shard a
//! channel is on, and the pool to send `WAIT` to the primary that took a write.
//!
//! The rule is Redis Cluster's: CRC16 (XMODEM) of the key, modulo 16,384, where a key
//! holding a non-empty `{…}` hash tag is hashed by the tag alone (the first `{` and the
//! first `}` after it). Every per-payment name in [`crate::keyspace`] carries such a tag.

/// The number of hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16_384;

/// The slot of `key`.
pub fn of(key: &[u8]) -> u16 {
    crc16_xmodem(hashed_part(key)) % SLOTS
}

/// The part of `key` that is hashed: its hash tag if it has a non-empty one.
fn hashed_part(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|&b| b == b'{') else {
        return key;
    };
    let rest = &key[open + 1..];
    match rest.iter().position(|&b| b == b'}') {
        Some(close) if close > 0 => &rest[..close],
        _ => key,
    }
}

/// CRC-16/XMODEM: polynomial 0x1021, initial value 0, no reflection.
fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_redis_cluster_specification() {
        // The check value of CRC-16/XMODEM, and slots given in the cluster spec.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(of(b"foo"), 12182);
        assert_eq!(of(b"bar"), 5061);
        assert_eq!(of(b"{user1000}.following"), of(b"{user1000}.followers"));
        assert_eq!(of(b"foo{}{bar}"), of(b"foo{}{bar}"));
        assert_eq!(of(b"foo{}{bar}"), crc16_xmodem(b"foo{}{bar}") % SLOTS);
        assert_eq!(of(b"foo{{bar}}zap"), crc16_xmodem(b"{bar") % SLOTS);
        assert_eq!(of(b"foo{bar}{zap}"), of(b"bar"));
        assert_eq!(of(b"stk:pay:{ws_CO_1}"), of(b"stk:pay:{ws_CO_1}:ch"));
        assert_eq!(of(b"stk:pay:{ws_CO_1}"), of(b"ws_CO_1"));
        assert_eq!(of(b"{"), crc16_xmodem(b"{") % SLOTS);
        assert_eq!(of(b""), 0);
    }
}
