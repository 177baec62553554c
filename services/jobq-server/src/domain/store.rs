//! What the queue needs from storage and from the job log, as traits the
//! infrastructure implements. Every store method is one transaction.

use async_trait::async_trait;

use super::clock::Millis;
use super::control::{QueueControls, ScheduleRecord, WorkerRecord};
use super::error::QueueResult;
use super::job::{
    Attempt, AttemptOutcome, Job, JobFilter, JobId, JobSelector, JobState, LeaseToken,
    StatsSnapshot,
};
use super::transitions::AttemptEnd;

/// A change of one job, as the store applied it.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The job before the change.
    pub before: Job,
    /// The job after it.
    pub job: Job,
    /// The attempt the change ended, if any.
    pub ended: Option<AttemptEnd>,
}

/// What a job change does to the loaded job: optionally ends its attempt.
pub type JobChange<'a> = Box<dyn FnOnce(&mut Job) -> QueueResult<Option<AttemptEnd>> + Send + 'a>;

/// What leasing does to each picked job: starts an attempt.
pub type LeaseChange<'a> = &'a (dyn Fn(&mut Job) -> (LeaseToken, Attempt) + Send + Sync);

/// How a new job's start state follows from its dependencies' states.
pub type DependencyRule = fn(&mut Job, &[(JobId, JobState)], Millis);

/// How many jobs each queue may hand out in one lease call.
#[derive(Debug, Clone, Default)]
pub struct LeaseQuota {
    /// Queues without a concurrency limit.
    pub unlimited: Vec<String>,
    /// Queues with a concurrency limit, and the limit.
    pub limited: Vec<(String, i64)>,
}

/// Where jobs, queues, workers and schedules are kept.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Inserts new jobs, all or none. A job whose unique_key is held by a
    /// non-terminal job is not inserted: the holder is returned with `true`.
    /// Each job's dependencies are read in the same transaction and `rule` sets its start state.
    async fn insert_jobs(
        &self,
        jobs: Vec<Job>,
        rule: DependencyRule,
        now: Millis,
    ) -> QueueResult<Vec<(Job, bool)>>;
    /// One job, with its attempts when asked.
    async fn get_job(&self, id: &JobId, with_attempts: bool) -> QueueResult<Option<Job>>;
    /// States of the given jobs; missing ones are left out.
    async fn job_states(&self, ids: &[JobId]) -> QueueResult<Vec<(JobId, JobState)>>;
    /// Jobs matching `filter` with ids below `before_id`, newest first.
    async fn list_jobs(
        &self,
        filter: &JobFilter,
        before_id: Option<&JobId>,
        limit: u64,
    ) -> QueueResult<Vec<Job>>;
    /// Ids of the jobs a bulk operation selects.
    async fn select_jobs(&self, selector: &JobSelector) -> QueueResult<Vec<JobId>>;
    /// Loads a job under a write lock, applies `change`, and saves it (and the
    /// attempt end) if `change` succeeds; nothing is written if it fails.
    async fn update_job(&self, id: &JobId, change: JobChange<'_>) -> QueueResult<Applied>;
    /// Applies several job changes in one transaction (one commit, one sync).
    /// A change that refuses (stale lease, wrong state) writes nothing for
    /// its job and leaves the others alone; a storage error fails them all.
    async fn update_jobs(
        &self,
        changes: Vec<(JobId, JobChange<'_>)>,
    ) -> QueueResult<Vec<QueueResult<Applied>>>;
    /// Picks up to `limit` queued jobs from the queues in `quota` (and of
    /// `types`, if any) in lease order, skipping rows other transactions hold,
    /// keeping each limited queue under its limit, and applies `lease` to each.
    async fn lease_jobs(
        &self,
        quota: &LeaseQuota,
        types: &[String],
        limit: u64,
        lease: LeaseChange<'_>,
    ) -> QueueResult<Vec<(Job, LeaseToken)>>;
    /// Deletes a job and its attempts if `check` allows it.
    async fn delete_job(
        &self,
        id: &JobId,
        check: for<'j> fn(&'j Job) -> QueueResult<()>,
    ) -> QueueResult<Job>;
    /// Running jobs whose lease or attempt deadline is at or before `now`.
    async fn expired_jobs(&self, now: Millis, limit: u64) -> QueueResult<Vec<JobId>>;
    /// Scheduled or retrying jobs whose run_at is at or before `now`.
    async fn due_jobs(&self, now: Millis, limit: u64) -> QueueResult<Vec<JobId>>;
    /// Earliest run_at of the scheduled and retrying jobs.
    async fn next_due_at(&self) -> QueueResult<Option<Millis>>;
    /// How the attempt run under `token` ended, if it has.
    async fn attempt_outcome(
        &self,
        id: &JobId,
        token: &LeaseToken,
    ) -> QueueResult<Option<AttemptOutcome>>;
    /// States of the jobs `id` depends on.
    async fn dependency_states(&self, id: &JobId) -> QueueResult<Vec<(JobId, JobState)>>;
    /// Blocked jobs that depend on `id`.
    async fn blocked_dependents(&self, id: &JobId) -> QueueResult<Vec<JobId>>;
    /// Counts by queue and state, for `queues` or all when empty.
    async fn stats(&self, queues: &[String], now: Millis) -> QueueResult<StatsSnapshot>;
    /// Terminal jobs finished before `before` in `states`, oldest first.
    async fn finished_before(
        &self,
        states: &[JobState],
        before: Millis,
        limit: u64,
    ) -> QueueResult<Vec<JobId>>;

    /// Every queue with stored controls.
    async fn queue_controls(&self) -> QueueResult<Vec<QueueControls>>;
    /// Names of the queues that have jobs.
    async fn queue_names(&self) -> QueueResult<Vec<String>>;
    /// Stores a queue's controls.
    async fn put_queue_controls(&self, controls: &QueueControls, now: Millis) -> QueueResult<()>;

    /// Records that a worker was heard from.
    async fn touch_worker(&self, worker: &WorkerRecord) -> QueueResult<()>;
    /// Records that a known worker was heard from again (a heartbeat).
    async fn worker_seen(&self, worker_id: &str, now: Millis) -> QueueResult<()>;
    /// Workers last heard from at or after `since`, with the jobs they hold.
    async fn workers(&self, since: Millis) -> QueueResult<Vec<(WorkerRecord, Vec<JobId>)>>;

    /// Creates or replaces a schedule.
    async fn put_schedule(&self, schedule: &ScheduleRecord) -> QueueResult<()>;
    /// Every schedule, by name.
    async fn schedules(&self) -> QueueResult<Vec<ScheduleRecord>>;
    /// One schedule.
    async fn schedule(&self, name: &str) -> QueueResult<Option<ScheduleRecord>>;
    /// Deletes a schedule; false when there was none.
    async fn delete_schedule(&self, name: &str) -> QueueResult<bool>;
    /// Names of unpaused schedules due at `now`.
    async fn due_schedules(&self, now: Millis) -> QueueResult<Vec<String>>;
    /// Fires one tick of a schedule exactly once: under a lock on the
    /// schedule, if it is still due at `now`, `fire` returns the job to enqueue
    /// and the next tick; the job is inserted and the schedule advanced in the
    /// same transaction. Returns the job, or `None` if another replica fired it.
    async fn fire_schedule(
        &self,
        name: &str,
        now: Millis,
        fire: &(dyn for<'s> Fn(&'s ScheduleRecord) -> QueueResult<(Job, Millis)> + Send + Sync),
    ) -> QueueResult<Option<Job>>;
}

/// The job log as the queue writes to it: the server's own lines.
#[async_trait]
pub trait JobLog: Send + Sync + 'static {
    /// Appends a system line to a job's log.
    async fn system(&self, job_id: &JobId, attempt: i32, message: &str);
    /// The job reached a terminal state: its followers may finish.
    async fn finished(&self, job_id: &JobId, attempt: i32);
    /// The job was deleted: its log goes too.
    async fn deleted(&self, job_id: &JobId);
}

/// Other server replicas sharing the database, told of changes so their
/// waiting workers, promoters and watchers react too. None on SQLite.
pub trait Peers: Send + Sync + 'static {
    /// A job may have become leasable.
    fn ready(&self);
    /// A job started waiting for a run_at.
    fn waiting(&self);
    /// A job event happened here.
    fn job_event(&self, event: &super::job::JobEvent);
}
