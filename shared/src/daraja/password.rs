//! Daraja's `Timestamp` and `Password` fields.
//!
//! The timestamp is `yyyyMMddHHmmss` in East Africa Time (UTC+3, no DST), whatever the
//! host's zone. It is generated once per request and the same string goes into the
//! password and the body.

use base64::Engine as _;
use chrono::{DateTime, FixedOffset, Utc};
use secrecy::{ExposeSecret, SecretString};

/// East Africa Time: UTC+3 all year.
pub fn eat() -> FixedOffset {
    FixedOffset::east_opt(3 * 3600).expect("UTC+3 is a valid offset")
}

/// The `Timestamp` field for the instant `now`.
pub fn timestamp(now: DateTime<Utc>) -> String {
    now.with_timezone(&eat()).format("%Y%m%d%H%M%S").to_string()
}

/// `base64(shortcode ‖ passkey ‖ timestamp)`.
pub fn password(shortcode: &str, passkey: &SecretString, timestamp: &str) -> String {
    let secret = passkey.expose_secret();
    let mut raw = String::with_capacity(shortcode.len() + secret.len() + timestamp.len());
    raw.push_str(shortcode);
    raw.push_str(secret);
    raw.push_str(timestamp);
    base64::engine::general_purpose::STANDARD.encode(raw.as_bytes())
}

/// Parses a `Timestamp` field back into an instant, if it is a real EAT time.
pub fn parse_timestamp(raw: &str) -> Option<DateTime<Utc>> {
    if raw.len() != 14 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let naive = chrono::NaiveDateTime::parse_from_str(raw, "%Y%m%d%H%M%S").ok()?;
    let local = naive.and_local_timezone(eat()).single()?;
    Some(local.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_sandbox_vector() {
        let passkey = SecretString::from(
            "bfb279f9aa9bdbcf158e97dd71a467cd2e0c893059b10f78e6b72ada1ed2c919".to_owned(),
        );
        assert_eq!(
            password("174379", &passkey, "20160216165627"),
            "MTc0Mzc5YmZiMjc5ZjlhYTliZGJjZjE1OGU5N2RkNzFhNDY3Y2QyZTBjODkzMDU5YjEwZjc4ZTZiNzJhZGExZWQyYzkxOTIwMTYwMjE2MTY1NjI3"
        );
    }

    #[test]
    fn timestamp_is_eat_not_host_time() {
        let utc: DateTime<Utc> = "2024-07-21T22:30:05Z".parse().unwrap();
        assert_eq!(timestamp(utc), "20240722013005");
        assert_eq!(parse_timestamp("20240722013005"), Some(utc));
        assert_eq!(parse_timestamp("20241322013005"), None);
        assert_eq!(parse_timestamp("2024072201300"), None);
        assert_eq!(parse_timestamp("2024-07-22T01:"), None);
    }
}
