//! Replicas on one PostgreSQL database tell each other what changed over
//! LISTEN/NOTIFY: a job became ready (wake waiting LeaseJobs calls), a job
//! started waiting (re-plan the promoter), job events (for WatchJobs), log
//! lines stored (for followers). Notices are batched: whatever piled up
//! while the last batch was sent goes out as one statement.
//!
//! Events and log notices are what watchers and followers need, and the
//! heavy part: they are sent only while some replica has a watcher or a
//! follower open. A replica that has one says so (a "watching" notice)
//! as soon as it opens and then every few seconds; the others send events
//! until they have not heard it for a while. An event carries the job as the
//! change left it, so every replica sends the same events.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use sea_orm::sqlx::postgres::PgListener;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::domain::{
    Job, JobEvent, JobEventKind, JobId, JobQueue, JobState, LeaseToken, Peers, RetryPolicy,
};
use crate::logs::LogStore;

/// The NOTIFY channel.
const CHANNEL: &str = "jobq_events";
/// Longest wait before a lost LISTEN connection is tried again.
const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(5);
/// NOTIFY payloads are capped at 8000 bytes; notices are packed below this.
const MAX_PAYLOAD: usize = 7000;
/// How much of an attempt's error an event carries across replicas.
const MAX_EVENT_ERROR: usize = 4096;
/// How often a replica with watchers says so.
const WATCHING_EVERY: Duration = Duration::from_secs(5);
/// How long after the last "watching" notice events are still sent.
const WATCHING_TTL_MS: i64 = 15_000;

/// A job as an event carries it between replicas (no payload, result or history).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct EventJob {
    id: String,
    #[serde(rename = "type")]
    job_type: String,
    queue: String,
    payload_bytes: i64,
    priority: i32,
    run_at: i64,
    max_attempts: i32,
    timeout_ms: u64,
    backoff_base_ms: u64,
    backoff_max_ms: u64,
    unique_key: Option<String>,
    #[serde(default)]
    concurrency_key: Option<String>,
    #[serde(default)]
    concurrency_limit: i32,
    tags: Vec<String>,
    #[serde(default)]
    summary: String,
    parent_id: Option<String>,
    traceparent: Option<String>,
    schedule_name: Option<String>,
    state: String,
    attempt: i32,
    history_seq: i32,
    progress_percent: i32,
    progress_message: String,
    last_error: Option<String>,
    cancel_requested: bool,
    worker_id: Option<String>,
    lease_expires_at: Option<i64>,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    updated_at: i64,
}

fn clip(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

impl EventJob {
    fn of(job: &Job) -> Self {
        Self {
            id: job.id.to_string(),
            job_type: job.job_type.clone(),
            queue: job.queue.clone(),
            payload_bytes: job.payload_bytes,
            priority: job.priority,
            run_at: job.run_at,
            max_attempts: job.max_attempts,
            timeout_ms: job.timeout.as_millis() as u64,
            backoff_base_ms: job.retry_policy.base_backoff.as_millis() as u64,
            backoff_max_ms: job.retry_policy.max_backoff.as_millis() as u64,
            unique_key: job.unique_key.clone(),
            concurrency_key: job.concurrency_key.clone(),
            concurrency_limit: job.concurrency_limit,
            tags: job.tags.clone(),
            summary: job.summary.clone(),
            parent_id: job.parent_id.as_ref().map(ToString::to_string),
            traceparent: job.traceparent.clone(),
            schedule_name: job.schedule_name.clone(),
            state: job.state.as_str().to_owned(),
            attempt: job.attempt,
            history_seq: job.history_seq,
            progress_percent: job.progress_percent,
            progress_message: job.progress_message.clone(),
            last_error: job
                .last_error
                .as_deref()
                .map(|error| clip(error, MAX_EVENT_ERROR)),
            cancel_requested: job.cancel_requested,
            worker_id: job.worker_id.clone(),
            lease_expires_at: job.lease_expires_at,
            created_at: job.created_at,
            started_at: job.started_at,
            finished_at: job.finished_at,
            updated_at: job.updated_at,
        }
    }

    fn into_job(self) -> Option<Job> {
        Some(Job {
            id: JobId::parse(&self.id, "id").ok()?,
            job_type: self.job_type,
            queue: self.queue,
            payload: None,
            payload_bytes: self.payload_bytes,
            priority: self.priority,
            run_at: self.run_at,
            max_attempts: self.max_attempts,
            timeout: Duration::from_millis(self.timeout_ms),
            retry_policy: RetryPolicy {
                base_backoff: Duration::from_millis(self.backoff_base_ms),
                max_backoff: Duration::from_millis(self.backoff_max_ms),
            },
            unique_key: self.unique_key,
            concurrency_key: self.concurrency_key,
            concurrency_limit: self.concurrency_limit,
            request_key: None,
            tags: self.tags,
            summary: self.summary,
            parent_id: self.parent_id.map(JobId::from_stored),
            traceparent: self.traceparent,
            depends_on: Vec::new(),
            has_dependents: false,
            schedule_name: self.schedule_name,
            state: self.state.parse().ok()?,
            attempt: self.attempt,
            history_seq: self.history_seq,
            progress_percent: self.progress_percent,
            progress_message: self.progress_message,
            result: None,
            last_error: self.last_error,
            cancel_requested: self.cancel_requested,
            lease_token: None::<LeaseToken>,
            worker_id: self.worker_id,
            lease_expires_at: self.lease_expires_at,
            lease_duration: None,
            attempt_deadline: None,
            attempt_started_at: None,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            updated_at: self.updated_at,
            history: Vec::new(),
        })
    }
}

/// One job event between replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct EventNotice {
    kind: String,
    from: Option<String>,
    error: Option<String>,
    at: i64,
    job: EventJob,
}

impl EventNotice {
    fn of(event: &JobEvent) -> Self {
        let (kind, from, error) = match &event.kind {
            JobEventKind::Created => ("created", None, None),
            JobEventKind::StateChanged { from } => ("state", Some(from.as_str().to_owned()), None),
            JobEventKind::Progress => ("progress", None, None),
            JobEventKind::AttemptFailed { from, error } => (
                "failed",
                Some(from.as_str().to_owned()),
                Some(clip(error, MAX_EVENT_ERROR)),
            ),
            JobEventKind::Deleted => ("deleted", None, None),
        };
        Self {
            kind: kind.to_owned(),
            from,
            error,
            at: event.at,
            job: EventJob::of(&event.job),
        }
    }

    fn into_event(self) -> Option<JobEvent> {
        let from = self.from.and_then(|raw| raw.parse::<JobState>().ok());
        let kind = match (self.kind.as_str(), from) {
            ("created", _) => JobEventKind::Created,
            ("state", Some(from)) => JobEventKind::StateChanged { from },
            ("failed", Some(from)) => JobEventKind::AttemptFailed {
                from,
                error: self.error.unwrap_or_default(),
            },
            ("deleted", _) => JobEventKind::Deleted,
            _ => JobEventKind::Progress,
        };
        Some(JobEvent {
            kind,
            job: self.job.into_job()?,
            at: self.at,
        })
    }
}

/// What one replica tells the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Notice {
    Ready,
    Waiting,
    Watching,
    /// A queue's controls changed: forget the cached ones.
    Controls,
    Events {
        events: Vec<EventNotice>,
    },
    LogAppended {
        ids: Vec<String>,
    },
}

/// A batch of notices from one replica (which ignores its own).
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    origin: String,
    notices: Vec<Notice>,
}

/// What the rest of the server hands the publisher.
enum Outgoing {
    Ready,
    Waiting,
    Watching,
    Controls,
    Event(Box<JobEvent>),
    LogAppended(JobId),
}

/// The sending half, and whether any replica watches.
pub struct PgPeers {
    outbox: mpsc::UnboundedSender<Outgoing>,
    /// Until when (ms since the epoch) some other replica said it watches.
    remote_watching_until: AtomicI64,
    /// Watchers and followers open on this replica.
    local_watchers: AtomicUsize,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl PgPeers {
    fn others_watch(&self) -> bool {
        self.remote_watching_until.load(Ordering::Relaxed) > now_ms()
    }

    /// A watcher or follower opened here: the others start sending events.
    pub fn watcher_opened(&self) {
        if self.local_watchers.fetch_add(1, Ordering::SeqCst) == 0 {
            let _ = self.outbox.send(Outgoing::Watching);
        }
    }

    /// A watcher or follower closed here.
    pub fn watcher_closed(&self) {
        self.local_watchers.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Peers for PgPeers {
    fn ready(&self) {
        let _ = self.outbox.send(Outgoing::Ready);
    }

    fn waiting(&self) {
        let _ = self.outbox.send(Outgoing::Waiting);
    }

    fn controls_changed(&self) {
        let _ = self.outbox.send(Outgoing::Controls);
    }

    fn wants_events(&self) -> bool {
        self.others_watch()
    }

    fn job_events(&self, events: &[JobEvent]) {
        if !self.others_watch() {
            return;
        }
        for event in events {
            let _ = self.outbox.send(Outgoing::Event(Box::new(event.clone())));
        }
    }
}

/// Starts the publisher and listener tasks on `tasks`; returns the peers to
/// hand the queue, and wires the log store's appends.
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
        outbox,
        remote_watching_until: AtomicI64::new(0),
        local_watchers: AtomicUsize::new(0),
    });
    let appended = peers.clone();
    logs.set_notifier(Arc::new(move |job: &JobId| {
        if appended.others_watch() {
            let _ = appended.outbox.send(Outgoing::LogAppended(job.clone()));
        }
    }));
    tasks.spawn(publish(
        db,
        origin.clone(),
        inbox,
        peers.clone(),
        stop.clone(),
    ));
    tasks.spawn(listen(
        url.to_owned(),
        origin,
        queue,
        logs,
        peers.clone(),
        stop,
    ));
    peers
}

/// Packs notices into payloads under the NOTIFY size limit.
fn pack(origin: &str, notices: Vec<Notice>) -> Vec<String> {
    let mut payloads = Vec::new();
    let mut current: Vec<Notice> = Vec::new();
    let encode = |notices: &[Notice]| {
        serde_json::to_string(&Envelope {
            origin: origin.to_owned(),
            notices: notices.to_vec(),
        })
        .unwrap_or_default()
    };
    for notice in notices {
        // Split long event and id lists so each part fits.
        let parts = match notice {
            Notice::Events { events } => events
                .into_iter()
                .map(|event| Notice::Events {
                    events: vec![event],
                })
                .collect(),
            Notice::LogAppended { ids } => ids
                .chunks(100)
                .map(|ids| Notice::LogAppended { ids: ids.to_vec() })
                .collect(),
            other => vec![other],
        };
        for part in parts {
            current.push(part);
            if encode(&current).len() > MAX_PAYLOAD {
                let last = current.pop();
                if !current.is_empty() {
                    payloads.push(encode(&current));
                }
                current = last.into_iter().collect();
                if encode(&current).len() > MAX_PAYLOAD {
                    // One notice alone too big (a huge tag list): not sent.
                    current.clear();
                }
            }
        }
    }
    if !current.is_empty() {
        payloads.push(encode(&current));
    }
    payloads
}

async fn publish(
    db: DatabaseConnection,
    origin: String,
    mut inbox: mpsc::UnboundedReceiver<Outgoing>,
    peers: Arc<PgPeers>,
    stop: CancellationToken,
) {
    let mut watching_tick = tokio::time::interval(WATCHING_EVERY);
    loop {
        let first = tokio::select! {
            () = stop.cancelled() => return,
            _ = watching_tick.tick() => {
                if peers.local_watchers.load(Ordering::Relaxed) == 0 {
                    continue;
                }
                Outgoing::Watching
            }
            outgoing = inbox.recv() => match outgoing {
                Some(outgoing) => outgoing,
                None => return,
            },
        };
        // Whatever piled up goes in this batch; repeats of a wake-up say no more than one.
        let (mut ready, mut waiting, mut watching, mut controls) = (false, false, false, false);
        let mut events = Vec::new();
        let mut appended: Vec<String> = Vec::new();
        let mut take = |outgoing: Outgoing| match outgoing {
            Outgoing::Ready => ready = true,
            Outgoing::Waiting => waiting = true,
            Outgoing::Watching => watching = true,
            Outgoing::Controls => controls = true,
            Outgoing::Event(event) => events.push(EventNotice::of(&event)),
            Outgoing::LogAppended(id) => {
                let id = id.to_string();
                if !appended.contains(&id) {
                    appended.push(id);
                }
            }
        };
        take(first);
        while let Ok(more) = inbox.try_recv() {
            take(more);
        }
        let mut notices = Vec::new();
        if ready {
            notices.push(Notice::Ready);
        }
        if waiting {
            notices.push(Notice::Waiting);
        }
        if watching {
            notices.push(Notice::Watching);
        }
        if controls {
            notices.push(Notice::Controls);
        }
        if !events.is_empty() {
            notices.push(Notice::Events { events });
        }
        if !appended.is_empty() {
            notices.push(Notice::LogAppended { ids: appended });
        }
        let payloads = pack(&origin, notices);
        if payloads.is_empty() {
            continue;
        }
        let Ok(payloads) = serde_json::to_string(&payloads) else {
            continue;
        };
        // One statement, one NOTIFY per payload.
        let statement = Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_notify($1, payload) FROM jsonb_array_elements_text($2::jsonb) AS payload",
            [CHANNEL.into(), payloads.into()],
        );
        if let Err(error) = db.execute_raw(statement).await {
            tracing::warn!(%error, "could not notify the other replicas");
        }
    }
}

async fn listen(
    url: String,
    origin: String,
    queue: Arc<JobQueue>,
    logs: Arc<LogStore>,
    peers: Arc<PgPeers>,
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
                        for notice in envelope.notices {
                            deliver(notice, &queue, &logs, &peers);
                        }
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

fn deliver(notice: Notice, queue: &JobQueue, logs: &LogStore, peers: &PgPeers) {
    match notice {
        Notice::Ready => queue.wake_pollers(),
        Notice::Waiting => queue.wake_promoter(),
        Notice::Controls => queue.controls_changed(),
        Notice::Watching => peers
            .remote_watching_until
            .store(now_ms() + WATCHING_TTL_MS, Ordering::Relaxed),
        Notice::Events { events } => queue.publish_remote(
            events
                .into_iter()
                .filter_map(EventNotice::into_event)
                .collect(),
        ),
        Notice::LogAppended { ids } => {
            for id in ids {
                if let Ok(id) = JobId::parse(&id, "id") {
                    logs.remote_appended(id);
                }
            }
        }
    }
}
