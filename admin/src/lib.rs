//! `stk-relay-admin`: an operator's view of a running stk-relay cluster, over the same
//! `shared` store, keyspace and configuration as the services. Read-only, but for
//! `webhooks replay`, which queues a dead letter again; nothing writes to a spool.
//!
//! - [`cli`]: the command tree (clap derive); a `webhooks` group slots in beside the others.
//! - [`settings`]: the gateway's configuration, loaded as the gateway loads it (`GATEWAY__…`).
//! - [`duration`]: `30s`, `5m`, `2h` → `Duration`.
//! - [`payments`]: `payment show` and `payments pending`, read through the shared store.
//! - [`spool`]: `spool status`: an ingest's spool directory, read without taking it over.
//! - [`doctor`]: `doctor`: the node's settings as Daraja will see them, PASS/FAIL each.
//! - [`webhooks`]: `webhooks dead` and `webhooks replay`, over the gateway's webhook queue.
//! - [`output`]: the human tables and the [`output::Report`] every command returns.
//! - [`error`]: [`error::AdminError`], the crate's one error type.

pub mod cli;
pub mod doctor;
pub mod duration;
pub mod error;
pub mod output;
pub mod payments;
pub mod settings;
pub mod spool;
pub mod webhooks;

use cli::{Cli, Command, PaymentCommand, PaymentsCommand, SpoolCommand, WebhooksCommand};
use error::AdminError;
use output::Report;

/// Runs one command and returns what to print. `Err` only for failures that leave
/// nothing to report (configuration, Redis unreachable, unreadable files); a payment
/// that is not found or a failed doctor check is a [`Report`] that is not `ok`.
pub async fn run(cli: &Cli) -> Result<Report, AdminError> {
    match &cli.command {
        Command::Payment {
            command: PaymentCommand::Show { id },
        } => {
            let s = settings::load(cli.config.as_deref())?;
            payments::show(&s, id).await
        }
        Command::Payments {
            command: PaymentsCommand::Pending { older_than, limit },
        } => {
            let s = settings::load(cli.config.as_deref())?;
            payments::pending(&s, *older_than, *limit).await
        }
        Command::Spool {
            command: SpoolCommand::Status { dir },
        } => Ok(spool::status(dir)?.into()),
        Command::Doctor => {
            let s = settings::load(cli.config.as_deref())?;
            Ok(doctor::run(&s).await.into())
        }
        Command::Webhooks { command } => {
            let s = settings::load(cli.config.as_deref())?;
            match command {
                WebhooksCommand::Dead { limit } => webhooks::dead(&s, *limit).await,
                WebhooksCommand::Replay { event_id } => webhooks::replay(&s, event_id).await,
            }
        }
    }
}
