//! Small builders for requests, and conversions between protobuf time types
//! and plain milliseconds so tests can do arithmetic on server timestamps.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use jobq_proto::v1::{AttemptOutcome, Job, JobSpec, LeaseJobsRequest};

/// A job spec of `job_type` with an empty JSON object as payload and every
/// other field left to the server. Change fields with struct update syntax:
/// `JobSpec { priority: 5, ..spec("email") }`.
pub fn spec(job_type: &str) -> JobSpec {
    JobSpec {
        r#type: job_type.to_owned(),
        payload: Some(json(serde_json::json!({}))),
        ..JobSpec::default()
    }
}

/// A JSON value as the protobuf `Value` payloads and results travel as.
pub fn json(value: serde_json::Value) -> prost_types::Value {
    jobq_client::proto_value(value)
}

/// A payload or result as JSON (`null` when unset).
pub fn json_of(value: &Option<prost_types::Value>) -> serde_json::Value {
    value
        .as_ref()
        .map_or(serde_json::Value::Null, jobq_client::json_value)
}

/// A LeaseJobs request of `worker_id` for up to `max_jobs` jobs of the default
/// queue, answered at once (no wait), with a 30 s lease: long enough that no
/// lease runs out while a busy test machine gets round to reporting. Tests
/// about lease expiry set `lease_duration` themselves.
pub fn lease_request(worker_id: &str, max_jobs: i32) -> LeaseJobsRequest {
    LeaseJobsRequest {
        worker_id: worker_id.to_owned(),
        max_jobs,
        lease_duration: Some(duration(Duration::from_secs(30))),
        ..LeaseJobsRequest::default()
    }
}

/// A protobuf duration.
pub fn duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
    }
}

/// Milliseconds since the Unix epoch, now, by the test's clock (the same
/// machine's clock as the server's).
pub fn unix_millis_now() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// A timestamp `offset` from now, cut to whole milliseconds (the server keeps
/// milliseconds, so the value comes back unchanged).
pub fn timestamp_after(offset: Duration) -> prost_types::Timestamp {
    let offset_ms = i64::try_from(offset.as_millis()).unwrap_or(i64::MAX);
    timestamp_from_millis(unix_millis_now().saturating_add(offset_ms))
}

/// A timestamp at `ms` milliseconds since the Unix epoch (may be negative offsets from now).
pub fn timestamp_from_millis(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// A timestamp as milliseconds since the Unix epoch.
pub fn millis(timestamp: &prost_types::Timestamp) -> i64 {
    timestamp.seconds * 1000 + i64::from(timestamp.nanos) / 1_000_000
}

/// A timestamp field that the server must have set, as milliseconds; `what`
/// names it in the error.
pub fn millis_opt(timestamp: &Option<prost_types::Timestamp>, what: &str) -> anyhow::Result<i64> {
    timestamp
        .as_ref()
        .map(millis)
        .with_context(|| format!("{what} is not set"))
}

/// The outcomes of a job's attempts, oldest first (the job must come from GetJob).
pub fn attempt_outcomes(job: &Job) -> Vec<AttemptOutcome> {
    job.attempts
        .iter()
        .map(|attempt| attempt.outcome())
        .collect()
}
