//! Conversions between protobuf messages and domain types. Incoming messages
//! are validated here; every error names the offending field.

use std::time::Duration;

use jobq_proto::v1 as pb;

use crate::domain::{
    Attempt, AttemptOutcome, Defaults, Job, JobEvent, JobEventKind, JobId, JobSpec, JobState,
    Limits, MAX_NAME_BYTES, MAX_TAGS, Millis, PRIORITY_RANGE, QueueError, QueueResult, RetryPolicy,
    StopReason,
};
use crate::logs::{LogLine, LogStream};

/// Most dependencies of one job.
const MAX_DEPENDENCIES: usize = 100;

/// The queue jobs go to when the spec names none.
pub const DEFAULT_QUEUE: &str = "default";

/// Milliseconds since the epoch as a protobuf timestamp.
pub fn timestamp(ms: Millis) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// An optional time as an optional protobuf timestamp.
pub fn opt_timestamp(ms: Option<Millis>) -> Option<prost_types::Timestamp> {
    ms.map(timestamp)
}

/// A protobuf timestamp in milliseconds since the epoch.
pub fn millis_of(ts: &prost_types::Timestamp, field: &str) -> QueueResult<Millis> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(QueueError::invalid(
            field,
            "nanos must be within 0..999999999",
        ));
    }
    ts.seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(i64::from(ts.nanos / 1_000_000)))
        .ok_or_else(|| QueueError::invalid(field, "is out of range"))
}

/// A std duration as a protobuf duration.
pub fn proto_duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: duration.as_secs().min(i64::MAX as u64) as i64,
        nanos: duration.subsec_nanos() as i32,
    }
}

/// A protobuf duration that must not be negative.
pub fn duration_of(d: &prost_types::Duration, field: &str) -> QueueResult<Duration> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(QueueError::invalid(field, "must not be negative"));
    }
    if d.nanos >= 1_000_000_000 {
        return Err(QueueError::invalid(
            field,
            "nanos must be within 0..999999999",
        ));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// A protobuf duration that must be greater than zero.
fn positive_duration_of(d: &prost_types::Duration, field: &str) -> QueueResult<Duration> {
    let duration = duration_of(d, field)?;
    if duration.is_zero() {
        return Err(QueueError::invalid(field, "must be greater than zero"));
    }
    Ok(duration)
}

/// A short name (type, queue, worker id, tag, key): non-empty, bounded, printable.
pub fn name(raw: &str, field: &str) -> QueueResult<String> {
    if raw.is_empty() {
        return Err(QueueError::invalid(field, "is required"));
    }
    if raw.len() > MAX_NAME_BYTES {
        return Err(QueueError::invalid(
            field,
            format!("is longer than {MAX_NAME_BYTES} bytes"),
        ));
    }
    if raw.chars().any(char::is_control) {
        return Err(QueueError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(raw.to_owned())
}

/// A queue name: letters, digits and `_.:-`; empty means the default queue.
pub fn queue_name(raw: &str, field: &str) -> QueueResult<String> {
    if raw.is_empty() {
        return Ok(DEFAULT_QUEUE.to_owned());
    }
    let queue = name(raw, field)?;
    if !queue
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c))
    {
        return Err(QueueError::invalid(
            field,
            "may only contain letters, digits and _ . : -",
        ));
    }
    Ok(queue)
}

/// Text bounded in size.
pub fn bounded_text(raw: &str, field: &str, max_bytes: usize) -> QueueResult<String> {
    if raw.len() > max_bytes {
        return Err(QueueError::invalid(
            field,
            format!("is longer than {max_bytes} bytes"),
        ));
    }
    Ok(raw.to_owned())
}

/// A JSON document within the size limit; `empty_as` stands in for an empty string.
pub fn json_text(
    raw: &str,
    field: &str,
    limits: &Limits,
    empty_as: Option<&str>,
) -> QueueResult<Option<String>> {
    if raw.is_empty() {
        return Ok(empty_as.map(str::to_owned));
    }
    if raw.len() > limits.max_payload_bytes {
        return Err(QueueError::invalid(
            field,
            format!(
                "is {} bytes, over the limit of {} bytes",
                raw.len(),
                limits.max_payload_bytes
            ),
        ));
    }
    serde_json::from_str::<serde::de::IgnoredAny>(raw)
        .map_err(|error| QueueError::invalid(field, format!("is not valid JSON: {error}")))?;
    Ok(Some(raw.to_owned()))
}

/// A required job id.
pub fn job_id(raw: &str, field: &str) -> QueueResult<JobId> {
    JobId::parse(raw, field)
}

/// Validates a job spec and fills in the server defaults. Field names are
/// relative to the spec; the caller puts them under `job` or `jobs[i]`.
pub fn job_spec(
    spec: pb::JobSpec,
    defaults: &Defaults,
    limits: &Limits,
    now: Millis,
) -> QueueResult<JobSpec> {
    let job_type = name(&spec.r#type, "type")?;
    let queue = queue_name(&spec.queue, "queue")?;
    let payload =
        json_text(&spec.payload, "payload", limits, Some("{}"))?.unwrap_or_else(|| "{}".to_owned());
    if !PRIORITY_RANGE.contains(&spec.priority) {
        return Err(QueueError::invalid(
            "priority",
            format!(
                "{} is outside {}..={}",
                spec.priority,
                PRIORITY_RANGE.start(),
                PRIORITY_RANGE.end()
            ),
        ));
    }
    let run_at = match (&spec.run_at, &spec.delay) {
        (Some(_), Some(_)) => {
            return Err(QueueError::invalid(
                "delay",
                "cannot be set together with run_at",
            ));
        }
        (Some(run_at), None) => Some(millis_of(run_at, "run_at")?),
        (None, Some(delay)) => {
            let delay = duration_of(delay, "delay")?;
            Some(now.saturating_add(delay.as_millis().min(i64::MAX as u128) as Millis))
        }
        (None, None) => None,
    };
    let max_attempts = match spec.max_attempts {
        n if n < 0 => {
            return Err(QueueError::invalid(
                "max_attempts",
                format!("{n} is negative"),
            ));
        }
        0 => defaults.max_attempts,
        n => n,
    };
    let timeout = match &spec.timeout {
        Some(timeout) => positive_duration_of(timeout, "timeout")?,
        None => defaults.timeout,
    };
    let retry_policy = retry_policy(spec.retry_policy.as_ref(), defaults)?;
    let unique_key = match spec.unique_key.as_str() {
        "" => None,
        key => Some(name(key, "unique_key")?),
    };
    if spec.tags.len() > MAX_TAGS {
        return Err(QueueError::invalid(
            "tags",
            format!("has {} tags, more than {MAX_TAGS}", spec.tags.len()),
        ));
    }
    let tags = spec
        .tags
        .iter()
        .enumerate()
        .map(|(index, tag)| name(tag, &format!("tags[{index}]")))
        .collect::<QueueResult<Vec<_>>>()?;
    let parent_id = match spec.parent_id.as_str() {
        "" => None,
        raw => Some(job_id(raw, "parent_id")?),
    };
    let traceparent = match spec.traceparent.as_str() {
        "" => None,
        raw => Some(bounded_text(raw, "traceparent", 512)?),
    };
    if spec.depends_on.len() > MAX_DEPENDENCIES {
        return Err(QueueError::invalid(
            "depends_on",
            format!(
                "has {} ids, more than {MAX_DEPENDENCIES}",
                spec.depends_on.len()
            ),
        ));
    }
    let depends_on = spec
        .depends_on
        .iter()
        .enumerate()
        .map(|(index, raw)| job_id(raw, &format!("depends_on[{index}]")))
        .collect::<QueueResult<Vec<_>>>()?;
    Ok(JobSpec {
        job_type,
        queue,
        payload,
        priority: spec.priority,
        run_at,
        max_attempts,
        timeout,
        retry_policy,
        unique_key,
        tags,
        parent_id,
        traceparent,
        depends_on,
        schedule_name: None,
    })
}

fn retry_policy(policy: Option<&pb::RetryPolicy>, defaults: &Defaults) -> QueueResult<RetryPolicy> {
    let mut effective = defaults.retry_policy;
    if let Some(policy) = policy {
        if let Some(base) = &policy.base_backoff {
            effective.base_backoff = positive_duration_of(base, "retry_policy.base_backoff")?;
        }
        if let Some(max) = &policy.max_backoff {
            effective.max_backoff = positive_duration_of(max, "retry_policy.max_backoff")?;
        }
    }
    if effective.max_backoff < effective.base_backoff {
        return Err(QueueError::invalid(
            "retry_policy.max_backoff",
            "must be at least base_backoff",
        ));
    }
    Ok(effective)
}

/// A state filter value.
pub fn job_state(raw: i32, field: &str) -> QueueResult<JobState> {
    match pb::JobState::try_from(raw) {
        Ok(pb::JobState::Scheduled) => Ok(JobState::Scheduled),
        Ok(pb::JobState::Blocked) => Ok(JobState::Blocked),
        Ok(pb::JobState::Queued) => Ok(JobState::Queued),
        Ok(pb::JobState::Running) => Ok(JobState::Running),
        Ok(pb::JobState::Retrying) => Ok(JobState::Retrying),
        Ok(pb::JobState::Succeeded) => Ok(JobState::Succeeded),
        Ok(pb::JobState::Cancelled) => Ok(JobState::Cancelled),
        Ok(pb::JobState::Dead) => Ok(JobState::Dead),
        Ok(pb::JobState::Unspecified) => Err(QueueError::invalid(
            field,
            "JOB_STATE_UNSPECIFIED is not a state",
        )),
        Err(_) => Err(QueueError::invalid(
            field,
            format!("{raw} is not a known job state"),
        )),
    }
}

/// A domain state as protobuf.
pub fn proto_state(state: JobState) -> pb::JobState {
    match state {
        JobState::Scheduled => pb::JobState::Scheduled,
        JobState::Blocked => pb::JobState::Blocked,
        JobState::Queued => pb::JobState::Queued,
        JobState::Running => pb::JobState::Running,
        JobState::Retrying => pb::JobState::Retrying,
        JobState::Succeeded => pb::JobState::Succeeded,
        JobState::Cancelled => pb::JobState::Cancelled,
        JobState::Dead => pb::JobState::Dead,
    }
}

fn proto_outcome(outcome: Option<AttemptOutcome>) -> pb::AttemptOutcome {
    match outcome {
        None => pb::AttemptOutcome::Unspecified,
        Some(AttemptOutcome::Succeeded) => pb::AttemptOutcome::Succeeded,
        Some(AttemptOutcome::Failed) => pb::AttemptOutcome::Failed,
        Some(AttemptOutcome::LeaseExpired) => pb::AttemptOutcome::LeaseExpired,
        Some(AttemptOutcome::TimedOut) => pb::AttemptOutcome::TimedOut,
        Some(AttemptOutcome::Cancelled) => pb::AttemptOutcome::Cancelled,
        Some(AttemptOutcome::Released) => pb::AttemptOutcome::Released,
    }
}

/// A stop reason as protobuf.
pub fn proto_stop_reason(reason: StopReason) -> pb::StopReason {
    match reason {
        StopReason::Cancelled => pb::StopReason::Cancelled,
        StopReason::TimedOut => pb::StopReason::TimedOut,
        StopReason::LeaseLost => pb::StopReason::LeaseLost,
    }
}

fn proto_attempt(attempt: Attempt) -> pb::Attempt {
    pb::Attempt {
        number: attempt.number,
        worker_id: attempt.worker_id,
        started_at: Some(timestamp(attempt.started_at)),
        finished_at: opt_timestamp(attempt.finished_at),
        outcome: proto_outcome(attempt.outcome).into(),
        error: attempt.error.unwrap_or_default(),
    }
}

/// A domain job as protobuf.
pub fn proto_job(job: Job) -> pb::Job {
    pb::Job {
        id: job.id.to_string(),
        r#type: job.job_type,
        queue: job.queue,
        payload: job.payload,
        priority: job.priority,
        run_at: Some(timestamp(job.run_at)),
        max_attempts: job.max_attempts,
        timeout: Some(proto_duration(job.timeout)),
        retry_policy: Some(pb::RetryPolicy {
            base_backoff: Some(proto_duration(job.retry_policy.base_backoff)),
            max_backoff: Some(proto_duration(job.retry_policy.max_backoff)),
        }),
        unique_key: job.unique_key.unwrap_or_default(),
        tags: job.tags,
        parent_id: job.parent_id.map(|id| id.to_string()).unwrap_or_default(),
        traceparent: job.traceparent.unwrap_or_default(),
        state: proto_state(job.state).into(),
        attempt: job.attempt,
        progress_percent: job.progress_percent,
        progress_message: job.progress_message,
        result: job.result.unwrap_or_default(),
        last_error: job.last_error.unwrap_or_default(),
        attempts: job.attempts.into_iter().map(proto_attempt).collect(),
        created_at: Some(timestamp(job.created_at)),
        started_at: opt_timestamp(job.started_at),
        finished_at: opt_timestamp(job.finished_at),
        updated_at: Some(timestamp(job.updated_at)),
        cancel_requested: job.cancel_requested,
        worker_id: job.worker_id.unwrap_or_default(),
        lease_expires_at: opt_timestamp(job.lease_expires_at),
        depends_on: job.depends_on.iter().map(ToString::to_string).collect(),
        schedule_name: job.schedule_name.unwrap_or_default(),
    }
}

/// A domain job spec (a schedule's template) as protobuf.
pub fn proto_spec(spec: JobSpec) -> pb::JobSpec {
    pb::JobSpec {
        r#type: spec.job_type,
        queue: spec.queue,
        payload: spec.payload,
        priority: spec.priority,
        run_at: opt_timestamp(spec.run_at),
        delay: None,
        max_attempts: spec.max_attempts,
        timeout: Some(proto_duration(spec.timeout)),
        retry_policy: Some(pb::RetryPolicy {
            base_backoff: Some(proto_duration(spec.retry_policy.base_backoff)),
            max_backoff: Some(proto_duration(spec.retry_policy.max_backoff)),
        }),
        unique_key: spec.unique_key.unwrap_or_default(),
        tags: spec.tags,
        parent_id: spec.parent_id.map(|id| id.to_string()).unwrap_or_default(),
        traceparent: spec.traceparent.unwrap_or_default(),
        depends_on: spec.depends_on.iter().map(ToString::to_string).collect(),
    }
}

/// A log stream filter value.
pub fn log_stream(raw: i32, field: &str) -> QueueResult<LogStream> {
    match pb::LogStream::try_from(raw) {
        Ok(pb::LogStream::Stdout) => Ok(LogStream::Stdout),
        Ok(pb::LogStream::Stderr) => Ok(LogStream::Stderr),
        Ok(pb::LogStream::Progress) => Ok(LogStream::Progress),
        Ok(pb::LogStream::System) => Ok(LogStream::System),
        Ok(pb::LogStream::Unspecified) => Err(QueueError::invalid(
            field,
            "LOG_STREAM_UNSPECIFIED is not a stream",
        )),
        Err(_) => Err(QueueError::invalid(
            field,
            format!("{raw} is not a known log stream"),
        )),
    }
}

/// A list of stream filters.
pub fn log_streams(raw: &[i32], field: &str) -> QueueResult<Vec<LogStream>> {
    raw.iter().map(|value| log_stream(*value, field)).collect()
}

fn proto_stream(stream: LogStream) -> pb::LogStream {
    match stream {
        LogStream::Stdout => pb::LogStream::Stdout,
        LogStream::Stderr => pb::LogStream::Stderr,
        LogStream::Progress => pb::LogStream::Progress,
        LogStream::System => pb::LogStream::System,
    }
}

/// A stored log line as protobuf.
pub fn proto_log_line(line: LogLine) -> pb::LogLine {
    pb::LogLine {
        position: line.position,
        attempt: line.attempt,
        stream: proto_stream(line.stream).into(),
        time: Some(timestamp(line.time)),
        message: line.message,
        fields: line
            .fields
            .map(|fields| fields.to_string())
            .unwrap_or_default(),
    }
}

/// A job event as protobuf.
pub fn proto_event(event: JobEvent, now: Millis) -> pb::JobEvent {
    let (kind, previous, error) = match event.kind {
        JobEventKind::Created => (pb::JobEventType::Created, None, String::new()),
        JobEventKind::StateChanged { from } => {
            (pb::JobEventType::StateChanged, Some(from), String::new())
        }
        JobEventKind::Progress => (pb::JobEventType::Progress, None, String::new()),
        JobEventKind::AttemptFailed { from, error } => {
            (pb::JobEventType::AttemptFailed, Some(from), error)
        }
        JobEventKind::Deleted => (pb::JobEventType::Deleted, None, String::new()),
    };
    pb::JobEvent {
        r#type: kind.into(),
        previous_state: previous
            .map_or(pb::JobState::Unspecified, proto_state)
            .into(),
        time: Some(timestamp(now)),
        error,
        job: Some(proto_job(event.job)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_before_and_after_the_epoch() {
        for ms in [0, 1, 999, 1_700_000_000_123, -1, -1_500] {
            assert_eq!(millis_of(&timestamp(ms), "t").expect("valid"), ms);
        }
    }

    #[test]
    fn spec_errors_name_their_field() {
        let limits = Limits {
            max_payload_bytes: 8,
            ..Limits::default()
        };
        let defaults = Defaults::default();
        let check = |spec: pb::JobSpec, field: &str| {
            let error = job_spec(spec, &defaults, &limits, 0).expect_err("invalid spec");
            assert!(
                matches!(&error, QueueError::InvalidArgument { field: f, .. } if f == field),
                "{error:?}"
            );
        };
        let ok = || pb::JobSpec {
            r#type: "t".into(),
            ..Default::default()
        };
        check(
            pb::JobSpec {
                r#type: String::new(),
                ..ok()
            },
            "type",
        );
        check(
            pb::JobSpec {
                payload: "{".into(),
                ..ok()
            },
            "payload",
        );
        check(
            pb::JobSpec {
                payload: "[1,2,3,4,5,6]".into(),
                ..ok()
            },
            "payload",
        );
        check(
            pb::JobSpec {
                max_attempts: -1,
                ..ok()
            },
            "max_attempts",
        );
        check(
            pb::JobSpec {
                queue: "a b".into(),
                ..ok()
            },
            "queue",
        );
        check(
            pb::JobSpec {
                priority: 5000,
                ..ok()
            },
            "priority",
        );
        check(
            pb::JobSpec {
                parent_id: "nope".into(),
                ..ok()
            },
            "parent_id",
        );
        let spec = job_spec(ok(), &defaults, &limits, 0).expect("valid spec");
        assert_eq!(
            (
                spec.queue.as_str(),
                spec.payload.as_str(),
                spec.max_attempts
            ),
            ("default", "{}", 25)
        );
    }
}
