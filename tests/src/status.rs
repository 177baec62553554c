//! Checking gRPC errors: code and the field the message must name.

use std::fmt::Debug;

use anyhow::bail;
use jobq_proto::v1::JobState;
use tonic::{Code, Status};

/// Checks that `result` is an error with `code` whose message contains
/// `mentions` (pass `""` to skip the message check); returns the status for
/// further checks. An `Ok` or any other error is a test failure, described.
pub fn expect_status<T: Debug>(
    result: Result<T, Status>,
    code: Code,
    mentions: &str,
) -> anyhow::Result<Status> {
    match result {
        Ok(value) => {
            bail!("expected {code:?} mentioning {mentions:?}, but the call succeeded: {value:?}")
        }
        Err(status) if status.code() != code => bail!(
            "expected {code:?} mentioning {mentions:?}, got {:?}: {:?}",
            status.code(),
            status.message()
        ),
        Err(status) if !status.message().contains(mentions) => bail!(
            "expected the {code:?} message to mention {mentions:?}, got: {:?}",
            status.message()
        ),
        Err(status) => Ok(status),
    }
}

/// The name of a job state's wire value, for messages (`JOB_STATE_QUEUED`, or the raw number).
pub fn state_name(state: i32) -> String {
    JobState::try_from(state)
        .map(|state| state.as_str_name().to_owned())
        .unwrap_or_else(|_| format!("unknown state {state}"))
}
