//! `stk-relay-callback-ingest`: load config, start telemetry, raise the open-file limit,
//! serve until SIGTERM.

use stk_relay_callback_ingest::{config::IngestSettings, startup::Application};
use stk_relay_shared::config::Settings as _;
use stk_relay_shared::{limits, shutdown::Shutdown, telemetry};

fn main() -> anyhow::Result<()> {
    let settings = IngestSettings::load()?;
    let runtime = settings.server.runtime()?;
    runtime.block_on(serve(settings))
}

async fn serve(settings: IngestSettings) -> anyhow::Result<()> {
    telemetry::init(&settings.telemetry);
    // No cap on connections of its own: Daraja's callbacks are short requests.
    limits::raise_open_files(limits::MIN_OPEN_FILES);
    let shutdown = Shutdown::new();
    tokio::spawn(shutdown.clone().trigger_on_signals());
    let app = Application::build(settings, shutdown).await?;
    println!("stk-relay-callback-ingest listening on {}", app.base_url());
    app.run_until_stopped().await?;
    Ok(())
}
