//! `choreo agents` on a running team: every agent process registers on the NATS Services API
//! (`$SRV.PING` answered to a plain request), and the command lists each agent with its live
//! copies; one copy fewer after one is stopped; an agent whose every copy was killed is named
//! as a problem (its consumer has no live copy).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::time::Duration;

use choreo_testkit::team::{TEAM, Team};
use choreo_testkit::{Bus, wait_until};
use serde_json::Value;

/// `choreo agents --json` against the test's server, parsed.
async fn agents(bus: &Bus) -> anyhow::Result<Vec<Value>> {
    let output = choreo_testkit::cli::choreo(&bus.server.url(), &["agents", "--json"]).await?;
    anyhow::ensure!(
        output.status.success(),
        "choreo agents: {}",
        choreo_testkit::cli::stderr(&output)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// The listed agent `name`, if any.
fn agent<'a>(listed: &'a [Value], name: &str) -> Option<&'a Value> {
    listed.iter().find(|agent| agent["agent"] == name)
}

fn copies(listed: &[Value], name: &str) -> usize {
    agent(listed, name).map_or(0, |agent| agent["copies"].as_array().map_or(0, Vec::len))
}

#[tokio::test]
async fn choreo_agents_lists_live_agents_their_copies_and_an_agent_without_one()
-> anyhow::Result<()> {
    let bus = Bus::start().await?;
    let mut team = Team::new(bus.server.url())?;
    team.start_all(&[])?;
    team.start("choreo-security", &[])?;
    let names: Vec<&str> = TEAM
        .iter()
        .map(|binary| binary.trim_start_matches("choreo-"))
        .collect();

    // Each agent answers a plain NATS request on the Services API.
    for name in &names {
        wait_until(&format!("{name} answers $SRV.PING.{name}"), || async {
            let answer = tokio::time::timeout(
                Duration::from_secs(1),
                bus.client.request(format!("$SRV.PING.{name}"), "".into()),
            )
            .await;
            Ok(match answer {
                Ok(Ok(message)) => {
                    let ping: Value = serde_json::from_slice(&message.payload)?;
                    ping["name"] == *name && ping["type"] == "io.nats.micro.v1.ping_response"
                }
                _ => false,
            })
        })
        .await?;
    }

    // Every agent listed, security with its two copies, and no problem.
    let expected = |listed: &[Value]| {
        names.iter().all(|name| {
            let expected = if *name == "security" { 2 } else { 1 };
            copies(listed, name) == expected
        })
    };
    wait_until("every agent is listed with its copies", || async {
        Ok(expected(&agents(&bus).await?))
    })
    .await?;
    let listed = agents(&bus).await?;
    assert!(expected(&listed), "{listed:?}");
    for name in &names {
        let agent = agent(&listed, name).expect("listed");
        assert_eq!(agent["problems"], Value::Array(Vec::new()), "{agent}");
        assert_eq!(agent["pending"], 0, "{agent}");
        let copy = &agent["copies"][0];
        assert!(copy["handled"].is_u64(), "{copy}");
        // A specialist says which brain it runs (the rules: no CHOREO_LLM_URL here).
        if ["security", "performance", "style", "tests"].contains(name) {
            assert_eq!(copy["described"]["brain"], "rules", "{copy}");
        }
    }

    // One security copy stopped (SIGTERM), every style copy killed (SIGKILL).
    team.copies("choreo-security")[1]
        .terminate(Duration::from_secs(10))
        .await;
    team.kill("choreo-style", 0).await;
    wait_until(
        "one security copy, and style without a live copy",
        || async {
            let listed = agents(&bus).await?;
            let style_problems = agent(&listed, "style")
                .map(|style| style["problems"].to_string())
                .unwrap_or_default();
            Ok(copies(&listed, "security") == 1
                && copies(&listed, "style") == 0
                && style_problems.contains("no live copy"))
        },
    )
    .await?;
    team.stop().await;
    Ok(())
}
