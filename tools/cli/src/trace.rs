//! `choreo trace`: one run as a causation tree, as text, JSON, Mermaid, DOT or an HTML page.

use std::fmt::Write as _;
use std::path::PathBuf;

use choreo_bus::cloudevents;
use choreo_bus::projection::run_board::agent_positions;
use choreo_bus::trace::{RunTrace, TraceNode};

use crate::Failure;
use crate::connection::Connection;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Tree,
    Json,
    Mermaid,
    Dot,
    Html,
}

#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// The run's correlation id.
    correlation: String,
    #[arg(long, value_enum, default_value = "tree")]
    format: Format,
    /// Print each event's payload verbatim under it.
    #[arg(long, short)]
    verbose: bool,
    /// Where `--format html` writes its page [default: trace-<correlation>.html].
    #[arg(long, short)]
    output: Option<PathBuf>,
    #[command(flatten)]
    connection: Connection,
}

pub async fn run(args: TraceArgs) -> Result<(), Failure> {
    let namespace = args.connection.namespace()?;
    choreo_bus::names::validate_id("correlation", &args.correlation).map_err(Failure::usage)?;
    let jetstream = args.connection.jetstream().await?;
    let trace = read(&jetstream, &namespace, &args.correlation).await?;
    match args.format {
        Format::Tree => print!("{}", tree(&trace, args.verbose)),
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&trace).map_err(|err| Failure::failed(err.to_string()))?
        ),
        Format::Mermaid => print!("{}", mermaid(&trace)),
        Format::Dot => print!("{}", dot(&trace)),
        Format::Html => {
            let path = args
                .output
                .unwrap_or_else(|| PathBuf::from(format!("trace-{}.html", args.correlation)));
            std::fs::write(&path, html(&trace)).map_err(|err| {
                Failure::failed(format!("cannot write {}: {err}", path.display()))
            })?;
            println!(
                "wrote {} ({} events); open it in a browser",
                path.display(),
                trace.len()
            );
        }
    }
    Ok(())
}

/// What became of an event, in words.
/// One run's trace, with the outcomes the agents' consumers tell.
pub async fn read(
    jetstream: &async_nats::jetstream::Context,
    namespace: &choreo_bus::Namespace,
    correlation: &str,
) -> Result<RunTrace, Failure> {
    let agents = agent_positions(jetstream, namespace)
        .await
        .map_err(Failure::log)?;
    RunTrace::read(jetstream, namespace, correlation, &agents)
        .await
        .map_err(Failure::trace)
}

pub fn outcome(node: &TraceNode) -> String {
    let mut parts = Vec::new();
    for letter in &node.dead_letters {
        parts.push(format!(
            "DEAD-LETTERED by {}: {} ({}); see `choreo dlq show {}`",
            letter.agent, letter.reason, letter.error, letter.dead_letter_sequence
        ));
    }
    if !node.handled_by.is_empty() {
        parts.push(format!("handled by {}", join(&node.handled_by)));
    }
    if !node.acknowledged_by.is_empty() {
        parts.push(format!(
            "acknowledged by {} (nothing emitted)",
            join(&node.acknowledged_by)
        ));
    }
    if !node.waiting_on.is_empty() {
        parts.push(format!("waiting on {}", join(&node.waiting_on)));
    }
    if let Some(redrive) = &node.redrive {
        parts.push(format!(
            "redrive of dead letter {} for {}",
            redrive.dead_letter_sequence, redrive.agent
        ));
    }
    if parts.is_empty() {
        parts.push("no agent subscribed".to_string());
    }
    parts.join("; ")
}

fn join(names: &std::collections::BTreeSet<String>) -> String {
    names.iter().cloned().collect::<Vec<_>>().join(", ")
}

fn payload(node: &TraceNode) -> String {
    match cloudevents::data_as_json(&node.event) {
        Some(value) => value.to_string(),
        None => format!(
            "({} bytes of {})",
            node.event.data.len(),
            node.event.content_type
        ),
    }
}

/// The text tree.
pub fn tree(trace: &RunTrace, verbose: bool) -> String {
    let mut out = format!(
        "run {} in {}: {} events, {} dead-lettered\n",
        trace.correlation_id,
        trace.namespace,
        trace.len(),
        trace.dead_letter_count()
    );
    for (index, level) in trace.walk() {
        let node = &trace.nodes[index];
        let indent = if level == 0 {
            String::new()
        } else {
            format!("{}└─ ", "   ".repeat(level - 1))
        };
        let _ = writeln!(
            out,
            "{:>9}  {indent}{}  [{}]  depth {}  → {}",
            format!("+{:.1}ms", node.offset.as_secs_f64() * 1000.0),
            node.event.r#type,
            node.event.source,
            node.event.depth,
            outcome(node)
        );
        if verbose {
            let pad = " ".repeat(11 + level * 3);
            let _ = writeln!(out, "{pad}id {}  data {}", node.event.id, payload(node));
        }
    }
    out
}

fn label(node: &TraceNode) -> String {
    format!(
        "{}\\n{} · d{}",
        node.event.r#type, node.event.source, node.event.depth
    )
}

/// A Mermaid flowchart: one box per event, an edge per causation, failures in red.
pub fn mermaid(trace: &RunTrace) -> String {
    let mut out = String::from("flowchart TD\n");
    for (index, node) in trace.nodes.iter().enumerate() {
        let _ = writeln!(
            out,
            "  e{index}[\"{}\"]",
            label(node).replace("\\n", "<br/>").replace('"', "'")
        );
        for letter in &node.dead_letters {
            let _ = writeln!(
                out,
                "  e{index} -. {} .-> dl{index}[\"dead letter: {}\"]",
                letter.agent, letter.reason
            );
            let _ = writeln!(out, "  style dl{index} fill:#fdd,stroke:#c00");
        }
        for child in &node.children {
            let _ = writeln!(
                out,
                "  e{index} -->|{}| e{child}",
                trace.nodes[*child].event.source
            );
        }
    }
    out
}

/// A Graphviz digraph.
pub fn dot(trace: &RunTrace) -> String {
    let mut out = format!(
        "digraph \"{}\" {{\n  rankdir=TB;\n  node [shape=box, fontname=\"sans-serif\"];\n",
        trace.correlation_id
    );
    for (index, node) in trace.nodes.iter().enumerate() {
        let _ = writeln!(
            out,
            "  e{index} [label=\"{}\"];",
            label(node).replace('"', "'")
        );
        for letter in &node.dead_letters {
            let _ = writeln!(
                out,
                "  dl{index} [label=\"dead letter\\n{}\", color=red, fontcolor=red];",
                letter.reason
            );
            let _ = writeln!(
                out,
                "  e{index} -> dl{index} [style=dashed, color=red, label=\"{}\"];",
                letter.agent
            );
        }
        for child in &node.children {
            let _ = writeln!(out, "  e{index} -> e{child};");
        }
    }
    out.push_str("}\n");
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A self-contained page: the tree drawn as SVG beside a timeline, and a table of every
/// event with its payload. No scripts, nothing fetched.
pub fn html(trace: &RunTrace) -> String {
    const ROW: f64 = 28.0;
    const INDENT: f64 = 22.0;
    const TREE_WIDTH: f64 = 520.0;
    const TIMELINE: f64 = 360.0;
    let order = trace.walk();
    let row_of: std::collections::HashMap<usize, usize> = order
        .iter()
        .enumerate()
        .map(|(row, (index, _))| (*index, row))
        .collect();
    let span = trace
        .nodes
        .iter()
        .map(|n| n.offset.as_secs_f64())
        .fold(0.0, f64::max)
        .max(1e-3);
    let height = ROW * order.len() as f64 + 40.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n",
        TREE_WIDTH + TIMELINE + 40.0
    );
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"14\" fill=\"#555\">timeline: 0 → {:.1} ms</text>",
        TREE_WIDTH + 10.0,
        span * 1000.0
    );
    for (row, (index, level)) in order.iter().enumerate() {
        let node = &trace.nodes[*index];
        let y = 30.0 + ROW * row as f64;
        let x = 10.0 + INDENT * *level as f64;
        for child in &node.children {
            let child_y = 30.0 + ROW * row_of[child] as f64;
            let _ = writeln!(
                svg,
                "<path d=\"M{:.1},{:.1} V{:.1} H{:.1}\" fill=\"none\" stroke=\"#999\"/>",
                x + 4.0,
                y + 4.0,
                child_y,
                x + INDENT
            );
        }
        let failed = !node.dead_letters.is_empty();
        let color = if failed {
            "#c00"
        } else if node.waiting_on.is_empty() {
            "#2a7"
        } else {
            "#d90"
        };
        let _ = writeln!(
            svg,
            "<circle cx=\"{:.1}\" cy=\"{y:.1}\" r=\"5\" fill=\"{color}\"/>",
            x + 4.0
        );
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\"><title>{}</title>{} <tspan fill=\"#666\">[{}]</tspan></text>",
            x + 14.0,
            y + 4.0,
            escape(&outcome(node)),
            escape(&node.event.r#type),
            escape(&node.event.source)
        );
        let tx = TREE_WIDTH + 10.0 + TIMELINE * node.offset.as_secs_f64() / span;
        let _ = writeln!(
            svg,
            "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{tx:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/>",
            TREE_WIDTH + 10.0
        );
        let _ = writeln!(
            svg,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"6\" height=\"10\" fill=\"{color}\"><title>+{:.1} ms</title></rect>",
            tx - 3.0,
            y - 5.0,
            node.offset.as_secs_f64() * 1000.0
        );
    }
    svg.push_str("</svg>\n");

    let mut rows = String::new();
    for (index, level) in &order {
        let node = &trace.nodes[*index];
        let _ = writeln!(
            rows,
            "<tr><td>+{:.1} ms</td><td style=\"padding-left:{}px\">{}</td><td>{}</td><td>{}</td><td>{}</td><td><details><summary>payload</summary><pre>{}</pre><small>id {}</small></details></td></tr>",
            node.offset.as_secs_f64() * 1000.0,
            level * 16,
            escape(&node.event.r#type),
            escape(&node.event.source),
            node.event.depth,
            escape(&outcome(node)),
            escape(&payload(node)),
            escape(&node.event.id)
        );
    }
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>choreo trace {id}</title>\n<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}}pre{{white-space:pre-wrap;max-width:40em}}</style></head>\n<body><h1>Run {id}</h1><p>namespace {ns} · {n} events · {dl} dead-lettered</p>\n{svg}<table><tr><th>offset</th><th>type</th><th>source</th><th>depth</th><th>outcome</th><th>data</th></tr>\n{rows}</table></body></html>\n",
        id = escape(&trace.correlation_id),
        ns = escape(&trace.namespace),
        n = trace.len(),
        dl = trace.dead_letter_count(),
    )
}
