//! The real worker and CLI binaries as child processes: spawn, signal, kill -9,
//! read their output and exit codes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// How much of a process's stderr an error message quotes.
const STDERR_TAIL_BYTES: usize = 6000;

fn clean_env(command: &mut Command) {
    // The test runner's own JOBQ_* settings must not leak into the process.
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text.starts_with("JOBQ_") || key_text.starts_with("OTEL_") {
            command.env_remove(key);
        }
    }
}

fn tail(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(STDERR_TAIL_BYTES);
            String::from_utf8_lossy(&bytes[start..]).into_owned()
        }
        Err(error) => format!("(cannot read {}: {error})", path.display()),
    }
}

/// A running `jobq-worker` process. Killed (SIGKILL) if dropped while running.
#[derive(Debug)]
pub struct WorkerProcess {
    child: Child,
    pid: u32,
    stderr_path: PathBuf,
    _log_dir: TempDir,
}

impl WorkerProcess {
    /// Starts `binary` against the server at `server` with `args` (e.g.
    /// `--worker-id`, `--lease`, `--media-root`). Its log goes to a temp file.
    pub fn spawn(binary: &Path, server: SocketAddr, args: &[&str]) -> anyhow::Result<Self> {
        Self::spawn_at(binary, &format!("http://{server}"), args)
    }

    /// Like [`WorkerProcess::spawn`], with the server given as a URL (`https://...`).
    pub fn spawn_at(binary: &Path, server: &str, args: &[&str]) -> anyhow::Result<Self> {
        let log_dir = tempfile::Builder::new()
            .prefix("jobq-e2e-worker-")
            .tempdir()?;
        let stderr_path = log_dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path)?;
        let mut command = Command::new(binary);
        clean_env(&mut command);
        command
            .arg("--server")
            .arg(server)
            .args(args)
            .env("JOBQ_LOG", "info,jobq_client=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        let pid = child.id().context("the worker has no pid")?;
        Ok(Self {
            child,
            pid,
            stderr_path,
            _log_dir: log_dir,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The end of the worker's log.
    pub fn stderr_tail(&self) -> String {
        tail(&self.stderr_path)
    }

    /// The worker's whole log so far (for tests that read it line by line).
    pub fn stderr(&self) -> anyhow::Result<String> {
        let bytes = std::fs::read(&self.stderr_path)
            .with_context(|| format!("reading {}", self.stderr_path.display()))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The address of the worker's metrics endpoint (`--metrics-listen`), read
    /// from the line it logs once bound (so port 0 works); at most `within`.
    pub async fn metrics_addr(&self, within: Duration) -> anyhow::Result<SocketAddr> {
        const MARK: &str = "metrics at http://";
        crate::eventually(within, "the worker to log its metrics address", || async {
            let log = self.stderr()?;
            let Some((_, after)) = log.split_once(MARK) else {
                return Ok(None);
            };
            let address = after
                .split_once("/metrics")
                .map(|(address, _)| address)
                .with_context(|| format!("a metrics line without /metrics: {after:.200}"))?;
            let address = address
                .parse()
                .with_context(|| format!("a metrics address: {address:?}"))?;
            Ok(Some(address))
        })
        .await
        .with_context(|| self.stderr_tail())
    }

    /// SIGKILL, and reap it.
    pub async fn kill_9(mut self) -> anyhow::Result<ExitStatus> {
        self.child
            .start_kill()
            .context("sending SIGKILL to the worker")?;
        self.child.wait().await.context("reaping the killed worker")
    }

    /// Sends SIGTERM (a graceful stop).
    pub async fn sigterm(&self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await?;
        ensure!(status.success(), "kill -TERM {} failed: {status}", self.pid);
        Ok(())
    }

    /// Waits for the process to exit, at most `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.context("waiting for the worker"),
            Err(_) => bail!(
                "the worker did not exit within {within:?}; its log:\n{}",
                self.stderr_tail()
            ),
        }
    }
}

/// What a finished CLI run printed, and how it exited.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
}

impl CliOutput {
    /// Checks the exit code; the error quotes the output.
    pub fn expect_code(&self, code: i32) -> anyhow::Result<&Self> {
        ensure!(
            self.code == code,
            "expected exit code {code}, got {}\nstdout:\n{}\nstderr:\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        Ok(self)
    }

    /// stdout parsed as one JSON document.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("stdout is not JSON:\n{}", self.stdout))
    }
}

/// The `jobq` CLI binary, pointed at a server.
#[derive(Debug, Clone)]
pub struct Cli {
    binary: PathBuf,
    server: String,
}

impl Cli {
    /// `binary --server http://{server}`.
    pub fn new(binary: &Path, server: SocketAddr) -> Self {
        Self {
            binary: binary.to_path_buf(),
            server: format!("http://{server}"),
        }
    }

    /// `binary --server URL` (e.g. `https://...`).
    pub fn at(binary: &Path, server: &str) -> Self {
        Self {
            binary: binary.to_path_buf(),
            server: server.to_owned(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        clean_env(&mut command);
        // `up` and `bench` run their own server and refuse `--server`.
        if !matches!(args.first(), Some(&"up" | &"bench")) {
            command.arg("--server").arg(&self.server);
        }
        command.args(args).stdin(Stdio::null()).kill_on_drop(true);
        command
    }

    /// Runs `jobq ARGS` to its end, at most `within`.
    pub async fn run(&self, args: &[&str], within: Duration) -> anyhow::Result<CliOutput> {
        let output = tokio::time::timeout(within, self.command(args).output())
            .await
            .with_context(|| format!("`jobq {}` did not finish within {within:?}", args.join(" ")))?
            .context("running the CLI")?;
        Ok(CliOutput {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// Starts `jobq ARGS` and hands its stdout over line by line as it comes
    /// (for `watch` and `logs -f`).
    pub fn spawn_streaming(&self, args: &[&str]) -> anyhow::Result<StreamingCli> {
        let mut command = self.command(args);
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().context("spawning the CLI")?;
        let stdout = child.stdout.take().context("stdout not piped")?;
        let (lines_tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(StreamingCli { child, lines })
    }
}

/// A CLI process whose stdout is read as it comes.
#[derive(Debug)]
pub struct StreamingCli {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl StreamingCli {
    /// Reads lines until one satisfies `matches` (returned), at most `within`.
    pub async fn line_matching(
        &mut self,
        within: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) if matches(&line) => return Ok(line),
                Ok(Some(line)) => seen.push(line),
                Ok(None) => bail!(
                    "the CLI's stdout ended without the line; it printed:\n{}",
                    seen.join("\n")
                ),
                Err(_) => bail!(
                    "no matching line within {within:?}; it printed:\n{}",
                    seen.join("\n")
                ),
            }
        }
    }

    /// Sends SIGTERM (a graceful stop).
    pub async fn sigterm(&self) -> anyhow::Result<()> {
        let pid = self.child.id().context("the CLI has exited")?;
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await?;
        ensure!(status.success(), "kill -TERM {pid} failed: {status}");
        Ok(())
    }

    /// Waits for the process to exit (at most `within`); returns its exit code
    /// and the lines it printed that were not read yet.
    pub async fn finish(mut self, within: Duration) -> anyhow::Result<(i32, Vec<String>)> {
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .with_context(|| format!("the CLI did not exit within {within:?}"))?
            .context("waiting for the CLI")?;
        let mut rest = Vec::new();
        // The reader task ends at EOF, which follows the exit.
        while let Ok(Some(line)) =
            tokio::time::timeout(Duration::from_secs(5), self.lines.recv()).await
        {
            rest.push(line);
        }
        Ok((status.code().unwrap_or(-1), rest))
    }
}
