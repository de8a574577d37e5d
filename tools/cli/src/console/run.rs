//! One run's page: its status and what it cost, its dead letters with a Redrive button, its
//! final output (the review report), the causation tree beside a timeline where each handling is
//! a bar from received to done (drawn by `choreo trace`'s own SVG), and every event with its
//! payload. Links give the trace as JSON and Mermaid, and the run's events as CloudEvents JSON
//! lines (what `choreo replay --json` prints).

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use choreo_bus::Namespace;
use choreo_bus::log::{LogQuery, LogReader};
use choreo_bus::projection::Projector;
use choreo_bus::projection::run_board::{Run, RunBoard, RunStatus, agent_positions};
use choreo_bus::trace::{RunTrace, TraceNode};
use choreo_review::Report;
use maud::{Markup, html};
use serde::Deserialize;

use super::Console;
use super::page::{self, Layout, badge, clock, cost, span, trusted};
use crate::Failure;
use crate::trace as drawn;

#[derive(Debug, Default, Deserialize)]
pub struct RunQuery {
    /// Another namespace than the console's (a sandbox replay).
    #[serde(default)]
    ns: String,
    /// What an action just did.
    #[serde(default)]
    done: String,
}

impl RunQuery {
    fn namespace(&self, console: &Console) -> Result<Namespace, Failure> {
        if self.ns.is_empty() {
            Ok(console.namespace.clone())
        } else {
            Namespace::new(&self.ns).map_err(Failure::usage)
        }
    }
}

/// The page's address for run `id` of `namespace`.
pub fn address(console: &Console, namespace: &Namespace, id: &str) -> String {
    if *namespace == console.namespace {
        format!("/runs/{id}")
    } else {
        format!("/runs/{id}?ns={namespace}")
    }
}

/// What the page needs read: the trace, and the run as the board folds it.
struct Read {
    namespace: Namespace,
    trace: RunTrace,
    status: RunStatus,
    run: Option<Run>,
}

async fn read(console: &Console, id: &str, query: &RunQuery) -> Result<Read, Failure> {
    let namespace = query.namespace(console)?;
    choreo_bus::names::validate_id("run", id).map_err(|_| {
        Failure::no_input(format!(
            "There is no run {id:?}: a run id is letters, digits, - and _."
        ))
    })?;
    let trace = drawn::read(&console.jetstream, &namespace, id)
        .await
        .map_err(|failure| match failure.code {
            66 => Failure::no_input(format!(
                "There is no run {id} in namespace {namespace}. Check the id, or find the run on the runs page."
            )),
            _ => failure,
        })?;
    // The console's own namespace is on the live board; another is folded for this run only,
    // by the same fold.
    let (run, status) = if namespace == console.namespace
        && let Some((run, status)) = on_board(console, id)
    {
        (Some(run), status)
    } else {
        let folded = Projector::new(console.jetstream.clone(), namespace.clone())
            .fold_run::<RunBoard>(id)
            .await
            .map_err(Failure::projection)?;
        let positions = agent_positions(&console.jetstream, &namespace)
            .await
            .map_err(Failure::log)?;
        let run = folded.state.run(id).cloned();
        let status = run.as_ref().map_or(RunStatus::Complete, |run| {
            run.status(&namespace, &positions)
        });
        (run, status)
    };
    Ok(Read {
        namespace,
        trace,
        status,
        run,
    })
}

fn on_board(console: &Console, id: &str) -> Option<(Run, RunStatus)> {
    let board = console.live.board();
    let run = board.folded.state.run(id)?;
    Some((
        run.clone(),
        run.status(&console.namespace, &board.positions),
    ))
}

/// What changes when anything about the run changes: the page reloads on another.
fn version(console: &Console, id: &str) -> String {
    match on_board(console, id) {
        Some((run, status)) => format!(
            "{}-{}-{}-{}",
            status.name(),
            run.events,
            run.last_event.unix_timestamp_nanos(),
            run.dead_letters.iter().filter(|l| l.redriven).count()
        ),
        None => "absent".to_string(),
    }
}

pub async fn page(
    State(console): State<Console>,
    Path(id): Path<String>,
    Query(query): Query<RunQuery>,
) -> Response {
    if let Some(away) = page::nats_away(&console) {
        return away;
    }
    let read = match read(&console, &id, &query).await {
        Ok(read) => read,
        Err(failure) if failure.code == 66 => {
            return page::not_found(&console, "Run not found", &failure.message);
        }
        Err(failure) => return page::failure(&console, &failure),
    };
    let here = address(&console, &read.namespace, &id);
    let mut layout = Layout::new(format!("Run {id}"), &console)
        .notice((!query.done.is_empty()).then(|| query.done.clone()));
    if read.namespace == console.namespace {
        layout = layout
            .live(format!("/live/run/{id}"))
            .version(version(&console, &id));
    }
    layout.render(body(&read, &id, &here)).into_response()
}

/// `/live/run/ID`: the run's version, so the page reloads when the run moves.
pub async fn live(State(console): State<Console>, Path(id): Path<String>) -> Response {
    let shared = console.clone();
    page::events(&console, None, move || {
        let version = version(&shared, &id);
        async move { vec![("version", version)] }
    })
    .into_response()
}

fn body(read: &Read, id: &str, here: &str) -> Markup {
    let trace = &read.trace;
    let spend = trace.spend();
    let ns = if read.namespace.as_str() == choreo_bus::names::DEFAULT_NAMESPACE {
        String::new()
    } else {
        format!("?ns={}", read.namespace)
    };
    let started = trace.nodes.first().map(|n| n.stored);
    // The last thing that happened: an event stored, or a handling that ended (one that
    // failed leaves no event of the run, only its record).
    let last = trace
        .nodes
        .iter()
        .map(|n| n.stored)
        .chain(
            trace
                .nodes
                .iter()
                .flat_map(|n| &n.handlings)
                .map(|h| h.done),
        )
        .max();
    let letters = dead_letters(trace);
    html! {
        h1 { "Run " span.mono { (id) } " " (badge(&read.status)) }
        div.summary {
            div { span.label { "namespace" } span.value { (read.namespace) } }
            @if let Some(root) = trace.roots.first().map(|&r| &trace.nodes[r]) {
                div { span.label { "root" } span.value { (root.event.r#type) " from " (root.event.source) } }
            }
            @if let Some(started) = started {
                div { span.label { "started" } span.value title=(crate::time_arg::format_time(started)) { (clock(started)) } }
            }
            @if let (Some(started), Some(last)) = (started, last) {
                div { span.label { "took" } span.value { (span((last - started).as_seconds_f64() * 1000.0)) } }
            }
            div { span.label { "events" } span.value { (trace.len()) } }
            div { span.label { "tokens" } span.value { (read.run.as_ref().map_or(spend.tokens(), |r| r.tokens)) } }
            div { span.label { "cost" } span.value { (cost(read.run.as_ref().map_or(spend.cost_micros(), |r| r.cost_micros))) } }
            div { span.label { "dead letters" } span.value { (letters.iter().filter(|l| !l.redriven).count()) " open" } }
        }
        @if let RunStatus::Pending { waiting_on } = &read.status {
            p { "Waiting on " b { (waiting_on.join(", ")) } "." }
        }
        div.links {
            a href={ "/runs/" (id) "/trace.json" (ns) } { "Trace as JSON" }
            a href={ "/runs/" (id) "/trace.mmd" (ns) } { "Trace as Mermaid" }
            a href={ "/runs/" (id) "/events.jsonl" (ns) } download { "Download events (CloudEvents JSON lines)" }
            a href={ "/dead-letters?run=" (id) } { "Dead letters of this run" }
        }
        form.filters method="get" action="/compare" {
            input type="hidden" name="a" value={ (read.namespace) "/" (id) };
            label { "Compare with" input name="b" size="40" placeholder={ "RUN, or lab/" (id) " for a sandbox replay" }; }
            button type="submit" { "Compare" }
        }
        @if !letters.is_empty() {
            h2 #dead-letters { "Dead letters" }
            table.dead-letters {
                thead { tr { th { "Letter" } th { "Agent" } th { "Gave up on" } th { "Reason" } th { "Error" } th.num { "Deliveries" } th {} } }
                tbody {
                    @for letter in &letters {
                        tr data-dead-letter=(letter.notice.dead_letter_sequence) {
                            td { a href={ "/dead-letters/" (letter.notice.dead_letter_sequence) } { (letter.notice.dead_letter_sequence) } }
                            td { (letter.notice.agent) }
                            td { (letter.notice.event_type) br; span.dim.mono { (letter.notice.event_id) } }
                            td { span.badge.bad.reason { (letter.notice.reason) } }
                            td { pre { (letter.notice.error) } }
                            td.num { (letter.notice.delivery_count) }
                            td {
                                @if letter.redriven {
                                    span.badge.ok { "redriven" }
                                } @else {
                                    form.inline method="post" action="/dead-letters/redrive" {
                                        input type="hidden" name="sequence" value=(letter.notice.dead_letter_sequence);
                                        input type="hidden" name="ns" value=(read.namespace);
                                        input type="hidden" name="back" value=(here);
                                        button.redrive type="submit" { "Redrive" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Causation tree and timeline" }
        p.dim { "Each event under the event that caused it; beside it, when it was stored (a mark) and each agent's handling of it as a bar from received to done (dark: the handler running). Hover for details." }
        div.timeline.scroll { (trusted(drawn::svg(trace))) }
        @match final_output(trace) {
            Some(Output::Report(report)) => { (report_section(&report)) }
            Some(Output::Payload { label, text }) => {
                h2 #output { "Final output " span.dim { (label) } }
                pre.output { (text) }
            }
            None => {}
        }
        h2 { "Events" }
        div.scroll {
            table.events {
                thead { tr { th.num { "At" } th { "Type" } th { "Source" } th.num { "Depth" } th { "What became of it" } th { "Payload" } } }
                tbody {
                    @for (index, level) in trace.walk() {
                        (event_row(trace, &trace.nodes[index], level))
                    }
                }
            }
        }
    }
}

fn event_row(trace: &RunTrace, node: &TraceNode, level: usize) -> Markup {
    let class = if !node.dead_letters.is_empty() {
        "failed"
    } else if !node.waiting_on.is_empty() {
        "pending"
    } else {
        ""
    };
    html! {
        tr class=(class) data-event=(node.event.id) {
            td.num { "+" (span(node.offset.as_secs_f64() * 1000.0)) }
            td style={ "padding-left:" (10 + level * 16) "px" } { (node.event.r#type) }
            td { (node.event.source) }
            td.num { (node.event.depth) }
            td {
                (drawn::outcome(node))
                @for handling in &node.handlings {
                    div.dim { "▸ " (drawn::handling_text(trace, handling)) }
                }
            }
            td {
                details {
                    summary { (node.event.data.len()) " bytes" }
                    pre.payload { (page::payload_text(&node.event)) }
                    div.dim.mono { "id " (node.event.id) }
                }
            }
        }
    }
}

/// A dead letter of the run, and whether it was redriven since.
struct Letter<'a> {
    notice: &'a choreo_bus::dead_letter::DeadLetterNotice,
    redriven: bool,
}

fn dead_letters(trace: &RunTrace) -> Vec<Letter<'_>> {
    let redriven: std::collections::HashSet<u64> = trace
        .nodes
        .iter()
        .filter_map(|n| n.redrive.as_ref().map(|r| r.dead_letter_sequence))
        .collect();
    trace
        .nodes
        .iter()
        .flat_map(|n| &n.dead_letters)
        .map(|notice| Letter {
            notice,
            redriven: redriven.contains(&notice.dead_letter_sequence),
        })
        .collect()
}

/// What the run produced.
enum Output {
    /// The latest review report.
    Report(Box<Report>),
    /// The payload of the last event nothing followed.
    Payload { label: String, text: String },
}

fn final_output(trace: &RunTrace) -> Option<Output> {
    let report = trace
        .nodes
        .iter()
        .rev()
        .filter(|n| n.event.r#type == choreo_review::events::COMPLETED)
        .find_map(|n| serde_json::from_slice::<Report>(&n.event.data).ok());
    if let Some(report) = report {
        return Some(Output::Report(Box::new(report)));
    }
    let last = trace
        .nodes
        .iter()
        .rev()
        .find(|n| n.children.is_empty() && !n.event.r#type.starts_with("choreo."))?;
    Some(Output::Payload {
        label: format!("{} from {}", last.event.r#type, last.event.source),
        text: page::payload_text(&last.event),
    })
}

fn report_section(report: &Report) -> Markup {
    let verdict = match report.verdict {
        choreo_review::report::Verdict::ChangesRequested => "bad",
        choreo_review::report::Verdict::Comments => "warn",
        choreo_review::report::Verdict::Clean => "ok",
    };
    html! {
        h2 #output { "Final output " span.dim { "the review report, round " (report.round) } }
        div.card.report {
            p { span class={ "badge " (verdict) } { (report.verdict.as_str()) } " " b { (report.title) } " " span.dim { (report.repository) } }
            p { (report.summary) }
            @if !report.missing.is_empty() {
                p.banner.bad { "No answer by the deadline from " (report.missing.join(", ")) "." }
            }
            @if !report.findings.is_empty() {
                table.findings {
                    thead { tr { th { "Severity" } th { "Where" } th { "Specialist" } th { "Rule" } th { "Finding" } th { "Suggestion" } } }
                    tbody {
                        @for f in &report.findings {
                            @let severity = f.finding.severity;
                            tr data-specialist=(f.specialist) {
                                td { span class={ "badge " (if severity.is_blocking() { "bad" } else { "warn" }) } { (severity.as_str()) } }
                                td.mono { (f.finding.file) ":" (f.finding.line) }
                                td { (f.specialist) }
                                td.mono { (f.finding.rule) }
                                td { (f.finding.message) }
                                td { (f.finding.suggestion.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
            }
            details {
                summary { "The report as delivered (Markdown, with each specialist's raw output verbatim)" }
                pre.output { (report.markdown()) }
            }
        }
    }
}

pub async fn trace_json(
    State(console): State<Console>,
    Path(id): Path<String>,
    Query(query): Query<RunQuery>,
) -> Response {
    match read(&console, &id, &query).await {
        Ok(read) => axum::Json(read.trace).into_response(),
        Err(failure) => page::failure(&console, &failure),
    }
}

pub async fn trace_mermaid(
    State(console): State<Console>,
    Path(id): Path<String>,
    Query(query): Query<RunQuery>,
) -> Response {
    match read(&console, &id, &query).await {
        Ok(read) => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            drawn::mermaid(&read.trace),
        )
            .into_response(),
        Err(failure) => page::failure(&console, &failure),
    }
}

/// The run's events as CloudEvents JSON lines, as `choreo replay --correlation ID --json`
/// prints them.
pub async fn events(
    State(console): State<Console>,
    Path(id): Path<String>,
    Query(query): Query<RunQuery>,
) -> Response {
    let lines = async {
        let namespace = query.namespace(&console)?;
        let filter = crate::render::EventFilter {
            event_type: None,
            correlation: Some(id.clone()),
            source: None,
        };
        let subject = filter.subject(&namespace)?;
        let mut reader = LogReader::open(
            &console.jetstream,
            &namespace.stream_name(),
            LogQuery::filtered(subject),
        )
        .await
        .map_err(Failure::log)?;
        let mut lines = String::new();
        while let Some(record) = reader.next().await.map_err(Failure::log)? {
            if let Some(line) = filter.line(&record, true) {
                lines.push_str(&line);
                lines.push('\n');
            }
        }
        if lines.is_empty() {
            return Err(Failure::no_input(format!(
                "There is no run {id} in namespace {namespace}."
            )));
        }
        Ok(lines)
    };
    match lines.await {
        Ok(lines) => (
            [
                (
                    header::CONTENT_TYPE,
                    "application/x-ndjson; charset=utf-8".to_string(),
                ),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"run-{id}.jsonl\""),
                ),
            ],
            lines,
        )
            .into_response(),
        Err(failure) => page::failure(&console, &failure),
    }
}
