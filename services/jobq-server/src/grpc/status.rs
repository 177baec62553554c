//! The one mapping from queue errors to gRPC statuses.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::QueueError;

impl From<QueueError> for Status {
    fn from(error: QueueError) -> Self {
        // Exhaustive on purpose: a new error must get a deliberate code.
        match error {
            QueueError::InvalidArgument { field, reason } => {
                let message = format!("invalid {field}: {reason}");
                let details = ErrorDetails::with_bad_request_violation(field, reason);
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            QueueError::JobNotFound(id) => Status::not_found(format!("job {id} not found")),
            QueueError::ScheduleNotFound(name) => {
                Status::not_found(format!("schedule {name} not found"))
            }
            QueueError::FailedPrecondition(message) => Status::failed_precondition(message),
            stale @ QueueError::StaleLease { .. } => Status::failed_precondition(stale.to_string()),
            QueueError::ShuttingDown => Status::unavailable("server is shutting down"),
            QueueError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "database unavailable");
                Status::unavailable("database unavailable; retry shortly")
            }
            QueueError::Storage(detail) => {
                // The detail may hold SQL or paths: log it here, send nothing of it.
                tracing::error!(error = %detail, "storage error");
                Status::internal("internal storage error")
            }
        }
    }
}
