//! An agent's settings, from flags, the environment or a TOML file, with safe defaults.
//!
//! Every setting has a flag, an environment variable and a file key of the same name:
//! `--max-depth 12`, `CHOREO_MAX_DEPTH=12`, `max-depth = 12`. Flags win over the environment,
//! which wins over the file (`--config FILE` or `CHOREO_CONFIG`), which wins over the defaults.
//! Limits take `off` to disable them. A bad value is refused at start with the setting's name
//! and what would be accepted; `choreo-<agent> --help` lists them all.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;

use crate::guard::{BreakerConfig, CycleLimit, DepthLimit, GuardsConfig, Rate, RateLimit};
use crate::names::{EventType, Namespace, ValidationError};
use crate::runtime::{HandlerErrorKind, RuntimeConfig};

/// Settings as given; anything left out keeps its default. See the module docs.
#[derive(Debug, Clone, Default, PartialEq, Parser, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[command(
    about = "A choreo agent: handles its events from NATS JetStream until SIGINT or SIGTERM.",
    after_help = crate::connect::env_help()
)]
pub struct AgentSettings {
    /// A TOML file of settings, keyed like the flags (e.g. `max-depth = 12`).
    #[arg(long, env = "CHOREO_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// The namespace whose events to handle [default: events].
    #[arg(long, env = "CHOREO_NAMESPACE")]
    pub namespace: Option<String>,
    /// Events handled at once by this process [default: 16].
    #[arg(long, env = "CHOREO_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// Deliveries of a failing event before it is dead-lettered [default: 5].
    #[arg(long, env = "CHOREO_MAX_DELIVERIES")]
    pub max_deliveries: Option<u64>,
    /// How long a process may be silent before the server takes it for dead and redelivers
    /// what it held; a running handler keeps its event's lease, however long it runs
    /// [default: 30s].
    #[arg(long, env = "CHOREO_ACK_WAIT", value_name = "DURATION")]
    pub ack_wait: Option<HumanDuration>,
    /// How long one handling may run before it is cancelled and counted as a failed attempt
    /// (dead letter `handler_timeout` after the last) [default: 10m].
    #[arg(long, env = "CHOREO_HANDLER_TIMEOUT", value_name = "DURATION")]
    pub handler_timeout: Option<HumanDuration>,
    /// On SIGTERM, how long running handlers get to finish before they are cancelled and their
    /// events handed back to another copy [default: 30s].
    #[arg(long, env = "CHOREO_SHUTDOWN_GRACE", value_name = "DURATION")]
    pub shutdown_grace: Option<HumanDuration>,
    /// Where to serve Prometheus metrics (/metrics) and probes (/healthz, /readyz), e.g.
    /// 0.0.0.0:9090 [default: off].
    #[arg(long, env = "CHOREO_METRICS_LISTEN", value_name = "ADDRESS")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// Hops from the root past which children are not published [default: 32].
    #[arg(long, env = "CHOREO_MAX_DEPTH", value_name = "N|off")]
    pub max_depth: Option<Limit>,
    /// Times this agent may handle one event type along one causation chain [default: 5].
    #[arg(long, env = "CHOREO_MAX_VISITS", value_name = "N|off")]
    pub max_visits: Option<Limit>,
    /// Events agents may emit in one run, shared by all agents [default: 1000].
    #[arg(long, env = "CHOREO_MAX_EVENTS", value_name = "N|off")]
    pub max_events: Option<Limit>,
    /// LLM tokens one run may spend, shared by all agents [default: 500000].
    #[arg(long, env = "CHOREO_MAX_TOKENS", value_name = "N|off")]
    pub max_tokens: Option<Limit>,
    /// What the model calls of one run may cost, shared by all agents, in the unit of
    /// CHOREO_LLM_PRICE, e.g. 0.50 [default: off].
    #[arg(long, env = "CHOREO_MAX_COST", value_name = "AMOUNT|off")]
    pub max_cost: Option<CostLimit>,
    /// A handling that emits nothing is recorded in the log (a choreo.handled notice) when it
    /// failed, spent money, or took at least this long; 0s records every one [default: 100ms].
    #[arg(long, env = "CHOREO_RECORD_HANDLINGS_OVER", value_name = "DURATION")]
    pub record_handlings_over: Option<HumanDuration>,

    /// Pace of handling in this process, e.g. 100/s or 30/m [default: off].
    #[arg(long, env = "CHOREO_HANDLE_RATE", value_name = "RATE|off")]
    pub handle_rate: Option<RateSetting>,
    /// Events handled back to back before the handle rate applies [default: 1].
    #[arg(long, env = "CHOREO_HANDLE_BURST", value_name = "N")]
    pub handle_burst: Option<u32>,
    /// Pace of publishing one emitted type, TYPE=RATE[:BURST]; repeat or comma-separate.
    #[arg(
        long,
        env = "CHOREO_PUBLISH_RATE",
        value_name = "TYPE=RATE",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub publish_rate: Vec<PublishRate>,

    /// The circuit breaker around the handler: on or off [default: on].
    #[arg(long, env = "CHOREO_BREAKER", value_name = "on|off")]
    pub breaker: Option<Switch>,
    /// Share of failed calls that opens the breaker [default: 0.5].
    #[arg(long, env = "CHOREO_BREAKER_FAILURE_RATE", value_name = "SHARE")]
    pub breaker_failure_rate: Option<f64>,
    /// Calls in the window before the breaker may open [default: 10].
    #[arg(long, env = "CHOREO_BREAKER_MIN_CALLS", value_name = "N")]
    pub breaker_min_calls: Option<u32>,
    /// How far back the breaker counts calls [default: 30s].
    #[arg(long, env = "CHOREO_BREAKER_WINDOW", value_name = "DURATION")]
    pub breaker_window: Option<HumanDuration>,
    /// How long the breaker stays open [default: 30s].
    #[arg(long, env = "CHOREO_BREAKER_OPEN_FOR", value_name = "DURATION")]
    pub breaker_open_for: Option<HumanDuration>,
    /// Probe calls let through when half-open; all must pass to close [default: 1].
    #[arg(long, env = "CHOREO_BREAKER_PROBES", value_name = "N")]
    pub breaker_probes: Option<u32>,
    /// Handler error kinds the breaker does not count: retryable, permanent, unavailable,
    /// over_budget [default: permanent,over_budget].
    #[arg(
        long,
        env = "CHOREO_BREAKER_IGNORE",
        value_name = "KIND",
        value_delimiter = ','
    )]
    pub breaker_ignore: Option<Vec<HandlerErrorKind>>,
}

impl AgentSettings {
    /// Reads the file named by `--config`/`CHOREO_CONFIG`, if any, under these settings.
    pub fn with_file(self) -> Result<Self, ValidationError> {
        match &self.config {
            Some(path) => {
                let file = Self::from_file(path)?;
                Ok(self.over(file))
            }
            None => Ok(self),
        }
    }

    /// Settings from a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ValidationError> {
        let text = std::fs::read_to_string(path).map_err(|err| {
            ValidationError::new("config", format!("cannot read {}: {err}", path.display()))
        })?;
        toml::from_str(&text).map_err(|err| {
            ValidationError::new(
                "config",
                format!("{} is not a valid settings file: {err}", path.display()),
            )
        })
    }

    /// These settings, with anything they leave out taken from `under`.
    pub fn over(self, under: AgentSettings) -> AgentSettings {
        AgentSettings {
            config: self.config.or(under.config),
            namespace: self.namespace.or(under.namespace),
            concurrency: self.concurrency.or(under.concurrency),
            max_deliveries: self.max_deliveries.or(under.max_deliveries),
            ack_wait: self.ack_wait.or(under.ack_wait),
            handler_timeout: self.handler_timeout.or(under.handler_timeout),
            shutdown_grace: self.shutdown_grace.or(under.shutdown_grace),
            metrics_listen: self.metrics_listen.or(under.metrics_listen),
            max_depth: self.max_depth.or(under.max_depth),
            max_visits: self.max_visits.or(under.max_visits),
            max_events: self.max_events.or(under.max_events),
            max_tokens: self.max_tokens.or(under.max_tokens),
            max_cost: self.max_cost.or(under.max_cost),
            record_handlings_over: self.record_handlings_over.or(under.record_handlings_over),
            handle_rate: self.handle_rate.or(under.handle_rate),
            handle_burst: self.handle_burst.or(under.handle_burst),
            publish_rate: if self.publish_rate.is_empty() {
                under.publish_rate
            } else {
                self.publish_rate
            },
            breaker: self.breaker.or(under.breaker),
            breaker_failure_rate: self.breaker_failure_rate.or(under.breaker_failure_rate),
            breaker_min_calls: self.breaker_min_calls.or(under.breaker_min_calls),
            breaker_window: self.breaker_window.or(under.breaker_window),
            breaker_open_for: self.breaker_open_for.or(under.breaker_open_for),
            breaker_probes: self.breaker_probes.or(under.breaker_probes),
            breaker_ignore: self.breaker_ignore.or(under.breaker_ignore),
        }
    }

    /// The runtime configuration these settings describe, validated.
    pub fn runtime_config(&self) -> Result<RuntimeConfig, ValidationError> {
        let mut config = RuntimeConfig::default();
        if let Some(namespace) = &self.namespace {
            config.namespace = Namespace::new(namespace.clone())
                .map_err(|err| ValidationError::new("namespace", err.reason))?;
        }
        if let Some(n) = self.concurrency {
            config.concurrency = n;
        }
        if let Some(n) = self.max_deliveries {
            config.max_deliveries = n;
        }
        if let Some(wait) = self.ack_wait {
            config.ack_wait = wait.0;
        }
        if let Some(timeout) = self.handler_timeout {
            config.handler_timeout = timeout.0;
        }
        if let Some(grace) = self.shutdown_grace {
            config.shutdown_grace = grace.0;
        }
        config.metrics_listen = self.metrics_listen;
        if let Some(over) = self.record_handlings_over {
            config.record_handlings_over = over.0;
        }
        let guards = &mut config.guards;
        if let Some(limit) = self.max_depth {
            guards.depth = limit.as_u32("max-depth")?.map(|max| DepthLimit { max });
        }
        if let Some(limit) = self.max_visits {
            guards.cycle = limit
                .as_u32("max-visits")?
                .map(|max_visits| CycleLimit { max_visits });
        }
        if let Some(limit) = self.max_events {
            guards.budget.max_events = limit.0;
        }
        if let Some(limit) = self.max_tokens {
            guards.budget.max_tokens = limit.0;
        }
        if let Some(limit) = self.max_cost {
            guards.budget.max_cost_micros = limit.0;
        }
        let handle_burst = self.handle_burst.unwrap_or(1);
        guards.handle_rate = match self.handle_rate {
            Some(RateSetting(Some(rate))) => Some(RateLimit {
                rate,
                burst: handle_burst,
            }),
            _ if self.handle_burst.is_some() => {
                return Err(ValidationError::new(
                    "handle-burst",
                    "is set but handle-rate is not; set a rate, e.g. --handle-rate 100/s",
                ));
            }
            _ => None,
        };
        let mut publish_rates = BTreeMap::new();
        for PublishRate { event_type, limit } in &self.publish_rate {
            if publish_rates.insert(event_type.clone(), *limit).is_some() {
                return Err(ValidationError::new(
                    "publish-rate",
                    format!("{event_type} is given twice"),
                ));
            }
        }
        guards.publish_rates = publish_rates;
        let mut breaker = BreakerConfig::default();
        if let Some(rate) = self.breaker_failure_rate {
            breaker.failure_rate = rate;
        }
        if let Some(n) = self.breaker_min_calls {
            breaker.min_calls = n;
        }
        if let Some(window) = self.breaker_window {
            breaker.window = window.0;
        }
        if let Some(open_for) = self.breaker_open_for {
            breaker.open_for = open_for.0;
        }
        if let Some(n) = self.breaker_probes {
            breaker.half_open_probes = n;
        }
        guards.breaker = match self.breaker {
            Some(Switch(false)) => None,
            _ => Some(breaker),
        };
        if let Some(kinds) = &self.breaker_ignore {
            guards.breaker_ignores = kinds.iter().copied().collect::<BTreeSet<_>>();
        }
        config.validate()?;
        Ok(config)
    }
}

/// A whole-number limit, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(pub Option<u64>);

impl Limit {
    fn as_u32(self, field: &'static str) -> Result<Option<u32>, ValidationError> {
        self.0
            .map(|n| {
                u32::try_from(n)
                    .map_err(|_| ValidationError::new(field, format!("{n} is too large")))
            })
            .transpose()
    }
}

impl FromStr for Limit {
    type Err = ValidationError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "off" => Ok(Limit(None)),
            number => number.parse().map(|n| Limit(Some(n))).map_err(|_| {
                ValidationError::new("limit", format!("{text:?} is not a whole number or off"))
            }),
        }
    }
}

/// A cost limit written in the price's unit (`0.50`), or `off`; held in millionths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CostLimit(pub Option<u64>);

impl FromStr for CostLimit {
    type Err = ValidationError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || {
            ValidationError::new(
                "max-cost",
                format!("{text:?} is not an amount above 0 (like 0.50) or off"),
            )
        };
        match text.trim() {
            "off" => Ok(CostLimit(None)),
            amount => {
                let amount: f64 = amount.parse().map_err(|_| invalid())?;
                match crate::handling::cost_to_micros(amount) {
                    0 => Err(invalid()),
                    micros => Ok(CostLimit(Some(micros))),
                }
            }
        }
    }
}

/// A duration written like `30s`, `500ms` or `2m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = ValidationError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(text.trim())
            .map(HumanDuration)
            .map_err(|_| {
                ValidationError::new(
                    "duration",
                    format!("{text:?} is not a duration; write it like 30s, 500ms or 2m"),
                )
            })
    }
}

/// A rate like `100/s`, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSetting(pub Option<Rate>);

impl FromStr for RateSetting {
    type Err = ValidationError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "off" => Ok(RateSetting(None)),
            rate => rate.parse().map(|rate| RateSetting(Some(rate))),
        }
    }
}

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switch(pub bool);

impl FromStr for Switch {
    type Err = ValidationError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "on" | "true" => Ok(Switch(true)),
            "off" | "false" => Ok(Switch(false)),
            _ => Err(ValidationError::new(
                "switch",
                format!("{text:?} is neither on nor off"),
            )),
        }
    }
}

/// A publishing pace for one emitted type: `TYPE=RATE` or `TYPE=RATE:BURST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRate {
    pub event_type: EventType,
    pub limit: RateLimit,
}

impl FromStr for PublishRate {
    type Err = ValidationError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || {
            ValidationError::new(
                "publish-rate",
                format!("{text:?} is not TYPE=RATE[:BURST], e.g. review.comment=5/s:2"),
            )
        };
        let (event_type, pace) = text.trim().split_once('=').ok_or_else(invalid)?;
        let event_type = EventType::new(event_type.trim())?;
        let (rate, burst) = match pace.split_once(':') {
            Some((rate, burst)) => (rate, burst.trim().parse().map_err(|_| invalid())?),
            None => (pace, 1),
        };
        Ok(PublishRate {
            event_type,
            limit: RateLimit {
                rate: rate.parse()?,
                burst,
            },
        })
    }
}

/// File values may be TOML numbers or strings; both are read through the type's `FromStr`, so
/// a file accepts exactly what the flag does.
macro_rules! deserialize_via_from_str {
    ($($type:ty),*) => {$(
        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = match TextOrNumber::deserialize(deserializer)? {
                    TextOrNumber::Text(text) => text,
                    TextOrNumber::Whole(n) => n.to_string(),
                    TextOrNumber::Float(x) => x.to_string(),
                    TextOrNumber::Bool(b) => if b { "on".into() } else { "off".into() },
                };
                text.parse().map_err(|err: ValidationError| serde::de::Error::custom(err.reason))
            }
        }
    )*};
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum TextOrNumber {
    Text(String),
    Whole(u64),
    Float(f64),
    Bool(bool),
}

deserialize_via_from_str!(
    Limit,
    CostLimit,
    HumanDuration,
    RateSetting,
    Switch,
    PublishRate,
    HandlerErrorKind
);

impl fmt::Display for GuardsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let limit = |value: Option<u64>| value.map_or("off".to_string(), |n| n.to_string());
        write!(
            f,
            "max-depth {}, max-visits {}, max-events {}, max-tokens {}, max-cost {}, \
             handle-rate {}",
            limit(self.depth.map(|d| u64::from(d.max))),
            limit(self.cycle.map(|c| u64::from(c.max_visits))),
            limit(self.budget.max_events),
            limit(self.budget.max_tokens),
            self.budget
                .max_cost_micros
                .map_or("off".to_string(), |micros| {
                    crate::guard::BudgetKind::Cost.amount(micros)
                }),
            self.handle_rate
                .map_or("off".to_string(), |r| r.to_string()),
        )?;
        for (event_type, limit) in &self.publish_rates {
            write!(f, ", publish-rate {event_type}={limit}")?;
        }
        match &self.breaker {
            Some(b) => write!(
                f,
                ", breaker on ({:.0}% of >= {} calls in {:?} opens it for {:?}, {} probe(s), \
                 ignoring {})",
                b.failure_rate * 100.0,
                b.min_calls,
                b.window,
                b.open_for,
                b.half_open_probes,
                self.breaker_ignores
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join("+"),
            ),
            None => write!(f, ", breaker off"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<AgentSettings, clap::Error> {
        AgentSettings::try_parse_from(std::iter::once("agent").chain(args.iter().copied()))
    }

    #[test]
    fn nothing_given_means_the_documented_defaults() {
        let config = AgentSettings::default().runtime_config().expect("valid");
        assert_eq!(config, RuntimeConfig::default());
    }

    #[test]
    fn flags_set_every_guard() {
        let settings = parse(&[
            "--max-depth",
            "12",
            "--max-visits",
            "off",
            "--max-events",
            "200",
            "--max-tokens",
            "9000",
            "--max-cost",
            "0.25",
            "--handle-rate",
            "50/s",
            "--handle-burst",
            "5",
            "--publish-rate",
            "a.b=5/s:2,c.d=1/m",
            "--breaker-min-calls",
            "3",
            "--breaker-open-for",
            "2s",
            "--breaker-ignore",
            "permanent,unavailable",
            "--ack-wait",
            "45s",
        ])
        .expect("parses");
        let config = settings.runtime_config().expect("valid");
        let guards = &config.guards;
        assert_eq!(guards.depth, Some(DepthLimit { max: 12 }));
        assert_eq!(guards.cycle, None);
        assert_eq!(guards.budget.max_events, Some(200));
        assert_eq!(guards.budget.max_tokens, Some(9000));
        assert_eq!(guards.budget.max_cost_micros, Some(250_000));
        let handle = guards.handle_rate.expect("rate");
        assert_eq!(
            (handle.rate.to_string(), handle.burst),
            ("50/s".to_string(), 5)
        );
        assert_eq!(guards.publish_rates.len(), 2);
        let breaker = guards.breaker.expect("breaker");
        assert_eq!(breaker.min_calls, 3);
        assert_eq!(breaker.open_for, Duration::from_secs(2));
        assert_eq!(guards.breaker_ignores.len(), 2);
        assert_eq!(config.ack_wait, Duration::from_secs(45));
        assert!(guards.to_string().contains("max-visits off"), "{guards}");
    }

    #[test]
    fn a_file_fills_in_and_flags_win() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "max-depth = 7\nmax-events = \"off\"\nhandle-rate = \"10/s\"\nbreaker = false\n\
             publish-rate = [\"x.y=2/s\"]\n",
        )
        .expect("write");
        let settings = parse(&[
            "--config",
            path.to_str().expect("utf-8"),
            "--max-depth",
            "9",
        ])
        .expect("parses")
        .with_file()
        .expect("file reads");
        let config = settings.runtime_config().expect("valid");
        assert_eq!(
            config.guards.depth,
            Some(DepthLimit { max: 9 }),
            "the flag wins"
        );
        assert_eq!(config.guards.budget.max_events, None, "off from the file");
        assert!(config.guards.handle_rate.is_some());
        assert_eq!(config.guards.breaker, None);
        assert_eq!(config.guards.publish_rates.len(), 1);
    }

    #[test]
    fn bad_values_are_refused_with_the_setting_named() {
        let err = parse(&["--max-depth", "deep"]).expect_err("not a number");
        assert!(err.to_string().contains("--max-depth"), "{err}");
        let err = parse(&["--handle-rate", "fast"]).expect_err("not a rate");
        assert!(err.to_string().contains("COUNT/PERIOD"), "{err}");
        let err = parse(&["--publish-rate", "a.b"]).expect_err("no rate");
        assert!(err.to_string().contains("TYPE=RATE"), "{err}");

        let zero = parse(&["--max-depth", "0"]).expect("parses");
        assert_eq!(zero.runtime_config().expect_err("zero").field, "max-depth");
        let burst_alone = parse(&["--handle-burst", "3"]).expect("parses");
        assert_eq!(
            burst_alone.runtime_config().expect_err("no rate").field,
            "handle-burst"
        );
        let rate = parse(&["--breaker-failure-rate", "2"]).expect("parses");
        assert!(rate.runtime_config().is_err());
    }

    #[test]
    fn the_help_lists_the_variables_the_connection_reads() {
        use clap::CommandFactory;
        let help = AgentSettings::command().render_long_help().to_string();
        for var in crate::connect::NATS_ENV {
            assert!(help.contains(var.name), "{} missing from\n{help}", var.name);
        }
    }

    #[test]
    fn a_bad_file_is_refused_with_its_path_and_the_key() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "max-dept = 7\n").expect("write");
        let err = AgentSettings::from_file(&path).expect_err("unknown key");
        assert!(err.reason.contains("max-dept"), "{err}");
        assert!(err.reason.contains("agent.toml"), "{err}");
        let missing = AgentSettings::from_file(&dir.path().join("none.toml")).expect_err("missing");
        assert!(missing.reason.contains("cannot read"), "{missing}");
    }
}
