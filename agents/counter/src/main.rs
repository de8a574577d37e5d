//! The `counter` agent as its own process; configured by environment (see `choreo_bus::serve`).

use std::process::ExitCode;

// Every choreo binary uses mimalloc: the event path allocates per message (docs/architecture.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    match choreo_agent_counter::agent() {
        Ok(agent) => choreo_bus::serve(agent, choreo_agent_counter::Handler).await,
        Err(err) => {
            eprintln!("choreo-counter: {err}");
            ExitCode::from(choreo_bus::serve::EXIT_CONFIG)
        }
    }
}
