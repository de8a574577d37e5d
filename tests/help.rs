//! Each agent binary's `--help` opens with what the agent does (its crate's `description`) and
//! ends with the environment every choreo process reads. Runs the built binaries, as an
//! operator would; `scripts/test` builds them first.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use choreo_local_nats::process::sibling_binary;
use choreo_testkit::team::TEAM;

/// The `description` of the crate in `folder`, from its manifest.
fn description(folder: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(folder)
        .join("Cargo.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{path:?}: {err}"));
    let manifest: toml::Table = toml::from_str(&text).expect("a manifest");
    manifest["package"]["description"]
        .as_str()
        .expect("a description")
        .to_string()
}

#[test]
fn each_agents_help_opens_with_what_it_does() {
    for binary in TEAM {
        let agent = binary.strip_prefix("choreo-").expect("choreo-<agent>");
        let path = sibling_binary(binary).expect("built: scripts/test builds the binaries");
        let output = Command::new(&path)
            .arg("--help")
            .output()
            .unwrap_or_else(|err| panic!("{binary}: {err}"));
        assert!(output.status.success(), "{binary} --help: {output:?}");
        let help = String::from_utf8(output.stdout).expect("utf-8");
        assert_eq!(
            help.lines().next(),
            Some(description(&format!("agents/{agent}")).as_str()),
            "{binary} --help:\n{help}"
        );
        assert!(help.contains("NATS_TLS_CERT"), "{binary} --help:\n{help}");
    }
}
