//! The local spool: callbacks acknowledged while Redis was unreachable, kept on disk until
//! they are applied.
//!
//! A callback whose token verifies and whose body parses, but that could not reach Redis
//! within `callbacks.redis_retry_budget_ms`, is appended to the spool and fsynced; only
//! then does the route answer Daraja 200. [`replay`] runs beside the server and applies
//! the spooled callbacks in order through [`crate::callback::handle::process`], the same
//! path as a live callback, judged as of the time each was received. A node restarted on
//! the same directory replays what is left.
//!
//! # Guarantees
//! - Nothing acknowledged is lost by a crash: a record is fsynced (and the directory
//!   entry of a new segment too) before the 200 is sent, and the replay position only
//!   moves past a record after the store answered for it.
//! - A record may be applied twice (a crash between the store's answer and the saved
//!   replay position, or a lost position file). That is harmless: the store's script
//!   keeps the first final state and answers `Duplicate` to a repeat, publishing nothing.
//! - Order: records are replayed one at a time in the order they were acknowledged. A
//!   live callback is not held back while older records wait: it may overtake them. That
//!   is harmless for the same reason: Daraja's callbacks concern distinct payments, and a
//!   repeat of a spooled callback that arrives live is deduplicated by the store.
//! - Bounded: the files of the spool never hold more than `callbacks.spool_max_bytes`.
//!   When a record does not fit, the route answers 503 and `/readyz` says "spool full"
//!   until space has been freed.
//! - One process per directory: `spool.lock` is held with an exclusive `flock` for the
//!   life of the process (released by the kernel even on SIGKILL).
//!
//! # On-disk format (version 1)
//! The directory holds `spool.lock`, a position file `cursor`, and segment files
//! `segment-<20-digit sequence>.spool`, appended to in increasing sequence. A segment is
//! a run of records, each:
//!
//! ```text
//! offset size  field
//! 0      4     magic "SPL1"
//! 4      4     payload length N, u32 little-endian (at most 1 MiB)
//! 8      8     the first 8 bytes of SHA-256(payload)
//! 16     N     payload:
//!                0  8  received-at, milliseconds since the Unix epoch, i64 LE
//!                8  4  token length T, u32 LE
//!               12  T  the raw callback token (from the CallBackURL path), UTF-8
//!             12+T  …  the raw callback body, as received
//! ```
//!
//! A record that is cut short or fails its checksum (a crash in the middle of an append)
//! ends its segment: it and anything after it in that segment are skipped with a warning.
//! Appends never continue a segment after a restart or a failed write, so only a record
//! that was never acknowledged can be torn. `cursor` is one line,
//! `v1 <segment sequence> <byte offset> <16 hex digits of SHA-256 of the text before>`,
//! replaced by rename: the next record to replay. An unreadable `cursor` means "replay
//! everything still on disk". A segment is deleted once all of it has been applied; the
//! segment being appended to is closed once replay has caught up with it (or it reached
//! an eighth of `spool_max_bytes`), so applied records do not linger.
//!
//! The files hold callback tokens and payment data: the directory and files are created
//! readable by the owner only.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::web;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::callback::handle::process;
use crate::error::IngestError;
use crate::startup::AppState;

const MAGIC: &[u8; 4] = b"SPL1";
const HEADER: usize = 16;
/// Larger than any record the route can write (a 64 KiB body and a short token).
const MAX_PAYLOAD: usize = 1 << 20;
const LOCK_FILE: &str = "spool.lock";
const CURSOR_FILE: &str = "cursor";
const SEGMENT_PREFIX: &str = "segment-";
const SEGMENT_SUFFIX: &str = ".spool";

/// One spooled callback: what the replay needs to process it as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub received_at: DateTime<Utc>,
    pub token: String,
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool full: {used} of {max} bytes in use, {needed} more needed")]
    Full { used: u64, max: u64, needed: u64 },
    #[error("spool directory {0} is in use by another process")]
    Locked(String),
    #[error("record of {0} bytes is larger than a spool record may be")]
    TooLarge(usize),
    #[error("spool i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Where a record sits: its segment, its offset, and where the next one starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    seq: u64,
    offset: u64,
    next: u64,
}

/// What `/readyz` and the logs show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolStatus {
    /// Records acknowledged and not yet applied.
    pub pending: u64,
    /// Bytes of the segment files.
    pub bytes: u64,
    /// A record was refused for lack of room, and no room has been freed since.
    pub full: bool,
}

struct Segment {
    /// Bytes of whole, valid records (the end of what may be read).
    len: u64,
    /// Bytes of the file (counted against the bound; more than `len` after a torn write).
    disk: u64,
}

struct Inner {
    segments: BTreeMap<u64, Segment>,
    /// The segment appended to, and its open file. `None`: the next append opens a new one.
    active: Option<(u64, File)>,
    /// The next record to replay.
    cursor: (u64, u64),
    pending: u64,
    full: bool,
    next_seq: u64,
}

/// A spool directory, opened and locked by this process.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    inner: Mutex<Inner>,
    appended: tokio::sync::Notify,
    /// Held for the life of the spool; the kernel drops the lock with the descriptor.
    _lock: File,
}

impl Spool {
    /// Opens (creating if needed) and locks `dir`, and finds the records still to replay.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        std::fs::create_dir_all(dir)?;
        restrict(dir, 0o700);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(SpoolError::Locked(dir.display().to_string()))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(SpoolError::Io(e)),
        }

        let mut segments = BTreeMap::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(seq) = name.to_str().and_then(segment_seq) else {
                continue;
            };
            let path = entry.path();
            let data = std::fs::read(&path)?;
            let (len, _) = scan(&data, 0);
            if len < data.len() as u64 {
                tracing::warn!(
                    segment = %path.display(),
                    skipped_bytes = data.len() as u64 - len,
                    "spool segment ends in a torn or corrupt record; skipped (it was never acknowledged)"
                );
            }
            segments.insert(
                seq,
                Segment {
                    len,
                    disk: data.len() as u64,
                },
            );
        }
        let saved = read_cursor(&dir.join(CURSOR_FILE));
        let first = segments.keys().next().copied();
        let cursor = match (saved, first) {
            (Some((seq, off)), Some(first)) if seq >= first => (seq, off),
            (_, Some(first)) => (first, 0),
            (Some(c), None) => c,
            (None, None) => (0, 0),
        };
        // Segments wholly before the cursor were applied: delete them now.
        let done: Vec<u64> = segments.range(..cursor.0).map(|(k, _)| *k).collect();
        for seq in done {
            segments.remove(&seq);
            remove_segment(dir, seq);
        }
        let mut pending = 0;
        for (seq, seg) in &segments {
            let data = std::fs::read(dir.join(segment_name(*seq)))?;
            let from = if *seq == cursor.0 { cursor.1 } else { 0 };
            let (_, count) = scan(&data[..(seg.len as usize).min(data.len())], from);
            pending += count;
        }
        let next_seq = segments
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .max(cursor.0)
            + 1;
        if pending > 0 {
            tracing::warn!(
                dir = %dir.display(),
                pending,
                "spool holds acknowledged callbacks not yet applied; replaying them"
            );
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes: (max_bytes / 8).clamp(64 * 1024, 8 * 1024 * 1024),
            inner: Mutex::new(Inner {
                segments,
                active: None,
                cursor,
                pending,
                full: false,
                next_seq,
            }),
            appended: tokio::sync::Notify::new(),
            _lock: lock,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn status(&self) -> SpoolStatus {
        let inner = self.lock();
        SpoolStatus {
            pending: inner.pending,
            bytes: inner.segments.values().map(|s| s.disk).sum(),
            full: inner.full,
        }
    }

    /// Appends `record` and fsyncs it. Once this returns `Ok`, the record survives a
    /// crash of the process or of the machine. Blocking: call it off the async threads.
    pub fn append(&self, record: &Record) -> Result<(), SpoolError> {
        let bytes = encode(record)?;
        let mut inner = self.lock();
        let used: u64 = inner.segments.values().map(|s| s.disk).sum();
        if used + bytes.len() as u64 > self.max_bytes {
            inner.full = true;
            return Err(SpoolError::Full {
                used,
                max: self.max_bytes,
                needed: bytes.len() as u64,
            });
        }
        let roll = match &inner.active {
            Some((seq, _)) => inner
                .segments
                .get(seq)
                .is_none_or(|s| s.disk >= self.segment_bytes),
            None => true,
        };
        if roll {
            let seq = inner.next_seq;
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(self.dir.join(segment_name(seq)))?;
            restrict(&self.dir.join(segment_name(seq)), 0o600);
            sync_dir(&self.dir)?;
            inner.next_seq += 1;
            inner.segments.insert(seq, Segment { len: 0, disk: 0 });
            inner.active = Some((seq, file));
        }
        let Some((seq, file)) = inner.active.as_mut() else {
            return Err(SpoolError::Io(std::io::Error::other("no active segment")));
        };
        let seq = *seq;
        let written = file.write_all(&bytes).and_then(|()| file.sync_data());
        if let Err(e) = written {
            // Never append after a possibly torn record: undo, and start a new segment.
            let len = inner.segments.get(&seq).map_or(0, |s| s.len);
            if let Some((_, f)) = inner.active.as_ref() {
                if f.set_len(len).is_err() {
                    if let Some(s) = inner.segments.get_mut(&seq) {
                        s.disk += bytes.len() as u64;
                    }
                }
            }
            inner.active = None;
            return Err(SpoolError::Io(e));
        }
        if let Some(s) = inner.segments.get_mut(&seq) {
            s.len += bytes.len() as u64;
            s.disk += bytes.len() as u64;
        }
        inner.pending += 1;
        drop(inner);
        self.appended.notify_one();
        Ok(())
    }

    /// The oldest record not yet applied, or `None` when replay has caught up.
    pub fn next(&self) -> Result<Option<(Position, Record)>, SpoolError> {
        let mut inner = self.lock();
        loop {
            let (seq, offset) = inner.cursor;
            let Some(seg) = inner.segments.get(&seq) else {
                match inner.segments.range(seq..).next() {
                    Some((next, _)) => {
                        inner.cursor = (*next, 0);
                        continue;
                    }
                    None => return Ok(None),
                }
            };
            let active = inner.active.as_ref().is_some_and(|(a, _)| *a == seq);
            if offset >= seg.len {
                if active {
                    return Ok(None);
                }
                // Wholly applied (or ends in a torn record): move on.
                let rest = inner.segments.range(seq + 1..).next().map(|(k, _)| *k);
                self.retire(&mut inner, seq);
                match rest {
                    Some(next) => {
                        inner.cursor = (next, 0);
                        continue;
                    }
                    None => return Ok(None),
                }
            }
            let limit = seg.len;
            match read_record(&self.dir.join(segment_name(seq)), offset, limit)? {
                Some((record, next)) => return Ok(Some((Position { seq, offset, next }, record))),
                None => {
                    tracing::warn!(
                        segment = seq,
                        offset,
                        "spool record unreadable; skipping the rest of its segment"
                    );
                    if let Some(s) = inner.segments.get_mut(&seq) {
                        s.len = offset;
                    }
                }
            }
        }
    }

    /// Marks the record at `pos` as applied: the replay position moves past it, and a
    /// segment wholly applied is deleted.
    pub fn applied(&self, pos: Position) -> Result<(), SpoolError> {
        let mut inner = self.lock();
        if inner.cursor != (pos.seq, pos.offset) {
            return Ok(());
        }
        inner.cursor = (pos.seq, pos.next);
        inner.pending = inner.pending.saturating_sub(1);
        let finished = inner
            .segments
            .get(&pos.seq)
            .is_some_and(|s| pos.next >= s.len);
        if finished {
            self.retire(&mut inner, pos.seq);
        }
        write_cursor(&self.dir, inner.cursor)?;
        Ok(())
    }

    /// Deletes a wholly applied segment (closing it first if it is being appended to).
    fn retire(&self, inner: &mut Inner, seq: u64) {
        if inner.active.as_ref().is_some_and(|(a, _)| *a == seq) {
            inner.active = None;
        }
        if inner.segments.remove(&seq).is_some() {
            remove_segment(&self.dir, seq);
            inner.full = false;
        }
    }

    /// Resolves when a record is appended (or at once if one was since the last wait).
    pub async fn wait_appended(&self) {
        self.appended.notified().await;
    }
}

/// Applies spooled records in order until shutdown. A record that meets an unreachable
/// Redis is retried (it is never skipped); one that the normal path refuses (its token,
/// its body, a token of another payment) is logged and dropped, as it would have been
/// refused live.
pub async fn replay(state: web::Data<AppState>, spool: Arc<Spool>) {
    let shutdown = state.shutdown.clone();
    let mut backoff = Duration::from_millis(100);
    loop {
        if shutdown.is_draining() {
            return;
        }
        let s = spool.clone();
        let next = tokio::task::spawn_blocking(move || s.next())
            .await
            .unwrap_or_else(|e| Err(SpoolError::Io(std::io::Error::other(e.to_string()))));
        let (pos, record) = match next {
            Ok(Some(found)) => found,
            Ok(None) => {
                tokio::select! {
                    () = spool.wait_appended() => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = shutdown.wait() => return,
                }
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "spool unreadable; retrying");
                pause(&shutdown, Duration::from_secs(1)).await;
                continue;
            }
        };
        let span = tracing::info_span!(
            "spool_replay",
            checkout_request_id = tracing::field::Empty,
            result_code = tracing::field::Empty,
            received_at = %record.received_at,
        );
        let result = tracing::Instrument::instrument(
            process(&state, &record.token, &record.body, record.received_at),
            span.clone(),
        )
        .await;
        match result {
            Ok(_) => {
                tracing::info!(parent: &span, "spooled callback applied");
                stk_relay_shared::metrics::spool_replayed(true);
                backoff = Duration::from_millis(100);
            }
            Err(
                e @ (IngestError::Unavailable(_)
                | IngestError::RedisRefused(_)
                | IngestError::Internal(_)),
            ) => {
                tracing::warn!(parent: &span, error = %e, pending = spool.status().pending, "spool replay waits for redis");
                pause(&shutdown, backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
            Err(e) => {
                tracing::error!(parent: &span, reason = %e, "spooled callback refused by the normal path; dropped");
                stk_relay_shared::metrics::spool_replayed(false);
            }
        }
        let s = spool.clone();
        let done = tokio::task::spawn_blocking(move || s.applied(pos))
            .await
            .unwrap_or_else(|e| Err(SpoolError::Io(std::io::Error::other(e.to_string()))));
        if let Err(e) = done {
            // The record is applied; at worst it is applied again after a restart.
            tracing::warn!(error = %e, "could not save the spool position");
        }
    }
}

async fn pause(shutdown: &stk_relay_shared::shutdown::Shutdown, d: Duration) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        () = shutdown.wait() => {}
    }
}

fn segment_name(seq: u64) -> String {
    format!("{SEGMENT_PREFIX}{seq:020}{SEGMENT_SUFFIX}")
}

fn segment_seq(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn remove_segment(dir: &Path, seq: u64) {
    let path = dir.join(segment_name(seq));
    if let Err(e) = std::fs::remove_file(&path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(segment = %path.display(), error = %e, "could not delete an applied spool segment");
        }
    }
}

fn checksum(payload: &[u8]) -> [u8; 8] {
    let digest = Sha256::digest(payload);
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

fn encode(record: &Record) -> Result<Vec<u8>, SpoolError> {
    let token = record.token.as_bytes();
    let payload_len = 12 + token.len() + record.body.len();
    if payload_len > MAX_PAYLOAD {
        return Err(SpoolError::TooLarge(payload_len));
    }
    let mut payload = Vec::with_capacity(payload_len);
    payload.extend_from_slice(&record.received_at.timestamp_millis().to_le_bytes());
    payload.extend_from_slice(&(token.len() as u32).to_le_bytes());
    payload.extend_from_slice(token);
    payload.extend_from_slice(&record.body);
    let mut out = Vec::with_capacity(HEADER + payload_len);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(payload_len as u32).to_le_bytes());
    out.extend_from_slice(&checksum(&payload));
    out.extend_from_slice(&payload);
    Ok(out)
}

/// The header at the start of `header`: the payload length, if the magic matches.
fn header_len(header: &[u8]) -> Option<(usize, [u8; 8])> {
    if header.len() < HEADER || &header[..4] != MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(header[4..8].try_into().ok()?) as usize;
    if !(12..=MAX_PAYLOAD).contains(&len) {
        return None;
    }
    let sum: [u8; 8] = header[8..16].try_into().ok()?;
    Some((len, sum))
}

fn decode_payload(payload: &[u8], sum: [u8; 8]) -> Option<Record> {
    if checksum(payload) != sum {
        return None;
    }
    let millis = i64::from_le_bytes(payload[..8].try_into().ok()?);
    let token_len = u32::from_le_bytes(payload[8..12].try_into().ok()?) as usize;
    let token = payload.get(12..12 + token_len)?;
    let body = payload.get(12 + token_len..)?;
    Some(Record {
        received_at: DateTime::<Utc>::from_timestamp_millis(millis)?,
        token: String::from_utf8(token.to_vec()).ok()?,
        body: body.to_vec(),
    })
}

/// Walks whole, valid records of `data`: returns where the valid run ends, and how many
/// records start at or after `from`.
fn scan(data: &[u8], from: u64) -> (u64, u64) {
    let mut at = 0usize;
    let mut count = 0;
    while let Some((len, sum)) = data.get(at..).and_then(header_len) {
        let Some(payload) = data.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        if decode_payload(payload, sum).is_none() {
            break;
        }
        if at as u64 >= from {
            count += 1;
        }
        at += HEADER + len;
    }
    (at as u64, count)
}

/// Reads the record at `offset` of a segment whose valid bytes end at `limit`.
fn read_record(path: &Path, offset: u64, limit: u64) -> Result<Option<(Record, u64)>, SpoolError> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut header = [0u8; HEADER];
    if offset + HEADER as u64 > limit || file.read_exact(&mut header).is_err() {
        return Ok(None);
    }
    let Some((len, sum)) = header_len(&header) else {
        return Ok(None);
    };
    let next = offset + (HEADER + len) as u64;
    if next > limit {
        return Ok(None);
    }
    let mut payload = vec![0u8; len];
    if file.read_exact(&mut payload).is_err() {
        return Ok(None);
    }
    Ok(decode_payload(&payload, sum).map(|r| (r, next)))
}

fn cursor_text(pos: (u64, u64)) -> String {
    let body = format!("v1 {} {}", pos.0, pos.1);
    let sum: String = checksum(body.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{body} {sum}\n")
}

fn read_cursor(path: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut parts = text.split_whitespace();
    let (v, seq, off, _) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if v != "v1" || parts.next().is_some() {
        return None;
    }
    let pos = (seq.parse().ok()?, off.parse().ok()?);
    (cursor_text(pos) == text).then_some(pos)
}

/// Replaces `cursor` by rename. Not fsynced: a lost update only means replaying records
/// again, which the store deduplicates.
fn write_cursor(dir: &Path, pos: (u64, u64)) -> Result<(), SpoolError> {
    let tmp = dir.join("cursor.tmp");
    std::fs::write(&tmp, cursor_text(pos))?;
    std::fs::rename(&tmp, dir.join(CURSOR_FILE))?;
    Ok(())
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(unix)]
fn restrict(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
        tracing::warn!(path = %path.display(), error = %e, "could not restrict spool permissions");
    }
}

#[cfg(not(unix))]
fn restrict(_path: &Path, _mode: u32) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "stk-spool-{name}-{}-{}",
            std::process::id(),
            Utc::now().timestamp_nanos_opt().unwrap_or(0)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn rec(i: u32) -> Record {
        Record {
            received_at: DateTime::<Utc>::from_timestamp_millis(1_700_000_000_000 + i64::from(i))
                .unwrap(),
            token: format!("token-{i}"),
            body: format!("{{\"n\":{i}}}").into_bytes(),
        }
    }

    /// Replays everything: (records in order).
    fn drain(spool: &Spool) -> Vec<Record> {
        let mut out = Vec::new();
        while let Some((pos, r)) = spool.next().unwrap() {
            spool.applied(pos).unwrap();
            out.push(r);
        }
        out
    }

    #[test]
    fn records_round_trip_in_order() {
        let dir = temp_dir("order");
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        for i in 0..50 {
            spool.append(&rec(i)).unwrap();
        }
        assert_eq!(spool.status().pending, 50);
        let got = drain(&spool);
        assert_eq!(got, (0..50).map(rec).collect::<Vec<_>>());
        let st = spool.status();
        assert_eq!(
            (st.pending, st.bytes),
            (0, 0),
            "applied segments are deleted"
        );
        // Appending after catching up works, into a new segment.
        spool.append(&rec(99)).unwrap();
        assert_eq!(drain(&spool), vec![rec(99)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reopen_replays_what_was_not_applied() {
        let dir = temp_dir("reopen");
        {
            let spool = Spool::open(&dir, 1 << 20).unwrap();
            for i in 0..10 {
                spool.append(&rec(i)).unwrap();
            }
            for _ in 0..4 {
                let (pos, _) = spool.next().unwrap().unwrap();
                spool.applied(pos).unwrap();
            }
            // Read but not marked applied: must come back.
            let _ = spool.next().unwrap().unwrap();
        }
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(spool.status().pending, 6);
        spool.append(&rec(10)).unwrap();
        assert_eq!(drain(&spool), (4..11).map(rec).collect::<Vec<_>>());
        drop(spool);
        // Everything was applied: nothing comes back.
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(spool.status().pending, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lost_cursor_replays_from_the_start_of_the_oldest_segment() {
        let dir = temp_dir("cursor");
        {
            let spool = Spool::open(&dir, 1 << 20).unwrap();
            for i in 0..3 {
                spool.append(&rec(i)).unwrap();
            }
            let (pos, _) = spool.next().unwrap().unwrap();
            spool.applied(pos).unwrap();
        }
        std::fs::write(dir.join(CURSOR_FILE), "v1 1 999 0000000000000000\n").unwrap();
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(drain(&spool), (0..3).map(rec).collect::<Vec<_>>());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn torn_last_record_is_skipped() {
        let dir = temp_dir("torn");
        {
            let spool = Spool::open(&dir, 1 << 20).unwrap();
            for i in 0..3 {
                spool.append(&rec(i)).unwrap();
            }
        }
        let seg = dir.join(segment_name(1));
        // A crash in the middle of a fourth append: half its bytes reached the disk.
        let torn = encode(&rec(3)).unwrap();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&torn[..torn.len() / 2]).unwrap();
        drop(f);
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(spool.status().pending, 3);
        spool.append(&rec(4)).unwrap();
        assert_eq!(
            drain(&spool),
            vec![rec(0), rec(1), rec(2), rec(4)],
            "the torn record is skipped, the later append (a new segment) is kept"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_record_ends_its_segment() {
        let dir = temp_dir("corrupt");
        {
            let spool = Spool::open(&dir, 1 << 20).unwrap();
            for i in 0..3 {
                spool.append(&rec(i)).unwrap();
            }
        }
        let seg = dir.join(segment_name(1));
        let mut data = std::fs::read(&seg).unwrap();
        let second = encode(&rec(0)).unwrap().len();
        data[second + HEADER + 2] ^= 0xff; // a flipped bit in the second record's payload
        std::fs::write(&seg, data).unwrap();
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(drain(&spool), vec![rec(0)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bounded_size_refuses_then_frees() {
        let dir = temp_dir("bounded");
        let one = encode(&rec(0)).unwrap().len() as u64;
        let spool = Spool::open(&dir, one * 3 + one / 2).unwrap();
        for i in 0..3 {
            spool.append(&rec(i)).unwrap();
        }
        assert!(matches!(
            spool.append(&rec(3)),
            Err(SpoolError::Full { .. })
        ));
        assert!(spool.status().full);
        assert_eq!(spool.status().pending, 3);
        assert_eq!(drain(&spool).len(), 3);
        assert!(!spool.status().full, "room was freed");
        spool.append(&rec(4)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn second_process_is_locked_out() {
        let dir = temp_dir("lock");
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        assert!(matches!(
            Spool::open(&dir, 1 << 20),
            Err(SpoolError::Locked(_))
        ));
        drop(spool);
        assert!(Spool::open(&dir, 1 << 20).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn segments_roll_and_applied_ones_are_deleted() {
        let dir = temp_dir("roll");
        // Segments are an eighth of the bound, at least 64 KiB: here 64 KiB.
        let spool = Spool::open(&dir, 1 << 19).unwrap();
        let big = |i: u32| Record {
            body: vec![b'x'; 20_000],
            ..rec(i)
        };
        for i in 0..10 {
            spool.append(&big(i)).unwrap();
        }
        let segments = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .ok()
                    .and_then(|e| e.file_name().to_str().and_then(segment_seq))
                    .is_some()
            })
            .count();
        assert!(segments >= 3, "{segments} segments");
        assert_eq!(drain(&spool), (0..10).map(big).collect::<Vec<_>>());
        assert_eq!(spool.status().bytes, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
