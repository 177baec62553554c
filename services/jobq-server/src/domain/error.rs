//! The one error type of the queue; the gRPC layer maps each variant to a status code.

/// What can go wrong in a queue operation.
#[derive(Debug, thiserror::Error)]
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
    /// The job is not in a state that allows the operation.
    #[error("{0}")]
    FailedPrecondition(String),
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
}

/// Result of a queue operation.
pub type QueueResult<T> = Result<T, QueueError>;
