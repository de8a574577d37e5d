//! `choreo up`: a nats-server (unless `NATS_URL` names one) with its store in a project-local
//! folder, the streams, and every agent as its own process. `--demo` also submits a sample text
//! and prints its run as it happens, then stops everything.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_nats::jetstream;
use choreo_bus::log::{LogQuery, LogReader, Until};
use choreo_bus::{Emit, EventType, NatsConfig, Publisher, RootEvent, StreamsConfig};
use choreo_local_nats::{NatsServer, Options, TestServerError};
use tokio::process::{Child, Command};

use crate::Failure;

/// The agents `up` starts, by binary name.
pub const AGENTS: [&str; 2] = ["choreo-counter", "choreo-reporter"];
/// The event that ends a demo run.
const DEMO_DONE: &str = "report.written";
/// How long a demo run may take.
const DEMO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long agents get to drain after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(15);

const DEMO_TEXT: &str = "No conductor here:\neach agent hears an event, does one job,\nand tells the others what it did.";

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Submit a sample text, print its run as it happens, then stop everything.
    #[arg(long)]
    demo: bool,
    /// Use this NATS server instead of starting one.
    #[arg(long, env = "NATS_URL")]
    nats_url: Option<String>,
    /// Port for the local nats-server.
    #[arg(long, default_value_t = 4222)]
    port: u16,
    /// Folder for the local server's store and the agents' logs.
    #[arg(long, default_value = ".choreo")]
    dir: PathBuf,
}

pub async fn run(args: UpArgs) -> Result<(), Failure> {
    let (_server, url) = match &args.nats_url {
        Some(url) => (None, url.clone()),
        None => {
            let server = start_server(&args).await?;
            let url = server.url();
            (Some(server), url)
        }
    };
    let client = NatsConfig::new(&url)
        .client_name("choreo-up")
        .connect()
        .await
        .map_err(|err| Failure::unavailable(err.to_string()))?;
    let jetstream = jetstream::new(client.clone());
    choreo_bus::ensure_streams(&jetstream, &StreamsConfig::default())
        .await
        .map_err(|err| Failure::unavailable(err.to_string()))?;

    let logs = args.dir.join("logs");
    std::fs::create_dir_all(&logs)
        .map_err(|err| Failure::unavailable(format!("cannot create {}: {err}", logs.display())))?;
    let mut agents = Vec::new();
    for name in AGENTS {
        agents.push((name, spawn_agent(name, &url, &logs)?));
    }

    println!("choreo is up");
    println!("  NATS      {url}");
    for (name, child) in &agents {
        println!(
            "  agent     {name} (pid {})",
            child.id().unwrap_or_default()
        );
    }
    println!("  logs      {}", logs.display());

    let outcome = if args.demo {
        demo(&jetstream).await
    } else {
        println!("Ctrl-C stops everything.");
        choreo_bus::shutdown::signal().await;
        Ok(())
    };
    stop_agents(agents).await;
    outcome
}

async fn start_server(args: &UpArgs) -> Result<NatsServer, Failure> {
    let options = Options {
        dir: Some(args.dir.join("nats")),
        port: Some(args.port),
        args: Vec::new(),
    };
    NatsServer::start_with(options)
        .await
        .map_err(|err| match err {
            TestServerError::NotReady { log, .. } => Failure::unavailable(format!(
                "nats-server did not start on port {}: is the port in use? Pass --port, or \
             NATS_URL to use a running server. Its log:\n{log}",
                args.port
            )),
            other => Failure::unavailable(other.to_string()),
        })
}

/// The directory holding this binary, where `cargo build` also puts the agents.
fn binaries_dir() -> Result<PathBuf, Failure> {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .ok_or_else(|| Failure::unavailable("cannot tell where the choreo binary is"))
}

fn spawn_agent(name: &str, url: &str, logs: &Path) -> Result<Child, Failure> {
    let binary = binaries_dir()?.join(name);
    if !binary.is_file() {
        return Err(Failure::unavailable(format!(
            "agent binary {} not found: build every binary with `cargo build --bins`",
            binary.display()
        )));
    }
    let log_path = logs.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path).map_err(|err| {
        Failure::unavailable(format!("cannot write {}: {err}", log_path.display()))
    })?;
    let log_err = log
        .try_clone()
        .map_err(|err| Failure::unavailable(err.to_string()))?;
    Command::new(&binary)
        .env("NATS_URL", url)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| Failure::unavailable(format!("cannot start {}: {err}", binary.display())))
}

/// Asks each agent to stop (SIGTERM) and waits for it to drain; kills it after the grace.
async fn stop_agents(agents: Vec<(&str, Child)>) {
    for (_, child) in &agents {
        if let Some(pid) = child.id() {
            // Through kill(1): a clean SIGTERM without unsafe code or another dependency.
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
    }
    for (name, mut child) in agents {
        match tokio::time::timeout(STOP_GRACE, child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => eprintln!("choreo: agent {name} exited with {status}"),
            Ok(Err(err)) => eprintln!("choreo: agent {name}: {err}"),
            Err(_) => {
                eprintln!("choreo: agent {name} did not stop in {STOP_GRACE:?}; killing it");
                let _ = child.kill().await;
            }
        }
    }
}

/// Submits the sample text and prints the run until `report.written`.
async fn demo(jetstream: &jetstream::Context) -> Result<(), Failure> {
    let submitted = choreo_agent_counter::Submitted {
        text: DEMO_TEXT.to_string(),
    };
    let event_type = EventType::new(choreo_agent_counter::SUBMITTED)
        .map_err(|err| Failure::failed(err.to_string()))?;
    let emit =
        Emit::json(event_type, &submitted).map_err(|err| Failure::failed(err.to_string()))?;
    let publisher = Publisher::new(jetstream.clone(), Default::default());
    let published = publisher
        .publish_root(RootEvent::new(emit, "choreo-up-demo"))
        .await
        .map_err(|err| Failure::unavailable(err.to_string()))?;
    println!(
        "\nsubmitted a sample text as run {}\n",
        published.correlation_id
    );

    let watch = watch_run(jetstream, &published.correlation_id);
    match tokio::time::timeout(DEMO_TIMEOUT, watch).await {
        Ok(result) => result,
        Err(_) => Err(Failure::failed(format!(
            "the run did not reach {DEMO_DONE} within {DEMO_TIMEOUT:?}; see the agents' logs"
        ))),
    }
}

/// Prints each event of one run as it is stored, until the run's last step.
async fn watch_run(jetstream: &jetstream::Context, correlation_id: &str) -> Result<(), Failure> {
    let namespace = choreo_bus::Namespace::default();
    let query = LogQuery::filtered(namespace.correlation_filter(correlation_id)).until(Until::Live);
    let mut reader = LogReader::open(jetstream, &namespace.stream_name(), query)
        .await
        .map_err(Failure::log)?;
    let mut started: Option<time::OffsetDateTime> = None;
    println!(
        "{:>8}  {:<15} {:<16} {:>5}  caused by",
        "at", "source", "type", "depth"
    );
    while let Some(record) = reader.next().await.map_err(Failure::log)? {
        let event = record
            .decode()
            .map_err(|err| Failure::failed(format!("undecodable event in the run: {err}")))?;
        let at = choreo_bus::envelope::event_time(&event);
        let offset = match (started, at) {
            (Some(start), Some(at)) => (at - start).whole_milliseconds(),
            _ => {
                started = at;
                0
            }
        };
        println!(
            "{:>6}ms  {:<15} {:<16} {:>5}  {}",
            offset,
            event.source,
            event.r#type,
            event.depth,
            if event.causation_id.is_empty() {
                "-"
            } else {
                &event.causation_id
            }
        );
        if event.r#type == DEMO_DONE {
            println!("\n{}", String::from_utf8_lossy(&event.data));
            return Ok(());
        }
    }
    Err(Failure::failed(
        "the event stream ended before the run completed",
    ))
}
