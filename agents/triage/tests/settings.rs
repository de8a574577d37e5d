//! The agent binary refuses bad settings at start, from flags, the environment or a file, with
//! exit code 64 and a message that names the setting; `--help` lists the settings.

#![allow(clippy::expect_used)]

use std::process::{Command, Output};

fn triage(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_choreo-triage"));
    command.args(args);
    // Nowhere to connect: a run that got past its settings would wait for NATS, not exit.
    command.env("NATS_URL", "nats://127.0.0.1:1");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("the agent binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_bad_flag_value_exits_64_naming_the_flag() {
    let output = triage(&["--max-depth", "deep"], &[]);
    assert_eq!(output.status.code(), Some(64), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("--max-depth"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_bad_environment_value_exits_64_naming_the_setting() {
    let output = triage(&[], &[("CHOREO_HANDLE_RATE", "lots")]);
    assert_eq!(output.status.code(), Some(64), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("--handle-rate"),
        "{}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("COUNT/PERIOD"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn an_impossible_combination_exits_64_naming_the_setting() {
    let output = triage(&[], &[("CHOREO_MAX_EVENTS", "0")]);
    assert_eq!(output.status.code(), Some(64), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("max-events"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_bad_settings_file_exits_64_naming_the_file_and_key() {
    let dir = std::env::temp_dir().join(format!("choreo-triage-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("triage.toml");
    std::fs::write(&file, "max-depht = 3\n").expect("write");
    let output = triage(&["--config", file.to_str().expect("utf-8")], &[]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(output.status.code(), Some(64), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("triage.toml"),
        "{}",
        stderr(&output)
    );
    assert!(stderr(&output).contains("max-depht"), "{}", stderr(&output));
}

#[test]
fn help_lists_the_guards_and_exits_0() {
    let output = triage(&["--help"], &[]);
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    for setting in [
        "--max-depth",
        "--max-visits",
        "--max-events",
        "--max-tokens",
        "--handle-rate",
        "--publish-rate",
        "--breaker-open-for",
        "CHOREO_CONFIG",
    ] {
        assert!(
            help.contains(setting),
            "{setting} missing from help:\n{help}"
        );
    }
}
