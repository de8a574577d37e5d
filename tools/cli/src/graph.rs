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
//! (default: beside this `choreo`) with `manifest`. The analysis ([`analyse`]) is a pure
//! function over manifests.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use choreo_bus::manifest::{GuardLimits, MANIFEST_SUBCOMMAND, Manifest};
use serde::Serialize;

use crate::Failure;

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

/// Binaries named `choreo-*` that are tools, not agents: never run with `manifest`.
const NOT_AGENTS: [&str; 2] = ["choreo-gateway", "choreo-bench"];
/// How long an agent binary may take to print its manifest (it connects to nothing).
const MANIFEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Loops of one component looked for; past it the report says the list is cut.
const MAX_CYCLES: usize = 64;
/// Loops of one component printed in the text report and the page.
const CYCLES_SHOWN: usize = 8;

pub async fn run(args: GraphArgs) -> Result<(), Failure> {
    let mut loaded = Vec::new();
    for path in &args.manifests {
        loaded.extend(read_path(path)?);
    }
    let agents_dir = match (&args.agents_dir, args.manifests.is_empty()) {
        (Some(dir), _) => Some(dir.clone()),
        (None, true) => Some(beside_this_binary()?),
        (None, false) => None,
    };
    if let Some(dir) = agents_dir {
        loaded.extend(ask_agents(&dir).await?);
    }
    let analysis = analyse(distinct(loaded)?);
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
    // The drawings carry no words: the findings go beside them.
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

// ---------------------------------------------------------------------------------------------
// Reading manifests

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

// ---------------------------------------------------------------------------------------------
// The analysis

/// The choreography: its agents and types, and what is wrong with it.
#[derive(Debug, Serialize)]
pub struct Analysis {
    /// By namespace, then name.
    pub agents: Vec<Manifest>,
    /// By namespace, then name.
    pub types: Vec<TypeNode>,
    pub loops: Vec<Loop>,
    /// Types subscribed that no agent emits: published from outside.
    pub entry_points: Vec<String>,
    /// Types emitted that no agent subscribes to.
    pub unhandled: Vec<String>,
    pub namespaces: Vec<String>,
    /// One sentence per problem; `--strict` fails when there is any.
    pub problems: Vec<String>,
}

/// An event type and the agents on either side of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TypeNode {
    pub namespace: String,
    pub name: String,
    pub emitted_by: Vec<String>,
    pub subscribed_by: Vec<String>,
}

impl TypeNode {
    /// Published from outside: no agent emits it.
    pub fn is_entry(&self) -> bool {
        self.emitted_by.is_empty()
    }

    /// No agent handles it.
    pub fn is_unhandled(&self) -> bool {
        self.subscribed_by.is_empty()
    }
}

/// Agents that can answer each other forever: a strongly connected component of the agent
/// graph, the loops found in it, and the guards that stop them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Loop {
    pub namespace: String,
    pub agents: Vec<String>,
    /// Each loop as the hops around it, from its first agent (by name) back to it.
    pub cycles: Vec<Vec<Hop>>,
    /// More loops run through these agents than were listed.
    pub cycles_cut: bool,
    /// The guards that stop every loop of the component, the one that trips first first;
    /// empty when nothing stops them.
    pub bounds: Vec<Bound>,
}

/// One hop of a loop: `agent` emits `emits`, which the next agent handles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hop {
    pub agent: String,
    pub emits: Vec<String>,
}

/// A guard that stops a loop, and the setting that does it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bound {
    pub guard: Guard,
    /// The largest value any loop of the component meets (each loop meets the smallest of its
    /// agents' settings).
    pub limit: u64,
    pub flag: &'static str,
    pub env: &'static str,
    /// The loop's agents configured with exactly that limit.
    pub set_on: Vec<String>,
}

/// The storm guards that can stop a loop (`bus/src/guard`), in the order they trip on a loop
/// with the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Guard {
    /// `CycleLimit`: an agent handles one type at most N times along one causation chain.
    CycleLimit,
    /// `DepthLimit`: children past N hops from the root are not published.
    DepthLimit,
    /// `CorrelationBudget`: a run emits at most N events, all agents together.
    EventBudget,
    /// `CorrelationBudget`: a run spends at most N model tokens; stops only loops that spend.
    TokenBudget,
}

impl Guard {
    const ALL: [Guard; 4] = [
        Guard::CycleLimit,
        Guard::DepthLimit,
        Guard::EventBudget,
        Guard::TokenBudget,
    ];

    fn limit(self, guards: &GuardLimits) -> Option<u64> {
        match self {
            Guard::CycleLimit => guards.max_visits.map(u64::from),
            Guard::DepthLimit => guards.max_depth.map(u64::from),
            Guard::EventBudget => guards.max_events,
            Guard::TokenBudget => guards.max_tokens,
        }
    }

    fn setting(self) -> (&'static str, &'static str) {
        match self {
            Guard::CycleLimit => ("--max-visits", "CHOREO_MAX_VISITS"),
            Guard::DepthLimit => ("--max-depth", "CHOREO_MAX_DEPTH"),
            Guard::EventBudget => ("--max-events", "CHOREO_MAX_EVENTS"),
            Guard::TokenBudget => ("--max-tokens", "CHOREO_MAX_TOKENS"),
        }
    }
}

/// Reads the choreography from its manifests (one per agent).
pub fn analyse(mut agents: Vec<Manifest>) -> Analysis {
    agents.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut types: BTreeMap<(String, String), TypeNode> = BTreeMap::new();
    for agent in &agents {
        let sides = [(&agent.emits, true), (&agent.subscribes, false)];
        for (names, emitted) in sides {
            for name in names {
                let node = types
                    .entry((agent.namespace.clone(), name.clone()))
                    .or_insert_with(|| TypeNode {
                        namespace: agent.namespace.clone(),
                        name: name.clone(),
                        emitted_by: Vec::new(),
                        subscribed_by: Vec::new(),
                    });
                let side = if emitted {
                    &mut node.emitted_by
                } else {
                    &mut node.subscribed_by
                };
                side.push(agent.name.clone());
            }
        }
    }
    let types: Vec<TypeNode> = types.into_values().collect();
    let graph = AgentGraph::new(&agents, &types);
    let loops = graph.loops(&agents);
    let namespaces: Vec<String> = agents
        .iter()
        .map(|agent| agent.namespace.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let qualified = |node: &TypeNode| {
        if namespaces.len() > 1 {
            format!("{}: {}", node.namespace, node.name)
        } else {
            node.name.clone()
        }
    };
    let entry_points: Vec<String> = types
        .iter()
        .filter(|t| t.is_entry())
        .map(qualified)
        .collect();
    let unhandled: Vec<String> = types
        .iter()
        .filter(|t| t.is_unhandled())
        .map(qualified)
        .collect();

    let mut problems = Vec::new();
    for found in &loops {
        problems.push(format!(
            "loop through {} ({})",
            found.agents.join(", "),
            match found.bounds.first() {
                Some(bound) => format!("bounded by the {}", guard_setting(bound)),
                None => "NOTHING stops it: every guard is off on some loop of it".to_string(),
            }
        ));
    }
    for node in types.iter().filter(|t| t.is_unhandled()) {
        problems.push(format!(
            "{} is emitted by {} and handled by no agent",
            qualified(node),
            node.emitted_by.join(", ")
        ));
    }
    if namespaces.len() > 1 {
        problems.push(format!(
            "the agents are in {} namespaces ({}), which never see each other's events",
            namespaces.len(),
            namespaces.join(", ")
        ));
    }
    Analysis {
        agents,
        types,
        loops,
        entry_points,
        unhandled,
        namespaces,
        problems,
    }
}

/// A → B when agent A emits a type agent B handles, in one namespace; the types on each edge.
#[derive(Debug)]
struct AgentGraph {
    edges: Vec<BTreeMap<usize, Vec<String>>>,
}

impl AgentGraph {
    fn new(agents: &[Manifest], types: &[TypeNode]) -> Self {
        let index: BTreeMap<(&str, &str), usize> = agents
            .iter()
            .enumerate()
            .map(|(i, agent)| ((agent.namespace.as_str(), agent.name.as_str()), i))
            .collect();
        let mut edges = vec![BTreeMap::<usize, Vec<String>>::new(); agents.len()];
        for node in types {
            let ids = |names: &[String]| -> Vec<usize> {
                names
                    .iter()
                    .filter_map(|name| index.get(&(node.namespace.as_str(), name.as_str())))
                    .copied()
                    .collect()
            };
            for from in ids(&node.emitted_by) {
                for to in ids(&node.subscribed_by) {
                    if let Some(out) = edges.get_mut(from) {
                        out.entry(to).or_default().push(node.name.clone());
                    }
                }
            }
        }
        AgentGraph { edges }
    }

    fn successors(&self, agent: usize) -> impl Iterator<Item = usize> + '_ {
        self.edges
            .get(agent)
            .into_iter()
            .flat_map(|out| out.keys().copied())
    }

    fn types(&self, from: usize, to: usize) -> Vec<String> {
        self.edges
            .get(from)
            .and_then(|out| out.get(&to))
            .cloned()
            .unwrap_or_default()
    }

    /// Strongly connected components (Tarjan), each sorted, in no particular order.
    fn components(&self) -> Vec<Vec<usize>> {
        struct Tarjan<'a> {
            graph: &'a AgentGraph,
            index: Vec<Option<usize>>,
            low: Vec<usize>,
            on_stack: Vec<bool>,
            stack: Vec<usize>,
            next: usize,
            components: Vec<Vec<usize>>,
        }
        impl Tarjan<'_> {
            fn visit(&mut self, v: usize) {
                self.index[v] = Some(self.next);
                self.low[v] = self.next;
                self.next += 1;
                self.stack.push(v);
                self.on_stack[v] = true;
                for w in self.graph.successors(v).collect::<Vec<_>>() {
                    match self.index[w] {
                        None => {
                            self.visit(w);
                            self.low[v] = self.low[v].min(self.low[w]);
                        }
                        Some(index) if self.on_stack[w] => self.low[v] = self.low[v].min(index),
                        Some(_) => {}
                    }
                }
                if self.index[v] == Some(self.low[v]) {
                    let mut component = Vec::new();
                    while let Some(w) = self.stack.pop() {
                        self.on_stack[w] = false;
                        component.push(w);
                        if w == v {
                            break;
                        }
                    }
                    component.sort_unstable();
                    self.components.push(component);
                }
            }
        }
        let n = self.edges.len();
        let mut tarjan = Tarjan {
            graph: self,
            index: vec![None; n],
            low: vec![0; n],
            on_stack: vec![false; n],
            stack: Vec::new(),
            next: 0,
            components: Vec::new(),
        };
        for v in 0..n {
            if tarjan.index[v].is_none() {
                tarjan.visit(v);
            }
        }
        tarjan.components
    }

    /// The elementary cycles of one component, each from its smallest agent, at most
    /// `MAX_CYCLES`; and whether the search was cut short.
    fn cycles(&self, component: &[usize]) -> (Vec<Vec<usize>>, bool) {
        struct Search<'a> {
            graph: &'a AgentGraph,
            members: BTreeSet<usize>,
            path: Vec<usize>,
            cycles: Vec<Vec<usize>>,
            steps: usize,
        }
        impl Search<'_> {
            /// False once the search must stop.
            fn walk(&mut self, start: usize, at: usize) -> bool {
                self.steps += 1;
                if self.steps > 100_000 {
                    return false;
                }
                for next in self.graph.successors(at).collect::<Vec<_>>() {
                    if next == start {
                        self.cycles.push(self.path.clone());
                        if self.cycles.len() >= MAX_CYCLES {
                            return false;
                        }
                    } else if next > start
                        && self.members.contains(&next)
                        && !self.path.contains(&next)
                    {
                        self.path.push(next);
                        let go_on = self.walk(start, next);
                        self.path.pop();
                        if !go_on {
                            return false;
                        }
                    }
                }
                true
            }
        }
        let mut search = Search {
            graph: self,
            members: component.iter().copied().collect(),
            path: Vec::new(),
            cycles: Vec::new(),
            steps: 0,
        };
        for &start in component {
            search.path = vec![start];
            if !search.walk(start, start) {
                return (search.cycles, true);
            }
        }
        (search.cycles, false)
    }

    fn loops(&self, agents: &[Manifest]) -> Vec<Loop> {
        let mut loops = Vec::new();
        for component in self.components() {
            let (mut cycles, cycles_cut) = self.cycles(&component);
            if cycles.is_empty() {
                continue;
            }
            cycles.sort_by_key(|cycle| cycle.len());
            let name = |agent: usize| {
                agents
                    .get(agent)
                    .map(|a| a.name.clone())
                    .unwrap_or_default()
            };
            let bounds = Guard::ALL
                .into_iter()
                .filter_map(|guard| bound(guard, &cycles, &component, agents))
                .collect();
            let hops = cycles
                .iter()
                .map(|cycle| {
                    cycle
                        .iter()
                        .enumerate()
                        .map(|(i, &agent)| Hop {
                            agent: name(agent),
                            emits: self.types(agent, cycle[(i + 1) % cycle.len()]),
                        })
                        .collect()
                })
                .collect();
            loops.push(Loop {
                namespace: component
                    .first()
                    .and_then(|&agent| agents.get(agent))
                    .map(|agent| agent.namespace.clone())
                    .unwrap_or_default(),
                agents: component.iter().map(|&agent| name(agent)).collect(),
                cycles: hops,
                cycles_cut,
                bounds,
            });
        }
        loops.sort_by(|a, b| (&a.namespace, &a.agents).cmp(&(&b.namespace, &b.agents)));
        loops
    }
}

/// How `guard` bounds every cycle: each cycle meets the smallest limit among its agents; the
/// component's bound is the largest of those. `None` when some cycle has no agent with the
/// guard on.
fn bound(
    guard: Guard,
    cycles: &[Vec<usize>],
    component: &[usize],
    agents: &[Manifest],
) -> Option<Bound> {
    let limit_of = |agent: usize| {
        agents
            .get(agent)
            .and_then(|a| a.guards.as_ref())
            .and_then(|g| guard.limit(g))
    };
    let mut worst = 0;
    for cycle in cycles {
        let met = cycle.iter().filter_map(|&agent| limit_of(agent)).min()?;
        worst = worst.max(met);
    }
    let (flag, env) = guard.setting();
    Some(Bound {
        guard,
        limit: worst,
        flag,
        env,
        set_on: component
            .iter()
            .filter(|&&agent| limit_of(agent) == Some(worst))
            .filter_map(|&agent| agents.get(agent).map(|a| a.name.clone()))
            .collect(),
    })
}

// ---------------------------------------------------------------------------------------------
// Words, shared by the text report and the page

fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// `cycle limit (--max-visits, CHOREO_MAX_VISITS = 5)`.
fn guard_setting(bound: &Bound) -> String {
    let what = match bound.guard {
        Guard::CycleLimit => "cycle limit",
        Guard::DepthLimit => "depth limit",
        Guard::EventBudget => "event budget",
        Guard::TokenBudget => "token budget",
    };
    format!("{what} ({}, {} = {})", bound.flag, bound.env, bound.limit)
}

/// What the first guard does to the loop, and the others behind it.
fn bound_sentences(found: &Loop) -> Vec<String> {
    let Some((first, backstops)) = found.bounds.split_first() else {
        return vec![
            "UNBOUNDED: on some loop every agent has --max-visits, --max-depth, --max-events and \
             --max-tokens off (or runs no choreo runtime); nothing would stop it"
                .to_string(),
        ];
    };
    let every = if first.set_on.len() == found.agents.len() {
        "every agent of the loop".to_string()
    } else {
        first.set_on.join(", ")
    };
    let what = match first.guard {
        Guard::CycleLimit => format!(
            "an agent handles one type at most {} times along one causation chain, so the loop \
             turns at most {} times; then the agent dead-letters its input (cycle_detected)",
            first.limit, first.limit
        ),
        Guard::DepthLimit => format!(
            "children past {} hops from the root are not published; the input is dead-lettered \
             (depth_exceeded)",
            first.limit
        ),
        Guard::EventBudget => format!(
            "the run emits at most {} events, all agents together; then the input is \
             dead-lettered (budget_exhausted)",
            first.limit
        ),
        Guard::TokenBudget => format!(
            "if its agents call models, the run spends at most {} tokens; then the input is \
             dead-lettered (budget_exhausted)",
            first.limit
        ),
    };
    let mut sentences = vec![format!(
        "bounded by the {}, set on {every}: {what}",
        guard_setting(first)
    )];
    if !backstops.is_empty() {
        sentences.push(format!(
            "behind it: the {}",
            backstops
                .iter()
                .map(guard_setting)
                .collect::<Vec<_>>()
                .join("; the ")
        ));
    }
    sentences
}

/// `editor → review.revision.requested → security → … → editor`.
fn cycle_line(cycle: &[Hop]) -> String {
    let mut line = String::new();
    for hop in cycle {
        let _ = write!(line, "{} → {} → ", hop.agent, hop.emits.join(" | "));
    }
    line.push_str(cycle.first().map(|hop| hop.agent.as_str()).unwrap_or(""));
    line
}

fn agent_label(analysis: &Analysis, agent: &Manifest) -> String {
    if analysis.namespaces.len() > 1 {
        format!("{}: {}", agent.namespace, agent.name)
    } else {
        agent.name.clone()
    }
}

fn type_label(analysis: &Analysis, node: &TypeNode) -> String {
    if analysis.namespaces.len() > 1 {
        format!("{}: {}", node.namespace, node.name)
    } else {
        node.name.clone()
    }
}

// ---------------------------------------------------------------------------------------------
// Text

/// The report.
pub fn text(analysis: &Analysis) -> String {
    let mut out = format!(
        "{} in {} {}, {}\n",
        count(analysis.agents.len(), "agent"),
        if analysis.namespaces.len() == 1 {
            "namespace"
        } else {
            "namespaces"
        },
        analysis.namespaces.join(", "),
        count(analysis.types.len(), "event type")
    );
    let entries: Vec<&TypeNode> = analysis.types.iter().filter(|t| t.is_entry()).collect();
    if !entries.is_empty() {
        out.push_str("\nentry points (no agent emits them: published from outside):\n");
        for node in entries {
            let _ = writeln!(
                out,
                "  {} → {}",
                type_label(analysis, node),
                node.subscribed_by.join(", ")
            );
        }
    }
    out.push_str("\nagents (handles → emits):\n");
    let width = analysis
        .agents
        .iter()
        .map(|agent| agent_label(analysis, agent).len())
        .max()
        .unwrap_or(0);
    for agent in &analysis.agents {
        let emits = if agent.emits.is_empty() {
            "(nothing)".to_string()
        } else {
            agent.emits.join(", ")
        };
        let _ = writeln!(
            out,
            "  {:width$}  {} → {emits}",
            agent_label(analysis, agent),
            agent.subscribes.join(", ")
        );
    }
    if !analysis.loops.is_empty() {
        out.push_str("\nloops (agents that can answer each other until a guard stops them):\n");
        for (i, found) in analysis.loops.iter().enumerate() {
            let _ = writeln!(out, "  {}. {}", i + 1, found.agents.join(", "));
            for cycle in found.cycles.iter().take(CYCLES_SHOWN) {
                let _ = writeln!(out, "       {}", cycle_line(cycle));
            }
            let hidden = found.cycles.len().saturating_sub(CYCLES_SHOWN);
            if hidden > 0 || found.cycles_cut {
                let _ = writeln!(
                    out,
                    "       … and {}{hidden} more",
                    if found.cycles_cut { "at least " } else { "" }
                );
            }
            for sentence in bound_sentences(found) {
                let _ = writeln!(out, "     {sentence}");
            }
        }
    }
    let unhandled: Vec<&TypeNode> = analysis.types.iter().filter(|t| t.is_unhandled()).collect();
    if !unhandled.is_empty() {
        out.push_str("\nemitted, handled by no agent:\n");
        let width = unhandled
            .iter()
            .map(|node| type_label(analysis, node).len())
            .max()
            .unwrap_or(0);
        for node in unhandled {
            let _ = writeln!(
                out,
                "  {:width$}  from {}",
                type_label(analysis, node),
                node.emitted_by.join(", ")
            );
        }
    }
    if analysis.namespaces.len() > 1 {
        let _ = writeln!(
            out,
            "\nthe agents are in {} namespaces, which never see each other's events",
            analysis.namespaces.len()
        );
    }
    if analysis.problems.is_empty() {
        out.push_str("\nno problems found\n");
    } else {
        let _ = writeln!(
            out,
            "\n{}: {}, {} no agent handles{}",
            count(analysis.problems.len(), "problem"),
            count(analysis.loops.len(), "loop"),
            count(analysis.unhandled.len(), "type"),
            if analysis.namespaces.len() > 1 {
                ", namespaces apart"
            } else {
                ""
            }
        );
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Drawings

/// The drawing's nodes and edges: agents first, then types, and which edges and agents are
/// on a loop.
#[derive(Debug)]
struct Drawing {
    nodes: Vec<Node>,
    edges: Vec<Edge>,
}

#[derive(Debug)]
struct Node {
    label: String,
    kind: NodeKind,
    /// Tooltip: what it handles and emits, or who emits and handles it.
    detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeKind {
    Agent,
    LoopAgent,
    Type,
    Entry,
    Unhandled,
}

#[derive(Debug, Clone, Copy)]
struct Edge {
    from: usize,
    to: usize,
    on_loop: bool,
}

impl Drawing {
    fn new(analysis: &Analysis) -> Self {
        let looping: BTreeSet<(&str, &str)> = analysis
            .loops
            .iter()
            .flat_map(|found| {
                found
                    .agents
                    .iter()
                    .map(|agent| (found.namespace.as_str(), agent.as_str()))
            })
            .collect();
        // The loop each agent is in, to tell an edge inside a loop from one between loops.
        let loop_of: BTreeMap<(&str, &str), usize> = analysis
            .loops
            .iter()
            .enumerate()
            .flat_map(|(i, found)| {
                found
                    .agents
                    .iter()
                    .map(move |agent| ((found.namespace.as_str(), agent.as_str()), i))
            })
            .collect();
        let mut nodes = Vec::new();
        let mut agent_index = BTreeMap::new();
        for agent in &analysis.agents {
            let key = (agent.namespace.as_str(), agent.name.as_str());
            agent_index.insert(key, nodes.len());
            nodes.push(Node {
                label: agent_label(analysis, agent),
                kind: if looping.contains(&key) {
                    NodeKind::LoopAgent
                } else {
                    NodeKind::Agent
                },
                detail: format!(
                    "{}\nhandles {}\nemits {}",
                    agent.description,
                    agent.subscribes.join(", "),
                    if agent.emits.is_empty() {
                        "nothing".to_string()
                    } else {
                        agent.emits.join(", ")
                    }
                ),
            });
        }
        let mut edges = Vec::new();
        for node in &analysis.types {
            let at = nodes.len();
            nodes.push(Node {
                label: type_label(analysis, node),
                kind: if node.is_entry() {
                    NodeKind::Entry
                } else if node.is_unhandled() {
                    NodeKind::Unhandled
                } else {
                    NodeKind::Type
                },
                detail: format!(
                    "emitted by {}\nhandled by {}",
                    or_nobody(&node.emitted_by, "no agent (an entry point)"),
                    or_nobody(&node.subscribed_by, "no agent"),
                ),
            });
            let loops_of = |names: &[String]| -> BTreeSet<usize> {
                names
                    .iter()
                    .filter_map(|name| loop_of.get(&(node.namespace.as_str(), name.as_str())))
                    .copied()
                    .collect()
            };
            let (emitter_loops, handler_loops) =
                (loops_of(&node.emitted_by), loops_of(&node.subscribed_by));
            for name in &node.emitted_by {
                if let Some(&from) = agent_index.get(&(node.namespace.as_str(), name.as_str())) {
                    let on_loop = loop_of
                        .get(&(node.namespace.as_str(), name.as_str()))
                        .is_some_and(|l| handler_loops.contains(l));
                    edges.push(Edge {
                        from,
                        to: at,
                        on_loop,
                    });
                }
            }
            for name in &node.subscribed_by {
                if let Some(&to) = agent_index.get(&(node.namespace.as_str(), name.as_str())) {
                    let on_loop = loop_of
                        .get(&(node.namespace.as_str(), name.as_str()))
                        .is_some_and(|l| emitter_loops.contains(l));
                    edges.push(Edge {
                        from: at,
                        to,
                        on_loop,
                    });
                }
            }
        }
        Drawing { nodes, edges }
    }
}

fn or_nobody(names: &[String], nobody: &str) -> String {
    if names.is_empty() {
        nobody.to_string()
    } else {
        names.join(", ")
    }
}

/// A Mermaid flowchart: agents as boxes, types as pills; loops in red, entry points green,
/// types no agent handles orange.
pub fn mermaid(analysis: &Analysis) -> String {
    let drawing = Drawing::new(analysis);
    let mut out = String::from("flowchart LR\n");
    for (i, node) in drawing.nodes.iter().enumerate() {
        let label = node.label.replace('"', "'");
        let (open, close) = match node.kind {
            NodeKind::Agent | NodeKind::LoopAgent => ("[\"", "\"]"),
            _ => ("([\"", "\"])"),
        };
        let _ = writeln!(out, "  n{i}{open}{label}{close}");
    }
    let mut loop_edges = Vec::new();
    for (i, edge) in drawing.edges.iter().enumerate() {
        let _ = writeln!(out, "  n{} --> n{}", edge.from, edge.to);
        if edge.on_loop {
            loop_edges.push(i.to_string());
        }
    }
    out.push_str(
        "  classDef agent fill:#eef3fb,stroke:#36c\n\
         \x20 classDef loop fill:#eef3fb,stroke:#c00,stroke-width:2px\n\
         \x20 classDef type fill:#f6f6f6,stroke:#999\n\
         \x20 classDef entry fill:#e6f4ea,stroke:#2a7\n\
         \x20 classDef unhandled fill:#fff4e5,stroke:#d90\n",
    );
    for (kind, class) in [
        (NodeKind::Agent, "agent"),
        (NodeKind::LoopAgent, "loop"),
        (NodeKind::Type, "type"),
        (NodeKind::Entry, "entry"),
        (NodeKind::Unhandled, "unhandled"),
    ] {
        let ids: Vec<String> = drawing
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, node)| node.kind == kind)
            .map(|(i, _)| format!("n{i}"))
            .collect();
        if !ids.is_empty() {
            let _ = writeln!(out, "  class {} {class}", ids.join(","));
        }
    }
    if !loop_edges.is_empty() {
        let _ = writeln!(
            out,
            "  linkStyle {} stroke:#c00,stroke-width:2px",
            loop_edges.join(",")
        );
    }
    out
}

/// A Graphviz digraph, coloured as the Mermaid one.
pub fn dot(analysis: &Analysis) -> String {
    let drawing = Drawing::new(analysis);
    let mut out = String::from(
        "digraph choreography {\n  rankdir=LR;\n  node [fontname=\"sans-serif\", fontsize=11];\n",
    );
    for (i, found) in analysis.loops.iter().enumerate() {
        let _ = writeln!(
            out,
            "  // loop {}: {}",
            i + 1,
            bound_sentences(found).join(" ")
        );
    }
    for (i, node) in drawing.nodes.iter().enumerate() {
        let style = match node.kind {
            NodeKind::Agent => {
                "shape=box, style=\"rounded,filled\", fillcolor=\"#eef3fb\", color=\"#3366cc\""
            }
            NodeKind::LoopAgent => {
                "shape=box, style=\"rounded,filled\", fillcolor=\"#eef3fb\", color=\"#cc0000\", penwidth=2"
            }
            NodeKind::Type => {
                "shape=ellipse, style=filled, fillcolor=\"#f6f6f6\", color=\"#999999\""
            }
            NodeKind::Entry => {
                "shape=ellipse, style=filled, fillcolor=\"#e6f4ea\", color=\"#22aa77\""
            }
            NodeKind::Unhandled => {
                "shape=ellipse, style=filled, fillcolor=\"#fff4e5\", color=\"#dd9900\""
            }
        };
        let _ = writeln!(
            out,
            "  n{i} [label=\"{}\", tooltip=\"{}\", {style}];",
            dot_escape(&node.label),
            dot_escape(&node.detail)
        );
    }
    for edge in &drawing.edges {
        let style = if edge.on_loop {
            " [color=\"#cc0000\", penwidth=2]"
        } else {
            ""
        };
        let _ = writeln!(out, "  n{} -> n{}{style};", edge.from, edge.to);
    }
    out.push_str("}\n");
    out
}

fn dot_escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Where each node is drawn: columns by longest path from the entry points (edges that close
/// a loop left out), rows ordered to put a node near what feeds it.
#[derive(Debug)]
struct Layout {
    /// Per node: column, row, width.
    rank: Vec<usize>,
    row: Vec<f64>,
    width: Vec<f64>,
    /// Edges that go back to an earlier column (they close a loop).
    back: BTreeSet<usize>,
}

const NODE_HEIGHT: f64 = 28.0;
const ROW_HEIGHT: f64 = 46.0;
const COLUMN_GAP: f64 = 70.0;
const MARGIN: f64 = 20.0;
/// Below the lowest node, room for the edges that close loops.
const LOOP_ROOM: f64 = 60.0;

fn text_width(text: &str) -> f64 {
    7.0 * text.chars().count() as f64
}

impl Layout {
    fn new(drawing: &Drawing) -> Self {
        let n = drawing.nodes.len();
        let mut out: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n];
        for (i, edge) in drawing.edges.iter().enumerate() {
            if let Some(list) = out.get_mut(edge.from) {
                list.push((edge.to, i));
            }
        }
        let order = feedback_order(drawing);
        let mut position = vec![0usize; n];
        for (at, &node) in order.iter().enumerate() {
            position[node] = at;
        }
        // An edge against the order closes a loop: drawn back along the bottom, and left out
        // of the columns.
        let back: BTreeSet<usize> = drawing
            .edges
            .iter()
            .enumerate()
            .filter(|(_, edge)| position[edge.from] >= position[edge.to])
            .map(|(i, _)| i)
            .collect();
        // Columns: the longest path from a source; then a source moves up to just before the
        // first node it feeds, so a type that only a loop emits sits beside what it feeds.
        let mut rank = vec![0usize; n];
        let mut fed = vec![false; n];
        for &node in &order {
            for &(to, edge) in &out[node] {
                if !back.contains(&edge) {
                    rank[to] = rank[to].max(rank[node] + 1);
                    fed[to] = true;
                }
            }
        }
        for &node in order.iter().rev() {
            let first_fed = out[node]
                .iter()
                .filter(|(_, edge)| !back.contains(edge))
                .map(|&(to, _)| rank[to])
                .min();
            if let Some(first_fed) = first_fed.filter(|_| !fed[node]) {
                rank[node] = first_fed.saturating_sub(1);
            }
        }
        // Rows: in the order, then a few passes placing each node at the mean row of
        // its neighbours in the column before.
        let columns = rank.iter().max().map_or(0, |max| max + 1);
        let mut row = vec![0.0; n];
        let mut in_column = vec![Vec::new(); columns];
        for &node in &order {
            in_column[rank[node]].push(node);
        }
        for nodes in &in_column {
            for (i, &node) in nodes.iter().enumerate() {
                row[node] = i as f64;
            }
        }
        for _ in 0..4 {
            for nodes in in_column.iter_mut().skip(1) {
                let mut keyed: Vec<(f64, usize)> = nodes
                    .iter()
                    .map(|&node| {
                        let feeders: Vec<f64> = drawing
                            .edges
                            .iter()
                            .enumerate()
                            .filter(|(i, e)| e.to == node && !back.contains(i))
                            .map(|(_, e)| row[e.from])
                            .collect();
                        let key = if feeders.is_empty() {
                            row[node]
                        } else {
                            feeders.iter().sum::<f64>() / feeders.len() as f64
                        };
                        (key, node)
                    })
                    .collect();
                keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                *nodes = keyed.into_iter().map(|(_, node)| node).collect();
                for (i, &node) in nodes.iter().enumerate() {
                    row[node] = i as f64;
                }
            }
        }
        // Centre each column on the tallest.
        let tallest = in_column.iter().map(Vec::len).max().unwrap_or(0) as f64;
        for nodes in &in_column {
            let shift = (tallest - nodes.len() as f64) / 2.0;
            for &node in nodes {
                row[node] += shift;
            }
        }
        let width = drawing
            .nodes
            .iter()
            .map(|node| text_width(&node.label) + 24.0)
            .collect();
        Layout {
            rank,
            row,
            width,
            back,
        }
    }
}

/// The nodes in an order that few edges go against (Eades, Lin and Smyth's greedy heuristic
/// for a small feedback arc set): sinks to the end and sources to the front as they appear,
/// else the node with the most edges out over in to the front. Loops are then broken where
/// they close (the editor sending a report back), not where they enter.
fn feedback_order(drawing: &Drawing) -> Vec<usize> {
    let n = drawing.nodes.len();
    let mut left = Vec::new();
    let mut right = Vec::new();
    let mut placed = vec![false; n];
    let degree = |node: usize, placed: &[bool], outgoing: bool| {
        drawing
            .edges
            .iter()
            .filter(|edge| {
                let (this, other) = if outgoing {
                    (edge.from, edge.to)
                } else {
                    (edge.to, edge.from)
                };
                this == node && !placed[other]
            })
            .count()
    };
    while placed.iter().any(|done| !done) {
        let mut changed = true;
        while changed {
            changed = false;
            for node in 0..n {
                if !placed[node] && degree(node, &placed, true) == 0 {
                    placed[node] = true;
                    right.push(node);
                    changed = true;
                }
            }
            for node in 0..n {
                if !placed[node] && degree(node, &placed, false) == 0 {
                    placed[node] = true;
                    left.push(node);
                    changed = true;
                }
            }
        }
        let best = (0..n).filter(|&node| !placed[node]).max_by_key(|&node| {
            let surplus = degree(node, &placed, true) as i64 - degree(node, &placed, false) as i64;
            // The first node wins a tie.
            (surplus, std::cmp::Reverse(node))
        });
        if let Some(node) = best {
            placed[node] = true;
            left.push(node);
        }
    }
    right.reverse();
    left.extend(right);
    left
}

/// The page: the graph as SVG (agents as boxes, types as pills, loops in red), then the report
/// and every agent's manifest as a table. No script, nothing fetched.
pub fn html(analysis: &Analysis) -> String {
    let drawing = Drawing::new(analysis);
    let layout = Layout::new(&drawing);
    let columns = layout.rank.iter().max().map_or(0, |max| max + 1);
    let mut column_width = vec![0.0f64; columns];
    for (node, &rank) in layout.rank.iter().enumerate() {
        column_width[rank] = column_width[rank].max(layout.width[node]);
    }
    let mut column_x = vec![MARGIN; columns];
    for c in 1..columns {
        column_x[c] = column_x[c - 1] + column_width[c - 1] + COLUMN_GAP;
    }
    let centre_x =
        |node: usize| column_x[layout.rank[node]] + column_width[layout.rank[node]] / 2.0;
    let centre_y = |node: usize| MARGIN + NODE_HEIGHT / 2.0 + layout.row[node] * ROW_HEIGHT;
    let width = column_x.last().copied().unwrap_or(MARGIN)
        + column_width.last().copied().unwrap_or(0.0)
        + MARGIN;
    let lowest = layout.row.iter().copied().fold(0.0, f64::max);
    let height = MARGIN * 2.0 + NODE_HEIGHT + lowest * ROW_HEIGHT + LOOP_ROOM;

    let mut svg = format!(
        "<svg width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\" \
         font-family=\"sans-serif\" font-size=\"12\" role=\"img\">\n\
         <defs><marker id=\"arrow\" viewBox=\"0 0 8 8\" refX=\"8\" refY=\"4\" markerWidth=\"7\" \
         markerHeight=\"7\" orient=\"auto\"><path d=\"M0,0 L8,4 L0,8 z\" fill=\"#888\"/></marker>\
         <marker id=\"arrow-loop\" viewBox=\"0 0 8 8\" refX=\"8\" refY=\"4\" markerWidth=\"7\" \
         markerHeight=\"7\" orient=\"auto\"><path d=\"M0,0 L8,4 L0,8 z\" fill=\"#c00\"/></marker></defs>\n"
    );
    for (i, edge) in drawing.edges.iter().enumerate() {
        let (from, to) = (edge.from, edge.to);
        let (fx, fy, tx, ty) = (centre_x(from), centre_y(from), centre_x(to), centre_y(to));
        let path = if layout.back.contains(&i) {
            // Back along the bottom: out of the source's foot, into the target's.
            let below = MARGIN + NODE_HEIGHT + lowest * ROW_HEIGHT + LOOP_ROOM * 0.7;
            format!(
                "M{fx:.1},{:.1} C{fx:.1},{below:.1} {tx:.1},{below:.1} {tx:.1},{:.1}",
                fy + NODE_HEIGHT / 2.0,
                ty + NODE_HEIGHT / 2.0
            )
        } else {
            let x1 = fx + layout.width[from] / 2.0;
            let x2 = tx - layout.width[to] / 2.0;
            let bend = (x2 - x1) / 2.0;
            format!(
                "M{x1:.1},{fy:.1} C{:.1},{fy:.1} {:.1},{ty:.1} {x2:.1},{ty:.1}",
                x1 + bend,
                x2 - bend
            )
        };
        let (stroke, marker) = if edge.on_loop {
            ("#c00", "arrow-loop")
        } else {
            ("#888", "arrow")
        };
        let _ = writeln!(
            svg,
            "<path d=\"{path}\" fill=\"none\" stroke=\"{stroke}\" stroke-width=\"{}\" marker-end=\"url(#{marker})\"/>",
            if edge.on_loop { 2 } else { 1 }
        );
    }
    for (i, node) in drawing.nodes.iter().enumerate() {
        let (w, x, y) = (layout.width[i], centre_x(i), centre_y(i));
        let (fill, stroke, radius, class) = match node.kind {
            NodeKind::Agent => ("#eef3fb", "#36c", 4.0, "agent"),
            NodeKind::LoopAgent => ("#eef3fb", "#c00", 4.0, "agent loop"),
            NodeKind::Type => ("#f6f6f6", "#999", NODE_HEIGHT / 2.0, "type"),
            NodeKind::Entry => ("#e6f4ea", "#2a7", NODE_HEIGHT / 2.0, "type entry"),
            NodeKind::Unhandled => ("#fff4e5", "#d90", NODE_HEIGHT / 2.0, "type unhandled"),
        };
        let stroke_width = if node.kind == NodeKind::LoopAgent {
            2
        } else {
            1
        };
        let _ = writeln!(
            svg,
            "<g class=\"{class}\"><title>{}</title><rect x=\"{:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{NODE_HEIGHT}\" rx=\"{radius}\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"{stroke_width}\"/><text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\"{}>{}</text></g>",
            escape(&node.detail),
            x - w / 2.0,
            y - NODE_HEIGHT / 2.0,
            y + 4.0,
            if matches!(node.kind, NodeKind::Agent | NodeKind::LoopAgent) {
                " font-weight=\"bold\""
            } else {
                ""
            },
            escape(&node.label)
        );
    }
    svg.push_str("</svg>\n");

    let mut report = String::new();
    if analysis.problems.is_empty() {
        report.push_str("<p class=\"ok\">No problems found.</p>\n");
    } else {
        let _ = writeln!(
            report,
            "<h2>{}</h2>",
            escape(&count(analysis.problems.len(), "problem"))
        );
    }
    if !analysis.loops.is_empty() {
        report.push_str(
            "<h3>Loops</h3><p>Agents that can answer each other until a guard stops them.</p><ol>\n",
        );
        for found in &analysis.loops {
            let _ = write!(
                report,
                "<li><b>{}</b><ul>",
                escape(&found.agents.join(", "))
            );
            for cycle in found.cycles.iter().take(CYCLES_SHOWN) {
                let _ = write!(
                    report,
                    "<li><code>{}</code></li>",
                    escape(&cycle_line(cycle))
                );
            }
            if found.cycles.len() > CYCLES_SHOWN || found.cycles_cut {
                report.push_str("<li>… and more</li>");
            }
            report.push_str("</ul>");
            for sentence in bound_sentences(found) {
                let _ = write!(report, "<p class=\"bound\">{}</p>", escape(&sentence));
            }
            report.push_str("</li>\n");
        }
        report.push_str("</ol>\n");
    }
    let list = |title: &str, nodes: Vec<&TypeNode>, side: fn(&TypeNode) -> String| {
        let mut out = String::new();
        if !nodes.is_empty() {
            let _ = write!(out, "<h3>{}</h3><ul>", escape(title));
            for node in nodes {
                let _ = write!(
                    out,
                    "<li><code>{}</code> {}</li>",
                    escape(&type_label(analysis, node)),
                    escape(&side(node))
                );
            }
            out.push_str("</ul>\n");
        }
        out
    };
    report.push_str(&list(
        "Emitted, handled by no agent",
        analysis.types.iter().filter(|t| t.is_unhandled()).collect(),
        |node| format!("from {}", node.emitted_by.join(", ")),
    ));
    if analysis.namespaces.len() > 1 {
        let _ = writeln!(
            report,
            "<p>The agents are in {} namespaces ({}), which never see each other's events.</p>",
            analysis.namespaces.len(),
            escape(&analysis.namespaces.join(", "))
        );
    }
    report.push_str(&list(
        "Entry points (no agent emits them: published from outside)",
        analysis.types.iter().filter(|t| t.is_entry()).collect(),
        |node| format!("→ {}", node.subscribed_by.join(", ")),
    ));

    let mut rows = String::new();
    for agent in &analysis.agents {
        let guards = agent.guards.map_or_else(
            || "none stated".to_string(),
            |g| {
                let show = |value: Option<u64>| value.map_or("off".to_string(), |v| v.to_string());
                format!(
                    "visits {}, depth {}, events {}, tokens {}",
                    show(g.max_visits.map(u64::from)),
                    show(g.max_depth.map(u64::from)),
                    show(g.max_events),
                    show(g.max_tokens)
                )
            },
        );
        let publishes: Vec<String> = agent
            .publishes
            .iter()
            .map(|p| format!("{} ({})", p.subject, p.stream))
            .collect();
        let _ = writeln!(
            rows,
            "<tr><td><b>{}</b><br><small>{}</small></td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code> on {}</td><td><code>{}</code></td><td>{}</td></tr>",
            escape(&agent.name),
            escape(&agent.description),
            escape(&agent.version),
            escape(&agent.subscribes.join(", ")),
            escape(&or_nobody(&agent.emits, "nothing")),
            escape(&agent.consumer.durable),
            escape(&agent.consumer.stream),
            publishes
                .iter()
                .map(|p| escape(p))
                .collect::<Vec<_>>()
                .join("<br>"),
            escape(&guards)
        );
    }
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>choreo graph</title>\n\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}}\
         .bound{{margin:.3em 0 .8em 1.5em}}.ok{{color:#2a7}}.key span{{display:inline-block;\
         padding:0 .6em;margin-right:.5em;border:1px solid}}svg{{max-width:100%;height:auto}}</style></head>\n\
         <body><h1>Choreography</h1><p>{summary}</p>\n\
         <p class=\"key\"><span style=\"background:#eef3fb;border-color:#36c\">agent</span>\
         <span style=\"background:#eef3fb;border-color:#c00\">agent on a loop</span>\
         <span style=\"background:#e6f4ea;border-color:#2a7;border-radius:1em\">entry point</span>\
         <span style=\"background:#f6f6f6;border-color:#999;border-radius:1em\">event type</span>\
         <span style=\"background:#fff4e5;border-color:#d90;border-radius:1em\">handled by no agent</span></p>\n\
         {svg}{report}<h2>Agents</h2>\n<table><tr><th>agent</th><th>version</th><th>handles</th>\
         <th>emits</th><th>consumer</th><th>publishes to</th><th>guards</th></tr>\n{rows}</table>\
         </body></html>\n",
        summary = escape(&format!(
            "{} in namespace {}, {}",
            count(analysis.agents.len(), "agent"),
            analysis.namespaces.join(", "),
            count(analysis.types.len(), "event type")
        )),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

    use super::*;
    use choreo_bus::manifest::MANIFEST_SCHEMA;

    /// A manifest as an agent of choreo's runtime with the default guards writes it.
    fn agent(name: &str, subscribes: &[&str], emits: &[&str]) -> Manifest {
        let mut builder = choreo_bus::Agent::builder(name);
        for t in subscribes {
            builder = builder.subscribes(*t);
        }
        for t in emits {
            builder = builder.emits(*t);
        }
        let declared = builder.build().expect("valid");
        Manifest::new(&declared, "", &choreo_bus::RuntimeConfig::default())
    }

    fn with_visits(mut manifest: Manifest, visits: Option<u32>) -> Manifest {
        if let Some(guards) = &mut manifest.guards {
            guards.max_visits = visits;
        }
        manifest
    }

    /// The review team as its agents declare themselves.
    fn review_team() -> Vec<Manifest> {
        let specialist = |name| {
            agent(
                name,
                &["review.planned", "review.revision.requested"],
                &["review.finding", "review.specialist.completed"],
            )
        };
        vec![
            agent(
                "fetcher",
                &["github.pull_request.changed"],
                &["review.requested"],
            ),
            agent("triage", &["review.requested"], &["review.planned"]),
            specialist("security"),
            specialist("style"),
            agent(
                "aggregator",
                &[
                    "review.planned",
                    "review.specialist.completed",
                    "review.deadline",
                ],
                &["review.completed", "review.deadline"],
            ),
            agent(
                "editor",
                &["review.completed"],
                &["review.approved", "review.revision.requested"],
            ),
            agent("notifier", &["review.approved"], &["review.delivered"]),
        ]
    }

    #[test]
    fn the_review_team_has_one_loop_stopped_by_the_cycle_limit() {
        let analysis = analyse(review_team());
        assert_eq!(analysis.loops.len(), 1, "{:#?}", analysis.loops);
        let found = &analysis.loops[0];
        assert_eq!(found.agents, ["aggregator", "editor", "security", "style"]);
        let lines: Vec<String> = found.cycles.iter().map(|c| cycle_line(c)).collect();
        assert!(
            lines.contains(
                &"aggregator → review.completed → editor → review.revision.requested → \
                  security → review.specialist.completed → aggregator"
                    .to_string()
            ),
            "{lines:#?}"
        );
        assert!(
            lines.contains(&"aggregator → review.deadline → aggregator".to_string()),
            "{lines:#?}"
        );
        assert_eq!(found.cycles.len(), 3, "{lines:#?}");
        let first = &found.bounds[0];
        assert_eq!(first.guard, Guard::CycleLimit);
        assert_eq!(
            (first.limit, first.flag, first.env),
            (5, "--max-visits", "CHOREO_MAX_VISITS")
        );
        assert_eq!(
            found.bounds.iter().map(|b| b.guard).collect::<Vec<_>>(),
            Guard::ALL
        );
        assert_eq!(analysis.entry_points, ["github.pull_request.changed"]);
        assert_eq!(analysis.unhandled, ["review.delivered", "review.finding"]);
        assert_eq!(analysis.problems.len(), 3, "{:#?}", analysis.problems);
    }

    #[test]
    fn ping_and_pong_answering_each_other_are_a_loop() {
        let analysis = analyse(vec![
            agent("ping", &["game.started", "pong.returned"], &["ping.sent"]),
            agent("pong", &["ping.sent"], &["pong.returned"]),
        ]);
        assert_eq!(analysis.loops.len(), 1);
        assert_eq!(
            cycle_line(&analysis.loops[0].cycles[0]),
            "ping → ping.sent → pong → pong.returned → ping"
        );
        assert_eq!(analysis.entry_points, ["game.started"]);
        assert!(analysis.unhandled.is_empty());
    }

    #[test]
    fn a_pipeline_has_no_loop_and_its_entry_point_is_no_problem() {
        let analysis = analyse(vec![
            agent("counter", &["text.submitted"], &["text.counted"]),
            agent("reporter", &["text.counted"], &[]),
        ]);
        assert!(analysis.loops.is_empty());
        assert_eq!(analysis.entry_points, ["text.submitted"]);
        assert!(analysis.problems.is_empty(), "{:#?}", analysis.problems);
        assert!(text(&analysis).contains("no problems found"));
    }

    #[test]
    fn an_orphan_type_is_a_problem() {
        let analysis = analyse(vec![agent(
            "counter",
            &["text.submitted"],
            &["text.counted"],
        )]);
        assert_eq!(analysis.unhandled, ["text.counted"]);
        assert_eq!(
            analysis.problems,
            ["text.counted is emitted by counter and handled by no agent"]
        );
    }

    #[test]
    fn the_loop_meets_its_weakest_guard_and_none_is_unbounded() {
        // Visits: ping 3, pong 7: each turn meets ping's 3.
        let mut ping = with_visits(agent("ping", &["pong.returned"], &["ping.sent"]), Some(3));
        let pong = with_visits(agent("pong", &["ping.sent"], &["pong.returned"]), Some(7));
        let found = &analyse(vec![ping.clone(), pong.clone()]).loops[0];
        assert_eq!(found.bounds[0].guard, Guard::CycleLimit);
        assert_eq!(found.bounds[0].limit, 3);
        assert_eq!(found.bounds[0].set_on, ["ping"]);
        assert!(bound_sentences(found)[0].contains("set on ping:"));

        // The cycle limit off on both: the depth limit stops it.
        ping = with_visits(ping, None);
        let found = &analyse(vec![ping.clone(), with_visits(pong, None)]).loops[0];
        assert_eq!(found.bounds[0].guard, Guard::DepthLimit);

        // Agents that state no guards (another runtime): nothing stops it.
        let bare = |mut m: Manifest| {
            m.guards = None;
            m
        };
        let analysis = analyse(vec![
            bare(ping),
            bare(agent("pong", &["ping.sent"], &["pong.returned"])),
        ]);
        assert!(analysis.loops[0].bounds.is_empty());
        assert!(
            analysis.problems[0].contains("NOTHING stops it"),
            "{:?}",
            analysis.problems
        );
        assert!(text(&analysis).contains("UNBOUNDED"));
    }

    #[test]
    fn an_agent_answering_itself_is_a_loop() {
        let analysis = analyse(vec![agent("echo", &["shout.heard"], &["shout.heard"])]);
        assert_eq!(analysis.loops.len(), 1);
        assert_eq!(
            cycle_line(&analysis.loops[0].cycles[0]),
            "echo → shout.heard → echo"
        );
    }

    #[test]
    fn agents_in_different_namespaces_do_not_meet() {
        let mut pong = agent("pong", &["ping.sent"], &["pong.returned"]);
        pong.namespace = "sandbox".into();
        let analysis = analyse(vec![
            agent("ping", &["pong.returned"], &["ping.sent"]),
            pong,
        ]);
        assert!(analysis.loops.is_empty());
        assert_eq!(analysis.namespaces, ["events", "sandbox"]);
        assert!(
            analysis.problems.iter().any(|p| p.contains("2 namespaces")),
            "{:#?}",
            analysis.problems
        );
        assert!(
            analysis
                .unhandled
                .contains(&"events: ping.sent".to_string())
        );
    }

    #[test]
    fn many_loops_are_cut_and_said_to_be() {
        // Every agent answers every other: many more cycles than are looked for.
        let names: Vec<String> = (0..7).map(|i| format!("a{i}")).collect();
        let agents = names
            .iter()
            .map(|name| agent(name, &["x.said"], &["x.said"]))
            .collect();
        let analysis = analyse(agents);
        assert_eq!(analysis.loops.len(), 1);
        assert!(analysis.loops[0].cycles_cut);
        assert_eq!(analysis.loops[0].cycles.len(), MAX_CYCLES);
        assert!(text(&analysis).contains("at least"));
    }

    #[test]
    fn the_drawings_show_every_agent_and_colour_the_loop() {
        let analysis = analyse(review_team());
        let chart = mermaid(&analysis);
        assert!(chart.starts_with("flowchart LR\n"));
        let dot = dot(&analysis);
        let page = html(&analysis);
        for manifest in &analysis.agents {
            assert!(
                chart.contains(&format!("[\"{}\"]", manifest.name)),
                "{chart}"
            );
            assert!(
                dot.contains(&format!("label=\"{}\"", manifest.name)),
                "{dot}"
            );
            assert!(
                page.contains(&format!(">{}</text>", manifest.name)),
                "{page}"
            );
        }
        assert!(chart.contains("classDef loop"));
        assert!(chart.contains("linkStyle "), "{chart}");
        // The editor is drawn as on the loop; the notifier is not.
        let id = |label: &str| {
            chart
                .lines()
                .find_map(|line| line.trim().strip_suffix(&format!("[\"{label}\"]")))
                .unwrap_or_else(|| panic!("{label} in {chart}"))
                .to_string()
        };
        let class_of = |id: &str| {
            chart
                .lines()
                .filter_map(|line| line.trim().strip_prefix("class "))
                .find_map(|rest| {
                    let (ids, class) = rest.split_once(' ')?;
                    ids.split(',').any(|i| i == id).then(|| class.to_string())
                })
                .unwrap_or_else(|| panic!("{id} has no class in {chart}"))
        };
        assert_eq!(class_of(&id("editor")), "loop");
        assert_eq!(class_of(&id("notifier")), "agent");
        assert!(
            dot.contains(
                "// loop 1: bounded by the cycle limit (--max-visits, CHOREO_MAX_VISITS = 5)"
            ),
            "{dot}"
        );
        assert!(dot.contains("color=\"#cc0000\", penwidth=2]"), "{dot}");
    }

    #[test]
    fn a_page_escapes_what_the_manifests_say() {
        let mut counter = agent("counter", &["text.submitted"], &["text.counted"]);
        counter.description = "<script>alert(1)</script> & more".into();
        let page = html(&analyse(vec![counter]));
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; more"));
    }

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
