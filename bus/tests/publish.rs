//! What a failed publish means, against real servers: "no stream" only when JetStream answers
//! that none captures the subject; a cluster that cannot answer (no quorum, a stream without
//! its leader) is unavailable, and a retry stores the event once it is back.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::time::Duration;

use async_nats::jetstream;
use choreo_bus::publish::Unavailability;
use choreo_bus::{Emit, Namespace, PublishError, Published, Publisher, RootEvent};
use choreo_local_nats::{NatsCluster, NatsServer};
use choreo_testkit::{PATIENCE, ensure_replicated_streams, event_type};

fn event(id: &str) -> RootEvent {
    let emit = Emit::json(event_type("text.submitted"), &serde_json::json!({"id": id}))
        .expect("a JSON payload");
    RootEvent::new(emit, "test").with_id(id)
}

/// Publishes `id` until it is stored, retrying what is retryable, for at most [`PATIENCE`].
async fn publish_until_stored(publisher: &Publisher, id: &str) -> anyhow::Result<Published> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match publisher.publish_root(event(id)).await {
            Ok(published) => return Ok(published),
            Err(err) if err.is_retryable() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => return Err(err.into()),
        }
    }
}

#[tokio::test]
async fn a_server_without_the_streams_answers_that_no_stream_captures_the_subject()
-> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let client = async_nats::connect(server.url()).await?;
    let publisher = Publisher::new(jetstream::new(client), Namespace::default());

    let err = publisher
        .publish_root(event("lonely"))
        .await
        .expect_err("nothing can store it");

    assert!(matches!(err, PublishError::NoStream { .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("create the streams"), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_cluster_without_a_quorum_is_unavailable_not_missing_and_stores_once_it_is_back()
-> anyhow::Result<()> {
    let mut cluster = NatsCluster::start().await?;
    let setup = async_nats::connect(cluster.urls()).await?;
    ensure_replicated_streams(&jetstream::new(setup), 3).await?;
    // The one server left up is a follower of EVENTS, and the client talks to it alone: a
    // publish there finds nobody listening (only a stream's leader does), so what the client
    // reports comes from asking JetStream, not from a reconnect.
    let leader = cluster.wait_for_stream_leader("EVENTS", None).await?;
    let survivor = (leader + 1) % NatsCluster::SIZE;
    let client = async_nats::connect(cluster.node(survivor)?.url()).await?;
    let jetstream = jetstream::new(client);
    let publisher = Publisher::new(jetstream.clone(), Namespace::default());
    publish_until_stored(&publisher, "before").await?;

    for node in (0..NatsCluster::SIZE).filter(|&node| node != survivor) {
        cluster.kill(node)?;
    }
    // A publish sent in the instant before the survivor sees the routes close is lost on the
    // way and times out; the next ones find nobody listening.
    let mut asked = false;
    for _ in 0..5 {
        let err = publisher
            .publish_root(event("during"))
            .await
            .expect_err("one server of three cannot store an event");
        let PublishError::Unavailable { why, .. } = &err else {
            panic!("{err:?}\n{}", cluster.logs());
        };
        assert!(err.is_retryable());
        let message = err.to_string();
        assert!(
            message.contains("unavailable") && message.contains("retry"),
            "{message}"
        );
        assert!(!message.contains("create the streams"), "{message}");
        assert!(
            std::error::Error::source(&err).is_some(),
            "the cause is kept"
        );
        if !matches!(why, Unavailability::NotConfirmed(_)) {
            asked = true;
            break;
        }
    }
    assert!(asked, "no publish was answered by asking JetStream");

    for node in (0..NatsCluster::SIZE).filter(|&node| node != survivor) {
        cluster.start_again(node).await?;
    }
    let stored = publish_until_stored(&publisher, "during").await?;
    let again = publish_until_stored(&publisher, "during").await?;
    assert!(
        again.duplicate,
        "a retry of a stored event is recognised by its id"
    );
    assert_eq!(again.stream_sequence, stored.stream_sequence);
    let events = jetstream
        .get_stream("EVENTS")
        .await?
        .info()
        .await?
        .state
        .messages;
    assert_eq!(events, 2, "before and during, each once");
    Ok(())
}
