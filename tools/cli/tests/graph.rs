//! `choreo-<agent> manifest` and `choreo graph`, run as an operator would: the built binaries,
//! no NATS anywhere. The review team's binaries must be built beside `choreo`
//! (`cargo build --workspace --bins`; `scripts/test` does it first).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use choreo_bus::manifest::Manifest;
use choreo_local_nats::process::sibling_binary;
use choreo_testkit::cli::{expect_code, stderr, stdout};
use choreo_testkit::team::TEAM;

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/graph")
        .join(path)
}

/// A command with none of the settings an operator's shell might leak into what it prints.
/// `program` with none of the test environment's settings; nothing listens at its server: a
/// manifest must not need one.
fn clean(program: &Path) -> Command {
    choreo_testkit::cli::clean_command(program, "nats://127.0.0.1:1")
}

fn choreo(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = clean(Path::new(env!("CARGO_BIN_EXE_choreo")));
    command.args(args).envs(env.iter().copied());
    command.output().expect("choreo runs")
}

fn choreo_with_stdin(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = clean(Path::new(env!("CARGO_BIN_EXE_choreo")))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("choreo starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("written");
    child.wait_with_output().expect("choreo runs")
}

/// The folder of the agent binaries, which must be `choreo`'s.
fn agents_dir() -> PathBuf {
    let editor = sibling_binary("choreo-editor")
        .expect("the agents are built: cargo build --workspace --bins (scripts/test does)");
    let dir = editor.parent().expect("a folder").to_path_buf();
    assert_eq!(
        Path::new(env!("CARGO_BIN_EXE_choreo")).parent(),
        Some(dir.as_path()),
        "choreo graph looks for the agents beside itself"
    );
    dir
}

#[test]
fn each_agent_prints_its_manifest_without_nats() {
    agents_dir();
    for binary in TEAM {
        let agent = binary.strip_prefix("choreo-").expect("choreo-<agent>");
        let output = clean(&sibling_binary(binary).expect("built"))
            .arg("manifest")
            .output()
            .unwrap_or_else(|err| panic!("{binary}: {err}"));
        expect_code(&output, 0);
        let json: serde_json::Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|err| panic!("{binary} manifest: {err}\n{}", stdout(&output)));
        let manifest = Manifest::from_value(json).unwrap_or_else(|err| panic!("{binary}: {err}"));
        assert_eq!(manifest.name, agent);
        assert_eq!(manifest.namespace, "events");
        assert_eq!(manifest.consumer.durable, agent);
        assert_eq!(manifest.consumer.stream, "EVENTS");
        assert!(!manifest.subscribes.is_empty(), "{binary}");
        for event_type in &manifest.emits {
            let subject = format!("events.*.{event_type}");
            assert!(
                manifest.publishes.iter().any(|p| p.subject == subject),
                "{binary} does not list {subject}: {:#?}",
                manifest.publishes
            );
        }
        assert!(
            manifest
                .publishes
                .iter()
                .any(|p| p.subject == format!("dlq.events.{agent}.*")),
            "{binary}: {:#?}",
            manifest.publishes
        );
    }

    // The namespace and the guards come from the flags, the environment and the file.
    let editor = sibling_binary("choreo-editor").expect("built");
    let output = clean(&editor)
        .args(["manifest", "--namespace", "sandbox"])
        .env("CHOREO_MAX_VISITS", "2")
        .output()
        .expect("runs");
    expect_code(&output, 0);
    let manifest =
        Manifest::from_value(serde_json::from_slice(&output.stdout).expect("json")).expect("read");
    assert_eq!(manifest.namespace, "sandbox");
    assert_eq!(manifest.consumer.stream, "EVENTS_SANDBOX");
    assert_eq!(
        manifest.consumer.filter_subjects,
        ["sandbox.*.review.completed"]
    );
    assert_eq!(manifest.guards.and_then(|g| g.max_visits), Some(2));

    let output = clean(&editor)
        .args(["manifest", "--max-visits", "none"])
        .output()
        .expect("runs");
    expect_code(&output, 64);
    assert!(
        stderr(&output).contains("max-visits"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn the_review_teams_graph_reports_the_revision_loop_and_its_guard() {
    agents_dir();
    // No manifest named: the agents beside `choreo` are asked.
    let output = choreo(&["graph"], &[]);
    expect_code(&output, 0);
    let report = stdout(&output);
    for agent in TEAM {
        let agent = agent.strip_prefix("choreo-").expect("choreo-<agent>");
        assert!(
            report
                .lines()
                .any(|line| line.trim_start().starts_with(agent)),
            "{agent} missing:\n{report}"
        );
    }
    assert!(
        report.contains(
            "editor → review.revision.requested → security → review.specialist.completed → \
             aggregator"
        ),
        "{report}"
    );
    assert!(
        report.contains(
            "bounded by the cycle limit (--max-visits, CHOREO_MAX_VISITS = 5), set on every agent \
             of the loop"
        ),
        "{report}"
    );
    assert!(
        report.contains("github.pull_request.changed → fetcher"),
        "the entry point:\n{report}"
    );
    assert!(
        !stderr(&output).contains("choreo-gateway"),
        "the gateway is not asked:\n{}",
        stderr(&output)
    );

    // The guard's setting is the agents' own: their environment is read.
    let output = choreo(&["graph"], &[("CHOREO_MAX_VISITS", "3")]);
    expect_code(&output, 0);
    assert!(
        stdout(&output).contains("cycle limit (--max-visits, CHOREO_MAX_VISITS = 3)"),
        "{}",
        stdout(&output)
    );

    // The same from a folder named, and --strict fails on the loop.
    let dir = agents_dir();
    let output = choreo(
        &[
            "graph",
            "--strict",
            "--agents-dir",
            dir.to_str().expect("utf-8"),
        ],
        &[],
    );
    expect_code(&output, 1);
    assert!(
        stderr(&output).contains("3 problems (--strict)"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn ping_and_pong_answering_each_other_are_reported_as_a_loop() {
    let (ping, pong) = (
        fixture("ping-pong/ping.json"),
        fixture("ping-pong/pong.json"),
    );
    let output = choreo(
        &["graph", ping.to_str().unwrap(), pong.to_str().unwrap()],
        &[],
    );
    expect_code(&output, 0);
    let report = stdout(&output);
    assert!(
        report.contains("ping → ping.sent → pong → pong.returned → ping"),
        "{report}"
    );
    assert!(
        report.contains("bounded by the cycle limit (--max-visits, CHOREO_MAX_VISITS = 5)"),
        "{report}"
    );
    assert!(report.contains("game.started → ping"), "{report}");
    assert!(report.contains("1 problem: 1 loop"), "{report}");

    // A folder of manifests; --strict fails on the loop.
    let output = choreo(
        &["graph", "--strict", fixture("ping-pong").to_str().unwrap()],
        &[],
    );
    expect_code(&output, 1);

    // The drawings colour the loop; the findings go to stderr.
    let output = choreo(
        &[
            "graph",
            "--format",
            "dot",
            fixture("ping-pong").to_str().unwrap(),
        ],
        &[],
    );
    expect_code(&output, 0);
    assert!(stdout(&output).starts_with("digraph choreography {"));
    assert!(
        stdout(&output).contains("[color=\"#cc0000\", penwidth=2]"),
        "{}",
        stdout(&output)
    );
    assert!(
        stderr(&output).contains("loop through ping, pong"),
        "{}",
        stderr(&output)
    );
    let output = choreo(
        &[
            "graph",
            "--format",
            "mermaid",
            fixture("ping-pong").to_str().unwrap(),
        ],
        &[],
    );
    expect_code(&output, 0);
    assert!(stdout(&output).starts_with("flowchart LR\n"));
    assert!(
        stdout(&output).contains("linkStyle "),
        "{}",
        stdout(&output)
    );
}

#[test]
fn a_type_no_agent_handles_is_reported() {
    let counter = fixture("pipeline/counter.json");
    let output = choreo(&["graph", "--strict", counter.to_str().unwrap()], &[]);
    expect_code(&output, 1);
    let report = stdout(&output);
    assert!(report.contains("emitted, handled by no agent:"), "{report}");
    assert!(report.contains("text.counted  from counter"), "{report}");
    // Its input comes from outside: an entry point, not a problem.
    assert!(report.contains("text.submitted → counter"), "{report}");
    assert!(report.contains("1 problem: 0 loops, 1 type"), "{report}");

    // With its reader, nothing is wrong.
    let output = choreo(
        &["graph", "--strict", fixture("pipeline").to_str().unwrap()],
        &[],
    );
    expect_code(&output, 0);
    assert!(
        stdout(&output).contains("no problems found"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn the_html_page_is_self_contained_and_shows_every_agent() {
    agents_dir();
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("team.html");
    let output = choreo(
        &["graph", "--format", "html", "-o", page.to_str().unwrap()],
        &[],
    );
    expect_code(&output, 0);
    let html = std::fs::read_to_string(&page).expect("the page is written");
    assert!(html.starts_with("<!doctype html>"));
    assert!(html.contains("<svg"), "the graph is drawn");
    for agent in TEAM {
        let agent = agent.strip_prefix("choreo-").expect("choreo-<agent>");
        assert!(
            html.contains(&format!(">{agent}</text>")),
            "{agent} not drawn"
        );
    }
    assert!(html.contains("CHOREO_MAX_VISITS = 5"), "the loop's guard");
    // Nothing to fetch: no address, no element or rule that loads one; references only to
    // the page's own parts.
    for loads in [
        "http://", "https://", "src=", "<link", "<script", "@import", "<iframe",
    ] {
        assert!(!html.contains(loads), "the page has {loads}");
    }
    for (at, _) in html.match_indices("url(") {
        assert!(html[at..].starts_with("url(#"), "{}", &html[at..at + 40]);
    }
    for (at, _) in html.match_indices("href=") {
        assert!(html[at..].starts_with("href=\"#"), "{}", &html[at..at + 40]);
    }
}

#[test]
fn bad_input_is_refused_naming_the_file() {
    let missing = fixture("ping-pong/nobody.json");
    let output = choreo(&["graph", missing.to_str().unwrap()], &[]);
    expect_code(&output, 66);
    let said = stderr(&output);
    assert!(
        said.contains(&format!("cannot read {}", missing.display())),
        "{said}"
    );
    assert!(
        said.contains("choreo-<agent> manifest"),
        "what to do: {said}"
    );

    let not_json = fixture("bad/not-json.json");
    let output = choreo(&["graph", not_json.to_str().unwrap()], &[]);
    expect_code(&output, 65);
    let said = stderr(&output);
    assert!(
        said.contains(&format!("{}: not JSON", not_json.display())),
        "{said}"
    );

    let future = fixture("bad/schema-2.json");
    let output = choreo(&["graph", future.to_str().unwrap()], &[]);
    expect_code(&output, 65);
    let said = stderr(&output);
    assert!(
        said.contains(&format!(
            "{}: manifest schema 2 of agent \"future\"",
            future.display()
        )),
        "{said}"
    );
    assert!(said.contains("this choreo reads (1)"), "{said}");

    let empty = tempfile::tempdir().unwrap();
    let output = choreo(&["graph", empty.path().to_str().unwrap()], &[]);
    expect_code(&output, 66);
    assert!(
        stderr(&output).contains("no manifest (*.json)"),
        "{}",
        stderr(&output)
    );

    // Standard input: manifests one after another, as a loop over the binaries prints them;
    // and something that is not one.
    let mut both = std::fs::read(fixture("ping-pong/ping.json")).unwrap();
    both.extend(std::fs::read(fixture("ping-pong/pong.json")).unwrap());
    let output = choreo_with_stdin(&["graph", "-"], &both);
    expect_code(&output, 0);
    assert!(
        stdout(&output).contains("ping → ping.sent → pong"),
        "{}",
        stdout(&output)
    );
    let output = choreo_with_stdin(&["graph", "-"], b"[{\"name\": \"x\"}]");
    expect_code(&output, 65);
    assert!(
        stderr(&output).contains("standard input: not an agent manifest (no `schema` field)"),
        "{}",
        stderr(&output)
    );
}
