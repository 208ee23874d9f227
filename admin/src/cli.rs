//! The command tree. Each group is a subcommand with its own enum, so a new group is
//! one more [`Command`] variant.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Inspect an stk-relay cluster: payments in Redis, an ingest's spool, a node's settings.
///
/// Configuration is the gateway's: built-in defaults, then `--config FILE` (or
/// `GATEWAY_CONFIG`), then `GATEWAY__SECTION__KEY` environment variables, exactly as
/// `stk-relay-gateway` loads it. Secrets are never printed; phone numbers are masked.
#[derive(Debug, Parser)]
#[command(name = "stk-relay-admin", version, about)]
pub struct Cli {
    /// A gateway configuration file (TOML), as given to `stk-relay-gateway --config`.
    #[arg(long, global = true, env = "GATEWAY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print one JSON document instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// One payment.
    Payment {
        #[command(subcommand)]
        command: PaymentCommand,
    },
    /// Lists of payments.
    Payments {
        #[command(subcommand)]
        command: PaymentsCommand,
    },
    /// An ingest node's local spool.
    Spool {
        #[command(subcommand)]
        command: SpoolCommand,
    },
    /// Check the callback URL, Daraja OAuth and Redis as a gateway would use them.
    Doctor,
    /// Webhooks to the merchant's backend: dead letters, and replaying one.
    Webhooks {
        #[command(subcommand)]
        command: WebhooksCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Events given up after `merchant.webhook_max_age_secs`, oldest first.
    Dead {
        /// Most dead letters to list.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Queue a dead letter again, due now (its attempts and age count afresh).
    Replay {
        /// The event id (`evt_<CheckoutRequestID>_v<version>`).
        event_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PaymentCommand {
    /// A payment's stored state.
    Show {
        /// The CheckoutRequestID.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PaymentsCommand {
    /// Payments still PENDING, from the reconciliation due set.
    Pending {
        /// Only payments pending at least this long: `30s`, `5m`, `2h`, `1d`.
        #[arg(long, value_name = "AGE", default_value = "0s", value_parser = crate::duration::parse)]
        older_than: Duration,
        /// Most members of the due set to look at, earliest due first.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
pub enum SpoolCommand {
    /// Callbacks waiting in a spool directory, and whether an ingest holds it.
    Status {
        /// The ingest's `callbacks.spool_dir`.
        #[arg(long, value_name = "PATH")]
        dir: PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = Cli::try_parse_from([
            "stk-relay-admin",
            "payments",
            "pending",
            "--older-than",
            "5m",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        match cli.command {
            Command::Payments {
                command: PaymentsCommand::Pending { older_than, limit },
            } => {
                assert_eq!(older_than, Duration::from_secs(300));
                assert_eq!(limit, 1000);
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["x", "payments", "pending", "--older-than", "5"]).is_err());
    }
}
