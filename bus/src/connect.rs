//! How to reach NATS: servers, credentials, TLS, and what happens when the connection drops.
//!
//! # Reconnects
//!
//! Once connected, the client reconnects by itself, forever, with a backoff that grows to a few
//! seconds between tries; while it is away, publishes wait (up to the JetStream request timeout)
//! and pulls resume when it is back. A lost connection is never a reason for an agent to exit:
//! unacknowledged work is redelivered by the server. The *first* connection is different: by
//! default a server that is not there is an error at once ([`InitialConnect::Fail`]), which is
//! what a CLI wants; agents in containers that may start before NATS choose
//! [`InitialConnect::Retry`].
//!
//! A connection that goes silent without closing (a node cut off the network, a host gone)
//! is only found by pings: the client pings every `NATS_PING_INTERVAL` (10 s, where async-nats
//! would wait a minute) and takes the connection for dead when two pings go unanswered, then
//! reconnects to another server of `NATS_URL`. So a cut-off node costs its clients about three
//! intervals, not three minutes.
//!
//! # Secrets
//!
//! Passwords, tokens and nkey seeds are [`SecretString`]s, so a configuration can be logged
//! with `{:?}`: they print as `[REDACTED]`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

/// What to do when the first connection attempt fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InitialConnect {
    /// Return [`ConnectError`] at once, naming the URL.
    #[default]
    Fail,
    /// Keep trying in the background; `connect` returns at once and operations wait.
    Retry,
}

/// Connection settings. Build with [`NatsConfig::new`] or [`NatsConfig::from_env`].
///
/// ```no_run
/// # async fn demo() -> Result<(), choreo_bus::connect::ConnectError> {
/// let client = choreo_bus::NatsConfig::new("nats://127.0.0.1:4222")
///     .client_name("my-agent")
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct NatsConfig {
    /// One or more server URLs, comma-separated in `NATS_URL`.
    pub servers: Vec<String>,
    pub user: Option<String>,
    pub password: Option<SecretString>,
    pub token: Option<SecretString>,
    pub nkey_seed: Option<SecretString>,
    pub creds_file: Option<PathBuf>,
    /// CA certificate(s) to trust for the server's TLS certificate.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key, for mutual TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub require_tls: bool,
    /// Shown in the server's connection list (`nats server report connections`).
    pub client_name: Option<String>,
    pub initial_connect: InitialConnect,
    /// How long one connection attempt may take. Default 5 s.
    pub connect_timeout: Option<Duration>,
    /// How often the client pings the server; see the module's notes. Default
    /// [`DEFAULT_PING_INTERVAL`].
    pub ping_interval: Option<Duration>,
    /// The prefix of this connection's reply subjects (`_INBOX` when `None`): credentials that
    /// may read only their own inbox (`choreo auth generate`) name one.
    pub inbox_prefix: Option<String>,
}

/// How often a client pings its server when nothing says otherwise: a silent connection is
/// given up after two unanswered pings, so this bounds how long a cut-off node holds its
/// clients.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(10);

/// The server URL used when none is given.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// An environment variable [`NatsConfig::from_env`] reads.
#[derive(Debug, Clone, Copy)]
pub struct NatsVar {
    pub name: &'static str,
    /// What it holds, for `--help`.
    pub meaning: &'static str,
    /// What applies when it is unset, for `--help`.
    pub default: Option<&'static str>,
    /// Puts a value (never empty) into the configuration.
    apply: fn(&mut NatsConfig, String) -> Result<(), ConnectError>,
}

/// Every variable [`NatsConfig::from_env`] reads, in the order `--help` lists them. This is the
/// one list: `from_env` reads by it and [`env_help`] renders it, so no help names a variable
/// that nothing reads.
pub const NATS_ENV: [NatsVar; 14] = [
    NatsVar {
        name: "NATS_URL",
        meaning: "server URL(s), comma-separated",
        default: Some(DEFAULT_URL),
        apply: |config, value| {
            config.servers = parse_servers(&value);
            Ok(())
        },
    },
    NatsVar {
        name: "NATS_USER",
        meaning: "user name, with NATS_PASSWORD",
        default: None,
        apply: |config, value| {
            config.user = Some(value);
            Ok(())
        },
    },
    NatsVar {
        name: "NATS_PASSWORD",
        meaning: "password, with NATS_USER",
        default: None,
        apply: |config, value| {
            config.password = Some(value.into());
            Ok(())
        },
    },
    NatsVar {
        name: "NATS_TOKEN",
        meaning: "authentication token",
        default: None,
        apply: |config, value| {
            config.token = Some(value.into());
            Ok(())
        },
    },
    NatsVar {
        name: "NATS_NKEY_SEED",
        meaning: "nkey seed",
        default: None,
        apply: |config, value| {
            config.nkey_seed = Some(value.into());
            Ok(())
        },
    },
    NatsVar {
        name: "NATS_NKEY_SEED_FILE",
        meaning: "file holding the nkey seed (what `choreo auth generate` writes)",
        default: None,
        apply: |config, value| {
            let seed = std::fs::read_to_string(&value).map_err(|err| {
                ConnectError::Config(format!(
                    "NATS_NKEY_SEED_FILE={value:?}: cannot read it: {err}"
                ))
            })?;
            config.nkey_seed = Some(seed.trim().to_string().into());
            Ok(())
        },
    },
    NatsVar {
        name: "NATS_INBOX_PREFIX",
        meaning: "prefix of the connection's reply subjects; credentials that allow only their \
                  own inbox name it (`_INBOX_<user>`)",
        default: Some("_INBOX"),
        apply: |config, value| {
            crate::names::validate_label("NATS_INBOX_PREFIX", &value)
                .map_err(|err| ConnectError::Config(err.to_string()))?;
            config.inbox_prefix = Some(value);
            Ok(())
        },
    },
    NatsVar {
        name: "NATS_CREDS",
        meaning: "credentials file (JWT and nkey seed)",
        default: None,
        apply: |config, value| {
            config.creds_file = Some(value.into());
            Ok(())
        },
    },
    NatsVar {
        name: "NATS_TLS_CA",
        meaning: "CA certificate(s) to trust for the server's certificate",
        default: None,
        apply: |config, value| {
            config.tls_ca = Some(value.into());
            Ok(())
        },
    },
    NatsVar {
        name: "NATS_TLS_CERT",
        meaning: "client certificate for mutual TLS, with NATS_TLS_KEY",
        default: None,
        apply: |config, value| {
            config.tls_cert = Some(value.into());
            Ok(())
        },
    },
    NatsVar {
        name: "NATS_TLS_KEY",
        meaning: "the client certificate's key",
        default: None,
        apply: |config, value| {
            config.tls_key = Some(value.into());
            Ok(())
        },
    },
    NatsVar {
        name: "NATS_REQUIRE_TLS",
        meaning: "true to refuse a plain connection",
        default: Some("false"),
        apply: |config, value| {
            config.require_tls = match value.as_str() {
                "false" | "0" => false,
                "true" | "1" => true,
                other => {
                    return Err(ConnectError::Config(format!(
                        "NATS_REQUIRE_TLS={other:?}: use true or false"
                    )));
                }
            };
            Ok(())
        },
    },
    NatsVar {
        name: "NATS_PING_INTERVAL",
        meaning: "how often to ping the server; two unanswered pings and the client reconnects \
                  elsewhere",
        default: Some("10s"),
        apply: |config, value| {
            let interval = humantime::parse_duration(&value)
                .ok()
                .filter(|interval| !interval.is_zero())
                .ok_or_else(|| {
                    ConnectError::Config(format!(
                        "NATS_PING_INTERVAL={value:?}: give a duration such as 10s or 500ms"
                    ))
                })?;
            config.ping_interval = Some(interval);
            Ok(())
        },
    },
    NatsVar {
        name: "NATS_CLIENT_NAME",
        meaning: "name in the server's connection list",
        default: Some("the process's name"),
        apply: |config, value| {
            config.client_name = Some(value);
            Ok(())
        },
    },
];

/// What a choreo process reads from the environment besides its flags, for the end of its
/// `--help`: the connection ([`NATS_ENV`]) and the logs ([`crate::telemetry`]).
pub fn env_help() -> String {
    let width = NATS_ENV.iter().map(|var| var.name.len()).max().unwrap_or(0);
    let mut help = String::from("Connection (environment):\n");
    for var in &NATS_ENV {
        // Writing to a String cannot fail.
        let _ = write!(help, "  {:width$}  {}", var.name, var.meaning);
        if let Some(default) = var.default {
            let _ = write!(help, " [default: {default}]");
        }
        help.push('\n');
    }
    help.push('\n');
    help.push_str(crate::telemetry::ENV_HELP);
    help
}

/// Server URLs written as one comma-separated list, as in `NATS_URL`.
pub fn parse_servers(list: &str) -> Vec<String> {
    list.split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

impl NatsConfig {
    pub fn new(url: impl Into<String>) -> Self {
        NatsConfig {
            servers: vec![url.into()],
            ..NatsConfig::default()
        }
    }

    /// Reads the variables of [`NATS_ENV`] (`NATS_URL`, credentials, TLS); an empty one counts
    /// as unset.
    pub fn from_env() -> Result<Self, ConnectError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`NatsConfig::from_env`] with the variables looked up by `var`.
    pub fn from_vars(mut var: impl FnMut(&str) -> Option<String>) -> Result<Self, ConnectError> {
        let mut config = NatsConfig::new(DEFAULT_URL);
        for entry in &NATS_ENV {
            if let Some(value) = var(entry.name).filter(|value| !value.is_empty()) {
                (entry.apply)(&mut config, value)?;
            }
        }
        Ok(config)
    }

    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = Some(name.into());
        self
    }

    /// Names the connection `name` unless a name is set already (by `NATS_CLIENT_NAME`).
    pub fn default_client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name.get_or_insert_with(|| name.into());
        self
    }

    pub fn initial_connect(mut self, behaviour: InitialConnect) -> Self {
        self.initial_connect = behaviour;
        self
    }

    /// The server URLs as one string, for messages.
    pub fn servers_display(&self) -> String {
        self.servers.join(",")
    }

    /// Connects with these settings.
    pub async fn connect(&self) -> Result<async_nats::Client, ConnectError> {
        let mut options = async_nats::ConnectOptions::new()
            .connection_timeout(self.connect_timeout.unwrap_or(Duration::from_secs(5)))
            .ping_interval(self.ping_interval.unwrap_or(DEFAULT_PING_INTERVAL));
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.expose_secret().into());
        } else if self.user.is_some() || self.password.is_some() {
            return Err(ConnectError::Config(
                "NATS user and password go together: set both or neither".into(),
            ));
        }
        if let Some(token) = &self.token {
            options = options.token(token.expose_secret().into());
        }
        if let Some(seed) = &self.nkey_seed {
            options = options.nkey(seed.expose_secret().into());
        }
        if let Some(path) = &self.creds_file {
            options = options.credentials_file(path).await.map_err(|err| {
                ConnectError::Config(format!(
                    "cannot read credentials file {}: {err}",
                    path.display()
                ))
            })?;
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone());
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                options = options.add_client_certificate(cert.clone(), key.clone());
            }
            (None, None) => {}
            _ => {
                return Err(ConnectError::Config(
                    "a TLS client certificate and its key go together: set both or neither".into(),
                ));
            }
        }
        if self.require_tls {
            options = options.require_tls(true);
        }
        if let Some(name) = &self.client_name {
            options = options.name(name);
        }
        if let Some(prefix) = &self.inbox_prefix {
            options = options.custom_inbox_prefix(prefix);
        }
        // Refusals come as server errors, after the fact: named here and to whoever waits.
        options = options.event_callback(|event| async move {
            crate::permissions::observe(&event);
        });
        if self.initial_connect == InitialConnect::Retry {
            options = options.retry_on_initial_connect();
        }
        if self.servers.is_empty() {
            return Err(ConnectError::Config("no NATS server URL given".into()));
        }
        let addrs = self
            .servers
            .iter()
            .map(|s| s.parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| {
                ConnectError::Config(format!("bad NATS URL in {}: {err}", self.servers_display()))
            })?;
        options
            .connect(addrs)
            .await
            .map_err(|source| ConnectError::Unreachable {
                url: self.servers_display(),
                source,
            })
    }
}

/// Why there is no connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("bad NATS configuration: {0}")]
    Config(String),
    #[error("cannot reach NATS at {url}: {source}; is nats-server running there?")]
    Unreachable {
        url: String,
        source: async_nats::ConnectError,
    },
}

impl ConnectError {
    /// A configuration error will fail the same way again; an unreachable server may come up.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ConnectError::Unreachable { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_secrets() {
        let config = NatsConfig {
            user: Some("alice".into()),
            password: Some("hunter2".into()),
            token: Some("tok-secret".into()),
            nkey_seed: Some("SUAseed".into()),
            ..NatsConfig::new("nats://example:4222")
        };
        let shown = format!("{config:?}");
        assert!(shown.contains("alice"));
        for secret in ["hunter2", "tok-secret", "SUAseed"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    /// The `NATS_*` names a help text mentions.
    fn nats_names(help: &str) -> std::collections::BTreeSet<String> {
        help.split(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .filter(|word| word.starts_with("NATS_"))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn the_help_names_exactly_the_variables_from_env_reads() {
        let mut read = std::collections::BTreeSet::new();
        NatsConfig::from_vars(|name| {
            read.insert(name.to_string());
            None
        })
        .expect("nothing set is valid");
        let help = env_help();
        assert_eq!(nats_names(&help), read, "{help}");
        for retired in ["NATS_NKEY", "NATS_CA", "NATS_CERT", "NATS_KEY"] {
            assert!(!read.contains(retired));
        }
        assert!(help.contains("CHOREO_LOG_FORMAT"), "{help}");
    }

    #[test]
    fn variables_fill_the_config_and_unset_ones_keep_the_defaults() {
        let vars = [
            ("NATS_URL", "nats://a:4222, nats://b:4222"),
            ("NATS_USER", "alice"),
            ("NATS_PASSWORD", "hunter2"),
            ("NATS_TLS_CERT", "client.pem"),
            ("NATS_REQUIRE_TLS", "true"),
            ("NATS_TOKEN", ""),
            ("NATS_PING_INTERVAL", "3s"),
        ];
        let lookup = |name: &str| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        };
        let config = NatsConfig::from_vars(lookup).expect("valid");
        assert_eq!(config.servers, ["nats://a:4222", "nats://b:4222"]);
        assert_eq!(config.user.as_deref(), Some("alice"));
        assert_eq!(
            config.password.as_ref().map(|p| p.expose_secret()),
            Some("hunter2")
        );
        assert_eq!(config.tls_cert, Some(PathBuf::from("client.pem")));
        assert!(config.require_tls);
        assert!(config.token.is_none(), "empty counts as unset");
        assert_eq!(config.ping_interval, Some(Duration::from_secs(3)));

        let defaults = NatsConfig::from_vars(|_| None).expect("valid");
        assert_eq!(defaults.servers, [DEFAULT_URL]);
        assert!(!defaults.require_tls);

        let err =
            NatsConfig::from_vars(|name| (name == "NATS_REQUIRE_TLS").then(|| "maybe".to_string()))
                .expect_err("not a boolean");
        assert!(err.to_string().contains("NATS_REQUIRE_TLS"), "{err}");
        for bad in ["soon", "0s"] {
            let err = NatsConfig::from_vars(|name| {
                (name == "NATS_PING_INTERVAL").then(|| bad.to_string())
            })
            .expect_err("not a positive duration");
            assert!(err.to_string().contains("NATS_PING_INTERVAL"), "{err}");
        }
    }

    #[test]
    fn a_name_from_the_environment_wins_over_the_process_default() {
        let named = NatsConfig::from_vars(|name| {
            (name == "NATS_CLIENT_NAME").then(|| "edge-7".to_string())
        })
        .expect("valid")
        .default_client_name("choreo-triage");
        assert_eq!(named.client_name.as_deref(), Some("edge-7"));
        let unnamed = NatsConfig::new(DEFAULT_URL).default_client_name("choreo-triage");
        assert_eq!(unnamed.client_name.as_deref(), Some("choreo-triage"));
    }

    #[tokio::test]
    async fn a_missing_half_of_a_pair_is_a_config_error() {
        let config = NatsConfig {
            user: Some("alice".into()),
            ..NatsConfig::new(DEFAULT_URL)
        };
        let err = config.connect().await.expect_err("no password");
        assert!(matches!(err, ConnectError::Config(_)));
        assert!(!err.is_retryable());
    }

    #[tokio::test]
    async fn an_unreachable_server_is_named() {
        // Port 1 on loopback: nothing listens there, so the refusal is immediate.
        let err = NatsConfig::new("nats://127.0.0.1:1")
            .connect()
            .await
            .expect_err("nothing listens");
        assert!(err.to_string().contains("nats://127.0.0.1:1"), "{err}");
        assert!(err.is_retryable());
    }
}
