//! `stk-relay-gateway`: load config, start telemetry, raise the open-file limit, serve
//! until SIGTERM.

use stk_relay_gateway::{config::GatewaySettings, startup::Application};
use stk_relay_shared::config::Settings as _;
use stk_relay_shared::{limits, shutdown::Shutdown, telemetry};

/// jemalloc, not glibc's malloc: under connection churn glibc's `_int_malloc` walked its
/// bins on the close path (12-16 % of the gateway's CPU at 5,000 callbacks/s, BENCHMARKS.md);
/// with jemalloc it is gone, and an idle socket costs less memory.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
