//! The rules of the queue: job model, state machine, retry policy, schedules
//! and queue controls. Knows nothing of gRPC, protobuf or the database.

mod admission;
mod clock;
mod control;
mod error;
mod history;
mod job;
mod limits;
mod narrate;
mod observe;
mod queue;
mod retry;
mod schedules;
mod store;
mod summary;
mod tally;
mod transitions;

#[cfg(test)]
mod admission_tests;
#[cfg(test)]
mod history_tests;
#[cfg(test)]
mod tests;

pub use admission::{
    MAX_KEY_LIMIT, MAX_RATE, MissedTicks, QueueGate, RateBucket, tick_missed, within_key_limits,
};
pub use clock::{Clock, ManualClock, Millis, SystemClock};
pub use control::{CronSchedule, QueueControls, ScheduleRecord, WorkerRecord};
pub use error::{QueueError, QueueResult, Refusal, excerpt};
pub use history::{
    HistoryPoint, HistoryQuery, HistoryRow, HistoryStats, HistoryStore, JobHistory,
    LatencyHistogram, LatencySummary, MAX_BUCKETS, MINUTE, minute_of,
};
pub use job::{
    AttemptOutcome, EntryKind, HistoryEntry, Job, JobEvent, JobEventKind, JobFilter, JobId,
    JobOrder, JobSelector, JobSpec, JobState, LeaseToken, LeasedJob, PageCursor, PayloadFilter,
    PayloadMatch, QueueStats, StatsSnapshot, StopReason,
};
pub use limits::{
    DEFAULT_LEASE_RESPONSE_BYTES, Defaults, LEASE_RANGE, Limits, MAX_ATTEMPTS, MAX_DELAY,
    MAX_ERROR_BYTES, MAX_JSON_DEPTH, MAX_MESSAGE_BYTES, MAX_NAME_BYTES, MAX_TAGS, MAX_TIME_MS,
    MAX_WAIT, PRIORITY_RANGE,
};
pub use narrate::{CLOSING_LINE, Narration, narrate};
pub use observe::JobObserver;
pub use queue::{
    CompleteReport, FailReport, HeartbeatLease, HeartbeatOutcome, JobQueue, LeaseRequest, Page,
    PageRequest,
};
pub use retry::RetryPolicy;
pub use schedules::ScheduleDefinition;
pub use store::{
    Applied, DependencyRule, Detail, InsertedAndLeased, JobChange, JobLog, JobStore, LeaseChange,
    LeaseQuery, Leased, NewJob, Peers, QueueEdit,
};
pub use summary::{MAX_SUMMARY_CHARS, summarize};
pub use tally::JobTally;
