//! The agents page: every agent with its live copies (what `choreo agents` lists, from the NATS
//! Services API and the durable consumers), their health, lag, breakers, and what their model
//! calls cost over the last hour and in all, from the run board.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use time::OffsetDateTime;

use super::Console;
use super::page::{self, Layout, cost};
use crate::agents::{AgentView, look};

/// How long to wait for the copies' answers after the last one came (as `choreo agents`).
const QUIET: Duration = Duration::from_millis(300);
/// How often the live page asks again.
const EVERY: Duration = Duration::from_secs(3);

pub async fn page(State(console): State<Console>) -> Response {
    if let Some(away) = page::nats_away(&console) {
        return away;
    }
    let table = match table(&console).await {
        Ok(table) => table,
        Err(failure) => return page::failure(&console, &failure),
    };
    let body = html! {
        h1 { "Agents" }
        p.dim { "Live copies answer on the NATS Services API; lag is what each agent's durable consumer holds. Refreshed every few seconds." }
        div #live { (table) }
    };
    Layout::new("Agents", &console)
        .live("/live/agents")
        .render(body)
        .into_response()
}

pub async fn live(State(console): State<Console>) -> Response {
    let shared = console.clone();
    page::events(&console, Some(EVERY), move || {
        let console = shared.clone();
        async move {
            match table(&console).await {
                Ok(table) => vec![("fragment", table.into_string())],
                // The banner says what is wrong; the table stays as it was.
                Err(_) => Vec::new(),
            }
        }
    })
    .into_response()
}

/// Tokens and cost (millionths) an agent's model calls spent.
#[derive(Debug, Default, Clone, Copy)]
struct Burn {
    hour_tokens: u64,
    hour_cost: u64,
    tokens: u64,
    cost: u64,
}

fn burn(console: &Console) -> BTreeMap<String, Burn> {
    let board = console.live.board();
    let hour_ago = OffsetDateTime::now_utc() - time::Duration::hours(1);
    let mut burn: BTreeMap<String, Burn> = BTreeMap::new();
    for view in board.folded.state.view(&console.namespace, &[]) {
        for (agent, work) in &view.run.agents {
            let spent = burn.entry(agent.to_string()).or_default();
            spent.tokens += work.tokens;
            spent.cost += work.cost_micros;
            if view.run.last_event >= hour_ago {
                spent.hour_tokens += work.tokens;
                spent.hour_cost += work.cost_micros;
            }
        }
    }
    burn
}

async fn table(console: &Console) -> Result<Markup, crate::Failure> {
    let agents = look(
        &console.client,
        &console.jetstream,
        &console.namespace,
        QUIET,
    )
    .await?;
    let burn = burn(console);
    Ok(html! {
        @if agents.is_empty() {
            div.empty { "No agent answers and no agent has a consumer in namespace " (console.namespace) ". Start the team with " code { "choreo up" } "." }
        } @else {
            p.dim {
                (agents.len()) " agents · "
                (agents.iter().map(|a| a.copies.len()).sum::<usize>()) " live copies · "
                (agents.iter().filter(|a| !a.problems.is_empty()).count()) " with problems"
            }
            div.scroll {
                table.agents {
                    thead { tr {
                        th { "Agent" } th { "Health" } th.num { "Copies" } th.num { "Handled" } th.num { "Failed" }
                        th.num { "Mean" } th.num { "In flight" } th.num { "Lag" } th.num { "Unacked" }
                        th { "Breakers" } th.num { "Tokens 1h" } th.num { "Cost 1h" } th.num { "Cost all" }
                    } }
                    tbody {
                        @for agent in &agents { (row(agent, burn.get(&agent.agent).copied().unwrap_or_default())) }
                    }
                }
            }
        }
    })
}

fn row(agent: &AgentView, burn: Burn) -> Markup {
    let totals = agent.totals();
    let mut breakers: BTreeMap<&str, &str> = BTreeMap::new();
    for summary in agent.copies.iter().filter_map(|c| c.summary.as_ref()) {
        for (name, state) in &summary.breakers {
            // Across copies, the worst state shows.
            let worst = breakers.entry(name).or_insert(state);
            if rank(state) > rank(worst) {
                *worst = state;
            }
        }
    }
    let health = if !agent.problems.is_empty() {
        ("bad", "problem")
    } else if breakers.values().any(|s| *s != "closed") {
        ("warn", "degraded")
    } else {
        ("ok", "healthy")
    };
    html! {
        tr data-agent=(agent.agent) {
            td {
                b { (agent.agent) }
                @for copy in &agent.copies {
                    div.copies.mono {
                        (copy.id) " v" (copy.version)
                        @for (key, value) in &copy.described { " · " (key) " " (value) }
                    }
                }
            }
            td {
                span class={ "badge " (health.0) } { (health.1) }
                @for problem in &agent.problems { div.dim { (problem) } }
            }
            td.num { (agent.copies.len()) }
            td.num { (totals.handled) }
            td.num { (totals.failed) }
            td.num { (totals.mean_ms.map_or("–".to_string(), page::span)) }
            td.num { (totals.in_flight) }
            td.num { (agent.pending.map_or("–".to_string(), |p| p.to_string())) }
            td.num { (agent.ack_pending.map_or("–".to_string(), |p| p.to_string())) }
            td {
                @for (name, state) in &breakers {
                    span class={ "badge " (state) } title={ "breaker " (name) ": " (state) } { (name) " " (state.replace('_', "-")) } " "
                }
            }
            td.num { (burn.hour_tokens) }
            td.num { (cost(burn.hour_cost)) }
            td.num { (cost(burn.cost)) }
        }
    }
}

fn rank(state: &str) -> u8 {
    match state {
        "closed" => 0,
        "half_open" => 1,
        _ => 2,
    }
}
