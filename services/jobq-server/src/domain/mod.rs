//! The rules of the queue: job model, state machine, retry policy, schedules
//! and queue controls. Knows nothing of gRPC, protobuf or the database.

mod clock;
mod control;
mod error;
mod job;
mod limits;
mod narrate;
mod queue;
mod retry;
mod schedules;
mod store;
mod transitions;

pub use clock::{Clock, Millis, SystemClock};
pub use control::{CronSchedule, QueueControls, ScheduleRecord, WorkerRecord};
pub use error::{QueueError, QueueResult};
pub use job::{
    Attempt, AttemptOutcome, Job, JobEvent, JobEventKind, JobFilter, JobId, JobSelector, JobSpec,
    JobState, LeaseToken, LeasedJob, QueueStats, StatsSnapshot, StopReason,
};
pub use limits::{
    Defaults, Limits, MAX_ERROR_BYTES, MAX_MESSAGE_BYTES, MAX_NAME_BYTES, MAX_TAGS, PRIORITY_RANGE,
};
pub use queue::{
    CompleteReport, FailReport, HeartbeatLease, HeartbeatOutcome, JobQueue, LeaseRequest, Page,
    PageRequest,
};
pub use retry::RetryPolicy;
pub use schedules::ScheduleDefinition;
pub use store::{
    Applied, DependencyRule, JobChange, JobLog, JobStore, LeaseChange, LeaseQuota, Peers,
};
pub use transitions::AttemptEnd;
