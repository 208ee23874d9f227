//! `stk-relay-admin`: parse the command line, run the command, print its report (a
//! table, or JSON with `--json`), exit 0 when it succeeded and 1 when not.

use std::process::ExitCode;

use clap::Parser as _;
use stk_relay_admin::cli::Cli;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match stk_relay_admin::run(&cli).await {
        Ok(report) => {
            print!("{}", report.render(cli.json));
            if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            let e = anyhow::Error::from(e);
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({ "ok": false, "error": format!("{e:#}") })
                );
            }
            eprintln!("stk-relay-admin: {e:#}");
            ExitCode::FAILURE
        }
    }
}
