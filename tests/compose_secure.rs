//! compose.secure.yaml for real, on the machine's Docker engine: the credentials and
//! certificates `choreo auth` makes, NATS requiring both, every agent, the stream set-up and the
//! gateway on their own nkey users over TLS, and a review posted to the gateway delivered. From
//! the host, a client without the CA, or without a user, is refused.
//!
//! Where no engine answers the test says so and passes, unless `CHOREO_REQUIRE_DOCKER=1`.

use anyhow::Context as _;
use async_nats::jetstream;
use choreo_bus::NatsConfig;
use choreo_local_nats::process::sibling_binary;
use choreo_testkit::compose::team_services;
use choreo_testkit::compose::{Gateway, Project, checked, engine_available, events, poll};
use std::time::Duration;

fn choreo(args: &[&str]) -> anyhow::Result<()> {
    let output = std::process::Command::new(sibling_binary("choreo")?)
        .args(args)
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "choreo {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn the_secured_variant_reviews_with_every_process_on_its_own_user_over_tls()
-> anyhow::Result<()> {
    if !engine_available("tests/compose_secure.rs") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let (auth, tls) = (dir.path().join("auth"), dir.path().join("tls"));
    let agents_dir = sibling_binary("choreo-triage")?
        .parent()
        .context("the binaries' folder")?
        .display()
        .to_string();
    choreo(&[
        "auth",
        "generate",
        "--agents-dir",
        &agents_dir,
        "--out",
        &auth.display().to_string(),
        "--gateway-types",
        "review.requested",
    ])?;
    choreo(&[
        "auth",
        "tls",
        "--out",
        &tls.display().to_string(),
        "--conf-dir",
        "/etc/nats/tls",
    ])?;
    let project = Project::new("compose.yaml")
        .with_file("compose.secure.yaml")
        .with_env("CHOREO_AUTH_DIR", auth.display().to_string())
        .with_env("CHOREO_TLS_DIR", tls.display().to_string());
    eprintln!("{}", project.build_images().await?);
    let outcome = async {
        checked(&mut project.compose(&["up", "--detach", "--no-build"])).await?;
        project.wait_healthy(&["nats", "gateway"]).await?;
        project.wait_healthy(&team_services()).await?;
        let gateway = Gateway {
            http: reqwest::Client::new(),
            url: format!("http://{}", project.published("gateway", 8080).await?),
            token: project.token.clone(),
        };
        let run = gateway
            .post_review(&format!("{}-secure", project.name))
            .await?;

        // The operators' user over TLS, as the compose file's notes say.
        let address = project.published("nats", 4222).await?;
        let env = std::fs::read_to_string(auth.join("operator.env"))?;
        let ca = tls.join("ca.pem").display().to_string();
        let url = format!("tls://{address}");
        let operator = NatsConfig::from_vars(|name| match name {
            "NATS_URL" => Some(url.clone()),
            "NATS_TLS_CA" => Some(ca.clone()),
            "NATS_REQUIRE_TLS" => Some("true".into()),
            _ => env
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_string),
        })?;
        let log = jetstream::new(operator.connect().await?);
        poll(
            &format!("run {run} is delivered"),
            Duration::from_millis(500),
            || async {
                let delivered = events(&log, &format!("events.{run}.review.delivered")).await?;
                Ok((!delivered.is_empty()).then_some(()))
            },
        )
        .await?;

        // Without the CA the server is not trusted; with it but no user, it refuses.
        let untrusted = NatsConfig::new(format!("nats://{address}")).connect().await;
        anyhow::ensure!(untrusted.is_err(), "connected without the CA");
        let anonymous = NatsConfig {
            nkey_seed: None,
            inbox_prefix: None,
            ..operator
        }
        .connect()
        .await;
        anyhow::ensure!(anonymous.is_err(), "connected with no user");
        let logs = project.logs();
        anyhow::ensure!(
            !logs.contains("Permissions Violation"),
            "a service was refused what its role needs:\n{logs}"
        );
        Ok(())
    }
    .await;
    project.with_logs_on_failure(outcome)
}
