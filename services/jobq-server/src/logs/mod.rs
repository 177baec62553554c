//! Per-job logs on disk, under `{data_dir}/logs/jobs/{job_id}/`:
//! `stdout.log` and `stderr.log` (readable, one line each, attempt marked) and
//! `events.jsonl` (every line of every stream, one JSON object a line, with
//! its position). `events.jsonl` is the record StreamJobLogs replays;
//! followers get new lines through a bounded broadcast per job, so a slow
//! follower never slows the writer or other followers.
//!
//! On PostgreSQL, where several replicas serve the same jobs, the record is
//! the `job_log_lines` table instead (see `table`), positions are given out
//! under a per-job lock, and the files are this replica's readable mirror.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use async_trait::async_trait;
use sea_orm::DatabaseConnection;

use crate::domain::{JobId, JobLog, Millis, QueueError, QueueResult};

mod table;

/// Which stream a line belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// Progress reports.
    Progress,
    /// Lines of the server or the worker runtime.
    System,
}

/// A line as stored and streamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// Position in the job's log, from 1, without gaps.
    #[serde(rename = "pos")]
    pub position: u64,
    /// When it was produced (ms since the epoch).
    pub time: Millis,
    /// Attempt it belongs to.
    pub attempt: i32,
    /// Stream.
    pub stream: LogStream,
    /// Text.
    pub message: String,
    /// Structured fields (a JSON object), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<serde_json::Value>,
}

/// A line to append.
#[derive(Debug, Clone)]
pub struct NewLine {
    /// Stream.
    pub stream: LogStream,
    /// When produced.
    pub time: Millis,
    /// Text.
    pub message: String,
    /// Structured fields.
    pub fields: Option<serde_json::Value>,
}

impl NewLine {
    /// The line as stored at `position`, under `attempt`.
    pub(crate) fn stored(self, position: u64, attempt: i32) -> LogLine {
        LogLine {
            position,
            time: self.time,
            attempt,
            stream: self.stream,
            message: self.message,
            fields: self.fields,
        }
    }
}

/// Size limits of job logs.
#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    /// Longest line kept whole, in bytes; longer ones are cut and marked.
    pub max_line_bytes: usize,
    /// Most bytes of messages kept per job; later lines are dropped and counted.
    pub max_job_bytes: u64,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            max_line_bytes: 16 * 1024,
            max_job_bytes: 64 * 1024 * 1024,
        }
    }
}

/// What one append did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Lines stored (cut ones included).
    pub accepted: u64,
    /// Lines cut to the line limit.
    pub truncated: u64,
    /// Lines dropped because the job's log was full.
    pub dropped: u64,
    /// Position of the last stored line.
    pub last_position: u64,
}

/// Counters of one job's log while the job is live. Files are opened per
/// append, not kept open: a million waiting jobs must not hold file handles.
struct JobLogFiles {
    dir: PathBuf,
    next_position: u64,
    message_bytes: u64,
    dropped_lines: u64,
    dropped_bytes: u64,
}

/// How many lines a follower may fall behind before it is told it lagged.
const FOLLOW_BUFFER: usize = 1024;

/// Told of every append and finish, so other replicas can wake their followers.
pub type LogNotifier = Arc<dyn Fn(LogNotice) + Send + Sync>;

/// What other replicas are told about this replica's logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogNotice {
    /// Lines up to `position` of a job are stored.
    Appended {
        /// The job.
        job_id: String,
        /// Last stored position.
        position: u64,
    },
    /// A job finished: its followers may end.
    Finished {
        /// The job.
        job_id: String,
    },
}

/// All job logs of this server.
pub struct LogStore {
    /// The shared table, on PostgreSQL; `None`: events.jsonl is the record.
    table: Option<DatabaseConnection>,
    root: PathBuf,
    limits: LogLimits,
    open: Mutex<HashMap<String, Arc<Mutex<JobLogFiles>>>>,
    followers: Mutex<HashMap<String, (broadcast::Sender<LogLine>, u64)>>,
    /// Fires for every job that finished, so followers can end.
    finished: broadcast::Sender<String>,
    notifier: std::sync::OnceLock<LogNotifier>,
}

/// Marks the system lines that say output was dropped.
fn limit_notice_fields() -> Option<serde_json::Value> {
    Some(serde_json::json!({ "output_dropped": true }))
}

fn is_limit_notice(line: &LogLine) -> bool {
    line.fields
        .as_ref()
        .is_some_and(|fields| fields.get("output_dropped").is_some())
}

/// Cuts `message` to at most `max` bytes on a char boundary, marking the cut.
fn cut(message: &str, max: usize) -> (String, bool) {
    if message.len() <= max {
        return (message.to_owned(), false);
    }
    let mut end = max;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let dropped = message.len() - end;
    (
        format!(
            "{} [line cut: {dropped} more bytes dropped]",
            &message[..end]
        ),
        true,
    )
}

fn rfc3339(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|time| time.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}

fn io_error(error: io::Error) -> QueueError {
    QueueError::Storage(format!("job log: {error}"))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl LogStore {
    /// Logs under `data_dir/logs/jobs`, recorded in `table` when given.
    pub fn new(
        data_dir: &Path,
        limits: LogLimits,
        table: Option<DatabaseConnection>,
    ) -> io::Result<Self> {
        let root = data_dir.join("logs").join("jobs");
        fs::create_dir_all(&root)?;
        Ok(Self {
            table,
            root,
            limits,
            open: Mutex::new(HashMap::new()),
            followers: Mutex::new(HashMap::new()),
            finished: broadcast::Sender::new(1024),
            notifier: std::sync::OnceLock::new(),
        })
    }

    /// Tells `notifier` of every append and finish from now on (set once).
    pub fn set_notifier(&self, notifier: LogNotifier) {
        let _ = self.notifier.set(notifier);
    }

    fn notify(&self, notice: LogNotice) {
        if let Some(notifier) = self.notifier.get() {
            notifier(notice);
        }
    }

    fn dir(&self, job_id: &str) -> PathBuf {
        self.root.join(job_id)
    }

    /// Opens a job's files, counting what an earlier run of the server wrote.
    fn open_files(&self, job_id: &str) -> io::Result<Arc<Mutex<JobLogFiles>>> {
        let mut open = lock(&self.open);
        if let Some(files) = open.get(job_id) {
            return Ok(files.clone());
        }
        let dir = self.dir(job_id);
        fs::create_dir_all(&dir)?;
        // Every job has all three files, written or not.
        for name in ["events.jsonl", "stdout.log", "stderr.log"] {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(name))?;
        }
        let events_path = dir.join("events.jsonl");
        let mut next_position = 1;
        let mut message_bytes = 0;
        if events_path.exists() {
            for line in BufReader::new(File::open(&events_path)?).lines() {
                if let Ok(stored) = serde_json::from_str::<LogLine>(&line?) {
                    next_position = stored.position + 1;
                    message_bytes += stored.message.len() as u64;
                }
            }
        }
        let files = Arc::new(Mutex::new(JobLogFiles {
            dir,
            next_position,
            message_bytes,
            dropped_lines: 0,
            dropped_bytes: 0,
        }));
        open.insert(job_id.to_owned(), files.clone());
        Ok(files)
    }

    /// Appends lines to the job's files, opening each file once per call.
    fn write(files: &mut JobLogFiles, lines: &[LogLine]) -> io::Result<()> {
        let mut events = String::new();
        let (mut stdout, mut stderr) = (String::new(), String::new());
        for line in lines {
            events.push_str(&serde_json::to_string(line).map_err(io::Error::other)?);
            events.push('\n');
            let readable = format!(
                "{} #{} {}\n",
                rfc3339(line.time),
                line.attempt,
                line.message
            );
            match line.stream {
                LogStream::Stdout => stdout.push_str(&readable),
                LogStream::Stderr => stderr.push_str(&readable),
                // A cut in the output is marked where the output is read.
                LogStream::System if is_limit_notice(line) => {
                    stdout.push_str(&readable);
                    stderr.push_str(&readable);
                }
                LogStream::Progress | LogStream::System => {}
            }
            files.next_position = files.next_position.max(line.position + 1);
        }
        for (name, text) in [
            ("events.jsonl", events),
            ("stdout.log", stdout),
            ("stderr.log", stderr),
        ] {
            if !text.is_empty() {
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(files.dir.join(name))?
                    .write_all(text.as_bytes())?;
            }
        }
        Ok(())
    }

    /// Applies the size limits: cuts long lines, drops what the job has no
    /// room for (marking the first drop). Counts bytes as kept.
    fn admit(
        &self,
        files: &mut JobLogFiles,
        lines: Vec<NewLine>,
        outcome: &mut AppendOutcome,
        exempt: bool,
    ) -> Vec<NewLine> {
        let mut kept = Vec::with_capacity(lines.len());
        for mut line in lines {
            // The server's own lines are neither cut nor dropped.
            let (message, was_cut) = if exempt {
                (line.message.clone(), false)
            } else {
                cut(&line.message, self.limits.max_line_bytes)
            };
            if !exempt && files.message_bytes + message.len() as u64 > self.limits.max_job_bytes {
                if files.dropped_lines == 0 {
                    kept.push(NewLine {
                        stream: LogStream::System,
                        time: line.time,
                        message: format!(
                            "log limit of {} bytes reached: further output of this job is dropped and counted",
                            self.limits.max_job_bytes
                        ),
                        fields: limit_notice_fields(),
                    });
                }
                files.dropped_lines += 1;
                files.dropped_bytes += line.message.len() as u64;
                outcome.dropped += 1;
                continue;
            }
            files.message_bytes += message.len() as u64;
            line.message = message;
            outcome.truncated += u64::from(was_cut);
            outcome.accepted += 1;
            kept.push(line);
        }
        kept
    }

    fn publish(&self, job_id: &str, lines: &[LogLine]) {
        let mut followers = lock(&self.followers);
        if let Some((sender, published)) = followers.get_mut(job_id) {
            for line in lines {
                if line.position > *published {
                    *published = line.position;
                    // No follower left is fine: nobody is watching.
                    let _ = sender.send(line.clone());
                }
            }
        }
    }

    /// Stores lines: positions from the record (file counter, or the table),
    /// then the files, then live followers and other replicas.
    async fn store(
        &self,
        job_id: &JobId,
        attempt: i32,
        lines: Vec<NewLine>,
        exempt: bool,
    ) -> QueueResult<AppendOutcome> {
        let files = self.open_files(job_id.as_str()).map_err(io_error)?;
        let mut outcome = AppendOutcome::default();
        let stored = match &self.table {
            None => {
                let mut files = lock(&files);
                let kept = self.admit(&mut files, lines, &mut outcome, exempt);
                let first = files.next_position;
                let stored: Vec<LogLine> = kept
                    .into_iter()
                    .zip(first..)
                    .map(|(line, position)| line.stored(position, attempt))
                    .collect();
                Self::write(&mut files, &stored).map_err(io_error)?;
                stored
            }
            Some(db) => {
                let kept = self.admit(&mut lock(&files), lines, &mut outcome, exempt);
                let stored = table::insert(db, job_id, attempt, kept).await?;
                Self::write(&mut lock(&files), &stored).map_err(io_error)?;
                stored
            }
        };
        outcome.last_position = stored.last().map_or(0, |line| line.position);
        self.publish(job_id.as_str(), &stored);
        if let Some(last) = stored.last() {
            self.notify(LogNotice::Appended {
                job_id: job_id.to_string(),
                position: last.position,
            });
        }
        Ok(outcome)
    }

    /// Appends lines pushed by a worker, cutting long lines and dropping what
    /// exceeds the job's size limit (the first drop is marked with a line).
    pub async fn append(
        &self,
        job_id: &JobId,
        attempt: i32,
        lines: Vec<NewLine>,
    ) -> QueueResult<AppendOutcome> {
        self.store(job_id, attempt, lines, false).await
    }

    /// Up to `limit` stored lines after `after`, of `streams` (all if empty),
    /// and whether the end of the stored log was reached.
    pub async fn read(
        &self,
        job_id: &JobId,
        after: u64,
        limit: usize,
        streams: &[LogStream],
    ) -> QueueResult<(Vec<LogLine>, bool)> {
        if let Some(db) = &self.table {
            return table::read(db, job_id, after, limit, streams).await;
        }
        let path = self.dir(job_id.as_str()).join("events.jsonl");
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), true)),
            Err(error) => return Err(io_error(error)),
        };
        let mut lines = Vec::new();
        for raw in BufReader::new(file).lines() {
            let raw = raw.map_err(io_error)?;
            // A line being written right now may be incomplete: stop there.
            let Ok(line) = serde_json::from_str::<LogLine>(&raw) else {
                break;
            };
            if line.position <= after || !(streams.is_empty() || streams.contains(&line.stream)) {
                continue;
            }
            if lines.len() == limit {
                return Ok((lines, false));
            }
            lines.push(line);
        }
        Ok((lines, true))
    }

    /// New lines of a job from now on.
    pub fn follow(&self, job_id: &JobId) -> broadcast::Receiver<LogLine> {
        let mut followers = lock(&self.followers);
        followers.retain(|_, (sender, _)| sender.receiver_count() > 0);
        followers
            .entry(job_id.to_string())
            .or_insert_with(|| (broadcast::Sender::new(FOLLOW_BUFFER), 0))
            .0
            .subscribe()
    }

    /// Ids of jobs as they finish.
    pub fn finished_jobs(&self) -> broadcast::Receiver<String> {
        self.finished.subscribe()
    }

    /// Another replica stored lines of a job up to `position`: hands the ones
    /// this replica has not published yet to its followers of that job.
    pub async fn remote_appended(&self, job_id: &str, position: u64) {
        let published = match lock(&self.followers).get(job_id) {
            Some((_, published)) if *published < position => *published,
            _ => return,
        };
        let Ok(id) = JobId::parse(job_id, "job_id") else {
            return;
        };
        match self.read(&id, published, FOLLOW_BUFFER, &[]).await {
            Ok((lines, _)) => self.publish(job_id, &lines),
            Err(error) => {
                tracing::warn!(%error, job_id, "could not read lines another replica stored")
            }
        }
    }

    /// Another replica saw a job finish.
    pub fn remote_finished(&self, job_id: &str) {
        let _ = self.finished.send(job_id.to_owned());
    }
}

fn now_ms() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

fn system_line(message: String) -> NewLine {
    NewLine {
        stream: LogStream::System,
        time: now_ms(),
        message,
        fields: None,
    }
}

#[async_trait]
impl JobLog for LogStore {
    async fn system(&self, job_id: &JobId, attempt: i32, message: &str) {
        if let Err(error) = self
            .store(job_id, attempt, vec![system_line(message.to_owned())], true)
            .await
        {
            tracing::warn!(%error, %job_id, "could not write to the job log");
        }
    }

    async fn finished(&self, job_id: &JobId, attempt: i32) {
        let files = lock(&self.open).remove(job_id.as_str());
        if let Some(files) = files {
            let (lines, bytes) = {
                let files = lock(&files);
                (files.dropped_lines, files.dropped_bytes)
            };
            if lines > 0 {
                let summary = NewLine {
                    fields: limit_notice_fields(),
                    ..system_line(format!(
                        "{lines} lines ({bytes} bytes) of output were dropped: over the log limit"
                    ))
                };
                if let Err(error) = self.store(job_id, attempt, vec![summary], true).await {
                    tracing::warn!(%error, %job_id, "could not write to the job log");
                }
                // The summary reopened the files; a finished job keeps none open.
                lock(&self.open).remove(job_id.as_str());
            }
        }
        let _ = self.finished.send(job_id.to_string());
        self.notify(LogNotice::Finished {
            job_id: job_id.to_string(),
        });
    }

    async fn deleted(&self, job_id: &JobId) {
        lock(&self.open).remove(job_id.as_str());
        if let Some(db) = &self.table
            && let Err(error) = table::delete(db, job_id).await
        {
            tracing::warn!(%error, %job_id, "could not delete the job's log lines");
        }
        let dir = self.dir(job_id.as_str());
        if let Err(error) = fs::remove_dir_all(&dir)
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(%error, path = %dir.display(), "could not delete the job's logs");
        }
        let _ = self.finished.send(job_id.to_string());
        self.notify(LogNotice::Finished {
            job_id: job_id.to_string(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(stream: LogStream, message: &str) -> NewLine {
        NewLine {
            stream,
            time: 1_700_000_000_000,
            message: message.to_owned(),
            fields: None,
        }
    }

    #[tokio::test]
    async fn lines_get_positions_and_land_in_their_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = LogStore::new(dir.path(), LogLimits::default(), None).expect("log store");
        let id = JobId::generate();
        let outcome = store
            .append(
                &id,
                1,
                vec![
                    line(LogStream::Stdout, "out 1"),
                    line(LogStream::Stderr, "err 1"),
                ],
            )
            .await
            .expect("append");
        assert_eq!(outcome.last_position, 2);
        let (lines, end) = store.read(&id, 0, 10, &[]).await.expect("read");
        assert!(end);
        assert_eq!(
            lines.iter().map(|l| l.position).collect::<Vec<_>>(),
            vec![1, 2]
        );
        let stdout = fs::read_to_string(
            dir.path()
                .join("logs/jobs")
                .join(id.as_str())
                .join("stdout.log"),
        )
        .expect("stdout");
        assert!(stdout.ends_with("#1 out 1\n"), "{stdout}");
        let (only_stderr, _) = store
            .read(&id, 0, 10, &[LogStream::Stderr])
            .await
            .expect("read");
        assert_eq!(only_stderr.len(), 1);
    }

    #[tokio::test]
    async fn long_lines_are_cut_and_full_logs_drop_with_a_marker() {
        let dir = tempfile::tempdir().expect("temp dir");
        let limits = LogLimits {
            max_line_bytes: 10,
            max_job_bytes: 100,
        };
        let store = LogStore::new(dir.path(), limits, None).expect("log store");
        let id = JobId::generate();
        let outcome = store
            .append(
                &id,
                1,
                (0..5)
                    .map(|i| line(LogStream::Stdout, &format!("line number {i}")))
                    .collect(),
            )
            .await
            .expect("append");
        assert_eq!(outcome.truncated, outcome.accepted);
        assert!(outcome.dropped > 0);
        let (lines, _) = store.read(&id, 0, 100, &[]).await.expect("read");
        assert!(
            lines[0]
                .message
                .contains("[line cut: 3 more bytes dropped]"),
            "{}",
            lines[0].message
        );
        assert!(
            lines
                .iter()
                .any(|l| l.stream == LogStream::System && l.message.contains("log limit"))
        );
        store.finished(&id, 1).await;
        let (lines, _) = store.read(&id, 0, 100, &[]).await.expect("read");
        assert!(
            lines
                .last()
                .is_some_and(|l| l.message.contains("were dropped"))
        );
    }

    #[tokio::test]
    async fn positions_continue_after_a_restart() {
        let dir = tempfile::tempdir().expect("temp dir");
        let id = JobId::generate();
        LogStore::new(dir.path(), LogLimits::default(), None)
            .expect("log store")
            .append(&id, 1, vec![line(LogStream::Stdout, "before")])
            .await
            .expect("append");
        let reopened = LogStore::new(dir.path(), LogLimits::default(), None).expect("log store");
        let outcome = reopened
            .append(&id, 1, vec![line(LogStream::Stdout, "after")])
            .await
            .expect("append");
        assert_eq!(outcome.last_position, 2);
    }
}
