//! The `choreo` log tools end to end: the binary run against a real nats-server while agents
//! handle events in this process. Each test names the command it proves.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::process::Output;

use anyhow::Context as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use choreo_bus::dead_letter::DEAD_LETTERED;
use choreo_bus::projection::{Projection as _, run_board::RunBoard};
use choreo_bus::{Agent, Emit, HandlerError, Incoming, Namespace, RuntimeConfig, handler_fn};
use choreo_testkit::cli::{choreo as choreo_at, expect_code, stderr, stdout};
use choreo_testkit::{Bus, Running, event_type, quick_config, wait_until};
use serde_json::{Value, json};

/// Runs `choreo ARGS` against `bus` and returns what it did.
async fn choreo(bus: &Bus, args: &[&str]) -> anyhow::Result<Output> {
    choreo_at(&bus.server.url(), args).await
}

/// Three agents in a line: `a.requested` → relay-a → `b.done` → relay-b → `c.done` → sink →
/// `d.done`. relay-b puts `n` in its payload, so two builds of the team can differ; the sink
/// refuses everything while `broken` is set.
struct Team {
    agents: Vec<Running>,
    relay_b_handled: Arc<AtomicU32>,
}

async fn team(bus: &Bus, namespace: &str, n: i64, broken: Arc<AtomicBool>) -> anyhow::Result<Team> {
    let config = RuntimeConfig {
        namespace: Namespace::new(namespace)?,
        ..quick_config()
    };
    let relay = |name: &str, from: &str, to: &str| {
        Agent::builder(name)
            .subscribes(from)
            .emits(to)
            .build()
            .expect("valid agent")
    };
    let relay_a = handler_fn(|event: Incoming| async move {
        let data: Value =
            choreo_bus::envelope::json_data(&event.event).map_err(HandlerError::permanent)?;
        Ok(vec![
            Emit::json(event_type("b.done"), &json!({"seen": data}))
                .map_err(HandlerError::permanent)?,
        ])
    });
    let relay_b_handled = Arc::new(AtomicU32::new(0));
    let relay_b = {
        let handled = Arc::clone(&relay_b_handled);
        handler_fn(move |_event: Incoming| {
            handled.fetch_add(1, Ordering::SeqCst);
            async move {
                Ok(vec![
                    Emit::json(event_type("c.done"), &json!({"n": n}))
                        .map_err(HandlerError::permanent)?,
                ])
            }
        })
    };
    let sink = handler_fn(move |_event: Incoming| {
        let broken = broken.load(Ordering::SeqCst);
        async move {
            if broken {
                return Err(HandlerError::permanent("the sink is broken"));
            }
            Ok(vec![
                Emit::json(event_type("d.done"), &json!({})).map_err(HandlerError::permanent)?,
            ])
        }
    });
    let agents = vec![
        bus.run(
            relay("relay-a", "a.requested", "b.done"),
            relay_a,
            config.clone(),
        )
        .await?,
        bus.run(
            relay("relay-b", "b.done", "c.done"),
            relay_b,
            config.clone(),
        )
        .await?,
        bus.run(relay("sink", "c.done", "d.done"), sink, config)
            .await?,
    ];
    Ok(Team {
        agents,
        relay_b_handled,
    })
}

impl Team {
    async fn stop(self) -> anyhow::Result<()> {
        for agent in self.agents {
            agent.stop().await?;
        }
        Ok(())
    }
}

async fn has_event(bus: &Bus, filter: &str, event_type: &str) -> anyhow::Result<bool> {
    Ok(bus
        .events(filter)
        .await?
        .iter()
        .any(|e| e.r#type == event_type))
}

#[tokio::test]
async fn publish_then_trace_shows_a_three_hop_run_with_its_dead_letter() -> anyhow::Result<()> {
    let bus = Bus::start().await?;
    let team = team(&bus, "events", 1, Arc::new(AtomicBool::new(true))).await?;

    let published = choreo(
        &bus,
        &[
            "publish",
            "a.requested",
            "--data",
            r#"{"x": 1}"#,
            "--correlation",
            "run-1",
        ],
    )
    .await?;
    expect_code(&published, 0);
    assert!(
        stdout(&published).contains("run run-1"),
        "{}",
        stdout(&published)
    );
    wait_until("the sink gives up", || async {
        has_event(&bus, "events.run-1.>", DEAD_LETTERED).await
    })
    .await?;
    team.stop().await?;

    let tree = choreo(&bus, &["trace", "run-1", "--verbose"]).await?;
    expect_code(&tree, 0);
    let text = stdout(&tree);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].contains("3 events, 1 dead-lettered"), "{text}");
    // Each event, then each agent's handling of it, then (verbose) its id and payload.
    let line = |needle: &str| {
        lines
            .iter()
            .position(|line| line.contains(needle))
            .unwrap_or_else(|| panic!("a line with {needle:?} in\n{text}"))
    };
    let root = line("a.requested  [cli]  depth 0  → handled by relay-a");
    let relay_a = line("▸ relay-a emitted: received +");
    let b = line("└─ b.done  [relay-a]  depth 1  → handled by relay-b");
    let c = line(
        "└─ c.done  [relay-b]  depth 2  → DEAD-LETTERED by sink: handler_rejected (the sink is broken)",
    );
    let sink = line("▸ sink failed: received +");
    assert!(root < relay_a && relay_a < b && b < c && c < sink, "{text}");
    assert!(lines[sink].contains("(the sink is broken)"), "{text}");
    assert!(
        text.contains(r#"data {"x":1}"#),
        "--verbose prints the payload: {text}"
    );

    let json = choreo(&bus, &["trace", "run-1", "--format", "json"]).await?;
    expect_code(&json, 0);
    let document: Value = serde_json::from_str(&stdout(&json))?;
    assert_eq!(document["nodes"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        document["messages_read"], 5,
        "three events, the dead letter's notice and the failed handling's"
    );
    assert_eq!(document["nodes"][2]["handlings"][0]["end"], "failed");
    assert_eq!(document["nodes"][2]["dead_letters"][0]["agent"], "sink");

    let mermaid = stdout(&choreo(&bus, &["trace", "run-1", "--format", "mermaid"]).await?);
    assert!(
        mermaid.starts_with("flowchart TD") && mermaid.contains("dead letter: handler_rejected"),
        "{mermaid}"
    );
    let dot = stdout(&choreo(&bus, &["trace", "run-1", "--format", "dot"]).await?);
    assert!(
        dot.starts_with("digraph") && dot.matches("->").count() == 3,
        "{dot}"
    );

    let dir = tempfile::tempdir()?;
    let page = dir.path().join("run.html");
    let html = choreo(
        &bus,
        &[
            "trace",
            "run-1",
            "--format",
            "html",
            "--output",
            page.to_str().unwrap(),
        ],
    )
    .await?;
    expect_code(&html, 0);
    let page = std::fs::read_to_string(&page)?;
    assert!(page.contains("<svg") && page.contains("c.done") && page.contains("handler_rejected"));
    for agent in ["relay-a", "relay-b", "sink"] {
        assert!(
            page.contains(&format!("<g class=\"handling\" data-agent=\"{agent}\">")),
            "a bar for {agent}'s handling"
        );
    }
    assert!(
        !page.contains("<script") && !page.contains("src=\"http"),
        "self-contained"
    );
    Ok(())
}

#[tokio::test]
async fn replay_into_a_sandbox_reruns_the_run_and_diff_names_what_changed() -> anyhow::Result<()> {
    let bus = Bus::start().await?;
    let fixed = Arc::new(AtomicBool::new(false));
    let production = team(&bus, "events", 1, Arc::clone(&fixed)).await?;

    expect_code(
        &choreo(
            &bus,
            &[
                "publish",
                "a.requested",
                "--data",
                "{}",
                "--correlation",
                "run-1",
            ],
        )
        .await?,
        0,
    );
    wait_until("the run completes", || async {
        has_event(&bus, "events.run-1.>", "d.done").await
    })
    .await?;

    let listed = choreo(&bus, &["replay", "--correlation", "run-1"]).await?;
    expect_code(&listed, 0);
    let text = stdout(&listed);
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(!text.contains('\u{1b}'), "no progress bar when piped");
    let as_json = stdout(&choreo(&bus, &["replay", "--type", "b.done", "--json"]).await?);
    let line: Value = serde_json::from_str(as_json.trim())?;
    assert_eq!(
        (line["specversion"].as_str(), line["type"].as_str()),
        (Some("1.0"), Some("b.done"))
    );

    let copied = choreo(
        &bus,
        &["replay", "--correlation", "run-1", "--into", "sandbox"],
    )
    .await?;
    expect_code(&copied, 0);
    assert!(
        stdout(&copied).contains("choreo diff events/run-1 sandbox/run-1"),
        "{}",
        stdout(&copied)
    );
    // The new build, started in the sandbox: relay-b says n = 2.
    let sandbox = team(&bus, "sandbox", 2, fixed).await?;
    wait_until("the sandbox run completes", || async {
        Ok(bus
            .raw("EVENTS_SANDBOX", "sandbox.run-1.d.done")
            .await?
            .len()
            == 1)
    })
    .await?;
    let again = choreo(
        &bus,
        &["replay", "--correlation", "run-1", "--into", "sandbox"],
    )
    .await?;
    expect_code(&again, 1);
    assert!(
        stderr(&again).contains("already has a run run-1"),
        "{}",
        stderr(&again)
    );

    let diff = choreo(&bus, &["diff", "run-1", "sandbox/run-1"]).await?;
    expect_code(&diff, 1);
    let text = stdout(&diff);
    assert!(
        text.contains("~ payload differs: a.requested [cli] > b.done [relay-a] > c.done [relay-b]"),
        "{text}"
    );
    assert!(
        text.contains(r#"A {"n":1}"#) && text.contains(r#"B {"n":2}"#),
        "{text}"
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with(['-', '+', '~']))
            .count(),
        1,
        "{text}"
    );
    expect_code(&choreo(&bus, &["diff", "run-1", "events/run-1"]).await?, 0);

    production.stop().await?;
    sandbox.stop().await?;
    Ok(())
}

#[tokio::test]
async fn state_at_a_past_time_differs_from_now() -> anyhow::Result<()> {
    let bus = Bus::start().await?;
    let broken = Arc::new(AtomicBool::new(false));
    let team = team(&bus, "events", 1, Arc::clone(&broken)).await?;

    expect_code(
        &choreo(&bus, &["publish", "a.requested", "--correlation", "run-1"]).await?,
        0,
    );
    wait_until("run 1 completes", || async {
        has_event(&bus, "events.run-1.>", "d.done").await
    })
    .await?;
    let run_one_done = bus
        .raw("EVENTS", "events.>")
        .await?
        .last()
        .expect("events")
        .clone();
    // The state must not depend on sub-second timing: the next event is stored a moment later.
    let between = run_one_done.time + time::Duration::milliseconds(1);
    wait_until("the clock passes the last event", || async {
        Ok(time::OffsetDateTime::now_utc() > between + time::Duration::milliseconds(5))
    })
    .await?;
    broken.store(true, Ordering::SeqCst);
    expect_code(
        &choreo(&bus, &["publish", "a.requested", "--correlation", "run-2"]).await?,
        0,
    );
    wait_until("run 2 fails", || async {
        has_event(&bus, "events.run-2.>", DEAD_LETTERED).await
    })
    .await?;
    wait_until("the agents have acknowledged everything", || async {
        let out = choreo(&bus, &["state", "--json", "--no-snapshot"]).await?;
        Ok(!stdout(&out).contains("pending"))
    })
    .await?;

    let at = time::format_description::well_known::Rfc3339;
    let past = choreo(&bus, &["state", "--json", "--at", &between.format(&at)?]).await?;
    expect_code(&past, 0);
    let past: Value = serde_json::from_str(&stdout(&past))?;
    let runs = past["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1, "{past}");
    assert_eq!(
        (
            runs[0]["correlation_id"].as_str(),
            runs[0]["status"].as_str()
        ),
        (Some("run-1"), Some("complete"))
    );
    assert_eq!(runs[0]["events"], 4);

    let now = choreo(&bus, &["state", "--json"]).await?;
    expect_code(&now, 0);
    let now: Value = serde_json::from_str(&stdout(&now))?;
    let statuses: Vec<(&str, &str)> = now["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| {
            (
                r["correlation_id"].as_str().unwrap(),
                r["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(statuses, vec![("run-1", "complete"), ("run-2", "failed")]);

    // The same point by sequence, and from the snapshot the last call saved.
    let by_sequence = choreo(
        &bus,
        &[
            "state",
            "--json",
            "--seq",
            &run_one_done.sequence.to_string(),
        ],
    )
    .await?;
    let by_sequence: Value = serde_json::from_str(&stdout(&by_sequence))?;
    assert_eq!(by_sequence["runs"], past["runs"]);
    let kv = async_nats::jetstream::new(bus.client.clone())
        .get_key_value("CHOREO_SNAPSHOTS")
        .await?;
    assert!(
        kv.get(format!("events.{}", RunBoard::NAME))
            .await?
            .is_some(),
        "state saved a snapshot"
    );
    let from_snapshot: Value =
        serde_json::from_str(&stdout(&choreo(&bus, &["state", "--json"]).await?))?;
    assert_eq!(from_snapshot["runs"], now["runs"]);

    let detail = stdout(&choreo(&bus, &["state", "--correlation", "run-2"]).await?);
    assert!(
        detail.contains("dead letter 1: sink gave up on c.done"),
        "{detail}"
    );
    team.stop().await?;
    Ok(())
}

#[tokio::test]
async fn dlq_redrive_completes_a_run_that_had_failed() -> anyhow::Result<()> {
    let bus = Bus::start().await?;
    let broken = Arc::new(AtomicBool::new(true));
    let team = team(&bus, "events", 1, Arc::clone(&broken)).await?;
    expect_code(
        &choreo(&bus, &["publish", "a.requested", "--correlation", "run-1"]).await?,
        0,
    );
    wait_until("the sink gives up", || async {
        Ok(bus.dead_letters().await?.len() == 1)
    })
    .await?;

    let listed = choreo(&bus, &["dlq", "ls"]).await?;
    expect_code(&listed, 0);
    assert!(stdout(&listed).starts_with("1 "), "{}", stdout(&listed));
    assert!(
        stdout(&listed).contains("handler_rejected"),
        "{}",
        stdout(&listed)
    );
    let shown: Value = serde_json::from_str(&stdout(
        &choreo(&bus, &["dlq", "show", "1", "--json"]).await?,
    ))?;
    assert_eq!(shown["event"]["type"], "c.done");
    assert_eq!(shown["agent"], "sink");
    let filtered = stdout(&choreo(&bus, &["dlq", "ls", "--agent", "relay-b"]).await?);
    assert!(filtered.is_empty(), "{filtered}");

    broken.store(false, Ordering::SeqCst); // the fix
    let redrive = choreo(&bus, &["dlq", "redrive", "1"]).await?;
    expect_code(&redrive, 0);
    assert!(
        stdout(&redrive).contains("is back for sink"),
        "{}",
        stdout(&redrive)
    );
    wait_until("the run completes", || async {
        has_event(&bus, "events.run-1.>", "d.done").await
    })
    .await?;
    wait_until("the board says complete", || async {
        let out = choreo(&bus, &["state", "--json", "--correlation", "run-1"]).await?;
        Ok(stdout(&out).contains(r#""status":"complete""#))
    })
    .await?;
    assert_eq!(
        team.relay_b_handled.load(Ordering::SeqCst),
        1,
        "only the sink saw the redrive"
    );
    assert!(
        stdout(&choreo(&bus, &["dlq", "ls"]).await?).is_empty(),
        "the dead letter is gone"
    );
    let tree = stdout(&choreo(&bus, &["trace", "run-1"]).await?);
    assert!(
        tree.contains("redrive of dead letter 1 for sink") && tree.contains("d.done"),
        "{tree}"
    );
    team.stop().await?;
    Ok(())
}

#[tokio::test]
async fn tail_prints_events_as_they_are_stored() -> anyhow::Result<()> {
    let bus = Bus::start().await?;
    let mut tail = tokio::process::Command::new(env!("CARGO_BIN_EXE_choreo"))
        .args(["tail", "--json", "--type", "a.requested"])
        .env("NATS_URL", bus.server.url())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    // Wait for the tail to be listening: it says so on stderr.
    let mut errors = tokio::io::BufReader::new(tail.stderr.take().expect("stderr"));
    let mut line = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut errors, &mut line).await?;
    assert!(line.contains("tailing EVENTS"), "{line}");
    bus.publish("other.type", json!({}), Some("run-1")).await?;
    let published = bus
        .publish("a.requested", json!({"k": "v"}), Some("run-1"))
        .await?;
    let mut lines = tokio::io::BufReader::new(tail.stdout.take().expect("stdout"));
    let mut first = String::new();
    tokio::time::timeout(
        choreo_testkit::PATIENCE,
        tokio::io::AsyncBufReadExt::read_line(&mut lines, &mut first),
    )
    .await??;
    let event: Value = serde_json::from_str(&first)?;
    assert_eq!(
        event["id"],
        published.id.as_str(),
        "only the type asked for"
    );
    assert_eq!(event["data"], json!({"k": "v"}));
    tail.kill().await?;
    Ok(())
}

#[tokio::test]
async fn streams_ensure_and_info_describe_the_streams() -> anyhow::Result<()> {
    let bus = Bus::start().await?;
    let ensured = choreo(&bus, &["streams", "ensure"]).await?;
    expect_code(&ensured, 0);
    assert!(
        stdout(&ensured).contains("EVENTS           already set up"),
        "{}",
        stdout(&ensured)
    );
    let sandbox = choreo(&bus, &["streams", "ensure", "--namespace", "lab"]).await?;
    assert!(
        stdout(&sandbox).contains("EVENTS_LAB       created"),
        "{}",
        stdout(&sandbox)
    );
    bus.publish("a.requested", json!({}), None).await?;
    let team = team(&bus, "events", 1, Arc::new(AtomicBool::new(false))).await?;
    let info = choreo(&bus, &["streams", "info"]).await?;
    expect_code(&info, 0);
    assert!(
        stdout(&info).contains("consumer relay-a"),
        "{}",
        stdout(&info)
    );
    team.stop().await?;
    Ok(())
}

#[tokio::test]
async fn bad_input_gets_a_clear_message_and_a_meaningful_exit_code() -> anyhow::Result<()> {
    let bus = Bus::start().await?;
    let cases: [(&[&str], i32, &str); 10] = [
        (
            &["trace", "no-such-run"],
            66,
            "no run no-such-run in namespace events",
        ),
        (&["state", "--at", "yesterday-ish"], 64, "RFC 3339"),
        (
            &["publish", "a.requested", "--data", "{not json"],
            65,
            "is not JSON",
        ),
        (&["publish", "a..requested"], 65, "invalid type"),
        (
            &["publish", "a.requested", "--correlation", "a.b"],
            65,
            "invalid correlation_id",
        ),
        (
            &["dlq", "show", "42"],
            66,
            "no dead letter with sequence 42",
        ),
        (&["dlq", "ls", "--reason", "tired"], 64, "is not a reason"),
        (&["trace", "run.1"], 64, "invalid correlation"),
        (&["replay", "--into", "sandbox"], 64, "--correlation"),
        (&["publish", "--data", "{}"], 64, "required"),
    ];
    for (args, code, message) in cases {
        let output = choreo(&bus, args).await?;
        assert_eq!(
            output.status.code(),
            Some(code),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(message),
            "{args:?}: {}",
            stderr(&output)
        );
    }

    // A JSON-lines file with one bad line publishes nothing at all.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("events.jsonl");
    std::fs::write(
        &file,
        "{\"type\": \"a.requested\"}\n{\"type\": \"a.requested\", \"data\": }\n",
    )?;
    let output = choreo(&bus, &["publish", "--jsonl", file.to_str().unwrap()]).await?;
    expect_code(&output, 65);
    assert!(stderr(&output).contains("line 2"), "{}", stderr(&output));
    assert!(
        bus.events("events.>").await?.is_empty(),
        "nothing was published"
    );
    std::fs::write(
        &file,
        "{\"type\": \"a.requested\"}\n{\"specversion\": \"1.0\", \"id\": \"e2\", \"source\": \"ci\", \"type\": \"b.done\"}\n",
    )?;
    let output = choreo(&bus, &["publish", "--jsonl", file.to_str().unwrap()]).await?;
    expect_code(&output, 0);
    assert_eq!(stdout(&output).lines().count(), 2);
    assert_eq!(bus.events("events.>").await?.len(), 2);

    // No server there: say which URL, exit 69.
    let unreachable = choreo_at("nats://127.0.0.1:1", &["state"]).await?;
    expect_code(&unreachable, 69);
    assert!(
        stderr(&unreachable).contains("cannot reach NATS at nats://127.0.0.1:1"),
        "{}",
        stderr(&unreachable)
    );
    Ok(())
}

#[tokio::test]
async fn review_submits_a_diff_and_refuses_what_is_not_one() -> anyhow::Result<()> {
    let bus = Bus::start().await?;
    let dir = tempfile::tempdir()?;
    let diff = dir.path().join("change.diff");
    std::fs::write(&diff, choreo_review::samples::REFUNDS_DIFF)?;
    let diff = diff.to_str().context("utf-8 path")?;
    let output = choreo(
        &bus,
        &[
            "review",
            "--diff",
            diff,
            "--repository",
            "acme/shop",
            "--title",
            "Refunds",
        ],
    )
    .await?;
    expect_code(&output, 0);
    assert!(
        stdout(&output).contains("review of 2 file(s) requested"),
        "{}",
        stdout(&output)
    );
    let requested = bus.events("events.*.review.requested").await?;
    assert_eq!(requested.len(), 1);
    let request: choreo_review::events::ReviewRequested =
        serde_json::from_slice(&requested[0].data)?;
    assert_eq!(request.diff, choreo_review::samples::REFUNDS_DIFF);
    assert_eq!(request.repository, "acme/shop");

    let prose = dir.path().join("prose.txt");
    std::fs::write(&prose, "please review my code")?;
    let output = choreo(
        &bus,
        &["review", "--diff", prose.to_str().context("utf-8 path")?],
    )
    .await?;
    expect_code(&output, 65);
    assert!(stderr(&output).contains("git diff"), "{}", stderr(&output));
    assert_eq!(
        bus.events("events.*.review.requested").await?.len(),
        1,
        "nothing published"
    );

    // Asked twice with one id (a retry after a failure): one request, in the run it names.
    for _ in 0..2 {
        let output = choreo(&bus, &["review", "--diff", diff, "--id", "pr-42-rev-1"]).await?;
        expect_code(&output, 0);
        assert!(
            stdout(&output).contains("run pr-42-rev-1"),
            "{}",
            stdout(&output)
        );
    }
    assert_eq!(
        bus.events("events.pr-42-rev-1.review.requested")
            .await?
            .len(),
        1
    );
    let output = choreo(&bus, &["review", "--diff", diff, "--id", "not an id"]).await?;
    expect_code(&output, 65);
    Ok(())
}

/// Bytes that are not an envelope on `events.<run>.x.y` belong to the run the subject names:
/// `choreo trace` counts the dead letter and shows it with its reason where the bytes were,
/// `choreo state` marks the run failed and lists it (it is not a platform run), and `choreo dlq
/// ls` names the run.
#[tokio::test]
async fn a_poisoned_run_is_failed_on_the_board_counted_in_its_trace_and_named_in_the_dlq()
-> anyhow::Result<()> {
    let bus = Bus::start().await?;
    let agent = bus
        .run(
            Agent::builder("taster")
                .subscribes("x.y")
                .emits("x.z")
                .build()?,
            handler_fn(|_event: Incoming| async move {
                Ok(vec![
                    Emit::json(event_type("x.z"), &json!({})).map_err(HandlerError::permanent)?,
                ])
            }),
            quick_config(),
        )
        .await?;
    // Bytes that are not a protobuf Event (0xff is never a valid field key of one).
    let garbage: Vec<u8> = (0u32..48).map(|i| (i * 37 % 251) as u8 | 0x80).collect();
    bus.jetstream
        .publish("events.run-poison.x.y", garbage.into())
        .await?
        .await?;
    let notice = format!("events.run-poison.{DEAD_LETTERED}");
    wait_until("the taster gives up on the bytes", || async {
        Ok(bus.raw("EVENTS", &notice).await?.len() == 1)
    })
    .await?;
    agent.stop().await?;

    let tree = choreo(&bus, &["trace", "run-poison"]).await?;
    expect_code(&tree, 0);
    let text = stdout(&tree);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].contains("1 events, 1 dead-lettered"), "{text}");
    assert!(
        lines[1].contains("x.y")
            && lines[1].contains(
                "DEAD-LETTERED by taster: decode_failed (payload is not a choreo.v1.Event"
            ),
        "{text}"
    );
    assert_eq!(
        lines.len(),
        2,
        "the notice is the bytes' outcome, not a root: {text}"
    );

    let board = choreo(&bus, &["state"]).await?;
    expect_code(&board, 0);
    let text = stdout(&board);
    let run = text
        .lines()
        .find(|line| line.starts_with("run-poison"))
        .unwrap_or_else(|| panic!("the default board lists the run: {text}"));
    assert!(
        run.contains("failed") && run.contains("root x.y from ?"),
        "{text}"
    );
    assert!(
        text.contains("taster gave up on x.y (decode_failed)"),
        "{text}"
    );
    let json: Value = serde_json::from_str(&stdout(
        &choreo(&bus, &["state", "--json", "--correlation", "run-poison"]).await?,
    ))?;
    assert_eq!(json["runs"][0]["status"], "failed", "{json}");

    let listed = stdout(&choreo(&bus, &["dlq", "ls"]).await?);
    assert!(
        listed.contains("decode_failed") && listed.contains("run run-poison"),
        "{listed}"
    );
    let by_run = stdout(&choreo(&bus, &["dlq", "ls", "--correlation", "run-poison"]).await?);
    assert_eq!(by_run.lines().count(), 1, "{by_run}");
    Ok(())
}
