//! The containers for real, on the machine's Docker engine: the images built from local parts
//! (`scripts/images`, from the binaries `scripts/test` built), compose bringing up NATS, the
//! stream set-up, every agent and the gateway, a review posted to the gateway's published port
//! delivered as a report on the reports volume, and `choreo trace` from the host showing it;
//! then three copies of a specialist sharing reviews, one of them killed holding some, and the
//! aggregator restarted, with every run complete and no finding twice.
//!
//! One compose project (a name of its own, its own image tags, ports the engine picks) serves
//! every check, and is taken down with its volumes when the test ends, passed or failed.
//! Where no engine answers the test says so and passes, unless `CHOREO_REQUIRE_DOCKER=1`
//! (`.ci/run` sets it), which makes that a failure.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use async_nats::jetstream;
use choreo_bus::Event;
use choreo_bus::log::{LogQuery, LogReader};
use choreo_local_nats::process::sibling_binary;
use choreo_review::samples::refunds_request;
use choreo_testkit::PATIENCE;
use choreo_testkit::team::TEAM;

use choreo_testkit::workspace_root as root;

/// Whether a Docker engine and docker-compose answer; when not, the test is skipped unless
/// `CHOREO_REQUIRE_DOCKER=1`.
fn engine_available() -> bool {
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
        "tests/compose.rs skipped: {missing} (CHOREO_REQUIRE_DOCKER=1 makes this a failure)"
    );
    false
}

/// Runs a command to completion; fails with its output unless it succeeded.
async fn run(command: &mut tokio::process::Command) -> anyhow::Result<String> {
    let output = checked(command).await?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

async fn checked(command: &mut tokio::process::Command) -> anyhow::Result<Output> {
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
async fn poll<T, F, Fut>(what: &str, every: Duration, mut condition: F) -> anyhow::Result<T>
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
fn random_hex() -> String {
    use std::io::Read as _;
    let mut buffer = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut file| file.read_exact(&mut buffer))
        .expect("/dev/urandom");
    buffer.iter().map(|b| format!("{b:02x}")).collect()
}

/// The owner and text of the one file in a tar archive (what `docker cp CONTAINER:PATH -`
/// writes): the header's uid and size fields are octal numbers, the content follows it.
fn one_file(archive: &[u8]) -> anyhow::Result<(u32, String)> {
    let header = archive.get(..512).context("no tar header")?;
    let octal = |field: &[u8]| -> anyhow::Result<u64> {
        let text = std::str::from_utf8(field)?.trim_matches(|c: char| c == '\0' || c == ' ');
        Ok(u64::from_str_radix(text, 8)?)
    };
    let owner = u32::try_from(octal(&header[108..116])?)?;
    let size = usize::try_from(octal(&header[124..136])?)?;
    let content = archive.get(512..512 + size).context("a short archive")?;
    Ok((owner, String::from_utf8(content.to_vec())?))
}

/// A compose project of this test's own: its name, image tags and environment. Dropping it
/// takes the project down with its volumes and removes its images, whatever happened before.
struct Project {
    name: String,
    choreo_image: String,
    nats_image: String,
    token: String,
    /// Containers made outside compose (to read a volume), removed with the project.
    others: std::sync::Mutex<Vec<String>>,
}

impl Project {
    fn new() -> Project {
        let unique = format!("{}-{}", std::process::id(), &random_hex()[..8]);
        Project {
            name: format!("choreo-test-{unique}"),
            choreo_image: format!("choreo:test-{unique}"),
            nats_image: format!("choreo-nats:test-{unique}"),
            token: random_hex(),
            others: Default::default(),
        }
    }

    /// The environment compose and scripts/images read: only what this project sets, so no
    /// setting of the shell running the tests reaches the containers.
    fn environment(&self) -> Vec<(&'static str, String)> {
        let mut environment = vec![
            ("CHOREO_IMAGE", self.choreo_image.clone()),
            ("NATS_IMAGE", self.nats_image.clone()),
            (
                "CHOREO_GATEWAY_TOKENS",
                format!("ci={}:review.*", self.token),
            ),
            ("CHOREO_NATS_PUBLISH", "127.0.0.1:0".to_string()),
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
        environment
    }

    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
        let mut command = std::process::Command::new(program);
        command
            .current_dir(root())
            .env_clear()
            .envs(self.environment());
        command
    }

    /// `docker-compose -p NAME -f compose.yaml ARGS`.
    fn compose(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = self.command("docker-compose");
        command
            .args(["--project-name", &self.name, "--file", "compose.yaml"])
            .args(["--project-directory", "."])
            .args(args);
        command.into()
    }

    /// The container of `service` (its first copy).
    async fn container(&self, service: &str) -> anyhow::Result<String> {
        let id = run(&mut self.compose(&["ps", "-q", service])).await?;
        id.lines()
            .next()
            .map(str::to_string)
            .with_context(|| format!("no container for {service}"))
    }

    /// Every container of `service`.
    async fn containers(&self, service: &str) -> anyhow::Result<Vec<String>> {
        let ids = run(&mut self.compose(&["ps", "-q", service])).await?;
        Ok(ids.lines().map(str::to_string).collect())
    }

    /// Where the host reaches `service`'s `port`.
    async fn published(&self, service: &str, port: u16) -> anyhow::Result<String> {
        run(&mut self.compose(&["port", service, &port.to_string()])).await
    }

    async fn health(&self, service: &str) -> anyhow::Result<String> {
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
    async fn volume(&self, volume: &str) -> anyhow::Result<String> {
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
    fn logs(&self) -> String {
        let mut command = self.command("docker-compose");
        command
            .args(["--project-name", &self.name, "--file", "compose.yaml"])
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

impl Drop for Project {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- the project's logs ---\n{}", self.logs());
        }
        let others = std::mem::take(&mut *self.others.lock().unwrap_or_else(|e| e.into_inner()));
        if !others.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "--force"])
                .args(&others)
                .output();
        }
        let mut down = self.command("docker-compose");
        down.args(["--project-name", &self.name, "--file", "compose.yaml"])
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

/// The folder and cargo profile of the binaries this test was built with, for scripts/images.
fn built_binaries() -> (PathBuf, String) {
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

#[tokio::test]
async fn the_review_team_runs_in_compose_from_images_built_of_local_parts() -> anyhow::Result<()> {
    if !engine_available() {
        return Ok(());
    }
    let started = Instant::now();
    let project = Project::new();

    // The images, from the binaries this test was built with: no build, no registry.
    let (target_dir, profile) = built_binaries();
    let mut images: tokio::process::Command = project.command(root().join("scripts/images")).into();
    images
        .args(["--no-build", "--profile", &profile])
        .env("CARGO_TARGET_DIR", &target_dir);
    let built = run(&mut images).await?;
    eprintln!("{built}");
    let built_at = started.elapsed();

    // The runtime image's configuration is the Dockerfile's: non-root, JSON logs, the reports
    // folder; and it has no shell.
    let config = docker(&[
        "image",
        "inspect",
        "--format",
        "{{.Config.User}} {{json .Config.Env}}",
        &project.choreo_image,
    ])
    .await?;
    assert!(config.starts_with("65532:65532 "), "{config}");
    for variable in ["CHOREO_LOG_FORMAT=json", "CHOREO_REPORTS_DIR=/data/reports"] {
        assert!(config.contains(variable), "{config}");
    }
    let shell = tokio::process::Command::new("docker")
        .args(["run", "--rm", &project.choreo_image, "sh", "-c", "true"])
        .output()
        .await?;
    assert!(!shell.status.success(), "the image has a shell");

    // Everything up: NATS healthy and the streams set up before the agents start (compose
    // waits for both), then the gateway healthy.
    checked(&mut project.compose(&["up", "--detach", "--no-build"])).await?;
    let up_at = started.elapsed();
    assert_eq!(project.health("nats").await?, "healthy");
    poll(
        "the gateway is healthy",
        Duration::from_millis(250),
        || async { Ok((project.health("gateway").await? == "healthy").then_some(())) },
    )
    .await?;
    // Every agent serves its probes; healthy means pulling and connected to NATS.
    for binary in TEAM {
        let service = binary.trim_start_matches("choreo-");
        poll(
            &format!("agent {service} is healthy"),
            Duration::from_millis(250),
            || async { Ok((project.health(service).await? == "healthy").then_some(())) },
        )
        .await?;
    }
    let gateway = format!("http://{}", project.published("gateway", 8080).await?);
    let nats_url = format!("nats://{}", project.published("nats", 4222).await?);

    // A token the gateway does not know is refused; the project's token publishes the review.
    let gateway = Gateway {
        http: reqwest::Client::new(),
        url: gateway,
        token: project.token.clone(),
    };
    let refused = gateway
        .http
        .post(format!("{}/v1/events", gateway.url))
        .bearer_auth("not-the-token-of-this-project")
        .json(&Gateway::review())
        .send()
        .await?;
    assert_eq!(refused.status(), reqwest::StatusCode::UNAUTHORIZED);
    let run_id = gateway
        .post_review(&format!("{}-refunds", project.name))
        .await?;

    // The notifier writes the report on the reports volume, as the non-root user: read it
    // through a container that only mounts the volume (created, never started).
    let volume = project.volume("reports").await?;
    let reader = docker(&[
        "create",
        "--volume",
        &format!("{volume}:/data/reports"),
        &project.choreo_image,
    ])
    .await?;
    project.others.lock().unwrap().push(reader.clone());
    let (owner, report) = poll(
        "the report is on the reports volume",
        Duration::from_millis(250),
        || async {
            let copy = tokio::process::Command::new("docker")
                .arg("cp")
                .arg(format!("{reader}:/data/reports/{run_id}.md"))
                .arg("-")
                .output()
                .await?;
            copy.status
                .success()
                .then(|| one_file(&copy.stdout))
                .transpose()
        },
    )
    .await?;
    assert!(report.starts_with("## Code review: Refunds"), "{report}");
    assert!(report.contains("security/hardcoded-secret"), "{report}");
    assert_eq!(owner, 65532, "the report's owner");

    // The host's choreo reaches NATS at its published port and traces the run through every
    // agent the sample needs, nothing dead-lettered.
    let choreo = sibling_binary("choreo")?;
    let trace = run(tokio::process::Command::new(&choreo)
        .args(["trace", &run_id])
        .env("NATS_URL", &nats_url))
    .await?;
    assert!(trace.contains(", 0 dead-lettered"), "{trace}");
    assert!(trace.contains("review.delivered  [notifier]"), "{trace}");
    for agent in TEAM.iter().filter(|binary| **binary != "choreo-fetcher") {
        let source = agent.strip_prefix("choreo-").expect("choreo-<agent>");
        assert!(trace.contains(&format!("[{source}]")), "{source}:\n{trace}");
    }

    // What one run of the sample is, for the runs below to be compared with.
    let client = async_nats::connect(&nats_url).await?;
    let log = async_nats::jetstream::new(client);
    let sample = shape(&events(&log, &format!("events.{run_id}.>")).await?);
    let single_at = started.elapsed();

    scaled(&project, &gateway, &log, &sample).await?;
    let scaled_at = started.elapsed();
    faults(&project, &gateway, &log, &sample).await?;

    eprintln!(
        "images {:.1?}, up {:.1?}, one review {:.1?}, scaled {:.1?}, faults {:.1?}, all {:.1?}",
        built_at,
        up_at - built_at,
        single_at - up_at,
        scaled_at - single_at,
        started.elapsed() - scaled_at,
        started.elapsed()
    );
    Ok(())
}

/// Three copies of `security` share 30 reviews: each `review.planned` is handled by exactly one
/// copy (the copies' logs name what each handled), each copy handles some, and every run is
/// the sample's run again.
async fn scaled(
    project: &Project,
    gateway: &Gateway,
    log: &jetstream::Context,
    sample: &Shape,
) -> anyhow::Result<()> {
    checked(&mut project.compose(&[
        "up",
        "--detach",
        "--no-build",
        "--no-recreate",
        "--scale",
        "security=3",
    ]))
    .await?;
    let copies = project.containers("security").await?;
    assert_eq!(copies.len(), 3, "{copies:?}");
    for copy in &copies {
        poll(
            "each copy has started",
            Duration::from_millis(250),
            || async { Ok(logs(copy).await?.contains("agent started").then_some(())) },
        )
        .await?;
    }
    let mut runs = BTreeSet::new();
    for index in 0..30 {
        runs.insert(
            gateway
                .post_review(&format!("{}-scaled-{index}", project.name))
                .await?,
        );
    }
    wait_delivered(log, &runs).await?;
    for run in &runs {
        assert_eq!(
            &shape(&events(log, &format!("events.{run}.>")).await?),
            sample,
            "run {run}"
        );
    }

    let mut handled_by: BTreeMap<String, Vec<&String>> = BTreeMap::new();
    for copy in &copies {
        for run in handled(&logs(copy).await?, "review.planned") {
            handled_by.entry(run).or_default().push(copy);
        }
    }
    for run in &runs {
        let by = handled_by.get(run).map_or(0, Vec::len);
        assert_eq!(
            by, 1,
            "run {run}'s review.planned was handled by {by} copies"
        );
    }
    for copy in &copies {
        let count = handled_by
            .iter()
            .filter(|(run, by)| runs.contains(*run) && by.contains(&copy))
            .count();
        eprintln!("security copy {} handled {count} of 30", &copy[..12]);
        assert!(count > 0, "copy {copy} handled none of the 30 reviews");
    }
    Ok(())
}

/// Reviews while a `security` copy is killed holding reviews it had been handed, and while the
/// aggregator restarts: the copy is stopped first (SIGSTOP), so the server hands it reviews it
/// cannot finish, then killed (SIGKILL); its reviews come back to the other copies after the
/// ack wait. Every run completes as the sample's run did (no finding twice, none missing), the
/// killed copy's reviews were handled again elsewhere, and nothing is dead-lettered.
async fn faults(
    project: &Project,
    gateway: &Gateway,
    log: &jetstream::Context,
    sample: &Shape,
) -> anyhow::Result<()> {
    let copies = project.containers("security").await?;
    let (stopped, live) = copies.split_first().context("security copies")?;
    docker(&["kill", "--signal", "SIGSTOP", stopped]).await?;
    let mut runs = BTreeSet::new();
    let mut in_hand = 0;
    for _batch in 0..3 {
        for _ in 0..5 {
            let key = format!("{}-faults-{}", project.name, runs.len());
            runs.insert(gateway.post_review(&key).await?);
        }
        // The live copies finish theirs; what is still unacknowledged is the stopped copy's
        // (seen twice in a row, so a live copy's handling in progress is not taken for it).
        let last = std::cell::Cell::new(None);
        in_hand = poll(
            "the live copies have handled their reviews",
            Duration::from_millis(250),
            || {
                let runs = &runs;
                let seen = &last;
                async move {
                    let completed = events(log, "events.*.review.specialist.completed")
                        .await?
                        .iter()
                        .filter(|e| e.source == "security" && runs.contains(&e.correlation_id))
                        .count();
                    let pending = log
                        .get_stream("EVENTS")
                        .await?
                        .consumer_info("security")
                        .await?
                        .num_ack_pending;
                    let now = (completed + pending == runs.len()).then_some(pending);
                    let stable = now.is_some() && seen.replace(now) == now;
                    Ok(if stable { now } else { None })
                }
            },
        )
        .await?;
        if in_hand > 0 {
            break;
        }
    }
    ensure!(
        in_hand > 0,
        "the stopped copy was handed none of {} reviews",
        runs.len()
    );
    docker(&["kill", stopped]).await?;
    for index in 0..10 {
        let key = format!("{}-faults-{}", project.name, runs.len());
        runs.insert(gateway.post_review(&key).await?);
        if index == 4 {
            checked(&mut project.compose(&["restart", "--timeout", "10", "aggregator"])).await?;
        }
    }
    wait_delivered(log, &runs).await?;
    for run in &runs {
        assert_eq!(
            &shape(&events(log, &format!("events.{run}.>")).await?),
            sample,
            "run {run}"
        );
    }
    let mut handed_back = 0;
    for copy in live {
        handed_back += logs(copy)
            .await?
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|line| {
                line["fields"]["message"] == "handled"
                    && line["span"]["event_type"] == "review.planned"
                    && line["span"]["delivery"].as_u64() > Some(1)
            })
            .count();
    }
    eprintln!(
        "faults: {} reviews; the killed copy held {in_hand}, handled again by the others: {handed_back}",
        runs.len()
    );
    assert!(
        handed_back >= in_hand,
        "the killed copy held {in_hand} reviews, {handed_back} were handled again"
    );
    let mut reader = LogReader::open(log, "DEADLETTERS", LogQuery::filtered("dlq.>")).await?;
    assert!(
        reader.next().await?.is_none(),
        "something was dead-lettered"
    );
    Ok(())
}

async fn docker(args: &[&str]) -> anyhow::Result<String> {
    run(tokio::process::Command::new("docker").args(args)).await
}

/// The gateway at its published port, with the project's token.
struct Gateway {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Gateway {
    /// The sample change as a review request.
    fn review() -> serde_json::Value {
        serde_json::json!({"type": "review.requested", "data": refunds_request()})
    }

    /// Posts the sample change for review under idempotency key `key`; returns its run.
    async fn post_review(&self, key: &str) -> anyhow::Result<String> {
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

/// How many events of each source and type a run holds.
type Shape = BTreeMap<(String, String), usize>;

fn shape(events: &[Event]) -> Shape {
    let mut shape = Shape::new();
    for event in events {
        *shape
            .entry((event.source.clone(), event.r#type.clone()))
            .or_default() += 1;
    }
    shape
}

/// Every event stored on `filter`, read from the host through NATS's published port.
async fn events(log: &jetstream::Context, filter: &str) -> anyhow::Result<Vec<Event>> {
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
async fn wait_delivered(log: &jetstream::Context, runs: &BTreeSet<String>) -> anyhow::Result<()> {
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

async fn logs(container: &str) -> anyhow::Result<String> {
    let output = checked(tokio::process::Command::new("docker").args(["logs", container])).await?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

/// The runs whose `event_type` events a copy's JSON log says it handled.
fn handled(log: &str, event_type: &str) -> Vec<String> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| {
            line["fields"]["message"] == "handled" && line["span"]["event_type"] == event_type
        })
        .filter_map(|line| line["span"]["correlation_id"].as_str().map(str::to_string))
        .collect()
}
