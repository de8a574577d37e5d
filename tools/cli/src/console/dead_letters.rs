//! The dead letters page: every dead letter with its reason, filtered by agent, reason and run;
//! one in full; redrive one or every one of a reason (after a fix), and purge after a
//! confirmation. The same [`DeadLetterStore`] calls as `choreo dlq`.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use choreo_bus::Namespace;
use choreo_bus::dead_letter::{
    DeadLetterFilter, DeadLetterReason, DeadLetterStore, StoredDeadLetter,
};
use maud::{Markup, html};
use serde::Deserialize;

use super::Console;
use super::page::{self, Layout, ago, clock};
use crate::Failure;

/// Which dead letters: one by sequence, or those the filters match.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Selection {
    #[serde(default)]
    sequence: String,
    #[serde(default)]
    agent: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    run: String,
    /// The namespace, when not the console's.
    #[serde(default)]
    ns: String,
    /// Where to go after an action.
    #[serde(default)]
    back: String,
    /// The dead letters a purge's confirmation listed, comma-separated: exactly these are
    /// purged, not others that came since and match the same filters.
    #[serde(default)]
    confirmed: String,
    /// `yes` once the person has confirmed a purge.
    #[serde(default)]
    confirm: String,
    /// What an action just did.
    #[serde(default)]
    done: String,
}

impl Selection {
    fn namespace(&self, console: &Console) -> Result<Namespace, Failure> {
        if self.ns.is_empty() {
            Ok(console.namespace.clone())
        } else {
            Namespace::new(&self.ns).map_err(Failure::usage)
        }
    }

    fn store(&self, console: &Console) -> Result<DeadLetterStore, Failure> {
        Ok(DeadLetterStore::new(
            console.jetstream.clone(),
            self.namespace(console)?,
        ))
    }

    fn sequence(&self) -> Result<Option<u64>, Failure> {
        match self.sequence.trim() {
            "" => Ok(None),
            text => text
                .parse()
                .map(Some)
                .map_err(|_| Failure::usage(format!("{text:?} is not a dead letter's number"))),
        }
    }

    fn filter(&self) -> Result<DeadLetterFilter, Failure> {
        let given = |value: &str| (!value.trim().is_empty()).then(|| value.trim().to_string());
        for (field, value) in [("agent", &self.agent), ("run", &self.run)] {
            if let Some(value) = given(value) {
                choreo_bus::names::validate_id(field, &value).map_err(Failure::usage)?;
            }
        }
        Ok(DeadLetterFilter {
            agent: given(&self.agent),
            correlation: given(&self.run),
            reason: match given(&self.reason) {
                Some(reason) => Some(crate::dlq::reason(&reason).map_err(Failure::usage)?),
                None => None,
            },
        })
    }

    /// The sequences chosen: the one named, or every one the filters match.
    async fn chosen(&self, store: &DeadLetterStore) -> Result<Vec<u64>, Failure> {
        if let Some(sequence) = self.sequence()? {
            return Ok(vec![sequence]);
        }
        let letters = store
            .list(&self.filter()?)
            .await
            .map_err(Failure::dead_letter)?;
        Ok(letters.iter().map(|l| l.sequence).collect())
    }

    fn query(&self) -> String {
        page::query(&[
            ("agent", &self.agent),
            ("reason", &self.reason),
            ("run", &self.run),
            ("ns", &self.ns),
        ])
    }

    fn back(&self) -> String {
        page::local_path(&self.back)
            .map(str::to_string)
            .unwrap_or_else(|| format!("/dead-letters{}", self.query()))
    }
}

pub async fn page(State(console): State<Console>, Query(selection): Query<Selection>) -> Response {
    if let Some(away) = page::nats_away(&console) {
        return away;
    }
    let letters = async {
        let filter = selection.filter()?;
        selection
            .store(&console)?
            .list(&filter)
            .await
            .map_err(Failure::dead_letter)
    };
    let letters = match letters.await {
        Ok(letters) => letters,
        Err(failure) => return page::failure(&console, &failure),
    };
    let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
    for letter in &letters {
        *by_reason.entry(letter.letter.reason.as_str()).or_default() += 1;
    }
    let body = html! {
        h1 { "Dead letters" }
        (filters(&selection))
        @if letters.is_empty() {
            div.empty { "No dead letters" @if !selection.query().is_empty() { " match these filters" } "." }
        } @else {
            h2 { "By reason" }
            table.reasons {
                thead { tr { th { "Reason" } th.num { "Letters" } th {} } }
                tbody {
                    @for (reason, count) in &by_reason {
                        tr data-reason=(reason) {
                            td { span.badge.bad { (reason) } }
                            td.num { (count) }
                            td {
                                form.inline method="post" action="/dead-letters/redrive" {
                                    (hidden_filters(&selection, Some(reason)))
                                    button type="submit" data-confirm={ "Redrive all " (count) " dead letters of reason " (reason) "?" } { "Redrive all " (count) }
                                }
                                " "
                                a.button.danger href={ "/dead-letters/purge" (Selection { reason: reason.to_string(), ..selection.clone() }.query()) } { "Purge all " (count) "…" }
                            }
                        }
                    }
                }
            }
            h2 { (letters.len()) @if letters.len() == 1 { " dead letter" } @else { " dead letters, oldest first" } }
            div.scroll {
                table.letters {
                    thead { tr {
                        th.num { "#" } th { "When" } th { "Reason" } th { "Agent" } th { "Run" } th { "Event" }
                        th { "Error" } th.num { "Deliveries" } th {}
                    } }
                    tbody { @for letter in &letters { (row(&selection, letter)) } }
                }
            }
        }
    };
    Layout::new("Dead letters", &console)
        .notice((!selection.done.is_empty()).then(|| selection.done.clone()))
        .render(body)
        .into_response()
}

fn filters(selection: &Selection) -> Markup {
    html! {
        form.filters method="get" action="/dead-letters" {
            label { "Reason"
                select name="reason" {
                    option value="" { "any" }
                    @for reason in DeadLetterReason::ALL {
                        option value=(reason.as_str()) selected[selection.reason == reason.as_str()] { (reason.as_str()) }
                    }
                }
            }
            label { "Agent" input name="agent" size="14" value=(selection.agent); }
            label { "Run" input name="run" size="38" value=(selection.run); }
            @if !selection.ns.is_empty() { input type="hidden" name="ns" value=(selection.ns); }
            button type="submit" { "Apply" }
            a href="/dead-letters" { "Clear" }
        }
    }
}

fn hidden_filters(selection: &Selection, reason: Option<&str>) -> Markup {
    html! {
        input type="hidden" name="reason" value=(reason.unwrap_or(&selection.reason));
        input type="hidden" name="agent" value=(selection.agent);
        input type="hidden" name="run" value=(selection.run);
        input type="hidden" name="ns" value=(selection.ns);
    }
}

fn row(selection: &Selection, stored: &StoredDeadLetter) -> Markup {
    let letter = &stored.letter;
    let run = &letter.correlation_id;
    html! {
        tr data-dead-letter=(stored.sequence) {
            td.num { a href={ "/dead-letters/" (stored.sequence) (page::query(&[("ns", &selection.ns)])) } { (stored.sequence) } }
            td title=(crate::time_arg::format_time(stored.time)) { (clock(stored.time)) br; span.dim { (ago(stored.time)) } }
            td { span.badge.bad.reason { (letter.reason) } }
            td { (letter.agent) }
            td.mono {
                @if run.is_empty() { "?" } @else { a href={ "/runs/" (run) (page::query(&[("ns", &selection.ns)])) } { (run) } }
            }
            td { (or_unknown(&letter.event_type)) }
            td { pre { (letter.error) } }
            td.num { (letter.delivery_count) }
            td {
                form.inline method="post" action="/dead-letters/redrive" {
                    input type="hidden" name="sequence" value=(stored.sequence);
                    input type="hidden" name="ns" value=(selection.ns);
                    input type="hidden" name="back" value={ "/dead-letters" (selection.query()) };
                    button.redrive type="submit" { "Redrive" }
                }
                " "
                a.button.quiet href={ "/dead-letters/purge" (page::query(&[("sequence", &stored.sequence.to_string()), ("ns", &selection.ns)])) } { "Purge…" }
            }
        }
    }
}

fn or_unknown(value: &str) -> &str {
    if value.is_empty() { "?" } else { value }
}

/// One dead letter in full, with the original event.
pub async fn one(
    State(console): State<Console>,
    Path(sequence): Path<String>,
    Query(selection): Query<Selection>,
) -> Response {
    if let Some(away) = page::nats_away(&console) {
        return away;
    }
    let stored = async {
        let sequence: u64 = sequence.parse().map_err(|_| {
            Failure::no_input(format!(
                "There is no dead letter {sequence:?}: dead letters are numbered."
            ))
        })?;
        selection
            .store(&console)?
            .get(sequence)
            .await
            .map_err(|err| match err {
                err @ choreo_bus::dead_letter::DeadLetterError::NotFound { .. } => Failure::no_input(
                    format!("There is no dead letter {sequence}: it was redriven or purged, or never was ({err})."),
                ),
                err => Failure::dead_letter(err),
            })
    };
    let stored = match stored.await {
        Ok(stored) => stored,
        Err(failure) if failure.code == 66 => {
            return page::not_found(&console, "Dead letter not found", &failure.message);
        }
        Err(failure) => return page::failure(&console, &failure),
    };
    let letter = &stored.letter;
    let event = stored.original_event();
    let body = html! {
        h1 { "Dead letter " (stored.sequence) " " span.badge.bad { (letter.reason) } }
        div.summary {
            div { span.label { "agent" } span.value { (letter.agent) } }
            div { span.label { "gave up" } span.value { (clock(stored.time)) " (" (ago(stored.time)) ")" } }
            div { span.label { "deliveries" } span.value { (letter.delivery_count) } }
            div { span.label { "event" } span.value { (or_unknown(&letter.event_type)) } }
            div { span.label { "run" } span.value.mono {
                @if letter.correlation_id.is_empty() { "?" } @else { a href={ "/runs/" (letter.correlation_id) (page::query(&[("ns", &selection.ns)])) } { (letter.correlation_id) } }
            } }
            div { span.label { "from" } span.value.mono { (letter.stream) " #" (letter.stream_sequence) } }
        }
        h2 { "Error" }
        pre.output { (letter.error) }
        div.links {
            form.inline method="post" action="/dead-letters/redrive" {
                input type="hidden" name="sequence" value=(stored.sequence);
                input type="hidden" name="ns" value=(selection.ns);
                input type="hidden" name="back" value={ "/dead-letters" (page::query(&[("ns", &selection.ns)])) };
                button.redrive type="submit" { "Redrive" }
            }
            a.button.danger href={ "/dead-letters/purge" (page::query(&[("sequence", &stored.sequence.to_string()), ("ns", &selection.ns)])) } { "Purge…" }
        }
        h2 { "The original event, as stored on " span.mono { (letter.original_subject) } }
        @match &event {
            Some(event) => {
                p.dim.mono { "id " (event.id) " · " (event.r#type) " from " (event.source) " · depth " (event.depth) }
                pre.payload { (page::payload_text(event)) }
            }
            None => { p { (letter.original.len()) " bytes that do not decode as an event; a redrive would fail the same way." } }
        }
    };
    Layout::new(format!("Dead letter {}", stored.sequence), &console)
        .render(body)
        .into_response()
}

/// Redrive: one, or every one the filters match.
pub async fn redrive(
    State(console): State<Console>,
    axum::Form(selection): axum::Form<Selection>,
) -> Response {
    let done = async {
        let store = selection.store(&console)?;
        let chosen = selection.chosen(&store).await?;
        let mut said = Vec::new();
        for sequence in &chosen {
            let redriven = store
                .redrive(*sequence)
                .await
                .map_err(Failure::dead_letter)?;
            said.push(format!(
                "dead letter {sequence}: {} is back for {}",
                redriven.event_id, redriven.agent
            ));
        }
        Ok::<_, Failure>(match said.len() {
            0 => "Nothing to redrive.".to_string(),
            1 => format!("Redrove {}.", said[0]),
            n => format!("Redrove {n} dead letters."),
        })
    };
    match done.await {
        Ok(done) => {
            Redirect::to(&page::with_param(&selection.back(), "done", &done)).into_response()
        }
        Err(failure) => page::failure(&console, &failure),
    }
}

/// The confirmation a purge needs.
pub async fn confirm_purge(
    State(console): State<Console>,
    Query(selection): Query<Selection>,
) -> Response {
    if let Some(away) = page::nats_away(&console) {
        return away;
    }
    let chosen = async {
        let store = selection.store(&console)?;
        match selection.sequence()? {
            Some(sequence) => Ok::<_, Failure>(vec![
                store.get(sequence).await.map_err(Failure::dead_letter)?,
            ]),
            None => store
                .list(&selection.filter()?)
                .await
                .map_err(Failure::dead_letter),
        }
    };
    let chosen = match chosen.await {
        Ok(chosen) => chosen,
        Err(failure) if failure.code == 66 => {
            return page::not_found(&console, "Dead letter not found", &failure.message);
        }
        Err(failure) => return page::failure(&console, &failure),
    };
    let what = match (chosen.len(), selection.sequence().ok().flatten()) {
        (_, Some(sequence)) => format!("dead letter {sequence}"),
        (n, None) if !selection.reason.is_empty() => {
            format!("all {n} dead letters of reason {}", selection.reason)
        }
        (n, None) => format!("all {n} dead letters that match"),
    };
    let body = html! {
        h1 { "Purge " (what) "?" }
        p.big { "Purged dead letters are deleted for good: they can no longer be redriven. The runs keep the record that they failed." }
        table.letters {
            thead { tr { th.num { "#" } th { "Reason" } th { "Agent" } th { "Run" } th { "Event" } th { "Error" } } }
            tbody {
                @for stored in &chosen {
                    tr {
                        td.num { (stored.sequence) }
                        td { span.badge.bad { (stored.letter.reason) } }
                        td { (stored.letter.agent) }
                        td.mono { (or_unknown(&stored.letter.correlation_id)) }
                        td { (or_unknown(&stored.letter.event_type)) }
                        td { pre { (stored.letter.error) } }
                    }
                }
            }
        }
        p {}
        form method="post" action="/dead-letters/purge" {
            input type="hidden" name="sequence" value=(selection.sequence);
            (hidden_filters(&selection, None))
            input type="hidden" name="confirm" value="yes";
            input type="hidden" name="confirmed" value=(chosen.iter().map(|l| l.sequence.to_string()).collect::<Vec<_>>().join(","));
            button.danger type="submit" { "Purge " (what) }
            " "
            a href={ "/dead-letters" (selection.query()) } { "Cancel" }
        }
    };
    Layout::new("Purge", &console).render(body).into_response()
}

pub async fn purge(
    State(console): State<Console>,
    axum::Form(selection): axum::Form<Selection>,
) -> Response {
    if selection.confirm != "yes" {
        return (
            StatusCode::BAD_REQUEST,
            "a purge needs its confirmation: GET /dead-letters/purge first",
        )
            .into_response();
    }
    let done = async {
        let store = selection.store(&console)?;
        let chosen: Vec<u64> = selection
            .confirmed
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                s.trim()
                    .parse()
                    .map_err(|_| Failure::usage(format!("{s:?} is not a dead letter's number")))
            })
            .collect::<Result<_, _>>()?;
        for sequence in &chosen {
            store.purge(*sequence).await.map_err(Failure::dead_letter)?;
        }
        Ok::<_, Failure>(format!("Purged {} dead letter(s).", chosen.len()))
    };
    match done.await {
        Ok(done) => {
            let back = format!(
                "/dead-letters{}",
                Selection {
                    sequence: String::new(),
                    ..selection.clone()
                }
                .query()
            );
            Redirect::to(&page::with_param(&back, "done", &done)).into_response()
        }
        Err(failure) => page::failure(&console, &failure),
    }
}
