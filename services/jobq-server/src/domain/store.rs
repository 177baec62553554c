//! What the queue needs from storage, as a trait the infrastructure
//! implements. Writes of concurrent callers may be committed together (group
//! commit); each write method still succeeds or fails as one unit.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::clock::Millis;
use super::control::{QueueControls, ScheduleRecord, WorkerRecord};
use super::error::QueueResult;
use super::job::{
    AttemptOutcome, HistoryEntry, Job, JobEvent, JobFilter, JobId, JobSelector, JobState,
    LeaseToken, PageCursor, StatsSnapshot,
};

/// A change of one job, as the store applied it.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The job before the change.
    pub before: Job,
    /// The job after it.
    pub job: Job,
    /// The history entry the change closed (an ended attempt, an action), if any.
    pub entry: Option<HistoryEntry>,
}

/// What a change does to a loaded job (its payload and result are not
/// loaded). It may be applied again to a freshly loaded copy if the store
/// retries the transaction, so it must not consume what it captured.
pub type JobChange =
    Box<dyn Fn(&mut Job) -> QueueResult<Option<HistoryEntry>> + Send + Sync + 'static>;

/// The rule that sets a new job's start state from its dependencies' states
/// (the name of the job's field in errors given): see `transitions::apply_dependencies`.
pub type DependencyRule = fn(&mut Job, &[(JobId, JobState)], &str) -> QueueResult<()>;

/// A job to insert, with the name of its spec in errors (`job`, `jobs[3]`).
#[derive(Debug, Clone)]
pub struct NewJob {
    /// The job, as it will be stored.
    pub job: Job,
    /// Field path of its spec, for errors.
    pub field: String,
}

/// Which queued jobs a lease may take.
#[derive(Debug, Clone, Default)]
pub struct LeaseQuery {
    /// Queues that hand out jobs freely (no controls).
    pub open: Vec<String>,
    /// Queues with controls: the lease reads them afresh under a lock every
    /// replica shares and lets through what their gate allows.
    pub gated: Vec<String>,
    /// Job types (any if empty).
    pub types: Vec<String>,
    /// Most jobs.
    pub limit: u64,
    /// Most payload bytes in all (jobs are taken while they fit; one that
    /// does not fit on its own is skipped).
    pub max_payload_bytes: i64,
    /// Now, for rate limits.
    pub now: Millis,
}

impl LeaseQuery {
    /// Whether the lease could take any job at all.
    pub fn may_take_any(&self) -> bool {
        self.limit > 0 && !(self.open.is_empty() && self.gated.is_empty())
    }
}

/// What a lease took.
#[derive(Debug, Default)]
pub struct Leased {
    /// The jobs, each under its new lease token.
    pub jobs: Vec<(Job, LeaseToken)>,
    /// When to look again though nothing else changes: a rate limit's next
    /// token, or soon when another lease held a gate.
    pub retry_at: Option<Millis>,
}

/// What [`JobStore::insert_and_lease`] did.
pub struct InsertedAndLeased {
    /// The insert's answer: each job and whether it already existed.
    pub inserted: QueueResult<Vec<(Job, bool)>>,
    /// What each lease took, in the order given.
    pub leased: Vec<Vec<(Job, LeaseToken)>>,
}

/// How much of a job a read returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// No payload, result, dependencies or history.
    Basic,
    /// Payload, result and dependencies too.
    Full,
    /// Everything, the history included.
    History,
}

/// What leasing does to each picked job: starts an attempt under a fresh token.
pub type LeaseChange = Box<dyn Fn(&mut Job) -> LeaseToken + Send + Sync + 'static>;

/// A change of a queue's controls.
pub type QueueEdit = Arc<dyn Fn(&mut QueueControls) + Send + Sync + 'static>;

/// Where jobs, queues, workers and schedules are kept.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Inserts new jobs, all or none, in one transaction. Per job: a
    /// `request_key` already stored returns that job (`true`); a `unique_key`
    /// held by a non-terminal job returns the holder (`true`); a missing
    /// parent or dependency is INVALID_ARGUMENT; `rule` sets the start state
    /// from the dependencies' states, read in the same transaction.
    async fn insert_jobs(
        &self,
        jobs: Vec<NewJob>,
        rule: DependencyRule,
    ) -> QueueResult<Vec<(Job, bool)>>;
    /// Inserts new jobs as [`JobStore::insert_jobs`] does, then runs
    /// `leases` in the same transaction (workers waiting for the queues the
    /// jobs go to): a job can be enqueued and handed out in one commit.
    /// The leases run and commit even if the insert is refused.
    async fn insert_and_lease(
        &self,
        jobs: Vec<NewJob>,
        rule: DependencyRule,
        leases: Vec<(LeaseQuery, LeaseChange)>,
    ) -> QueueResult<InsertedAndLeased>;
    /// One job, with as much detail as asked.
    async fn get_job(&self, id: &JobId, detail: Detail) -> QueueResult<Option<Job>>;
    /// States of the given jobs; missing ones are left out.
    async fn job_states(&self, ids: &[JobId]) -> QueueResult<Vec<(JobId, JobState)>>;
    /// Jobs matching `filter` that come after `after` in the filter's order.
    async fn list_jobs(
        &self,
        filter: &JobFilter,
        after: Option<&PageCursor>,
        limit: u64,
        detail: Detail,
    ) -> QueueResult<Vec<Job>>;
    /// Ids of the jobs a bulk operation selects.
    async fn select_jobs(&self, selector: &JobSelector) -> QueueResult<Vec<JobId>>;
    /// Applies changes to jobs in one transaction (one commit): loads each job
    /// (without payload and result), applies its change, saves it and the
    /// entry it closed. A change that refuses (stale lease, wrong state)
    /// writes nothing for its job and leaves the others alone; a storage
    /// error fails them all. Several changes of one job apply in order.
    async fn update_jobs(
        &self,
        changes: Vec<(JobId, JobChange)>,
    ) -> QueueResult<Vec<QueueResult<Applied>>>;
    /// Picks up to `query.limit` queued jobs in lease order (priority desc,
    /// run_at, id), skipping rows other transactions hold, keeping each
    /// gated queue within its gate and each concurrency key within its
    /// limit, applies `lease` to each and saves them. Returns the jobs with
    /// their payloads.
    async fn lease_jobs(&self, query: LeaseQuery, lease: LeaseChange) -> QueueResult<Leased>;
    /// How many jobs with concurrency key `key` run now.
    async fn running_with_key(&self, key: &str) -> QueueResult<i64>;
    /// Deletes the jobs that `check` allows, with their history; one result per id.
    async fn delete_jobs(
        &self,
        ids: Vec<JobId>,
        check: for<'j> fn(&'j Job) -> QueueResult<()>,
    ) -> QueueResult<Vec<QueueResult<Job>>>;
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
    /// For each given job, the states of the jobs it depends on.
    async fn dependency_states(
        &self,
        ids: &[JobId],
    ) -> QueueResult<HashMap<JobId, Vec<(JobId, JobState)>>>;
    /// Blocked jobs that depend on any of `ids`.
    async fn blocked_dependents(&self, ids: &[JobId]) -> QueueResult<Vec<JobId>>;
    /// Counts by queue and state, for `queues` or all when empty.
    async fn stats(&self, queues: &[String], now: Millis) -> QueueResult<StatsSnapshot>;
    /// Jobs stored and not yet in the payload search index (searches
    /// find them all the same; the index takes them in chunks).
    async fn search_backlog(&self) -> QueueResult<u64>;
    /// Earliest run_at of the queued jobs of each of `queues` that has one.
    async fn oldest_ready(&self, queues: &[String]) -> QueueResult<BTreeMap<String, Millis>>;
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
    /// Changes a queue's controls with `edit` in one transaction, the row
    /// locked (created open if new), so concurrent changes through several
    /// replicas all apply; returns the controls as stored.
    async fn update_queue_controls(
        &self,
        name: &str,
        now: Millis,
        edit: QueueEdit,
    ) -> QueueResult<QueueControls>;

    /// Records workers that asked for jobs (new ones are added).
    async fn touch_workers(&self, workers: Vec<WorkerRecord>) -> QueueResult<()>;
    /// Records that known workers were heard from again (heartbeats).
    async fn workers_seen(&self, worker_ids: Vec<String>, now: Millis) -> QueueResult<()>;
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
        fire: Box<
            dyn for<'s> Fn(&'s ScheduleRecord) -> QueueResult<(Option<Job>, Millis)> + Send + Sync,
        >,
    ) -> QueueResult<Option<Job>>;

    /// Whether the database answers now (for the health service).
    async fn ping(&self) -> QueueResult<()>;
}

/// Job logs, as far as the queue is concerned: deleted jobs take theirs along.
#[async_trait]
pub trait JobLog: Send + Sync + 'static {
    /// The jobs were deleted: their logs go too.
    async fn deleted(&self, job_ids: &[JobId]);
}

/// Other server replicas sharing the database, told of changes so their
/// waiting workers, promoters and watchers react too. None on SQLite.
pub trait Peers: Send + Sync + 'static {
    /// A job may have become leasable.
    fn ready(&self);
    /// A job started waiting for a run_at.
    fn waiting(&self);
    /// A queue's controls changed.
    fn controls_changed(&self);
    /// Whether another replica watches job events now.
    fn wants_events(&self) -> bool;
    /// Job events happened here (sent only while some replica watches).
    fn job_events(&self, events: &[JobEvent]);
}

/// Longest a worker's registry row may go without a refresh while it is busy.
pub const WORKER_TOUCH_INTERVAL: Duration = Duration::from_secs(1);
