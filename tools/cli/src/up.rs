//! `choreo up`: a nats-server (unless `NATS_URL` names one) with its store in a project-local
//! folder, the streams, every agent of the review team as its own process, and the HTTP
//! gateway. `--demo` instead submits a sample change (without the gateway), prints its events
//! as they are stored, and when the review is delivered prints the run's trace and the report,
//! then stops everything.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream;
use choreo_bus::log::{LogQuery, LogReader, Until};
use choreo_bus::{NatsConfig, Publisher, RootEvent, StreamsConfig};
use choreo_local_nats::process::{AgentProcess, sibling_binary};
use choreo_local_nats::{NatsServer, Options, TestServerError};
use choreo_review::events::{DELIVERED, REQUESTED};

use crate::Failure;

/// The agents `up` starts, by binary name: the review team.
pub const AGENTS: [&str; 9] = choreo_review::TEAM;
/// How long a demo review may take.
const DEMO_TIMEOUT: Duration = Duration::from_secs(60);
/// How long agents get to drain after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(15);

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
    /// Where the HTTP gateway listens (not started with --demo).
    #[arg(long, default_value = "127.0.0.1:8080")]
    gateway_listen: std::net::SocketAddr,
    /// Do not start the HTTP gateway.
    #[arg(long)]
    no_gateway: bool,
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
        .map_err(Failure::setup)?;

    let logs = args.dir.join("logs");
    std::fs::create_dir_all(&logs)
        .map_err(|err| Failure::unavailable(format!("cannot create {}: {err}", logs.display())))?;
    let reports = std::env::var_os("CHOREO_REPORTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| args.dir.join("reports"));
    let mut agents = Vec::new();
    for name in AGENTS {
        let binary = sibling_binary(name).map_err(|err| Failure::unavailable(err.to_string()))?;
        let env = [
            ("NATS_URL", url.clone()),
            ("CHOREO_REPORTS_DIR", reports.display().to_string()),
        ];
        let agent = AgentProcess::start(&binary, env, &logs.join(format!("{name}.log")))
            .map_err(|err| Failure::unavailable(err.to_string()))?;
        agents.push(agent);
    }

    let gateway = if args.demo || args.no_gateway {
        None
    } else {
        Some(start_gateway(&args, &url, &logs)?)
    };

    println!("choreo is up");
    println!("  NATS      {url}");
    for agent in &agents {
        println!(
            "  agent     {} (pid {})",
            agent.name(),
            agent.pid().unwrap_or_default()
        );
    }
    if let Some((process, token_file)) = &gateway {
        let tokens = match token_file {
            Some(path) => format!("token in {}", path.display()),
            None => "tokens from CHOREO_GATEWAY_TOKENS".to_string(),
        };
        println!(
            "  gateway   http://{} (pid {}; {tokens})",
            args.gateway_listen,
            process.pid().unwrap_or_default()
        );
    }
    println!("  logs      {}", logs.display());
    println!("  reports   {}", reports.display());
    println!(
        "  try       git diff | choreo review --title \"my change\"   (then: choreo state, choreo trace RUN)"
    );

    let outcome = if args.demo {
        demo(&jetstream).await
    } else {
        if let Some((_, Some(token_file))) = &gateway {
            println!(
                "  or        curl -H \"Authorization: Bearer $(cat {})\" --json '{{\"type\": \"hello.world\"}}' http://{}/v1/events",
                token_file.display(),
                args.gateway_listen
            );
        }
        println!("Ctrl-C stops everything.");
        agents.extend(gateway.map(|(process, _)| process));
        choreo_bus::shutdown::signal().await;
        Ok(())
    };
    stop_agents(agents).await;
    outcome
}

/// Where `up` keeps the gateway's local token, under `--dir`.
const GATEWAY_TOKEN_FILE: &str = "gateway-token";

/// Starts the gateway. With `CHOREO_GATEWAY_TOKENS` set it uses those tokens; otherwise it
/// gets one token, `local`, allowed every type, kept in `<dir>/gateway-token` (readable by
/// this user only). Returns the process and that file, when `up` made the token.
fn start_gateway(
    args: &UpArgs,
    url: &str,
    logs: &std::path::Path,
) -> Result<(AgentProcess, Option<PathBuf>), Failure> {
    let binary =
        sibling_binary("choreo-gateway").map_err(|err| Failure::unavailable(err.to_string()))?;
    let mut env = vec![
        ("NATS_URL", url.to_string()),
        ("CHOREO_GATEWAY_LISTEN", args.gateway_listen.to_string()),
    ];
    let token_file = if std::env::var_os("CHOREO_GATEWAY_TOKENS").is_some() {
        None
    } else {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let path = args.dir.join(GATEWAY_TOKEN_FILE);
        write_private(&path, &token).map_err(|err| {
            Failure::unavailable(format!("cannot write {}: {err}", path.display()))
        })?;
        env.push(("CHOREO_GATEWAY_TOKENS", format!("local={token}:*")));
        Some(path)
    };
    let process = AgentProcess::start(&binary, env, &logs.join("choreo-gateway.log"))
        .map_err(|err| Failure::unavailable(err.to_string()))?;
    Ok((process, token_file))
}

/// Writes a secret to a file only this user can read.
fn write_private(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(secret.as_bytes())
}

async fn start_server(args: &UpArgs) -> Result<NatsServer, Failure> {
    let options = Options {
        dir: Some(args.dir.join("nats")),
        port: Some(args.port),
        ..Options::default()
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

/// Asks each agent to stop (SIGTERM) and waits for it to drain; kills it after the grace.
async fn stop_agents(agents: Vec<AgentProcess>) {
    let stops = agents.into_iter().map(|mut agent| async move {
        match agent.terminate(STOP_GRACE).await {
            Some(status) if status.success() => {}
            Some(status) => eprintln!("choreo: agent {} exited with {status}", agent.name()),
            None => eprintln!(
                "choreo: agent {} did not stop in {STOP_GRACE:?}; killed it",
                agent.name()
            ),
        }
    });
    futures::future::join_all(stops).await;
}

/// Submits the sample change, prints the run until the report is delivered, then its trace
/// and the report.
async fn demo(jetstream: &jetstream::Context) -> Result<(), Failure> {
    let request = choreo_review::samples::refunds_request();
    let emit = choreo_review::emit_json(REQUESTED, &request)
        .map_err(|err| Failure::failed(err.to_string()))?;
    let publisher = Publisher::new(jetstream.clone(), Default::default());
    let published = publisher
        .publish_root(RootEvent::new(emit, "choreo-up-demo"))
        .await
        .map_err(|err| Failure::unavailable(err.to_string()))?;
    let correlation_id = published.correlation_id;
    println!("\nsubmitted the sample change for review as run {correlation_id}\n");

    let watch = watch_run(jetstream, &correlation_id);
    let delivered = match tokio::time::timeout(DEMO_TIMEOUT, watch).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(Failure::failed(format!(
                "the review was not delivered within {DEMO_TIMEOUT:?}; see the agents' logs \
                 and `choreo trace {correlation_id}`"
            )));
        }
    };
    let trace = crate::trace::read(
        jetstream,
        &choreo_bus::Namespace::default(),
        &correlation_id,
    )
    .await?;
    println!("\nthe run's trace (choreo trace {correlation_id}):\n");
    print!("{}", crate::trace::tree(&trace, false));
    println!("\nthe report ({}):\n", delivered.target);
    if let Ok(report) = std::fs::read_to_string(&delivered.target) {
        println!("{report}");
    }
    Ok(())
}

/// Prints each event of one run as it is stored, until the report is delivered.
async fn watch_run(
    jetstream: &jetstream::Context,
    correlation_id: &str,
) -> Result<choreo_review::events::ReviewDelivered, Failure> {
    let namespace = choreo_bus::Namespace::default();
    let query = LogQuery::filtered(namespace.correlation_filter(correlation_id)).until(Until::Live);
    let mut reader = LogReader::open(jetstream, &namespace.stream_name(), query)
        .await
        .map_err(Failure::log)?;
    let mut started: Option<time::OffsetDateTime> = None;
    println!(
        "{:>8}  {:<15} {:<28} {:>5}",
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
            "{:>6}ms  {:<15} {:<28} {:>5}",
            offset, event.source, event.r#type, event.depth
        );
        if event.r#type == DELIVERED {
            return serde_json::from_slice(&event.data)
                .map_err(|err| Failure::failed(format!("review.delivered is not JSON: {err}")));
        }
    }
    Err(Failure::failed(
        "the event stream ended before the review was delivered",
    ))
}
