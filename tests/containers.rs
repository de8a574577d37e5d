//! What can be checked of the container files without a Docker engine: the Dockerfile and
//! compose.yaml parse, every binary and path they name exists in the workspace, the images run
//! as non-root from base images given as build arguments (and no `# syntax=` line pulls a
//! frontend), compose runs every agent of the team as a scalable service after a one-shot
//! stream set-up, health checks run a binary the image carries (the images have no shell), and
//! every setting the code reads from the environment is in the README's one configuration
//! table.
//!
//! `tests/compose.rs` builds the images from local parts and runs compose on an engine.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use choreo_testkit::team::TEAM;
use serde::Deserialize;

use choreo_testkit::workspace_root as root;

use choreo_testkit::workspace_file as read;

/// One Dockerfile instruction, continuation lines joined.
#[derive(Debug)]
struct Instruction {
    line: usize,
    keyword: String,
    args: String,
}

const KEYWORDS: [&str; 18] = [
    "FROM",
    "RUN",
    "CMD",
    "LABEL",
    "EXPOSE",
    "ENV",
    "ADD",
    "COPY",
    "ENTRYPOINT",
    "VOLUME",
    "USER",
    "WORKDIR",
    "ARG",
    "ONBUILD",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "SHELL",
    "MAINTAINER",
];

fn dockerfile() -> Vec<Instruction> {
    let text = read("Dockerfile");
    let mut instructions = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if pending.is_none() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        if pending.is_some() && line.starts_with('#') {
            continue; // comments inside a continued instruction are dropped by Docker too
        }
        let (start, mut joined) = pending.take().unwrap_or((index + 1, String::new()));
        match line.strip_suffix('\\') {
            Some(part) => {
                joined.push_str(part);
                joined.push(' ');
                pending = Some((start, joined));
            }
            None => {
                joined.push_str(line);
                let (keyword, args) = joined
                    .split_once(char::is_whitespace)
                    .unwrap_or((&joined, ""));
                assert!(
                    KEYWORDS.contains(&keyword),
                    "Dockerfile line {start}: {keyword:?} is not an instruction"
                );
                instructions.push(Instruction {
                    line: start,
                    keyword: keyword.to_string(),
                    args: args.trim().to_string(),
                });
            }
        }
    }
    assert!(
        pending.is_none(),
        "the Dockerfile ends inside a continued line"
    );
    instructions
}

/// `NAME=default` of an ARG, the quotes taken off.
fn arg_default(args: &str) -> (String, Option<String>) {
    match args.split_once('=') {
        Some((name, value)) => (name.to_string(), Some(value.trim_matches('"').to_string())),
        None => (args.to_string(), None),
    }
}

/// Every `[[bin]]` of the workspace's crates.
fn workspace_binaries() -> BTreeSet<String> {
    let mut manifests = vec![
        root().join("bus/Cargo.toml"),
        root().join("proto/Cargo.toml"),
    ];
    for folder in ["agents", "tools"] {
        for entry in std::fs::read_dir(root().join(folder)).expect(folder) {
            let manifest = entry.expect("entry").path().join("Cargo.toml");
            if manifest.is_file() {
                manifests.push(manifest);
            }
        }
    }
    let mut binaries = BTreeSet::new();
    for manifest in manifests {
        let text = std::fs::read_to_string(&manifest).expect("manifest");
        let parsed: toml::Value = toml::from_str(&text).expect("a valid manifest");
        for bin in parsed
            .get("bin")
            .and_then(|b| b.as_array())
            .into_iter()
            .flatten()
        {
            binaries.insert(bin["name"].as_str().expect("a bin name").to_string());
        }
    }
    binaries
}

/// The binaries the image carries (the build stage's `BINARIES`).
fn image_binaries(instructions: &[Instruction]) -> BTreeSet<String> {
    let listed = instructions
        .iter()
        .filter(|i| i.keyword == "ARG")
        .map(|i| arg_default(&i.args))
        .find(|(name, _)| name == "BINARIES")
        .and_then(|(_, value)| value)
        .expect("ARG BINARIES=\"…\" in the build stage");
    listed.split_whitespace().map(str::to_string).collect()
}

#[test]
fn the_dockerfile_builds_every_binary_the_services_run_into_a_non_root_image() {
    // A `# syntax=` parser directive makes BuildKit pull a frontend image: no build could run
    // where no registry is reachable.
    let text = read("Dockerfile");
    assert!(
        !text
            .lines()
            .take_while(|l| l.starts_with('#'))
            .any(|l| l.replace(' ', "").to_lowercase().starts_with("#syntax=")),
        "the Dockerfile names a frontend image (# syntax=)"
    );
    let instructions = dockerfile();
    let first_from = instructions
        .iter()
        .position(|i| i.keyword == "FROM")
        .expect("a FROM");
    let global_args: BTreeMap<String, Option<String>> = instructions[..first_from]
        .iter()
        .map(|i| {
            assert_eq!(
                i.keyword, "ARG",
                "line {}: only ARG may precede FROM",
                i.line
            );
            arg_default(&i.args)
        })
        .collect();

    // Base images are build arguments with public defaults, one per stage.
    let mut stages = Vec::new();
    for from in instructions.iter().filter(|i| i.keyword == "FROM") {
        let mut words = from.args.split_whitespace();
        let image = words.next().expect("an image");
        let arg = image
            .strip_prefix("${")
            .and_then(|rest| rest.strip_suffix('}'))
            .unwrap_or_else(|| {
                panic!(
                    "line {}: base image {image} is not a build argument",
                    from.line
                )
            });
        let default = global_args
            .get(arg)
            .and_then(Option::as_ref)
            .unwrap_or_else(|| panic!("line {}: ARG {arg} has no default", from.line));
        assert!(default.contains(':'), "{arg}={default} names no tag");
        if let (Some(as_word), Some(name)) = (words.next(), words.next()) {
            assert!(as_word.eq_ignore_ascii_case("AS"));
            stages.push(name.to_string());
        }
    }
    assert!(stages.len() + 1 >= 2, "a multi-stage build");

    // What is copied comes from a declared stage, or exists in the build context.
    let ignored = read(".dockerignore");
    let ignored: BTreeSet<&str> = ignored
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for copy in instructions.iter().filter(|i| i.keyword == "COPY") {
        let words: Vec<&str> = copy.args.split_whitespace().collect();
        match words.iter().find_map(|w| w.strip_prefix("--from=")) {
            Some(stage) => assert!(
                stages.iter().any(|s| s == stage),
                "line {}: no stage {stage}",
                copy.line
            ),
            None => {
                let sources: Vec<&&str> = words.iter().filter(|w| !w.starts_with("--")).collect();
                for source in &sources[..sources.len() - 1] {
                    assert!(
                        root().join(source).exists(),
                        "line {}: {source} is not in the context",
                        copy.line
                    );
                }
            }
        }
    }
    // The build needs the whole workspace and its lock file (it builds --locked).
    assert!(root().join("Cargo.lock").is_file());
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "proto",
        "bus",
        "agents",
        "tools",
        "tests",
    ] {
        assert!(
            !ignored.contains(needed),
            ".dockerignore leaves out {needed}, which the build needs"
        );
    }

    // Every binary the image carries is one the workspace builds, and it carries the team,
    // the gateway and the CLI.
    let carried = image_binaries(&instructions);
    let built = workspace_binaries();
    for binary in &carried {
        assert!(
            built.contains(binary),
            "the image copies {binary}, which no crate builds"
        );
    }
    for needed in TEAM.iter().chain(&["choreo", "choreo-gateway"]) {
        assert!(carried.contains(*needed), "the image lacks {needed}");
    }

    // The runtime stages (the default last one, and `nats`) run as a user that is not root.
    for stage in [None, Some("nats")] {
        let user = stage_instructions(&instructions, stage)
            .iter()
            .rev()
            .find(|i| i.keyword == "USER")
            .unwrap_or_else(|| panic!("the runtime stage {stage:?} sets USER"));
        let name = user.args.split(':').next().unwrap_or("");
        assert!(
            !matches!(name, "root" | "0" | ""),
            "stage {stage:?}: USER {} is root",
            user.args
        );
    }
}

/// The instructions of the stage named `name`, or of the last stage.
fn stage_instructions<'a>(
    instructions: &'a [Instruction],
    name: Option<&str>,
) -> &'a [Instruction] {
    let starts: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, i)| i.keyword == "FROM")
        .map(|(index, _)| index)
        .collect();
    let start = match name {
        None => *starts.last().expect("a FROM"),
        Some(name) => *starts
            .iter()
            .find(|&&index| {
                let words: Vec<&str> = instructions[index].args.split_whitespace().collect();
                words.len() == 3 && words[1].eq_ignore_ascii_case("AS") && words[2] == name
            })
            .unwrap_or_else(|| panic!("no stage {name} in the Dockerfile")),
    };
    let end = starts
        .iter()
        .find(|&&index| index > start)
        .copied()
        .unwrap_or(instructions.len());
    &instructions[start + 1..end]
}

#[derive(Debug, Deserialize)]
struct Compose {
    services: BTreeMap<String, Service>,
    #[serde(default)]
    volumes: BTreeMap<String, Option<serde::de::IgnoredAny>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Service {
    image: Option<String>,
    build: Option<Build>,
    command: Vec<String>,
    depends_on: BTreeMap<String, DependsOn>,
    environment: BTreeMap<String, Option<String>>,
    volumes: Vec<String>,
    ports: Vec<String>,
    healthcheck: Option<Healthcheck>,
    container_name: Option<String>,
    restart: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Build {
    context: String,
    dockerfile: String,
    target: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DependsOn {
    condition: String,
}

#[derive(Debug, Deserialize)]
struct Healthcheck {
    test: Vec<String>,
}

/// The default of an image named `${VARIABLE:-default}`, or the name itself.
fn image_default(image: &str) -> &str {
    image
        .strip_prefix("${")
        .and_then(|rest| rest.strip_suffix('}'))
        .and_then(|inner| inner.split_once(":-"))
        .map_or(image, |(_, default)| default)
}

fn compose() -> Compose {
    serde_saphyr::from_str(&read("compose.yaml"))
        .unwrap_or_else(|err| panic!("compose.yaml: {err}"))
}

#[test]
fn compose_runs_nats_the_stream_set_up_each_agent_and_the_gateway() {
    let compose = compose();
    let carried = image_binaries(&dockerfile());
    let services = &compose.services;

    // NATS: JetStream on a named volume, and a health check the rest wait for.
    let nats = &services["nats"];
    assert!(
        nats.command.iter().any(|arg| arg == "--jetstream"),
        "{:?}",
        nats.command
    );
    let store = nats
        .command
        .iter()
        .skip_while(|arg| *arg != "--store_dir")
        .nth(1)
        .expect("--store_dir");
    assert!(
        nats.volumes
            .iter()
            .any(|v| v.split(':').nth(1) == Some(store.as_str())),
        "the JetStream store {store} is on a volume: {:?}",
        nats.volumes
    );
    // The images have no shell: health checks run a binary the image carries (`choreo ping`),
    // and the NATS image is the Dockerfile's `nats` stage.
    assert_eq!(
        image_default(nats.image.as_deref().expect("an image")),
        "choreo-nats:local"
    );
    let nats_build = nats.build.as_ref().expect("the nats service builds");
    let nats_stage = nats_build.target.as_deref().expect("a target");
    let dockerfile = dockerfile();
    let nats_binaries: BTreeSet<String> = stage_instructions(&dockerfile, Some(nats_stage))
        .iter()
        .filter(|i| i.keyword == "COPY")
        .filter_map(|i| i.args.split_whitespace().last())
        .filter_map(|destination| destination.strip_prefix("/usr/local/bin/"))
        .map(str::to_string)
        .collect();
    for (name, carried) in [("nats", &nats_binaries), ("gateway", &carried)] {
        let check = &services[name]
            .healthcheck
            .as_ref()
            .unwrap_or_else(|| panic!("{name} has a health check"))
            .test;
        assert_eq!(check[0], "CMD", "{name}: no shell in the image: {check:?}");
        assert!(
            carried.contains(&check[1]),
            "{name}'s health check runs {}, which its image lacks",
            check[1]
        );
    }

    // The one-shot stream set-up runs once NATS is healthy.
    let streams = &services["streams"];
    assert_eq!(streams.command, ["choreo", "streams", "ensure"]);
    assert_eq!(streams.depends_on["nats"].condition, "service_healthy");
    assert_eq!(streams.restart.as_deref(), Some("no"));

    // Each agent of the team is its own service, after the set-up, scalable (no fixed name,
    // no host port), running a binary the image carries.
    for binary in TEAM {
        let matching: Vec<(&String, &Service)> = services
            .iter()
            .filter(|(_, s)| s.command.first().map(String::as_str) == Some(binary))
            .collect();
        assert_eq!(matching.len(), 1, "{binary} is one service");
        let (name, service) = matching[0];
        assert_eq!(
            service.depends_on["streams"].condition, "service_completed_successfully",
            "{name}"
        );
        assert!(
            service.container_name.is_none() && service.ports.is_empty(),
            "{name} can be scaled"
        );
    }
    assert!(
        services.contains_key("security"),
        "`--scale security=3` names a service"
    );

    // The gateway publishes its port.
    let gateway = &services["gateway"];
    assert_eq!(gateway.command, ["choreo-gateway"]);
    let listen = gateway.environment["CHOREO_GATEWAY_LISTEN"]
        .as_deref()
        .expect("a listen address");
    let port = listen.rsplit(':').next().expect("a port");
    assert!(
        gateway
            .ports
            .iter()
            .any(|p| p.ends_with(&format!(":{port}"))),
        "{:?}",
        gateway.ports
    );

    for (name, service) in services {
        if let Some(build) = &service.build {
            assert!(
                root().join(&build.context).is_dir(),
                "{name}: build context"
            );
            assert!(
                root()
                    .join(&build.context)
                    .join(&build.dockerfile)
                    .is_file(),
                "{name}: dockerfile"
            );
        }
        if service.image.as_deref().map(image_default) == Some("choreo:local") {
            let binary = service.command.first().expect("a command");
            assert!(
                carried.contains(binary),
                "{name} runs {binary}, which the image lacks"
            );
        }
        for volume in &service.volumes {
            let source = volume.split(':').next().unwrap_or("");
            if !source.starts_with(['.', '/']) {
                assert!(
                    compose.volumes.contains_key(source),
                    "{name}: volume {source} is not declared"
                );
            }
        }
    }
}

#[test]
fn every_environment_variable_the_code_or_compose_reads_is_in_the_readme_table() {
    let read_by_code =
        regex::Regex::new(r#"(?:env = |var(?:_os)?\()"((?:CHOREO|NATS)_[A-Z0-9_]+)""#)
            .expect("regex");
    let mut variables = BTreeSet::new();
    let mut sources = Vec::new();
    for folder in ["bus", "agents", "tools"] {
        collect_sources(&root().join(folder), &mut sources);
    }
    for source in sources {
        let text = std::fs::read_to_string(&source).expect("source");
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            variables.extend(read_by_code.captures_iter(line).map(|c| c[1].to_string()));
        }
    }
    // The connection's variables are read by name from one table rather than by `var("…")`.
    variables.extend(
        choreo_bus::connect::NATS_ENV
            .iter()
            .map(|var| var.name.to_string()),
    );
    for service in compose().services.values() {
        variables.extend(service.environment.keys().cloned());
    }
    assert!(variables.contains("CHOREO_GATEWAY_TOKENS") && variables.contains("NATS_URL"));
    let documented = choreo_testkit::documented_variables();
    let missing: Vec<&String> = variables.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "not in the README's configuration table: {missing:?}"
    );
}

fn collect_sources(folder: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(folder).expect("folder") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            collect_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}
