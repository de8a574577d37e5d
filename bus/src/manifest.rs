//! An agent's manifest: what it is, what it handles and emits, and every subject and stream it
//! uses, as JSON. `choreo-<agent> manifest` prints it without connecting to NATS; `choreo
//! graph` draws the choreography from the manifests and finds its loops before anything is
//! deployed; and it says what per-agent NATS credentials must allow.
//!
//! Built from the [`Agent`] declaration and the [`RuntimeConfig`] in effect (the namespace and
//! the guards come from the agent's flags, environment or settings file), so the subjects are
//! the ones the runtime really uses, resolved for its namespace:
//!
//! | what | subject | stream |
//! |---|---|---|
//! | the events it handles (its durable consumer's filters) | `<ns>.*.<type>` | `EVENTS` / `EVENTS_<NS>` |
//! | its children, per emitted type | `<ns>.*.<type>` | the same |
//! | handling notices (a handling that emitted nothing) | `<ns>.*.choreo.handled` | the same |
//! | dead-letter notices in the run | `<ns>.*.choreo.dead_lettered` | the same |
//! | circuit-breaker transitions (in the run `breaker-<agent>-<breaker>`) | `<ns>.*.choreo.breaker.*` | the same |
//! | dead letters | `dlq.<ns>.<agent>.*` | `DEADLETTERS` |
//! | run budget counters (increments are requests) | `budget.<ns>.*.*` | `BUDGETS` |
//! | the log, read with consumers of its own (`reads`, when it declares [`crate::runtime::AgentBuilder::reads_log`]) | none | `EVENTS` / `EVENTS_<NS>` |
//! | presence (Services API), answered | `$SRV.{PING,INFO,STATS}[.<agent>[.*]]`, `choreo.agents.<ns>.<agent>.status` | none |
//!
//! The JSON's field names are stable; a change that would break a reader raises
//! [`MANIFEST_SCHEMA`], and readers refuse a schema they do not know ([`Manifest::from_value`]).
//! Fields may be added within a schema, so readers ignore fields they do not know.

use serde::{Deserialize, Serialize};

use crate::dead_letter::DEAD_LETTERED;
use crate::handling::HANDLED;
use crate::names::{AgentName, EventType, Namespace, ValidationError};
use crate::runtime::presence::status_subject;
use crate::runtime::{Agent, RuntimeConfig};
use crate::streams::{BUDGET_PREFIX, BUDGET_STREAM, DEAD_LETTER_PREFIX, DEAD_LETTER_STREAM};

/// The manifest schema this build writes and reads.
pub const MANIFEST_SCHEMA: u32 = 1;

/// The subcommand that prints an agent's manifest: `choreo-<agent> manifest`.
pub const MANIFEST_SUBCOMMAND: &str = "manifest";

/// What an agent is and which subjects it uses. See the module docs for the subjects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_SCHEMA`] when written by this build.
    pub schema: u32,
    /// The agent's name: its durable consumer, its span name and its events' `source`.
    pub name: String,
    /// The build's version (every choreo crate has the workspace's version).
    pub version: String,
    /// What the agent does: the first line of its `--help`.
    #[serde(default)]
    pub description: String,
    /// The namespace the agent runs in, resolved from `--namespace`, `CHOREO_NAMESPACE` or the
    /// settings file (default `events`); every subject below is in it.
    pub namespace: String,
    /// The event types it handles.
    pub subscribes: Vec<String>,
    /// The event types its handler may emit.
    pub emits: Vec<String>,
    /// The durable consumer all its copies share.
    pub consumer: Consumer,
    /// Every subject it publishes to, with the stream that stores it.
    pub publishes: Vec<Publication>,
    /// Subjects it subscribes to with core NATS to answer requests (not its events).
    #[serde(default)]
    pub answers: Vec<String>,
    /// Streams it reads itself, with consumers of its own besides its durable one (a join
    /// reading a run's events); empty for most agents.
    #[serde(default)]
    pub reads: Vec<String>,
    /// The storm guards its runtime applies; `None` for an agent that does not run choreo's
    /// runtime (one written in another language, with a manifest of its own).
    #[serde(default)]
    pub guards: Option<GuardLimits>,
}

/// An agent's durable pull consumer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consumer {
    /// The stream it reads (`EVENTS`, or `EVENTS_<NS>` in another namespace).
    pub stream: String,
    /// Its durable name: the agent's name.
    pub durable: String,
    /// The subjects it delivers: one per subscribed type.
    pub filter_subjects: Vec<String>,
}

/// One subject an agent publishes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publication {
    /// A subject filter (`*` one token, `>` the rest).
    pub subject: String,
    /// The stream that captures it.
    pub stream: String,
    /// What is published there.
    pub what: String,
}

/// The storm guards' limits in effect; `None` where a guard is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardLimits {
    /// Hops from the root past which children are not published (`--max-depth`).
    pub max_depth: Option<u32>,
    /// Times the agent handles one type along one causation chain (`--max-visits`).
    pub max_visits: Option<u32>,
    /// Events agents may emit in one run (`--max-events`).
    pub max_events: Option<u64>,
    /// Model tokens one run may spend (`--max-tokens`).
    pub max_tokens: Option<u64>,
    /// What one run's model calls may cost, in millionths of the price's unit (`--max-cost`).
    #[serde(default)]
    pub max_cost_micros: Option<u64>,
}

impl GuardLimits {
    /// The limits `config` applies.
    pub fn of(config: &RuntimeConfig) -> Self {
        let guards = &config.guards;
        GuardLimits {
            max_depth: guards.depth.map(|depth| depth.max),
            max_visits: guards.cycle.map(|cycle| cycle.max_visits),
            max_events: guards.budget.max_events,
            max_tokens: guards.budget.max_tokens,
            max_cost_micros: guards.budget.max_cost_micros,
        }
    }
}

/// Why a manifest was refused. None of these is helped by reading it again.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not a JSON object with a `schema` field: not a manifest at all.
    #[error(
        "not an agent manifest ({0}); a manifest is the JSON object `choreo-<agent> manifest` prints"
    )]
    NotAManifest(String),
    /// Written for a schema this build does not read.
    #[error(
        "manifest schema {found}{agent} is not the schema this choreo reads ({MANIFEST_SCHEMA}); \
         use the choreo built with the agents, or print the manifests again with this release"
    )]
    Schema { found: u64, agent: String },
    /// The right schema, but a field is missing or of the wrong kind.
    #[error("manifest{agent}: {source}")]
    Malformed {
        agent: String,
        #[source]
        source: serde_json::Error,
    },
    /// A name, namespace or type that choreo would refuse.
    #[error("manifest{agent}: {source}")]
    Invalid {
        agent: String,
        #[source]
        source: ValidationError,
    },
}

impl Manifest {
    /// The manifest of `agent` running with `config`; `description` says what it does.
    ///
    /// ```
    /// let agent = choreo_bus::Agent::builder("counter")
    ///     .subscribes("text.submitted")
    ///     .emits("text.counted")
    ///     .build()?;
    /// let config = choreo_bus::RuntimeConfig::default();
    /// let manifest = choreo_bus::manifest::Manifest::new(&agent, "Counts words.", &config);
    /// assert_eq!(manifest.consumer.filter_subjects, ["events.*.text.submitted"]);
    /// # Ok::<(), choreo_bus::ValidationError>(())
    /// ```
    pub fn new(agent: &Agent, description: &str, config: &RuntimeConfig) -> Self {
        let namespace = &config.namespace;
        let name = agent.name();
        let events = namespace.stream_name();
        let types = |types: &[EventType]| types.iter().map(|t| t.to_string()).collect();
        let on_events = |subject: String, what: String| Publication {
            subject,
            stream: events.clone(),
            what,
        };
        let mut publishes: Vec<Publication> = agent
            .emits()
            .iter()
            .map(|t| on_events(namespace.type_filter(t), format!("children: {t}")))
            .collect();
        publishes.push(on_events(
            format!("{namespace}.*.{HANDLED}"),
            "handling notices: a handling that emitted nothing and failed, spent or was slow"
                .into(),
        ));
        publishes.push(on_events(
            format!("{namespace}.*.{DEAD_LETTERED}"),
            "dead-letter notices in the run".into(),
        ));
        // A wildcard is a whole token, so the run `breaker-<agent>-<breaker>` cannot be
        // narrowed to this agent's breakers in a subject.
        publishes.push(on_events(
            format!("{namespace}.*.choreo.breaker.*"),
            format!("circuit-breaker transitions, in the runs breaker-{name}-<breaker>"),
        ));
        publishes.push(Publication {
            subject: format!("{DEAD_LETTER_PREFIX}.{namespace}.{name}.*"),
            stream: DEAD_LETTER_STREAM.into(),
            what: "dead letters".into(),
        });
        let budget = config.guards.budget;
        // As the runtime decides whether to keep a budget at all (`Runtime::budget`).
        if budget.max_events.is_some() || budget.max_tokens.is_some() {
            publishes.push(Publication {
                subject: format!("{BUDGET_PREFIX}.{namespace}.*.*"),
                stream: BUDGET_STREAM.into(),
                what: "run budget counters (increments as requests; read with direct gets)".into(),
            });
        }
        Manifest {
            schema: MANIFEST_SCHEMA,
            name: name.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            description: description.to_string(),
            namespace: namespace.to_string(),
            subscribes: types(agent.subscribes()),
            emits: types(agent.emits()),
            consumer: Consumer {
                stream: events.clone(),
                durable: name.to_string(),
                filter_subjects: agent
                    .subscribes()
                    .iter()
                    .map(|t| namespace.type_filter(t))
                    .collect(),
            },
            publishes,
            answers: answers(namespace, name),
            reads: if agent.reads_log() {
                vec![events.clone()]
            } else {
                Vec::new()
            },
            guards: Some(GuardLimits::of(config)),
        }
    }

    /// Reads a manifest from JSON: the schema first, so a manifest of another release is
    /// refused as such rather than for a field it renamed, then every name and type.
    pub fn from_value(value: serde_json::Value) -> Result<Self, ManifestError> {
        let object = value.as_object().ok_or_else(|| {
            ManifestError::NotAManifest(format!("a JSON {}, not an object", kind_of(&value)))
        })?;
        let agent = match object.get("name").and_then(|name| name.as_str()) {
            Some(name) => format!(" of agent {name:?}"),
            None => String::new(),
        };
        let schema = object
            .get("schema")
            .ok_or_else(|| ManifestError::NotAManifest("no `schema` field".into()))?;
        let found = schema.as_u64().ok_or_else(|| {
            ManifestError::NotAManifest(format!("`schema` is {schema}, not a whole number"))
        })?;
        if found != u64::from(MANIFEST_SCHEMA) {
            return Err(ManifestError::Schema { found, agent });
        }
        let manifest: Manifest =
            serde_json::from_value(value).map_err(|source| ManifestError::Malformed {
                agent: agent.clone(),
                source,
            })?;
        manifest
            .validate()
            .map_err(|source| ManifestError::Invalid { agent, source })?;
        Ok(manifest)
    }

    /// Checks what ends up in subjects and drawings: the name, the namespace and every type.
    pub fn validate(&self) -> Result<(), ValidationError> {
        AgentName::new(self.name.as_str())?;
        Namespace::new(self.namespace.as_str())?;
        if self.subscribes.is_empty() {
            return Err(ValidationError::new(
                "subscribes",
                format!("agent {} subscribes to nothing", self.name),
            ));
        }
        for event_type in self.subscribes.iter().chain(&self.emits) {
            EventType::new(event_type.as_str())?;
        }
        Ok(())
    }
}

/// The Services API subjects a copy answers (`runtime::presence`): `$SRV.<verb>`, then narrowed
/// to the agent's name and to one copy's id, and its `status` endpoint.
fn answers(namespace: &Namespace, name: &AgentName) -> Vec<String> {
    let mut subjects = Vec::new();
    for verb in ["PING", "INFO", "STATS"] {
        subjects.push(format!("$SRV.{verb}"));
        subjects.push(format!("$SRV.{verb}.{name}"));
        subjects.push(format!("$SRV.{verb}.{name}.*"));
    }
    subjects.push(status_subject(namespace, name.as_str()));
    subjects
}

fn kind_of(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::{CycleLimit, GuardsConfig};
    use crate::names::subject_matches;

    fn editor() -> Agent {
        Agent::builder("editor")
            .subscribes("review.completed")
            .emits("review.approved")
            .emits("review.revision.requested")
            .build()
            .expect("valid")
    }

    fn in_namespace(namespace: &str) -> RuntimeConfig {
        RuntimeConfig {
            namespace: Namespace::new(namespace).expect("valid"),
            ..RuntimeConfig::default()
        }
    }

    fn publication<'a>(manifest: &'a Manifest, what: &str) -> &'a Publication {
        manifest
            .publishes
            .iter()
            .find(|p| p.what.starts_with(what))
            .unwrap_or_else(|| panic!("no {what:?} in {:#?}", manifest.publishes))
    }

    #[test]
    fn the_manifest_is_built_from_the_declaration() {
        let manifest = Manifest::new(&editor(), "Edits.", &RuntimeConfig::default());
        assert_eq!(manifest.schema, MANIFEST_SCHEMA);
        assert_eq!(manifest.name, "editor");
        assert_eq!(manifest.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(manifest.description, "Edits.");
        assert_eq!(manifest.subscribes, ["review.completed"]);
        assert_eq!(
            manifest.emits,
            ["review.approved", "review.revision.requested"]
        );
        assert_eq!(
            manifest.consumer,
            Consumer {
                stream: "EVENTS".into(),
                durable: "editor".into(),
                filter_subjects: vec!["events.*.review.completed".into()],
            }
        );
        assert_eq!(
            manifest.guards,
            Some(GuardLimits {
                max_depth: Some(32),
                max_visits: Some(5),
                max_events: Some(1000),
                max_tokens: Some(500_000),
                max_cost_micros: None,
            })
        );
    }

    /// Every subject the runtime publishes to, as the code that publishes it names it, is
    /// matched by one of the manifest's publications on the stream that stores it.
    #[test]
    fn the_publications_cover_what_the_runtime_publishes() {
        let config = in_namespace("sandbox");
        let manifest = Manifest::new(&editor(), "", &config);
        let namespace = &config.namespace;
        let published = [
            (
                namespace.event_subject("c1", "review.approved"),
                "EVENTS_SANDBOX",
            ),
            (
                namespace.event_subject("c1", "review.revision.requested"),
                "EVENTS_SANDBOX",
            ),
            (
                namespace.event_subject("c1", DEAD_LETTERED),
                "EVENTS_SANDBOX",
            ),
            (namespace.event_subject("c1", HANDLED), "EVENTS_SANDBOX"),
            (
                namespace.event_subject(
                    "breaker-editor-handler",
                    crate::guard::BreakerState::Open.event_type(),
                ),
                "EVENTS_SANDBOX",
            ),
            ("dlq.sandbox.editor.c1".to_string(), "DEADLETTERS"),
            (
                crate::guard::CorrelationBudget::subject(
                    namespace,
                    "c1",
                    crate::guard::BudgetKind::Events,
                ),
                "BUDGETS",
            ),
            (
                crate::guard::CorrelationBudget::subject(
                    namespace,
                    "c1",
                    crate::guard::BudgetKind::Tokens,
                ),
                "BUDGETS",
            ),
            (
                crate::guard::CorrelationBudget::subject(
                    namespace,
                    "c1",
                    crate::guard::BudgetKind::Cost,
                ),
                "BUDGETS",
            ),
        ];
        for (subject, stream) in published {
            assert!(
                manifest
                    .publishes
                    .iter()
                    .any(|p| subject_matches(&p.subject, &subject) && p.stream == stream),
                "{subject} on {stream} not in {:#?}",
                manifest.publishes
            );
        }
        // Another namespace's events, a type it does not emit and another agent's dead letters
        // are not its to publish.
        for subject in [
            "events.c1.review.approved".to_string(),
            namespace.event_subject("c1", "review.completed"),
            "dlq.sandbox.triage.c1".to_string(),
        ] {
            assert!(
                !manifest
                    .publishes
                    .iter()
                    .any(|p| subject_matches(&p.subject, &subject)),
                "{subject}"
            );
        }
        assert_eq!(
            manifest.consumer.filter_subjects,
            ["sandbox.*.review.completed"]
        );
        assert!(
            manifest
                .answers
                .contains(&"choreo.agents.sandbox.editor.status".to_string())
        );
        assert!(manifest.answers.contains(&"$SRV.PING.editor.*".to_string()));
    }

    #[test]
    fn guards_that_are_off_are_null_and_no_budget_means_no_counters() {
        let config = RuntimeConfig {
            guards: GuardsConfig {
                cycle: Some(CycleLimit { max_visits: 3 }),
                ..GuardsConfig::off()
            },
            ..RuntimeConfig::default()
        };
        let manifest = Manifest::new(&editor(), "", &config);
        assert_eq!(
            manifest.guards,
            Some(GuardLimits {
                max_depth: None,
                max_visits: Some(3),
                max_events: None,
                max_tokens: None,
                max_cost_micros: None,
            })
        );
        assert!(
            !manifest.publishes.iter().any(|p| p.stream == BUDGET_STREAM),
            "{:#?}",
            manifest.publishes
        );
        let json = serde_json::to_value(&manifest).expect("json");
        assert_eq!(json["guards"]["max_depth"], serde_json::Value::Null);
        assert_eq!(publication(&manifest, "dead letters").stream, "DEADLETTERS");
    }

    #[test]
    fn a_manifest_reads_back_as_written() {
        let manifest = Manifest::new(&editor(), "Edits.", &RuntimeConfig::default());
        let json = serde_json::to_value(&manifest).expect("json");
        for field in [
            "schema",
            "name",
            "version",
            "description",
            "namespace",
            "subscribes",
            "emits",
            "consumer",
            "publishes",
            "answers",
            "guards",
        ] {
            assert!(json.get(field).is_some(), "{field} missing from {json}");
        }
        assert_eq!(Manifest::from_value(json).expect("reads"), manifest);
    }

    #[test]
    fn a_minimal_manifest_of_another_runtime_is_read() {
        let json = serde_json::json!({
            "schema": 1, "name": "pinger", "version": "2.0", "namespace": "events",
            "subscribes": ["pong.returned"], "emits": ["ping.sent"],
            "consumer": {"stream": "EVENTS", "durable": "pinger",
                         "filter_subjects": ["events.*.pong.returned"]},
            "publishes": [], "written_by": "a future field, ignored"
        });
        let manifest = Manifest::from_value(json).expect("reads");
        assert_eq!(manifest.guards, None);
        assert!(manifest.answers.is_empty());
    }

    #[test]
    fn another_schema_is_refused_as_such() {
        let mut json =
            serde_json::to_value(Manifest::new(&editor(), "", &RuntimeConfig::default()))
                .expect("json");
        json["schema"] = 2.into();
        // A field a later schema might rename: the schema is what is reported.
        json.as_object_mut().expect("object").remove("emits");
        let err = Manifest::from_value(json).expect_err("schema 2");
        assert!(
            matches!(&err, ManifestError::Schema { found: 2, .. }),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains("schema 2"), "{message}");
        assert!(message.contains("\"editor\""), "{message}");
    }

    #[test]
    fn what_is_not_a_manifest_says_so() {
        for (json, says) in [
            (serde_json::json!([1, 2]), "array"),
            (serde_json::json!({"name": "x"}), "no `schema` field"),
            (serde_json::json!({"schema": "one"}), "not a whole number"),
        ] {
            let err = Manifest::from_value(json).expect_err("not a manifest");
            assert!(matches!(err, ManifestError::NotAManifest(_)), "{err:?}");
            assert!(err.to_string().contains(says), "{err}");
        }
        let mut json =
            serde_json::to_value(Manifest::new(&editor(), "", &RuntimeConfig::default()))
                .expect("json");
        json.as_object_mut().expect("object").remove("subscribes");
        let err = Manifest::from_value(json.clone()).expect_err("no subscribes");
        assert!(matches!(err, ManifestError::Malformed { .. }), "{err:?}");
        assert!(err.to_string().contains("subscribes"), "{err}");

        json["subscribes"] = serde_json::json!(["review.*"]);
        let err = Manifest::from_value(json).expect_err("a wildcard type");
        assert!(matches!(err, ManifestError::Invalid { .. }), "{err:?}");
        assert!(err.to_string().contains("editor"), "{err}");
    }
}
