//! `JobQueue`: the operations of the queue, in terms of the domain types.
//! It validates what the gRPC layer could not, runs the state machine inside
//! store transactions, and after each commit writes the job's system log
//! line, emits the event, releases dependents and wakes waiting workers.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::clock::{Clock, Millis};
use super::control::{QueueControls, WorkerRecord};
use super::error::{QueueError, QueueResult};
use super::job::{
    AttemptOutcome, Job, JobEvent, JobEventKind, JobFilter, JobId, JobSelector, JobSpec, JobState,
    LeaseToken, LeasedJob, StatsSnapshot, StopReason,
};
use super::limits::{Defaults, Limits};
use super::narrate;
use super::store::{Applied, JobChange, JobLog, JobStore, LeaseQuota, Peers};
use super::transitions::{self, AttemptEnd};

/// A LeaseJobs call, validated.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    /// The worker asking, as the registry records it.
    pub worker: WorkerRecord,
    /// Most jobs to return.
    pub max_jobs: u64,
    /// Longest wait for a job.
    pub wait: Duration,
    /// Lease length; `None` takes the default.
    pub lease_duration: Option<Duration>,
}

/// One lease in a heartbeat, with the progress to record.
#[derive(Debug, Clone)]
pub struct HeartbeatLease {
    /// Job id.
    pub job_id: JobId,
    /// Lease token.
    pub lease_token: LeaseToken,
    /// New progress percent, if any.
    pub progress_percent: Option<i32>,
    /// New progress message, if any.
    pub progress_message: Option<String>,
}

/// Answer to one heartbeat lease.
#[derive(Debug, Clone, PartialEq)]
pub enum HeartbeatOutcome {
    /// Keep going; the lease now runs until this time.
    Continue {
        /// New lease deadline.
        lease_expires_at: Millis,
    },
    /// Stop working on the job.
    Stop(StopReason),
}

/// A success report.
#[derive(Debug, Clone)]
pub struct CompleteReport {
    /// Job id.
    pub job_id: JobId,
    /// Lease token.
    pub lease_token: LeaseToken,
    /// JSON result.
    pub result: Option<String>,
}

/// A failure report.
#[derive(Debug, Clone)]
pub struct FailReport {
    /// Job id.
    pub job_id: JobId,
    /// Lease token.
    pub lease_token: LeaseToken,
    /// Error text.
    pub error: String,
    /// May be retried.
    pub retryable: bool,
    /// Wait this long instead of the backoff.
    pub retry_after: Option<Duration>,
}

/// Paging of ListJobs.
#[derive(Debug, Clone)]
pub struct PageRequest {
    /// Page size.
    pub limit: u64,
    /// Last id of the previous page.
    pub after: Option<JobId>,
}

/// A page of jobs.
#[derive(Debug, Clone)]
pub struct Page {
    /// The jobs.
    pub jobs: Vec<Job>,
    /// Last id, when there may be more.
    pub next_after: Option<JobId>,
}

/// A per-queue token bucket for rate limits (per server replica).
#[derive(Debug, Clone, Copy)]
struct RateBucket {
    tokens: f64,
    refilled_at: Millis,
}

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
    rate_buckets: Mutex<HashMap<String, RateBucket>>,
    /// When each worker was last written to the registry, to write it at most once a second.
    worker_touched: Mutex<HashMap<String, Millis>>,
    /// Other replicas, on PostgreSQL.
    peers: std::sync::OnceLock<Arc<dyn Peers>>,
    shutdown: CancellationToken,
}

/// How many job events a slow subscriber may fall behind before it is told it lagged.
const EVENT_BUFFER: usize = 4096;
/// How often a busy worker's registry row is refreshed.
const WORKER_TOUCH_INTERVAL_MS: Millis = 1000;

impl JobQueue {
    /// A queue over `store`, writing system lines to `log`, stopped by `shutdown`.
    pub fn new(
        store: Arc<dyn JobStore>,
        log: Arc<dyn JobLog>,
        clock: Arc<dyn Clock>,
        defaults: Defaults,
        limits: Limits,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            store,
            clock,
            log,
            defaults,
            limits,
            ready: watch::Sender::new(0),
            waiting_changed: Notify::new(),
            events: broadcast::Sender::new(EVENT_BUFFER),
            rate_buckets: Mutex::new(HashMap::new()),
            worker_touched: Mutex::new(HashMap::new()),
            peers: std::sync::OnceLock::new(),
            shutdown,
        }
    }

    /// Tells other replicas of changes made here from now on (set once).
    pub fn set_peers(&self, peers: Arc<dyn Peers>) {
        let _ = self.peers.set(peers);
    }

    /// A job may have become leasable: here and on the other replicas.
    fn signal_ready(&self) {
        self.wake_pollers();
        if let Some(peers) = self.peers.get() {
            peers.ready();
        }
    }

    /// A job started waiting for a run_at: here and on the other replicas.
    fn signal_waiting(&self) {
        self.wake_promoter();
        if let Some(peers) = self.peers.get() {
            peers.waiting();
        }
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

    /// Publishes an event that happened on another replica.
    pub fn publish_remote(&self, event: JobEvent) {
        let _ = self.events.send(event);
    }

    fn emit(&self, kind: JobEventKind, job: &Job) {
        let event = JobEvent {
            kind,
            job: job.clone(),
        };
        if let Some(peers) = self.peers.get() {
            peers.job_event(&event);
        }
        // Having no subscriber is not an error.
        let _ = self.events.send(event);
    }

    /// Everything that follows a committed change of one job.
    async fn after_change(&self, before: Option<&Job>, job: &Job, ended: Option<&AttemptEnd>) {
        if let Some(line) = narrate::describe(before, job, ended) {
            let attempt = before.map_or(job.attempt, |before| before.attempt.max(job.attempt));
            self.log.system(&job.id, attempt, &line).await;
        }
        match job.state {
            JobState::Queued => self.signal_ready(),
            JobState::Scheduled | JobState::Retrying => self.signal_waiting(),
            _ => {}
        }
        let kind = match (before, ended) {
            (None, _) => JobEventKind::Created,
            (Some(before), Some(end))
                if !matches!(
                    end.outcome,
                    AttemptOutcome::Succeeded | AttemptOutcome::Released
                ) =>
            {
                JobEventKind::AttemptFailed {
                    from: before.state,
                    error: end.error.clone().unwrap_or_default(),
                }
            }
            (Some(before), _) if before.state != job.state => {
                JobEventKind::StateChanged { from: before.state }
            }
            (Some(before), _)
                if before.progress_percent != job.progress_percent
                    || before.progress_message != job.progress_message
                    || before.cancel_requested != job.cancel_requested =>
            {
                JobEventKind::Progress
            }
            (Some(_), _) => return,
        };
        self.emit(kind, job);
        if job.state.is_terminal() && before.is_none_or(|before| !before.state.is_terminal()) {
            self.log.finished(&job.id, job.attempt).await;
            self.release_dependents(job).await;
        }
    }

    /// A job just finished: unblocks (or cancels) the jobs waiting on it, and
    /// so on down the chain.
    async fn release_dependents(&self, finished: &Job) {
        let mut to_check = VecDeque::from([finished.id.clone()]);
        while let Some(id) = to_check.pop_front() {
            let dependents = match self.store.blocked_dependents(&id).await {
                Ok(dependents) => dependents,
                Err(error) => {
                    tracing::warn!(%error, job_id = %id, "could not look up dependents");
                    continue;
                }
            };
            for dependent in dependents {
                let now = self.clock.now();
                let states = match self.store.dependency_states(&dependent).await {
                    Ok(states) => states,
                    Err(error) => {
                        tracing::warn!(%error, job_id = %dependent, "could not read dependencies");
                        continue;
                    }
                };
                let change: JobChange<'_> = Box::new(move |job| {
                    transitions::resolve_blocked(job, &states, now);
                    Ok(None)
                });
                match self.store.update_job(&dependent, change).await {
                    Ok(Applied { before, job, ended }) => {
                        if before.state != job.state {
                            // Not recursing through after_change: the chain is walked here.
                            if let Some(line) =
                                narrate::describe(Some(&before), &job, ended.as_ref())
                            {
                                self.log.system(&job.id, job.attempt, &line).await;
                            }
                            self.emit(JobEventKind::StateChanged { from: before.state }, &job);
                            match job.state {
                                JobState::Queued => self.signal_ready(),
                                JobState::Scheduled => self.signal_waiting(),
                                _ => {}
                            }
                            if job.state.is_terminal() {
                                self.log.finished(&job.id, job.attempt).await;
                                to_check.push_back(job.id.clone());
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, job_id = %dependent, "could not release dependent")
                    }
                }
            }
        }
    }

    pub(super) fn new_job(&self, spec: JobSpec, now: Millis) -> Job {
        let run_at = spec.run_at.unwrap_or(now);
        Job {
            id: JobId::generate(),
            job_type: spec.job_type,
            queue: spec.queue,
            payload: spec.payload,
            priority: spec.priority,
            run_at,
            max_attempts: spec.max_attempts,
            timeout: spec.timeout,
            retry_policy: spec.retry_policy,
            unique_key: spec.unique_key,
            tags: spec.tags,
            parent_id: spec.parent_id,
            traceparent: spec.traceparent,
            depends_on: spec.depends_on,
            schedule_name: spec.schedule_name,
            state: if run_at > now {
                JobState::Scheduled
            } else {
                JobState::Queued
            },
            attempt: 0,
            progress_percent: 0,
            progress_message: String::new(),
            result: None,
            last_error: None,
            cancel_requested: false,
            lease_token: None,
            worker_id: None,
            lease_expires_at: None,
            attempt_deadline: None,
            created_at: now,
            started_at: None,
            finished_at: None,
            updated_at: now,
            attempts: Vec::new(),
        }
    }

    /// Enqueues jobs in one transaction. Returns each stored job and whether
    /// it already existed. `field_of(i)` names spec `i` in errors.
    pub async fn enqueue(
        &self,
        specs: Vec<JobSpec>,
        field_of: impl Fn(usize) -> String,
    ) -> QueueResult<Vec<(Job, bool)>> {
        self.refuse_if_shutting_down()?;
        let now = self.clock.now();
        for (index, spec) in specs.iter().enumerate() {
            let referenced: Vec<JobId> = spec
                .parent_id
                .iter()
                .chain(&spec.depends_on)
                .cloned()
                .collect();
            if referenced.is_empty() {
                continue;
            }
            let found = self.store.job_states(&referenced).await?;
            if let Some(parent_id) = &spec.parent_id
                && !found.iter().any(|(id, _)| id == parent_id)
            {
                let field = format!("{}.parent_id", field_of(index));
                return Err(QueueError::invalid(
                    field,
                    format!("job {parent_id} does not exist"),
                ));
            }
            for (position, dependency) in spec.depends_on.iter().enumerate() {
                if !found.iter().any(|(id, _)| id == dependency) {
                    let field = format!("{}.depends_on[{position}]", field_of(index));
                    return Err(QueueError::invalid(
                        field,
                        format!("job {dependency} does not exist"),
                    ));
                }
            }
        }
        let jobs = specs
            .into_iter()
            .map(|spec| self.new_job(spec, now))
            .collect();
        let stored = self
            .store
            .insert_jobs(jobs, transitions::apply_dependencies, now)
            .await?;
        for (job, existed) in &stored {
            if !existed {
                self.after_change(None, job, None).await;
            }
        }
        Ok(stored)
    }

    /// One job with its attempts.
    pub async fn get(&self, id: &JobId) -> QueueResult<Job> {
        self.store
            .get_job(id, true)
            .await?
            .ok_or_else(|| QueueError::JobNotFound(id.to_string()))
    }

    /// Whether the job exists and is terminal; `None` if it does not exist.
    pub async fn is_terminal(&self, id: &JobId) -> QueueResult<Option<bool>> {
        let states = self.store.job_states(std::slice::from_ref(id)).await?;
        Ok(states.first().map(|(_, state)| state.is_terminal()))
    }

    /// A page of jobs, newest first.
    pub async fn list(&self, filter: &JobFilter, page: PageRequest) -> QueueResult<Page> {
        // One extra row tells whether another page follows.
        let mut jobs = self
            .store
            .list_jobs(filter, page.after.as_ref(), page.limit + 1)
            .await?;
        let more = jobs.len() as u64 > page.limit;
        jobs.truncate(page.limit as usize);
        let next_after = if more {
            jobs.last().map(|job| job.id.clone())
        } else {
            None
        };
        Ok(Page { jobs, next_after })
    }

    async fn change(&self, id: &JobId, change: JobChange<'_>) -> QueueResult<Job> {
        let applied = self.store.update_job(id, change).await?;
        self.after_change(Some(&applied.before), &applied.job, applied.ended.as_ref())
            .await;
        Ok(applied.job)
    }

    /// Cancels a job (at once, or on the worker's next heartbeat if it runs).
    pub async fn cancel(&self, id: &JobId, reason: String) -> QueueResult<Job> {
        let now = self.clock.now();
        self.change(
            id,
            Box::new(move |job| transitions::cancel(job, reason, now).map(|()| None)),
        )
        .await
    }

    /// Queues a finished job again.
    pub async fn retry(&self, id: &JobId) -> QueueResult<Job> {
        let now = self.clock.now();
        self.change(
            id,
            Box::new(move |job| transitions::retry(job, now).map(|()| None)),
        )
        .await
    }

    /// Deletes a job that is not running, with its log.
    pub async fn delete(&self, id: &JobId) -> QueueResult<()> {
        let job = self
            .store
            .delete_job(id, transitions::check_deletable)
            .await?;
        self.log.deleted(id).await;
        self.emit(JobEventKind::Deleted, &job);
        Ok(())
    }

    /// Queues again every finished job the selector picks; returns their ids.
    pub async fn retry_many(&self, selector: &JobSelector) -> QueueResult<Vec<JobId>> {
        let mut retried = Vec::new();
        for id in self.store.select_jobs(selector).await? {
            match self.retry(&id).await {
                Ok(_) => retried.push(id),
                // Not finished (any more), or gone: skipped, as the API promises.
                Err(QueueError::FailedPrecondition(_) | QueueError::JobNotFound(_)) => {}
                Err(other) => return Err(other),
            }
        }
        Ok(retried)
    }

    /// Deletes every job the selector picks that is not running; returns their ids.
    pub async fn delete_many(&self, selector: &JobSelector) -> QueueResult<Vec<JobId>> {
        let mut deleted = Vec::new();
        for id in self.store.select_jobs(selector).await? {
            match self.delete(&id).await {
                Ok(()) => deleted.push(id),
                Err(QueueError::FailedPrecondition(_) | QueueError::JobNotFound(_)) => {}
                Err(other) => return Err(other),
            }
        }
        Ok(deleted)
    }

    /// Counts by queue and state.
    pub async fn stats(&self, queues: &[String]) -> QueueResult<StatsSnapshot> {
        self.store.stats(queues, self.clock.now()).await
    }

    /// Leases up to `max_jobs` ready jobs, waiting up to `wait` for the first.
    pub async fn lease(&self, request: LeaseRequest) -> QueueResult<Vec<LeasedJob>> {
        let lease_duration = request
            .lease_duration
            .unwrap_or(self.defaults.lease_duration);
        let deadline = tokio::time::Instant::now() + request.wait;
        let mut ready = self.ready.subscribe();
        self.touch_worker(&request.worker).await;
        loop {
            self.refuse_if_shutting_down()?;
            // Mark the current generation seen before looking, so an enqueue
            // that lands after the query still wakes us.
            ready.borrow_and_update();
            let leased = self.lease_now(&request, lease_duration).await?;
            if !leased.is_empty() {
                return Ok(leased);
            }
            tokio::select! {
                changed = ready.changed() => {
                    if changed.is_err() {
                        return Ok(Vec::new());
                    }
                }
                () = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
                () = self.shutdown.cancelled() => return Ok(Vec::new()),
            }
        }
    }

    /// Which of the requested queues may hand out jobs now, and how many:
    /// paused ones are left out, rate limits spend their tokens here.
    async fn lease_quota(
        &self,
        queues: &[String],
        max_jobs: u64,
    ) -> QueueResult<(LeaseQuota, u64)> {
        let controls = self.store.queue_controls().await?;
        let now = self.clock.now();
        let mut quota = LeaseQuota::default();
        let mut budget = 0u64;
        let mut buckets = self
            .rate_buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for queue in queues {
            let control = controls.iter().find(|control| &control.name == queue);
            let Some(control) = control else {
                quota.unlimited.push(queue.clone());
                budget = max_jobs;
                continue;
            };
            if control.paused {
                continue;
            }
            let mut allowed = max_jobs;
            if control.rate_limit_per_second > 0.0 {
                let rate = control.rate_limit_per_second;
                let bucket = buckets.entry(queue.clone()).or_insert(RateBucket {
                    tokens: rate.max(1.0),
                    refilled_at: now,
                });
                let elapsed = (now - bucket.refilled_at).max(0) as f64 / 1000.0;
                bucket.tokens = (bucket.tokens + elapsed * rate).min(rate.max(1.0));
                bucket.refilled_at = now;
                allowed = allowed.min(bucket.tokens.floor() as u64);
                if allowed == 0 {
                    continue;
                }
            }
            budget = budget.max(allowed);
            if control.concurrency_limit > 0 {
                quota
                    .limited
                    .push((queue.clone(), i64::from(control.concurrency_limit)));
            } else {
                quota.unlimited.push(queue.clone());
            }
        }
        Ok((quota, budget.min(max_jobs)))
    }

    fn spend_rate_tokens(&self, leased: &[LeasedJob]) {
        let mut buckets = self
            .rate_buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for job in leased {
            if let Some(bucket) = buckets.get_mut(&job.job.queue) {
                bucket.tokens = (bucket.tokens - 1.0).max(0.0);
            }
        }
    }

    async fn lease_now(
        &self,
        request: &LeaseRequest,
        lease_duration: Duration,
    ) -> QueueResult<Vec<LeasedJob>> {
        let (quota, budget) = self
            .lease_quota(&request.worker.queues, request.max_jobs)
            .await?;
        if budget == 0 || (quota.unlimited.is_empty() && quota.limited.is_empty()) {
            return Ok(Vec::new());
        }
        let now = self.clock.now();
        let worker_id = request.worker.worker_id.as_str();
        let start = move |job: &mut Job| {
            let token = LeaseToken::generate();
            let attempt =
                transitions::start_attempt(job, worker_id, token.clone(), now, lease_duration);
            (token, attempt)
        };
        let leased = self
            .store
            .lease_jobs(&quota, &request.worker.types, budget, &start)
            .await?;
        let mut granted = Vec::with_capacity(leased.len());
        for (job, lease_token) in leased {
            let mut before = job.clone();
            before.state = JobState::Queued;
            before.attempt -= 1;
            self.after_change(Some(&before), &job, None).await;
            granted.push(LeasedJob {
                lease_expires_at: job.lease_expires_at.unwrap_or(now),
                attempt_deadline: job.attempt_deadline.unwrap_or(now),
                lease_token,
                job,
            });
        }
        self.spend_rate_tokens(&granted);
        Ok(granted)
    }

    /// True when the worker was not written to the registry within the last second.
    fn worker_touch_due(&self, worker_id: &str, now: Millis) -> bool {
        let mut touched = self
            .worker_touched
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match touched.get(worker_id) {
            Some(at) if now - at < WORKER_TOUCH_INTERVAL_MS => false,
            _ => {
                touched.insert(worker_id.to_owned(), now);
                true
            }
        }
    }

    /// Records that a worker sent a heartbeat, at most once a second per worker.
    pub async fn worker_seen(&self, worker_id: &str) {
        let now = self.clock.now();
        if self.worker_touch_due(worker_id, now)
            && let Err(error) = self.store.worker_seen(worker_id, now).await
        {
            tracing::warn!(%error, worker_id, "could not record worker");
        }
    }

    /// Records that a worker asked for jobs, at most once a second per worker.
    pub async fn touch_worker(&self, worker: &WorkerRecord) {
        let now = self.clock.now();
        if !self.worker_touch_due(&worker.worker_id, now) {
            return;
        }
        let mut record = worker.clone();
        record.first_seen_at = now;
        record.last_seen_at = now;
        if let Err(error) = self.store.touch_worker(&record).await {
            tracing::warn!(%error, worker_id = %worker.worker_id, "could not record worker");
        }
    }

    /// Renews one lease and records progress, or says why the worker must stop.
    pub async fn heartbeat(
        &self,
        lease: HeartbeatLease,
        lease_duration: Option<Duration>,
    ) -> QueueResult<HeartbeatOutcome> {
        let now = self.clock.now();
        let extend_by = lease_duration.unwrap_or(self.defaults.lease_duration);
        let token = lease.lease_token.clone();
        let jitter = rand::random::<f64>();
        let change: JobChange<'_> = Box::new(move |job| {
            transitions::check_lease(job, &token)?;
            if job.attempt_deadline.is_some_and(|deadline| deadline <= now) {
                // Past its timeout: end the attempt now rather than wait for the reaper.
                job.lease_expires_at = Some(now);
                return Ok(transitions::expire(job, now, jitter));
            }
            // A job with a cancel pending keeps its lease too, so the worker
            // can stop cleanly and report.
            job.lease_expires_at = Some(now.saturating_add(extend_by.as_millis() as Millis));
            if let Some(percent) = lease.progress_percent {
                job.progress_percent = percent;
            }
            if let Some(message) = lease.progress_message {
                job.progress_message = message;
            }
            job.updated_at = now;
            Ok(None)
        });
        match self.store.update_job(&lease.job_id, change).await {
            Ok(applied) => {
                self.after_change(Some(&applied.before), &applied.job, applied.ended.as_ref())
                    .await;
                let job = applied.job;
                Ok(if job.state != JobState::Running {
                    HeartbeatOutcome::Stop(StopReason::TimedOut)
                } else if job.cancel_requested {
                    HeartbeatOutcome::Stop(StopReason::Cancelled)
                } else {
                    HeartbeatOutcome::Continue {
                        lease_expires_at: job.lease_expires_at.unwrap_or(now),
                    }
                })
            }
            Err(QueueError::StaleLease { .. } | QueueError::JobNotFound(_)) => {
                let outcome = self
                    .store
                    .attempt_outcome(&lease.job_id, &lease.lease_token)
                    .await?;
                Ok(HeartbeatOutcome::Stop(match outcome {
                    Some(AttemptOutcome::TimedOut) => StopReason::TimedOut,
                    Some(AttemptOutcome::Cancelled) => StopReason::Cancelled,
                    _ => StopReason::LeaseLost,
                }))
            }
            Err(other) => Err(other),
        }
    }

    /// The job if `token` is its current lease; the attempt number for log lines.
    pub async fn check_lease(&self, id: &JobId, token: &LeaseToken) -> QueueResult<Job> {
        let job = self
            .store
            .get_job(id, false)
            .await?
            .ok_or_else(|| QueueError::JobNotFound(id.to_string()))?;
        transitions::check_lease(&job, token)?;
        Ok(job)
    }

    /// Records a success.
    pub async fn complete(&self, report: CompleteReport) -> QueueResult<Job> {
        Self::single(self.complete_many(vec![report]).await?)
    }

    /// Records many successes in one transaction; one result per report, in order.
    pub async fn complete_many(
        &self,
        reports: Vec<CompleteReport>,
    ) -> QueueResult<Vec<QueueResult<Job>>> {
        let now = self.clock.now();
        let changes = reports
            .into_iter()
            .map(
                |CompleteReport {
                     job_id,
                     lease_token,
                     result,
                 }| {
                    let change: JobChange<'_> = Box::new(move |job| {
                        transitions::complete(job, &lease_token, result, now).map(Some)
                    });
                    (job_id, change)
                },
            )
            .collect();
        self.apply_many(changes).await
    }

    /// Records many failed attempts in one transaction; one result per report, in order.
    pub async fn fail_many(&self, reports: Vec<FailReport>) -> QueueResult<Vec<QueueResult<Job>>> {
        let now = self.clock.now();
        let changes = reports
            .into_iter()
            .map(
                |FailReport {
                     job_id,
                     lease_token,
                     error,
                     retryable,
                     retry_after,
                 }| {
                    let jitter = rand::random::<f64>();
                    let change: JobChange<'_> = Box::new(move |job| {
                        transitions::fail(
                            job,
                            &lease_token,
                            error,
                            retryable,
                            retry_after,
                            now,
                            jitter,
                        )
                        .map(Some)
                    });
                    (job_id, change)
                },
            )
            .collect();
        self.apply_many(changes).await
    }

    async fn apply_many(
        &self,
        changes: Vec<(JobId, JobChange<'_>)>,
    ) -> QueueResult<Vec<QueueResult<Job>>> {
        let outcomes = self.store.update_jobs(changes).await?;
        let mut jobs = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            jobs.push(match outcome {
                Ok(applied) => {
                    self.after_change(Some(&applied.before), &applied.job, applied.ended.as_ref())
                        .await;
                    Ok(applied.job)
                }
                Err(refused) => Err(refused),
            });
        }
        Ok(jobs)
    }

    /// Records a failed attempt.
    pub async fn fail(&self, report: FailReport) -> QueueResult<Job> {
        Self::single(self.fail_many(vec![report]).await?)
    }

    /// The one result of a batch of one.
    fn single(mut results: Vec<QueueResult<Job>>) -> QueueResult<Job> {
        results.pop().unwrap_or_else(|| {
            Err(QueueError::Storage(
                "a batch of one answered nothing".into(),
            ))
        })
    }

    /// Hands a leased job back.
    pub async fn release(&self, job_id: &JobId, lease_token: LeaseToken) -> QueueResult<Job> {
        let now = self.clock.now();
        self.change(
            job_id,
            Box::new(move |job| transitions::release(job, &lease_token, now).map(Some)),
        )
        .await
    }

    /// The reaper's pass: fails every attempt whose lease or deadline has
    /// passed. Returns how many it ended.
    pub async fn reap_expired(&self) -> QueueResult<usize> {
        let now = self.clock.now();
        let mut ended = 0;
        for id in self.store.expired_jobs(now, 500).await? {
            let jitter = rand::random::<f64>();
            // The job may have been renewed or reported since the scan; expire re-checks.
            let result = self
                .change(
                    &id,
                    Box::new(move |job| Ok(transitions::expire(job, now, jitter))),
                )
                .await;
            match result {
                Ok(job) if job.state != JobState::Running => ended += 1,
                Ok(_) | Err(QueueError::JobNotFound(_)) => {}
                Err(other) => return Err(other),
            }
        }
        Ok(ended)
    }

    /// The promoter's pass: queues every scheduled or retrying job whose time has come.
    pub async fn promote_due(&self) -> QueueResult<usize> {
        let now = self.clock.now();
        let mut promoted = 0;
        for id in self.store.due_jobs(now, 1000).await? {
            let change: JobChange<'_> = Box::new(move |job| {
                transitions::promote(job, now);
                Ok(None)
            });
            match self.change(&id, change).await {
                Ok(job) if job.state == JobState::Queued => promoted += 1,
                Ok(_) | Err(QueueError::JobNotFound(_)) => {}
                Err(other) => return Err(other),
            }
        }
        Ok(promoted)
    }

    /// How long the promoter may sleep: until the next run_at, at most `cap`.
    pub async fn until_next_due(&self, cap: Duration) -> QueueResult<Duration> {
        let now = self.clock.now();
        Ok(match self.store.next_due_at().await? {
            Some(at) if at <= now => Duration::ZERO,
            Some(at) => Duration::from_millis((at - now) as u64).min(cap),
            None => cap,
        })
    }

    /// Resolves when a job started waiting for a run_at since the last call.
    pub async fn waiting_changed(&self) {
        self.waiting_changed.notified().await;
    }

    /// Retention: deletes terminal jobs in `states` finished before `before`,
    /// with their logs. Returns how many.
    pub async fn purge_finished(&self, states: &[JobState], before: Millis) -> QueueResult<usize> {
        let mut purged = 0;
        for id in self.store.finished_before(states, before, 1000).await? {
            match self.delete(&id).await {
                Ok(()) => purged += 1,
                Err(QueueError::FailedPrecondition(_) | QueueError::JobNotFound(_)) => {}
                Err(other) => return Err(other),
            }
        }
        Ok(purged)
    }

    /// Every queue that has jobs or controls, with its controls.
    pub async fn queues(&self) -> QueueResult<Vec<QueueControls>> {
        let mut controls = self.store.queue_controls().await?;
        for name in self.store.queue_names().await? {
            if !controls.iter().any(|control| control.name == name) {
                controls.push(QueueControls::open(name));
            }
        }
        controls.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(controls)
    }

    /// Changes a queue's controls with `edit`; returns them.
    pub async fn update_queue(
        &self,
        name: String,
        edit: impl FnOnce(&mut QueueControls),
    ) -> QueueResult<QueueControls> {
        let mut controls = self
            .store
            .queue_controls()
            .await?
            .into_iter()
            .find(|control| control.name == name)
            .unwrap_or_else(|| QueueControls::open(name));
        edit(&mut controls);
        self.store
            .put_queue_controls(&controls, self.clock.now())
            .await?;
        // A resumed queue or a raised limit may free jobs for waiting workers.
        self.signal_ready();
        Ok(controls)
    }

    /// Workers heard from since `since`, with the jobs they hold.
    pub async fn workers(&self, since: Millis) -> QueueResult<Vec<(WorkerRecord, Vec<JobId>)>> {
        self.store.workers(since).await
    }

    pub(super) fn refuse_if_shutting_down(&self) -> QueueResult<()> {
        if self.shutdown.is_cancelled() {
            Err(QueueError::ShuttingDown)
        } else {
            Ok(())
        }
    }

    pub(super) async fn announce_created(&self, job: &Job) {
        self.after_change(None, job, None).await;
    }
}
