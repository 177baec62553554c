//! Job logs. A job's log is its history told in lines (see `domain::narrate`)
//! with the lines its workers pushed in between. Only the pushed lines are
//! stored, in a [`LogRecord`]: files under `{data_dir}/logs/jobs/{job_id}/`
//! on SQLite (`files`), the `job_log_lines` table on PostgreSQL (so any
//! replica serves any job's log). A job that pushes nothing costs nothing.
//!
//! Positions are `(entry << 32) | line` (see `LogLine` in log.proto): a
//! pushed line belongs to the attempt whose lease pushed it, and is numbered
//! within it from 2 (line 1 opens the attempt). A reader is a cursor over
//! the record (`reader`): the live side only wakes it up, so it can never
//! miss a line, and it holds one batch at a time however far behind it is.

mod files;
pub mod reader;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast};

use crate::domain::{JobId, JobLog, LeaseToken, Millis, QueueResult};

pub use files::{FileRecord, LogFiles};

/// Which stream a line belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

impl LogStream {
    /// The name stored in the record.
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
            LogStream::Progress => "progress",
            LogStream::System => "system",
        }
    }

    /// Parses a stored name.
    pub fn parse(raw: &str) -> Self {
        match raw {
            "stdout" => LogStream::Stdout,
            "stderr" => LogStream::Stderr,
            "progress" => LogStream::Progress,
            _ => LogStream::System,
        }
    }
}

/// The position of line `line` of history entry `entry`.
pub fn position(entry: i32, line: u32) -> u64 {
    (u64::from(entry.max(0) as u32) << 32) | u64::from(line)
}

/// The entry of a position.
pub fn entry_of(position: u64) -> i32 {
    (position >> 32) as i32
}

/// The first line a worker's push gets in an entry (line 1 opens the entry).
pub const FIRST_PUSHED_LINE: u32 = 2;

/// A line of a job's log, stored or told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// Position in the job's log.
    #[serde(rename = "pos")]
    pub position: u64,
    /// When it was produced (ms since the epoch).
    pub time: Millis,
    /// The attempt it belongs to (its seq), 0 outside attempts.
    pub attempt: i32,
    /// Stream.
    pub stream: LogStream,
    /// Text.
    pub message: String,
    /// Structured fields (a JSON object), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<serde_json::Value>,
    /// The worker's sequence number of the line, if it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cseq: Option<u64>,
}

/// A line to store.
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
    /// The worker's sequence number, if it gave one.
    pub cseq: Option<u64>,
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

/// What one push did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Lines stored (cut ones included).
    pub accepted: u64,
    /// Lines cut to the line limit.
    pub truncated: u64,
    /// Lines dropped because the job's log was full.
    pub dropped: u64,
    /// Lines skipped because their sequence number was stored already.
    pub duplicates: u64,
    /// Position of the last stored line (0 if none).
    pub last_position: u64,
}

/// Where pushed lines are kept.
#[async_trait]
pub trait LogRecord: Send + Sync + 'static {
    /// Stores `lines` in the entry of the attempt that `lease` holds (the
    /// lease is checked as part of the append, so an attempt's lines are all
    /// stored before its end can be seen), after the entry's last line.
    /// Lines whose sequence number is not above the last one stored in the
    /// entry are skipped. Returns the entry and the lines stored.
    async fn append(
        &self,
        job: &JobId,
        lease: &LeaseToken,
        lines: Vec<NewLine>,
    ) -> QueueResult<(i32, Vec<LogLine>)>;
    /// Up to `limit` stored lines after position `after`, in order.
    async fn read(&self, job: &JobId, after: u64, limit: usize) -> QueueResult<Vec<LogLine>>;
    /// Bytes of messages stored for the job so far.
    async fn stored_bytes(&self, job: &JobId) -> QueueResult<u64>;
    /// Forgets the logs of deleted jobs.
    async fn delete(&self, jobs: &[JobId]);
}

/// Checks a lease and names the history entry it holds: the record of
/// pushed lines asks before it stores anything.
#[async_trait]
pub trait LeaseCheck: Send + Sync + 'static {
    /// The attempt seq `lease` holds on `job`, or a stale-lease error.
    async fn current_entry(&self, job: &JobId, lease: &LeaseToken) -> QueueResult<i32>;
}

/// Per-job counters for the size limit, for jobs that pushed lately.
#[derive(Debug, Default, Clone, Copy)]
struct JobBytes {
    kept: u64,
    dropped_lines: u64,
}

/// How many jobs' counters are kept; older ones are read again from the record.
const TRACKED_JOBS: usize = 4096;
/// Wake-ups of readers that may fall behind before they all look again.
const WAKE_BUFFER: usize = 1024;

/// Pushes in progress, per job: a reader waits for them to end before it
/// tells an attempt's closing line, so no pushed line can land before it.
#[derive(Default)]
struct InFlight {
    pushes: Mutex<HashMap<JobId, (usize, Arc<Notify>)>>,
}

impl InFlight {
    fn enter(&self, job: &JobId) {
        let mut pushes = lock(&self.pushes);
        pushes
            .entry(job.clone())
            .or_insert_with(|| (0, Arc::new(Notify::new())))
            .0 += 1;
    }

    fn exit(&self, job: &JobId) {
        let mut pushes = lock(&self.pushes);
        if let Some((count, idle)) = pushes.get_mut(job) {
            *count -= 1;
            if *count == 0 {
                idle.notify_waiters();
                pushes.remove(job);
            }
        }
    }

    async fn wait_idle(&self, job: &JobId) {
        loop {
            let idle = match lock(&self.pushes).get(job) {
                None => return,
                Some((_, idle)) => idle.clone(),
            };
            let notified = idle.notified();
            if !lock(&self.pushes).contains_key(job) {
                return;
            }
            notified.await;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Marks the system line that says output is dropped from here on.
fn limit_notice_fields() -> Option<serde_json::Value> {
    Some(serde_json::json!({ "output_dropped": true }))
}

/// Cuts `message` to at most `max` bytes on a char boundary, marking the cut.
fn cut(message: String, max: usize) -> (String, bool) {
    if message.len() <= max {
        return (message, false);
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

/// For the fuzz tests: any line cut to any limit keeps a prefix of the
/// line whole-charactered, marks the cut, and leaves short lines alone.
#[cfg(test)]
pub(crate) fn fuzz_cut(
    message: String,
    max: usize,
) -> Result<(), proptest::test_runner::TestCaseError> {
    use proptest::prop_assert;
    let (kept, was_cut) = cut(message.clone(), max);
    if message.len() <= max {
        prop_assert!(!was_cut && kept == message);
    } else {
        prop_assert!(was_cut);
        let (prefix, marker) = kept
            .rsplit_once(" [line cut: ")
            .ok_or_else(|| proptest::test_runner::TestCaseError::fail("no marker"))?;
        prop_assert!(prefix.len() <= max && message.starts_with(prefix));
        let expected = format!("{} more bytes dropped]", message.len() - prefix.len());
        prop_assert!(marker == expected, "marker {marker:?}");
    }
    Ok(())
}

/// Told of every append, so other replicas can wake their readers.
pub type AppendNotifier = Arc<dyn Fn(&JobId) + Send + Sync>;

/// All job logs of this server: the record, the limits, and the wake-ups of
/// readers.
pub struct LogStore {
    record: Arc<dyn LogRecord>,
    limits: LogLimits,
    bytes: Mutex<lru::LruCache<JobId, JobBytes>>,
    in_flight: InFlight,
    /// Ids of jobs whose log grew (here or, on PostgreSQL, on another replica).
    appended: broadcast::Sender<JobId>,
    /// Told of every append, so other replicas can wake their readers.
    notifier: std::sync::OnceLock<AppendNotifier>,
    totals: LogTotalsCounter,
}

/// What this server stored and dropped of workers' lines since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogTotals {
    /// Lines stored.
    pub lines: u64,
    /// Bytes of the stored lines' messages.
    pub bytes: u64,
    /// Lines dropped because their job's log was full.
    pub dropped_lines: u64,
}

#[derive(Debug, Default)]
struct LogTotalsCounter {
    lines: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
    dropped_lines: std::sync::atomic::AtomicU64,
}

impl LogStore {
    /// Logs kept in `record`, cut to `limits`.
    pub fn new(record: Arc<dyn LogRecord>, limits: LogLimits) -> Self {
        Self {
            record,
            limits,
            bytes: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(TRACKED_JOBS).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
            in_flight: InFlight::default(),
            appended: broadcast::Sender::new(WAKE_BUFFER),
            notifier: std::sync::OnceLock::new(),
            totals: LogTotalsCounter::default(),
        }
    }

    /// Lines and bytes stored and dropped so far.
    pub fn totals(&self) -> LogTotals {
        use std::sync::atomic::Ordering::Relaxed;
        LogTotals {
            lines: self.totals.lines.load(Relaxed),
            bytes: self.totals.bytes.load(Relaxed),
            dropped_lines: self.totals.dropped_lines.load(Relaxed),
        }
    }

    /// Tells `notifier` of every append from now on (set once).
    pub fn set_notifier(&self, notifier: AppendNotifier) {
        let _ = self.notifier.set(notifier);
    }

    /// Wake-ups: ids of jobs whose log grew.
    pub fn appended(&self) -> broadcast::Receiver<JobId> {
        self.appended.subscribe()
    }

    /// Another replica stored lines of a job: wake its readers here.
    pub fn remote_appended(&self, job: JobId) {
        let _ = self.appended.send(job);
    }

    /// Applies the size limits: cuts long lines, drops what the job has no
    /// room for, marking the first drop with a system line.
    async fn admit(
        &self,
        job: &JobId,
        lines: Vec<NewLine>,
        outcome: &mut AppendOutcome,
    ) -> QueueResult<Vec<NewLine>> {
        let cached = lock(&self.bytes).get(job).copied();
        let mut counters = match cached {
            Some(counters) => counters,
            None => JobBytes {
                kept: self.record.stored_bytes(job).await?,
                dropped_lines: 0,
            },
        };
        let mut kept = Vec::with_capacity(lines.len());
        for mut line in lines {
            let (message, was_cut) = cut(
                std::mem::take(&mut line.message),
                self.limits.max_line_bytes,
            );
            // Once a line did not fit, nothing more goes in: the log must
            // not show later lines after a gap.
            if counters.dropped_lines > 0
                || counters.kept + message.len() as u64 > self.limits.max_job_bytes
            {
                if counters.dropped_lines == 0 {
                    kept.push(NewLine {
                        stream: LogStream::System,
                        time: line.time,
                        message: format!(
                            "log limit of {} bytes reached: further output of this job is dropped (the worker is told how many lines)",
                            self.limits.max_job_bytes
                        ),
                        fields: limit_notice_fields(),
                        cseq: None,
                    });
                }
                counters.dropped_lines += 1;
                outcome.dropped += 1;
                continue;
            }
            counters.kept += message.len() as u64;
            line.message = message;
            outcome.truncated += u64::from(was_cut);
            kept.push(line);
        }
        lock(&self.bytes).put(job.clone(), counters);
        Ok(kept)
    }

    /// Stores lines a worker pushed under `lease`; they are in the record
    /// when this returns.
    pub async fn push(
        &self,
        job: &JobId,
        lease: &LeaseToken,
        lines: Vec<NewLine>,
    ) -> QueueResult<AppendOutcome> {
        self.in_flight.enter(job);
        let pushed = self.push_now(job, lease, lines).await;
        self.in_flight.exit(job);
        let outcome = pushed?;
        if outcome.last_position > 0 {
            let _ = self.appended.send(job.clone());
            if let Some(notifier) = self.notifier.get() {
                notifier(job);
            }
        }
        Ok(outcome)
    }

    async fn push_now(
        &self,
        job: &JobId,
        lease: &LeaseToken,
        lines: Vec<NewLine>,
    ) -> QueueResult<AppendOutcome> {
        let mut outcome = AppendOutcome::default();
        let admitted = self.admit(job, lines, &mut outcome).await?;
        // The limit notice is the server's, not the worker's: it is not counted as accepted.
        let notices = admitted
            .iter()
            .filter(|line| line.fields == limit_notice_fields())
            .count();
        let from_worker = (admitted.len() - notices) as u64;
        let (_, stored) = self.record.append(job, lease, admitted).await?;
        let stored_from_worker = (stored.len() - notices.min(stored.len())) as u64;
        {
            use std::sync::atomic::Ordering::Relaxed;
            let bytes: usize = stored.iter().map(|line| line.message.len()).sum();
            self.totals.lines.fetch_add(stored.len() as u64, Relaxed);
            self.totals.bytes.fetch_add(bytes as u64, Relaxed);
            self.totals
                .dropped_lines
                .fetch_add(outcome.dropped, Relaxed);
        }
        outcome.accepted = stored_from_worker;
        outcome.duplicates = from_worker.saturating_sub(stored_from_worker);
        outcome.last_position = stored.last().map_or(0, |line| line.position);
        Ok(outcome)
    }

    /// Waits until no push of `job` is in progress.
    pub async fn settled(&self, job: &JobId) {
        self.in_flight.wait_idle(job).await;
    }

    /// Up to `limit` stored lines after `after`.
    pub async fn stored(&self, job: &JobId, after: u64, limit: usize) -> QueueResult<Vec<LogLine>> {
        self.record.read(job, after, limit).await
    }
}

#[async_trait]
impl JobLog for LogStore {
    async fn deleted(&self, job_ids: &[JobId]) {
        self.record.delete(job_ids).await;
        let mut bytes = lock(&self.bytes);
        for job in job_ids {
            bytes.pop(job);
        }
        drop(bytes);
        for job in job_ids {
            let _ = self.appended.send(job.clone());
        }
    }
}
