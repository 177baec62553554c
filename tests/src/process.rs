//! The real server binary as a child process: for what only a process can
//! show (kill -9, SIGTERM, exit codes, flags and environment variables).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::client::JobqClient;
use crate::database::TestDatabase;
use crate::server::settings;

/// How long the binary may take to print its `listening on` line (it runs the
/// migrations first).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// How much of the server's stderr an error message quotes.
const STDERR_TAIL_BYTES: usize = 4000;

/// What the server prints on stdout once bound, followed by the address.
const LISTENING_PREFIX: &str = "listening on ";

/// How to start the server binary: its path, flags and environment.
#[derive(Debug, Clone)]
pub struct ServerCommand {
    binary: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
}

impl ServerCommand {
    /// The binary with no flags at all (and no `JOBQ_*` variable inherited
    /// from the test's environment).
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            args: Vec::new(),
            envs: Vec::new(),
        }
    }

    /// The binary on `127.0.0.1:0` with `data_dir`, `database` and the test timings.
    pub fn fast(binary: impl Into<PathBuf>, data_dir: &Path, database: &TestDatabase) -> Self {
        let mut command = Self::new(binary)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir);
        if let Some(url) = database.url() {
            command = command.arg("--database-url").arg(url);
        }
        settings::flags().into_iter().fold(command, Self::arg)
    }

    /// Adds a flag or value.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Sets an environment variable of the process.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// The command, ready to spawn, stderr going to `stderr_path`.
    fn command(&self, stderr_path: &Path) -> anyhow::Result<Command> {
        let stderr = std::fs::File::create(stderr_path)
            .with_context(|| format!("creating {}", stderr_path.display()))?;
        let mut command = Command::new(&self.binary);
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        command.kill_on_drop(true);
        // The test runner's own JOBQ_* settings must not leak into the server.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("JOBQ_")
                || key.to_string_lossy().starts_with("OTEL_")
            {
                command.env_remove(key);
            }
        }
        command.envs(self.envs.iter().map(|(key, value)| (key, value)));
        Ok(command)
    }

    /// Runs the binary to its end (for start-up failures): exit status and stderr.
    pub async fn run_to_exit(&self, within: Duration) -> anyhow::Result<(ExitStatus, String)> {
        let log_dir = log_dir()?;
        let stderr_path = log_dir.path().join("stderr.log");
        let mut child = self
            .command(&stderr_path)?
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))?;
        let status = tokio::time::timeout(within, child.wait())
            .await
            .with_context(|| format!("the server did not exit within {within:?}"))?
            .context("waiting for the server")?;
        Ok((status, read_tail(&stderr_path)))
    }

    /// Starts the server and waits for its `listening on ADDR` line.
    pub async fn spawn(self) -> anyhow::Result<ServerProcess> {
        let log_dir = log_dir()?;
        let stderr_path = log_dir.path().join("stderr.log");
        let mut child = self
            .command(&stderr_path)?
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))?;
        let pid = child.id().context("the server process has no pid")?;
        let stdout = child
            .stdout
            .take()
            .context("the server's stdout is not piped")?;
        let mut lines = BufReader::new(stdout).lines();

        let first_line = match tokio::time::timeout(STARTUP_TIMEOUT, lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => {
                let status = child.wait().await.context("waiting for the server")?;
                bail!(
                    "the server exited ({status}) without printing its listening line; stderr:\n{}",
                    read_tail(&stderr_path)
                );
            }
            Ok(Err(err)) => bail!("reading the server's stdout: {err}"),
            Err(_) => bail!(
                "the server printed nothing on stdout within {STARTUP_TIMEOUT:?}; stderr:\n{}",
                read_tail(&stderr_path)
            ),
        };
        let addr: SocketAddr = first_line
            .strip_prefix(LISTENING_PREFIX)
            .and_then(|addr| addr.trim().parse().ok())
            .with_context(|| {
                format!("the server's first stdout line is {first_line:?}, not \"{LISTENING_PREFIX}IP:PORT\"")
            })?;

        // Keep reading so the server never blocks on a full pipe, and keep what
        // it prints: it promised exactly one line.
        let extra_stdout = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&extra_stdout);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(mut sink) = sink.lock() {
                    sink.push(line);
                }
            }
        });

        Ok(ServerProcess {
            child,
            pid,
            addr,
            stderr_path,
            extra_stdout,
            _log_dir: log_dir,
        })
    }
}

fn log_dir() -> anyhow::Result<TempDir> {
    tempfile::Builder::new()
        .prefix("jobq-e2e-log-")
        .tempdir()
        .context("creating a temp dir for the server's log")
}

fn read_tail(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(STDERR_TAIL_BYTES);
            String::from_utf8_lossy(&bytes[start..]).into_owned()
        }
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

/// A running `jobq-server` process. Killed (SIGKILL) if dropped while running.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    stderr_path: PathBuf,
    extra_stdout: Arc<Mutex<Vec<String>>>,
    _log_dir: TempDir,
}

impl ServerProcess {
    /// The address from the server's `listening on` line.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Clients on a new connection to the server.
    pub async fn client(&self) -> anyhow::Result<JobqClient> {
        JobqClient::connect(self.addr).await
    }

    /// The end of what the server wrote on stderr (its log), for failure messages.
    pub fn stderr_tail(&self) -> String {
        read_tail(&self.stderr_path)
    }

    /// Everything the server wrote on stderr so far (its log).
    pub fn stderr_all(&self) -> String {
        std::fs::read(&self.stderr_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// Lines the server printed on stdout after its `listening on` line.
    pub fn extra_stdout_lines(&self) -> Vec<String> {
        self.extra_stdout
            .lock()
            .map(|lines| lines.clone())
            .unwrap_or_default()
    }

    /// Kills the server with SIGKILL (no chance to clean up) and reaps it.
    pub async fn kill_9(mut self) -> anyhow::Result<ExitStatus> {
        self.child
            .start_kill()
            .context("sending SIGKILL to the server")?;
        self.child.wait().await.context("reaping the killed server")
    }

    /// Sends SIGTERM (through `kill -TERM PID`).
    pub async fn sigterm(&self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await
            .context("running `kill -TERM`")?;
        ensure!(
            status.success(),
            "`kill -TERM {}` failed: {status}",
            self.pid
        );
        Ok(())
    }

    /// Waits for the process to exit, at most `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.context("waiting for the server to exit"),
            Err(_) => bail!(
                "the server did not exit within {within:?}; stderr:\n{}",
                self.stderr_tail()
            ),
        }
    }
}
