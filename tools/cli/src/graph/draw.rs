//! The choreography in words and pictures: the text report, Mermaid, DOT, and an HTML page
//! with the graph drawn as SVG by our own layout (no script, nothing fetched).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use choreo_bus::manifest::Manifest;

use super::analysis::{Analysis, Bound, Guard, Hop, Loop, TypeNode, label};
use crate::render::escape_html as escape;

/// Loops of one component printed in the text report and the page.
const CYCLES_SHOWN: usize = 8;

pub(super) fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// What the first guard does to the loop, and the others behind it.
pub(super) fn bound_sentences(found: &Loop) -> Vec<String> {
    let Some((first, backstops)) = found.bounds.split_first() else {
        return vec![
            "UNBOUNDED: along one of its paths every agent has --max-visits, --max-depth, \
             --max-events and --max-tokens off (or runs no choreo runtime); nothing would stop it"
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
    let mut sentences = vec![format!("bounded by the {}, set on {every}: {what}", first)];
    if !backstops.is_empty() {
        sentences.push(format!(
            "behind it: the {}",
            backstops
                .iter()
                .map(Bound::to_string)
                .collect::<Vec<_>>()
                .join("; the ")
        ));
    }
    sentences
}

/// `editor → review.revision.requested → security → … → editor`.
pub(super) fn cycle_line(cycle: &[Hop]) -> String {
    let mut line = String::new();
    for hop in cycle {
        let _ = write!(line, "{} → {} → ", hop.agent, hop.emits.join(" | "));
    }
    line.push_str(cycle.first().map(|hop| hop.agent.as_str()).unwrap_or(""));
    line
}

fn agent_label(analysis: &Analysis, agent: &Manifest) -> String {
    label(&analysis.namespaces, &agent.namespace, &agent.name)
}

fn type_label(analysis: &Analysis, node: &TypeNode) -> String {
    label(&analysis.namespaces, &node.namespace, &node.name)
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
                kind: if loop_of.contains_key(&key) {
                    NodeKind::LoopAgent
                } else {
                    NodeKind::Agent
                },
                detail: format!(
                    "{}\nhandles {}\nemits {}",
                    agent.description,
                    agent.subscribes.join(", "),
                    or_nobody(&agent.emits, "nothing")
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
    use crate::graph::analysis::analyse;
    use crate::graph::analysis::testing::{agent, review_team};

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
}
