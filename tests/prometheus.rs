//! The shipped Prometheus alerts (`deploy/prometheus/alerts.yaml`): `promtool check rules`
//! accepts them, and `promtool test rules` runs their unit tests (`alerts.test.yaml`: an agent
//! whose copies vanished, dead letters, a breaker open for long, handling far slower than the
//! day before, each firing when it should and not before). promtool comes from Debian's
//! `prometheus` package, which scripts/test installs; without it the test fails saying so.
//! The metric names the rules use are checked against what an agent serves in
//! `bus/src/metrics.rs`'s tests.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use choreo_testkit::workspace_root;

fn promtool(args: &[&str]) -> std::process::Output {
    std::process::Command::new("promtool")
        .args(args)
        .current_dir(workspace_root().join("deploy/prometheus"))
        .output()
        .unwrap_or_else(|err| {
            panic!(
                "cannot run promtool ({err}): scripts/test installs it (Debian's prometheus \
                 package: apt-get install prometheus)"
            )
        })
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests_pass() {
    for args in [
        &["check", "rules", "alerts.yaml"][..],
        &["test", "rules", "alerts.test.yaml"][..],
    ] {
        let output = promtool(args);
        assert!(
            output.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
