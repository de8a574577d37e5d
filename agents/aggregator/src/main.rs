//! The `aggregator` agent as its own process; `--help` lists its settings.

use std::process::ExitCode;

// Every choreo binary uses mimalloc: the event path allocates per message (docs/architecture.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    use choreo_agent_aggregator::{agent, build};
    choreo_bus::serve::serve_with(agent(), env!("CARGO_PKG_DESCRIPTION"), build).await
}
