//! `daraja-sim`: runs the simulator until SIGTERM or Ctrl-C.
//!
//! Prints one line to stdout when listening, `daraja-sim listening on http://HOST:PORT`
//! (tests parse it to learn the port); logs go to stderr. Every flag has an env var.

use std::io::Write as _;

use clap::Parser;
use stk_relay_daraja_sim::{SimConfig, Simulator};
use stk_relay_shared::shutdown::Shutdown;
use stk_relay_shared::telemetry::{self, TelemetrySettings};

#[derive(Parser)]
#[command(
    name = "daraja-sim",
    about = "A Daraja (M-Pesa Express) simulator",
    version
)]
struct Cli {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "DARAJA_SIM_BIND", default_value = "127.0.0.1:0")]
    bind: String,
    #[arg(long, env = "DARAJA_SIM_CONSUMER_KEY")]
    consumer_key: Option<String>,
    #[arg(long, env = "DARAJA_SIM_CONSUMER_SECRET", hide_env_values = true)]
    consumer_secret: Option<String>,
    #[arg(long, env = "DARAJA_SIM_PASSKEY", hide_env_values = true)]
    passkey: Option<String>,
    #[arg(long, env = "DARAJA_SIM_SHORTCODE")]
    shortcode: Option<String>,
    #[arg(long, env = "DARAJA_SIM_TILL_NUMBER")]
    till_number: Option<String>,
    #[arg(long, env = "DARAJA_SIM_CALLBACK_DELAY_MS")]
    callback_delay_ms: Option<u64>,
    #[arg(long, env = "DARAJA_SIM_TOKEN_TTL_SECS")]
    token_ttl_secs: Option<u64>,
    #[arg(long, env = "DARAJA_SIM_RESPONSE_DELAY_MS")]
    response_delay_ms: Option<u64>,
    #[arg(long, env = "DARAJA_SIM_WORKERS")]
    workers: Option<usize>,
}

impl Cli {
    fn config(self) -> SimConfig {
        let d = SimConfig::default();
        SimConfig {
            consumer_key: self.consumer_key.unwrap_or(d.consumer_key),
            consumer_secret: self.consumer_secret.unwrap_or(d.consumer_secret),
            passkey: self.passkey.unwrap_or(d.passkey),
            shortcode: self.shortcode.unwrap_or(d.shortcode),
            till_number: self.till_number.or(d.till_number),
            callback_delay_ms: self.callback_delay_ms.unwrap_or(d.callback_delay_ms),
            token_ttl_secs: self.token_ttl_secs.unwrap_or(d.token_ttl_secs),
            response_delay_ms: self.response_delay_ms.unwrap_or(d.response_delay_ms),
            workers: self.workers.unwrap_or(d.workers),
            ..d
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(&TelemetrySettings::default());
    let bind = cli.bind.clone();
    let sim = Simulator::start(cli.config(), &bind).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "daraja-sim listening on {}", sim.base_url())?;
    out.flush()?;
    drop(out);
    let shutdown = Shutdown::new();
    tokio::spawn(shutdown.clone().trigger_on_signals());
    shutdown.wait().await;
    sim.stop().await;
    Ok(())
}
