//! The tasks behind the server streams StreamJobLogs and WatchJobs. Each
//! feeds one client through a small bounded channel and waits for it:
//!
//! - a log follower is a cursor over the stored log: it reads a page after
//!   its position, sends it, and reads again when woken (a line stored, the
//!   job changed) — a slow client just reads later, it never misses a line;
//! - a job watcher gets events from a shared buffer of recent events (they
//!   are not stored); one that falls behind is told how many it missed and
//!   goes on.
//!
//! When the server shuts down both end with UNAVAILABLE, so a client knows
//! to reconnect rather than take the end for the job's.

use std::sync::Arc;
use std::time::Duration;

use jobq_proto::v1 as pb;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

use super::convert;
use crate::domain::{JobEvent, JobId, JobQueue, JobState};
use crate::logs::LogStream;
use crate::logs::reader::LogReader;
use crate::store::peers::PgPeers;

/// Messages buffered per stream before the sender waits for the client.
pub const STREAM_BUFFER: usize = 16;
/// Lines per message.
const PAGE_LINES: usize = 500;
/// How long a follower waits without a wake-up before it looks anyway (a
/// change on another replica that was not announced here).
const PATIENCE: Duration = Duration::from_secs(1);

pub(super) fn shutting_down(what: &str) -> Status {
    Status::unavailable(format!(
        "the server is shutting down; {what} again (on this or another server)"
    ))
}

/// Open watchers and followers on this server, announced to other replicas
/// (on PostgreSQL) so that they send their events here.
#[derive(Clone, Default)]
pub struct WatchPresence {
    peers: Option<Arc<PgPeers>>,
}

impl WatchPresence {
    /// Announces through `peers` (none on SQLite).
    pub fn new(peers: Option<Arc<PgPeers>>) -> Self {
        Self { peers }
    }

    pub(super) fn open(&self) -> PresenceGuard {
        if let Some(peers) = &self.peers {
            peers.watcher_opened();
        }
        PresenceGuard {
            peers: self.peers.clone(),
        }
    }
}

/// Counts one open stream until dropped.
pub(super) struct PresenceGuard {
    peers: Option<Arc<PgPeers>>,
}

impl Drop for PresenceGuard {
    fn drop(&mut self) {
        if let Some(peers) = &self.peers {
            peers.watcher_closed();
        }
    }
}

/// One StreamJobLogs call.
pub struct LogFollow {
    /// Reads the job's log.
    pub reader: LogReader,
    /// Whose log.
    pub job_id: JobId,
    /// Streams wanted (all if empty).
    pub streams: Vec<LogStream>,
    /// Send lines after this position.
    pub after: u64,
    /// Stay open until the job is terminal.
    pub follow: bool,
    /// Announces the follower to other replicas.
    pub presence: WatchPresence,
}

type LogSender = mpsc::Sender<Result<pb::StreamJobLogsResponse, Status>>;

impl LogFollow {
    /// Replays, then follows until the job is terminal and its last line
    /// sent, the client leaves, or the server shuts down.
    pub async fn run(mut self, sender: LogSender) {
        let _present = self.follow.then(|| self.presence.open());
        // Subscribe before the first read, so no wake-up falls in between.
        let (mut appended, mut events) = self.reader.subscribe();
        let shutdown = self.reader.queue().shutdown_token().clone();
        loop {
            if shutdown.is_cancelled() {
                let _ = sender.send(Err(shutting_down("follow the log"))).await;
                return;
            }
            let page = match self
                .reader
                .page(&self.job_id, self.after, PAGE_LINES, &self.streams)
                .await
            {
                Ok(Some(page)) => page,
                // Deleted: nothing more will come.
                Ok(None) => return,
                Err(error) => {
                    let _ = sender.send(Err(Status::from(error))).await;
                    return;
                }
            };
            self.after = page.next_after;
            if !page.lines.is_empty() {
                let lines = page
                    .lines
                    .into_iter()
                    .map(convert::proto_log_line)
                    .collect();
                tokio::select! {
                    sent = sender.send(Ok(pb::StreamJobLogsResponse { lines })) => {
                        if sent.is_err() {
                            return;
                        }
                    }
                    () = shutdown.cancelled() => {
                        let _ = sender.try_send(Err(shutting_down("follow the log")));
                        return;
                    }
                }
            }
            if page.complete || (!self.follow && !page.more) {
                return;
            }
            if page.more {
                continue;
            }
            tokio::select! {
                () = self.reader.changed(&self.job_id, &mut appended, &mut events, PATIENCE) => {}
                () = sender.closed() => return,
                () = shutdown.cancelled() => {
                    let _ = sender.send(Err(shutting_down("follow the log"))).await;
                    return;
                }
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
    /// How much of each job to send.
    pub view: pb::JobView,
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

/// Feeds one WatchJobs call until the client leaves or the server shuts down.
pub async fn watch_events(
    queue: Arc<JobQueue>,
    mut events: broadcast::Receiver<JobEvent>,
    filter: EventFilter,
    sender: mpsc::Sender<Result<pb::WatchJobsResponse, Status>>,
    presence: WatchPresence,
) {
    let _present = presence.open();
    let shutdown = queue.shutdown_token().clone();
    loop {
        let message = tokio::select! {
            event = events.recv() => match event {
                Ok(event) if filter.matches(&event) => {
                    let event = if filter.view == pb::JobView::Full {
                        with_payload(&queue, event).await
                    } else {
                        event
                    };
                    pb::WatchJobsResponse {
                        event: Some(convert::proto_event(event, filter.view)),
                        lagged: false,
                        dropped_events: 0,
                    }
                }
                Ok(_) => continue,
                Err(RecvError::Lagged(dropped)) => pb::WatchJobsResponse {
                    event: None,
                    lagged: true,
                    dropped_events: dropped,
                },
                Err(RecvError::Closed) => return,
            },
            () = sender.closed() => return,
            () = shutdown.cancelled() => {
                let _ = sender.send(Err(shutting_down("watch"))).await;
                return;
            }
        };
        tokio::select! {
            sent = sender.send(Ok(message)) => {
                if sent.is_err() {
                    return;
                }
            }
            () = shutdown.cancelled() => {
                let _ = sender.try_send(Err(shutting_down("watch")));
                return;
            }
        }
    }
}

/// The event with its job's payload and result, read now (events carry none).
async fn with_payload(queue: &JobQueue, mut event: JobEvent) -> JobEvent {
    if let Ok(job) = queue.get(&event.job.id, crate::domain::Detail::Full).await {
        event.job.payload = job.payload;
        event.job.result = job.result;
    }
    event
}
