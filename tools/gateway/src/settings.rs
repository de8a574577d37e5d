//! The gateway's settings: every one a flag and an environment variable of the same name
//! (`--max-body` / `CHOREO_GATEWAY_MAX_BODY`); `choreo-gateway --help` lists them. Connection
//! settings are the `NATS_*` variables every choreo process reads.

use std::net::SocketAddr;
use std::time::Duration;

use choreo_bus::ValidationError;
use choreo_bus::guard::{BudgetLimits, Rate, RateLimit};
use choreo_bus::names::{DEFAULT_NAMESPACE, Namespace};
use choreo_bus::settings::{CostLimit, HumanDuration, Limit};
use secrecy::{ExposeSecret, SecretString};

use crate::tokens::Tokens;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "choreo-gateway",
    about = "The choreo HTTP gateway: publishes events, CloudEvents and GitHub webhooks into \
             the choreography.",
    after_help = choreo_bus::connect::env_help()
)]
pub struct GatewaySettings {
    /// Address to listen on.
    #[arg(long, env = "CHOREO_GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Bearer tokens and the event types each may publish:
    /// `NAME=TOKEN:TYPE,TYPE;NAME=TOKEN:*`. A type ending in `.*` allows every type under it;
    /// `*` allows all. Tokens are at least 16 characters.
    //
    // Kept as secret text and parsed by `tokens()`, so that a refusal never echoes a token the
    // way clap echoes a bad value.
    #[arg(
        long,
        env = "CHOREO_GATEWAY_TOKENS",
        hide_env_values = true,
        default_value = ""
    )]
    pub tokens: SecretString,
    /// Sources each token's CloudEvents may claim besides the token's name:
    /// `NAME=SOURCE,SOURCE;NAME=SOURCE`. A source ending in `*` allows every source starting
    /// with the rest; `*` allows any. Any other source is refused (403 forbidden-source).
    #[arg(long, env = "CHOREO_GATEWAY_SOURCES", default_value = "")]
    pub sources: String,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "CHOREO_GATEWAY_MAX_BODY", default_value_t = 1024 * 1024)]
    pub max_body: usize,
    /// Requests each token (and the GitHub webhook) may make, e.g. 50/s or 600/m.
    #[arg(long, env = "CHOREO_GATEWAY_RATE", default_value = "50/s")]
    pub rate: Rate,
    /// Requests a token may make back to back before the rate applies.
    #[arg(long, env = "CHOREO_GATEWAY_BURST", default_value_t = 100)]
    pub burst: u32,
    /// How long to wait for the stream to confirm a publish before answering 503.
    #[arg(long, env = "CHOREO_GATEWAY_PUBLISH_TIMEOUT", default_value = "5s")]
    pub publish_timeout: HumanDuration,
    /// Secret of the GitHub webhook (its X-Hub-Signature-256). Unset: the webhook answers 404.
    #[arg(long, env = "CHOREO_GITHUB_WEBHOOK_SECRET", hide_env_values = true)]
    pub github_webhook_secret: Option<SecretString>,
    /// The namespace events are published into.
    #[arg(long, env = "CHOREO_NAMESPACE", default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Events agents may emit in one run; a run past it is refused at the door.
    #[arg(
        long,
        env = "CHOREO_MAX_EVENTS",
        value_name = "N|off",
        default_value = "1000"
    )]
    pub max_events: Limit,
    /// LLM tokens one run may spend; a run past it is refused at the door.
    #[arg(
        long,
        env = "CHOREO_MAX_TOKENS",
        value_name = "N|off",
        default_value = "500000"
    )]
    pub max_tokens: Limit,
    /// What one run's model calls may cost, in the agents' price unit; a run past it is
    /// refused at the door.
    #[arg(
        long,
        env = "CHOREO_MAX_COST",
        value_name = "AMOUNT|off",
        default_value = "off"
    )]
    pub max_cost: CostLimit,
}

impl GatewaySettings {
    /// Checks what clap cannot: a namespace that is a valid name, a burst of at least one, a
    /// body cap and a timeout above zero, a secret that is not blank. The tokens are checked
    /// where they are parsed, [`GatewaySettings::tokens`].
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.namespace()?;
        if self.burst == 0 {
            return Err(ValidationError::new("burst", "must be at least 1"));
        }
        if self.max_body == 0 {
            return Err(ValidationError::new("max-body", "must be above zero"));
        }
        if self.publish_timeout.0.is_zero() {
            return Err(ValidationError::new(
                "publish-timeout",
                "must be above zero",
            ));
        }
        if self
            .github_webhook_secret
            .as_ref()
            .is_some_and(|secret| secret.expose_secret().trim().is_empty())
        {
            return Err(ValidationError::new(
                "github-webhook-secret",
                "is set but blank; unset it to turn the webhook off",
            ));
        }
        Ok(())
    }

    pub fn namespace(&self) -> Result<Namespace, ValidationError> {
        Namespace::new(self.namespace.clone())
            .map_err(|err| ValidationError::new("namespace", err.reason))
    }

    /// The configured tokens, with the sources each may claim.
    pub fn tokens(&self) -> Result<Tokens, ValidationError> {
        self.tokens
            .expose_secret()
            .parse::<Tokens>()?
            .with_sources(&self.sources)
    }

    pub fn rate_limit(&self) -> RateLimit {
        RateLimit {
            rate: self.rate,
            burst: self.burst,
        }
    }

    pub fn budget(&self) -> BudgetLimits {
        BudgetLimits {
            max_events: self.max_events.0,
            max_tokens: self.max_tokens.0,
            max_cost_micros: self.max_cost.0,
        }
    }

    pub fn publish_timeout(&self) -> Duration {
        self.publish_timeout.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_help_lists_the_variables_the_connection_reads() {
        let help = GatewaySettings::command().render_long_help().to_string();
        assert!(help.contains(&choreo_bus::connect::env_help()), "{help}");
    }
}
