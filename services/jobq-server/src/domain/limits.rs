//! Server-wide defaults for jobs that leave a setting out, and hard limits on input.

use std::time::Duration;

use super::retry::RetryPolicy;

/// Values a job gets when its spec leaves them out.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// Attempts before a job is dead-lettered.
    pub max_attempts: i32,
    /// Longest run time of one attempt.
    pub timeout: Duration,
    /// Backoff between attempts.
    pub retry_policy: RetryPolicy,
    /// Lease length when the worker does not ask for one.
    pub lease_duration: Duration,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            max_attempts: 25,
            timeout: Duration::from_secs(3600),
            retry_policy: RetryPolicy {
                base_backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(3600),
            },
            lease_duration: Duration::from_secs(30),
        }
    }
}

/// Hard limits on what a request may carry.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest payload or result, in bytes.
    pub max_payload_bytes: usize,
    /// Most jobs in one batch request.
    pub max_batch: usize,
    /// Longest a LeaseJobs call may wait.
    pub max_lease_wait: Duration,
    /// Most jobs one LeaseJobs call may return.
    pub max_lease_jobs: usize,
    /// Largest gRPC message the server accepts or sends, in bytes.
    pub max_message_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 1024 * 1024,
            max_batch: 1000,
            max_lease_wait: Duration::from_secs(60),
            max_lease_jobs: 100,
            max_message_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Short text fields (type, queue, worker id, tag, unique key).
pub const MAX_NAME_BYTES: usize = 128;
/// Most tags on one job.
pub const MAX_TAGS: usize = 32;
/// Longest error text kept for an attempt.
pub const MAX_ERROR_BYTES: usize = 64 * 1024;
/// Longest progress message or cancel reason.
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// Highest and lowest priority.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i32> = -1000..=1000;
/// Most attempts a job may be given.
pub const MAX_ATTEMPTS: i32 = 10_000;
/// Deepest nesting of a payload or result (arrays and objects).
pub const MAX_JSON_DEPTH: usize = 32;
/// The last millisecond of the year 9999: later times cannot be written as
/// RFC 3339 (clients and tools break on them), so none is accepted.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;
/// Longest timeout, backoff or retry_after.
pub const MAX_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);
/// Longest delay of a job's first run.
pub const MAX_DELAY: Duration = Duration::from_secs(3650 * 24 * 3600);
/// Shortest and longest lease a worker may ask for.
pub const LEASE_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(3600);
/// Answer size a LeaseJobs call is kept under when the worker names none
/// (the usual receive limit of gRPC clients).
pub const DEFAULT_LEASE_RESPONSE_BYTES: u64 = 4 * 1024 * 1024;
