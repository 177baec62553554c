//! The error of every client call.

use std::time::Duration;

use tonic::Code;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The configuration is unusable (e.g. an endpoint that is not a URI).
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// The server (or the transport) answered with an error status.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// No answer within the client's request timeout.
    #[error("no answer from the server within {0:?}")]
    Timeout(Duration),
    /// The server's answer lacks a field the API promises.
    #[error("the server's answer has no {0}")]
    MissingField(&'static str),
    /// A payload could not be encoded as JSON.
    #[error("payload is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl ClientError {
    /// The gRPC code of the failure: the server's, `DEADLINE_EXCEEDED` for a
    /// client-side timeout, `None` for local problems.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status(status) => Some(status.code()),
            ClientError::Timeout(_) => Some(Code::DeadlineExceeded),
            ClientError::Config(_) | ClientError::MissingField(_) | ClientError::Json(_) => None,
        }
    }

    /// The job (or schedule) named in the call does not exist.
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(Code::NotFound)
    }

    /// The server could not be reached or did not answer in time: worth
    /// retrying later.
    pub fn is_unavailable(&self) -> bool {
        self.code().is_some_and(is_transient)
    }
}

/// gRPC codes that say "try again later": the server was unreachable, busy,
/// shutting down, slow, or two writes collided. For a write the outcome is
/// unknown: retry it only if it is idempotent (an enqueue with its request_id,
/// a report with its lease token).
pub fn is_transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Cancelled
            | Code::Aborted
    )
}
