//! Bounded waiting on a condition that has no push notification (an HTTP readiness
//! endpoint, a Redis PING). The condition is re-checked every few milliseconds until it
//! holds or the bound passes; the caller never guesses a sleep.

use std::future::Future;
use std::time::Duration;

use anyhow::{bail, Result};
use tokio::time::Instant;

/// How often a condition is re-checked.
pub const POLL: Duration = Duration::from_millis(25);

/// Calls `check` until it yields `Some`, for at most `within`. The last error (if any)
/// is part of the failure message.
pub async fn until<T, F, Fut>(what: &str, within: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + within;
    let mut last_err = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left.max(POLL), check()).await {
            Ok(Ok(Some(v))) => return Ok(v),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => last_err = Some(e),
            Err(_) => {}
        }
        if Instant::now() >= deadline {
            match last_err {
                Some(e) => {
                    bail!("timed out after {within:?} waiting for {what}; last error: {e:#}")
                }
                None => bail!("timed out after {within:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(POLL).await;
    }
}
