//! The review team as separate processes against a test's server: each agent binary started
//! with the server's URL, its log in the test's folder, stopped, killed or started again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use choreo_local_nats::process::{AgentProcess, sibling_binary};
use tempfile::TempDir;

pub use choreo_review::TEAM;

/// Agent processes of one test.
#[derive(Debug)]
pub struct Team {
    url: String,
    dir: TempDir,
    /// By binary name, then copy.
    processes: BTreeMap<String, Vec<AgentProcess>>,
    started: usize,
}

impl Team {
    pub fn new(url: String) -> anyhow::Result<Team> {
        Ok(Team {
            url,
            dir: tempfile::tempdir()?,
            processes: BTreeMap::new(),
            started: 0,
        })
    }

    /// Where the notifier writes reports unless told otherwise.
    pub fn reports_dir(&self) -> PathBuf {
        self.dir.path().join("reports")
    }

    /// Starts one more copy of `binary` with `env` on top of the server's URL, JSON logs at
    /// debug level (so a test can read what each copy handled) and the team's reports folder.
    pub fn start(&mut self, binary: &str, env: &[(&str, &str)]) -> anyhow::Result<()> {
        let path = sibling_binary(binary)?;
        self.started += 1;
        let log = self
            .dir
            .path()
            .join(format!("{binary}-{}.log", self.started));
        let mut all: Vec<(String, String)> = vec![
            ("NATS_URL".into(), self.url.clone()),
            ("CHOREO_LOG_FORMAT".into(), "json".into()),
            ("RUST_LOG".into(), "info,choreo_bus::runtime=debug".into()),
            (
                "CHOREO_REPORTS_DIR".into(),
                self.reports_dir().display().to_string(),
            ),
        ];
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let process = AgentProcess::start(&path, all, &log)?;
        self.processes
            .entry(binary.to_string())
            .or_default()
            .push(process);
        Ok(())
    }

    /// Starts one copy of every agent of the team.
    pub fn start_all(&mut self, env: &[(&str, &str)]) -> anyhow::Result<()> {
        for binary in TEAM {
            self.start(binary, env)?;
        }
        Ok(())
    }

    /// The copies of `binary` started so far (killed ones included).
    pub fn copies(&mut self, binary: &str) -> &mut [AgentProcess] {
        self.processes
            .get_mut(binary)
            .map(Vec::as_mut_slice)
            .unwrap_or_default()
    }

    /// Kills copy `index` of `binary` at once (SIGKILL: nothing drained or acknowledged).
    pub async fn kill(&mut self, binary: &str, index: usize) {
        if let Some(process) = self.copies(binary).get_mut(index) {
            process.kill().await;
        }
    }

    /// Every log, for a failing test's message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for process in self.processes.values().flatten() {
            let log = process.log();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            out.push_str(&format!("--- {} ---\n", process.log_path().display()));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Stops every process (SIGTERM, then SIGKILL after a grace).
    pub async fn stop(&mut self) {
        for process in self.processes.values_mut().flatten() {
            process.terminate(Duration::from_secs(10)).await;
        }
    }
}
