//! `choreo up --demo` end to end: the review team runs as separate processes against a real
//! nats-server and the sample change's review is delivered. Needs the agents' binaries (`scripts/test` builds
//! them first).

use std::process::Command;

#[tokio::test]
async fn up_demo_reviews_the_sample_change_with_every_agent_process() -> anyhow::Result<()> {
    let server = choreo_local_nats::NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let output = tokio::task::spawn_blocking({
        let url = server.url();
        let dir = dir.path().to_path_buf();
        move || {
            Command::new(env!("CARGO_BIN_EXE_choreo"))
                .args(["up", "--demo", "--dir"])
                .arg(&dir)
                .env("NATS_URL", url)
                .output()
        }
    })
    .await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        output.status
    );
    for step in [
        "review.requested",
        "review.planned",
        "review.specialist.completed",
        "review.completed",
        "review.approved",
        "review.delivered",
    ] {
        assert!(stdout.contains(step), "no {step} in:\n{stdout}");
    }
    for specialist in ["security", "performance", "style", "tests"] {
        assert!(
            stdout.contains(&format!("#### {specialist} (rules {specialist}-rules-v1)")),
            "no raw output of {specialist} in the printed report:\n{stdout}"
        );
    }
    assert!(stdout.contains("the run's trace"), "{stdout}");
    assert!(stdout.contains("Verdict: changes requested"), "{stdout}");
    let reports: Vec<_> = std::fs::read_dir(dir.path().join("reports"))?.collect();
    assert_eq!(reports.len(), 1, "the notifier wrote one report file");
    Ok(())
}

#[test]
fn a_bad_flag_exits_64_and_says_what_is_wrong() {
    let output = Command::new(env!("CARGO_BIN_EXE_choreo"))
        .args(["up", "--port", "not-a-port"])
        .output()
        .expect("choreo runs");
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--port"));
}

#[test]
fn an_unreachable_server_is_named_and_exits_69() {
    let output = Command::new(env!("CARGO_BIN_EXE_choreo"))
        .args(["up", "--demo"])
        .env("NATS_URL", "nats://127.0.0.1:1")
        .output()
        .expect("choreo runs");
    assert_eq!(output.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&output.stderr).contains("nats://127.0.0.1:1"));
}
