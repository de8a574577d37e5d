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

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

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
#[derive(Clone, Default)]
pub struct NatsConfig {
    /// One or more server URLs, comma-separated in `NATS_URL`.
    pub servers: Vec<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub nkey_seed: Option<String>,
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
}

/// The server URL used when none is given.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

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

    /// Reads `NATS_URL` (comma-separated; default `nats://127.0.0.1:4222`), `NATS_USER`,
    /// `NATS_PASSWORD`, `NATS_TOKEN`, `NATS_NKEY_SEED`, `NATS_CREDS`, `NATS_TLS_CA`,
    /// `NATS_TLS_CERT`, `NATS_TLS_KEY`, `NATS_REQUIRE_TLS` (`true`/`false`) and
    /// `NATS_CLIENT_NAME`.
    pub fn from_env() -> Result<Self, ConnectError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let servers = parse_servers(&var("NATS_URL").unwrap_or_else(|| DEFAULT_URL.to_string()));
        let require_tls = match var("NATS_REQUIRE_TLS").as_deref() {
            None | Some("false") | Some("0") => false,
            Some("true") | Some("1") => true,
            Some(other) => {
                return Err(ConnectError::Config(format!(
                    "NATS_REQUIRE_TLS={other:?}: use true or false"
                )));
            }
        };
        Ok(NatsConfig {
            servers,
            user: var("NATS_USER"),
            password: var("NATS_PASSWORD"),
            token: var("NATS_TOKEN"),
            nkey_seed: var("NATS_NKEY_SEED"),
            creds_file: var("NATS_CREDS").map(PathBuf::from),
            tls_ca: var("NATS_TLS_CA").map(PathBuf::from),
            tls_cert: var("NATS_TLS_CERT").map(PathBuf::from),
            tls_key: var("NATS_TLS_KEY").map(PathBuf::from),
            require_tls,
            client_name: var("NATS_CLIENT_NAME"),
            initial_connect: InitialConnect::Fail,
            connect_timeout: None,
        })
    }

    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = Some(name.into());
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
            .connection_timeout(self.connect_timeout.unwrap_or(Duration::from_secs(5)));
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.clone());
        } else if self.user.is_some() || self.password.is_some() {
            return Err(ConnectError::Config(
                "NATS user and password go together: set both or neither".into(),
            ));
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some(seed) = &self.nkey_seed {
            options = options.nkey(seed.clone());
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

/// Secrets are shown as `<redacted>`, so configs can be logged.
impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn redact<T>(secret: &Option<T>) -> Option<&'static str> {
            secret.as_ref().map(|_| "<redacted>")
        }
        f.debug_struct("NatsConfig")
            .field("servers", &self.servers)
            .field("user", &self.user)
            .field("password", &redact(&self.password))
            .field("token", &redact(&self.token))
            .field("nkey_seed", &redact(&self.nkey_seed))
            .field("creds_file", &self.creds_file)
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("require_tls", &self.require_tls)
            .field("client_name", &self.client_name)
            .field("initial_connect", &self.initial_connect)
            .finish()
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
