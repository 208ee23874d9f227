//! `spool status`: what an ingest's spool directory holds, read without opening it the
//! way the ingest does (`callback_ingest::spool::Spool::open` creates, locks and prunes
//! the directory, so it cannot be used beside a running ingest).
//!
//! This follows the documented on-disk format (version 1, `callback-ingest/src/spool.rs`):
//! segments `segment-<20 digits>.spool` of records `"SPL1"`, payload length (u32 LE),
//! the first 8 bytes of SHA-256(payload), payload (received-at ms i64 LE, token length
//! u32 LE, token, body); a `cursor` file `v1 <seq> <offset> <16 hex>` naming the next
//! record to replay; `spool.lock` held with an exclusive `flock` by the ingest.
//!
//! Counted as waiting: every whole, checksummed record at or after the cursor, as the
//! ingest counts them when it opens the directory. A torn record ends its segment.
//! Nothing here writes to the directory; tokens and bodies are never printed.
//!
//! Whether the lock is held: `/proc/locks` is searched for a lock on `spool.lock`'s
//! inode (which also names the holder's pid). Where that finds nothing, a shared lock is
//! tried and released at once; in that instant an ingest starting on the same directory
//! would find it locked and refuse to start, so this is only done when no holder showed
//! in `/proc/locks`.

use std::fs::File;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::AdminError;
use crate::output::{or_dash, Report, Table};

const MAGIC: &[u8; 4] = b"SPL1";
const HEADER: usize = 16;
const MAX_PAYLOAD: usize = 1 << 20;
const LOCK_FILE: &str = "spool.lock";
const CURSOR_FILE: &str = "cursor";

/// Whether an ingest holds the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LockState {
    pub held: bool,
    /// The holder, when `/proc/locks` names it.
    pub pid: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpoolStatus {
    pub dir: String,
    /// Callbacks acknowledged and not yet applied.
    pub records: u64,
    /// Bytes of the segment files.
    pub bytes: u64,
    pub segments: usize,
    /// When the oldest waiting callback was received.
    pub oldest_received_at: Option<DateTime<Utc>>,
    pub oldest_age_secs: Option<u64>,
    /// Bytes after a torn or corrupt record (never acknowledged; skipped by the ingest).
    pub torn_bytes: u64,
    pub lock: LockState,
}

impl From<SpoolStatus> for Report {
    fn from(s: SpoolStatus) -> Self {
        let lock = match (s.lock.held, s.lock.pid) {
            (true, Some(pid)) => format!("held by pid {pid} (an ingest is running on it)"),
            (true, None) => "held (an ingest is running on it)".to_owned(),
            (false, _) => "not held (no ingest is running on it)".to_owned(),
        };
        let mut pairs = vec![
            ("directory", s.dir.clone()),
            ("records", s.records.to_string()),
            ("bytes", s.bytes.to_string()),
            ("segments", s.segments.to_string()),
            (
                "oldest",
                or_dash(s.oldest_received_at.map(|t| {
                    format!(
                        "{} ({} ago)",
                        t.to_rfc3339(),
                        crate::duration::human(Duration::from_secs(
                            s.oldest_age_secs.unwrap_or_default()
                        ))
                    )
                })),
            ),
            ("lock", lock),
        ];
        if s.torn_bytes > 0 {
            pairs.push(("torn bytes", s.torn_bytes.to_string()));
        }
        Report {
            ok: true,
            text: Table::key_values(pairs).to_string(),
            json: serde_json::to_value(&s).unwrap_or_default(),
        }
    }
}

fn io_err(dir: &Path, source: std::io::Error) -> AdminError {
    AdminError::Spool {
        path: dir.display().to_string(),
        source,
    }
}

/// Reads the spool directory `dir`.
pub fn status(dir: &Path) -> Result<SpoolStatus, AdminError> {
    let meta = std::fs::metadata(dir).map_err(|e| io_err(dir, e))?;
    if !meta.is_dir() {
        return Err(io_err(
            dir,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a directory"),
        ));
    }
    let mut segments: Vec<(u64, std::path::PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        if let Some(seq) = entry.file_name().to_str().and_then(segment_seq) {
            segments.push((seq, entry.path()));
        }
    }
    segments.sort();
    let cursor = read_cursor(&dir.join(CURSOR_FILE));
    let cursor = match (cursor, segments.first()) {
        (Some((seq, off)), Some((first, _))) if seq >= *first => (seq, off),
        (_, Some((first, _))) => (*first, 0),
        (c, None) => c.unwrap_or((0, 0)),
    };
    let mut st = SpoolStatus {
        dir: dir.display().to_string(),
        records: 0,
        bytes: 0,
        segments: 0,
        oldest_received_at: None,
        oldest_age_secs: None,
        torn_bytes: 0,
        lock: lock_state(&dir.join(LOCK_FILE)),
    };
    for (seq, path) in &segments {
        // The ingest deletes applied segments: one may vanish while we read.
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(dir, e)),
        };
        st.segments += 1;
        st.bytes += data.len() as u64;
        if *seq < cursor.0 {
            continue;
        }
        let from = if *seq == cursor.0 { cursor.1 } else { 0 };
        let scan = scan(&data, from);
        st.records += scan.count;
        st.torn_bytes += data.len() as u64 - scan.end;
        if st.oldest_received_at.is_none() {
            st.oldest_received_at = scan.first_received_at;
        }
    }
    st.oldest_age_secs = st
        .oldest_received_at
        .map(|t| (Utc::now() - t).to_std().unwrap_or_default().as_secs());
    Ok(st)
}

fn segment_seq(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("segment-")?.strip_suffix(".spool")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn checksum(bytes: &[u8]) -> [u8; 8] {
    let d = Sha256::digest(bytes);
    let mut out = [0u8; 8];
    out.copy_from_slice(&d[..8]);
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The cursor, if it is well formed and its checksum holds (else: replay everything).
fn read_cursor(path: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.strip_suffix('\n')?;
    let (body, sum) = line.rsplit_once(' ')?;
    let mut parts = body.split(' ');
    let (v, seq, off) = (parts.next()?, parts.next()?, parts.next()?);
    if v != "v1" || parts.next().is_some() || hex(&checksum(body.as_bytes())) != sum {
        return None;
    }
    Some((seq.parse().ok()?, off.parse().ok()?))
}

struct Scan {
    /// End of the last whole record.
    end: u64,
    /// Whole records starting at or after `from`.
    count: u64,
    first_received_at: Option<DateTime<Utc>>,
}

/// Walks the records of one segment.
fn scan(data: &[u8], from: u64) -> Scan {
    let mut at = 0usize;
    let mut out = Scan {
        end: 0,
        count: 0,
        first_received_at: None,
    };
    while let Some(header) = data.get(at..at + HEADER) {
        if &header[..4] != MAGIC {
            break;
        }
        let mut len = [0u8; 4];
        len.copy_from_slice(&header[4..8]);
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_PAYLOAD {
            break;
        }
        let Some(payload) = data.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        if checksum(payload) != header[8..16] || payload.len() < 12 {
            break;
        }
        if at as u64 >= from {
            out.count += 1;
            if out.first_received_at.is_none() {
                let mut ms = [0u8; 8];
                ms.copy_from_slice(&payload[..8]);
                out.first_received_at = DateTime::from_timestamp_millis(i64::from_le_bytes(ms));
            }
        }
        at += HEADER + len;
    }
    out.end = at as u64;
    out
}

fn lock_state(path: &Path) -> LockState {
    let not_held = LockState {
        held: false,
        pid: None,
    };
    let Ok(file) = File::open(path) else {
        // No lock file: no ingest has ever opened the directory.
        return not_held;
    };
    if let Some(pid) = proc_locks_holder(&file) {
        return LockState {
            held: true,
            pid: Some(pid),
        };
    }
    match file.try_lock_shared() {
        Ok(()) => {
            let _ = file.unlock();
            not_held
        }
        Err(std::fs::TryLockError::WouldBlock) => LockState {
            held: true,
            pid: None,
        },
        Err(std::fs::TryLockError::Error(_)) => not_held,
    }
}

/// The pid holding a `flock` on `file`'s inode, from `/proc/locks` (Linux).
#[cfg(target_os = "linux")]
fn proc_locks_holder(file: &File) -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = file.metadata().ok()?;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let dev = meta.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let want = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().filter(|f| *f != "->").collect();
        // `1: FLOCK ADVISORY WRITE <pid> <maj:min:inode> 0 EOF`
        (fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&want.as_str()))
            .then(|| fields.get(4)?.parse().ok())
            .flatten()
    })
}

#[cfg(not(target_os = "linux"))]
fn proc_locks_holder(_file: &File) -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(received_ms: i64, token: &str, body: &[u8]) -> Vec<u8> {
        let mut payload = Vec::new();
        payload.extend_from_slice(&received_ms.to_le_bytes());
        payload.extend_from_slice(&(token.len() as u32).to_le_bytes());
        payload.extend_from_slice(token.as_bytes());
        payload.extend_from_slice(body);
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&checksum(&payload));
        out.extend_from_slice(&payload);
        out
    }

    fn tmp(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "stk-admin-spool-{tag}-{}-{}",
            std::process::id(),
            Utc::now().timestamp_nanos_opt().unwrap_or_default()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn an_empty_directory_has_nothing_and_no_holder() {
        let d = tmp("empty");
        let s = status(&d).unwrap();
        assert_eq!((s.records, s.bytes, s.segments), (0, 0, 0));
        assert_eq!(s.oldest_received_at, None);
        assert!(!s.lock.held);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn records_after_the_cursor_are_counted_and_torn_tails_skipped() {
        let d = tmp("records");
        let a = record(1_700_000_000_000, "tok-a", b"{\"a\":1}");
        let b = record(1_700_000_001_000, "tok-b", b"{\"b\":2}");
        let c = record(1_700_000_002_000, "tok-c", b"{}");
        let seg1 = [a.clone(), b.clone()].concat();
        let mut seg2 = c.clone();
        seg2.extend_from_slice(&b"SPL1\x05\x00"[..]); // torn
        std::fs::write(d.join("segment-00000000000000000001.spool"), &seg1).unwrap();
        std::fs::write(d.join("segment-00000000000000000002.spool"), &seg2).unwrap();
        std::fs::write(d.join("not-a-segment.spool"), b"junk").unwrap();
        let s = status(&d).unwrap();
        assert_eq!(s.records, 3);
        assert_eq!(s.segments, 2);
        assert_eq!(s.bytes, (seg1.len() + seg2.len()) as u64);
        assert_eq!(s.torn_bytes, 6);
        assert_eq!(
            s.oldest_received_at.map(|t| t.timestamp_millis()),
            Some(1_700_000_000_000)
        );

        // The cursor past the first record: two wait, the oldest is b.
        let body = format!("v1 1 {}", a.len());
        let cursor = format!("{body} {}\n", hex(&checksum(body.as_bytes())));
        std::fs::write(d.join(CURSOR_FILE), &cursor).unwrap();
        let s = status(&d).unwrap();
        assert_eq!(s.records, 2);
        assert_eq!(
            s.oldest_received_at.map(|t| t.timestamp_millis()),
            Some(1_700_000_001_000)
        );
        // A cursor whose checksum fails means "everything".
        std::fs::write(d.join(CURSOR_FILE), cursor.replace("v1 1", "v1 2")).unwrap();
        assert_eq!(status(&d).unwrap().records, 3);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_held_lock_is_seen() {
        let d = tmp("lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(d.join(LOCK_FILE))
            .unwrap();
        assert!(!status(&d).unwrap().lock.held);
        f.try_lock().unwrap();
        let lock = status(&d).unwrap().lock;
        assert!(lock.held);
        #[cfg(target_os = "linux")]
        assert_eq!(lock.pid, Some(std::process::id()));
        drop(f);
        assert!(!status(&d).unwrap().lock.held);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_table_never_shows_tokens() {
        let d = tmp("render");
        std::fs::write(
            d.join("segment-00000000000000000001.spool"),
            record(
                Utc::now().timestamp_millis(),
                "secret-token-xyz",
                b"{\"body\":1}",
            ),
        )
        .unwrap();
        let r: Report = status(&d).unwrap().into();
        assert!(r.text.contains("records    1\n"), "{}", r.text);
        assert!(!r.text.contains("secret-token-xyz"));
        assert!(!r.json.to_string().contains("secret-token-xyz"));
        assert_eq!(r.json["records"], 1);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
