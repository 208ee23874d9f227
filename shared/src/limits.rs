//! The process's open-file limit (`RLIMIT_NOFILE`), raised at start by every service.
//!
//! Every socket is a file descriptor: when a node reaches its soft limit, `accept` fails
//! and new connections wait in the listen queue until they time out. Container runtimes
//! and distributions often start processes with a soft limit of 1024 under a hard limit
//! of 1048576 or more, so each binary calls [`raise_open_files`] once, after telemetry
//! is up: the soft limit goes up to the hard limit (an unprivileged process may do that;
//! the hard limit itself is the operator's, see `docs/deploy.md`), and the result is
//! logged once, as a warning when it stays below what the node's connection caps need.
//!
//! [`rlimit`] makes the `getrlimit`/`setrlimit` calls: the workspace forbids `unsafe`
//! code of its own, which calling `libc` directly would need.

use std::io;

use rlimit::Resource;

/// Below this many descriptors a node is warned about whatever its caps: room for a
/// reconnect burst, the Redis pool, Daraja and in-flight requests.
pub const MIN_OPEN_FILES: u64 = 4096;

/// Descriptors a node needs beside its capped client connections: the listener, the
/// Redis pool and subscriber, Daraja, the metrics listener, ordinary HTTP requests.
pub const RESERVED_OPEN_FILES: u64 = 1024;

/// The open-file limit before and after [`raise_nofile_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// The soft limit the process started with.
    pub before: u64,
    /// The soft limit now in force.
    pub soft: u64,
    /// The hard limit (unchanged).
    pub hard: u64,
}

/// Descriptors a node needs for `connections` capped client connections that each hold
/// `per_connection` descriptors (the gateway keeps 2: the socket and a duplicate used to
/// cut a client that stops reading), plus [`RESERVED_OPEN_FILES`], and at least
/// [`MIN_OPEN_FILES`].
pub fn open_files_needed(connections: usize, per_connection: u64) -> u64 {
    let capped = u64::try_from(connections)
        .unwrap_or(u64::MAX)
        .saturating_mul(per_connection);
    capped
        .saturating_add(RESERVED_OPEN_FILES)
        .max(MIN_OPEN_FILES)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (on macOS and the BSDs also bounded
/// by `kern.maxfilesperproc`). A soft limit already at the hard limit is left alone.
pub fn raise_nofile_limit() -> io::Result<NofileLimit> {
    let (before, hard) = Resource::NOFILE.get()?;
    let soft = rlimit::increase_nofile_limit(u64::MAX)?;
    Ok(NofileLimit { before, soft, hard })
}

/// [`raise_nofile_limit`], logged once: at info, or as a warning when the soft limit
/// stays below `needed` (see [`open_files_needed`]) or fails to be read or raised.
/// Returns the limit in force, if it could be read.
pub fn raise_open_files(needed: u64) -> Option<NofileLimit> {
    match raise_nofile_limit() {
        Ok(l) if l.soft < needed => {
            tracing::warn!(
                soft = l.soft,
                hard = l.hard,
                before = l.before,
                needed,
                "open-file limit (RLIMIT_NOFILE) is below what the connection caps need: \
                 connections past it fail to be accepted; raise the hard limit (ulimit -Hn, \
                 the container runtime's LimitNOFILE, fs.nr_open)"
            );
            Some(l)
        }
        Ok(l) => {
            tracing::info!(
                soft = l.soft,
                hard = l.hard,
                before = l.before,
                needed,
                "open-file limit (RLIMIT_NOFILE)"
            );
            Some(l)
        }
        Err(e) => {
            tracing::warn!(error = %e, needed, "could not raise the open-file limit (RLIMIT_NOFILE)");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_limit() {
        let (_, hard) = Resource::NOFILE.get().expect("getrlimit");
        let l = raise_nofile_limit().expect("raise");
        assert_eq!(l.hard, hard, "the hard limit is never changed");
        assert_eq!(Resource::NOFILE.get().expect("getrlimit"), (l.soft, l.hard));
        assert!(l.soft >= l.before);
        #[cfg(target_os = "linux")]
        assert_eq!(l.soft, l.hard, "Linux: soft == hard afterwards");
        // Already raised: a second call changes nothing.
        let again = raise_nofile_limit().expect("raise again");
        assert_eq!(again.before, l.soft);
        assert_eq!(again.soft, l.soft);
        assert_eq!(again.hard, l.hard);
        assert_eq!(raise_open_files(0), Some(again));
    }

    #[test]
    fn needed_counts_descriptors_per_connection_and_a_floor() {
        assert_eq!(open_files_needed(0, 2), MIN_OPEN_FILES);
        assert_eq!(open_files_needed(10_000, 2), 20_000 + RESERVED_OPEN_FILES);
        assert_eq!(open_files_needed(100_000, 1), 100_000 + RESERVED_OPEN_FILES);
        assert_eq!(open_files_needed(usize::MAX, 2), u64::MAX);
    }
}
