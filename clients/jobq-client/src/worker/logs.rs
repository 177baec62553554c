//! Job logs: a [`JobLogger`] per job queues lines; one pusher task per
//! worker sends the lines of all its jobs together, one `PushJobLogs` call
//! per flush carrying a message per job. Lines are numbered per lease, so a
//! batch sent again after a lost answer is not stored twice; a job whose
//! lease is gone stops only its own lines.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tracing::Instrument;

use jobq_proto::v1 as pb;
use jobq_proto::v1::worker_service_client::WorkerServiceClient;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use crate::client::AuthChannel;
use crate::convert::{proto_struct, proto_timestamp};

/// Most lines in one PushJobLogs message (the server's batch limit).
const MAX_LINES_PER_MESSAGE: usize = 1000;
/// Lines waiting in the pusher's inbox before loggers start dropping.
const INBOX_LINES: usize = 16_384;
/// Tries of the last flush of a job once its attempt is over.
const FINAL_FLUSH_TRIES: u32 = 3;

enum Command {
    /// A job started: its lines are numbered from here.
    Open {
        lease: pb::JobLease,
        dropped: Arc<AtomicU64>,
    },
    /// A line of a job.
    Line { job_id: String, entry: pb::LogEntry },
    /// The job's attempt is over: push what it wrote, then forget it.
    Close {
        job_id: String,
        done: oneshot::Sender<()>,
    },
}

/// Writes lines to a job's log. Cheap to clone. Lines never block the
/// handler: when the server cannot keep up and the buffer is full, lines are
/// dropped and the log says how many.
#[derive(Clone, Debug)]
pub struct JobLogger {
    job_id: String,
    inbox: mpsc::Sender<Command>,
    dropped: Arc<AtomicU64>,
}

impl JobLogger {
    /// A line of the job's standard output.
    pub fn stdout(&self, message: impl Into<String>) {
        self.write(pb::LogStream::Stdout, message.into(), None, None);
    }

    /// A line of the job's standard error.
    pub fn stderr(&self, message: impl Into<String>) {
        self.write(pb::LogStream::Stderr, message.into(), None, None);
    }

    /// A line from the runtime or the handler about the job (not its output).
    pub fn system(&self, message: impl Into<String>) {
        self.write(pb::LogStream::System, message.into(), None, None);
    }

    /// A progress line, 0..100, or `None` when the percentage is unknown.
    pub fn progress(&self, percent: Option<i32>, message: impl Into<String>) {
        self.write(pb::LogStream::Progress, message.into(), percent, None);
    }

    /// A line with structured fields (a JSON object; anything else is ignored).
    pub fn with_fields(
        &self,
        stream: pb::LogStream,
        message: impl Into<String>,
        fields: serde_json::Value,
    ) {
        self.write(stream, message.into(), None, Some(fields));
    }

    fn write(
        &self,
        stream: pb::LogStream,
        message: String,
        percent: Option<i32>,
        fields: Option<serde_json::Value>,
    ) {
        let entry = pb::LogEntry {
            stream: stream as i32,
            time: Some(proto_timestamp(SystemTime::now())),
            message,
            progress_percent: percent,
            fields: match fields {
                Some(serde_json::Value::Object(fields)) => Some(proto_struct(fields)),
                _ => None,
            },
        };
        let line = Command::Line {
            job_id: self.job_id.clone(),
            entry,
        };
        match self.inbox.try_send(line) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            // The worker is gone; late lines from leftover tasks go nowhere.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// The worker's side of the pusher: opens and closes job logs.
#[derive(Clone, Debug)]
pub(crate) struct LogSink {
    inbox: mpsc::Sender<Command>,
}

impl LogSink {
    /// The logger of a job that just started under `lease`.
    pub async fn open(&self, lease: pb::JobLease) -> JobLogger {
        let dropped = Arc::new(AtomicU64::new(0));
        let job_id = lease.job_id.clone();
        let _ = self
            .inbox
            .send(Command::Open {
                lease,
                dropped: dropped.clone(),
            })
            .await;
        JobLogger {
            job_id,
            inbox: self.inbox.clone(),
            dropped,
        }
    }

    /// Pushes what the job wrote and forgets it; returns once done (or
    /// given up, or after `limit`).
    pub async fn close(&self, job_id: &str, limit: Duration) {
        let (done, pushed) = oneshot::channel();
        let close = Command::Close {
            job_id: job_id.to_owned(),
            done,
        };
        if self.inbox.send(close).await.is_ok() {
            let _ = tokio::time::timeout(limit, pushed).await;
        }
    }
}

/// One job's lines waiting to be pushed.
struct JobLines {
    lease: pb::JobLease,
    /// Sequence number of the next line written (from 1).
    next_sequence: u64,
    /// Lines not yet acknowledged, with their sequence numbers.
    pending: VecDeque<(u64, pb::LogEntry)>,
    dropped: Arc<AtomicU64>,
    /// The server refused the lease: lines of this job go nowhere.
    refused: bool,
    /// Set once the attempt is over: answered after the last push.
    closing: Option<oneshot::Sender<()>>,
    final_tries: u32,
}

impl JobLines {
    fn add(&mut self, entry: pb::LogEntry) {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.pending.push_back((sequence, entry));
    }

    /// Adds a system line saying how many lines were dropped since the last one.
    fn note_dropped(&mut self) {
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            self.add(pb::LogEntry {
                stream: pb::LogStream::System as i32,
                time: Some(proto_timestamp(SystemTime::now())),
                message: format!(
                    "jobq worker: {dropped} log lines were dropped (the server could not take them in time)"
                ),
                progress_percent: None,
                fields: None,
            });
        }
    }
}

/// Sends the lines of every job of the worker.
pub(crate) struct LogPusher {
    inbox: mpsc::Receiver<Command>,
    jobs: HashMap<String, JobLines>,
    worker: WorkerServiceClient<AuthChannel>,
    flush_interval: Duration,
    buffer_lines: usize,
    request_timeout: Duration,
    backoff: Backoff,
}

/// The pusher of a worker and the sink its jobs log into.
pub(crate) fn log_pusher(
    worker: WorkerServiceClient<AuthChannel>,
    flush_interval: Duration,
    buffer_lines: usize,
    request_timeout: Duration,
    backoff: Backoff,
) -> (LogSink, LogPusher) {
    let (sender, receiver) = mpsc::channel(INBOX_LINES);
    let pusher = LogPusher {
        inbox: receiver,
        jobs: HashMap::new(),
        worker,
        flush_interval,
        buffer_lines,
        request_timeout,
        backoff,
    };
    (LogSink { inbox: sender }, pusher)
}

/// How one push went.
enum Pushed {
    Done,
    /// The lease of this job is gone: its lines are dropped, the others go again.
    LeaseGone(String),
    /// Worth trying again (server unreachable).
    Retry(String),
    /// The server will never take lines (no log support, refused call).
    Refused(String),
}

impl LogPusher {
    /// Runs until the sink and every logger are dropped and what they
    /// wrote is pushed (or given up), or `stop` fires.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut flush_at: Option<Instant> = None;
        let mut retry_at: Option<Instant> = None;
        let mut open = true;
        loop {
            self.finish_closed();
            let pending = self.jobs.values().any(|job| {
                !job.refused && (!job.pending.is_empty() || job.dropped.load(Ordering::Relaxed) > 0)
            });
            if !open && !pending {
                self.give_up_all();
                return;
            }
            let now = Instant::now();
            if pending && flush_at.is_none() {
                flush_at = Some(now + self.flush_interval);
            }
            let urgent = !open
                || self.jobs.values().any(|job| {
                    (job.closing.is_some() && !job.pending.is_empty())
                        || job.pending.len() >= MAX_LINES_PER_MESSAGE
                });
            let due_at = if urgent && pending {
                Some(now)
            } else {
                flush_at
            };
            let wake_at = match (retry_at, due_at) {
                (Some(retry), Some(due)) => Some(retry.max(due)),
                (_, due) => due,
            };
            if wake_at.is_some_and(|at| at <= now) {
                retry_at = None;
                flush_at = None;
                let span = tracing::info_span!("push_logs", otel.name = "jobq.push_logs");
                match self.push().instrument(span).await {
                    Ok(()) => self.backoff.reset(),
                    Err(delay) => retry_at = Some(Instant::now() + delay),
                }
                continue;
            }
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                command = self.inbox.recv(), if open => match command {
                    Some(command) => {
                        self.take(command);
                        // Everything already waiting goes in the same push.
                        while let Ok(command) = self.inbox.try_recv() {
                            self.take(command);
                        }
                    }
                    None => open = false,
                },
                () = sleep_until(wake_at) => {}
            }
        }
    }

    /// Answers every closing job: nothing more will be pushed.
    fn give_up_all(&mut self) {
        for (_, mut job) in self.jobs.drain() {
            if let Some(done) = job.closing.take() {
                let _ = done.send(());
            }
        }
    }

    fn take(&mut self, command: Command) {
        match command {
            Command::Open { lease, dropped } => {
                self.jobs.insert(
                    lease.job_id.clone(),
                    JobLines {
                        lease,
                        next_sequence: 1,
                        pending: VecDeque::new(),
                        dropped,
                        refused: false,
                        closing: None,
                        final_tries: 0,
                    },
                );
            }
            Command::Line { job_id, entry } => {
                if let Some(job) = self.jobs.get_mut(&job_id)
                    && !job.refused
                {
                    job.add(entry);
                    while job.pending.len() > self.buffer_lines {
                        job.pending.pop_front();
                        job.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Command::Close { job_id, done } => match self.jobs.get_mut(&job_id) {
                Some(job) => job.closing = Some(done),
                None => {
                    let _ = done.send(());
                }
            },
        }
    }

    /// Answers and forgets the closed jobs whose lines are all pushed (or
    /// will never be).
    fn finish_closed(&mut self) {
        let finished: Vec<String> = self
            .jobs
            .iter()
            .filter(|(_, job)| {
                job.closing.is_some()
                    && (job.pending.is_empty()
                        || job.refused
                        || job.final_tries >= FINAL_FLUSH_TRIES)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in finished {
            if let Some(mut job) = self.jobs.remove(&id) {
                if !job.pending.is_empty() && !job.refused {
                    tracing::warn!(job_id = %id, lines = job.pending.len(), "giving up on the last log lines of the job");
                }
                if let Some(done) = job.closing.take() {
                    let _ = done.send(());
                }
            }
        }
    }

    /// One PushJobLogs call with the waiting lines of every job; on failure
    /// the wait before the next try.
    async fn push(&mut self) -> Result<(), Duration> {
        let mut messages = Vec::new();
        for job in self.jobs.values_mut() {
            if job.refused {
                job.pending.clear();
                continue;
            }
            job.note_dropped();
            let pending: Vec<&(u64, pb::LogEntry)> = job.pending.iter().collect();
            for chunk in pending.chunks(MAX_LINES_PER_MESSAGE) {
                messages.push(pb::PushJobLogsRequest {
                    lease: Some(job.lease.clone()),
                    first_sequence: chunk[0].0,
                    entries: chunk.iter().map(|(_, entry)| entry.clone()).collect(),
                });
            }
        }
        if messages.is_empty() {
            return Ok(());
        }
        let sent: Vec<(String, u64)> = messages
            .iter()
            .filter_map(|message| {
                let lease = message.lease.as_ref()?;
                Some((
                    lease.job_id.clone(),
                    message.first_sequence + message.entries.len() as u64,
                ))
            })
            .collect();
        match self.call(messages).await {
            Pushed::Done => {
                for (job_id, up_to) in sent {
                    if let Some(job) = self.jobs.get_mut(&job_id) {
                        while job
                            .pending
                            .front()
                            .is_some_and(|(sequence, _)| *sequence < up_to)
                        {
                            job.pending.pop_front();
                        }
                    }
                }
                Ok(())
            }
            Pushed::LeaseGone(job_id) => {
                tracing::debug!(%job_id, "the job's lease is gone; its log lines are dropped");
                if let Some(job) = self.jobs.get_mut(&job_id) {
                    job.refused = true;
                    job.pending.clear();
                }
                // The others go again at once (their numbers make it safe).
                Err(Duration::ZERO)
            }
            Pushed::Refused(why) => {
                tracing::warn!("the server refused log lines; job output is not stored: {why}");
                for job in self.jobs.values_mut() {
                    job.refused = true;
                    job.pending.clear();
                }
                Ok(())
            }
            Pushed::Retry(why) => {
                for job in self.jobs.values_mut() {
                    if job.closing.is_some() {
                        job.final_tries += 1;
                    }
                }
                let delay = self.backoff.next_delay();
                tracing::debug!(?delay, "pushing log lines failed, retrying: {why}");
                Err(delay)
            }
        }
    }

    async fn call(&mut self, messages: Vec<pb::PushJobLogsRequest>) -> Pushed {
        let call = self.worker.push_job_logs(tokio_stream::iter(messages));
        match tokio::time::timeout(self.request_timeout, call).await {
            Ok(Ok(_)) => Pushed::Done,
            Ok(Err(status)) => match status.code() {
                tonic::Code::FailedPrecondition | tonic::Code::NotFound => match job_of(&status) {
                    Some(job_id) => Pushed::LeaseGone(job_id),
                    None => Pushed::Refused(status.message().to_owned()),
                },
                tonic::Code::Unimplemented
                | tonic::Code::InvalidArgument
                | tonic::Code::Unauthenticated
                | tonic::Code::PermissionDenied => {
                    Pushed::Refused(format!("{}: {}", status.code(), status.message()))
                }
                _ => Pushed::Retry(format!("{}: {}", status.code(), status.message())),
            },
            Err(_) => Pushed::Retry(format!("no answer within {:?}", self.request_timeout)),
        }
    }
}

/// The job a refusal names (google.rpc.ErrorInfo metadata `job_id`).
fn job_of(status: &tonic::Status) -> Option<String> {
    let details = jobq_proto::rpc::Status::decode(status.details()).ok()?;
    details.details.iter().find_map(|any| {
        if !any.type_url.ends_with("google.rpc.ErrorInfo") {
            return None;
        }
        let info = jobq_proto::rpc::ErrorInfo::decode(any.value.as_slice()).ok()?;
        info.metadata.get("job_id").cloned()
    })
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
