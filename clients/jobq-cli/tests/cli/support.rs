//! What the tests share: a temp dir, a server in this process, the `jobq`
//! binary, and waiting for a condition without fixed sleeps.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use jobq_client::{Client, ClientConfig, pb};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A directory removed when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "jobq-cli-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server with the test defaults on `addr` (port 0: any free port),
/// keeping its data in `data_dir`.
pub async fn start_server(data_dir: &Path, addr: SocketAddr) -> Result<jobq_server::RunningServer> {
    let mut config = jobq_server::Config::for_tests(data_dir);
    config.listen = addr;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    jobq_server::App::start(config, listener).await
}

/// A client of the server at `addr`.
pub fn client(addr: SocketAddr, token: Option<&str>) -> Result<Client> {
    let mut config = ClientConfig::builder(format!("http://{addr}"));
    if let Some(token) = token {
        config = config.token(token);
    }
    Ok(Client::connect(config.build()?)?)
}

/// Polls `probe` until it yields a value, for at most `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + within;
    let mut last_error = None;
    loop {
        match probe().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(error) => last_error = Some(error),
        }
        if Instant::now() >= deadline {
            bail!("{what}: not within {within:?} (last error: {last_error:?})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the job is in a terminal state; returns it (FULL view).
pub async fn finished_job(client: &Client, id: &str) -> Result<pb::Job> {
    eventually(Duration::from_secs(60), "the job to finish", || async {
        let job = client.get_job(id).await?;
        let terminal = matches!(
            job.state(),
            pb::JobState::Succeeded | pb::JobState::Cancelled | pb::JobState::Dead
        );
        Ok(terminal.then_some(job))
    })
    .await
}

/// `jobq ARGS`, with no `JOBQ_*` variable of the test's environment.
pub fn jobq(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_jobq"));
    for (name, _) in std::env::vars() {
        if name.starts_with("JOBQ_") {
            command.env_remove(name);
        }
    }
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// A finished `jobq` run.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `jobq ARGS` to its end, at most `within`.
pub async fn run(args: &[&str], within: Duration) -> Result<Output> {
    let output = tokio::time::timeout(within, jobq(args).output())
        .await
        .with_context(|| format!("`jobq {}` did not end within {within:?}", args.join(" ")))??;
    Ok(Output {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// A running `jobq` whose stdout is read line by line as it comes, and
/// whose stderr is collected.
pub struct Running {
    pub child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: tokio::task::JoinHandle<String>,
    pub seen: Vec<String>,
}

impl Running {
    pub fn spawn(args: &[&str]) -> Result<Self> {
        let mut child = jobq(args).spawn().context("spawning jobq")?;
        let stdout = child.stdout.take().context("stdout is not piped")?;
        let stderr = child.stderr.take().context("stderr is not piped")?;
        let (lines_tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                text.push_str(&line);
                text.push('\n');
            }
            text
        });
        Ok(Self {
            child,
            lines,
            stderr,
            seen: Vec::new(),
        })
    }

    /// Reads stdout until a line satisfies `matches` (returned).
    pub async fn line_matching(
        &mut self,
        within: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    self.seen.push(line.clone());
                    if matches(&line) {
                        return Ok(line);
                    }
                }
                Ok(None) => bail!("stdout ended without the line; it printed {:?}", self.seen),
                Err(_) => bail!("no such line within {within:?}; it printed {:?}", self.seen),
            }
        }
    }

    /// Waits for the exit: the code, every stdout line, and stderr.
    pub async fn finish(mut self, within: Duration) -> Result<Output> {
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .with_context(|| {
                format!(
                    "jobq did not exit within {within:?}; it printed {:?}",
                    self.seen
                )
            })??;
        while let Some(line) = self.lines.recv().await {
            self.seen.push(line);
        }
        Ok(Output {
            code: status.code().unwrap_or(-1),
            stdout: self.seen.join("\n"),
            stderr: self.stderr.await.unwrap_or_default(),
        })
    }

    /// Sends SIGTERM.
    pub async fn terminate(&self) -> Result<()> {
        let pid = self.child.id().context("the process has exited")?;
        let status = Command::new("kill")
            .args(["-s", "TERM", &pid.to_string()])
            .status()
            .await?;
        anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
        Ok(())
    }
}
