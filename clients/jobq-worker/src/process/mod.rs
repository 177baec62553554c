//! Running a tool (yt-dlp, ffprobe) as a job: in its own process group, its
//! output read line by line with bounded memory, and the whole group killed
//! when the job must stop.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use jobq_client::{JobContext, JobError};
use tokio::process::Command;
use tokio_stream::StreamExt;
use tokio_util::codec::FramedRead;

use crate::metrics::WorkerMetrics;

use self::group::ProcessGroup;
use self::lines::LineDecoder;

mod group;
mod lines;

/// Longest line kept whole from a tool; a longer one is cut to this many
/// bytes, mark included (the server's default line limit, so it is not cut
/// twice).
const MAX_LINE_BYTES: usize = 16 * 1024;
/// Most stdout kept when it is captured (JSON output).
const MAX_CAPTURE_BYTES: usize = 64 * 1024 * 1024;
/// How many of the last stderr lines are kept for error messages.
const STDERR_TAIL_LINES: usize = 20;

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
            .stderr(Stdio::piped());
        let mut group = ProcessGroup::spawn(&mut command).map_err(|error| {
            JobError::retryable(format!(
                "cannot start {}: {error}",
                self.program.to_string_lossy()
            ))
        })?;
        let pid = group.pid();
        ctx.log()
            .system(format!("started {name} (pid {pid}, process group {pid})"));
        tracing::debug!(pid, "started {name}");

        let stdout = group
            .take_stdout()
            .ok_or_else(|| JobError::retryable("the tool's stdout is not piped"))?;
        let stderr = group
            .take_stderr()
            .ok_or_else(|| JobError::retryable("the tool's stderr is not piped"))?;
        let stdout_max = if self.capture_stdout {
            MAX_CAPTURE_BYTES
        } else {
            MAX_LINE_BYTES
        };
        let mut stdout = FramedRead::new(stdout, LineDecoder::new(stdout_max));
        let mut stderr = FramedRead::new(stderr, LineDecoder::new(MAX_LINE_BYTES));
        let mut captured = String::new();
        let mut stderr_tail: VecDeque<String> = VecDeque::new();
        let (mut stdout_open, mut stderr_open) = (true, true);

        while stdout_open || stderr_open {
            tokio::select! {
                biased;
                () = ctx.cancelled() => return Err(self.stop(ctx, &mut group, &name).await),
                // A read error ends the stream like its end does.
                line = stdout.next(), if stdout_open => match line {
                    Some(Ok(line)) => {
                        if self.capture_stdout {
                            if line.dropped > 0 {
                                ctx.log().system(format!(
                                    "{name}'s stdout line cut: {} more bytes dropped",
                                    line.dropped
                                ));
                            }
                            if captured.len() + line.text.len() < MAX_CAPTURE_BYTES {
                                captured.push_str(&line.text);
                                captured.push('\n');
                            }
                        } else if on_line(Stream::Stdout, &line.text) {
                            ctx.log().stdout(line.text);
                        }
                    }
                    Some(Err(_)) | None => stdout_open = false,
                },
                line = stderr.next(), if stderr_open => match line {
                    Some(Ok(line)) => {
                        if stderr_tail.len() >= STDERR_TAIL_LINES {
                            stderr_tail.pop_front();
                        }
                        stderr_tail.push_back(line.text.clone());
                        if on_line(Stream::Stderr, &line.text) {
                            ctx.log().stderr(line.text);
                        }
                    }
                    Some(Err(_)) | None => stderr_open = false,
                },
            }
        }
        // Anything it left running in its group goes too (`finish`).
        let status = tokio::select! {
            biased;
            () = ctx.cancelled() => return Err(self.stop(ctx, &mut group, &name).await),
            status = group.finish() => status.map_err(|error| JobError::retryable(format!("waiting for {name}: {error}")))?,
        };
        self.exited(&name, status);
        ctx.log().system(format!("{name} exited: {status}"));
        Ok(ToolOutput {
            status,
            stdout: captured,
            stderr_tail: stderr_tail.into(),
        })
    }
}

impl ToolCommand {
    /// Stops a tool whose job must stop: SIGTERM to its group, the grace,
    /// SIGKILL; counts how it ended and returns the job's stop error.
    async fn stop(&self, ctx: &JobContext, group: &mut ProcessGroup, name: &str) -> JobError {
        let pid = group.pid();
        ctx.log().system(format!(
            "stopping {name}: sending SIGTERM to process group {pid}"
        ));
        match group.stop(self.kill_grace).await {
            Ok((status, timed_out)) => {
                if timed_out {
                    ctx.log().system(format!(
                        "{name} did not exit within {:?}; sent SIGKILL",
                        self.kill_grace
                    ));
                }
                self.exited(name, status);
            }
            Err(error) => tracing::warn!(pid, %error, "stopping {name}"),
        }
        ctx.stopped_error()
    }

    fn exited(&self, name: &str, status: ExitStatus) {
        if let Some(metrics) = &self.metrics {
            metrics.tool_exited(name, status);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::lines::OutputLine;
    use super::*;

    /// Every stdout line of `sh -c script`, read as `run` reads them.
    async fn stdout_lines(script: &str, max: usize) -> Vec<OutputLine> {
        let mut command = Command::new("sh");
        command
            .args(["-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut group = ProcessGroup::spawn(&mut command).expect("sh starts");
        let stdout = group.take_stdout().expect("piped stdout");
        let mut reader = FramedRead::new(stdout, LineDecoder::new(max));
        let read_all = async {
            let mut lines = Vec::new();
            while let Some(line) = reader.next().await {
                lines.push(line.expect("reads"));
            }
            lines
        };
        // Generous: the machine may be busy.
        let deadline = Duration::from_secs(120);
        let lines = tokio::time::timeout(deadline, read_all)
            .await
            .expect("the reader finishes");
        let status = group.finish().await.expect("sh is reaped");
        assert!(status.success(), "{status}");
        lines
    }

    /// This process's peak resident memory, in KiB (Linux).
    fn peak_rss_kib() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    #[tokio::test]
    async fn fifty_megabytes_without_a_newline_are_read_in_bounded_memory() {
        const PRINTED: usize = 50_000_000;
        let peak_before = peak_rss_kib();
        let lines = stdout_lines(
            &format!("head -c {PRINTED} /dev/zero | tr '\\0' x; echo; echo after"),
            MAX_LINE_BYTES,
        )
        .await;
        let [cut, after] = lines.as_slice() else {
            panic!("two lines: {:?}", lines.len());
        };
        assert!(cut.text.len() <= MAX_LINE_BYTES, "{}", cut.text.len());
        let kept = cut.text.find(' ').expect("a cut mark");
        assert!(cut.text[..kept].bytes().all(|byte| byte == b'x'));
        assert_eq!(kept + cut.dropped, PRINTED);
        assert!(
            cut.text
                .ends_with(&format!("[line cut: {} more bytes dropped]", cut.dropped))
        );
        assert_eq!(after.text, "after");
        // The peak only grows; the tests alongside allocate far less than
        // the 50 MB that holding the line would take.
        if let (Some(before), Some(after)) = (peak_before, peak_rss_kib()) {
            assert!(
                after - before < 20 * 1024,
                "peak RSS grew {} KiB",
                after - before
            );
        }
    }

    #[tokio::test]
    async fn lines_from_a_tool_keep_the_limit_and_survive_bad_utf8() {
        let lines = stdout_lines(
            "printf 'caf\\351 \\377\\n'; head -c 100 /dev/zero | tr '\\0' a; echo; \
             head -c 101 /dev/zero | tr '\\0' b; echo; printf 'last'",
            100,
        )
        .await;
        let texts: Vec<&str> = lines.iter().map(|line| line.text.as_str()).collect();
        assert_eq!(texts[0], "caf\u{fffd} \u{fffd}");
        assert_eq!(texts[1], "a".repeat(100), "a line at the limit is whole");
        assert!(
            texts[2].len() <= 100 && texts[2].starts_with('b'),
            "{}",
            texts[2]
        );
        assert!(texts[2].contains("[line cut: "), "{}", texts[2]);
        assert_eq!(texts[3], "last");
        assert_eq!(texts.len(), 4);
    }
}
