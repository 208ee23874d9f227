//! Shutdown plumbing: one [`Shutdown`] handle is created in `main` (or by a test) and
//! passed explicitly to everything that must stop. No global statics.
//!
//! Triggering it flips readiness to "draining", tells long-lived sessions to close with
//! a reconnect code, and lets `run_until_stopped` finish its bounded drain.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

/// A cloneable handle: trigger once, observe from anywhere.
#[derive(Clone)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

struct Inner {
    draining: AtomicBool,
    tx: watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        let (tx, _rx) = watch::channel(false);
        Self {
            inner: Arc::new(Inner {
                draining: AtomicBool::new(false),
                tx,
            }),
        }
    }

    /// Starts the shutdown. Idempotent.
    pub fn trigger(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
        self.inner.tx.send_replace(true);
    }

    /// Whether shutdown has started.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Resolves once shutdown has started (at once if it already has).
    pub async fn wait(&self) {
        let mut rx = self.inner.tx.subscribe();
        // An error means the sender is gone, which cannot happen while `self` lives.
        let _ = rx.wait_for(|v| *v).await;
    }

    /// Triggers shutdown on SIGTERM or Ctrl-C. Spawn this from `main`.
    pub async fn trigger_on_signals(self) {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let term = signal(SignalKind::terminate());
            match term {
                Ok(mut term) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutdown signal received");
        self.trigger();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_resolves_after_trigger() {
        let s = Shutdown::new();
        assert!(!s.is_draining());
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { s.wait().await })
        };
        s.trigger();
        waiter.await.unwrap();
        assert!(s.is_draining());
        s.wait().await; // already triggered: returns at once
    }
}
