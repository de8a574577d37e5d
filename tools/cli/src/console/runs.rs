//! The runs page: the run board, newest first, kept current over server-sent events, with
//! filters (failed only, pending, root type, agent, time range, the platform's own runs) and a
//! search inside payloads.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use choreo_bus::Namespace;
use choreo_bus::log::{From, LogQuery, LogReader};
use choreo_bus::projection::run_board::{RunStatus, RunView};
use maud::{Markup, html};
use serde::Deserialize;
use time::OffsetDateTime;
use tokio::sync::Mutex;

use super::Console;
use super::live::Board;
use super::page::{self, Layout, ago, badge, clock, cost, span};
use crate::time_arg::parse_time;

/// Rows drawn at most: the newest.
const ROWS: usize = 300;

/// The filters, as the page's query string carries them.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RunFilter {
    /// `failed`, `pending` or `complete`; empty for every status.
    #[serde(default)]
    status: String,
    /// The root event's type.
    #[serde(default, rename = "type")]
    root_type: String,
    /// An agent that did something in the run.
    #[serde(default)]
    agent: String,
    /// Started at or after (RFC 3339, or a duration ago: `1h`).
    #[serde(default)]
    since: String,
    /// Started at or before.
    #[serde(default)]
    until: String,
    /// Text to find inside any payload of the run.
    #[serde(default)]
    q: String,
    /// Also the platform's own runs (breaker announcements).
    #[serde(default)]
    all: String,
}

/// The filters, checked.
struct Chosen {
    since: Option<OffsetDateTime>,
    until: Option<OffsetDateTime>,
    problems: Vec<String>,
}

impl RunFilter {
    fn chosen(&self) -> Chosen {
        let now = OffsetDateTime::now_utc();
        let mut problems = Vec::new();
        let mut time = |value: &str, name: &str| {
            let value = value.trim();
            if value.is_empty() {
                return None;
            }
            parse_time(value, now)
                .map_err(|err| problems.push(format!("{name}: {err}")))
                .ok()
        };
        let since = time(&self.since, "since");
        let until = time(&self.until, "until");
        Chosen {
            since,
            until,
            problems,
        }
    }

    fn admits(&self, view: &RunView<'_>, chosen: &Chosen, found: Option<&HashSet<String>>) -> bool {
        let run = view.run;
        (self.all == "on" || !run.root_type.starts_with("choreo."))
            && (self.status.is_empty() || self.status == view.status.name())
            && (self.root_type.is_empty() || *run.root_type == *self.root_type)
            && (self.agent.is_empty() || run.agents.get(self.agent.as_str()).is_some())
            && chosen.since.is_none_or(|since| run.started >= since)
            && chosen.until.is_none_or(|until| run.started <= until)
            && found.is_none_or(|found| found.contains(&*run.correlation_id))
    }

    fn with(&self, change: impl FnOnce(&mut RunFilter)) -> String {
        let mut filter = self.clone();
        change(&mut filter);
        format!("/{}", filter.query())
    }

    fn query(&self) -> String {
        page::query(&[
            ("status", &self.status),
            ("type", &self.root_type),
            ("agent", &self.agent),
            ("since", &self.since),
            ("until", &self.until),
            ("q", &self.q),
            ("all", &self.all),
        ])
    }
}

/// A search inside payloads: the runs with an event whose data holds the text, and how far
/// into the log it has looked, so the live page reads only what is new.
#[derive(Debug)]
pub struct PayloadSearch {
    needle: Vec<u8>,
    found: HashSet<String>,
    position: u64,
}

impl PayloadSearch {
    fn new(text: &str) -> Option<Self> {
        let needle = text.trim().to_lowercase().into_bytes();
        (!needle.is_empty()).then(|| PayloadSearch {
            needle,
            found: HashSet::new(),
            position: 0,
        })
    }

    /// Reads the log from where it stopped to its end.
    async fn advance(
        &mut self,
        console: &Console,
        namespace: &Namespace,
    ) -> Result<(), choreo_bus::log::LogError> {
        let query =
            LogQuery::filtered(namespace.all_events()).from(From::Sequence(self.position + 1));
        let mut reader =
            LogReader::open(&console.jetstream, &namespace.stream_name(), query).await?;
        while let Some(record) = reader.next().await? {
            self.position = record.sequence;
            if let Ok(event) = record.view()
                && !self.found.contains(event.correlation_id)
                && contains(event.data, &self.needle)
            {
                self.found.insert(event.correlation_id.to_string());
            }
        }
        Ok(())
    }
}

/// Whether `haystack` holds `needle` (already lower case), ignoring ASCII case.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || haystack
            .windows(needle.len())
            .any(|window| window.eq_ignore_ascii_case(needle))
}

pub async fn page(State(console): State<Console>, Query(filter): Query<RunFilter>) -> Response {
    let mut search = PayloadSearch::new(&filter.q);
    let mut search_failed = None;
    if let Some(search) = &mut search
        && let Err(err) = search.advance(&console, &console.namespace).await
    {
        search_failed = Some(format!("The search inside payloads failed: {err}"));
    }
    let table = table(&console, &filter, search.as_ref().map(|s| &s.found));
    let body = html! {
        h1 { "Runs" }
        (quick_links(&filter))
        (filters(&console.live.board(), &filter))
        @if let Some(problem) = search_failed { div.banner.bad { (problem) } }
        div #live { (table) }
    };
    Layout::new("Runs", &console)
        .live("/live/runs")
        .render(body)
        .into_response()
}

/// `/live/runs`: the table again whenever the board changes.
pub async fn live(State(console): State<Console>, Query(filter): Query<RunFilter>) -> Response {
    let search = PayloadSearch::new(&filter.q).map(|s| Arc::new(Mutex::new(s)));
    let shared = console.clone();
    page::events(&console, None, move || {
        let (console, filter, search) = (shared.clone(), filter.clone(), search.clone());
        async move {
            let table = match &search {
                Some(search) => {
                    let mut search = search.lock().await;
                    // A failed read keeps what was found; the banner says why.
                    let _ = search.advance(&console, &console.namespace).await;
                    table(&console, &filter, Some(&search.found))
                }
                None => table(&console, &filter, None),
            };
            vec![("fragment", table.into_string())]
        }
    })
    .into_response()
}

fn quick_links(filter: &RunFilter) -> Markup {
    let on = |yes: bool| if yes { "on" } else { "" };
    html! {
        div.quick {
            a class=(on(filter.status.is_empty())) href=(filter.with(|f| f.status.clear())) { "All" }
            a class=(on(filter.status == "failed")) href=(filter.with(|f| f.status = "failed".into())) { "Failed only" }
            a class=(on(filter.status == "pending")) href=(filter.with(|f| f.status = "pending".into())) { "Pending" }
            a class=(on(filter.status == "complete")) href=(filter.with(|f| f.status = "complete".into())) { "Complete" }
            span.dim { "·" }
            a class=(on(filter.since == "15m")) href=(filter.with(|f| f.since = "15m".into())) { "Last 15 min" }
            a class=(on(filter.since == "1h")) href=(filter.with(|f| f.since = "1h".into())) { "Last hour" }
            a class=(on(filter.since == "24h")) href=(filter.with(|f| f.since = "24h".into())) { "Last day" }
            a href="/" { "Clear filters" }
        }
    }
}

fn filters(board: &Board, filter: &RunFilter) -> Markup {
    let mut types = BTreeSet::new();
    let mut agents = BTreeSet::new();
    for view in board.folded.state.view(&Default::default(), &[]) {
        types.insert(view.run.root_type.to_string());
        agents.extend(view.run.agents.keys().map(|agent| agent.to_string()));
    }
    html! {
        form.filters method="get" action="/" {
            label { "Status"
                select name="status" {
                    @for (value, shown) in [("", "any"), ("failed", "failed"), ("pending", "pending"), ("complete", "complete")] {
                        option value=(value) selected[filter.status == value] { (shown) }
                    }
                }
            }
            label { "Root type"
                select name="type" {
                    option value="" { "any" }
                    @for t in &types { option value=(t) selected[filter.root_type == *t] { (t) } }
                }
            }
            label { "Agent"
                select name="agent" {
                    option value="" { "any" }
                    @for a in &agents { option value=(a) selected[filter.agent == *a] { (a) } }
                }
            }
            label { "Started since" input name="since" size="14" value=(filter.since) placeholder="1h or 2026-11-21T10:00:00Z"; }
            label { "until" input name="until" size="14" value=(filter.until) placeholder="10m or RFC 3339"; }
            label { "Search payloads" input name="q" size="22" value=(filter.q) placeholder="text inside any event"; }
            label { "Platform runs" input type="checkbox" name="all" checked[filter.all == "on"]; }
            button type="submit" { "Apply" }
        }
    }
}

/// The board's rows that pass the filter, newest first.
fn table(console: &Console, filter: &RunFilter, found: Option<&HashSet<String>>) -> Markup {
    let board = console.live.board();
    let chosen = filter.chosen();
    let views = board
        .folded
        .state
        .view(&console.namespace, &board.positions);
    let total = views.len();
    let shown: Vec<&RunView<'_>> = views
        .iter()
        .rev()
        .filter(|view| filter.admits(view, &chosen, found))
        .collect();
    let counts = |name: &str| views.iter().filter(|v| v.status.name() == name).count();
    html! {
        @for problem in &chosen.problems { div.banner.bad { (problem) } }
        p.dim {
            (shown.len()) " of " (total) " runs"
            @if shown.len() > ROWS { " (the newest " (ROWS) " drawn)" }
            " · " (counts("failed")) " failed · " (counts("pending")) " pending · " (counts("complete")) " complete"
            " · log sequence " (board.folded.position.sequence)
        }
        @if !board.loaded {
            div.empty { "Reading the log…" }
        } @else if shown.is_empty() {
            div.empty { "No run matches." @if total == 0 { " The log has no runs yet: submit one with " code { "choreo review" } "." } }
        } @else {
            div.scroll {
                table.runs {
                    thead { tr {
                        th { "Status" } th { "Run" } th { "Root" } th { "Started" } th.num { "Took" }
                        th.num { "Events" } th.num { "Tokens" } th.num { "Cost" } th { "Attention" }
                    } }
                    tbody {
                        @for view in shown.iter().take(ROWS) { (row(view)) }
                    }
                }
            }
        }
    }
}

fn row(view: &RunView<'_>) -> Markup {
    let run = view.run;
    let took = (run.last_event - run.started).as_seconds_f64() * 1000.0;
    let id = &*run.correlation_id;
    html! {
        tr class=(view.status.name()) data-run=(id) data-status=(view.status.name()) {
            td { (badge(&view.status)) }
            td.mono { a href={ "/runs/" (id) } { (id) } }
            td { (run.root_type) br; span.dim { "from " (run.root_source) } }
            td title=(crate::time_arg::format_time(run.started)) { (clock(run.started)) br; span.dim { (ago(run.started)) } }
            td.num { (span(took)) }
            td.num { (run.events) }
            td.num { (run.tokens) }
            td.num { (cost(run.cost_micros)) }
            td {
                @match &view.status {
                    RunStatus::Pending { waiting_on } => { span.dim { "waiting on " (waiting_on.join(", ")) } }
                    RunStatus::Failed { .. } => {
                        @for letter in run.open_dead_letters() {
                            div { b { (letter.notice.agent) } " gave up on " (letter.notice.event_type) ": "
                                span.badge.bad { (letter.notice.reason) } }
                        }
                    }
                    RunStatus::Complete => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_search_ignores_ascii_case() {
        assert!(contains(br#"{"title":"Refunds: Find"}"#, b"refunds: find"));
        assert!(!contains(b"refund", b"refunds"));
        assert!(contains(b"abc", b""));
    }

    #[test]
    fn links_keep_the_other_filters() {
        let filter = RunFilter {
            status: "failed".into(),
            q: "a b&c".into(),
            ..RunFilter::default()
        };
        assert_eq!(
            filter.with(|f| f.since = "1h".into()),
            "/?status=failed&since=1h&q=a%20b%26c"
        );
        assert_eq!(filter.with(|f| f.status.clear()), "/?q=a%20b%26c");
    }
}
