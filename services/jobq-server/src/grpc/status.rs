//! The one mapping from queue errors to gRPC statuses, with the standard
//! details clients branch on: BadRequest for invalid fields, ErrorInfo with
//! a stable reason for refusals, RetryInfo where a retry makes sense.

use std::collections::HashMap;
use std::time::Duration;

use prost::Message;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::QueueError;

/// The ErrorInfo domain of jobq's reasons.
pub const DOMAIN: &str = "jobq.v1";
/// How long a client should wait before retrying after UNAVAILABLE.
const RETRY_AFTER: Duration = Duration::from_secs(1);

fn refusal(code: Code, reason: &str, message: String, metadata: HashMap<String, String>) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, DOMAIN, metadata),
    )
}

fn unavailable(reason: &str, message: &str) -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(RETRY_AFTER));
    details.set_error_info(reason, DOMAIN, HashMap::new());
    Status::with_error_details(Code::Unavailable, message, details)
}

impl From<QueueError> for Status {
    fn from(error: QueueError) -> Self {
        // Exhaustive on purpose: a new error must get a deliberate code.
        match error {
            QueueError::InvalidArgument { field, reason } => {
                let message = format!("invalid {field}: {reason}");
                let details = ErrorDetails::with_bad_request_violation(field, reason);
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            QueueError::JobNotFound(id) => refusal(
                Code::NotFound,
                "JOB_NOT_FOUND",
                format!("job {id} not found"),
                HashMap::from([("job_id".to_owned(), id)]),
            ),
            QueueError::ScheduleNotFound(name) => refusal(
                Code::NotFound,
                "SCHEDULE_NOT_FOUND",
                format!("schedule {name} not found"),
                HashMap::from([("schedule".to_owned(), name)]),
            ),
            QueueError::FailedPrecondition { reason, message } => refusal(
                Code::FailedPrecondition,
                reason.as_str(),
                message,
                HashMap::new(),
            ),
            stale @ QueueError::StaleLease { .. } => {
                let job_id = match &stale {
                    QueueError::StaleLease { job_id } => job_id.clone(),
                    _ => String::new(),
                };
                refusal(
                    Code::FailedPrecondition,
                    "LEASE_STALE",
                    stale.to_string(),
                    HashMap::from([("job_id".to_owned(), job_id)]),
                )
            }
            QueueError::ShuttingDown => unavailable("SHUTTING_DOWN", "server is shutting down"),
            QueueError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "database unavailable");
                unavailable(
                    "DATABASE_UNAVAILABLE",
                    "the database cannot be reached; retry shortly (a write may or may not have happened: retry enqueues with the same request_id)",
                )
            }
            QueueError::Conflict(detail) => {
                tracing::info!(error = %detail, "write collided with another");
                let mut details = ErrorDetails::with_retry_info(Some(Duration::from_millis(50)));
                details.set_error_info("WRITE_CONFLICT", DOMAIN, HashMap::new());
                Status::with_error_details(
                    Code::Aborted,
                    "the write collided with a concurrent one and was not done; retry it",
                    details,
                )
            }
            QueueError::StorageFull(detail) => {
                tracing::warn!(error = %detail, "storage full: refusing writes");
                let mut details = ErrorDetails::with_retry_info(Some(Duration::from_secs(5)));
                details.set_error_info("STORAGE_FULL", DOMAIN, HashMap::new());
                Status::with_error_details(
                    Code::ResourceExhausted,
                    "the server's disk is full: writes are refused until space is freed (reads still work); retry later",
                    details,
                )
            }
            QueueError::StorageReadOnly(detail) => {
                tracing::warn!(error = %detail, "storage read-only: refusing writes");
                unavailable(
                    "STORAGE_READ_ONLY",
                    "the server's storage is read-only: writes are refused until it is writable again (reads still work); retry later",
                )
            }
            QueueError::Storage(detail) => {
                // The detail may hold SQL or paths: log it here, send nothing of it.
                tracing::error!(error = %detail, "storage error");
                Status::internal("internal storage error")
            }
        }
    }
}

/// A status as the google.rpc.Status a batch answer embeds (details kept).
pub fn rpc_status(status: &Status) -> jobq_proto::rpc::Status {
    if !status.details().is_empty()
        && let Ok(decoded) = jobq_proto::rpc::Status::decode(status.details())
    {
        return decoded;
    }
    jobq_proto::rpc::Status {
        code: status.code() as i32,
        message: status.message().to_owned(),
        details: Vec::new(),
    }
}

/// The OK status of an accepted batch item.
pub fn rpc_ok() -> jobq_proto::rpc::Status {
    jobq_proto::rpc::Status {
        code: 0,
        message: String::new(),
        details: Vec::new(),
    }
}
