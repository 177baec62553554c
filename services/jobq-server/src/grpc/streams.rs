//! The tasks behind the server streams StreamJobLogs and WatchJobs. Each
//! feeds one client through a small bounded channel; a client that reads too
//! slowly falls behind the shared broadcast, is told it lagged, and its
//! stream ends, so it never holds back the writers or other clients.

use std::sync::Arc;
use std::time::Duration;

use jobq_proto::v1 as pb;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

use super::convert;
use crate::domain::{JobEvent, JobId, JobQueue, JobState};
use crate::logs::{LogLine, LogStore, LogStream};

/// Messages buffered per stream before the sender waits for the client.
pub const STREAM_BUFFER: usize = 16;
/// Lines per message when replaying stored logs.
const REPLAY_BATCH: usize = 500;
/// Most lines per message when following live. Small, so that what one
/// follower may hold buffered (this times STREAM_BUFFER messages) stays small
/// and a follower that stops reading falls behind, and is told so, early.
const LIVE_BATCH: usize = 64;
/// How often a follower re-checks whether its job finished (in case the
/// finish happened on another replica).
const FINISH_CHECK: Duration = Duration::from_secs(1);

/// One StreamJobLogs call.
pub struct LogFollow {
    /// The queue, for the job's state.
    pub queue: Arc<JobQueue>,
    /// The logs.
    pub logs: Arc<LogStore>,
    /// Whose log.
    pub job_id: JobId,
    /// Streams wanted (all if empty).
    pub streams: Vec<LogStream>,
    /// Send lines after this position.
    pub after: u64,
    /// Stay open until the job is terminal.
    pub follow: bool,
}

type LogSender = mpsc::Sender<Result<pb::StreamJobLogsResponse, Status>>;

impl LogFollow {
    fn wanted(&self, line: &LogLine) -> bool {
        self.streams.is_empty() || self.streams.contains(&line.stream)
    }

    /// Sends every stored line after `self.after`; false when the client is gone.
    async fn catch_up(&mut self, sender: &LogSender) -> bool {
        loop {
            let (lines, end) = match self
                .logs
                .read(&self.job_id, self.after, REPLAY_BATCH, &self.streams)
                .await
            {
                Ok(read) => read,
                Err(error) => {
                    let _ = sender.send(Err(Status::from(error))).await;
                    return false;
                }
            };
            if let Some(last) = lines.last() {
                self.after = last.position;
                let lines = lines.into_iter().map(convert::proto_log_line).collect();
                let message = pb::StreamJobLogsResponse {
                    lines,
                    lagged: false,
                    resume_after_position: 0,
                };
                if sender.send(Ok(message)).await.is_err() {
                    return false;
                }
            }
            if end {
                return true;
            }
        }
    }

    async fn finished(&self) -> bool {
        // A job that is gone (deleted) has nothing more to say either.
        !matches!(
            self.queue.is_terminal(&self.job_id).await,
            Ok(Some(false)) | Err(_)
        )
    }

    /// Replays, then follows until the job is terminal, the client leaves or
    /// the server shuts down.
    pub async fn run(mut self, sender: LogSender) {
        // Subscribe before replaying, so no line falls between the two.
        let mut live = self.logs.follow(&self.job_id);
        let mut finished = self.logs.finished_jobs();
        if !self.catch_up(&sender).await || !self.follow || self.finished().await {
            // A finished job's last lines are on disk: one more look, then done.
            if self.follow {
                self.catch_up(&sender).await;
            }
            return;
        }
        let shutdown = self.queue.shutdown_token().clone();
        let mut finish_check = tokio::time::interval(FINISH_CHECK);
        loop {
            tokio::select! {
                line = live.recv() => match line {
                    Ok(first) => {
                        // Send what is waiting as one message: a burst costs one send, not one per line.
                        let mut batch = vec![first];
                        while batch.len() < LIVE_BATCH {
                            match live.try_recv() {
                                Ok(line) => batch.push(line),
                                Err(_) => break,
                            }
                        }
                        let mut lines = Vec::with_capacity(batch.len());
                        for line in batch {
                            if line.position <= self.after {
                                continue;
                            }
                            self.after = line.position;
                            if self.wanted(&line) {
                                lines.push(convert::proto_log_line(line));
                            }
                        }
                        if !lines.is_empty() {
                            let message = pb::StreamJobLogsResponse { lines, lagged: false, resume_after_position: 0 };
                            if sender.send(Ok(message)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        let message = pb::StreamJobLogsResponse {
                            lines: Vec::new(),
                            lagged: true,
                            resume_after_position: self.after,
                        };
                        let _ = sender.send(Ok(message)).await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                },
                finished_id = finished.recv() => {
                    let ours = match finished_id {
                        Ok(id) => id == self.job_id.as_str(),
                        Err(RecvError::Lagged(_)) => self.finished().await,
                        Err(RecvError::Closed) => true,
                    };
                    if ours {
                        self.catch_up(&sender).await;
                        return;
                    }
                }
                _ = finish_check.tick() => {
                    if self.finished().await {
                        self.catch_up(&sender).await;
                        return;
                    }
                }
                () = sender.closed() => return,
                () = shutdown.cancelled() => return,
            }
        }
    }
}

/// Which events a WatchJobs call wants.
pub struct EventFilter {
    /// Queues (any if empty).
    pub queues: Vec<String>,
    /// Types (any if empty).
    pub types: Vec<String>,
    /// Current states (any if empty).
    pub states: Vec<JobState>,
    /// Jobs (any if empty).
    pub job_ids: Vec<JobId>,
}

impl EventFilter {
    fn matches(&self, event: &JobEvent) -> bool {
        let job = &event.job;
        (self.queues.is_empty() || self.queues.contains(&job.queue))
            && (self.types.is_empty() || self.types.contains(&job.job_type))
            && (self.states.is_empty() || self.states.contains(&job.state))
            && (self.job_ids.is_empty() || self.job_ids.contains(&job.id))
    }
}

/// Feeds one WatchJobs call until the client leaves, lags, or the server shuts down.
pub async fn watch_events(
    queue: Arc<JobQueue>,
    mut events: broadcast::Receiver<JobEvent>,
    filter: EventFilter,
    sender: mpsc::Sender<Result<pb::WatchJobsResponse, Status>>,
) {
    let shutdown = queue.shutdown_token().clone();
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(event) if filter.matches(&event) => {
                    let message = pb::WatchJobsResponse { event: Some(convert::proto_event(event, queue.now())), lagged: false };
                    if sender.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => {
                    let _ = sender.send(Ok(pb::WatchJobsResponse { event: None, lagged: true })).await;
                    return;
                }
                Err(RecvError::Closed) => return,
            },
            () = sender.closed() => return,
            () = shutdown.cancelled() => return,
        }
    }
}
