//! A RESP2 reply reader for the cluster subscriber's own connections
//! ([`super::cluster`]). redis-rs's pub/sub connection cannot carry sharded pub/sub:
//! it does not know `ssubscribe` replies, and it would swallow the unsolicited
//! `sunsubscribe` a shard sends when a channel's slot moves away, which is exactly the
//! event the subscriber must see. Only what a subscribed connection receives is
//! understood: arrays, bulk and simple strings, integers and errors.
//!
//! Every length is bounded ([`MAX_BULK`], [`MAX_ARRAY`], [`MAX_DEPTH`]): a reply beyond
//! them is an error, and the connection is dropped.

/// The largest bulk string accepted (a published state is a few KiB).
pub const MAX_BULK: usize = 4 * 1024 * 1024;
/// The longest array accepted.
pub const MAX_ARRAY: usize = 1024;
/// The deepest nesting accepted.
pub const MAX_DEPTH: usize = 4;

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Frame>>),
}

impl Frame {
    /// A bulk or simple string's bytes.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Frame::Bulk(Some(b)) => Some(b),
            Frame::Simple(s) => Some(s.as_bytes()),
            _ => None,
        }
    }
}

/// Parses one reply from the start of `buf`. `Ok(None)`: incomplete, read more.
/// `Ok(Some((frame, used)))`: a reply and how many bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Frame, usize)>, String> {
    parse_at(buf, 0)
}

fn line(buf: &[u8]) -> Option<(&[u8], usize)> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    Some((&buf[..end], end + 2))
}

fn int(raw: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad RESP integer {:?}", String::from_utf8_lossy(raw)))
}

fn parse_at(buf: &[u8], depth: usize) -> Result<Option<(Frame, usize)>, String> {
    if depth > MAX_DEPTH {
        return Err("RESP reply nested too deep".into());
    }
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let Some((head, head_len)) = line(&buf[1..]) else {
        // A header line is short; a long one without its end is garbage.
        return if buf.len() > 64 * 1024 {
            Err("RESP line too long".into())
        } else {
            Ok(None)
        };
    };
    let used = 1 + head_len;
    let text = || String::from_utf8_lossy(head).into_owned();
    match kind {
        b'+' => Ok(Some((Frame::Simple(text()), used))),
        b'-' => Ok(Some((Frame::Error(text()), used))),
        b':' => Ok(Some((Frame::Int(int(head)?), used))),
        b'$' => {
            let n = int(head)?;
            if n < 0 {
                return Ok(Some((Frame::Bulk(None), used)));
            }
            let n = usize::try_from(n).map_err(|_| "bad bulk length".to_string())?;
            if n > MAX_BULK {
                return Err(format!("RESP bulk string of {n} bytes is too long"));
            }
            let end = used + n + 2;
            if buf.len() < end {
                return Ok(None);
            }
            if &buf[used + n..end] != b"\r\n" {
                return Err("RESP bulk string not followed by CRLF".into());
            }
            Ok(Some((Frame::Bulk(Some(buf[used..used + n].to_vec())), end)))
        }
        b'*' => {
            let n = int(head)?;
            if n < 0 {
                return Ok(Some((Frame::Array(None), used)));
            }
            let n = usize::try_from(n).map_err(|_| "bad array length".to_string())?;
            if n > MAX_ARRAY {
                return Err(format!("RESP array of {n} items is too long"));
            }
            let mut items = Vec::with_capacity(n);
            let mut at = used;
            for _ in 0..n {
                match parse_at(&buf[at..], depth + 1)? {
                    None => return Ok(None),
                    Some((f, u)) => {
                        items.push(f);
                        at += u;
                    }
                }
            }
            Ok(Some((Frame::Array(Some(items)), at)))
        }
        other => Err(format!("unexpected RESP type byte {other:#04x}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Frame {
        Frame::Bulk(Some(s.as_bytes().to_vec()))
    }

    #[test]
    fn reads_what_a_subscribed_connection_receives() {
        let msg = b"*3\r\n$8\r\nsmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n";
        let (f, used) = parse(msg).unwrap().unwrap();
        assert_eq!(used, msg.len());
        assert_eq!(
            f,
            Frame::Array(Some(vec![bulk("smessage"), bulk("ch"), bulk("hello")]))
        );
        let sub = b"*3\r\n$10\r\nssubscribe\r\n$2\r\nch\r\n:1\r\n";
        let (f, _) = parse(sub).unwrap().unwrap();
        assert_eq!(
            f,
            Frame::Array(Some(vec![bulk("ssubscribe"), bulk("ch"), Frame::Int(1)]))
        );
        let moved = b"-MOVED 866 127.0.0.1:7001\r\n";
        assert_eq!(
            parse(moved).unwrap().unwrap().0,
            Frame::Error("MOVED 866 127.0.0.1:7001".into())
        );
        assert_eq!(
            parse(b"+OK\r\n").unwrap().unwrap().0,
            Frame::Simple("OK".into())
        );
        assert_eq!(parse(b"$-1\r\n").unwrap().unwrap().0, Frame::Bulk(None));
    }

    #[test]
    fn waits_for_the_rest_of_a_split_reply() {
        let msg = b"*3\r\n$8\r\nsmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n+OK\r\n";
        for cut in 0..msg.len() - 5 {
            assert_eq!(parse(&msg[..cut]).unwrap(), None, "cut at {cut}");
        }
        let (_, used) = parse(msg).unwrap().unwrap();
        assert_eq!(&msg[used..], b"+OK\r\n");
    }

    #[test]
    fn refuses_garbage_and_oversized_replies() {
        assert!(parse(b"?what\r\n").is_err());
        assert!(parse(b"$abc\r\n").is_err());
        assert!(parse(b"$999999999\r\n").is_err());
        assert!(parse(b"*99999\r\n").is_err());
        assert!(parse(b"$2\r\nabcd").is_err());
        assert!(parse(b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n").is_err());
        assert!(parse(&[b'+'; 70_000]).is_err());
    }
}
