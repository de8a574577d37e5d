//! The review team end to end: every agent its own process (the binaries `scripts/test` builds
//! first) against a real nats-server, with a real HTTP server where an agent calls out (the
//! webhook target, a chat-completions endpoint).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use choreo_bus::Event;
use choreo_review::events::*;
use choreo_review::report::Report;
use choreo_review::samples::refunds_request;
use choreo_testkit::http::{chat_answer, serve};
use choreo_testkit::team::Team;
use choreo_testkit::{Bus, wait_until};

fn json<T: serde::de::DeserializeOwned>(event: &Event) -> anyhow::Result<T> {
    serde_json::from_slice(&event.data).with_context(|| format!("{} is not JSON", event.r#type))
}

/// Publishes the sample change for review; returns the run's correlation id.
async fn request_review(bus: &Bus) -> anyhow::Result<String> {
    let event = bus
        .publish(REQUESTED, serde_json::to_value(refunds_request())?, None)
        .await?;
    Ok(event.correlation_id)
}

/// The run's events of `event_type`, in log order.
async fn of_type(bus: &Bus, correlation: &str, event_type: &str) -> anyhow::Result<Vec<Event>> {
    bus.events(&format!("events.{correlation}.{event_type}"))
        .await
}

/// Waits until the run holds `count` events of `event_type`.
async fn wait_for(
    bus: &Bus,
    team: &Team,
    correlation: &str,
    event_type: &str,
    count: usize,
) -> anyhow::Result<Vec<Event>> {
    let outcome = wait_until(
        &format!("{count} {event_type} in run {correlation}"),
        || async { Ok(of_type(bus, correlation, event_type).await?.len() >= count) },
    )
    .await;
    if let Err(err) = outcome {
        anyhow::bail!("{err}\n{}", team.logs());
    }
    of_type(bus, correlation, event_type).await
}

#[tokio::test]
async fn a_review_completes_with_findings_from_every_planned_specialist_and_their_raw_outputs()
-> anyhow::Result<()> {
    let bus = Bus::start().await?;
    let mut team = Team::new(bus.server.url())?;
    team.start_all(&[])?;
    let run = request_review(&bus).await?;

    let delivered = wait_for(&bus, &team, &run, DELIVERED, 1).await?;
    let planned: ReviewPlanned = json(&of_type(&bus, &run, PLANNED).await?[0])?;
    assert_eq!(
        planned.specialists,
        ["security", "performance", "style", "tests"]
    );

    let reports = of_type(&bus, &run, COMPLETED).await?;
    assert_eq!(reports.len(), 1, "one report");
    let report: Report = json(&reports[0])?;
    let completions = of_type(&bus, &run, SPECIALIST_COMPLETED).await?;
    for specialist in &planned.specialists {
        let completed: SpecialistCompleted = completions
            .iter()
            .map(json::<SpecialistCompleted>)
            .collect::<anyhow::Result<Vec<_>>>()?
            .into_iter()
            .find(|c| &c.specialist == specialist)
            .with_context(|| format!("{specialist} did not complete"))?;
        let section = report
            .specialists
            .iter()
            .find(|s| &s.specialist == specialist)
            .with_context(|| format!("no section for {specialist}"))?;
        assert_eq!(section.raw_output, completed.raw_output, "verbatim");
        assert!(
            report.findings.iter().any(|f| &f.specialist == specialist),
            "no finding from {specialist} in the report"
        );
        assert!(
            report.markdown().contains(&completed.raw_output),
            "the page keeps {specialist}'s raw output"
        );
    }
    assert!(
        report.blocking().count() >= 3,
        "the sample has a secret, SQL and pickle"
    );

    let delivered: ReviewDelivered = json(&delivered[0])?;
    let page = std::fs::read_to_string(&delivered.target)?;
    assert_eq!(page, report.markdown(), "the notifier wrote the report");
    team.stop().await;
    Ok(())
}

/// The ids of `review.planned` events a copy's log says it handled.
fn handled_plans(log: &str) -> BTreeSet<String> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|entry| entry["fields"]["message"] == "handled")
        .filter(|entry| entry["span"]["event_type"] == PLANNED)
        .filter_map(|entry| entry["span"]["event_id"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn two_copies_of_security_share_the_work() -> anyhow::Result<()> {
    let bus = Bus::start().await?;
    let mut team = Team::new(bus.server.url())?;
    team.start("choreo-triage", &[])?;
    // Paced, so a pull fetches about a second of work (20 events) and one copy cannot take
    // all 30 runs before the other pulls.
    let paced = [("CHOREO_HANDLE_RATE", "20/s")];
    team.start("choreo-security", &paced)?;
    team.start("choreo-security", &paced)?;
    wait_until("both copies have bound the consumer", || {
        let started = team
            .copies("choreo-security")
            .iter()
            .filter(|p| p.log().contains("agent started"))
            .count();
        async move { Ok(started == 2) }
    })
    .await?;

    const RUNS: usize = 30;
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        runs.push(request_review(&bus).await?);
    }
    let completed = "events.*.review.specialist.completed";
    let outcome = wait_until("every run's security review", || async {
        Ok(bus.events(completed).await?.len() >= RUNS)
    })
    .await;
    if let Err(err) = outcome {
        anyhow::bail!("{err}\n{}", team.logs());
    }
    team.stop().await;

    let plans: BTreeSet<String> = bus
        .events("events.*.review.planned")
        .await?
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(plans.len(), RUNS);
    let logs: Vec<String> = team
        .copies("choreo-security")
        .iter()
        .map(|p| p.log())
        .collect();
    let first = handled_plans(&logs[0]);
    let second = handled_plans(&logs[1]);
    assert!(
        !first.is_empty() && !second.is_empty(),
        "both copies worked: {} and {}",
        first.len(),
        second.len()
    );
    assert!(first.is_disjoint(&second), "no plan handled by both copies");
    let union: BTreeSet<String> = first.union(&second).cloned().collect();
    assert_eq!(union, plans, "every plan handled");
    assert_eq!(
        bus.events(completed).await?.len(),
        RUNS,
        "one completion per run"
    );
    Ok(())
}

#[tokio::test]
async fn agents_killed_mid_run_and_started_again_complete_it_without_duplicated_findings()
-> anyhow::Result<()> {
    let bus = Bus::start().await?;
    let mut team = Team::new(bus.server.url())?;
    let quick_redelivery = [("CHOREO_ACK_WAIT", "2s")];
    for binary in choreo_testkit::team::TEAM {
        if binary == "choreo-security" {
            // Handles one plan, then holds the next (fetched, not acknowledged) waiting on its
            // rate: killing it then loses work in hand.
            team.start(
                binary,
                &[("CHOREO_ACK_WAIT", "2s"), ("CHOREO_HANDLE_RATE", "1/h")],
            )?;
        } else {
            team.start(binary, &quick_redelivery)?;
        }
    }
    const RUNS: usize = 3;
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        runs.push(request_review(&bus).await?);
    }
    wait_until("security completes one run and holds the next", || async {
        Ok(bus
            .events("events.*.review.specialist.completed")
            .await?
            .iter()
            .filter(|e| e.source == "security")
            .count()
            == 1)
    })
    .await?;
    team.kill("choreo-security", 0).await;
    team.kill("choreo-aggregator", 0).await;
    team.start("choreo-security", &quick_redelivery)?;
    team.start("choreo-aggregator", &quick_redelivery)?;

    for run in &runs {
        wait_for(&bus, &team, run, DELIVERED, 1).await?;
        let reports = of_type(&bus, run, COMPLETED).await?;
        assert_eq!(reports.len(), 1, "one report in run {run}");
        let mut findings_per_specialist: BTreeMap<String, usize> = BTreeMap::new();
        for finding in of_type(&bus, run, FINDING).await? {
            let reported: FindingReported = json(&finding)?;
            *findings_per_specialist
                .entry(reported.specialist)
                .or_default() += 1;
        }
        let completions = of_type(&bus, run, SPECIALIST_COMPLETED).await?;
        assert_eq!(
            completions.len(),
            4,
            "one completion per specialist in run {run}"
        );
        for completion in completions {
            let completed: SpecialistCompleted = json(&completion)?;
            assert_eq!(
                findings_per_specialist
                    .get(&completed.specialist)
                    .copied()
                    .unwrap_or(0),
                completed.findings,
                "{}'s findings in run {run} are stored once each",
                completed.specialist
            );
        }
        let report: Report = json(&reports[0])?;
        assert_eq!(
            report.findings.len(),
            findings_per_specialist.values().sum::<usize>()
        );
    }
    assert!(
        bus.dead_letters().await?.is_empty(),
        "nothing dead-lettered"
    );
    team.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_aggregator_started_after_its_specialists_finished_reports_under_the_last_completion()
-> anyhow::Result<()> {
    let bus = Bus::start().await?;
    let mut team = Team::new(bus.server.url())?;
    for binary in choreo_testkit::team::TEAM {
        if binary != "choreo-aggregator" {
            team.start(binary, &[])?;
        }
    }
    let run = request_review(&bus).await?;
    let completions = wait_for(&bus, &team, &run, SPECIALIST_COMPLETED, 4).await?;
    // Every handling of the aggregator now reads a complete round, the plan's first.
    team.start("choreo-aggregator", &[])?;
    let reports = wait_for(&bus, &team, &run, COMPLETED, 1).await?;
    let last = completions.last().context("four completions")?;
    assert_eq!(
        reports[0].causation_id, last.id,
        "the report hangs under the completion stored last ({}), as in any other run",
        last.source
    );
    team.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_round_whose_specialist_never_answers_is_reported_at_its_deadline() -> anyhow::Result<()>
{
    let bus = Bus::start().await?;
    let mut team = Team::new(bus.server.url())?;
    for binary in [
        "choreo-triage",
        "choreo-security",
        "choreo-style",
        "choreo-tests",
    ] {
        team.start(binary, &[])?;
    }
    // No performance specialist runs.
    team.start("choreo-aggregator", &[("CHOREO_REVIEW_DEADLINE", "2s")])?;
    let run = request_review(&bus).await?;
    let reports = wait_for(&bus, &team, &run, COMPLETED, 1).await?;
    let report: Report = json(&reports[0])?;
    assert_eq!(report.missing, ["performance"]);
    assert_eq!(of_type(&bus, &run, DEADLINE).await?.len(), 1);
    assert!(report.findings.iter().any(|f| f.specialist == "security"));
    team.stop().await;
    Ok(())
}

/// What a fake HTTP endpoint received, and how it answers.
#[derive(Debug, Default)]
struct Received {
    bodies: Vec<serde_json::Value>,
    idempotency_keys: Vec<String>,
    authorizations: Vec<String>,
    /// Answers to give, in order; after them, 200 with the normal answer.
    script: Vec<StatusCode>,
    /// Model messages to answer with, in order, before [`MODEL_ANSWER`].
    contents: Vec<&'static str>,
}

type Shared = Arc<Mutex<Received>>;

/// Serves a chat-completions endpoint with `handler` on a free loopback port; returns its base
/// URL (what `CHOREO_LLM_URL` takes) and the server's task.
async fn chat_endpoint<S: Clone + Send + Sync + 'static>(
    handler: axum::routing::MethodRouter<S>,
    state: S,
) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let router = axum::Router::new()
        .route("/v1/chat/completions", handler)
        .with_state(state);
    let (address, server) = serve(SocketAddr::from(([127, 0, 0, 1], 0)), router).await?;
    Ok((format!("http://{address}/v1"), server))
}

async fn webhook(
    State(received): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> StatusCode {
    let mut received = received.lock().unwrap_or_else(|e| e.into_inner());
    received.bodies.push(body);
    if let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
        received.idempotency_keys.push(key.to_string());
    }
    StatusCode::CREATED
}

#[tokio::test]
async fn the_webhook_breaker_opens_while_the_target_is_down_and_reports_go_out_when_it_is_back()
-> anyhow::Result<()> {
    let bus = Bus::start().await?;
    // A port nobody listens on, yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("http://127.0.0.1:{port}/repos/{{repository}}/issues/{{number}}/comments");
    let mut team = Team::new(bus.server.url())?;
    team.start(
        "choreo-notifier",
        &[
            ("CHOREO_WEBHOOK_URL", &url),
            ("CHOREO_WEBHOOK_TOKEN", "test-token"),
            ("CHOREO_WEBHOOK_BREAKER_OPEN_FOR", "1s"),
            ("CHOREO_MAX_DELIVERIES", "20"),
        ],
    )?;

    const REPORTS: usize = 3;
    let mut runs = Vec::new();
    for _ in 0..REPORTS {
        let report = Report {
            title: "t".into(),
            url: "https://github.com/acme/shop/pull/7".into(),
            ..choreo_review::testing::clean_report()
        };
        let approved = ReviewApproved {
            report,
            unresolved: vec![],
        };
        let event = bus
            .publish(APPROVED, serde_json::to_value(&approved)?, None)
            .await?;
        runs.push(event.correlation_id);
    }
    let opened = "events.breaker-notifier-webhook.choreo.breaker.opened";
    let outcome = wait_until("the webhook breaker opens", || async {
        Ok(!bus.events(opened).await?.is_empty())
    })
    .await;
    if let Err(err) = outcome {
        anyhow::bail!("{err}\n{}", team.logs());
    }
    assert!(bus.events("events.*.review.delivered").await?.is_empty());

    let received: Shared = Arc::default();
    let router = axum::Router::new()
        .route(
            "/repos/acme/shop/issues/7/comments",
            axum::routing::post(webhook),
        )
        .with_state(received.clone());
    let (_, server) = serve(SocketAddr::from(([127, 0, 0, 1], port)), router).await?;
    for run in &runs {
        wait_for(&bus, &team, run, DELIVERED, 1).await?;
    }
    {
        let received = received.lock().unwrap_or_else(|e| e.into_inner());
        let keys: BTreeSet<&String> = received.idempotency_keys.iter().collect();
        assert_eq!(
            keys.len(),
            REPORTS,
            "every report posted, each with its own key"
        );
        assert!(received.bodies.iter().all(|b| {
            b["body"]
                .as_str()
                .is_some_and(|s| s.contains("Code review: t"))
        }));
    }
    assert!(bus.dead_letters().await?.is_empty(), "no report given up");
    server.abort();
    team.stop().await;
    Ok(())
}

const MODEL_ANSWER: &str = r#"{"findings": [{"file": "app/refunds.py", "line": 10, "severity": "critical", "rule": "hardcoded-secret", "message": "a live payments key is committed", "suggestion": "read PAYMENTS_API_KEY from the environment"}]}"#;

async fn chat(
    State(received): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> axum::response::Response {
    let mut received = received.lock().unwrap_or_else(|e| e.into_inner());
    received.bodies.push(body);
    if let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        received.authorizations.push(auth.to_string());
    }
    if !received.script.is_empty() {
        let status = received.script.remove(0);
        let mut response = (status, "try again").into_response();
        if status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        return response;
    }
    let content = if received.contents.is_empty() {
        MODEL_ANSWER
    } else {
        received.contents.remove(0)
    };
    chat_answer("chatcmpl-1", "fake-model-2026", content)
}

/// A chat completion of `content` that used (and bills) 150 tokens.

#[tokio::test]
async fn the_llm_brain_survives_a_429_and_a_500_and_its_tokens_are_counted_and_budgeted()
-> anyhow::Result<()> {
    let bus = Bus::start().await?;
    let received: Shared = Arc::new(Mutex::new(Received {
        script: vec![
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::INTERNAL_SERVER_ERROR,
        ],
        ..Received::default()
    }));
    let (llm_url, server) = chat_endpoint(axum::routing::post(chat), received.clone()).await?;
    let mut team = Team::new(bus.server.url())?;
    team.start(
        "choreo-security",
        &[
            ("CHOREO_LLM_URL", &llm_url),
            ("CHOREO_LLM_MODEL", "fake-model"),
            ("CHOREO_LLM_API_KEY", "sk-test"),
            // One review's 150 tokens fit; after it, 50 are left, fewer than an answer's 100.
            ("CHOREO_MAX_TOKENS", "200"),
            ("CHOREO_LLM_MAX_TOKENS", "100"),
        ],
    )?;

    let request = refunds_request();
    let plan = ReviewPlanned {
        request: request.clone(),
        specialists: vec!["security".into()],
        skipped: vec![],
        files: vec![],
    };
    let planned = bus
        .publish(PLANNED, serde_json::to_value(&plan)?, None)
        .await?;
    let run = planned.correlation_id.clone();
    let completions = wait_for(&bus, &team, &run, SPECIALIST_COMPLETED, 1).await?;
    assert_eq!(
        completions[0].tokens_used, 150,
        "the model's usage is on the event"
    );
    let completed: SpecialistCompleted = json(&completions[0])?;
    assert_eq!(completed.findings, 1);
    assert_eq!(completed.raw_output, MODEL_ANSWER);
    match &completed.provenance {
        Provenance::Llm {
            model,
            prompt_version,
            raw_response,
            calls,
            ..
        } => {
            assert_eq!(model, "fake-model-2026", "the model that answered");
            assert_eq!(prompt_version, choreo_review::llm::PROMPT_VERSION);
            assert!(raw_response.contains("chatcmpl-1"), "{raw_response}");
            assert_eq!(*calls, 3, "a 429, a 500, then the answer");
        }
        other => anyhow::bail!("not an LLM provenance: {other:?}"),
    }
    {
        let received = received.lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(received.bodies.len(), 3);
        assert!(
            received
                .authorizations
                .iter()
                .all(|a| a == "Bearer sk-test")
        );
        assert_eq!(received.bodies[0]["model"], "fake-model");
        assert_eq!(received.bodies[0]["max_tokens"], 100);
    }

    // A second review in the same run might pass the run's 200 tokens: it is refused before
    // the model is called.
    let revision = RevisionRequested {
        specialist: "security".into(),
        round: 2,
        reason: "again".into(),
        findings: vec![],
        request,
    };
    bus.publish(
        REVISION_REQUESTED,
        serde_json::to_value(&revision)?,
        Some(&run),
    )
    .await?;
    let outcome = wait_until("the over-budget review is dead-lettered", || async {
        Ok(!bus.dead_letters().await?.is_empty())
    })
    .await;
    if let Err(err) = outcome {
        anyhow::bail!("{err}\n{}", team.logs());
    }
    let dead = &bus.dead_letters().await?[0];
    assert_eq!(dead.reason, "budget_exhausted", "{dead:?}");
    assert!(
        dead.error.contains("50 tokens left") && dead.error.contains("not called"),
        "{}",
        dead.error
    );
    assert_eq!(
        received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bodies
            .len(),
        3,
        "nothing was spent on the refused review"
    );
    assert_eq!(
        of_type(&bus, &run, SPECIALIST_COMPLETED).await?.len(),
        1,
        "the over-budget review was not published"
    );
    server.abort();
    team.stop().await;
    Ok(())
}

/// What a slow model endpoint was asked and billed.
#[derive(Debug, Default)]
struct Billing {
    calls: usize,
    billed_tokens: u64,
}

/// A chat-completions endpoint that takes three seconds per answer and bills 150 tokens.
async fn slow_chat(State(billing): State<Arc<Mutex<Billing>>>) -> axum::response::Response {
    billing.lock().unwrap_or_else(|e| e.into_inner()).calls += 1;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    billing
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .billed_tokens += 150;
    chat_answer("chatcmpl-slow", "slow-model", MODEL_ANSWER)
}

#[tokio::test]
async fn a_model_slower_than_the_ack_wait_is_called_once_per_review_and_every_count_of_its_tokens_agrees()
-> anyhow::Result<()> {
    const REVIEWS: usize = 3;
    let bus = Bus::start().await?;
    let billing = Arc::new(Mutex::new(Billing::default()));
    let (llm_url, server) = chat_endpoint(axum::routing::post(slow_chat), billing.clone()).await?;
    let mut team = Team::new(bus.server.url())?;
    let metrics_address = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    // Every other setting at its default; metrics served, with a price.
    team.start(
        "choreo-security",
        &[
            ("CHOREO_LLM_URL", &llm_url),
            ("CHOREO_ACK_WAIT", "1s"),
            ("CHOREO_METRICS_LISTEN", &metrics_address.to_string()),
            ("CHOREO_LLM_PRICE", "3/15"),
        ],
    )?;

    let mut runs = Vec::new();
    for _ in 0..REVIEWS {
        let plan = ReviewPlanned {
            request: refunds_request(),
            specialists: vec!["security".into()],
            skipped: vec![],
            files: vec![],
        };
        let planned = bus
            .publish(PLANNED, serde_json::to_value(&plan)?, None)
            .await?;
        runs.push(planned.correlation_id);
    }
    for run in &runs {
        wait_for(&bus, &team, run, SPECIALIST_COMPLETED, 1).await?;
    }
    let stream = bus.jetstream.get_stream("EVENTS").await?;
    wait_until("security acknowledged every review", || async {
        let info = stream.consumer_info("security").await?;
        Ok(info.num_pending == 0 && info.num_ack_pending == 0)
    })
    .await?;

    let budget = choreo_bus::guard::CorrelationBudget::new(
        bus.client.clone(),
        Default::default(),
        choreo_bus::guard::BudgetLimits::default(),
    );
    let board = choreo_bus::projection::Projector::new(bus.jetstream.clone(), Default::default())
        .rebuild::<choreo_bus::projection::run_board::RunBoard>(
            choreo_bus::projection::AsOf::Now,
            false,
        )
        .await?;
    let mut on_events = 0;
    for run in &runs {
        let completions = of_type(&bus, run, SPECIALIST_COMPLETED).await?;
        assert_eq!(completions.len(), 1, "run {run}");
        let tokens = completions[0].tokens_used;
        assert_eq!(tokens, 150, "the events of run {run}");
        let completed: SpecialistCompleted = json(&completions[0])?;
        match completed.provenance {
            Provenance::Llm { calls, .. } => assert_eq!(calls, 1, "run {run}"),
            other => anyhow::bail!("not an LLM provenance: {other:?}"),
        }
        assert_eq!(
            budget.usage(run).await?.tokens,
            tokens,
            "the budget counter of run {run}"
        );
        let shown = board.state.run(run).map(|run| run.tokens);
        assert_eq!(
            shown,
            Some(tokens),
            "choreo state's run board for run {run}"
        );
        // What the call cost at 3 and 15 per million (100 in, 50 out), in millionths: the
        // same on the run board and in the run's trace, from the handling's record.
        let cost_micros = board.state.run(run).map(|run| run.cost_micros);
        assert_eq!(cost_micros, Some(1050), "the run board's cost of run {run}");
        let trace =
            choreo_bus::trace::RunTrace::read(&bus.jetstream, &Default::default(), run, &[])
                .await?;
        let handlings: Vec<_> = trace.nodes.iter().flat_map(|n| &n.handlings).collect();
        assert_eq!(handlings.len(), 1, "one handling of run {run}");
        assert_eq!(handlings[0].agent, "security");
        assert!(
            handlings[0].took >= std::time::Duration::from_secs(1),
            "the slow call"
        );
        assert_eq!(
            trace.spend().cost_micros(),
            1050,
            "the trace's cost of run {run}"
        );
        on_events += tokens;
    }
    let (calls, billed_tokens) = {
        let billing = billing.lock().unwrap_or_else(|e| e.into_inner());
        (billing.calls, billing.billed_tokens)
    };
    assert_eq!(calls, REVIEWS, "one call per review\n{}", team.logs());
    assert_eq!(billed_tokens, on_events, "what the endpoint billed");

    // The agent's metrics say the same: one call per review, the billed tokens (100 in, 50
    // out each), and their cost at 3 and 15 per million.
    let (text, scrape) =
        choreo_testkit::metrics::scrape(&format!("http://{metrics_address}/metrics")).await?;
    let model = ("model", "gpt-4o-mini");
    let sum = |metric: &str, label: Option<(&str, &str)>| -> f64 {
        let labels: Vec<(&str, &str)> = std::iter::once(model).chain(label).collect();
        choreo_testkit::metrics::total(&scrape, metric, &labels)
    };
    assert_eq!(
        sum("choreo_model_calls_total", Some(("outcome", "ok"))),
        REVIEWS as f64,
        "{text}"
    );
    let input = sum("choreo_model_tokens_total", Some(("direction", "input")));
    let output = sum("choreo_model_tokens_total", Some(("direction", "output")));
    assert_eq!((input, output), (300.0, 150.0), "{text}");
    assert_eq!(
        input + output,
        billed_tokens as f64,
        "the metrics' tokens, billed"
    );
    let cost = sum("choreo_model_cost_total", None);
    assert!(
        (cost - (300.0 * 3.0 + 150.0 * 15.0) / 1e6).abs() < 1e-12,
        "cost {cost}"
    );
    assert!(
        (cost - REVIEWS as f64 * 1050.0 / 1e6).abs() < 1e-9,
        "the metrics' cost is the run board's: {cost}"
    );
    assert!(bus.dead_letters().await?.is_empty());
    server.abort();
    team.stop().await;
    Ok(())
}

const VAGUE_ANSWER: &str = r#"{"findings": [{"file": "app/refunds.py", "line": 10, "severity": "critical", "rule": "hardcoded-secret", "message": "a live payments key is committed"}]}"#;

#[tokio::test]
async fn the_editor_sends_a_vague_finding_back_and_approves_the_revision() -> anyhow::Result<()> {
    let bus = Bus::start().await?;
    let received: Shared = Arc::new(Mutex::new(Received {
        contents: vec![VAGUE_ANSWER],
        ..Received::default()
    }));
    let (llm_url, server) = chat_endpoint(axum::routing::post(chat), received.clone()).await?;
    let mut team = Team::new(bus.server.url())?;
    for binary in choreo_testkit::team::TEAM {
        if binary == "choreo-security" {
            team.start(binary, &[("CHOREO_LLM_URL", &llm_url)])?;
        } else {
            team.start(binary, &[])?;
        }
    }
    let run = request_review(&bus).await?;
    wait_for(&bus, &team, &run, DELIVERED, 1).await?;

    let revisions = of_type(&bus, &run, REVISION_REQUESTED).await?;
    assert_eq!(revisions.len(), 1, "one finding went back");
    let revision: RevisionRequested = json(&revisions[0])?;
    assert_eq!(
        (revision.specialist.as_str(), revision.round),
        ("security", 2)
    );
    assert_eq!(revision.findings.len(), 1);
    let reports: Vec<Report> = of_type(&bus, &run, COMPLETED)
        .await?
        .iter()
        .map(json::<Report>)
        .collect::<anyhow::Result<_>>()?;
    let rounds: Vec<u32> = reports.iter().map(|r| r.round).collect();
    assert_eq!(rounds, [1, 2]);
    let approved: ReviewApproved = json(&of_type(&bus, &run, APPROVED).await?[0])?;
    assert_eq!(approved.report.round, 2);
    assert!(approved.unresolved.is_empty());
    assert!(
        approved
            .report
            .blocking()
            .all(|f| f.finding.has_concrete_suggestion())
    );
    let security_rounds: Vec<Option<u32>> = approved
        .report
        .specialists
        .iter()
        .map(|s| s.round)
        .collect();
    assert_eq!(
        security_rounds,
        [Some(2), Some(1), Some(1), Some(1)],
        "only security was revised"
    );
    server.abort();
    team.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_agent_with_a_bad_setting_of_its_own_exits_64_naming_it() -> anyhow::Result<()> {
    let bus = Bus::start().await?;
    let binary = choreo_local_nats::process::sibling_binary("choreo-notifier")?;
    let output = tokio::process::Command::new(binary)
        .env("NATS_URL", bus.server.url())
        .env("CHOREO_WEBHOOK_URL", "ftp://example.test/hook")
        .output()
        .await?;
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("webhook-url"), "{stderr}");
    Ok(())
}
