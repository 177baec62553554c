//! The job model: what a producer asks for, what the server stores, and the
//! events it emits.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::clock::Millis;
use super::retry::RetryPolicy;

/// Server-assigned job id: a UUIDv7 in its hyphenated form, so ids sort by creation time.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    /// A new id for a job created now.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    /// Parses a client-supplied id; `field` names it in the error.
    pub fn parse(raw: &str, field: &str) -> Result<Self, super::QueueError> {
        if raw.is_empty() {
            return Err(super::QueueError::invalid(field, "is required"));
        }
        uuid::Uuid::parse_str(raw)
            .map(|id| Self(id.hyphenated().to_string()))
            .map_err(|_| {
                super::QueueError::invalid(
                    field,
                    format!("{} is not a job id (UUID)", super::excerpt(raw)),
                )
            })
    }

    /// An id read back from storage, trusted as is.
    pub fn from_stored(raw: String) -> Self {
        Self(raw)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Fencing token of one lease: reports carrying any other token are refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseToken(String);

impl LeaseToken {
    /// A fresh token for a new lease.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    /// A token as sent by a worker or read from storage.
    pub fn from_string(raw: String) -> Self {
        Self(raw)
    }

    /// The token as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where a job stands; see the state machine in DESIGN.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobState {
    /// Waiting for `run_at`.
    Scheduled,
    /// Waiting for dependencies.
    Blocked,
    /// Ready to be leased.
    Queued,
    /// Leased; an attempt is under way.
    Running,
    /// Waiting out a backoff before it is queued again.
    Retrying,
    /// Terminal: done.
    Succeeded,
    /// Terminal: cancelled.
    Cancelled,
    /// Terminal: dead-lettered.
    Dead,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 8] = [
        JobState::Scheduled,
        JobState::Blocked,
        JobState::Queued,
        JobState::Running,
        JobState::Retrying,
        JobState::Succeeded,
        JobState::Cancelled,
        JobState::Dead,
    ];

    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Blocked => "blocked",
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Retrying => "retrying",
            JobState::Succeeded => "succeeded",
            JobState::Cancelled => "cancelled",
            JobState::Dead => "dead",
        }
    }

    /// True for succeeded, cancelled and dead: nothing more happens unless retried.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Cancelled | JobState::Dead
        )
    }
}

impl FromStr for JobState {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == raw)
            .ok_or_else(|| format!("unknown job state {raw:?}"))
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The worker reported success.
    Succeeded,
    /// The worker reported failure.
    Failed,
    /// No heartbeat came before the lease ran out.
    LeaseExpired,
    /// The attempt outlived the job's timeout.
    TimedOut,
    /// The job was cancelled during the attempt.
    Cancelled,
    /// The worker handed the job back; the attempt does not count.
    Released,
}

impl AttemptOutcome {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::LeaseExpired => "lease_expired",
            AttemptOutcome::TimedOut => "timed_out",
            AttemptOutcome::Cancelled => "cancelled",
            AttemptOutcome::Released => "released",
        }
    }

    /// Parses a stored name.
    pub fn parse(raw: &str) -> Option<Self> {
        [
            AttemptOutcome::Succeeded,
            AttemptOutcome::Failed,
            AttemptOutcome::LeaseExpired,
            AttemptOutcome::TimedOut,
            AttemptOutcome::Cancelled,
            AttemptOutcome::Released,
        ]
        .into_iter()
        .find(|outcome| outcome.as_str() == raw)
    }
}

/// Why a worker must stop a job it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A client cancelled it.
    Cancelled,
    /// The attempt ran past its timeout.
    TimedOut,
    /// The lease is no longer this worker's.
    LeaseLost,
}

/// A validated request to enqueue a job, defaults already applied. Schedules
/// store it as their template (serde).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JobSpec {
    /// Job type.
    pub job_type: String,
    /// Queue name.
    pub queue: String,
    /// JSON payload text (canonical).
    pub payload: String,
    /// Higher runs first.
    pub priority: i32,
    /// Not before this time; `None` means now (or after `delay`).
    pub run_at: Option<Millis>,
    /// Not before this long after the job is created (never with `run_at`):
    /// counted from the creation time itself, and for a schedule's template
    /// from each firing.
    #[serde(default)]
    pub delay: Option<Duration>,
    /// Attempts before dead-lettering.
    pub max_attempts: i32,
    /// Longest run time of one attempt.
    pub timeout: Duration,
    /// Backoff between attempts.
    pub retry_policy: RetryPolicy,
    /// Deduplication key while the job is not terminal.
    pub unique_key: Option<String>,
    /// Jobs with the same key run at most `concurrency_limit` at once.
    #[serde(default)]
    pub concurrency_key: Option<String>,
    /// Limit of the concurrency key (at least 1 with a key, 0 without).
    #[serde(default)]
    pub concurrency_limit: i32,
    /// Labels.
    pub tags: Vec<String>,
    /// The job that spawned this one.
    pub parent_id: Option<JobId>,
    /// W3C traceparent of the enqueuer.
    pub traceparent: Option<String>,
    /// Jobs that must succeed first.
    pub depends_on: Vec<JobId>,
    /// The schedule enqueuing it, if any.
    pub schedule_name: Option<String>,
    /// Size of the payload on the wire.
    #[serde(default)]
    pub payload_bytes: i64,
}

/// What a history entry records: an attempt, or a client's action on a job
/// that was not running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A lease and its run by a worker.
    Attempt,
    /// The job was cancelled while it was not running (or because a
    /// dependency failed).
    Cancelled,
    /// A finished job was queued again by a client.
    Requeued,
}

impl EntryKind {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Attempt => "attempt",
            EntryKind::Cancelled => "cancelled",
            EntryKind::Requeued => "requeued",
        }
    }

    /// Parses a stored name.
    pub fn parse(raw: &str) -> Option<Self> {
        [
            EntryKind::Attempt,
            EntryKind::Cancelled,
            EntryKind::Requeued,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == raw)
    }
}

/// One entry of a job's history: an attempt (running or ended), or an action.
/// Entry 0 is the enqueue itself and has no record; entries count from 1.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    /// Position in the job's history, from 1; never repeats within a job.
    pub seq: i32,
    /// What it records.
    pub kind: EntryKind,
    /// Attempt number of the current run (1-based); 0 for actions.
    pub number: i32,
    /// Worker that held the lease; empty for actions.
    pub worker_id: String,
    /// Token of the attempt's lease.
    pub lease_token: Option<LeaseToken>,
    /// When the lease was granted, or when the action happened.
    pub started_at: Millis,
    /// When the attempt ended; `None` while it runs.
    pub finished_at: Option<Millis>,
    /// How the attempt ended; `None` while it runs and for actions.
    pub outcome: Option<AttemptOutcome>,
    /// Error text of the attempt, or the reason of the action.
    pub error: Option<String>,
    /// A cancel was requested while the attempt ran.
    pub cancel_requested: bool,
    /// The state the job moved to at the end of the entry.
    pub then_state: Option<JobState>,
    /// When its next attempt may start, if it waits for one.
    pub then_run_at: Option<Millis>,
}

impl HistoryEntry {
    /// True for attempts.
    pub fn is_attempt(&self) -> bool {
        self.kind == EntryKind::Attempt
    }
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Id.
    pub id: JobId,
    /// Type.
    pub job_type: String,
    /// Queue.
    pub queue: String,
    /// JSON payload; `None` where it was not read (state changes never need it).
    pub payload: Option<String>,
    /// Size of the payload as sent on the wire, for sizing lease answers.
    pub payload_bytes: i64,
    /// Priority.
    pub priority: i32,
    /// Earliest time of the next attempt.
    pub run_at: Millis,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// Longest run time of one attempt.
    pub timeout: Duration,
    /// Backoff between attempts.
    pub retry_policy: RetryPolicy,
    /// Deduplication key.
    pub unique_key: Option<String>,
    /// Concurrency key: jobs with it run at most `concurrency_limit` at once.
    pub concurrency_key: Option<String>,
    /// Limit of the concurrency key (at least 1 with a key, 0 without).
    pub concurrency_limit: i32,
    /// Idempotency key of the request that created it.
    pub request_key: Option<String>,
    /// Labels.
    pub tags: Vec<String>,
    /// One-line summary of the payload, made at enqueue (empty for jobs
    /// stored before summaries existed).
    pub summary: String,
    /// Spawning job.
    pub parent_id: Option<JobId>,
    /// Enqueuer's traceparent.
    pub traceparent: Option<String>,
    /// Jobs that must succeed first; only filled where asked for.
    pub depends_on: Vec<JobId>,
    /// Some job depends on this one (so its end must release them).
    pub has_dependents: bool,
    /// The schedule that enqueued it.
    pub schedule_name: Option<String>,
    /// State.
    pub state: JobState,
    /// Attempts of the current run.
    pub attempt: i32,
    /// Last history entry used (attempts and actions); the running attempt's seq.
    pub history_seq: i32,
    /// Progress 0..100.
    pub progress_percent: i32,
    /// Progress message.
    pub progress_message: String,
    /// JSON result; written only by a success (and cleared by a requeue).
    pub result: Option<String>,
    /// Last error or cancel reason.
    pub last_error: Option<String>,
    /// A cancel is pending for the running attempt.
    pub cancel_requested: bool,
    /// Current lease token, while running.
    pub lease_token: Option<LeaseToken>,
    /// Current lease holder, while running.
    pub worker_id: Option<String>,
    /// Current lease deadline, while running.
    pub lease_expires_at: Option<Millis>,
    /// Length of the current lease, renewed by each heartbeat.
    pub lease_duration: Option<Duration>,
    /// Deadline of the current attempt, while running.
    pub attempt_deadline: Option<Millis>,
    /// Start of the current attempt, while running.
    pub attempt_started_at: Option<Millis>,
    /// Creation time.
    pub created_at: Millis,
    /// First start.
    pub started_at: Option<Millis>,
    /// Terminal time.
    pub finished_at: Option<Millis>,
    /// Last change.
    pub updated_at: Millis,
    /// History, oldest first (the running attempt last); only filled where asked for.
    pub history: Vec<HistoryEntry>,
}

impl Job {
    /// The running attempt as a history entry, while the job runs.
    pub fn running_attempt(&self) -> Option<HistoryEntry> {
        (self.state == JobState::Running).then(|| HistoryEntry {
            seq: self.history_seq,
            kind: EntryKind::Attempt,
            number: self.attempt,
            worker_id: self.worker_id.clone().unwrap_or_default(),
            lease_token: self.lease_token.clone(),
            started_at: self.attempt_started_at.unwrap_or(self.updated_at),
            finished_at: None,
            outcome: None,
            error: None,
            cancel_requested: self.cancel_requested,
            then_state: None,
            then_run_at: None,
        })
    }

    /// The attempts of the history (no actions), oldest first.
    pub fn attempts(&self) -> impl Iterator<Item = &HistoryEntry> {
        self.history.iter().filter(|entry| entry.is_attempt())
    }
}

/// A job just leased, with its lease.
#[derive(Debug, Clone)]
pub struct LeasedJob {
    /// The job, running.
    pub job: Job,
    /// Its lease token.
    pub lease_token: LeaseToken,
    /// Lease deadline.
    pub lease_expires_at: Millis,
    /// Attempt deadline.
    pub attempt_deadline: Millis,
}

/// Filters of ListJobs; empty vectors mean "any".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobFilter {
    /// States to include.
    pub states: Vec<JobState>,
    /// Types to include.
    pub types: Vec<String>,
    /// Queues to include.
    pub queues: Vec<String>,
    /// Created at or after.
    pub created_after: Option<Millis>,
    /// Created before.
    pub created_before: Option<Millis>,
    /// Children of this job.
    pub parent_id: Option<JobId>,
    /// Id, type or unique key contains this text.
    pub search: Option<String>,
    /// Has every one of these tags.
    pub tags: Vec<String>,
    /// The payload matches every one of these.
    pub payload: Vec<PayloadFilter>,
    /// Order of the listing.
    pub order: JobOrder,
}

/// One condition on a field of the JSON payload.
#[derive(Debug, Clone, PartialEq)]
pub struct PayloadFilter {
    /// Path of object keys from the payload's top level (at least one).
    pub path: Vec<String>,
    /// How the field's value is compared.
    pub matching: PayloadMatch,
    /// What it is compared with.
    pub value: String,
}

/// How a [`PayloadFilter`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadMatch {
    /// The value as text (a string as is, a number or boolean as JSON) equals.
    Equals,
    /// The value is a string containing the text, ignoring case.
    Contains,
}

/// Order of a job listing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum JobOrder {
    /// Newest created first (by id).
    #[default]
    Newest,
    /// Most recently finished first; unfinished jobs after, newest first.
    FinishedDesc,
}

/// Where a page of a listing ends: the next page starts after this job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageCursor {
    /// The last job's id.
    pub id: JobId,
    /// Its finished_at, in [`JobOrder::FinishedDesc`] listings.
    pub finished_at: Option<Millis>,
}

impl PageCursor {
    /// The cursor after `job` in a listing of `order`.
    pub fn after(job: &Job, order: JobOrder) -> Self {
        Self {
            id: job.id.clone(),
            finished_at: match order {
                JobOrder::Newest => None,
                JobOrder::FinishedDesc => job.finished_at,
            },
        }
    }
}

/// Jobs picked for a bulk operation: explicit ids, or a filter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobSelector {
    /// These jobs; when set, the filter is ignored.
    pub ids: Vec<JobId>,
    /// Jobs in these states.
    pub states: Vec<JobState>,
    /// And these queues (any if empty).
    pub queues: Vec<String>,
    /// And these types (any if empty).
    pub types: Vec<String>,
    /// At most this many.
    pub limit: u64,
}

/// Counts of one queue.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueStats {
    /// Queue name.
    pub queue: String,
    /// Jobs per state, states with no job left out.
    pub counts: Vec<(JobState, i64)>,
    /// Earliest run_at among its queued jobs.
    pub oldest_ready_run_at: Option<Millis>,
}

/// Stats of several queues at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsSnapshot {
    /// Per queue, sorted by name.
    pub queues: Vec<QueueStats>,
    /// When taken.
    pub as_of: Millis,
}

/// Something that happened to a job, emitted after its transaction commits.
#[derive(Debug, Clone)]
pub struct JobEvent {
    /// What happened.
    pub kind: JobEventKind,
    /// The job right after it happened (no payload, result or history).
    pub job: Job,
    /// When it happened.
    pub at: Millis,
}

/// Kinds of [`JobEvent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEventKind {
    /// The job was enqueued.
    Created,
    /// The job changed state.
    StateChanged {
        /// State before.
        from: JobState,
    },
    /// Progress changed without a state change.
    Progress,
    /// An attempt failed; the job moved on from `from` (to retrying, dead or cancelled).
    AttemptFailed {
        /// State before.
        from: JobState,
        /// The error.
        error: String,
    },
    /// The job was deleted.
    Deleted,
}
