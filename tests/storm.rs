//! Storm control end to end, against a real nats-server: loops are stopped by the guard
//! configured for them while other runs complete, a flood is paced without loss, and a failing
//! dependency opens the breaker until it recovers.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use choreo_bus::dead_letter::DEAD_LETTERED;
use choreo_bus::guard::{
    BreakerConfig, BreakerError, BudgetLimits, CircuitBreaker, CycleLimit, DepthLimit,
    GuardsConfig, RateLimit,
};
use choreo_bus::{Agent, Emit, Handler, HandlerError, Incoming, RuntimeConfig, handler_fn};
use choreo_testkit::{Bus, event_type, quick_config, wait_until};

/// An agent that answers every `from` event with one `to` event, reporting `tokens`.
fn answering(name: &str, from: &str, to: &str, tokens: u64) -> (Agent, impl Handler) {
    let agent = Agent::builder(name)
        .subscribes(from)
        .emits(to)
        .build()
        .expect("valid agent");
    let to = event_type(to);
    let handler = handler_fn(move |event: Incoming| {
        let to = to.clone();
        async move {
            let answer = Emit::json(to, &serde_json::json!({ "after": event.id }))
                .map_err(HandlerError::permanent)?;
            Ok(vec![answer.tokens_used(tokens)])
        }
    });
    (agent, handler)
}

/// Guards with only `keep` switched on, so the test knows which one must stop the storm.
fn only(keep: impl FnOnce(&mut GuardsConfig)) -> RuntimeConfig {
    let mut guards = GuardsConfig::off();
    keep(&mut guards);
    RuntimeConfig {
        guards,
        ..quick_config()
    }
}

struct StormOutcome {
    storm_events: usize,
    reason: String,
    error: String,
    agent: String,
}

/// Runs ping ↔ pong (each answering the other forever, spending `tokens` per answer) under
/// `config`, with a bystander pipeline beside it, until a guard stops the storm; checks that
/// the bystander's run completes and reports what stopped the storm.
async fn storm(config: RuntimeConfig, tokens: u64) -> anyhow::Result<StormOutcome> {
    let bus = Bus::start().await?;
    let (ping, ping_handler) = answering("ping", "ball.returned", "ball.served", tokens);
    let (pong, pong_handler) = answering("pong", "ball.served", "ball.returned", tokens);
    let (relay_a, relay_a_handler) = answering("relay-a", "work.requested", "work.relayed", 0);
    let (relay_b, relay_b_handler) = answering("relay-b", "work.relayed", "work.done", 0);
    let agents = vec![
        bus.run(ping, ping_handler, config.clone()).await?,
        bus.run(pong, pong_handler, config.clone()).await?,
        bus.run(relay_a, relay_a_handler, config.clone()).await?,
        bus.run(relay_b, relay_b_handler, config.clone()).await?,
    ];

    let serve = bus
        .publish("ball.served", serde_json::json!({}), Some("storm"))
        .await?;
    let bystander = bus
        .publish("work.requested", serde_json::json!({}), Some("bystander"))
        .await?;
    wait_until("the storm is dead-lettered", || async {
        Ok(!bus.dead_letters().await?.is_empty())
    })
    .await?;
    wait_until("the bystander's run completes", || async {
        let events = bus.events("events.bystander.>").await?;
        Ok(events.iter().any(|e| e.r#type == "work.done"))
    })
    .await?;
    for agent in agents {
        agent.stop().await?;
    }

    let letters = bus.dead_letters().await?;
    assert_eq!(letters.len(), 1, "one stop: {letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.correlation_id, serve.correlation_id);
    let bystander_run = bus.events("events.bystander.>").await?;
    assert_eq!(bystander_run.len(), 3, "the bystander's run is whole");
    assert_eq!(bystander_run[0].id, bystander.id);
    // The stop is announced in the run, as a child of the event given up on.
    let (notices, storm_run): (Vec<_>, Vec<_>) = bus
        .events("events.storm.>")
        .await?
        .into_iter()
        .partition(|e| e.r#type == DEAD_LETTERED);
    assert_eq!(notices.len(), 1, "one announcement: {notices:?}");
    assert_eq!(notices[0].causation_id, letter.event_id);
    Ok(StormOutcome {
        storm_events: storm_run.len(),
        reason: letter.reason.clone(),
        error: letter.error.clone(),
        agent: letter.agent.clone(),
    })
}

#[tokio::test]
async fn a_ping_pong_loop_is_stopped_by_cycle_detection_while_another_run_completes()
-> anyhow::Result<()> {
    let outcome = storm(only(|g| g.cycle = Some(CycleLimit { max_visits: 3 })), 0).await?;
    assert_eq!(outcome.reason, "cycle_detected");
    // Each agent answers three times along the chain: the serve plus 2 x 3 answers.
    assert_eq!(outcome.storm_events, 1 + 2 * 3);
    assert_eq!(
        outcome.agent, "pong",
        "pong is first to come round a fourth time"
    );
    assert!(outcome.error.contains("4th time"), "{}", outcome.error);
    Ok(())
}

#[tokio::test]
async fn a_ping_pong_loop_is_stopped_by_the_depth_limit() -> anyhow::Result<()> {
    let outcome = storm(only(|g| g.depth = Some(DepthLimit { max: 5 })), 0).await?;
    assert_eq!(outcome.reason, "depth_exceeded");
    // Depths 0 to 5 are published; the answer at depth 6 is not.
    assert_eq!(outcome.storm_events, 6);
    assert!(outcome.error.contains("depth 6"), "{}", outcome.error);
    Ok(())
}

#[tokio::test]
async fn a_ping_pong_loop_is_stopped_by_the_run_event_budget_shared_by_both_agents()
-> anyhow::Result<()> {
    let outcome = storm(
        only(|g| {
            g.budget = BudgetLimits {
                max_events: Some(9),
                max_tokens: None,
                max_cost_micros: None,
            }
        }),
        0,
    )
    .await?;
    assert_eq!(outcome.reason, "budget_exhausted");
    // The root plus nine answers, split between two agents drawing on one counter. (A budget
    // this small is granted one event at a time, so none is stranded in either process.)
    assert_eq!(outcome.storm_events, 1 + 9);
    assert!(
        outcome.error.contains("events budget (9 of 9)"),
        "{}",
        outcome.error
    );
    Ok(())
}

#[tokio::test]
async fn a_ping_pong_loop_is_stopped_by_the_run_token_budget() -> anyhow::Result<()> {
    let outcome = storm(
        only(|g| {
            g.budget = BudgetLimits {
                max_events: Some(1000),
                max_tokens: Some(450),
                max_cost_micros: None,
            }
        }),
        100,
    )
    .await?;
    assert_eq!(outcome.reason, "budget_exhausted");
    // Four answers of 100 tokens fit in 450; the fifth would make 500.
    assert_eq!(outcome.storm_events, 1 + 4);
    assert!(
        outcome.error.contains("tokens budget (500 of 450)"),
        "{}",
        outcome.error
    );
    Ok(())
}

#[tokio::test]
async fn a_flood_of_ten_times_the_rate_is_all_handled_and_nothing_lost() -> anyhow::Result<()> {
    let bus = Bus::start().await?;
    let handled: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let agent = Agent::builder("paced")
        .subscribes("flood.arrived")
        .build()?;
    let handler = {
        let handled = Arc::clone(&handled);
        handler_fn(move |event: Incoming| {
            let handled = Arc::clone(&handled);
            async move {
                *handled
                    .lock()
                    .expect("not poisoned")
                    .entry(event.id.clone())
                    .or_insert(0) += 1;
                Ok(vec![])
            }
        })
    };
    let rate = 100;
    let config = RuntimeConfig {
        guards: GuardsConfig {
            handle_rate: Some(RateLimit {
                rate: choreo_bus::guard::Rate::per_second(rate)?,
                burst: 10,
            }),
            ..GuardsConfig::default()
        },
        ..quick_config()
    };
    // Three seconds of work at the agent's rate, offered all at once (well over 10x the rate).
    let offered = 3 * rate as usize;
    let mut published = Vec::with_capacity(offered);
    for n in 0..offered {
        published.push(
            bus.publish("flood.arrived", serde_json::json!({ "n": n }), None)
                .await?
                .id,
        );
    }
    let running = bus.run(agent, handler, config).await?;
    wait_until("every flooded event is handled", || async {
        Ok(handled.lock().expect("not poisoned").len() == offered)
    })
    .await?;
    running.stop().await?;

    let handled = handled.lock().expect("not poisoned").clone();
    for id in &published {
        assert_eq!(handled.get(id), Some(&1), "event {id} handled once");
    }
    assert!(bus.dead_letters().await?.is_empty(), "nothing given up on");
    Ok(())
}

/// A dependency that fails while `down`, counting calls.
#[derive(Default)]
struct Dependency {
    down: AtomicBool,
    calls: AtomicU32,
}

impl Dependency {
    async fn call(&self) -> Result<(), &'static str> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            Err("503 service unavailable")
        } else {
            Ok(())
        }
    }
}

struct CallsDependency {
    dependency: Arc<Dependency>,
    breaker: CircuitBreaker,
    handled: Arc<Mutex<HashMap<String, u32>>>,
}

impl Handler for CallsDependency {
    async fn handle(&self, event: &Incoming) -> Result<Vec<Emit>, HandlerError> {
        match self.breaker.call(|| self.dependency.call()).await {
            Ok(()) => {
                *self
                    .handled
                    .lock()
                    .expect("not poisoned")
                    .entry(event.id.clone())
                    .or_insert(0) += 1;
                Ok(vec![])
            }
            Err(BreakerError::Open(open)) => Err(open.into()),
            Err(BreakerError::Failed(err)) => Err(HandlerError::retryable(err)),
        }
    }

    fn breakers(&self) -> Vec<CircuitBreaker> {
        vec![self.breaker.clone()]
    }
}

#[tokio::test]
async fn a_failing_dependency_opens_the_breaker_and_after_recovery_each_event_is_handled_once()
-> anyhow::Result<()> {
    let bus = Bus::start().await?;
    let quick_breaker = BreakerConfig {
        failure_rate: 0.5,
        min_calls: 3,
        window: Duration::from_secs(30),
        open_for: Duration::from_millis(300),
        half_open_probes: 1,
    };
    let dependency = Arc::new(Dependency {
        down: AtomicBool::new(true),
        ..Dependency::default()
    });
    let handled: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let handler = CallsDependency {
        dependency: Arc::clone(&dependency),
        breaker: CircuitBreaker::new("llm", quick_breaker)?,
        handled: Arc::clone(&handled),
    };
    let agent = Agent::builder("reviewer")
        .subscribes("review.requested")
        .build()?;
    let config = RuntimeConfig {
        guards: GuardsConfig {
            breaker: Some(quick_breaker),
            ..GuardsConfig::default()
        },
        max_deliveries: 5,
        ..quick_config()
    };
    let events = 20;
    let mut published = Vec::new();
    for n in 0..events {
        published.push(
            bus.publish("review.requested", serde_json::json!({ "n": n }), None)
                .await?
                .id,
        );
    }
    let running = bus.run(agent, handler, config).await?;

    wait_until("the dependency's breaker opens", || async {
        let opened = bus
            .events("events.breaker-reviewer-llm.choreo.breaker.opened")
            .await?;
        Ok(!opened.is_empty())
    })
    .await?;
    // Let it probe the dead dependency at least once more before it recovers.
    let at_open = dependency.calls.load(Ordering::SeqCst);
    wait_until("a probe reaches the dependency", || async {
        Ok(dependency.calls.load(Ordering::SeqCst) > at_open)
    })
    .await?;
    let calls_while_down = dependency.calls.load(Ordering::SeqCst);
    assert!(handled.lock().expect("not poisoned").is_empty());
    dependency.down.store(false, Ordering::SeqCst);

    wait_until("every event is handled after recovery", || async {
        Ok(handled.lock().expect("not poisoned").len() == events)
    })
    .await?;
    running.stop().await?;

    let handled = handled.lock().expect("not poisoned").clone();
    for id in &published {
        assert_eq!(handled.get(id), Some(&1), "event {id} handled once");
    }
    assert!(
        bus.dead_letters().await?.is_empty(),
        "the outage cost no event"
    );
    // While open the agent did not call the dead dependency for each waiting event.
    assert!(
        (calls_while_down as usize) < events,
        "{calls_while_down} calls while down for {events} events"
    );
    let closed = bus
        .events("events.breaker-reviewer-llm.choreo.breaker.closed")
        .await?;
    assert!(!closed.is_empty(), "recovery is announced");
    Ok(())
}
