//! `stk-relay`: load config, start telemetry, serve gateway and ingest on one port until
//! SIGTERM. Out of the box: in memory, with the Daraja simulator and the demo checkout.

use stk_relay::config::StandaloneSettings;
use stk_relay::startup::Standalone;
use stk_relay_shared::config::config_path_from_args;
use stk_relay_shared::{limits, shutdown::Shutdown, telemetry};

fn main() -> anyhow::Result<()> {
    let file = config_path_from_args(stk_relay::config::ENV_PREFIX);
    let settings = StandaloneSettings::load(file.as_deref(), None)?;
    let runtime = settings.server.runtime()?;
    runtime.block_on(serve(settings, file))
}

async fn serve(
    settings: StandaloneSettings,
    file: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    telemetry::init(&settings.telemetry);
    limits::raise_open_files(settings.ws.open_files_needed());
    let shutdown = Shutdown::new();
    tokio::spawn(shutdown.clone().trigger_on_signals());
    let app = Standalone::build(settings, file, shutdown).await?;
    println!("{}", app.banner());
    app.run_until_stopped().await?;
    Ok(())
}
