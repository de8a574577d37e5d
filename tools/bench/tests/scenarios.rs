//! The benchmark still runs: its side-by-side scenarios on a few hundred messages, one round,
//! against a private nats-server. No figure is judged here (speed is measured, not asserted);
//! what is checked is that each scenario finishes, prints its report, and that the reports
//! carry the ratios the README quotes. A scenario that checks itself before measuring (the
//! `publish` scenario compares its raw side's wire messages with what `Publisher` stored; the
//! `telemetry` one checks that spans were exported) fails this test when that check fails.

use std::process::Command;

#[test]
fn side_by_side_scenarios_run_and_report_their_ratios() {
    let output = Command::new(env!("CARGO_BIN_EXE_choreo-bench"))
        .args(["publish", "handle", "guards", "telemetry", "--json"])
        .args(["--messages", "300", "--rounds", "1"])
        .output()
        .expect("choreo-bench runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "choreo-bench failed: {stderr}");
    let reports: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is one JSON report"))
        .collect();
    let scenarios: Vec<&str> = reports
        .iter()
        .filter_map(|report| report["scenario"].as_str())
        .collect();
    assert_eq!(scenarios, ["publish", "handle", "guards", "telemetry"]);
    for report in &reports {
        let ratio = report["ratio"].as_f64().unwrap_or_default();
        assert!(
            ratio.is_finite() && ratio > 0.0,
            "a ratio measured from both sides: {report}"
        );
    }
    let same_wire = reports[0]["ratio_same_wire"].as_f64().unwrap_or_default();
    assert!(
        same_wire > 0.0,
        "publish reports ratio_same_wire: {}",
        reports[0]
    );
}
