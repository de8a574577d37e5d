//! The `fetcher` agent as its own process; `--help` lists its settings.

use std::process::ExitCode;

// Every choreo binary uses mimalloc: the event path allocates per message (docs/architecture.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let about = env!("CARGO_PKG_DESCRIPTION");
    choreo_bus::serve::serve_with(
        choreo_agent_fetcher::agent(),
        about,
        |settings, _| async move { choreo_agent_fetcher::Fetcher::new(&settings) },
    )
    .await
}
