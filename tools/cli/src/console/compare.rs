//! The compare page: two runs side by side (a sandbox replay against its original, say), with
//! what differs as `choreo diff` finds it: the same [`compare`], which takes the order of
//! concurrent siblings and which arrival completed a join for the same run.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use choreo_bus::trace::RunTrace;
use maud::{Markup, html};
use serde::Deserialize;

use super::Console;
use super::page::{self, Layout};
use crate::Failure;
use crate::diff::{Comparison, Difference, compare, parse_run};

#[derive(Debug, Default, Deserialize)]
pub struct Pair {
    /// The first run: `RUN` or `NAMESPACE/RUN`.
    #[serde(default)]
    a: String,
    #[serde(default)]
    b: String,
}

pub async fn page(State(console): State<Console>, Query(pair): Query<Pair>) -> Response {
    let form = form(&pair);
    if pair.a.trim().is_empty() || pair.b.trim().is_empty() {
        let body = html! {
            h1 { "Compare two runs" }
            p { "Two runs' trees, event by event: a run replayed into a sandbox (" code { "choreo replay --correlation RUN --into lab" } ") against the original, or any two runs. Write a run as its id, or " code { "NAMESPACE/ID" } " for another namespace." }
            (form)
        };
        return Layout::new("Compare", &console)
            .render(body)
            .into_response();
    }
    if let Some(away) = page::nats_away(&console) {
        return away;
    }
    let read = async {
        let (ns_a, run_a) = parse_run(pair.a.trim(), &console.namespace)?;
        let (ns_b, run_b) = parse_run(pair.b.trim(), &console.namespace)?;
        let read = |ns, run: String| {
            let jetstream = console.jetstream.clone();
            async move {
                RunTrace::read(&jetstream, &ns, &run, &[])
                    .await
                    .map_err(|err| match err {
                        choreo_bus::trace::TraceError::UnknownRun { .. } => Failure::no_input(
                            format!("There is no run {run} in namespace {ns} to compare."),
                        ),
                        err => Failure::trace(err),
                    })
            }
        };
        Ok::<_, Failure>((read(ns_a, run_a).await?, read(ns_b, run_b).await?))
    };
    let (a, b) = match read.await {
        Ok(traces) => traces,
        Err(failure) => return page::failure(&console, &failure),
    };
    let comparison = compare(&a, &b);
    let body = html! {
        h1 { "Compare" }
        (form)
        (verdict(&comparison))
        @if !comparison.differences.is_empty() {
            h2 { "What differs" }
            div.differences {
                @for difference in &comparison.differences {
                    pre class={ "difference " (kind(difference)) } { (difference) }
                }
            }
        }
        @if !comparison.rejoined.is_empty() {
            h2 { "The same, although it looks otherwise" }
            @for rejoined in &comparison.rejoined { pre.difference.rejoined { (rejoined) } }
        }
        h2 { "Side by side" }
        div.columns {
            (column("A", &console, &a))
            (column("B", &console, &b))
        }
    };
    Layout::new("Compare", &console)
        .render(body)
        .into_response()
}

fn form(pair: &Pair) -> Markup {
    html! {
        form.filters method="get" action="/compare" {
            label { "Run A" input name="a" size="44" value=(pair.a) placeholder="RUN or NAMESPACE/RUN"; }
            label { "Run B" input name="b" size="44" value=(pair.b) placeholder="lab/RUN"; }
            button type="submit" { "Compare" }
        }
    }
}

fn verdict(comparison: &Comparison) -> Markup {
    let n = comparison.differences.len();
    html! {
        @if n == 0 {
            div.verdict.same data-differences="0" { "No differences: every event matches in type, source, payload and dead letters." }
        } @else {
            div.verdict.differ data-differences=(n) { "The runs differ in " (n) " place(s)." }
        }
    }
}

fn kind(difference: &Difference) -> &'static str {
    match difference {
        Difference::OnlyInA(_) => "only-a",
        Difference::OnlyInB(_) => "only-b",
        Difference::Payload { .. } => "payload",
        Difference::DeadLetter { .. } => "dead-letter",
    }
}

fn column(name: &str, console: &Console, trace: &RunTrace) -> Markup {
    let namespace = choreo_bus::Namespace::new(&trace.namespace).unwrap_or_default();
    html! {
        div {
            h2 { (name) ": " a.mono href=(super::run::address(console, &namespace, &trace.correlation_id)) { (trace.namespace) "/" (trace.correlation_id) } }
            pre { (crate::trace::tree(trace, false)) }
        }
    }
}
