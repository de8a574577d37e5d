//! Least-privilege credentials against a real nats-server running what `choreo auth` wrote:
//! the review team works with every agent on its own nkey; one agent's credentials are refused
//! everything outside its manifest, and the refusal comes back named; the gateway's cannot
//! publish a type its tokens do not allow; and a server that requires TLS refuses a plain
//! connection while the generated CA lets a client in.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use choreo_bus::permissions::{Operation, Refusal, refused_or};
use choreo_bus::runtime::RuntimeError;
use choreo_bus::{
    Agent, Emit, EventType, NatsConfig, Publisher, RootEvent, StreamsConfig, ensure_streams,
    handler_fn,
};
use choreo_local_nats::process::sibling_binary;
use choreo_local_nats::{NatsServer, Options};
use choreo_review::events::{COMPLETED, DELIVERED, REQUESTED};
use choreo_review::samples::refunds_request;
use choreo_testkit::team::{TEAM, Team};
use choreo_testkit::{Bus, wait_until};
use tempfile::TempDir;

/// How long a refusal may take to come back: the server says it at once.
const REFUSED_WITHIN: Duration = Duration::from_secs(5);

/// Runs the `choreo` binary with `args`; its stdout, or the failure with its stderr.
fn choreo(args: &[&str]) -> anyhow::Result<String> {
    let output = std::process::Command::new(sibling_binary("choreo")?)
        .args(args)
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "choreo {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// A server running the authorization `choreo auth generate` wrote for the review team (the
/// gateway allowed `review.requested`), with the streams set up by the `streams` user, and the
/// operators' connection as the test's `Bus`.
struct Secured {
    bus: Bus,
    dir: TempDir,
}

impl Secured {
    async fn start() -> anyhow::Result<Secured> {
        let dir = tempfile::tempdir()?;
        let agents_dir = sibling_binary("choreo-triage")?
            .parent()
            .context("the binaries' folder")?
            .to_path_buf();
        let out = dir.path().join("auth");
        choreo(&[
            "auth",
            "generate",
            "--agents-dir",
            &agents_dir.display().to_string(),
            "--out",
            &out.display().to_string(),
            "--gateway-types",
            REQUESTED,
        ])?;
        let server = NatsServer::start_with(Options {
            config_includes: vec![out.join("auth.conf")],
            ..Options::default()
        })
        .await?;
        let url = server.url();
        let streams = as_user(&url, dir.path(), "streams").connect().await?;
        ensure_streams(&jetstream::new(streams), &StreamsConfig::default()).await?;
        let bus = Bus::on(server, as_user(&url, dir.path(), "operator")).await?;
        Ok(Secured { bus, dir })
    }

    fn user(&self, user: &str) -> NatsConfig {
        as_user(&self.bus.server.url(), self.dir.path(), user)
    }

    fn seed_file(&self, user: &str) -> PathBuf {
        self.dir.path().join("auth").join(format!("{user}.nk"))
    }
}

/// The connection settings a process given `user`'s generated environment would have.
fn as_user(url: &str, dir: &Path, user: &str) -> NatsConfig {
    let env =
        std::fs::read_to_string(dir.join("auth").join(format!("{user}.env"))).unwrap_or_default();
    let config = NatsConfig::from_vars(|name| {
        if name == "NATS_URL" {
            return Some(url.to_string());
        }
        env.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_string)
    });
    config.unwrap_or_else(|_| NatsConfig::new(url))
}

/// Runs `act` and waits for the server to refuse something `filter` matches; the refusal.
async fn refusal_of(filter: &str, act: impl std::future::Future) -> anyhow::Result<Refusal> {
    let outcome = refused_or(filter, async {
        act.await;
        tokio::time::sleep(REFUSED_WITHIN).await;
    })
    .await;
    match outcome {
        Err(refusal) => Ok(refusal),
        Ok(()) => anyhow::bail!("nothing matching {filter} was refused within {REFUSED_WITHIN:?}"),
    }
}

fn root(event_type: &str) -> anyhow::Result<RootEvent> {
    Ok(RootEvent::new(
        Emit::json(EventType::new(event_type)?, &refunds_request())?,
        "test",
    ))
}

#[tokio::test]
async fn the_review_team_completes_a_review_each_agent_on_its_own_credentials() -> anyhow::Result<()>
{
    let secured = Secured::start().await?;
    let mut team = Team::new(secured.bus.server.url())?;
    for binary in TEAM {
        let agent = binary.trim_start_matches("choreo-");
        let seed = secured.seed_file(agent);
        team.start(
            binary,
            &[
                ("NATS_NKEY_SEED_FILE", &seed.display().to_string()),
                ("NATS_INBOX_PREFIX", &format!("_INBOX_{agent}")),
            ],
        )?;
    }
    // The request comes in as the gateway would send it.
    let gateway = secured.user("gateway").connect().await?;
    let publisher = Publisher::new(jetstream::new(gateway), Default::default());
    let run = publisher
        .publish_root(root(REQUESTED)?)
        .await?
        .correlation_id;

    let bus = &secured.bus;
    let delivered = wait_until(&format!("run {run} delivered"), || async {
        Ok(!bus
            .events(&format!("events.{run}.{DELIVERED}"))
            .await?
            .is_empty())
    })
    .await;
    let logs = team.logs();
    delivered.with_context(|| logs.clone())?;
    assert_eq!(
        bus.events(&format!("events.{run}.{COMPLETED}"))
            .await?
            .len(),
        1
    );
    assert!(
        !logs.contains("Permissions Violation") && !logs.contains("refused to let"),
        "an agent was refused something its manifest lists:\n{logs}"
    );
    team.stop().await;
    Ok(())
}

#[tokio::test]
async fn one_agents_credentials_are_refused_everything_outside_its_manifest() -> anyhow::Result<()>
{
    let secured = Secured::start().await?;
    let bus = &secured.bus;
    // The editor's consumer, with a delivery waiting in it.
    let events = bus.jetstream.get_stream("EVENTS").await?;
    let editors = events
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("editor".into()),
            filter_subject: format!("events.*.{COMPLETED}"),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    bus.publish(COMPLETED, serde_json::json!({}), None).await?;

    let triage = secured.user("triage").connect().await?;
    let triage_js = jetstream::new(triage.clone());

    // Publishing a type triage does not emit: the Publisher's confirmation is the refusal.
    let publisher = Publisher::new(triage_js.clone(), Default::default());
    let approved = root("review.approved")?.into_event()?;
    let subject = format!("events.{}.review.approved", approved.correlation_id);
    let refused = forbidden(&publisher, &approved)
        .await
        .context("the server refuses triage publishing review.approved")?;
    assert_eq!(refused.operation, Operation::Publish);
    assert_eq!(refused.subject, subject);
    assert!(
        refused.to_string().contains(&format!("`{subject}`")),
        "{refused}"
    );
    assert!(
        bus.events(&format!("events.{}.>", approved.correlation_id))
            .await?
            .is_empty(),
        "nothing refused is stored"
    );

    // Fetching from the editor's consumer: neither its info nor its next message.
    let stream = triage_js.get_stream_no_info("EVENTS").await?;
    let refused = refusal_of("$JS.API.>", stream.consumer_info("editor")).await?;
    assert_eq!(refused.subject, "$JS.API.CONSUMER.INFO.EVENTS.editor");
    let refused = refusal_of(
        "$JS.API.>",
        triage.request(
            "$JS.API.CONSUMER.MSG.NEXT.EVENTS.editor",
            r#"{"batch":1,"expires":1000000000}"#.into(),
        ),
    )
    .await?;
    assert_eq!(refused.subject, "$JS.API.CONSUMER.MSG.NEXT.EVENTS.editor");

    // Acking the editor's delivery: refused, and the delivery stays unacknowledged.
    let mut fetched = editors.fetch().max_messages(1).messages().await?;
    let delivery = futures::StreamExt::next(&mut fetched)
        .await
        .context("the editor's consumer delivers")?
        .map_err(|err| anyhow::anyhow!("{err}"))?;
    let ack = delivery
        .reply
        .clone()
        .context("a delivery has a reply subject")?;
    assert!(ack.starts_with("$JS.ACK.EVENTS.editor."), "{ack}");
    let refused = refusal_of("$JS.ACK.>", triage.publish(ack.clone(), "+ACK".into())).await?;
    assert_eq!(refused.subject, ack.as_str());
    let info = events.consumer_info("editor").await?;
    assert_eq!(info.num_ack_pending, 1, "triage's ack did not count");

    // Reading the events, or another process's inbox.
    for forbidden in ["events.>", "_INBOX_editor.>", "_INBOX.>"] {
        let refused = refusal_of(forbidden, triage.subscribe(forbidden)).await?;
        assert_eq!(refused.operation, Operation::Subscribe);
        assert_eq!(refused.subject, forbidden);
    }
    Ok(())
}

#[tokio::test]
async fn an_agent_started_on_another_agents_credentials_stops_naming_what_was_refused()
-> anyhow::Result<()> {
    let secured = Secured::start().await?;
    let editor = Agent::builder("editor")
        .subscribes(COMPLETED)
        .emits("review.approved")
        .build()?;
    let client = secured.user("triage").connect().await?;
    let started = tokio::time::timeout(
        Duration::from_secs(10),
        choreo_bus::Runtime::new(client, editor, handler_fn(|_| async { Ok(Vec::new()) }))
            .run(std::future::pending::<()>()),
    )
    .await
    .context("the runtime gave up within 10 s, not at JetStream's timeout")?;
    let err = started.expect_err("triage's credentials cannot bind the editor's consumer");
    match &err {
        RuntimeError::Refused { agent, refusal } => {
            assert_eq!(agent, "editor");
            assert!(
                refusal
                    .subject
                    .starts_with("$JS.API.CONSUMER.CREATE.EVENTS.editor"),
                "{refusal}"
            );
        }
        other => panic!("not a refusal: {other}"),
    }
    assert!(!err.is_retryable());
    assert!(
        err.to_string()
            .contains("$JS.API.CONSUMER.CREATE.EVENTS.editor"),
        "{err}"
    );

    // The agent's binary, given triage's user: it stops with exit code 77, naming the subject.
    let output = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(sibling_binary("choreo-editor")?)
            .env("NATS_URL", secured.bus.server.url())
            .env("NATS_NKEY_SEED_FILE", secured.seed_file("triage"))
            .env("NATS_INBOX_PREFIX", "_INBOX_triage")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("choreo-editor on triage's credentials did not stop")??;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(77), "{said}");
    assert!(
        said.contains("agent editor cannot start")
            && said.contains("$JS.API.CONSUMER.CREATE.EVENTS.editor"),
        "{said}"
    );
    Ok(())
}

#[tokio::test]
async fn the_gateways_credentials_publish_requests_and_cannot_approve() -> anyhow::Result<()> {
    let secured = Secured::start().await?;
    let gateway = secured.user("gateway").connect().await?;
    let publisher = Publisher::new(jetstream::new(gateway), Default::default());
    publisher.publish_root(root(REQUESTED)?).await?;

    let approved = root("review.approved")?.into_event()?;
    let subject = format!("events.{}.review.approved", approved.correlation_id);
    let refused = forbidden(&publisher, &approved)
        .await
        .context("the gateway may not publish review.approved")?;
    assert_eq!(refused.subject, subject);
    Ok(())
}

/// The refusal the publisher's confirmation of `event` ends with; an error saying what came
/// instead otherwise.
async fn forbidden(publisher: &Publisher, event: &choreo_bus::Event) -> anyhow::Result<Refusal> {
    let confirmed = match publisher.send_event(event).await {
        Ok(pending) => pending.confirmed().await,
        Err(err) => Err(err),
    };
    match confirmed {
        Err(choreo_bus::PublishError::Forbidden(refusal)) => Ok(refusal),
        other => anyhow::bail!("expected a refusal, got {other:?}"),
    }
}

/// Reads one line the server sends.
async fn line(reader: &mut (impl tokio::io::AsyncBufRead + Unpin)) -> anyhow::Result<String> {
    use tokio::io::AsyncBufReadExt as _;
    let mut line = String::new();
    tokio::time::timeout(REFUSED_WITHIN, reader.read_line(&mut line)).await??;
    Ok(line)
}

#[tokio::test]
async fn with_tls_required_a_plain_connection_is_refused_and_the_generated_ca_lets_in()
-> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("tls");
    choreo(&["auth", "tls", "--out", &out.display().to_string()])?;
    let server = NatsServer::start_with(Options {
        config_includes: vec![out.join("tls.conf")],
        ..Options::default()
    })
    .await?;
    let url = server.url();

    // A client that speaks plain NATS: told TLS is required, and refused.
    let address = url.trim_start_matches("nats://");
    let stream = tokio::net::TcpStream::connect(address).await?;
    let (read, mut write) = stream.into_split();
    let mut read = tokio::io::BufReader::new(read);
    let info = line(&mut read).await?;
    assert!(info.contains(r#""tls_required":true"#), "{info}");
    write
        .write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n")
        .await?;
    let answer = line(&mut read).await.unwrap_or_default();
    assert!(
        answer.is_empty() || answer.contains("TLS Required"),
        "a plain client was answered {answer:?}"
    );

    // choreo's client without the CA: the server's certificate is not trusted.
    let untrusted = NatsConfig::new(&url).connect().await;
    assert!(untrusted.is_err(), "connected without trusting the CA");

    // With the CA and NATS_REQUIRE_TLS, as the README says.
    let ca = out.join("ca.pem").display().to_string();
    let config = NatsConfig::from_vars(|name| match name {
        "NATS_URL" => Some(url.clone()),
        "NATS_TLS_CA" => Some(ca.clone()),
        "NATS_REQUIRE_TLS" => Some("true".into()),
        _ => None,
    })?;
    let client = config.connect().await?;
    jetstream::new(client).query_account().await?;

    // NATS_REQUIRE_TLS refuses a server that offers none.
    let plain = NatsServer::start().await?;
    let refused = NatsConfig {
        require_tls: true,
        ..NatsConfig::new(plain.url())
    }
    .connect()
    .await;
    assert!(
        refused.is_err(),
        "NATS_REQUIRE_TLS connected to a plain server"
    );
    Ok(())
}
