//! `choreo streams ensure` on a three-server JetStream cluster: `--replicas 3` makes every
//! stream and the snapshot bucket three copies; streams made with one copy are raised to three
//! in place with `--update`, keeping their events (and without it, the command exits 1 saying
//! to pass it); a stream whose subjects differ is refused with or without `--update`, and
//! then nothing is changed.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::process::Output;

use anyhow::Context as _;
use async_nats::jetstream::{self, stream};
use choreo_local_nats::NatsCluster;
use choreo_testkit::{PATIENCE, wait_until};

/// Every stream `choreo streams ensure` sets up, by its JetStream name (the bucket's included).
const STREAMS: [&str; 4] = ["EVENTS", "DEADLETTERS", "BUDGETS", "KV_CHOREO_SNAPSHOTS"];

/// Runs `choreo ARGS` with `NATS_URL` naming every server of the cluster, and none of the
/// streams' settings from the environment the tests run in.
async fn choreo(cluster: &NatsCluster, args: &[&str]) -> anyhow::Result<Output> {
    choreo_testkit::cli::choreo(&cluster.url_list(), args).await
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn expect_code(output: &Output, code: i32, cluster: &NatsCluster) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}\n{}",
        stdout(output),
        stderr(output),
        cluster.logs()
    );
}

/// Waits until `stream` has `replicas` copies, each current with its leader.
async fn expect_replicas(
    cluster: &NatsCluster,
    stream: &str,
    replicas: usize,
) -> anyhow::Result<stream::Info> {
    cluster
        .wait_for_stream_current(stream)
        .await
        .with_context(|| format!("{stream} has a leader and its replicas are current"))?;
    let info = cluster.stream_info(stream).await?;
    assert_eq!(info.config.num_replicas, replicas, "{stream}: {info:?}");
    let followers = info.cluster.as_ref().map_or(0, |c| c.replicas.len());
    assert_eq!(
        followers,
        replicas - 1,
        "{stream}: a leader and {} followers: {info:?}",
        replicas - 1
    );
    Ok(info)
}

#[tokio::test]
async fn ensure_with_three_replicas_makes_every_stream_and_the_snapshot_bucket_three_copies()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start().await?;
    // A cluster that has just elected its meta leader may not place three copies yet: --wait.
    let ensured = choreo(
        &cluster,
        &["streams", "ensure", "--replicas", "3", "--wait", "60s"],
    )
    .await?;
    expect_code(&ensured, 0, &cluster);
    for line in ["EVENTS", "DEADLETTERS", "BUDGETS", "CHOREO_SNAPSHOTS"] {
        assert!(
            stdout(&ensured).contains(&format!("{line:<16} created")),
            "{line}: {}",
            stdout(&ensured)
        );
    }
    for stream in STREAMS {
        expect_replicas(&cluster, stream, 3).await?;
    }

    // Again, as a deployment's set-up step runs on every deploy: nothing to do.
    let again = choreo(&cluster, &["streams", "ensure", "--replicas", "3"]).await?;
    expect_code(&again, 0, &cluster);
    assert_eq!(
        stdout(&again).matches("already set up").count(),
        4,
        "{}",
        stdout(&again)
    );
    let info = choreo(&cluster, &["streams", "info"]).await?;
    expect_code(&info, 0, &cluster);
    assert_eq!(
        stdout(&info).matches("replicas 3 (leader node-").count(),
        4,
        "{}",
        stdout(&info)
    );
    Ok(())
}

#[tokio::test]
async fn update_raises_one_copy_to_three_in_place_and_without_it_the_command_says_to_pass_it()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start().await?;
    let single = choreo(&cluster, &["streams", "ensure", "--wait", "60s"]).await?;
    expect_code(&single, 0, &cluster);
    for stream in STREAMS {
        expect_replicas(&cluster, stream, 1).await?;
    }
    let published = choreo(
        &cluster,
        &["publish", "cluster.kept", "--id", "kept-1", "--data", "{}"],
    )
    .await?;
    expect_code(&published, 0, &cluster);

    let refused = choreo(&cluster, &["streams", "ensure", "--replicas", "3"]).await?;
    expect_code(&refused, 1, &cluster);
    let message = stderr(&refused);
    for expected in [
        "--update",
        "nothing was changed",
        "stream EVENTS: replicas 1 → 3",
        "stream DEADLETTERS: replicas 1 → 3",
        "stream BUDGETS: replicas 1 → 3",
        "stream KV_CHOREO_SNAPSHOTS: replicas 1 → 3",
    ] {
        assert!(message.contains(expected), "{expected:?} in: {message}");
    }
    for stream in STREAMS {
        expect_replicas(&cluster, stream, 1).await?;
    }

    let updated = choreo(
        &cluster,
        &[
            "streams",
            "ensure",
            "--replicas",
            "3",
            "--update",
            "--wait",
            "60s",
        ],
    )
    .await?;
    expect_code(&updated, 0, &cluster);
    assert_eq!(
        stdout(&updated).matches("updated: replicas 1 → 3").count(),
        4,
        "{}",
        stdout(&updated)
    );
    for stream in STREAMS {
        expect_replicas(&cluster, stream, 3).await?;
    }
    // The stream kept its event, now on every server: each answers for it.
    let events = expect_replicas(&cluster, "EVENTS", 3).await?;
    assert_eq!(events.state.messages, 1, "{events:?}");
    for url in cluster.urls() {
        let client = async_nats::connect(url).await?;
        let jetstream = jetstream::new(client);
        wait_until("every server reads the kept event", || {
            let jetstream = jetstream.clone();
            async move {
                let mut stream = jetstream.get_stream("EVENTS").await?;
                Ok(stream.info().await?.state.messages == 1)
            }
        })
        .await?;
    }

    let again = choreo(&cluster, &["streams", "ensure", "--replicas", "3"]).await?;
    expect_code(&again, 0, &cluster);
    assert_eq!(stdout(&again).matches("already set up").count(), 4);
    Ok(())
}

#[tokio::test]
async fn a_stream_with_other_subjects_is_refused_even_with_update_and_nothing_changes()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start().await?;
    let client = async_nats::connect(cluster.urls()).await?;
    let jetstream = jetstream::new(client);
    // The second stream ensure looks at: the first (EVENTS) is missing and fine to make.
    let foreign = stream::Config {
        name: "DEADLETTERS".to_string(),
        subjects: vec!["elsewhere.>".to_string()],
        ..stream::Config::default()
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while let Err(err) = jetstream.create_stream(foreign.clone()).await {
        // The cluster may not place the stream in its first moments.
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "creating DEADLETTERS: {err}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    for update in [false, true] {
        let mut args = vec!["streams", "ensure", "--replicas", "3", "--wait", "60s"];
        if update {
            args.push("--update");
        }
        let refused = choreo(&cluster, &args).await?;
        expect_code(&refused, 1, &cluster);
        let message = stderr(&refused);
        assert!(
            message.contains("stream DEADLETTERS exists with subjects = [\"elsewhere.>\"]")
                && message.contains("nothing was changed"),
            "update {update}: {message}"
        );
        assert!(stdout(&refused).is_empty(), "{}", stdout(&refused));
    }

    // DEADLETTERS is as it was, and the others were not made, not even EVENTS, which comes
    // first: every stream is looked at before any is changed.
    let dead_letters = expect_replicas(&cluster, "DEADLETTERS", 1).await?;
    assert_eq!(dead_letters.config.subjects, ["elsewhere.>"]);
    for stream in ["EVENTS", "BUDGETS", "KV_CHOREO_SNAPSHOTS"] {
        let missing = jetstream.get_stream(stream).await;
        assert!(
            missing
                .as_ref()
                .is_err_and(choreo_bus::streams::is_stream_not_found),
            "{stream}: {:?}",
            missing.map(|s| s.cached_info().clone())
        );
    }
    Ok(())
}

/// `streams info` with a server killed: every durable consumer is named once, with its state
/// or with a word that it did not answer. (The server's own full listing leaves out the
/// consumers the lost server led and pages through the rest again and again.)
#[tokio::test]
async fn info_names_each_consumer_once_while_a_server_is_down() -> anyhow::Result<()> {
    let mut cluster = NatsCluster::start().await?;
    let ensured = choreo(
        &cluster,
        &["streams", "ensure", "--replicas", "3", "--wait", "60s"],
    )
    .await?;
    expect_code(&ensured, 0, &cluster);
    let client = async_nats::connect(cluster.urls()).await?;
    let events = jetstream::new(client).get_stream("EVENTS").await?;
    // Enough consumers that the server to be killed leads some of them.
    let names: Vec<String> = (0..6).map(|n| format!("agent-{n}")).collect();
    for name in &names {
        events
            .create_consumer(jetstream::consumer::pull::Config {
                durable_name: Some(name.clone()),
                ..Default::default()
            })
            .await?;
    }
    cluster.kill(0)?;
    // While the cluster elects (the stream's leader, the metadata leader), the command says to
    // retry (69), and it is asked again, as an operator would.
    cluster.wait_for_stream_leader("EVENTS", Some(0)).await?;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let info = loop {
        let info = choreo(&cluster, &["streams", "info"]).await?;
        if info.status.code() != Some(69) || tokio::time::Instant::now() >= deadline {
            break info;
        }
    };
    expect_code(&info, 0, &cluster);
    let listed = stdout(&info);
    for name in &names {
        assert_eq!(
            listed.matches(&format!("consumer {name} ")).count(),
            1,
            "{name}:\n{listed}"
        );
    }
    Ok(())
}
