//! What is wrong with a choreography, from its agents' manifests alone: a pure function,
//! [`analyse`], tested without processes.

use std::collections::{BTreeMap, BTreeSet};

use choreo_bus::manifest::{GuardLimits, Manifest};
use serde::Serialize;

/// Loops of one component looked for; past it the report says the list is cut.
pub const MAX_CYCLES: usize = 64;

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
    /// The guards that stop every loop of the component, the one that trips first (that lets
    /// the loop make the fewest hops) first; empty when nothing stops them.
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
    /// At most how many hops (handlings, one event apart) it lets a loop make from the root:
    /// visits × the loop's length for the cycle limit, the limit itself for the depth limit
    /// and the event budget (every hop emits at least one event). `None` for the token budget,
    /// which stops only a loop whose agents spend tokens.
    pub hops: Option<u64>,
}

/// `cycle limit (--max-visits, CHOREO_MAX_VISITS = 5)`.
impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}, {} = {})",
            self.guard.name(),
            self.flag,
            self.env,
            self.limit
        )
    }
}

/// The storm guards that can stop a loop (`bus/src/guard`).
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

    /// What people call it.
    pub fn name(self) -> &'static str {
        match self {
            Guard::CycleLimit => "cycle limit",
            Guard::DepthLimit => "depth limit",
            Guard::EventBudget => "event budget",
            Guard::TokenBudget => "token budget",
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
    let qualified = |node: &TypeNode| label(&namespaces, &node.namespace, &node.name);
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
            "loop through {}: {}",
            found.agents.join(", "),
            match found.bounds.first() {
                Some(bound) => format!("bounded by the {bound}"),
                None => "UNBOUNDED, no guard is on along one of its paths".to_string(),
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

/// A name as shown: with its namespace when the agents are in more than one.
pub fn label(namespaces: &[String], namespace: &str, name: &str) -> String {
    if namespaces.len() > 1 {
        format!("{namespace}: {name}")
    } else {
        name.to_string()
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
            let mut bounds: Vec<Bound> = Guard::ALL
                .into_iter()
                .filter_map(|guard| bound(guard, &cycles, &component, agents))
                .collect();
            // The guard that lets the loop go the shortest way trips first.
            bounds.sort_by_key(|bound| bound.hops.unwrap_or(u64::MAX));
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
    let (mut worst, mut hops) = (0, 0u64);
    for cycle in cycles {
        let met = cycle.iter().filter_map(|&agent| limit_of(agent)).min()?;
        worst = worst.max(met);
        let length = u64::try_from(cycle.len()).unwrap_or(u64::MAX);
        hops = hops.max(match guard {
            Guard::CycleLimit => met.saturating_mul(length),
            _ => met,
        });
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
        hops: (guard != Guard::TokenBudget).then_some(hops),
    })
}

#[cfg(test)]
pub(super) mod testing {
    #![allow(clippy::expect_used)]

    use choreo_bus::manifest::Manifest;

    /// A manifest as an agent of choreo's runtime with the default guards writes it.
    pub fn agent(name: &str, subscribes: &[&str], emits: &[&str]) -> Manifest {
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

    pub fn with_visits(mut manifest: Manifest, visits: Option<u32>) -> Manifest {
        if let Some(guards) = &mut manifest.guards {
            guards.max_visits = visits;
        }
        manifest
    }

    /// The review team as its agents declare themselves.
    pub fn review_team() -> Vec<Manifest> {
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
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

    use super::testing::{agent, review_team, with_visits};
    use super::*;
    use crate::graph::draw::{bound_sentences, cycle_line, text};

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
            analysis.problems[0].contains("UNBOUNDED"),
            "{:?}",
            analysis.problems
        );
        assert!(text(&analysis).contains("UNBOUNDED"));
    }

    #[test]
    fn a_long_loop_meets_the_depth_limit_first() {
        // Seven agents in a ring: five turns would be 35 hops, past the 32 of the depth limit.
        let ring = |length: usize| -> Vec<Manifest> {
            (0..length)
                .map(|i| {
                    let heard = format!("ring.n{i}");
                    let said = format!("ring.n{}", (i + 1) % length);
                    agent(&format!("a{i}"), &[heard.as_str()], &[said.as_str()])
                })
                .collect()
        };
        let long = &analyse(ring(7)).loops[0];
        assert_eq!(long.bounds[0].guard, Guard::DepthLimit);
        assert_eq!(long.bounds[0].hops, Some(32));
        assert_eq!(long.bounds[1].guard, Guard::CycleLimit);
        assert_eq!(long.bounds[1].hops, Some(35));
        assert_eq!(
            long.bounds.last().map(|b| b.guard),
            Some(Guard::TokenBudget)
        );
        let short = &analyse(ring(6)).loops[0];
        assert_eq!(short.bounds[0].guard, Guard::CycleLimit);
        assert_eq!(short.bounds[0].hops, Some(30));
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
}
