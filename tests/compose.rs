//! The containers for real, on the machine's Docker engine: the images built from local parts
//! (`scripts/images`, from the binaries `scripts/test` built), compose bringing up NATS, the
//! stream set-up, every agent and the gateway, a review posted to the gateway's published port
//! delivered as a report on the reports volume, and `choreo trace` from the host showing it;
//! then three copies of a specialist sharing reviews, one of them killed holding some, and the
//! aggregator restarted, with every run complete and no finding twice.
//!
//! One compose project (a name of its own, its own image tags, ports the engine picks) serves
//! every check, and is taken down with its volumes when the test ends, passed or failed.
//! Where no engine answers the test says so and passes, unless `CHOREO_REQUIRE_DOCKER=1`
//! (`.ci/run` sets it), which makes that a failure.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use async_nats::jetstream;
use choreo_bus::log::{LogQuery, LogReader};
use choreo_local_nats::process::sibling_binary;
use choreo_testkit::compose::{
    Gateway, Project, Shape, checked, docker, engine_available, events, handled, logs, poll, run,
    shape, team_services, wait_delivered,
};
use choreo_testkit::team::TEAM;

/// The owner and text of the one file in a tar archive (what `docker cp CONTAINER:PATH -`
/// writes): the header's uid and size fields are octal numbers, the content follows it.
fn one_file(archive: &[u8]) -> anyhow::Result<(u32, String)> {
    let header = archive.get(..512).context("no tar header")?;
    let octal = |field: &[u8]| -> anyhow::Result<u64> {
        let text = std::str::from_utf8(field)?.trim_matches(|c: char| c == '\0' || c == ' ');
        Ok(u64::from_str_radix(text, 8)?)
    };
    let owner = u32::try_from(octal(&header[108..116])?)?;
    let size = usize::try_from(octal(&header[124..136])?)?;
    let content = archive.get(512..512 + size).context("a short archive")?;
    Ok((owner, String::from_utf8(content.to_vec())?))
}

#[tokio::test]
async fn the_review_team_runs_in_compose_from_images_built_of_local_parts() -> anyhow::Result<()> {
    if !engine_available("tests/compose.rs") {
        return Ok(());
    }
    let started = Instant::now();
    let project = Project::new("compose.yaml");

    // The images, from the binaries this test was built with: no build, no registry.
    eprintln!("{}", project.build_images().await?);
    let built_at = started.elapsed();

    // The runtime image's configuration is the Dockerfile's: non-root, JSON logs, the reports
    // folder; and it has no shell.
    let config = docker(&[
        "image",
        "inspect",
        "--format",
        "{{.Config.User}} {{json .Config.Env}}",
        &project.choreo_image,
    ])
    .await?;
    assert!(config.starts_with("65532:65532 "), "{config}");
    for variable in ["CHOREO_LOG_FORMAT=json", "CHOREO_REPORTS_DIR=/data/reports"] {
        assert!(config.contains(variable), "{config}");
    }
    let shell = tokio::process::Command::new("docker")
        .args(["run", "--rm", &project.choreo_image, "sh", "-c", "true"])
        .output()
        .await?;
    assert!(!shell.status.success(), "the image has a shell");

    // Everything up: NATS healthy and the streams set up before the agents start (compose
    // waits for both), then the gateway healthy.
    checked(&mut project.compose(&["up", "--detach", "--no-build"])).await?;
    let up_at = started.elapsed();
    assert_eq!(project.health("nats").await?, "healthy");
    // The gateway, and every agent: they serve their probes, and healthy means pulling and
    // connected to NATS.
    project.wait_healthy(&["gateway"]).await?;
    project.wait_healthy(&team_services()).await?;
    let gateway = format!("http://{}", project.published("gateway", 8080).await?);
    let nats_url = format!("nats://{}", project.published("nats", 4222).await?);

    // A token the gateway does not know is refused; the project's token publishes the review.
    let gateway = Gateway {
        http: reqwest::Client::new(),
        url: gateway,
        token: project.token.clone(),
    };
    let refused = gateway
        .http
        .post(format!("{}/v1/events", gateway.url))
        .bearer_auth("not-the-token-of-this-project")
        .json(&Gateway::review())
        .send()
        .await?;
    assert_eq!(refused.status(), reqwest::StatusCode::UNAUTHORIZED);
    let run_id = gateway
        .post_review(&format!("{}-refunds", project.name))
        .await?;

    // The notifier writes the report on the reports volume, as the non-root user: read it
    // through a container that only mounts the volume (created, never started).
    let volume = project.volume("reports").await?;
    let reader = docker(&[
        "create",
        "--volume",
        &format!("{volume}:/data/reports"),
        &project.choreo_image,
    ])
    .await?;
    project.others.lock().unwrap().push(reader.clone());
    let (owner, report) = poll(
        "the report is on the reports volume",
        Duration::from_millis(250),
        || async {
            let copy = tokio::process::Command::new("docker")
                .arg("cp")
                .arg(format!("{reader}:/data/reports/{run_id}.md"))
                .arg("-")
                .output()
                .await?;
            copy.status
                .success()
                .then(|| one_file(&copy.stdout))
                .transpose()
        },
    )
    .await?;
    assert!(report.starts_with("## Code review: Refunds"), "{report}");
    assert!(report.contains("security/hardcoded-secret"), "{report}");
    assert_eq!(owner, 65532, "the report's owner");

    // The host's choreo reaches NATS at its published port and traces the run through every
    // agent the sample needs, nothing dead-lettered.
    let choreo = sibling_binary("choreo")?;
    let trace = run(tokio::process::Command::new(&choreo)
        .args(["trace", &run_id])
        .env("NATS_URL", &nats_url))
    .await?;
    assert!(trace.contains(", 0 dead-lettered"), "{trace}");
    assert!(trace.contains("review.delivered  [notifier]"), "{trace}");
    for agent in TEAM.iter().filter(|binary| **binary != "choreo-fetcher") {
        let source = agent.strip_prefix("choreo-").expect("choreo-<agent>");
        assert!(trace.contains(&format!("[{source}]")), "{source}:\n{trace}");
    }

    // What one run of the sample is, for the runs below to be compared with.
    let client = async_nats::connect(&nats_url).await?;
    let log = async_nats::jetstream::new(client);
    let sample = shape(&events(&log, &format!("events.{run_id}.>")).await?);
    let single_at = started.elapsed();

    scaled(&project, &gateway, &log, &sample).await?;
    let scaled_at = started.elapsed();
    faults(&project, &gateway, &log, &sample).await?;

    eprintln!(
        "images {:.1?}, up {:.1?}, one review {:.1?}, scaled {:.1?}, faults {:.1?}, all {:.1?}",
        built_at,
        up_at - built_at,
        single_at - up_at,
        scaled_at - single_at,
        started.elapsed() - scaled_at,
        started.elapsed()
    );
    Ok(())
}

/// Three copies of `security` share 30 reviews: each `review.planned` is handled by exactly one
/// copy (the copies' logs name what each handled), each copy handles some, and every run is
/// the sample's run again.
async fn scaled(
    project: &Project,
    gateway: &Gateway,
    log: &jetstream::Context,
    sample: &Shape,
) -> anyhow::Result<()> {
    checked(&mut project.compose(&[
        "up",
        "--detach",
        "--no-build",
        "--no-recreate",
        "--scale",
        "security=3",
    ]))
    .await?;
    let copies = project.containers("security").await?;
    assert_eq!(copies.len(), 3, "{copies:?}");
    for copy in &copies {
        poll(
            "each copy has started",
            Duration::from_millis(250),
            || async { Ok(logs(copy).await?.contains("agent started").then_some(())) },
        )
        .await?;
    }
    let mut runs = BTreeSet::new();
    for index in 0..30 {
        runs.insert(
            gateway
                .post_review(&format!("{}-scaled-{index}", project.name))
                .await?,
        );
    }
    wait_delivered(log, &runs).await?;
    for run in &runs {
        assert_eq!(
            &shape(&events(log, &format!("events.{run}.>")).await?),
            sample,
            "run {run}"
        );
    }

    let mut handled_by: BTreeMap<String, Vec<&String>> = BTreeMap::new();
    for copy in &copies {
        for run in handled(&logs(copy).await?, "review.planned") {
            handled_by.entry(run).or_default().push(copy);
        }
    }
    for run in &runs {
        let by = handled_by.get(run).map_or(0, Vec::len);
        assert_eq!(
            by, 1,
            "run {run}'s review.planned was handled by {by} copies"
        );
    }
    for copy in &copies {
        let count = handled_by
            .iter()
            .filter(|(run, by)| runs.contains(*run) && by.contains(&copy))
            .count();
        eprintln!("security copy {} handled {count} of 30", &copy[..12]);
        assert!(count > 0, "copy {copy} handled none of the 30 reviews");
    }
    Ok(())
}

/// Reviews while a `security` copy is killed holding reviews it had been handed, and while the
/// aggregator restarts: the copy is stopped first (SIGSTOP), so the server hands it reviews it
/// cannot finish, then killed (SIGKILL); its reviews come back to the other copies after the
/// ack wait. Every run completes as the sample's run did (no finding twice, none missing), the
/// killed copy's reviews were handled again elsewhere, and nothing is dead-lettered.
async fn faults(
    project: &Project,
    gateway: &Gateway,
    log: &jetstream::Context,
    sample: &Shape,
) -> anyhow::Result<()> {
    let copies = project.containers("security").await?;
    let (stopped, live) = copies.split_first().context("security copies")?;
    docker(&["kill", "--signal", "SIGSTOP", stopped]).await?;
    let mut runs = BTreeSet::new();
    let mut in_hand = 0;
    for _batch in 0..3 {
        for _ in 0..5 {
            let key = format!("{}-faults-{}", project.name, runs.len());
            runs.insert(gateway.post_review(&key).await?);
        }
        // The live copies finish theirs; what is still unacknowledged is the stopped copy's
        // (seen twice in a row, so a live copy's handling in progress is not taken for it).
        let last = std::cell::Cell::new(None);
        in_hand = poll(
            "the live copies have handled their reviews",
            Duration::from_millis(250),
            || {
                let runs = &runs;
                let seen = &last;
                async move {
                    let completed = events(log, "events.*.review.specialist.completed")
                        .await?
                        .iter()
                        .filter(|e| e.source == "security" && runs.contains(&e.correlation_id))
                        .count();
                    let pending = log
                        .get_stream("EVENTS")
                        .await?
                        .consumer_info("security")
                        .await?
                        .num_ack_pending;
                    let now = (completed + pending == runs.len()).then_some(pending);
                    let stable = now.is_some() && seen.replace(now) == now;
                    Ok(if stable { now } else { None })
                }
            },
        )
        .await?;
        if in_hand > 0 {
            break;
        }
    }
    ensure!(
        in_hand > 0,
        "the stopped copy was handed none of {} reviews",
        runs.len()
    );
    docker(&["kill", stopped]).await?;
    for index in 0..10 {
        let key = format!("{}-faults-{}", project.name, runs.len());
        runs.insert(gateway.post_review(&key).await?);
        if index == 4 {
            checked(&mut project.compose(&["restart", "--timeout", "10", "aggregator"])).await?;
        }
    }
    wait_delivered(log, &runs).await?;
    for run in &runs {
        assert_eq!(
            &shape(&events(log, &format!("events.{run}.>")).await?),
            sample,
            "run {run}"
        );
    }
    let mut handed_back = 0;
    for copy in live {
        handed_back += logs(copy)
            .await?
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|line| {
                line["fields"]["message"] == "handled"
                    && line["span"]["event_type"] == "review.planned"
                    && line["span"]["delivery"].as_u64() > Some(1)
            })
            .count();
    }
    eprintln!(
        "faults: {} reviews; the killed copy held {in_hand}, handled again by the others: {handed_back}",
        runs.len()
    );
    assert!(
        handed_back >= in_hand,
        "the killed copy held {in_hand} reviews, {handed_back} were handled again"
    );
    let mut reader = LogReader::open(log, "DEADLETTERS", LogQuery::filtered("dlq.>")).await?;
    assert!(
        reader.next().await?.is_none(),
        "something was dead-lettered"
    );
    Ok(())
}
