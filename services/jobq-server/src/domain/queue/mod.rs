//! `JobQueue`: the operations of the queue, in terms of the domain types.
//! It validates what the gRPC layer could not, runs the state machine inside
//! store transactions, and after each commit emits the events, releases
//! dependents and wakes waiting workers. One file per concern: `enqueue`,
//! `leasing`, `reports`, `admin`, `maintenance`.

mod admin;
mod enqueue;
mod leasing;
mod maintenance;
mod reports;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::clock::{Clock, Millis};
use super::error::{QueueError, QueueResult};
use super::job::{AttemptOutcome, Job, JobEvent, JobEventKind, JobState};
use super::limits::{Defaults, Limits};
use super::observe::JobObserver;
use super::store::{Applied, JobLog, JobStore, Peers};

pub use admin::{Page, PageRequest};
pub(in crate::domain) use enqueue::new_job;
#[cfg(test)]
pub(crate) use leasing::Parked;
pub use leasing::{HeartbeatLease, HeartbeatOutcome, LeaseRequest};
pub use reports::{CompleteReport, FailReport};

/// The queue: every operation of the API, over a [`JobStore`].
pub struct JobQueue {
    pub(super) store: Arc<dyn JobStore>,
    clock: Arc<dyn Clock>,
    log: Arc<dyn JobLog>,
    defaults: Defaults,
    limits: Limits,
    /// Bumped whenever a job may have become leasable; waiting LeaseJobs calls watch it.
    ready: watch::Sender<u64>,
    /// Poked when a job starts waiting for a run_at, so the promoter can re-plan.
    waiting_changed: Notify,
    events: broadcast::Sender<JobEvent>,
    leasing: leasing::LeaseState,
    /// When each worker was last written to the registry.
    worker_touched: Mutex<HashMap<String, Millis>>,
    /// Other replicas, on PostgreSQL.
    peers: std::sync::OnceLock<Arc<dyn Peers>>,
    /// Metrics and traces, when the server keeps them.
    observer: std::sync::OnceLock<Arc<dyn JobObserver>>,
    shutdown: CancellationToken,
    /// When this queue was made: ticks due before then came while this
    /// server's scheduler did not run.
    pub(super) started_at: Millis,
}

/// How many job events a slow subscriber may fall behind before it is told it lagged.
const EVENT_BUFFER: usize = 16_384;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl JobQueue {
    /// A queue over `store`, deleting logs through `log`, stopped by `shutdown`.
    pub fn new(
        store: Arc<dyn JobStore>,
        log: Arc<dyn JobLog>,
        clock: Arc<dyn Clock>,
        defaults: Defaults,
        limits: Limits,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            started_at: clock.now(),
            store,
            clock,
            log,
            defaults,
            limits,
            ready: watch::Sender::new(0),
            waiting_changed: Notify::new(),
            events: broadcast::Sender::new(EVENT_BUFFER),
            leasing: leasing::LeaseState::default(),
            worker_touched: Mutex::new(HashMap::new()),
            peers: std::sync::OnceLock::new(),
            observer: std::sync::OnceLock::new(),
            shutdown,
        }
    }

    /// Tells other replicas of changes made here from now on (set once).
    pub fn set_peers(&self, peers: Arc<dyn Peers>) {
        let _ = self.peers.set(peers);
    }

    /// Tells `observer` of changes made here from now on (set once).
    pub fn set_observer(&self, observer: Arc<dyn JobObserver>) {
        let _ = self.observer.set(observer);
    }

    /// How many workers asked this server for jobs or renewed a lease within `window`.
    pub fn workers_heard_within(&self, window: std::time::Duration) -> usize {
        let since = self.now() - window.as_millis() as Millis;
        lock(&self.worker_touched)
            .values()
            .filter(|at| **at >= since)
            .count()
    }

    /// Server defaults for jobs.
    pub fn defaults(&self) -> &Defaults {
        &self.defaults
    }

    /// Input limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Now, by the queue's clock.
    pub fn now(&self) -> Millis {
        self.clock.now()
    }

    /// Fires when the server shuts down.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Job events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.events.subscribe()
    }

    /// Wakes waiting LeaseJobs calls: some job may have become leasable
    /// (called for local changes, and by the cross-replica notifier).
    pub fn wake_pollers(&self) {
        self.ready
            .send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    /// Wakes the promoter to re-plan its sleep.
    pub fn wake_promoter(&self) {
        self.waiting_changed.notify_one();
    }

    /// Resolves when a job started waiting for a run_at since the last call.
    pub async fn waiting_changed(&self) {
        self.waiting_changed.notified().await;
    }

    /// Publishes events that happened on another replica, as they were sent.
    pub fn publish_remote(&self, events: Vec<JobEvent>) {
        if let Some(observer) = self.observer.get() {
            observer.remote(&events);
        }
        for event in events {
            let _ = self.events.send(event);
        }
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> QueueResult<()> {
        self.store.ping().await
    }

    pub(super) fn refuse_if_shutting_down(&self) -> QueueResult<()> {
        if self.shutdown.is_cancelled() {
            Err(QueueError::ShuttingDown)
        } else {
            Ok(())
        }
    }

    /// Sends events here and to the replicas that watch; `events` makes
    /// them only when someone watches (each carries a copy of its job).
    fn emit(&self, events: impl FnOnce() -> Vec<JobEvent>) {
        let remote = self.peers.get().is_some_and(|peers| peers.wants_events());
        if !remote && self.events.receiver_count() == 0 {
            return;
        }
        let events = events();
        if events.is_empty() {
            return;
        }
        if let Some(peers) = self.peers.get() {
            peers.job_events(&events);
        }
        for event in events {
            // Having no subscriber is not an error.
            let _ = self.events.send(event);
        }
    }

    /// Wakes pollers and the promoter for the states jobs just reached.
    fn signal_states(&self, states: impl IntoIterator<Item = JobState>) {
        let (mut ready, mut waiting) = (false, false);
        for state in states {
            match state {
                JobState::Queued => ready = true,
                JobState::Scheduled | JobState::Retrying => waiting = true,
                _ => {}
            }
        }
        if ready {
            self.wake_pollers();
            if let Some(peers) = self.peers.get() {
                peers.ready();
            }
        }
        if waiting {
            self.wake_promoter();
            if let Some(peers) = self.peers.get() {
                peers.waiting();
            }
        }
    }

    /// Everything that follows the commit of new jobs.
    pub(super) async fn after_created(&self, jobs: &[&Job]) {
        self.signal_states(jobs.iter().map(|job| job.state));
        let now = self.now();
        if let Some(observer) = self.observer.get() {
            observer.created(jobs, now);
        }
        self.emit(|| {
            jobs.iter()
                .map(|job| JobEvent {
                    kind: JobEventKind::Created,
                    job: (*job).clone(),
                    at: now,
                })
                .collect()
        });
    }

    /// Everything that follows committed changes: events, wake-ups, and the
    /// release of jobs waiting on the ones that finished (and of the jobs
    /// waiting on those, as cancels cascade).
    pub(super) async fn after_changes(&self, applied: &[Applied]) {
        let mut finished = self.announce(applied);
        while !finished.is_empty() {
            finished = self.release_dependents(finished).await;
        }
    }

    /// Events and wake-ups of committed changes; returns the jobs that just
    /// finished and have dependents.
    pub(super) fn announce(&self, applied: &[Applied]) -> Vec<crate::domain::JobId> {
        if applied.iter().any(|change| self.frees_room(change)) {
            self.wake_pollers();
            if let Some(peers) = self.peers.get() {
                peers.ready();
            }
        }
        self.signal_states(
            applied
                .iter()
                .filter(|change| change.before.state != change.job.state)
                .map(|change| change.job.state),
        );
        let now = self.now();
        if let Some(observer) = self.observer.get() {
            observer.changed(applied, now);
        }
        self.emit(|| {
            applied
                .iter()
                .filter_map(|change| {
                    event_kind(change).map(|kind| JobEvent {
                        kind,
                        job: change.job.clone(),
                        at: now,
                    })
                })
                .collect()
        });
        applied
            .iter()
            .filter(|change| {
                change.job.has_dependents
                    && change.job.state.is_terminal()
                    && !change.before.state.is_terminal()
            })
            .map(|change| change.job.id.clone())
            .collect()
    }
}

impl JobQueue {
    /// Whether a change ended a run that counted against a limit (its
    /// concurrency key, or its queue's concurrency limit): a waiting call
    /// may now lease what that limit held back.
    fn frees_room(&self, change: &Applied) -> bool {
        change.before.state == JobState::Running
            && change.job.state != JobState::Running
            && (change.job.concurrency_key.is_some()
                || self.queue_has_concurrency_limit(&change.job.queue))
    }
}

/// The event a committed change makes, if it makes one.
fn event_kind(change: &Applied) -> Option<JobEventKind> {
    let Applied { before, job, entry } = change;
    if let Some(entry) = entry
        && entry.is_attempt()
        && !matches!(
            entry.outcome,
            Some(AttemptOutcome::Succeeded | AttemptOutcome::Released)
        )
    {
        return Some(JobEventKind::AttemptFailed {
            from: before.state,
            error: entry.error.clone().unwrap_or_default(),
        });
    }
    if before.state != job.state {
        return Some(JobEventKind::StateChanged { from: before.state });
    }
    (before.progress_percent != job.progress_percent
        || before.progress_message != job.progress_message
        || before.cancel_requested != job.cancel_requested)
        .then_some(JobEventKind::Progress)
}
