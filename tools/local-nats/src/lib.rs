//! A real local `nats-server` with JetStream, for tests, benchmarks and `choreo up`.
//!
//! By default every [`NatsServer`] is its own process on a random loopback port with its own
//! temporary store directory, killed when dropped; [`Options`] choose a fixed port and a folder
//! that outlives the process (what `choreo up` uses). [`NatsServer::kill`] and [`NatsServer::start_again`]
//! stop it hard (SIGKILL) and bring it back on the same port and store, for fault tests.
//!
//! The binary is found, in order, at `$NATS_SERVER_BIN`, as `nats-server` on `PATH`, or in the
//! project-local install that `scripts/ensure-nats-server` makes (`.tools/nats/bin`).
//!
//! [`NatsCluster`] is three of them in one JetStream cluster, for tests of a server lost and a
//! stream's leader elected again. [`process`] starts agents as their own processes beside it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), choreo_local_nats::TestServerError> {
//! let server = choreo_local_nats::NatsServer::start().await?;
//! let client = async_nats::connect(server.url()).await.expect("connects");
//! # Ok(()) }
//! ```

pub mod cluster;
pub mod process;

pub use cluster::NatsCluster;

use std::path::{Path, PathBuf};

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

/// How long a server gets to open its port and enable JetStream.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How often readiness is re-checked while waiting.
const READY_POLL: Duration = Duration::from_millis(20);
/// How long one readiness probe waits for JetStream's answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a test server could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum TestServerError {
    #[error(
        "no nats-server binary found: set NATS_SERVER_BIN, put nats-server on PATH, \
         or run scripts/ensure-nats-server"
    )]
    BinaryNotFound,
    #[error("could not start nats-server at {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("could not prepare the server's directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("nats-server did not become ready within {timeout:?}; its log:\n{log}")]
    NotReady { timeout: Duration, log: String },
    #[error("the cluster has nodes 0 to {}, not {node}", size - 1)]
    NoSuchNode { node: usize, size: usize },
    #[error("could not ask the cluster {what}: {source}")]
    Question {
        what: String,
        #[source]
        source: async_nats::Error,
    },
    #[error(
        "stream {stream} reported no new leader on a running server within {timeout:?}{}",
        last.as_ref().map(|err| format!(" (last answer: {err})")).unwrap_or_default()
    )]
    NoStreamLeader {
        stream: String,
        timeout: Duration,
        #[source]
        last: Option<Box<TestServerError>>,
    },
    #[error(
        "stream {stream} did not have every replica current within {timeout:?}{}",
        last.as_ref().map(|err| format!(" (last answer: {err})")).unwrap_or_default()
    )]
    NotCurrent {
        stream: String,
        timeout: Duration,
        #[source]
        last: Option<Box<TestServerError>>,
    },
}

/// How to start a server; `Default` is a random port and a temporary folder.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The server's folder (store, log, ports file). Kept after the server stops.
    pub dir: Option<PathBuf>,
    /// The client port; random when `None`.
    pub port: Option<u16>,
    /// Extra command-line arguments.
    pub args: Vec<String>,
    /// nats-server configuration files to include (an authorization block, a `tls` block: what
    /// `choreo auth` writes). Copied into the server's folder, since nats-server reads includes
    /// relative to the configuration; paths inside them should be absolute.
    pub config_includes: Vec<PathBuf>,
}

/// A running `nats-server -js`, killed on drop.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    dir: PathBuf,
    /// Deleted on drop, when the folder is temporary.
    _temporary: Option<TempDir>,
    port: Option<u16>,
    extra_args: Vec<String>,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server on a random port with a fresh store directory, and waits until
    /// JetStream answers.
    pub async fn start() -> Result<Self, TestServerError> {
        Self::start_with_args(Vec::<String>::new()).await
    }

    /// Like [`NatsServer::start`], with extra command-line arguments (limits, auth, ...).
    pub async fn start_with_args<I, S>(args: I) -> Result<Self, TestServerError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::start_with(Options {
            args: args.into_iter().map(Into::into).collect(),
            ..Options::default()
        })
        .await
    }

    /// Starts a server as `options` say.
    pub async fn start_with(options: Options) -> Result<Self, TestServerError> {
        let mut server = Self::prepare(options)?;
        server.spawn_and_wait().await?;
        Ok(server)
    }

    /// The server's folders and settings, with no process started yet.
    fn prepare(options: Options) -> Result<Self, TestServerError> {
        let (dir, temporary) = match options.dir {
            Some(dir) => {
                std::fs::create_dir_all(&dir)?;
                (dir, None)
            }
            None => {
                let temporary = tempfile::Builder::new().prefix("choreo-nats-").tempdir()?;
                (temporary.path().to_path_buf(), Some(temporary))
            }
        };
        let mut extra_args = options.args;
        if !options.config_includes.is_empty() {
            let mut config =
                String::from("# Written by choreo_local_nats: the includes asked for.\n");
            for (index, include) in options.config_includes.iter().enumerate() {
                let copy = format!("include-{index}.conf");
                std::fs::copy(include, dir.join(&copy))?;
                config.push_str(&format!("include \"{copy}\"\n"));
            }
            let path = dir.join("choreo.conf");
            std::fs::write(&path, config)?;
            extra_args.push("-c".into());
            extra_args.push(path.display().to_string());
        }
        Ok(NatsServer {
            binary: find_binary()?,
            dir,
            _temporary: temporary,
            port: options.port,
            extra_args,
            child: None,
        })
    }

    /// The client URL, e.g. `nats://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port.unwrap_or_default())
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// The JetStream store directory, kept across [`NatsServer::kill`] and restart.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.join("store")
    }

    /// Whether the process is running (it was not killed, or was started again since).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server with SIGKILL (no clean shutdown) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store directory, and waits until ready.
    pub async fn start_again(&mut self) -> Result<(), TestServerError> {
        self.kill();
        self.spawn_and_wait().await
    }

    /// Kills the server (SIGKILL) and starts it again at once on the same port and store.
    pub async fn restart(&mut self) -> Result<(), TestServerError> {
        self.start_again().await
    }

    /// The server's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn ports_dir(&self) -> PathBuf {
        self.dir.join("ports")
    }

    async fn spawn_and_wait(&mut self) -> Result<(), TestServerError> {
        self.spawn()?;
        self.wait_ready().await
    }

    /// Starts the process without waiting for it: a cluster's servers must all be started
    /// before any of them can be ready (JetStream needs a quorum to elect its meta leader).
    fn spawn(&mut self) -> Result<(), TestServerError> {
        let ports_dir = self.ports_dir();
        // A stale ports file from the previous run would report the old process as ready.
        if ports_dir.exists() {
            std::fs::remove_dir_all(&ports_dir)?;
        }
        std::fs::create_dir_all(&ports_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let port = self
            .port
            .map_or_else(|| "-1".to_string(), |p| p.to_string());
        let child = Command::new(&self.binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port, "--store_dir"])
            .arg(self.store_dir())
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|source| TestServerError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the started process listens and JetStream answers through it.
    async fn wait_ready(&mut self) -> Result<(), TestServerError> {
        let ports_dir = self.ports_dir();
        let pid = self.child.as_ref().map(Child::id);
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(port) = pid.and_then(|pid| read_client_port(&ports_dir, pid))
                && jetstream_answers(port).await
            {
                self.port = Some(port);
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .is_none_or(|child| matches!(child.try_wait(), Ok(Some(_))));
            if exited || tokio::time::Instant::now() >= deadline {
                return Err(TestServerError::NotReady {
                    timeout: READY_TIMEOUT,
                    log: self.log(),
                });
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The path to the nats-server binary, or why there is none.
pub fn find_binary() -> Result<PathBuf, TestServerError> {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
        return Ok(PathBuf::from(path));
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/nats/bin/nats-server");
    if local.is_file() {
        return Ok(local);
    }
    Err(TestServerError::BinaryNotFound)
}

/// Reads the client port from the ports file nats-server writes once it listens.
fn read_client_port(ports_dir: &Path, pid: u32) -> Option<u16> {
    let suffix = format!("_{pid}.ports");
    let entry = std::fs::read_dir(ports_dir)
        .ok()?
        .filter_map(Result::ok)
        .find(|entry| entry.file_name().to_string_lossy().ends_with(&suffix))?;
    let ports: serde_json::Value =
        serde_json::from_slice(&std::fs::read(entry.path()).ok()?).ok()?;
    let url = ports.get("nats")?.as_array()?.first()?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

/// Whether the server on `port` greets with `"tls_required":true`: it is up, and only the
/// probe's lack of the CA kept it out.
async fn requires_tls(port: u16) -> bool {
    use tokio::io::AsyncBufReadExt as _;
    let Ok(Ok(stream)) = tokio::time::timeout(
        PROBE_TIMEOUT,
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    else {
        return false;
    };
    let mut info = String::new();
    let mut reader = tokio::io::BufReader::new(stream);
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, reader.read_line(&mut info)).await,
        Ok(Ok(_))
    ) && info.starts_with("INFO ")
        && info.contains(r#""tls_required":true"#)
}

/// True once a client can connect and JetStream answers an account query. A server configured
/// with users, or requiring TLS, refuses this anonymous probe; the refusal itself shows it is up (JetStream is
/// enabled before nats-server accepts clients).
async fn jetstream_answers(port: u16) -> bool {
    let client = match async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(1))
        .connect(format!("nats://127.0.0.1:{port}"))
        .await
    {
        Ok(client) => client,
        Err(err) => {
            return match err.kind() {
                async_nats::ConnectErrorKind::AuthorizationViolation
                | async_nats::ConnectErrorKind::Authentication => true,
                // The probe trusts no CA, so a server that requires TLS fails its handshake.
                async_nats::ConnectErrorKind::Tls | async_nats::ConnectErrorKind::Io => {
                    requires_tls(port).await
                }
                _ => false,
            };
        }
    };
    let mut jetstream = async_nats::jetstream::new(client.clone());
    // A cluster still forming may not answer at all: probe again soon rather than wait out the
    // default 5 s each time.
    jetstream.set_timeout(PROBE_TIMEOUT);
    let answered = jetstream.query_account().await.is_ok();
    let _ = client.drain().await;
    answered
}
