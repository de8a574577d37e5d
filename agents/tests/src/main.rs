//! The `tests` specialist as its own process; `--help` lists its settings.

use std::process::ExitCode;

// Every choreo binary uses mimalloc: the event path allocates per message (docs/architecture.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    choreo_review::specialist::serve(choreo_agent_tests::Tests).await
}
