//! `choreo trace`: one run as a causation tree, as text, JSON, Mermaid, DOT or an HTML page.

use std::fmt::Write as _;
use std::path::PathBuf;

use choreo_bus::cloudevents;
use choreo_bus::handling::{HandlingRecord, Spend};
use choreo_bus::projection::run_board::agent_positions;
use choreo_bus::trace::{RunTrace, TraceNode};

use crate::Failure;
use crate::connection::Connection;
use crate::render::escape_html as escape;

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

/// An event's payload as text: its JSON, or what it is when it is not.
pub fn payload(node: &TraceNode) -> String {
    match cloudevents::data_as_json(&node.event) {
        Some(value) => value.to_string(),
        None => format!(
            "({} bytes of {})",
            node.event.data.len(),
            node.event.content_type
        ),
    }
}

/// Tokens and cost, for a line that already says what spent them; empty for no model calls.
pub fn spend_text(spend: &Spend) -> String {
    if spend.is_empty() {
        return String::new();
    }
    let calls = if spend.calls == 1 { "call" } else { "calls" };
    format!(
        "{} model {calls}, {} tokens ({} in, {} out), cost {:.6}",
        spend.calls,
        spend.tokens(),
        spend.input_tokens,
        spend.output_tokens,
        spend.cost
    )
}

/// Milliseconds from the run's first event to `time`.
fn offset_ms(trace: &RunTrace, time: time::OffsetDateTime) -> f64 {
    let start = trace.nodes.first().map_or(time, |first| first.stored);
    (time - start).as_seconds_f64() * 1000.0
}

/// One handling in words: who, how it ended, how long, what it spent.
pub fn handling_text(trace: &RunTrace, handling: &HandlingRecord) -> String {
    let mut text = format!(
        "{} {}: received +{:.1}ms, handler took {:.1}ms, done +{:.1}ms",
        handling.agent,
        handling.end.replace('_', " "),
        offset_ms(trace, handling.received),
        handling.took.as_secs_f64() * 1000.0,
        offset_ms(trace, handling.done),
    );
    if handling.delivery > 1 {
        let _ = write!(text, ", delivery {}", handling.delivery);
    }
    if !handling.error.is_empty() {
        let _ = write!(text, " ({})", handling.error);
    }
    let spend = spend_text(&handling.spend);
    if !spend.is_empty() {
        let _ = write!(text, "; {spend}");
    }
    text
}

/// The text tree.
pub fn tree(trace: &RunTrace, verbose: bool) -> String {
    let mut out = format!(
        "run {} in {}: {} events, {} dead-lettered",
        trace.correlation_id,
        trace.namespace,
        trace.len(),
        trace.dead_letter_count()
    );
    let spend = spend_text(&trace.spend());
    if !spend.is_empty() {
        let _ = write!(out, "; {spend}");
    }
    out.push('\n');
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
        let pad = " ".repeat(11 + level * 3);
        for handling in &node.handlings {
            let _ = writeln!(out, "{pad}▸ {}", handling_text(trace, handling));
        }
        if verbose {
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

/// A row of the page: an event, or one agent's handling of the event above it.
enum Row<'a> {
    Event {
        index: usize,
        level: usize,
    },
    Handling {
        level: usize,
        handling: &'a HandlingRecord,
    },
}

/// The colour of a handling's bar by how it ended.
fn handling_color(handling: &HandlingRecord) -> &'static str {
    match handling.end.as_str() {
        "emitted" => "#2a7",
        "emitted_nothing" => "#79a",
        _ => "#c00",
    }
}

/// The rows of the tree in tree order, each event followed by its handlings.
fn rows(trace: &RunTrace) -> Vec<Row<'_>> {
    let mut rows = Vec::new();
    for (index, level) in trace.walk() {
        rows.push(Row::Event { index, level });
        for handling in &trace.nodes[index].handlings {
            rows.push(Row::Handling { level, handling });
        }
    }
    rows
}

/// The tree drawn as SVG beside a timeline where each event is a mark where it was stored and
/// each handling a bar from received to done (the darker part is the handler running): the
/// picture of [`html`]'s page, and of the console's run page.
pub fn svg(trace: &RunTrace) -> String {
    const ROW: f64 = 24.0;
    const INDENT: f64 = 22.0;
    const TREE_WIDTH: f64 = 560.0;
    const TIMELINE: f64 = 480.0;
    let rows = rows(trace);
    let row_of: std::collections::HashMap<usize, usize> = rows
        .iter()
        .enumerate()
        .filter_map(|(row, shown)| match shown {
            Row::Event { index, .. } => Some((*index, row)),
            Row::Handling { .. } => None,
        })
        .collect();
    let span_ms = trace
        .nodes
        .iter()
        .map(|n| n.offset.as_secs_f64() * 1000.0)
        .chain(
            trace
                .nodes
                .iter()
                .flat_map(|n| &n.handlings)
                .map(|h| offset_ms(trace, h.done)),
        )
        .fold(0.0, f64::max)
        .max(1.0);
    let x_of = |ms: f64| TREE_WIDTH + 10.0 + TIMELINE * (ms.max(0.0) / span_ms);
    let height = ROW * rows.len() as f64 + 40.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n",
        TREE_WIDTH + TIMELINE + 40.0
    );
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"14\" fill=\"#555\">timeline: 0 → {:.1} ms (bars: received → done; dark: handler running)</text>",
        TREE_WIDTH + 10.0,
        span_ms
    );
    for (row, shown) in rows.iter().enumerate() {
        let y = 30.0 + ROW * row as f64;
        match shown {
            Row::Event { index, level } => {
                let node = &trace.nodes[*index];
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
                let color = if !node.dead_letters.is_empty() {
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
                let ms = node.offset.as_secs_f64() * 1000.0;
                let _ = writeln!(
                    svg,
                    "<rect class=\"event\" x=\"{:.1}\" y=\"{:.1}\" width=\"4\" height=\"12\" fill=\"{color}\"><title>{} stored at +{ms:.1} ms</title></rect>",
                    x_of(ms) - 2.0,
                    y - 6.0,
                    escape(&node.event.r#type),
                );
            }
            Row::Handling { level, handling } => {
                let x = 10.0 + INDENT * (*level + 1) as f64;
                let color = handling_color(handling);
                let _ = writeln!(
                    svg,
                    "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#444\" font-size=\"11\">▸ {} · {} · {:.1} ms{}</text>",
                    x + 14.0,
                    y + 4.0,
                    escape(&handling.agent),
                    escape(&handling.end.replace('_', " ")),
                    handling.took.as_secs_f64() * 1000.0,
                    if handling.spend.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " · {} tokens, cost {:.6}",
                            handling.spend.tokens(),
                            handling.spend.cost
                        )
                    }
                );
                let received = offset_ms(trace, handling.received);
                let done = offset_ms(trace, handling.done).max(received);
                let handler_end = received + handling.took.as_secs_f64() * 1000.0;
                let (x0, x1) = (x_of(received), x_of(done).max(x_of(received) + 2.0));
                let _ = writeln!(
                    svg,
                    "<g class=\"handling\" data-agent=\"{agent}\"><title>{title}</title><rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"10\" fill=\"{color}\" fill-opacity=\"0.35\"/><rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"10\" fill=\"{color}\"/></g>",
                    y - 5.0,
                    x1 - x0,
                    y - 5.0,
                    (x_of(handler_end).min(x1) - x0).max(1.0),
                    agent = escape(&handling.agent),
                    title = escape(&handling_text(trace, handling)),
                );
            }
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// A self-contained page: the tree and timeline of [`svg`], and a table of every event with
/// its payload. No scripts, nothing fetched.
pub fn html(trace: &RunTrace) -> String {
    let svg = svg(trace);
    let mut table = String::new();
    for shown in &rows(trace) {
        let Row::Event { index, level } = shown else {
            continue;
        };
        let node = &trace.nodes[*index];
        let handlings: Vec<String> = node
            .handlings
            .iter()
            .map(|h| escape(&handling_text(trace, h)))
            .collect();
        let _ = writeln!(
            table,
            "<tr><td>+{:.1} ms</td><td style=\"padding-left:{}px\">{}</td><td>{}</td><td>{}</td><td>{}<br><small>{}</small></td><td><details><summary>payload</summary><pre>{}</pre><small>id {}</small></details></td></tr>",
            node.offset.as_secs_f64() * 1000.0,
            level * 16,
            escape(&node.event.r#type),
            escape(&node.event.source),
            node.event.depth,
            escape(&outcome(node)),
            handlings.join("<br>"),
            escape(&payload(node)),
            escape(&node.event.id)
        );
    }
    let spend = spend_text(&trace.spend());
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>choreo trace {id}</title>\n<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}}pre{{white-space:pre-wrap;max-width:40em}}</style></head>\n<body><h1>Run {id}</h1><p>namespace {ns} · {n} events · {dl} dead-lettered{spend}</p>\n{svg}<table><tr><th>offset</th><th>type</th><th>source</th><th>depth</th><th>outcome and handlings</th><th>data</th></tr>\n{table}</table></body></html>\n",
        id = escape(&trace.correlation_id),
        ns = escape(&trace.namespace),
        n = trace.len(),
        dl = trace.dead_letter_count(),
        spend = if spend.is_empty() {
            String::new()
        } else {
            format!(" · {}", escape(&spend))
        },
    )
}
