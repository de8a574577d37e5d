//! Who may do what: the nkey users `choreo auth generate` writes, each allowed exactly what its
//! role needs, and the nats-server authorization block that says so.
//!
//! An agent's permissions come from its manifest: it publishes what the manifest lists (its
//! emitted types, handling and dead-letter notices, breaker transitions, its dead letters and
//! the run budgets' counters), makes the JetStream requests its runtime makes for its own
//! consumer and no other, answers the Services API under its own name, and reads only its own
//! inbox (`_INBOX_<agent>`, so it cannot read another process's replies). Replies to the
//! requests it answers are allowed by `allow_responses`, which lets it publish once to the
//! reply subject of a request it received, and nowhere else.

use choreo_bus::manifest::Manifest;
use choreo_bus::streams::BUDGET_STREAM;

/// A user of the generated configuration and the subjects it may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Its name: the file names of its seed and environment, and the `_INBOX_<name>` prefix.
    pub name: String,
    /// What it is, for the configuration's comments.
    pub role: String,
    pub publish: Vec<String>,
    /// Exceptions to `publish`: other agents' consumers, for an agent that reads the log.
    pub publish_deny: Vec<String>,
    pub subscribe: Vec<String>,
    /// Whether it answers requests (publishes to the reply subject of a request it got).
    pub allow_responses: bool,
    /// `None` for a user that may read any subject (the operators').
    pub inbox_prefix: Option<String>,
}

/// The users that are not agents.
pub const GATEWAY: &str = "gateway";
pub const STREAMS: &str = "streams";
pub const OPERATOR: &str = "operator";

/// The inbox prefix of `user`: its replies, and only its, come there.
pub fn inbox_prefix(user: &str) -> String {
    format!("_INBOX_{user}")
}

/// The user of the agent `manifest` describes; `team` is every agent's manifest (this one's
/// too), whose durable consumers a reader of the log must not touch.
pub fn agent(manifest: &Manifest, team: &[Manifest]) -> User {
    let consumer = &manifest.consumer;
    let (stream, durable) = (&consumer.stream, &consumer.durable);
    let mut publish: Vec<String> = manifest
        .publishes
        .iter()
        .map(|publication| publication.subject.clone())
        .collect();
    publish.extend([
        // `bind_consumer`: the stream's info, then its durable consumer created or updated
        // (with several filters the request names no filter; with one, it may).
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.{durable}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.{durable}.>"),
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable}"),
        // The lag gauges, the pulls, and the acks, naks, terms and in-progress of its
        // deliveries.
        format!("$JS.API.CONSUMER.INFO.{stream}.{durable}"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"),
        format!("$JS.ACK.{stream}.{durable}.>"),
        // A publish nobody answered asks which stream captures the subject (`publish.rs`).
        "$JS.API.STREAM.NAMES".to_string(),
        // A copy checks that it answers its own ping (`presence::check_seen`).
        format!("$SRV.PING.{}.*", manifest.name),
    ]);
    if manifest
        .publishes
        .iter()
        .any(|publication| publication.stream == BUDGET_STREAM)
    {
        // The budgets are read with direct gets of the run's counters.
        publish.push(format!("$JS.API.DIRECT.GET.{BUDGET_STREAM}.>"));
    }
    // A reader of the log makes consumers of its own, named by the server: any consumer name
    // but the team's durables (a subject's wildcard is a whole token, so "its own" cannot be
    // said otherwise). Ephemeral ones only: a creation that names a consumer has it in the
    // subject, which is not allowed.
    let mut publish_deny = Vec::new();
    for stream in &manifest.reads {
        publish.extend([
            format!("$JS.API.CONSUMER.CREATE.{stream}"),
            format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.*"),
            format!("$JS.API.CONSUMER.INFO.{stream}.*"),
            format!("$JS.API.CONSUMER.DELETE.{stream}.*"),
        ]);
        for other in team.iter().filter(|other| other.consumer.stream == *stream) {
            let durable = &other.consumer.durable;
            if other.name != manifest.name {
                publish_deny.extend([
                    format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"),
                    format!("$JS.API.CONSUMER.INFO.{stream}.{durable}"),
                ]);
            }
            publish_deny.push(format!("$JS.API.CONSUMER.DELETE.{stream}.{durable}"));
        }
    }
    let inbox = inbox_prefix(&manifest.name);
    let mut subscribe = vec![format!("{inbox}.>")];
    subscribe.extend(manifest.answers.iter().cloned());
    User {
        name: manifest.name.clone(),
        role: format!("agent in namespace {}", manifest.namespace),
        publish: distinct(publish),
        publish_deny: distinct(publish_deny),
        subscribe: distinct(subscribe),
        allow_responses: true,
        inbox_prefix: Some(inbox),
    }
}

/// The gateway's user: it publishes `types` (patterns as its tokens write them: `review.requested`,
/// `review.*`, `*`) as roots in `namespaces`, keeps the run budgets, and asks whether the events
/// stream is there (its readiness).
pub fn gateway(namespaces: &[String], types: &[String]) -> User {
    let mut publish = Vec::new();
    for namespace in namespaces {
        for pattern in types {
            publish.push(match pattern.as_str() {
                "*" => format!("{namespace}.>"),
                pattern => match pattern.strip_suffix(".*") {
                    Some(prefix) => format!("{namespace}.*.{prefix}.>"),
                    None => format!("{namespace}.*.{pattern}"),
                },
            });
        }
        publish.push(format!("budget.{namespace}.*.*"));
        // Its readiness asks for the events stream's info.
        if let Ok(namespace) = choreo_bus::Namespace::new(namespace.as_str()) {
            publish.push(format!("$JS.API.STREAM.INFO.{}", namespace.stream_name()));
        }
    }
    publish.extend([
        format!("$JS.API.DIRECT.GET.{BUDGET_STREAM}.>"),
        "$JS.API.STREAM.NAMES".to_string(),
    ]);
    let inbox = inbox_prefix(GATEWAY);
    User {
        name: GATEWAY.into(),
        role: format!("the HTTP gateway, publishing {}", types.join(", ")),
        publish: distinct(publish),
        publish_deny: Vec::new(),
        subscribe: vec![format!("{inbox}.>")],
        allow_responses: false,
        inbox_prefix: Some(inbox),
    }
}

/// The stream set-up's user (`choreo streams ensure`): creates and inspects streams, nothing else.
pub fn streams() -> User {
    let inbox = inbox_prefix(STREAMS);
    User {
        name: STREAMS.into(),
        role: "the stream set-up (`choreo streams ensure`)".into(),
        publish: vec![
            "$JS.API.INFO".into(),
            "$JS.API.STREAM.CREATE.*".into(),
            "$JS.API.STREAM.INFO.*".into(),
            "$JS.API.STREAM.NAMES".into(),
            "$JS.API.STREAM.LIST".into(),
        ],
        publish_deny: Vec::new(),
        subscribe: vec![format!("{inbox}.>")],
        allow_responses: false,
        inbox_prefix: Some(inbox),
    }
}

/// The operators' user: the whole CLI (trace, replay, redrive, purge, publish), so everything.
/// For people, never for a process that runs unattended.
pub fn operator() -> User {
    User {
        name: OPERATOR.into(),
        role: "operators' CLI: everything".into(),
        publish: vec![">".into()],
        publish_deny: Vec::new(),
        subscribe: vec![">".into()],
        allow_responses: false,
        inbox_prefix: None,
    }
}

/// Every user: one per agent, then the gateway, the stream set-up and the operators. An agent
/// named like one of the others is refused, as is the same agent in two namespaces.
pub fn all(manifests: &[Manifest], gateway_types: &[String]) -> Result<Vec<User>, String> {
    let mut users = Vec::new();
    for manifest in manifests {
        if [GATEWAY, STREAMS, OPERATOR].contains(&manifest.name.as_str()) {
            return Err(format!(
                "an agent is named {:?}, the name of a user choreo auth makes for itself; rename the agent",
                manifest.name
            ));
        }
        if users.iter().any(|user: &User| user.name == manifest.name) {
            return Err(format!(
                "agent {:?} is in more than one namespace: one nkey user per agent name; \
                 generate each namespace's credentials into its own folder",
                manifest.name
            ));
        }
        users.push(agent(manifest, manifests));
    }
    let mut namespaces: Vec<String> = manifests.iter().map(|m| m.namespace.clone()).collect();
    namespaces.sort();
    namespaces.dedup();
    users.push(gateway(&namespaces, gateway_types));
    users.push(streams());
    users.push(operator());
    Ok(users)
}

fn distinct(mut subjects: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    subjects.retain(|subject| seen.insert(subject.clone()));
    subjects
}

/// The nats-server `authorization` block for `users`, whose public nkeys are `keys` (in the
/// same order), with a comment naming each.
pub fn authorization(users: &[User], keys: &[String], from: &str) -> String {
    let quote = |text: &str| serde_json::Value::from(text).to_string();
    let list = |subjects: &[String]| {
        subjects
            .iter()
            .map(|s| quote(s))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut config = format!(
        "# Written by `choreo auth generate` from {from}.\n\
         # One nkey user per agent, the gateway, the stream set-up and the operators; each may use\n\
         # only the subjects below. Include this file in nats-server's configuration:\n\
         #   include \"auth.conf\"\n\
         # and give each process its seed: NATS_NKEY_SEED_FILE=<user>.nk, or the variables in\n\
         # <user>.env (which also name the user's inbox prefix).\n\
         authorization {{\n  users = [\n"
    );
    for (user, key) in users.iter().zip(keys) {
        config.push_str(&format!(
            "    # {}: {}\n    {{\n      nkey: {}\n      permissions: {{\n        publish: {{ allow: [{}]{} }}\n        subscribe: {{ allow: [{}] }}\n",
            user.name,
            user.role,
            quote(key),
            list(&user.publish),
            if user.publish_deny.is_empty() {
                String::new()
            } else {
                format!(", deny: [{}]", list(&user.publish_deny))
            },
            list(&user.subscribe)
        ));
        if user.allow_responses {
            config.push_str("        allow_responses: true\n");
        }
        config.push_str("      }\n    }\n");
    }
    config.push_str("  ]\n}\n");
    config
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used)]

    use super::*;
    use choreo_bus::names::subject_matches;
    use choreo_bus::{Agent, RuntimeConfig};

    fn editor() -> Manifest {
        let agent = Agent::builder("editor")
            .subscribes("review.completed")
            .emits("review.approved")
            .build()
            .unwrap();
        Manifest::new(&agent, "Edits.", &RuntimeConfig::default())
    }

    fn allows(subjects: &[String], subject: &str) -> bool {
        subjects
            .iter()
            .any(|filter| subject_matches(filter, subject))
    }

    #[test]
    fn an_agent_may_use_its_own_subjects_and_no_others() {
        let user = agent(&editor(), &[editor()]);
        for own in [
            "events.c1.review.approved",
            "events.c1.choreo.handled",
            "dlq.events.editor.c1",
            "budget.events.c1.tokens",
            "$JS.API.CONSUMER.MSG.NEXT.EVENTS.editor",
            "$JS.API.CONSUMER.CREATE.EVENTS.editor",
            "$JS.ACK.EVENTS.editor.1.2.3.4.5",
            "$JS.API.DIRECT.GET.BUDGETS.budget.events.c1.events",
        ] {
            assert!(allows(&user.publish, own), "{own}");
        }
        for other in [
            "events.c1.review.requested",
            "dlq.events.triage.c1",
            "$JS.API.CONSUMER.MSG.NEXT.EVENTS.triage",
            "$JS.ACK.EVENTS.triage.1.2.3.4.5",
            "$JS.API.STREAM.DELETE.EVENTS",
            "$JS.API.CONSUMER.DELETE.EVENTS.editor",
        ] {
            assert!(!allows(&user.publish, other), "{other}");
        }
        assert!(allows(&user.subscribe, "_INBOX_editor.abc.1"));
        assert!(allows(&user.subscribe, "$SRV.PING.editor"));
        for other in [
            "events.>",
            "events.c1.review.approved",
            "_INBOX_triage.abc",
            "_INBOX.x",
        ] {
            assert!(!allows(&user.subscribe, other), "{other}");
        }
        assert_eq!(user.inbox_prefix.as_deref(), Some("_INBOX_editor"));
    }

    #[test]
    fn a_reader_of_the_log_makes_its_own_consumers_and_never_uses_anothers() {
        let mut reader = editor();
        reader.name = "aggregator".into();
        reader.consumer.durable = "aggregator".into();
        reader.reads = vec!["EVENTS".into()];
        let team = [reader.clone(), editor()];
        let user = agent(&reader, &team);
        let allowed =
            |subject: &str| allows(&user.publish, subject) && !allows(&user.publish_deny, subject);
        assert!(allowed("$JS.API.CONSUMER.CREATE.EVENTS"));
        assert!(allowed("$JS.API.CONSUMER.MSG.NEXT.EVENTS.Xk3bq9"));
        assert!(allowed("$JS.API.CONSUMER.MSG.NEXT.EVENTS.aggregator"));
        assert!(!allowed("$JS.API.CONSUMER.MSG.NEXT.EVENTS.editor"));
        assert!(!allowed("$JS.API.CONSUMER.DELETE.EVENTS.editor"));
        assert!(!allowed("$JS.API.CONSUMER.DELETE.EVENTS.aggregator"));
        assert!(!allowed("$JS.API.CONSUMER.CREATE.EVENTS.editor"));
        assert!(agent(&editor(), &team).publish_deny.is_empty());
    }

    #[test]
    fn the_gateway_publishes_only_its_types_as_roots() {
        let user = gateway(
            &["events".into()],
            &["review.requested".into(), "github.*".into()],
        );
        assert!(allows(&user.publish, "events.c1.review.requested"));
        assert!(allows(
            &user.publish,
            "events.c1.github.pull_request.changed"
        ));
        assert!(allows(&user.publish, "budget.events.c1.events"));
        assert!(allows(&user.publish, "$JS.API.STREAM.INFO.EVENTS"));
        assert!(!allows(&user.publish, "events.c1.review.approved"));
        assert!(!allows(
            &user.publish,
            "$JS.API.CONSUMER.MSG.NEXT.EVENTS.triage"
        ));
        let any = gateway(&["events".into()], &["*".into()]);
        assert!(allows(&any.publish, "events.c1.review.approved"));
    }

    #[test]
    fn names_of_the_other_users_are_not_agents_names() {
        let mut manifest = editor();
        manifest.name = "gateway".into();
        assert!(all(&[manifest], &[]).is_err());
        let users = all(&[editor()], &[]).unwrap();
        let names: Vec<_> = users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["editor", GATEWAY, STREAMS, OPERATOR]);
    }

    #[test]
    fn the_configuration_quotes_every_subject() {
        let users = all(&[editor()], &["review.requested".into()]).unwrap();
        let keys: Vec<String> = (0..users.len()).map(|i| format!("UKEY{i}")).collect();
        let config = authorization(&users, &keys, "test");
        assert!(config.contains("nkey: \"UKEY0\""), "{config}");
        assert!(config.contains("\"$JS.ACK.EVENTS.editor.>\""), "{config}");
        assert!(config.contains("allow_responses: true"), "{config}");
        assert_eq!(config.matches("nkey:").count(), 4);
    }
}
