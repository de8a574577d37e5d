//! The containers on the machine's Docker engine, for the compose tests: a compose project of
//! a test's own (its name, image tags made from the binaries the test was built with, ports the
//! engine picks), taken down with its volumes when it is dropped; the gateway at its published
//! port; and reading what runs did from the host.
//!
//! Where no engine answers a test says so and passes, unless `CHOREO_REQUIRE_DOCKER=1`
//! (`.ci/run` sets it), which makes that a failure. `CHOREO_KEEP_PROJECT=1` leaves a test's
//! project up when the test ends, to look at what it did.

#![allow(
    clippy::expect_used,
    reason = "a test's set-up that cannot go on says what it expected"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use async_nats::jetstream;
use choreo_bus::Event;
use choreo_bus::log::{LogError, LogQuery, LogReader};
use choreo_local_nats::process::sibling_binary;
use choreo_review::samples::refunds_request;

use crate::PATIENCE;
use crate::workspace_root as root;

/// Whether a Docker engine and docker-compose answer; when not, `test` is skipped (and says
/// so) unless `CHOREO_REQUIRE_DOCKER=1`.
pub fn engine_available(test: &str) -> bool {
    let answers = |program: &str, arg: &str| {
        std::process::Command::new(program)
            .arg(arg)
            .output()
            .is_ok_and(|output| output.status.success())
    };
    let (engine, compose) = (
        answers("docker", "info"),
        answers("docker-compose", "version"),
    );
    if engine && compose {
        return true;
    }
    let missing = if engine {
        "docker-compose does not run"
    } else {
        "no Docker engine answers (docker info failed)"
    };
    assert!(
        std::env::var("CHOREO_REQUIRE_DOCKER").as_deref() != Ok("1"),
        "{missing}, and CHOREO_REQUIRE_DOCKER=1 requires one"
    );
    // Straight to the process's stderr, past the test harness's capture, so a run's log says
    // what was skipped.
    let _ = writeln!(
        std::io::stderr(),
        "{test} skipped: {missing} (CHOREO_REQUIRE_DOCKER=1 makes this a failure)"
    );
    false
}

/// Runs a command to completion; fails with its output unless it succeeded.
pub async fn run(command: &mut tokio::process::Command) -> anyhow::Result<String> {
    let output = checked(command).await?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

pub async fn checked(command: &mut tokio::process::Command) -> anyhow::Result<Output> {
    let shown = format!("{:?}", command.as_std());
    let output = command
        .output()
        .await
        .with_context(|| format!("cannot run {shown}"))?;
    ensure!(
        output.status.success(),
        "{shown}: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}

/// Asks `condition` every `every` until it holds, failing after [`PATIENCE`] with `what`.
pub async fn poll<T, F, Fut>(what: &str, every: Duration, mut condition: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = condition().await? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {PATIENCE:?} waiting until {what}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Sixteen random bytes as hex: a project's token.
pub fn random_hex() -> String {
    use std::io::Read as _;
    let mut buffer = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut file| file.read_exact(&mut buffer))
        .expect("/dev/urandom");
    buffer.iter().map(|b| format!("{b:02x}")).collect()
}

/// A compose project of this test's own: its name, image tags and environment. Dropping it
/// takes the project down with its volumes and removes its images, whatever happened before.
#[derive(Debug)]
pub struct Project {
    /// The compose file, then any layered on it (`compose.secure.yaml`), relative to the
    /// workspace root.
    files: Vec<&'static str>,
    /// Variables set for compose besides the project's own ([`Project::with_env`]).
    extra_environment: Vec<(&'static str, String)>,
    pub name: String,
    pub choreo_image: String,
    pub nats_image: String,
    pub token: String,
    /// Containers made outside compose (to read a volume), removed with the project.
    pub others: std::sync::Mutex<Vec<String>>,
}

impl Project {
    /// A project of `file` (e.g. `compose.yaml`).
    pub fn new(file: &'static str) -> Project {
        let unique = format!("{}-{}", std::process::id(), &random_hex()[..8]);
        Project {
            files: vec![file],
            extra_environment: Vec::new(),
            name: format!("choreo-test-{unique}"),
            choreo_image: format!("choreo:test-{unique}"),
            nats_image: format!("choreo-nats:test-{unique}"),
            token: random_hex(),
            others: Default::default(),
        }
    }

    /// The project with `file` layered on its compose file (`-f compose.yaml -f FILE`).
    pub fn with_file(mut self, file: &'static str) -> Project {
        self.files.push(file);
        self
    }

    /// The project with `name` set to `value` for compose (read by its files' `${NAME}`).
    pub fn with_env(mut self, name: &'static str, value: impl Into<String>) -> Project {
        self.extra_environment.push((name, value.into()));
        self
    }

    /// `--file F` for each of the project's files.
    fn file_args(&self) -> Vec<&'static str> {
        self.files
            .iter()
            .flat_map(|file| ["--file", file])
            .collect()
    }

    /// The environment compose and scripts/images read: only what this project sets, so no
    /// setting of the shell running the tests reaches the containers.
    pub fn environment(&self) -> Vec<(&'static str, String)> {
        let mut environment = vec![
            ("CHOREO_IMAGE", self.choreo_image.clone()),
            ("NATS_IMAGE", self.nats_image.clone()),
            (
                "CHOREO_GATEWAY_TOKENS",
                format!("ci={}:review.*", self.token),
            ),
            ("CHOREO_NATS_PUBLISH", "127.0.0.1:0".to_string()),
            // compose.cluster.yaml's other two nodes.
            ("CHOREO_NATS_2_PUBLISH", "127.0.0.1:0".to_string()),
            ("CHOREO_NATS_3_PUBLISH", "127.0.0.1:0".to_string()),
            // Each handling's `handled` line names its event, so the copies' logs say which
            // copy handled what; a killed copy's events come back after 5 s, not 30.
            (
                "RUST_LOG",
                "info,choreo_bus::runtime::worker=debug".to_string(),
            ),
            ("CHOREO_ACK_WAIT", "5s".to_string()),
            ("CHOREO_GATEWAY_PUBLISH", "127.0.0.1:0".to_string()),
        ];
        for kept in [
            "PATH",
            "HOME",
            "NATS_SERVER_BIN",
            "DOCKER_HOST",
            "DOCKER_CONFIG",
            "DOCKER_CERT_PATH",
            "DOCKER_TLS_VERIFY",
        ] {
            if let Ok(value) = std::env::var(kept) {
                environment.push((kept, value));
            }
        }
        environment.extend(self.extra_environment.iter().cloned());
        environment
    }

    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
        let mut command = std::process::Command::new(program);
        command
            .current_dir(root())
            .env_clear()
            .envs(self.environment());
        command
    }

    /// `docker-compose -p NAME -f compose.yaml ARGS`.
    pub fn compose(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = self.command("docker-compose");
        command
            .args(["--project-name", &self.name])
            .args(self.file_args())
            .args(["--project-directory", "."])
            .args(args);
        command.into()
    }

    /// The container of `service` (its first copy).
    pub async fn container(&self, service: &str) -> anyhow::Result<String> {
        let id = run(&mut self.compose(&["ps", "-q", service])).await?;
        id.lines()
            .next()
            .map(str::to_string)
            .with_context(|| format!("no container for {service}"))
    }

    /// Every container of `service`.
    pub async fn containers(&self, service: &str) -> anyhow::Result<Vec<String>> {
        let ids = run(&mut self.compose(&["ps", "-q", service])).await?;
        Ok(ids.lines().map(str::to_string).collect())
    }

    /// Where the host reaches `service`'s `port`.
    pub async fn published(&self, service: &str, port: u16) -> anyhow::Result<String> {
        run(&mut self.compose(&["port", service, &port.to_string()])).await
    }

    pub async fn health(&self, service: &str) -> anyhow::Result<String> {
        let container = self.container(service).await?;
        docker(&[
            "inspect",
            "--format",
            "{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}",
            &container,
        ])
        .await
    }

    /// The project's named volume `volume`.
    pub async fn volume(&self, volume: &str) -> anyhow::Result<String> {
        let found = docker(&[
            "volume",
            "ls",
            "--quiet",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.name),
            "--filter",
            &format!("label=com.docker.compose.volume={volume}"),
        ])
        .await?;
        found
            .lines()
            .next()
            .map(str::to_string)
            .with_context(|| format!("no volume {volume} in {}", self.name))
    }

    /// The last lines of every service's log, for a failure's message.
    pub fn logs(&self) -> String {
        let mut command = self.command("docker-compose");
        command
            .args(["--project-name", &self.name])
            .args(self.file_args())
            .args([
                "--project-directory",
                ".",
                "logs",
                "--no-color",
                "--tail",
                "30",
            ]);
        command.output().map_or_else(
            |err| format!("no logs: {err}"),
            |output| String::from_utf8_lossy(&output.stdout).to_string(),
        )
    }
}

impl Project {
    /// `result`, with every service's last log lines printed first when it is a failure (a
    /// panic prints them when the project is dropped).
    pub fn with_logs_on_failure<T>(&self, result: anyhow::Result<T>) -> anyhow::Result<T> {
        if result.is_err() {
            eprintln!("--- the project's logs ---\n{}", self.logs());
        }
        result
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- the project's logs ---\n{}", self.logs());
        }
        if std::env::var_os("CHOREO_KEEP_PROJECT").is_some() {
            eprintln!(
                "CHOREO_KEEP_PROJECT is set: project {} is left up (docker-compose -p {} {} \
                 down -v, then docker image rm {} {})",
                self.name,
                self.name,
                self.file_args().join(" "),
                self.choreo_image,
                self.nats_image
            );
            return;
        }
        let others = std::mem::take(&mut *self.others.lock().unwrap_or_else(|e| e.into_inner()));
        if !others.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "--force"])
                .args(&others)
                .output();
        }
        let mut down = self.command("docker-compose");
        down.args(["--project-name", &self.name])
            .args(self.file_args())
            .args(["--project-directory", ".", "down", "--volumes"])
            .args(["--remove-orphans", "--timeout", "5"]);
        match down.output() {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!(
                "docker-compose down for {}: {}",
                self.name,
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(err) => eprintln!("docker-compose down for {}: {err}", self.name),
        }
        let _ = std::process::Command::new("docker")
            .args([
                "image",
                "rm",
                "--force",
                &self.choreo_image,
                &self.nats_image,
            ])
            .output();
    }
}

impl Project {
    /// Builds the project's images with `scripts/images` from the binaries this test was built
    /// with: no build, no registry. Returns what the script printed.
    pub async fn build_images(&self) -> anyhow::Result<String> {
        let (target_dir, profile) = built_binaries();
        let mut images: tokio::process::Command =
            self.command(root().join("scripts/images")).into();
        images
            .args(["--no-build", "--profile", &profile])
            .env("CARGO_TARGET_DIR", &target_dir);
        run(&mut images).await
    }

    /// Waits until each of `services` is healthy.
    pub async fn wait_healthy(&self, services: &[&str]) -> anyhow::Result<()> {
        for service in services {
            poll(
                &format!("{service} is healthy"),
                Duration::from_millis(250),
                || async { Ok((self.health(service).await? == "healthy").then_some(())) },
            )
            .await?;
        }
        Ok(())
    }
}

/// The folder and cargo profile of the binaries this test was built with, for scripts/images.
pub fn built_binaries() -> (PathBuf, String) {
    let choreo = sibling_binary("choreo").expect("built: scripts/test builds the binaries");
    let profile_dir = choreo.parent().expect("the profile's folder");
    let folder = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a folder name");
    let profile = if folder == "debug" { "dev" } else { folder };
    (
        profile_dir
            .parent()
            .expect("the target folder")
            .to_path_buf(),
        profile.to_string(),
    )
}

/// The compose services of the review team: each agent binary's name without `choreo-`.
pub fn team_services() -> Vec<&'static str> {
    choreo_review::TEAM
        .iter()
        .map(|binary| binary.trim_start_matches("choreo-"))
        .collect()
}

pub async fn docker(args: &[&str]) -> anyhow::Result<String> {
    run(tokio::process::Command::new("docker").args(args)).await
}

/// The gateway at its published port, with the project's token.
#[derive(Debug)]
pub struct Gateway {
    pub http: reqwest::Client,
    pub url: String,
    pub token: String,
}

impl Gateway {
    /// The sample change as a review request.
    pub fn review() -> serde_json::Value {
        serde_json::json!({"type": "review.requested", "data": refunds_request()})
    }

    /// Posts the sample change for review under idempotency key `key`; returns its run.
    pub async fn post_review(&self, key: &str) -> anyhow::Result<String> {
        let answer = self
            .http
            .post(format!("{}/v1/events", self.url))
            .bearer_auth(&self.token)
            .header("Idempotency-Key", key)
            .json(&Gateway::review())
            .send()
            .await?;
        let status = answer.status();
        let body = answer.text().await?;
        ensure!(status == reqwest::StatusCode::ACCEPTED, "{status}: {body}");
        let body: serde_json::Value = serde_json::from_str(&body)?;
        Ok(body["correlation_id"]
            .as_str()
            .context("a correlation id")?
            .to_string())
    }
}

/// How many events of each source and type a run holds (the runtime's handling records left
/// out).
pub type Shape = BTreeMap<(String, String), usize>;

pub fn shape(events: &[Event]) -> Shape {
    let mut shape = Shape::new();
    // A quiet handling's record (`choreo.handled`) is left when the handling was slow, which a
    // fault decides, not what the run did.
    for event in events
        .iter()
        .filter(|event| event.r#type != choreo_bus::handling::HANDLED)
    {
        *shape
            .entry((event.source.clone(), event.r#type.clone()))
            .or_default() += 1;
    }
    shape
}

/// Every event stored on `filter`, read from the host through NATS's published port. A read
/// that JetStream could not serve just now (a consumer not made in time while a cluster is
/// busy or electing) is started again, for up to [`PATIENCE`].
pub async fn events(log: &jetstream::Context, filter: &str) -> anyhow::Result<Vec<Event>> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match read_events(log, filter).await {
            Err(err)
                if Instant::now() < deadline
                    && err
                        .downcast_ref::<LogError>()
                        .is_some_and(LogError::is_retryable) =>
            {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            read => return read,
        }
    }
}

async fn read_events(log: &jetstream::Context, filter: &str) -> anyhow::Result<Vec<Event>> {
    let mut reader = LogReader::open(log, "EVENTS", LogQuery::filtered(filter)).await?;
    let mut out = Vec::new();
    while let Some(record) = tokio::time::timeout(PATIENCE, reader.next())
        .await
        .context("the log read stalled")??
    {
        out.push(record.decode()?);
    }
    Ok(out)
}

/// Waits until each of `runs` has delivered its report.
pub async fn wait_delivered(
    log: &jetstream::Context,
    runs: &BTreeSet<String>,
) -> anyhow::Result<()> {
    poll(
        &format!("{} runs are delivered", runs.len()),
        Duration::from_millis(500),
        || async {
            let delivered: BTreeSet<String> = events(log, "events.*.review.delivered")
                .await?
                .into_iter()
                .map(|event| event.correlation_id)
                .collect();
            Ok(runs.is_subset(&delivered).then_some(()))
        },
    )
    .await
}

pub async fn logs(container: &str) -> anyhow::Result<String> {
    let output = checked(tokio::process::Command::new("docker").args(["logs", container])).await?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

/// The runs whose `event_type` events a copy's JSON log says it handled.
pub fn handled(log: &str, event_type: &str) -> Vec<String> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| {
            line["fields"]["message"] == "handled" && line["span"]["event_type"] == event_type
        })
        .filter_map(|line| line["span"]["correlation_id"].as_str().map(str::to_string))
        .collect()
}
