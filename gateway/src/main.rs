//! `stk-relay-gateway`: load config, start telemetry, raise the open-file limit, serve
//! until SIGTERM.

use stk_relay_gateway::{config::GatewaySettings, startup::Application};
use stk_relay_shared::config::Settings as _;
use stk_relay_shared::{limits, shutdown::Shutdown, telemetry};

fn main() -> anyhow::Result<()> {
    let settings = GatewaySettings::load()?;
    let runtime = settings.server.runtime()?;
    runtime.block_on(serve(settings))
}

async fn serve(settings: GatewaySettings) -> anyhow::Result<()> {
    telemetry::init(&settings.telemetry);
    limits::raise_open_files(settings.ws.open_files_needed());
    let shutdown = Shutdown::new();
    tokio::spawn(shutdown.clone().trigger_on_signals());
    let app = Application::build(settings, shutdown).await?;
    println!("stk-relay-gateway listening on {}", app.base_url());
    app.run_until_stopped().await?;
    Ok(())
}
