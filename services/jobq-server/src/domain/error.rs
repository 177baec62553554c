//! The one error type of the queue; the gRPC layer maps each variant to a
//! status code and a stable reason.

/// Why a job is not in a state that allows an operation: the stable reasons
/// clients can branch on (sent as google.rpc.ErrorInfo reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The job already finished (cancel of a terminal job).
    JobFinished,
    /// The job has not finished (retry of a live job).
    JobNotFinished,
    /// The job is running (delete of a running job).
    JobRunning,
    /// A job it would depend on already ended dead or cancelled.
    DependencyFailed,
    /// A request_id was used before for a different job.
    RequestIdReused,
}

impl Refusal {
    /// The reason as sent to clients.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::JobFinished => "JOB_FINISHED",
            Refusal::JobNotFinished => "JOB_NOT_FINISHED",
            Refusal::JobRunning => "JOB_RUNNING",
            Refusal::DependencyFailed => "DEPENDENCY_FAILED",
            Refusal::RequestIdReused => "REQUEST_ID_REUSED",
        }
    }
}

/// What can go wrong in a queue operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    /// A request field is missing, malformed or out of range.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// Path of the field, e.g. `job.payload` or `jobs[3].type`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No job has this id.
    #[error("job {0} not found")]
    JobNotFound(String),
    /// No schedule has this name.
    #[error("schedule {0} not found")]
    ScheduleNotFound(String),
    /// The job (or request) is not in a state that allows the operation.
    #[error("{message}")]
    FailedPrecondition {
        /// The stable reason.
        reason: Refusal,
        /// What happened, for people.
        message: String,
    },
    /// The lease token is not the job's current one: the lease expired or was never held.
    #[error("lease of job {job_id} is stale: the job was leased again or is no longer running")]
    StaleLease {
        /// The job whose lease was stale.
        job_id: String,
    },
    /// The server is shutting down.
    #[error("server is shutting down")]
    ShuttingDown,
    /// The database cannot be reached right now; the call may be retried.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Two writers collided (a unique constraint, a deadlock); the write did
    /// not happen and may be retried.
    #[error("storage conflict: {0}")]
    Conflict(String),
    /// The disk under the database or the job logs is full: writes are
    /// refused until space returns, reads go on.
    #[error("storage full: {0}")]
    StorageFull(String),
    /// The database or the job logs are on a read-only file system.
    #[error("storage read-only: {0}")]
    StorageReadOnly(String),
    /// The database failed; the detail is logged, never sent to clients.
    #[error("storage error: {0}")]
    Storage(String),
}

impl QueueError {
    /// An [`QueueError::InvalidArgument`] for `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// A [`QueueError::FailedPrecondition`] with `reason`.
    pub fn refused(reason: Refusal, message: impl Into<String>) -> Self {
        Self::FailedPrecondition {
            reason,
            message: message.into(),
        }
    }

    /// The same error with its field path put under `prefix` (e.g. `jobs[2]`).
    pub fn within(self, prefix: &str) -> Self {
        match self {
            Self::InvalidArgument { field, reason } => Self::InvalidArgument {
                field: format!("{prefix}.{field}"),
                reason,
            },
            other => other,
        }
    }

    /// True when the error says nothing about the request, only about the
    /// storage, so a whole batch fails with it.
    pub fn is_storage(&self) -> bool {
        matches!(
            self,
            Self::Unavailable(_) | Self::Conflict(_) | Self::Storage(_)
        )
    }
}

/// Result of a queue operation.
pub type QueueResult<T> = Result<T, QueueError>;

/// At most the first 64 characters of client input, for error messages: a
/// 1 MB id must not come back twice in the answer.
pub fn excerpt(raw: &str) -> String {
    const MAX_CHARS: usize = 64;
    match raw.char_indices().nth(MAX_CHARS) {
        None => format!("{raw:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &raw[..cut], raw.len()),
    }
}
