//! Ages on the command line: a whole number and a unit, `s`, `m`, `h` or `d`
//! (`30s`, `5m`, `2h`, `1d`).

use std::time::Duration;

/// Parses `30s`, `5m`, `2h`, `1d`. A unit is required; `0s` is allowed.
pub fn parse(raw: &str) -> Result<Duration, String> {
    let s = raw.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{raw:?} needs a unit: s, m, h or d (e.g. 5m)"))?;
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() {
        return Err(format!("{raw:?} must start with a number (e.g. 30s)"));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{raw:?}: number too large"))?;
    let per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{raw:?}: unknown unit {unit:?}; use s, m, h or d")),
    };
    n.checked_mul(per)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{raw:?}: too large"))
}

/// A short human form of an age: `42s`, `5m 3s`, `2h 10m`, `3d 4h`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(parse(" 7m "), Ok(Duration::from_secs(420)));
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            "5",
            "m",
            "-5m",
            "5 m",
            "5min",
            "1.5h",
            "5M",
            "99999999999999999999s",
            "999999999999999999d",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn human_form() {
        assert_eq!(human(Duration::from_secs(42)), "42s");
        assert_eq!(human(Duration::from_secs(303)), "5m 3s");
        assert_eq!(human(Duration::from_secs(7800)), "2h 10m");
        assert_eq!(human(Duration::from_secs(3 * 86_400 + 4 * 3600)), "3d 4h");
    }
}
