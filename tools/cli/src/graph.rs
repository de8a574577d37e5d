//! `choreo graph`: the choreography's static map, drawn from the agents' manifests before
//! anything is deployed: who emits what and who handles it, as text, JSON, Mermaid, DOT or a
//! self-contained HTML page, with what is wrong with it:
//!
//! - **loops**: agents that can answer each other forever (strongly connected components of
//!   the agent graph, where A → B when A emits a type B handles), with the guard that would
//!   stop each and its setting, read from the manifests;
//! - **types no agent handles**: emitted, and subscribed by nobody (a typo, or an output
//!   read some other way);
//! - **agents in different namespaces**, which never see each other's events.
//!
//! Types subscribed that no agent emits are the choreography's **entry points**, published from
//! outside (`choreo publish`, the gateway): listed, not a problem.
//!
//! Manifests come from files, folders of `*.json` files and standard input (`-`), or, with
//! `--agents-dir DIR` or no file at all, from running every `choreo-<agent>` binary found there
//! (default: beside this `choreo`) with `manifest`. The analysis ([`analysis::analyse`]) is a
//! pure function over manifests; [`draw`] puts it in words and pictures.

mod analysis;
mod draw;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use choreo_bus::manifest::{MANIFEST_SUBCOMMAND, Manifest};

use crate::Failure;

use analysis::analyse;
use draw::{count, dot, html, mermaid, text};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The report: entry points, agents, loops and their guards, types no agent handles.
    Text,
    /// The manifests and the analysis, for tools.
    Json,
    /// A Mermaid flowchart (findings on stderr).
    Mermaid,
    /// A Graphviz digraph (findings on stderr).
    Dot,
    /// A page with the graph drawn as SVG and the report; no script, nothing fetched.
    Html,
}

#[derive(Debug, clap::Args)]
pub struct GraphArgs {
    #[command(flatten)]
    sources: ManifestSources,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Write to FILE instead of standard output [default for --format html: choreography.html].
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Exit 1 when a problem is found: a loop, a type no agent handles, agents in different
    /// namespaces.
    #[arg(long)]
    strict: bool,
}

/// Where the agents' manifests are read: files, folders, standard input, or the agent
/// binaries themselves. `choreo graph` and `choreo auth generate` read them alike.
#[derive(Debug, clap::Args)]
pub struct ManifestSources {
    /// Manifest files (what `choreo-<agent> manifest` prints; several per file, or an array,
    /// are fine), folders of `*.json` manifests, or `-` for standard input. With none, the
    /// agent binaries are asked (see --agents-dir).
    #[arg(value_name = "MANIFEST")]
    manifests: Vec<PathBuf>,
    /// Run every `choreo-<agent>` binary in DIR with `manifest` (the gateway and the bench are
    /// not agents and are left out) [default, when no MANIFEST is given: the folder of this
    /// `choreo`]. They read the environment as they would when run, so `CHOREO_NAMESPACE` and
    /// the guards' variables apply.
    #[arg(long, value_name = "DIR")]
    agents_dir: Option<PathBuf>,
}

impl ManifestSources {
    /// One manifest per agent, from every source named.
    pub async fn load(&self) -> Result<Vec<Manifest>, Failure> {
        let mut loaded = Vec::new();
        for path in &self.manifests {
            loaded.extend(read_path(path)?);
        }
        let agents_dir = match (&self.agents_dir, self.manifests.is_empty()) {
            (Some(dir), _) => Some(dir.clone()),
            (None, true) => Some(beside_this_binary()?),
            (None, false) => None,
        };
        if let Some(dir) = agents_dir {
            loaded.extend(ask_agents(&dir).await?);
        }
        distinct(loaded)
    }
}

/// Binaries named `choreo-*` that are tools, not agents: never run with `manifest`.
const NOT_AGENTS: [&str; 2] = ["choreo-gateway", "choreo-bench"];
/// How long an agent binary may take to print its manifest (it connects to nothing).
const MANIFEST_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(args: GraphArgs) -> Result<(), Failure> {
    let analysis = analyse(args.sources.load().await?);
    let rendered = match args.format {
        Format::Text => text(&analysis),
        Format::Json => serde_json::to_string_pretty(&analysis)
            .map(|json| json + "\n")
            .map_err(|err| Failure::failed(err.to_string()))?,
        Format::Mermaid => mermaid(&analysis),
        Format::Dot => dot(&analysis),
        Format::Html => html(&analysis),
    };
    let output = match (args.output, args.format) {
        (Some(path), _) => Some(path),
        (None, Format::Html) => Some(PathBuf::from("choreography.html")),
        (None, _) => None,
    };
    match &output {
        Some(path) => std::fs::write(path, &rendered).map_err(|err| Failure {
            code: 74,
            message: format!("cannot write {}: {err}", path.display()),
        })?,
        None => {
            use std::io::Write as _;
            std::io::stdout()
                .write_all(rendered.as_bytes())
                .map_err(Failure::output)?;
        }
    }
    if args.format == Format::Html
        && let Some(path) = &output
    {
        println!(
            "wrote {} ({} agents); open it in a browser",
            path.display(),
            analysis.agents.len()
        );
    }
    // Mermaid and DOT carry no report, and the page goes to a file: the problems are said here.
    if matches!(args.format, Format::Mermaid | Format::Dot | Format::Html) {
        for problem in &analysis.problems {
            eprintln!("choreo graph: {problem}");
        }
    }
    if args.strict && !analysis.problems.is_empty() {
        return Err(Failure::failed(format!(
            "{} (--strict)",
            count(analysis.problems.len(), "problem")
        )));
    }
    Ok(())
}

/// The types some agent handles and none emits: what is published from outside.
pub(crate) fn entry_points(manifests: &[Manifest]) -> Vec<String> {
    analyse(manifests.to_vec()).entry_points
}

/// A manifest and where it was read, for messages.
#[derive(Debug)]
struct Loaded {
    manifest: Manifest,
    from: String,
}

/// What to say after any manifest that could not be read.
const WHAT_A_MANIFEST_IS: &str = "a manifest is the JSON `choreo-<agent> manifest` prints";

fn read_path(path: &Path) -> Result<Vec<Loaded>, Failure> {
    if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|err| Failure::no_input(format!("cannot read standard input: {err}")))?;
        return parse(&bytes, "standard input");
    }
    let unreadable = |err: std::io::Error| {
        Failure::no_input(format!(
            "cannot read {}: {err}; give manifest files (`choreo-<agent> manifest > \
             <agent>.json`), folders of them, or - for standard input",
            path.display()
        ))
    };
    if path.is_dir() {
        let mut files = std::fs::read_dir(path)
            .map_err(unreadable)?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|file| file.extension().is_some_and(|ext| ext == "json") && file.is_file())
            .collect::<Vec<_>>();
        files.sort();
        if files.is_empty() {
            return Err(Failure::no_input(format!(
                "{}: no manifest (*.json) in this folder",
                path.display()
            )));
        }
        let mut loaded = Vec::new();
        for file in files {
            loaded.extend(read_path(&file)?);
        }
        return Ok(loaded);
    }
    let bytes = std::fs::read(path).map_err(unreadable)?;
    parse(&bytes, &path.display().to_string())
}

/// The manifests in `bytes`: one, several one after another, or arrays of them.
fn parse(bytes: &[u8], from: &str) -> Result<Vec<Loaded>, Failure> {
    let mut loaded = Vec::new();
    for value in serde_json::Deserializer::from_slice(bytes).into_iter::<serde_json::Value>() {
        let value = value.map_err(|err| {
            Failure::data(format!("{from}: not JSON ({err}); {WHAT_A_MANIFEST_IS}"))
        })?;
        let values = match value {
            serde_json::Value::Array(values) => values,
            value => vec![value],
        };
        for value in values {
            let manifest = Manifest::from_value(value)
                .map_err(|err| Failure::data(format!("{from}: {err}")))?;
            loaded.push(Loaded {
                manifest,
                from: from.to_string(),
            });
        }
    }
    if loaded.is_empty() {
        return Err(Failure::data(format!(
            "{from}: no manifest in it; {WHAT_A_MANIFEST_IS}"
        )));
    }
    Ok(loaded)
}

fn beside_this_binary() -> Result<PathBuf, Failure> {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .ok_or_else(|| {
            Failure::usage("cannot tell where this choreo is; name the folder with --agents-dir")
        })
}

/// Runs every agent binary in `dir` with `manifest`. A binary that does not print one is
/// skipped with a warning (it may be some other tool); one that prints a bad one is an error.
async fn ask_agents(dir: &Path) -> Result<Vec<Loaded>, Failure> {
    let entries = std::fs::read_dir(dir).map_err(|err| {
        Failure::no_input(format!(
            "cannot read the agents' folder {}: {err}",
            dir.display()
        ))
    })?;
    let mut binaries = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| is_agent_binary(path))
        .collect::<Vec<_>>();
    binaries.sort();
    let mut loaded = Vec::new();
    for binary in binaries {
        let name = binary
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let asked = format!("`{name} {MANIFEST_SUBCOMMAND}`");
        let run = tokio::process::Command::new(&binary)
            .arg(MANIFEST_SUBCOMMAND)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = match tokio::time::timeout(MANIFEST_TIMEOUT, run).await {
            Ok(Ok(output)) => output,
            Ok(Err(err)) => {
                eprintln!("choreo graph: skipped {name}: cannot run it: {err}");
                continue;
            }
            Err(_) => {
                eprintln!(
                    "choreo graph: skipped {name}: {asked} did not answer within {MANIFEST_TIMEOUT:?}"
                );
                continue;
            }
        };
        if !output.status.success() {
            let said = String::from_utf8_lossy(&output.stderr);
            eprintln!(
                "choreo graph: skipped {name}: {asked} failed ({}): {}; is it a choreo agent?",
                output.status,
                said.lines().next().unwrap_or("").trim()
            );
            continue;
        }
        loaded.extend(parse(&output.stdout, &asked)?);
    }
    if loaded.is_empty() {
        return Err(Failure::no_input(format!(
            "no agent binary (choreo-<agent>) in {} printed a manifest; build them (`cargo build \
             --workspace --bins`), name their folder with --agents-dir, or give manifest files",
            dir.display()
        )));
    }
    Ok(loaded)
}

/// An executable `choreo-<name>`, with no extension (cargo leaves `choreo-x.d` beside it),
/// that is not one of the tools.
fn is_agent_binary(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
        return false;
    };
    let executable = path.metadata().is_ok_and(|meta| {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            meta.is_file() && meta.permissions().mode() & 0o111 != 0
        }
        #[cfg(not(unix))]
        {
            meta.is_file()
        }
    });
    name.strip_prefix("choreo-")
        .is_some_and(|agent| !agent.is_empty() && !agent.contains('.'))
        && !NOT_AGENTS.contains(&name)
        && executable
}

/// One manifest per agent: the same one read twice (a file and a binary) is kept once; two
/// that differ are refused, naming both.
fn distinct(loaded: Vec<Loaded>) -> Result<Vec<Manifest>, Failure> {
    let mut by_agent: BTreeMap<(String, String), Loaded> = BTreeMap::new();
    for one in loaded {
        let key = (one.manifest.namespace.clone(), one.manifest.name.clone());
        match by_agent.get(&key) {
            Some(first) if first.manifest != one.manifest => {
                return Err(Failure::data(format!(
                    "{} and {} hold different manifests of agent {:?} in namespace {}: copies of \
                     one agent share its consumer and must handle and emit alike; give one of them",
                    first.from, one.from, key.1, key.0
                )));
            }
            Some(_) => {}
            None => {
                by_agent.insert(key, one);
            }
        }
    }
    Ok(by_agent.into_values().map(|one| one.manifest).collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

    use super::*;
    use analysis::testing::agent;
    use choreo_bus::manifest::MANIFEST_SCHEMA;

    #[test]
    fn manifests_are_read_one_after_another_or_in_arrays() {
        let one = serde_json::to_string(&agent("a", &["x.y"], &[])).unwrap();
        let two = serde_json::to_string(&agent("b", &["x.y"], &[])).unwrap();
        let stream = format!("{one}\n{two}\n[{one},{two}]");
        let loaded = parse(stream.as_bytes(), "test").expect("parses");
        assert_eq!(loaded.len(), 4);
        assert_eq!(distinct(loaded).expect("the same twice").len(), 2);

        let mut other = agent("a", &["x.z"], &[]);
        other.schema = MANIFEST_SCHEMA;
        let stream = format!("{one}\n{}", serde_json::to_string(&other).unwrap());
        let err = distinct(parse(stream.as_bytes(), "test").unwrap()).expect_err("differ");
        assert_eq!(err.code, 65);
        assert!(
            err.message.contains("different manifests of agent \"a\""),
            "{}",
            err.message
        );

        let err = parse(b"{\"schema\": 1,", "half.json").expect_err("cut");
        assert_eq!(err.code, 65);
        assert!(
            err.message.starts_with("half.json: not JSON"),
            "{}",
            err.message
        );
        let err = parse(b"  ", "empty.json").expect_err("empty");
        assert_eq!(err.code, 65);
    }

    #[test]
    fn only_agent_binaries_are_asked() {
        let dir = tempfile::tempdir().unwrap();
        let make = |name: &str, mode: u32| {
            let path = dir.path().join(name);
            std::fs::write(&path, "").unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            }
            let _ = mode;
            path
        };
        assert!(is_agent_binary(&make("choreo-editor", 0o755)));
        assert!(!is_agent_binary(&make("choreo-editor.d", 0o644)));
        assert!(!is_agent_binary(&make("choreo-gateway", 0o755)));
        assert!(!is_agent_binary(&make("choreo-bench", 0o755)));
        assert!(!is_agent_binary(&make("choreo", 0o755)));
        assert!(!is_agent_binary(&make("nats-server", 0o755)));
        #[cfg(unix)]
        assert!(!is_agent_binary(&make("choreo-notes", 0o644)));
    }
}
