//! Replicas on one PostgreSQL database tell each other what changed over
//! LISTEN/NOTIFY: a job became ready (wake waiting LeaseJobs calls), a job
//! started waiting (re-plan the promoter), a job event (for WatchJobs), log
//! lines stored (for followers of that job). Notices are small; the receiver
//! reads what it needs from the database.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::sqlx::postgres::PgListener;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::domain::{JobEvent, JobEventKind, JobId, JobQueue, JobState, Peers};
use crate::logs::{LogNotice, LogStore};

/// The NOTIFY channel.
const CHANNEL: &str = "jobq_events";
/// Longest wait before a lost LISTEN connection is tried again.
const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(5);

/// What one replica tells the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Notice {
    Ready,
    Waiting,
    Job {
        id: String,
        kind: String,
        from: Option<String>,
        error: Option<String>,
    },
    LogAppended {
        id: String,
        position: u64,
    },
    LogFinished {
        id: String,
    },
}

/// A notice with the replica it came from, so a replica ignores its own.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    origin: String,
    #[serde(flatten)]
    notice: Notice,
}

/// The sending half: queues notices for the publisher task.
pub struct PgPeers {
    outbox: mpsc::UnboundedSender<Notice>,
}

impl Peers for PgPeers {
    fn ready(&self) {
        let _ = self.outbox.send(Notice::Ready);
    }

    fn waiting(&self) {
        let _ = self.outbox.send(Notice::Waiting);
    }

    fn job_event(&self, event: &JobEvent) {
        let (kind, from, error) = match &event.kind {
            JobEventKind::Created => ("created", None, None),
            JobEventKind::StateChanged { from } => ("state", Some(from.as_str().to_owned()), None),
            JobEventKind::Progress => ("progress", None, None),
            JobEventKind::AttemptFailed { from, error } => {
                // NOTIFY payloads are capped at 8000 bytes.
                let error: String = error.chars().take(2000).collect();
                ("failed", Some(from.as_str().to_owned()), Some(error))
            }
            // A deleted job cannot be read back on the other side.
            JobEventKind::Deleted => return,
        };
        let _ = self.outbox.send(Notice::Job {
            id: event.job.id.to_string(),
            kind: kind.to_owned(),
            from,
            error,
        });
    }
}

/// Starts the publisher and listener tasks on `tasks`; returns the
/// [`Peers`] to hand the queue and wires the log store's notices.
pub fn start(
    url: &str,
    db: DatabaseConnection,
    queue: Arc<JobQueue>,
    logs: Arc<LogStore>,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> Arc<PgPeers> {
    let origin = uuid::Uuid::new_v4().to_string();
    let (outbox, inbox) = mpsc::unbounded_channel();
    let peers = Arc::new(PgPeers {
        outbox: outbox.clone(),
    });
    logs.set_notifier(Arc::new(move |notice| {
        let notice = match notice {
            LogNotice::Appended { job_id, position } => Notice::LogAppended {
                id: job_id,
                position,
            },
            LogNotice::Finished { job_id } => Notice::LogFinished { id: job_id },
        };
        let _ = outbox.send(notice);
    }));
    tasks.spawn(publish(db.clone(), origin.clone(), inbox, stop.clone()));
    tasks.spawn(listen(url.to_owned(), origin, queue, logs, stop));
    peers
}

async fn publish(
    db: DatabaseConnection,
    origin: String,
    mut inbox: mpsc::UnboundedReceiver<Notice>,
    stop: CancellationToken,
) {
    loop {
        let notice = tokio::select! {
            () = stop.cancelled() => return,
            notice = inbox.recv() => match notice {
                Some(notice) => notice,
                None => return,
            },
        };
        // Many "ready" notices in a burst say no more than one.
        let mut batch = vec![notice];
        while let Ok(more) = inbox.try_recv() {
            if !(more == Notice::Ready && batch.contains(&Notice::Ready)) {
                batch.push(more);
            }
        }
        for notice in batch {
            let envelope = Envelope {
                origin: origin.clone(),
                notice,
            };
            let Ok(payload) = serde_json::to_string(&envelope) else {
                continue;
            };
            let statement = Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_notify($1, $2)",
                [CHANNEL.into(), payload.into()],
            );
            if let Err(error) = db.execute_raw(statement).await {
                tracing::warn!(%error, "could not notify the other replicas");
            }
        }
    }
}

async fn listen(
    url: String,
    origin: String,
    queue: Arc<JobQueue>,
    logs: Arc<LogStore>,
    stop: CancellationToken,
) {
    let mut pause = Duration::from_millis(100);
    loop {
        let listener = async {
            let mut listener = PgListener::connect(&url).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sea_orm::sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            () = stop.cancelled() => return,
            connected = listener => match connected {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(%error, ?pause, "cannot LISTEN for other replicas; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(MAX_RECONNECT_PAUSE);
                    continue;
                }
            },
        };
        pause = Duration::from_millis(100);
        // Whatever happened while we were not listening: look again.
        queue.wake_pollers();
        queue.wake_promoter();
        loop {
            let received = tokio::select! {
                () = stop.cancelled() => return,
                received = listener.try_recv() => received,
            };
            match received {
                Ok(Some(notification)) => {
                    let Ok(envelope) = serde_json::from_str::<Envelope>(notification.payload())
                    else {
                        continue;
                    };
                    if envelope.origin != origin {
                        deliver(envelope.notice, &queue, &logs).await;
                    }
                }
                // The connection dropped; reconnect and catch up.
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(%error, "LISTEN connection failed; reconnecting");
                    break;
                }
            }
        }
    }
}

async fn deliver(notice: Notice, queue: &JobQueue, logs: &LogStore) {
    match notice {
        Notice::Ready => queue.wake_pollers(),
        Notice::Waiting => queue.wake_promoter(),
        Notice::Job {
            id,
            kind,
            from,
            error,
        } => {
            let Ok(id) = JobId::parse(&id, "id") else {
                return;
            };
            let Ok(job) = queue.get(&id).await else {
                return;
            };
            let from = from.and_then(|raw| raw.parse::<JobState>().ok());
            let kind = match (kind.as_str(), from) {
                ("created", _) => JobEventKind::Created,
                ("state", Some(from)) => JobEventKind::StateChanged { from },
                ("failed", Some(from)) => JobEventKind::AttemptFailed {
                    from,
                    error: error.unwrap_or_default(),
                },
                _ => JobEventKind::Progress,
            };
            queue.publish_remote(JobEvent { kind, job });
        }
        Notice::LogAppended { id, position } => logs.remote_appended(&id, position).await,
        Notice::LogFinished { id } => logs.remote_finished(&id),
    }
}
