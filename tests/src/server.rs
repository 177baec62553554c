//! In-process test servers: the same `App::start` as `jobq-server`, on
//! `127.0.0.1:0`, with a private temp data dir and fast timings.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use jobq_server::{App, Config, RunningServer};
use tempfile::TempDir;
use tokio::net::TcpListener;

use crate::client::JobqClient;
use crate::database::{Backend, TestDatabase};

/// Timings every test server runs with, so that retries, lease expiry and the
/// reaper play out in a second or two instead of minutes. The process flags in
/// [`crate::ServerCommand::fast`] use the same values.
pub mod settings {
    use std::time::Duration;

    /// Backoff after the first failed attempt (server default of the tests).
    pub const BACKOFF_BASE: Duration = Duration::from_millis(200);
    /// Longest backoff (server default of the tests).
    pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
    /// How often the reaper looks for expired leases and timed-out attempts.
    pub const REAPER_INTERVAL: Duration = Duration::from_millis(50);
    /// Lease length when the worker does not ask for one.
    pub const LEASE_DURATION: Duration = Duration::from_secs(1);
    /// How long shutdown waits for in-flight calls.
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
    /// `max_attempts` a job gets when its spec says 0 (the server's own default, not overridden).
    pub const DEFAULT_MAX_ATTEMPTS: i32 = 25;

    /// [`BACKOFF_BASE`] etc. as `jobq-server` flags.
    pub fn flags() -> Vec<String> {
        let ms = |duration: Duration| format!("{}ms", duration.as_millis());
        vec![
            "--default-backoff-base".into(),
            ms(BACKOFF_BASE),
            "--default-backoff-max".into(),
            ms(BACKOFF_MAX),
            "--reaper-interval".into(),
            ms(REAPER_INTERVAL),
            "--lease-duration".into(),
            ms(LEASE_DURATION),
            "--shutdown-grace".into(),
            ms(SHUTDOWN_GRACE),
        ]
    }

    /// Applies the test timings to a server config.
    pub fn apply(config: &mut jobq_server::Config) {
        config.default_backoff_base = BACKOFF_BASE;
        config.default_backoff_max = BACKOFF_MAX;
        config.reaper_interval = REAPER_INTERVAL;
        config.lease_duration = LEASE_DURATION;
        config.shutdown_grace = SHUTDOWN_GRACE;
    }
}

/// Sends the in-process servers' tracing output to the test's captured output,
/// so a failing test shows what its server logged (e.g. the storage error
/// behind an INTERNAL). Level from `RUST_LOG`, `warn` by default.
fn init_server_log() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        // A global subscriber may already be set by another harness part; keep it then.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// A server running inside the test process, with connected clients.
///
/// Dropping it without [`TestServer::shutdown`] leaves the server to die with
/// the test's runtime; the data dir is removed either way.
pub struct TestServer {
    running: Option<RunningServer>,
    addr: SocketAddr,
    client: JobqClient,
    database: TestDatabase,
    // Declared last so it is removed after everything that uses it is dropped.
    data_dir: TempDir,
}

impl TestServer {
    /// Starts a server with the test timings on the backend picked by
    /// `JOBQ_TEST_BACKEND` (SQLite by default).
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// Like [`TestServer::start`], letting the test change the config first
    /// (e.g. a small `max_payload_bytes`).
    pub async fn start_with(customize: impl FnOnce(&mut Config)) -> anyhow::Result<Self> {
        Self::start_on_backend(Backend::from_env()?, customize).await
    }

    /// A server on a fresh database of `backend`, whatever `JOBQ_TEST_BACKEND` says.
    pub async fn start_on_backend(
        backend: Backend,
        customize: impl FnOnce(&mut Config),
    ) -> anyhow::Result<Self> {
        init_server_log();
        let data_dir = tempfile::Builder::new()
            .prefix("jobq-e2e-")
            .tempdir()
            .context("creating the server's temp data dir")?;
        let database = TestDatabase::provision(backend, data_dir.path()).await?;

        let mut config = Config::for_tests(data_dir.path());
        settings::apply(&mut config);
        config.database_url = database.url().map(str::to_owned);
        customize(&mut config);
        let tls = config.tls_cert.is_some();

        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let running = App::start(config, listener).await.context("App::start")?;
        let addr = running.local_addr();
        // A TLS server's shared client would need its CA: tests connect
        // their own (JobqClient::connect_tls); this one is never used.
        let client = if tls {
            JobqClient::from_channel(
                tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect_lazy(),
            )
        } else {
            JobqClient::connect(addr).await?
        };
        Ok(Self {
            running: Some(running),
            addr,
            client,
            database,
            data_dir,
        })
    }

    /// The address the server is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the server serves Prometheus metrics (with `metrics_listen` set).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.running.as_ref().and_then(RunningServer::metrics_addr)
    }

    /// Clients on the server's shared connection (cheap to clone).
    pub fn client(&self) -> JobqClient {
        self.client.clone()
    }

    /// Clients on a connection of their own, as another process would have.
    pub async fn connect(&self) -> anyhow::Result<JobqClient> {
        JobqClient::connect(self.addr).await
    }

    /// The server's data dir.
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// The database the server runs on.
    pub fn database(&self) -> &TestDatabase {
        &self.database
    }

    /// Shuts the server down gracefully and waits until it has stopped.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        match self.running.take() {
            Some(running) => running.shutdown().await.context("RunningServer::shutdown"),
            None => Ok(()),
        }
    }
}
