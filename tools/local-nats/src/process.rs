//! Agents as their own local processes: started from the binaries `cargo build` put next to
//! the running one, with their output in a log file, stopped with SIGTERM (and a grace period)
//! or killed. `choreo up`, the end-to-end tests and the benchmark all start agents this way.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

/// Why an agent process could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("binary {0} not found: build every binary first (`cargo build --workspace --bins`)")]
    NotBuilt(PathBuf),
    #[error("cannot tell where the running binary is: {0}")]
    NoCurrentExe(std::io::Error),
    #[error("cannot write the log {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
}

/// The binary `name` built alongside the running one: in the same folder, or the folder above
/// (a test binary runs from `target/<profile>/deps`, the others are in `target/<profile>`).
pub fn sibling_binary(name: &str) -> Result<PathBuf, ProcessError> {
    let exe = std::env::current_exe().map_err(ProcessError::NoCurrentExe)?;
    let mut dir = exe.parent();
    while let Some(folder) = dir {
        let candidate = folder.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        if folder.file_name().is_some_and(|n| n != "deps") {
            break;
        }
        dir = folder.parent();
    }
    Err(ProcessError::NotBuilt(
        exe.parent().unwrap_or(Path::new(".")).join(name),
    ))
}

/// A running agent process, killed if dropped while running.
#[derive(Debug)]
pub struct AgentProcess {
    name: String,
    log: PathBuf,
    child: Child,
}

impl AgentProcess {
    /// Starts `binary` with `env` added to this process's environment, its stdout and stderr
    /// appended to `log`.
    pub fn start<K, V>(
        binary: &Path,
        env: impl IntoIterator<Item = (K, V)>,
        log: &Path,
    ) -> Result<Self, ProcessError>
    where
        K: AsRef<std::ffi::OsStr>,
        V: AsRef<std::ffi::OsStr>,
    {
        if !binary.is_file() {
            return Err(ProcessError::NotBuilt(binary.to_path_buf()));
        }
        let log_error = |source| ProcessError::Log {
            path: log.to_path_buf(),
            source,
        };
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(log_error)?;
        let err = out.try_clone().map_err(log_error)?;
        let child = Command::new(binary)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ProcessError::Spawn {
                binary: binary.to_path_buf(),
                source,
            })?;
        let name = binary
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(AgentProcess {
            name,
            log: log.to_path_buf(),
            child,
        })
    }

    /// The binary's file name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// What the process has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The most resident memory the process has used so far, in KiB (`VmHWM` on Linux), or
    /// `None` where that cannot be read.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Asks the process to stop (SIGTERM, so it drains what it holds) and waits up to `grace`;
    /// then kills it. Returns how it exited, or `None` if it had to be killed.
    pub async fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(pid) = self.pid() {
            // Through kill(1): a clean SIGTERM without unsafe code or a signal crate.
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                self.kill().await;
                None
            }
        }
    }

    /// Kills the process at once (SIGKILL: no draining, nothing acknowledged) and reaps it.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}
