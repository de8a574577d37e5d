//! `choreo console` against a running team: the review team's binaries and the console as
//! processes against a real nats-server, the pages driven in a real headless browser (Debian's
//! chromium through its chromedriver, by PyPI's selenium: `tests/browser/console.py`, which
//! `scripts/test` installs into `.tools/browser`), and a replay into a sandbox namespace compared
//! with its original by `choreo diff` and by the console's compare page.
//!
//! Screenshots of each page go to `target/console-screenshots/`. Without chromium or selenium
//! the browser test says so and passes, unless `CHOREO_REQUIRE_DOCKER=1` or `CI` is set (CI
//! runs `scripts/test`, which installs them): then it fails.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use choreo_local_nats::process::sibling_binary;
use choreo_review::events::{DELIVERED, REQUESTED};
use choreo_review::samples::refunds_request;
use choreo_testkit::http::{chat_answer, loopback, serve};
use choreo_testkit::team::{TEAM, Team};
use choreo_testkit::{Bus, wait_until, workspace_root};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};

/// A `choreo console` process, killed when dropped.
struct Console {
    child: Child,
    /// Where a client on this machine reaches it.
    url: String,
}

impl Console {
    /// Starts `choreo console ARGS` against `nats_url` and waits for the address it prints.
    async fn start(nats_url: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Console> {
        let mut child = Command::new(sibling_binary("choreo")?)
            .arg("console")
            .args(args)
            .env("NATS_URL", nats_url)
            .env_remove("CHOREO_CONSOLE_TOKEN")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let line = tokio::time::timeout(
            Duration::from_secs(20),
            BufReader::new(stdout).lines().next_line(),
        )
        .await
        .context("the console printed no address")??
        .context("the console exited")?;
        // `choreo console on http://0.0.0.0:PORT/ (…)`: reached on loopback.
        let address = line
            .split_whitespace()
            .find(|word| word.starts_with("http://"))
            .with_context(|| format!("no address in {line:?}"))?;
        let port = address
            .trim_end_matches('/')
            .rsplit(':')
            .next()
            .context("a port")?;
        Ok(Console {
            child,
            url: format!("http://127.0.0.1:{port}"),
        })
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The Python that has selenium, when it and chromium with its chromedriver are here. When
/// not: `None` (the test is skipped, and says so), or a failure under CI.
fn browser() -> Option<PathBuf> {
    let python = std::env::var_os("CHOREO_BROWSER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".tools/browser/bin/python"));
    let has = |program: &str| {
        std::process::Command::new(program)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let selenium = std::process::Command::new(&python)
        .args(["-c", "import selenium"])
        .output()
        .is_ok_and(|o| o.status.success());
    let missing: Vec<&str> = [
        ("chromium", has("chromium")),
        ("chromedriver", has("chromedriver")),
        ("selenium (in .tools/browser)", selenium),
    ]
    .into_iter()
    .filter(|(_, here)| !here)
    .map(|(name, _)| name)
    .collect();
    if missing.is_empty() {
        return Some(python);
    }
    let required = std::env::var("CHOREO_REQUIRE_DOCKER").as_deref() == Ok("1")
        || std::env::var_os("CI").is_some();
    assert!(
        !required,
        "the browser test needs {}: scripts/test installs them (Debian's chromium-driver, PyPI's \
         selenium into .tools/browser)",
        missing.join(", ")
    );
    let _ = writeln!(
        std::io::stderr(),
        "tests/console.rs browser test skipped: no {} (scripts/test installs them; CI=1 makes \
         this a failure)",
        missing.join(", ")
    );
    None
}

/// Publishes the sample change for review; returns the run.
async fn request_review(bus: &Bus) -> anyhow::Result<String> {
    let event = bus
        .publish(REQUESTED, serde_json::to_value(refunds_request())?, None)
        .await?;
    Ok(event.correlation_id)
}

/// Waits until run `run` of namespace `ns` has delivered its report.
async fn wait_delivered(bus: &Bus, team: &Team, ns: &str, run: &str) -> anyhow::Result<()> {
    let stream = if ns == "events" {
        "EVENTS".to_string()
    } else {
        format!("EVENTS_{}", ns.to_uppercase())
    };
    let subject = format!("{ns}.{run}.{DELIVERED}");
    let outcome = wait_until(&format!("run {ns}/{run} delivers its report"), || async {
        Ok(bus
            .raw(&stream, &subject)
            .await
            .is_ok_and(|records| !records.is_empty()))
    })
    .await;
    if let Err(err) = outcome {
        bail!("{err}\n{}", team.logs());
    }
    Ok(())
}

#[tokio::test]
async fn the_console_in_a_real_browser() -> anyhow::Result<()> {
    let Some(python) = browser() else {
        return Ok(());
    };
    let mut bus = Bus::start().await?;
    let url = bus.server.url();
    let mut team = Team::new(url.clone())?;
    for binary in TEAM {
        // The notifier gives up on its first failure, so a report it cannot write is a dead
        // letter at once.
        let env: &[(&str, &str)] = if binary == "choreo-notifier" {
            &[("CHOREO_MAX_DELIVERIES", "1")]
        } else {
            &[]
        };
        team.start(binary, env)?;
    }
    let completed = request_review(&bus).await?;
    wait_delivered(&bus, &team, "events", &completed).await?;

    // On a shared address, with its token.
    let token = "console-test-token";
    let console = Console::start(
        &url,
        &["--listen", "0.0.0.0:0"],
        &[("CHOREO_CONSOLE_TOKEN", token)],
    )
    .await?;

    // What a browser does not show: status codes, a script's bearer token, a form from elsewhere.
    let http = reqwest::Client::new();
    let home = http.get(&console.url).send().await?;
    assert_eq!(home.status(), 401, "no token, no page");
    assert!(home.text().await?.contains("name=\"token\""), "the form");
    let bearer = |path: &str| {
        http.get(format!("{}{path}", console.url))
            .bearer_auth(token)
    };
    assert_eq!(bearer("/").send().await?.status(), 200);
    assert_eq!(bearer("/runs/no-such-run").send().await?.status(), 404);
    assert_eq!(bearer("/dead-letters/424242").send().await?.status(), 404);
    assert_eq!(bearer("/nowhere").send().await?.status(), 404);
    let events = bearer(&format!("/runs/{completed}/events.jsonl"))
        .send()
        .await?
        .text()
        .await?;
    let first: serde_json::Value =
        serde_json::from_str(events.lines().next().context("no events")?)?;
    assert_eq!(first["type"], REQUESTED, "CloudEvents JSON lines: {first}");
    assert_eq!(first["specversion"], "1.0");
    let mermaid = bearer(&format!("/runs/{completed}/trace.mmd"))
        .send()
        .await?
        .text()
        .await?;
    assert!(mermaid.starts_with("flowchart TD"), "{mermaid}");
    let elsewhere = http
        .post(format!("{}/dead-letters/redrive", console.url))
        .bearer_auth(token)
        .header("origin", "https://elsewhere.example")
        .form(&[("reason", "handler_failed")])
        .send()
        .await?;
    assert_eq!(elsewhere.status(), 403, "a form from another site");

    let screenshots = workspace_root().join("target/console-screenshots");
    // Only this run's pictures.
    let _ = std::fs::remove_dir_all(&screenshots);
    std::fs::create_dir_all(&screenshots)?;
    let sample = tempfile::NamedTempFile::new()?;
    std::fs::write(sample.path(), refunds_request().diff)?;
    let team_agents: Vec<&str> = TEAM
        .iter()
        .map(|b| b.trim_start_matches("choreo-"))
        .collect();
    let mut script = Command::new(&python)
        .arg(workspace_root().join("tests/browser/console.py"))
        .env("CONSOLE_URL", &console.url)
        .env("CONSOLE_TOKEN", token)
        .env("CHOREO", sibling_binary("choreo")?)
        .env("NATS_URL", &url)
        .env("REPORTS_DIR", team.reports_dir())
        .env("SAMPLE_DIFF", sample.path())
        .env("COMPLETED_RUN", &completed)
        .env("TEAM_AGENTS", team_agents.join(","))
        .env("SCREENSHOTS", &screenshots)
        // Selenium is given the drivers: it must not look for them online.
        .env("SE_OFFLINE", "true")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut to_script = script.stdin.take().context("stdin")?;
    let mut said = BufReader::new(script.stdout.take().context("stdout")?).lines();
    let mut transcript = String::new();
    while let Some(line) = tokio::time::timeout(Duration::from_secs(180), said.next_line())
        .await
        .context("the browser test said nothing for 3 minutes")??
    {
        eprintln!("browser: {line}");
        transcript.push_str(&line);
        transcript.push('\n');
        let answer = match line.strip_prefix("@@ ") {
            Some("nats-down") => {
                bus.server.kill();
                "ok".to_string()
            }
            Some("nats-up") => match bus.server.start_again().await {
                Ok(()) => "ok".to_string(),
                Err(err) => format!("cannot start NATS again: {err}"),
            },
            Some(other) => format!("unknown command {other}"),
            None => continue,
        };
        to_script
            .write_all(format!("{answer}\n").as_bytes())
            .await?;
        to_script.flush().await?;
    }
    let status = script.wait().await?;
    if !status.success() {
        bail!(
            "the browser test failed ({status}); screenshots in {}\n{transcript}\n{}",
            screenshots.display(),
            team.logs()
        );
    }
    ensure!(transcript.contains("-- all passed"), "{transcript}");
    eprintln!("{transcript}");
    team.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_console_on_a_shared_address_without_a_token_refuses_to_start() -> anyhow::Result<()> {
    let output = Command::new(sibling_binary("choreo")?)
        .args(["console", "--listen", "0.0.0.0:0"])
        .env_remove("CHOREO_CONSOLE_TOKEN")
        // Never reached: the address is refused first.
        .env("NATS_URL", "nats://127.0.0.1:9")
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("refuses to listen on 0.0.0.0:0 without CHOREO_CONSOLE_TOKEN"),
        "{stderr}"
    );
    let help = Command::new(sibling_binary("choreo")?)
        .args(["console", "--help"])
        .output()
        .await?;
    let help = String::from_utf8_lossy(&help.stdout);
    for said in [
        "127.0.0.1:8090",
        "CHOREO_CONSOLE_TOKEN",
        "CHOREO_CONSOLE_LISTEN",
    ] {
        assert!(help.contains(said), "{help}");
    }
    Ok(())
}

/// `choreo ARGS` against `nats_url`: its exit code and what it printed.
async fn choreo(nats_url: &str, args: &[&str]) -> anyhow::Result<(Option<i32>, String)> {
    let output = Command::new(sibling_binary("choreo")?)
        .args(args)
        .env("NATS_URL", nats_url)
        .output()
        .await?;
    Ok((
        output.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    ))
}

/// The source of the event each difference names (the last step of its path:
/// `type [source]`), for lines `choreo diff` prints.
fn differing_sources(diff: &str) -> Vec<(String, String)> {
    diff.lines()
        .filter_map(|line| {
            line.strip_prefix("- only in A: ")
                .or_else(|| line.strip_prefix("+ only in B: "))
                .or_else(|| line.strip_prefix("~ payload differs: "))
        })
        .map(|path| {
            let last = path.rsplit(" > ").next().unwrap_or(path);
            let event_type = last.split(' ').next().unwrap_or("").to_string();
            let source = last
                .split_once('[')
                .and_then(|(_, rest)| rest.split_once(']'))
                .map_or(String::new(), |(source, _)| source.to_string());
            (event_type, source)
        })
        .collect()
}

/// A model that finds one thing: what security says with its model brain instead of its rules.
const MODEL_ANSWER: &str = r#"{"findings": [{"file": "app/refunds.py", "line": 10, "severity": "critical", "rule": "hardcoded-secret", "message": "a live payments key is committed", "suggestion": "read PAYMENTS_API_KEY from the environment"}]}"#;

#[tokio::test]
async fn a_replay_in_a_sandbox_compares_equal_and_a_changed_specialist_differs_only_in_its_findings()
-> anyhow::Result<()> {
    let bus = Bus::start().await?;
    let url = bus.server.url();
    let mut team = Team::new(url.clone())?;
    team.start_all(&[])?;
    let run = request_review(&bus).await?;
    wait_delivered(&bus, &team, "events", &run).await?;
    team.stop().await;
    // Every sandbox team writes its reports where the original did, so the notifier's
    // `review.delivered` names the same file.
    let reports = team.reports_dir().display().to_string();
    let console = Console::start(&url, &["--listen", "127.0.0.1:0"], &[]).await?;
    let http = reqwest::Client::new();
    let compare = |b: String| {
        let (http, console, run) = (http.clone(), &console.url, &run);
        async move {
            let page = http
                .get(format!("{console}/compare"))
                .query(&[("a", run.as_str()), ("b", b.as_str())])
                .send()
                .await?;
            ensure!(page.status() == 200, "compare: {}", page.status());
            anyhow::Ok(page.text().await?)
        }
    };

    // The same agents re-run the replay: no differences.
    let (code, out) = choreo(&url, &["replay", "--correlation", &run, "--into", "lab"]).await?;
    assert_eq!(code, Some(0), "{out}");
    let mut lab = Team::new(url.clone())?;
    lab.start_all(&[
        ("CHOREO_NAMESPACE", "lab"),
        ("CHOREO_REPORTS_DIR", &reports),
    ])?;
    wait_delivered(&bus, &lab, "lab", &run).await?;
    lab.stop().await;
    let (code, out) = choreo(&url, &["diff", &run, &format!("lab/{run}")]).await?;
    assert_eq!(code, Some(0), "choreo diff:\n{out}");
    assert!(out.contains("same tree"), "{out}");
    let page = compare(format!("lab/{run}")).await?;
    assert!(page.contains("data-differences=\"0\""), "{page}");
    assert!(page.contains("No differences"), "{page}");

    // Security with a model brain instead of its rules: only its findings differ, and what the
    // report downstream says of them.
    let chat = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|| async { chat_answer("chat-1", "test-model", MODEL_ANSWER) }),
    );
    let (chat_address, chat_server) = serve(loopback(), chat).await?;
    let (code, out) = choreo(&url, &["replay", "--correlation", &run, "--into", "lab2"]).await?;
    assert_eq!(code, Some(0), "{out}");
    let mut changed = Team::new(url.clone())?;
    let sandbox = [
        ("CHOREO_NAMESPACE", "lab2"),
        ("CHOREO_REPORTS_DIR", &reports),
    ];
    for binary in TEAM {
        if binary == "choreo-security" {
            let llm = format!("http://{chat_address}/v1");
            let mut env = sandbox.to_vec();
            env.extend([
                ("CHOREO_LLM_URL", llm.as_str()),
                ("CHOREO_LLM_MODEL", "test-model"),
            ]);
            changed.start(binary, &env)?;
        } else {
            changed.start(binary, &sandbox)?;
        }
    }
    wait_delivered(&bus, &changed, "lab2", &run).await?;
    changed.stop().await;
    chat_server.abort();
    let (code, out) = choreo(&url, &["diff", &run, &format!("lab2/{run}")]).await?;
    assert_eq!(code, Some(1), "choreo diff:\n{out}");
    let differing = differing_sources(&out);
    assert!(!differing.is_empty(), "{out}");
    let findings: Vec<&(String, String)> = differing
        .iter()
        .filter(|(event_type, _)| event_type == "review.finding")
        .collect();
    assert!(!findings.is_empty(), "security's findings differ:\n{out}");
    assert!(
        findings.iter().all(|(_, source)| source == "security"),
        "only security's findings differ:\n{out}"
    );
    for (event_type, source) in &differing {
        assert!(
            ["security", "aggregator", "editor", "notifier"].contains(&source.as_str()),
            "{event_type} from {source} differs, which security's change does not explain:\n{out}"
        );
    }
    let page = compare(format!("lab2/{run}")).await?;
    let counted = out
        .lines()
        .find_map(|line| line.strip_prefix("choreo: the runs differ in "))
        .and_then(|rest| rest.split_whitespace().next())
        .context("no count")?
        .to_string();
    assert!(
        page.contains(&format!("data-differences=\"{counted}\"")),
        "the page counts {counted} like choreo diff:\n{page}"
    );
    Ok(())
}
