//! Running a tool (yt-dlp, ffprobe) as a job: in its own process group, its
//! output read line by line, and the whole group killed when the job must stop.

use std::ffi::OsString;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use jobq_client::{JobContext, JobError};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use crate::metrics::WorkerMetrics;

/// Longest line kept from a tool; the rest of it is cut.
const MAX_LINE_BYTES: usize = 16 * 1024;
/// Most stdout kept when it is captured (JSON output).
const MAX_CAPTURE_BYTES: usize = 64 * 1024 * 1024;

/// Which of the tool's streams a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// How to run one tool.
#[derive(Debug, Clone)]
pub struct ToolCommand {
    program: OsString,
    args: Vec<OsString>,
    capture_stdout: bool,
    kill_grace: Duration,
    metrics: Option<Arc<WorkerMetrics>>,
}

/// What a finished tool left.
#[derive(Debug)]
pub struct ToolOutput {
    /// Its exit status.
    pub status: ExitStatus,
    /// Its whole stdout, when captured.
    pub stdout: String,
    /// Its last stderr lines (for error messages).
    pub stderr_tail: Vec<String>,
}

impl ToolOutput {
    /// The most telling stderr line: the last `ERROR:` line, else the last line.
    pub fn error_summary(&self) -> String {
        self.stderr_tail
            .iter()
            .rev()
            .find(|line| line.contains("ERROR"))
            .or_else(|| self.stderr_tail.last())
            .cloned()
            .unwrap_or_else(|| "no error output".to_owned())
    }
}

impl ToolCommand {
    /// `program` with no arguments.
    pub fn new(program: impl Into<OsString>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            capture_stdout: false,
            kill_grace: Duration::from_secs(5),
            metrics: None,
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Keeps stdout (e.g. JSON) instead of logging it line by line.
    pub fn capture_stdout(mut self) -> Self {
        self.capture_stdout = true;
        self
    }

    /// How long the tool gets to exit after SIGTERM before SIGKILL (default 5 s).
    pub fn kill_grace(mut self, grace: Duration) -> Self {
        self.kill_grace = grace;
        self
    }

    /// Counts the tool's exit (code or signal) in `metrics`, when there are.
    pub fn measured_by(mut self, metrics: Option<Arc<WorkerMetrics>>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Runs the tool for `ctx`'s job. Each output line goes to `on_line`
    /// first; when it returns true the line is also written to the job's log
    /// (stdout/stderr stream). When the job must stop, the tool's whole
    /// process group gets SIGTERM, then SIGKILL, and the job's stop error is
    /// returned. A tool that cannot be started is a retryable error (another
    /// worker may have it).
    pub async fn run(
        self,
        ctx: &JobContext,
        mut on_line: impl FnMut(Stream, &str) -> bool,
    ) -> Result<ToolOutput, JobError> {
        let name = Path::new(&self.program).file_name().map_or_else(
            || self.program.to_string_lossy().into_owned(),
            |name| name.to_string_lossy().into_owned(),
        );
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a stop reaches everything it started.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|error| {
            JobError::retryable(format!(
                "cannot start {}: {error}",
                self.program.to_string_lossy()
            ))
        })?;
        let pid = child.id().ok_or_else(|| {
            JobError::retryable(format!("{name} exited before it could be watched"))
        })?;
        // The group leader's pid is the group id.
        let group = ProcessGroup { pgid: pid };
        ctx.log()
            .system(format!("started {name} (pid {pid}, process group {pid})"));
        tracing::debug!(pid, "started {name}");

        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| JobError::retryable("the tool's stdout is not piped"))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| JobError::retryable("the tool's stderr is not piped"))?;
        let mut stdout = BufReader::new(stdout);
        let mut stderr = BufReader::new(stderr);
        let mut captured = String::new();
        let mut stderr_tail: Vec<String> = Vec::new();
        let (mut stdout_open, mut stderr_open) = (true, true);
        let mut out_buf = Vec::new();
        let mut err_buf = Vec::new();
        let stdout_max = if self.capture_stdout {
            MAX_CAPTURE_BYTES
        } else {
            MAX_LINE_BYTES
        };

        while stdout_open || stderr_open {
            tokio::select! {
                biased;
                () = ctx.cancelled() => {
                    ctx.log().system(format!("stopping {name}: sending SIGTERM to process group {pid}"));
                    group.signal("TERM").await;
                    if tokio::time::timeout(self.kill_grace, child.wait()).await.is_err() {
                        ctx.log().system(format!("{name} did not exit within {:?}; sending SIGKILL", self.kill_grace));
                    }
                    group.signal("KILL").await;
                    self.reap(&mut child, &name).await;
                    return Err(ctx.stopped_error());
                }
                line = read_line(&mut stdout, &mut out_buf, stdout_max), if stdout_open => match line {
                    Some(line) => {
                        if self.capture_stdout {
                            if captured.len() + line.len() < MAX_CAPTURE_BYTES {
                                captured.push_str(&line);
                                captured.push('\n');
                            }
                        } else if on_line(Stream::Stdout, &line) {
                            ctx.log().stdout(line);
                        }
                    }
                    None => stdout_open = false,
                },
                line = read_line(&mut stderr, &mut err_buf, MAX_LINE_BYTES), if stderr_open => match line {
                    Some(line) => {
                        if stderr_tail.len() >= 20 {
                            stderr_tail.remove(0);
                        }
                        stderr_tail.push(line.clone());
                        if on_line(Stream::Stderr, &line) {
                            ctx.log().stderr(line);
                        }
                    }
                    None => stderr_open = false,
                },
            }
        }
        let status = tokio::select! {
            status = child.wait() => status.map_err(|error| JobError::retryable(format!("waiting for {name}: {error}")))?,
            () = ctx.cancelled() => {
                group.signal("KILL").await;
                self.reap(&mut child, &name).await;
                return Err(ctx.stopped_error());
            }
        };
        self.exited(&name, status);
        // Anything it left running in its group goes too.
        group.signal("KILL").await;
        ctx.log().system(format!("{name} exited: {status}"));
        Ok(ToolOutput {
            status,
            stdout: captured,
            stderr_tail,
        })
    }
}

impl ToolCommand {
    /// Waits for a tool that was told to stop, and counts how it ended.
    async fn reap(&self, child: &mut Child, name: &str) {
        if let Ok(status) = child.wait().await {
            self.exited(name, status);
        }
    }

    fn exited(&self, name: &str, status: ExitStatus) {
        if let Some(metrics) = &self.metrics {
            metrics.tool_exited(name, status);
        }
    }
}

/// A tool's process group; killed (SIGKILL) when dropped, so an aborted
/// handler leaves nothing behind.
#[derive(Debug)]
struct ProcessGroup {
    pgid: u32,
}

impl ProcessGroup {
    /// Sends `signal` (a name like `TERM`) to the whole group. `kill(1)` keeps
    /// this crate free of unsafe code; "no such process" is fine.
    async fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args(["-s", signal, "--", &format!("-{}", self.pgid)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.pgid)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// One line (lossy UTF-8, without the line end, cut at `max` bytes); `None`
/// at the end of the stream. Cancel-safe: bytes read by a call that lost a
/// `select!` stay in `buf` and the next call goes on from them.
async fn read_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    buf: &mut Vec<u8>,
    max: usize,
) -> Option<String> {
    let read = reader.read_until(b'\n', buf).await;
    if matches!(read, Ok(0) | Err(_)) && buf.is_empty() {
        return None;
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    // Progress bars redraw with \r: keep the last state.
    let start = buf
        .iter()
        .rposition(|byte| *byte == b'\r')
        .map_or(0, |at| at + 1);
    let line = &buf[start..];
    let line = String::from_utf8_lossy(&line[..line.len().min(max)]).into_owned();
    buf.clear();
    Some(line)
}
