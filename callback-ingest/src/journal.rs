//! The last few seconds of applied callbacks, applied again after the Redis primary
//! moves (Sentinel mode), so that a write the old primary acknowledged and then lost is
//! repaired at once instead of waiting for reconciliation.
//!
//! Why writes can be lost although `redis.wait_replicas` is set: after a forced failover
//! (`SENTINEL FAILOVER`, or a partition) the old primary keeps accepting writes until
//! the nodes notice the switch (the topology's watcher asks every 250 ms), and a replica
//! still attached to it acknowledges them (`WAIT 1` is satisfied). When Sentinel then
//! repoints that replica and demotes the old primary, both resync from the new primary
//! and those writes are gone, although Daraja was told 200.
//!
//! So every callback that went through is kept here for [`KEEP`] (at most [`MAX`]),
//! and when the topology's epoch changes, the ingest waits for the writes still in
//! flight to finish (the command timeout plus [`SETTLE`]) and applies every callback
//! received since [`LOOKBACK`] before the change again, through the same path as a live
//! one ([`crate::callback::handle::process`]). The payment script makes that safe: a
//! state that survived is a duplicate (nothing is published); one that was lost is
//! written and published again with the same version, which browsers that already
//! have it ignore.
//!
//! Only kept where the primary can move (Sentinel mode); elsewhere there is no journal.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use actix_web::web;
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::time::Instant;

use stk_relay_shared::store::ApplyOutcome;

use crate::callback::handle::process;
use crate::error::IngestError;
use crate::startup::AppState;

/// How long an applied callback is kept.
pub const KEEP: Duration = Duration::from_secs(30);
/// The most callbacks kept (the oldest go first).
pub const MAX: usize = 20_000;
/// Callbacks received this long before the primary change are applied again.
pub const LOOKBACK: Duration = Duration::from_secs(5);
/// Extra wait, after the command timeout, before applying again.
pub const SETTLE: Duration = Duration::from_millis(500);
/// Rounds of applying again (each with the ingest's own retry budget), and the pause
/// between two.
pub const ROUNDS: u32 = 5;
pub const ROUND_PAUSE: Duration = Duration::from_secs(1);

struct Entry {
    at: Instant,
    token: String,
    body: web::Bytes,
    received_at: DateTime<Utc>,
}

/// Recently applied callbacks.
#[derive(Default)]
pub struct Journal {
    entries: Mutex<VecDeque<Entry>>,
}

impl Journal {
    /// Keeps a callback that went through.
    pub fn record(&self, token: &str, body: &[u8], received_at: DateTime<Utc>) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        while entries
            .front()
            .is_some_and(|e| now.duration_since(e.at) > KEEP || entries.len() >= MAX)
        {
            entries.pop_front();
        }
        entries.push_back(Entry {
            at: now,
            token: token.to_owned(),
            body: web::Bytes::copy_from_slice(body),
            received_at,
        });
    }

    /// The callbacks kept since `since`, oldest first.
    fn since(&self, since: Instant) -> Vec<(String, web::Bytes, DateTime<Utc>)> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .iter()
            .filter(|e| e.at >= since)
            .map(|e| (e.token.clone(), e.body.clone(), e.received_at))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Applies the recent callbacks again each time `epoch` changes, until shutdown.
pub async fn reapply_on_primary_change(
    state: web::Data<AppState>,
    journal: std::sync::Arc<Journal>,
    mut epoch: watch::Receiver<u64>,
    command_timeout: Duration,
) {
    let shutdown = state.shutdown.clone();
    loop {
        tokio::select! {
            r = epoch.changed() => if r.is_err() { return },
            () = shutdown.wait() => return,
        }
        let changed = Instant::now();
        tokio::select! {
            () = tokio::time::sleep(command_timeout + SETTLE) => {}
            () = shutdown.wait() => return,
        }
        let since = changed.checked_sub(LOOKBACK).unwrap_or(changed);
        let mut again = journal.since(since);
        let total = again.len();
        let (mut repaired, mut intact) = (0usize, 0usize);
        // Right after a failover the new primary may still lack its replicas (`WAIT`
        // fails): what could not be applied is tried again, a bounded number of times.
        for round in 1..=ROUNDS {
            let mut failed = Vec::new();
            for entry in again {
                let (token, body, received_at) = &entry;
                let span = tracing::info_span!(
                    "failover_reapply",
                    checkout_request_id = tracing::field::Empty,
                    result_code = tracing::field::Empty,
                );
                let r = tracing::Instrument::instrument(
                    process(&state, token, body, *received_at),
                    span.clone(),
                )
                .await;
                match r {
                    Ok(p) if matches!(p.outcome, ApplyOutcome::Duplicate) => intact += 1,
                    Ok(_) => {
                        tracing::warn!(parent: &span, "a callback the old primary had acknowledged was lost in the failover; applied again");
                        repaired += 1
                    }
                    Err(IngestError::Unavailable(e)) if round < ROUNDS => {
                        tracing::info!(parent: &span, error = %e, "applying a callback again after the failover: redis not ready; trying again");
                        failed.push(entry);
                    }
                    Err(e) => {
                        tracing::error!(parent: &span, error = %e, "applying a callback again after the failover failed; reconciliation will repair it");
                    }
                }
            }
            again = failed;
            if again.is_empty() {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(ROUND_PAUSE) => {}
                () = shutdown.wait() => return,
            }
        }
        let failed = total - repaired - intact;
        tracing::warn!(
            callbacks = total,
            repaired,
            intact,
            failed,
            "the redis primary moved: recent callbacks applied again"
        );
    }
}
