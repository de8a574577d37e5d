//! An agent's `/metrics`, `/healthz` and `/readyz`, scraped over HTTP from a runtime against a
//! real nats-server and read with a Prometheus text-format parser.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use choreo_bus::guard::{BreakerConfig, GuardsConfig};
use choreo_bus::{Agent, Emit, HandlerError, Incoming, RuntimeConfig, handler_fn};
use choreo_testkit::metrics::{self, Scrape, total};
use choreo_testkit::{Bus, event_type, quick_config, wait_until};
use serde_json::json;

/// A free loopback port for the endpoint.
fn free_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

async fn scrape(address: SocketAddr) -> anyhow::Result<Scrape> {
    Ok(metrics::scrape(&format!("http://{address}/metrics"))
        .await?
        .1)
}

async fn status(address: SocketAddr, path: &str) -> anyhow::Result<u16> {
    Ok(reqwest::get(format!("http://{address}{path}"))
        .await?
        .status()
        .as_u16())
}

fn metered(name: &str) -> Agent {
    Agent::builder(name)
        .subscribes("in.put")
        .emits("out.put")
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_handled_counts_equal_the_log_and_a_dead_letter_raises_its_reason() -> anyhow::Result<()>
{
    let bus = Bus::start().await?;
    let address = free_address();
    let config = RuntimeConfig {
        metrics_listen: Some(address),
        ..quick_config()
    };
    let agent = bus
        .run(
            metered("metered"),
            handler_fn(|event: Incoming| async move {
                if event.json::<serde_json::Value>()? == json!("poison") {
                    return Err(HandlerError::permanent("cannot digest poison"));
                }
                Ok(vec![Emit::new(
                    event_type("out.put"),
                    event.content_type.clone(),
                    event.data.clone(),
                )])
            }),
            config,
        )
        .await?;
    for n in 0..5 {
        bus.publish("in.put", json!(n), None).await?;
    }
    bus.publish("in.put", json!("poison"), None).await?;
    wait_until("the endpoint is ready", || async {
        Ok(status(address, "/readyz").await.unwrap_or(0) == 200)
    })
    .await?;
    wait_until("every event is settled", || async {
        let scrape = scrape(address).await?;
        Ok(total(&scrape, "choreo_events_handled_total", &[]) >= 6.0)
    })
    .await?;

    let scrape = scrape(address).await?;
    let children = bus.events("events.*.out.put").await?.len() as f64;
    let handled = [
        ("agent", "metered"),
        ("type", "in.put"),
        ("outcome", "handled"),
    ];
    assert_eq!(
        total(&scrape, "choreo_events_handled_total", &handled),
        children
    );
    assert_eq!(children, 5.0);
    let dead = [("outcome", "dead_lettered")];
    assert_eq!(total(&scrape, "choreo_events_handled_total", &dead), 1.0);
    let rejected = [("reason", "handler_rejected")];
    assert_eq!(total(&scrape, "choreo_dead_letters_total", &rejected), 1.0);
    assert_eq!(bus.dead_letters().await?.len(), 1);
    let timed = [("type", "in.put")];
    assert_eq!(
        total(&scrape, "choreo_handling_duration_seconds_count", &timed),
        6.0
    );
    let handler = [("breaker", "handler")];
    assert_eq!(
        total(&scrape, "choreo_breaker_state", &handler),
        0.0,
        "closed"
    );
    assert_eq!(total(&scrape, "choreo_events_in_flight", &[]), 0.0);
    assert_eq!(status(address, "/healthz").await?, 200);

    agent.stop().await?;
    assert!(
        status(address, "/readyz").await.is_err(),
        "the endpoint stops with the agent"
    );
    Ok(())
}

#[tokio::test]
async fn an_opened_breaker_shows_in_the_metrics() -> anyhow::Result<()> {
    let bus = Bus::start().await?;
    let address = free_address();
    let config = RuntimeConfig {
        metrics_listen: Some(address),
        guards: GuardsConfig {
            breaker: Some(BreakerConfig {
                min_calls: 1,
                open_for: Duration::from_secs(60),
                ..BreakerConfig::default()
            }),
            ..GuardsConfig::default()
        },
        ..quick_config()
    };
    let agent = bus
        .run(
            metered("tripped"),
            handler_fn(|_event: Incoming| async { Err(HandlerError::retryable("down")) }),
            config,
        )
        .await?;
    wait_until("the endpoint answers", || async {
        Ok(status(address, "/healthz").await.unwrap_or(0) == 200)
    })
    .await?;
    bus.publish("in.put", json!(1), None).await?;
    let open = [("breaker", "handler")];
    // The delivery is settled (deferred) a moment after the breaker opens: its failed
    // handling is recorded in the log first.
    wait_until(
        "the breaker shows open and the failure that opened it waits for it",
        || async {
            let scrape = scrape(address).await?;
            Ok(total(&scrape, "choreo_breaker_state", &open) == 2.0
                && total(
                    &scrape,
                    "choreo_events_handled_total",
                    &[("outcome", "deferred")],
                ) >= 1.0)
        },
    )
    .await?;
    let scrape = scrape(address).await?;
    let opened = [("breaker", "handler"), ("to", "open")];
    assert_eq!(
        total(&scrape, "choreo_breaker_transitions_total", &opened),
        1.0
    );
    agent.stop().await
}

/// A handling rate of 5/s (burst 1) over three events: the waits show as seconds on the
/// `handle` limiter. A run whose budget allows one event: the second child is refused, and the
/// refusal is counted as the runtime's.
#[tokio::test]
async fn rate_limit_waits_and_budget_refusals_are_counted() -> anyhow::Result<()> {
    use choreo_bus::guard::{BudgetLimits, Rate, RateLimit};
    let bus = Bus::start().await?;
    let address = free_address();
    let config = RuntimeConfig {
        metrics_listen: Some(address),
        guards: GuardsConfig {
            handle_rate: Some(RateLimit {
                rate: Rate::new(5, Duration::from_secs(1))?,
                burst: 1,
            }),
            budget: BudgetLimits {
                max_events: Some(1),
                max_tokens: None,
                max_cost_micros: None,
            },
            ..GuardsConfig::default()
        },
        ..quick_config()
    };
    let agent = bus
        .run(
            metered("paced"),
            handler_fn(|event: Incoming| async move {
                Ok(vec![Emit::new(
                    event_type("out.put"),
                    event.content_type.clone(),
                    event.data.clone(),
                )])
            }),
            config,
        )
        .await?;
    wait_until("the endpoint answers", || async {
        Ok(status(address, "/healthz").await.unwrap_or(0) == 200)
    })
    .await?;
    for n in 0..3 {
        bus.publish("in.put", json!(n), Some("one-run")).await?;
    }
    wait_until("the three events are settled", || async {
        let scrape = scrape(address).await?;
        Ok(total(&scrape, "choreo_events_handled_total", &[]) >= 3.0)
    })
    .await?;
    let scrape = scrape(address).await?;
    let waited = total(
        &scrape,
        "choreo_rate_limit_wait_seconds_total",
        &[("limiter", "handle")],
    );
    // Three events at 5/s with a burst of one: the second and third wait about 0.2 s each.
    assert!(waited >= 0.2, "waited {waited} s");
    assert!(
        total(
            &scrape,
            "choreo_budget_refusals_total",
            &[("by", "runtime")]
        ) >= 1.0,
        "the run's second child is over its budget of one event"
    );
    agent.stop().await
}

/// An agent that cannot keep up: its handler waits, one at a time, so of 40 events it holds
/// the few it fetched ahead and the rest wait in the stream. The consumer's lag shows.
#[tokio::test]
async fn a_consumer_falling_behind_shows_its_lag() -> anyhow::Result<()> {
    let bus = Bus::start().await?;
    let address = free_address();
    let release = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let gate = release.clone();
    let config = RuntimeConfig {
        metrics_listen: Some(address),
        concurrency: 1,
        ..quick_config()
    };
    let agent = bus
        .run(
            metered("behind"),
            handler_fn(move |_event: Incoming| {
                let gate = gate.clone();
                async move {
                    let _held = gate.acquire().await.map_err(HandlerError::retryable)?;
                    Ok(vec![])
                }
            }),
            config,
        )
        .await?;
    for n in 0..40 {
        bus.publish("in.put", json!(n), Some(&format!("run-{n}")))
            .await?;
    }
    wait_until("the lag shows", || async {
        let Ok(scrape) = scrape(address).await else {
            return Ok(false);
        };
        Ok(total(&scrape, "choreo_consumer_pending", &[]) >= 10.0
            && total(&scrape, "choreo_consumer_ack_pending", &[]) >= 1.0)
    })
    .await?;
    release.add_permits(40);
    wait_until("the lag is gone", || async {
        let scrape = scrape(address).await?;
        Ok(total(&scrape, "choreo_consumer_pending", &[]) == 0.0
            && total(&scrape, "choreo_consumer_ack_pending", &[]) == 0.0)
    })
    .await?;
    agent.stop().await
}

#[tokio::test]
async fn an_address_in_use_is_refused_at_start_naming_the_setting() -> anyhow::Result<()> {
    let bus = Bus::start().await?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let config = RuntimeConfig {
        metrics_listen: Some(taken.local_addr()?),
        ..quick_config()
    };
    let client = bus.connect(Default::default()).await?;
    let err = choreo_bus::Runtime::new(
        client,
        metered("crowded"),
        handler_fn(|_event: Incoming| async { Ok(vec![]) }),
    )
    .config(config)
    .run(std::future::pending())
    .await
    .expect_err("the address is taken");
    assert!(err.to_string().contains("metrics-listen"), "{err}");
    Ok(())
}
