//! The `choreo` binary, and the agents', run as an operator runs them: against a given server,
//! with none of the test environment's `CHOREO_*` or `NATS_*` settings leaking in.

use std::path::Path;
use std::process::{Command, Output};

use choreo_local_nats::process::sibling_binary;

/// `program` with `NATS_URL` set to `nats_url` and every other `CHOREO_*` and `NATS_*`
/// variable of this process removed.
pub fn clean_command(program: &Path, nats_url: &str) -> Command {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars() {
        if name.starts_with("CHOREO_") || name.starts_with("NATS_") {
            command.env_remove(name);
        }
    }
    command.env("NATS_URL", nats_url);
    command
}

/// Runs `choreo ARGS` against `nats_url` (one URL, or several comma-separated) and returns
/// what it did.
pub async fn choreo(nats_url: &str, args: &[&str]) -> anyhow::Result<Output> {
    let mut command = clean_command(&sibling_binary("choreo")?, nats_url);
    command.args(args);
    Ok(tokio::task::spawn_blocking(move || command.output()).await??)
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Fails the test with the command's output unless it exited with `code`.
#[track_caller]
pub fn expect_code(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(output),
        stderr(output)
    );
}
