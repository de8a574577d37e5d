//! The flags every command that talks to NATS shares, and turning library errors into exit
//! codes.

use std::path::PathBuf;

use async_nats::jetstream;
use choreo_bus::{Namespace, NatsConfig};
use secrecy::SecretString;

use crate::Failure;

/// Where NATS is, how to log in, and which namespace to work in.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "NATS_URL", default_value = choreo_bus::connect::DEFAULT_URL, global = true)]
    pub nats_url: String,
    /// NATS credentials file (JWT and nkey seed).
    #[arg(long, env = "NATS_CREDS", global = true)]
    pub creds: Option<PathBuf>,
    /// User name (with --password).
    #[arg(long, env = "NATS_USER", global = true)]
    pub user: Option<String>,
    #[arg(long, env = "NATS_PASSWORD", global = true, hide_env_values = true)]
    pub password: Option<SecretString>,
    /// Authentication token.
    #[arg(long, env = "NATS_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<SecretString>,
    /// Nkey seed.
    #[arg(long, env = "NATS_NKEY_SEED", global = true, hide_env_values = true)]
    pub nkey_seed: Option<SecretString>,
    /// CA certificate to trust for the server's TLS certificate.
    #[arg(long, env = "NATS_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// The namespace of events to work in (a sandbox namespace for replays).
    #[arg(long, env = "CHOREO_NAMESPACE", default_value = choreo_bus::names::DEFAULT_NAMESPACE, global = true)]
    pub namespace: String,
}

impl Connection {
    pub fn namespace(&self) -> Result<Namespace, Failure> {
        Namespace::new(&self.namespace).map_err(Failure::usage)
    }

    /// Connects, failing at once (exit 69, naming the URL) when the server is not there.
    pub async fn jetstream(&self) -> Result<jetstream::Context, Failure> {
        let client = self.config()?.connect().await.map_err(|err| {
            Failure::unavailable(format!(
                "cannot reach NATS at {}: {err}. Is nats-server running? Point --nats-url or \
                 NATS_URL at it (`choreo up` starts one)",
                self.nats_url
            ))
        })?;
        Ok(jetstream::new(client))
    }

    /// The connection settings: every `NATS_*` variable an agent reads works here too (client
    /// certificates, say); the flags win over it.
    pub fn config(&self) -> Result<NatsConfig, Failure> {
        let mut config = NatsConfig::from_env()
            .map_err(Failure::usage)?
            .default_client_name("choreo-cli");
        config.servers = choreo_bus::connect::parse_servers(&self.nats_url);
        config.creds_file = self.creds.clone().or(config.creds_file);
        config.user = self.user.clone().or(config.user);
        config.password = self.password.clone().or(config.password);
        config.token = self.token.clone().or(config.token);
        config.nkey_seed = self.nkey_seed.clone().or(config.nkey_seed);
        config.tls_ca = self.tls_ca.clone().or(config.tls_ca);
        config.connect_timeout = Some(std::time::Duration::from_secs(3));
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        connection: Connection,
    }

    #[test]
    fn debug_shows_no_password_token_or_seed() {
        let flags = Flags::try_parse_from([
            "choreo",
            "--user",
            "alice",
            "--password",
            "hunter2",
            "--token",
            "tok-secret",
            "--nkey-seed",
            "SUAseed",
        ])
        .expect("valid");
        let shown = format!("{:?}", flags.connection);
        assert!(shown.contains("alice"), "{shown}");
        for secret in ["hunter2", "tok-secret", "SUAseed"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
}
