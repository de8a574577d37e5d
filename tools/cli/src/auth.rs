//! `choreo auth`: credentials that let each process do exactly its job.
//!
//! - `generate` reads the agents' manifests (as `choreo graph` does) and writes a nats-server
//!   authorization file with one nkey user per agent, one for the gateway, one for the stream
//!   set-up and one for the operators' CLI ([`users`] says what each may do; public keys only,
//!   so readable by all), and each user's seed (`<user>.nk`) and environment (`<user>.env`),
//!   readable by the owner only. Seeds already
//!   in the folder are kept, so generating again after a manifest changes rewrites the
//!   permissions without handing out new keys.
//! - `tls` makes a CA, a server certificate (localhost, 127.0.0.1, and the names given) and a
//!   client certificate, for a test or local deployment, and the nats-server `tls` block that
//!   uses them.

mod tls;
pub mod users;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::Failure;
use crate::graph::ManifestSources;

#[derive(Debug, clap::Args)]
pub struct AuthArgs {
    #[command(subcommand)]
    command: AuthCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AuthCommand {
    /// Write nats-server users (nkeys) and their seeds, each allowed only what its manifest says.
    Generate(GenerateArgs),
    /// Make a CA, a server certificate and a client certificate, and nats-server's tls block.
    Tls(tls::TlsArgs),
}

#[derive(Debug, clap::Args)]
struct GenerateArgs {
    #[command(flatten)]
    sources: ManifestSources,
    /// The folder to write auth.conf, <user>.nk and <user>.env into (created, 0700).
    #[arg(long, short, value_name = "DIR", default_value = "choreo-auth")]
    out: PathBuf,
    /// The event types the gateway may publish as roots, as its tokens write them
    /// (`review.requested`, `review.*`, `*`), comma-separated [default: the entry points, the
    /// types some agent handles and none emits].
    #[arg(long, value_name = "TYPES", value_delimiter = ',')]
    gateway_types: Vec<String>,
}

pub async fn run(args: AuthArgs) -> Result<(), Failure> {
    match args.command {
        AuthCommand::Generate(args) => generate(args).await,
        AuthCommand::Tls(args) => tls::run(args),
    }
}

async fn generate(args: GenerateArgs) -> Result<(), Failure> {
    let manifests = args.sources.load().await?;
    let gateway_types = if args.gateway_types.is_empty() {
        crate::graph::entry_points(&manifests)
    } else {
        args.gateway_types
    };
    for pattern in &gateway_types {
        let name = pattern.strip_suffix(".*").unwrap_or(pattern);
        if name != "*" {
            choreo_bus::EventType::new(name)
                .map_err(|err| Failure::usage(format!("--gateway-types {pattern:?}: {err}")))?;
        }
    }
    let users = users::all(&manifests, &gateway_types).map_err(Failure::data)?;
    create_private_dir(&args.out)?;
    let mut keys = Vec::new();
    for user in &users {
        let pair = key_pair(&args.out.join(format!("{}.nk", user.name)))?;
        let seed = pair
            .seed()
            .map_err(|err| Failure::failed(format!("cannot write {}'s seed: {err}", user.name)))?;
        let mut env = format!("NATS_NKEY_SEED={seed}\n");
        if let Some(prefix) = &user.inbox_prefix {
            env.push_str(&format!("NATS_INBOX_PREFIX={prefix}\n"));
        }
        write_private(&args.out.join(format!("{}.env", user.name)), &env)?;
        keys.push(pair.public_key());
    }
    let agents: Vec<&str> = manifests.iter().map(|m| m.name.as_str()).collect();
    let from = format!("the manifests of {}", agents.join(", "));
    let config = users::authorization(&users, &keys, &from);
    // Public keys and permissions only: readable by nats-server whatever user it runs as.
    let conf = args.out.join("auth.conf");
    write_public(&conf, &config)?;
    println!(
        "wrote {} ({} users: {} agents, {}, {}, {}) and each user's <user>.nk and <user>.env in {}",
        conf.display(),
        users.len(),
        agents.len(),
        users::GATEWAY,
        users::STREAMS,
        users::OPERATOR,
        args.out.display()
    );
    println!(
        "gateway may publish: {}; include auth.conf in nats-server's configuration",
        gateway_types.join(", ")
    );
    Ok(())
}

/// The key in `path` if there is one (so generating again keeps every user's key), else a new
/// one written there.
fn key_pair(path: &Path) -> Result<nkeys::KeyPair, Failure> {
    match std::fs::read_to_string(path) {
        Ok(seed) => nkeys::KeyPair::from_seed(seed.trim()).map_err(|err| {
            Failure::data(format!(
                "{} holds no user seed ({err}); remove it to make a new key",
                path.display()
            ))
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let pair = nkeys::KeyPair::new_user();
            let seed = pair
                .seed()
                .map_err(|err| Failure::failed(format!("cannot make a seed: {err}")))?;
            write_private(path, &format!("{seed}\n"))?;
            Ok(pair)
        }
        Err(err) => Err(Failure::no_input(format!(
            "cannot read {}: {err}",
            path.display()
        ))),
    }
}

/// Creates `dir` (and its parents) readable by its owner only.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), Failure> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|err| Failure {
        code: 73,
        message: format!("cannot create {}: {err}", dir.display()),
    })
}

/// Writes `text` to `path`, readable and writable by its owner only (secrets).
pub(crate) fn write_private(path: &Path, text: &str) -> Result<(), Failure> {
    write_file(path, text, 0o600)
}

/// Writes `text` to `path`, readable by all (public keys and certificates, which a server
/// running as another user reads).
pub(crate) fn write_public(path: &Path, text: &str) -> Result<(), Failure> {
    write_file(path, text, 0o644)
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), Failure> {
    let cannot = |err: std::io::Error| Failure {
        code: 73,
        message: format!("cannot write {}: {err}", path.display()),
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    let mut file = options.open(path).map_err(cannot)?;
    // A file that existed keeps its mode through `open`: set it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(cannot)?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    file.write_all(text.as_bytes()).map_err(cannot)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_seed_is_written_for_the_owner_only_and_kept_when_generating_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("triage.nk");
        let first = key_pair(&path).unwrap();
        let again = key_pair(&path).unwrap();
        assert_eq!(first.public_key(), again.public_key());
        assert!(first.public_key().starts_with('U'), "a user key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "not a seed").unwrap();
        let err = key_pair(&path).expect_err("refused");
        assert_eq!(err.code, 65);
        assert!(err.message.contains("triage.nk"), "{}", err.message);
    }
}
