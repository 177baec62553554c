//! A job's log: [`JobLogger`] queues lines; one pusher task per job sends them
//! to the server in batches through the `PushJobLogs` client stream.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use jobq_proto::v1 as pb;
use jobq_proto::v1::worker_service_client::WorkerServiceClient;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use crate::client::AuthChannel;
use crate::convert::proto_timestamp;

/// Most lines in one PushJobLogs message (the server's batch limit).
const MAX_LINES_PER_MESSAGE: usize = 1000;
/// Attempts at the last flush once the job is over, before the rest is given up.
const FINAL_FLUSH_ATTEMPTS: u32 = 3;

/// Writes lines to a job's log. Cheap to clone. Lines never block the
/// handler: when the server cannot keep up and the buffer is full, lines are
/// dropped and the log says how many.
#[derive(Clone, Debug)]
pub struct JobLogger {
    lines: mpsc::Sender<pb::LogEntry>,
    dropped: Arc<AtomicU64>,
}

impl JobLogger {
    /// A line of the job's standard output.
    pub fn stdout(&self, message: impl Into<String>) {
        self.write(pb::LogStream::Stdout, message.into(), -1, None);
    }

    /// A line of the job's standard error.
    pub fn stderr(&self, message: impl Into<String>) {
        self.write(pb::LogStream::Stderr, message.into(), -1, None);
    }

    /// A line from the runtime or the handler about the job (not its output).
    pub fn system(&self, message: impl Into<String>) {
        self.write(pb::LogStream::System, message.into(), -1, None);
    }

    /// A progress line, 0..100 or -1 when unknown.
    pub fn progress(&self, percent: i32, message: impl Into<String>) {
        self.write(pb::LogStream::Progress, message.into(), percent, None);
    }

    /// A line with structured fields (a JSON object).
    pub fn with_fields(
        &self,
        stream: pb::LogStream,
        message: impl Into<String>,
        fields: serde_json::Value,
    ) {
        self.write(stream, message.into(), -1, Some(fields));
    }

    fn write(
        &self,
        stream: pb::LogStream,
        message: String,
        percent: i32,
        fields: Option<serde_json::Value>,
    ) {
        let entry = pb::LogEntry {
            stream: stream as i32,
            time: Some(proto_timestamp(SystemTime::now())),
            message,
            progress_percent: percent,
            fields: fields.map(|fields| fields.to_string()).unwrap_or_default(),
        };
        match self.lines.try_send(entry) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            // The attempt is over; late lines from leftover tasks go nowhere.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// Sends one job's lines to the server.
pub(crate) struct LogPusher {
    lines: mpsc::Receiver<pb::LogEntry>,
    dropped: Arc<AtomicU64>,
    worker: WorkerServiceClient<AuthChannel>,
    lease: pb::JobLease,
    flush_interval: Duration,
    buffer_lines: usize,
    request_timeout: Duration,
    backoff: Backoff,
    /// Fired by the supervisor when the attempt is over: flush and stop.
    closing: CancellationToken,
}

/// How one push went.
enum Pushed {
    Done,
    /// Worth trying again (server unreachable).
    Retry(String),
    /// The server will never take these lines (lease gone, or no log support).
    Refused(String),
}

/// Makes the logger of one job and its pusher.
#[allow(clippy::too_many_arguments)]
pub(crate) fn job_log(
    worker: WorkerServiceClient<AuthChannel>,
    lease: pb::JobLease,
    flush_interval: Duration,
    buffer_lines: usize,
    request_timeout: Duration,
    backoff: Backoff,
    closing: CancellationToken,
) -> (JobLogger, LogPusher) {
    let (sender, receiver) = mpsc::channel(buffer_lines);
    let dropped = Arc::new(AtomicU64::new(0));
    let logger = JobLogger {
        lines: sender,
        dropped: dropped.clone(),
    };
    let pusher = LogPusher {
        lines: receiver,
        dropped,
        worker,
        lease,
        flush_interval,
        buffer_lines,
        request_timeout,
        backoff,
        closing,
    };
    (logger, pusher)
}

impl LogPusher {
    /// Runs until the job's attempt is over and its lines are flushed (or given up).
    pub async fn run(mut self) {
        let mut pending: VecDeque<pb::LogEntry> = VecDeque::new();
        let mut oldest_pending_at = Instant::now();
        let mut retry_at: Option<Instant> = None;
        let mut open = true;
        let mut refused = false;
        let mut final_attempts = 0;
        loop {
            if open {
                let wake_at = if pending.is_empty() {
                    None
                } else {
                    Some(retry_at.unwrap_or(oldest_pending_at + self.flush_interval))
                };
                tokio::select! {
                    biased;
                    () = self.closing.cancelled() => {
                        self.lines.close();
                        while let Ok(entry) = self.lines.try_recv() {
                            pending.push_back(entry);
                        }
                        open = false;
                    }
                    entry = self.lines.recv() => match entry {
                        Some(entry) => {
                            if refused {
                                continue;
                            }
                            if pending.is_empty() {
                                oldest_pending_at = Instant::now();
                            }
                            pending.push_back(entry);
                            if pending.len() < MAX_LINES_PER_MESSAGE || retry_at.is_some() {
                                continue;
                            }
                        }
                        None => open = false,
                    },
                    () = sleep_until(wake_at) => {}
                }
            }
            if refused {
                pending.clear();
            }
            self.note_dropped(&mut pending);
            if pending.is_empty() {
                if open {
                    continue;
                }
                return;
            }
            match self.push(&pending).await {
                Pushed::Done => {
                    pending.clear();
                    retry_at = None;
                    self.backoff.reset();
                }
                Pushed::Refused(why) => {
                    tracing::debug!(job_id = %self.lease.job_id, "log lines refused, no more are sent: {why}");
                    pending.clear();
                    refused = true;
                }
                Pushed::Retry(why) => {
                    let delay = self.backoff.next_delay();
                    if !open {
                        final_attempts += 1;
                        if final_attempts >= FINAL_FLUSH_ATTEMPTS {
                            tracing::warn!(
                                job_id = %self.lease.job_id,
                                lines = pending.len(),
                                "giving up on the last log lines of the job: {why}"
                            );
                            return;
                        }
                        tokio::time::sleep(delay).await;
                    } else {
                        tracing::debug!(job_id = %self.lease.job_id, ?delay, "pushing log lines failed, retrying: {why}");
                        retry_at = Some(Instant::now() + delay);
                    }
                    while pending.len() > self.buffer_lines {
                        pending.pop_front();
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    /// Adds a system line saying how many lines were dropped since the last one.
    fn note_dropped(&self, pending: &mut VecDeque<pb::LogEntry>) {
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            pending.push_back(pb::LogEntry {
                stream: pb::LogStream::System as i32,
                time: Some(proto_timestamp(SystemTime::now())),
                message: format!("jobq worker: {dropped} log lines were dropped (the server could not take them in time)"),
                progress_percent: -1,
                fields: String::new(),
            });
        }
    }

    async fn push(&mut self, pending: &VecDeque<pb::LogEntry>) -> Pushed {
        let entries: Vec<pb::LogEntry> = pending.iter().cloned().collect();
        let messages: Vec<pb::PushJobLogsRequest> = entries
            .chunks(MAX_LINES_PER_MESSAGE)
            .map(|chunk| pb::PushJobLogsRequest {
                lease: Some(self.lease.clone()),
                entries: chunk.to_vec(),
            })
            .collect();
        let call = self.worker.push_job_logs(tokio_stream::iter(messages));
        match tokio::time::timeout(self.request_timeout, call).await {
            Ok(Ok(_)) => Pushed::Done,
            Ok(Err(status)) => match status.code() {
                tonic::Code::FailedPrecondition | tonic::Code::NotFound => {
                    Pushed::Refused(format!("the lease is gone: {}", status.message()))
                }
                tonic::Code::Unimplemented => {
                    tracing::warn!(
                        "the server does not take job logs (PushJobLogs is unimplemented); job output is not stored"
                    );
                    Pushed::Refused("PushJobLogs is unimplemented".into())
                }
                tonic::Code::InvalidArgument
                | tonic::Code::Unauthenticated
                | tonic::Code::PermissionDenied => {
                    tracing::warn!(job_id = %self.lease.job_id, "the server refused log lines: {}", status.message());
                    Pushed::Refused(status.message().to_owned())
                }
                _ => Pushed::Retry(format!("{}: {}", status.code(), status.message())),
            },
            Err(_) => Pushed::Retry(format!("no answer within {:?}", self.request_timeout)),
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
