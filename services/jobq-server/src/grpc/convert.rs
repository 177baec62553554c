//! Conversions between protobuf messages and domain types. Incoming messages
//! are validated here; every error names the offending field and echoes at
//! most a short excerpt of the input.

use std::collections::BTreeMap;
use std::time::Duration;

use jobq_proto::v1 as pb;
use prost::Message;
use prost_types::value::Kind;

use crate::domain::{
    AttemptOutcome, Defaults, HistoryEntry, Job, JobEvent, JobEventKind, JobId, JobOrder, JobSpec,
    JobState, Limits, MAX_ATTEMPTS, MAX_DELAY, MAX_JSON_DEPTH, MAX_KEY_LIMIT, MAX_NAME_BYTES,
    MAX_TAGS, MAX_TIME_MS, MAX_WAIT, Millis, PRIORITY_RANGE, PayloadFilter, PayloadMatch,
    QueueError, QueueResult, RetryPolicy, StopReason,
};
use crate::logs::{LogLine, LogStream};

/// Most dependencies of one job.
const MAX_DEPENDENCIES: usize = 100;
/// The earliest time accepted: the year 1.
const MIN_TIME_MS: Millis = -62_135_596_800_000;

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

/// A protobuf timestamp in milliseconds since the epoch, within the years 1..=9999.
pub fn millis_of(ts: &prost_types::Timestamp, field: &str) -> QueueResult<Millis> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(QueueError::invalid(
            field,
            "nanos must be within 0..999999999",
        ));
    }
    let ms = ts
        .seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(i64::from(ts.nanos / 1_000_000)))
        .filter(|ms| (MIN_TIME_MS..=MAX_TIME_MS).contains(ms));
    ms.ok_or_else(|| QueueError::invalid(field, "must lie within the years 1 to 9999"))
}

/// A std duration as a protobuf duration.
pub fn proto_duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: duration.as_secs().min(i64::MAX as u64) as i64,
        nanos: duration.subsec_nanos() as i32,
    }
}

/// A protobuf duration within `0..=max`.
pub fn duration_of(d: &prost_types::Duration, field: &str, max: Duration) -> QueueResult<Duration> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(QueueError::invalid(field, "must not be negative"));
    }
    if d.nanos >= 1_000_000_000 {
        return Err(QueueError::invalid(
            field,
            "nanos must be within 0..999999999",
        ));
    }
    let duration = Duration::new(d.seconds as u64, d.nanos as u32);
    if duration > max {
        return Err(QueueError::invalid(
            field,
            format!("must be at most {}", humantime::format_duration(max)),
        ));
    }
    Ok(duration)
}

/// A protobuf duration within `0 < d <= max`.
fn positive_duration_of(
    d: &prost_types::Duration,
    field: &str,
    max: Duration,
) -> QueueResult<Duration> {
    let duration = duration_of(d, field, max)?;
    if duration.is_zero() {
        return Err(QueueError::invalid(field, "must be greater than zero"));
    }
    Ok(duration)
}

/// Characters that would let a name look like something else in a terminal
/// or a page: right-to-left overrides and isolates, zero-width characters.
fn is_deceptive(c: char) -> bool {
    matches!(
        c,
        '\u{061C}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

/// A short name (type, queue, worker id, tag, key): non-empty, not blank,
/// bounded, without control or deceptive characters.
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
    if raw.trim().is_empty() {
        return Err(QueueError::invalid(field, "must not be blank"));
    }
    if raw.chars().any(char::is_control) {
        return Err(QueueError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    if raw.chars().any(is_deceptive) {
        return Err(QueueError::invalid(
            field,
            "must not contain zero-width or bidirectional-control characters",
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

/// A protobuf Value as JSON, refusing what JSON cannot hold and nesting past the limit.
fn json_of(
    value: &prost_types::Value,
    field: &str,
    depth: usize,
) -> QueueResult<serde_json::Value> {
    if depth > MAX_JSON_DEPTH {
        return Err(QueueError::invalid(
            field,
            format!("is nested deeper than {MAX_JSON_DEPTH} levels"),
        ));
    }
    Ok(match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::NumberValue(n)) => {
            if !n.is_finite() {
                return Err(QueueError::invalid(
                    field,
                    "holds a number JSON cannot represent (NaN or infinity)",
                ));
            }
            // Whole numbers are written without a fraction, as JSON producers do.
            if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
                serde_json::Value::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n)
                    .map_or(serde_json::Value::Null, serde_json::Value::Number)
            }
        }
        Some(Kind::ListValue(list)) => serde_json::Value::Array(
            list.values
                .iter()
                .map(|item| json_of(item, field, depth + 1))
                .collect::<QueueResult<_>>()?,
        ),
        Some(Kind::StructValue(object)) => serde_json::Value::Object(
            object
                .fields
                .iter()
                .map(|(key, item)| Ok((key.clone(), json_of(item, field, depth + 1)?)))
                .collect::<QueueResult<_>>()?,
        ),
    })
}

/// A JSON value as a protobuf Value.
pub fn value_of(json: serde_json::Value) -> prost_types::Value {
    let kind = match json {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(value_of).collect(),
        }),
        serde_json::Value::Object(fields) => Kind::StructValue(struct_of(fields)),
    };
    prost_types::Value { kind: Some(kind) }
}

fn struct_of(fields: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: fields
            .into_iter()
            .map(|(key, value)| (key, value_of(value)))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// Stored JSON text as a protobuf Value (unset if it does not parse).
pub fn stored_value(text: Option<&str>) -> Option<prost_types::Value> {
    let text = text?;
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .map(value_of)
}

/// A payload or result: canonical JSON text within the size limit, and its
/// size on the wire. `None` when unset.
pub fn json_value(
    value: Option<&prost_types::Value>,
    field: &str,
    limits: &Limits,
) -> QueueResult<Option<(String, i64)>> {
    let Some(value) = value else {
        return Ok(None);
    };
    let json = json_of(value, field, 0)?;
    let text = json.to_string();
    if text.len() > limits.max_payload_bytes {
        return Err(QueueError::invalid(
            field,
            format!(
                "is {} bytes of JSON, over the limit of {} bytes",
                text.len(),
                limits.max_payload_bytes
            ),
        ));
    }
    Ok(Some((text, value.encoded_len() as i64)))
}

/// Structured fields of a log line: a JSON object.
pub fn fields_of(
    fields: Option<&prost_types::Struct>,
    field: &str,
) -> QueueResult<Option<serde_json::Value>> {
    let Some(fields) = fields else {
        return Ok(None);
    };
    let value = prost_types::Value {
        kind: Some(Kind::StructValue(fields.clone())),
    };
    json_of(&value, field, 0).map(Some)
}

/// A required job id.
pub fn job_id(raw: &str, field: &str) -> QueueResult<JobId> {
    JobId::parse(raw, field)
}

/// Validates a job spec and fills in the server defaults. Field names are
/// relative to the spec; the caller puts them under `job` or `jobs[i]`.
pub fn job_spec(spec: pb::JobSpec, defaults: &Defaults, limits: &Limits) -> QueueResult<JobSpec> {
    let job_type = name(&spec.r#type, "type")?;
    let queue = queue_name(&spec.queue, "queue")?;
    let (payload, payload_bytes) = json_value(spec.payload.as_ref(), "payload", limits)?
        .unwrap_or_else(|| ("{}".to_owned(), 2));
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
    let (run_at, delay) = match (&spec.run_at, &spec.delay) {
        (Some(_), Some(_)) => {
            return Err(QueueError::invalid(
                "delay",
                "cannot be set together with run_at",
            ));
        }
        (Some(run_at), None) => (Some(millis_of(run_at, "run_at")?), None),
        (None, Some(delay)) => (None, Some(duration_of(delay, "delay", MAX_DELAY)?)),
        (None, None) => (None, None),
    };
    let max_attempts = match spec.max_attempts {
        0 => defaults.max_attempts,
        n @ 1..=MAX_ATTEMPTS => n,
        n => {
            return Err(QueueError::invalid(
                "max_attempts",
                format!("{n} is outside 1..={MAX_ATTEMPTS} (0 for the default)"),
            ));
        }
    };
    let timeout = match &spec.timeout {
        Some(timeout) => positive_duration_of(timeout, "timeout", MAX_WAIT)?,
        None => defaults.timeout,
    };
    let retry_policy = retry_policy(spec.retry_policy.as_ref(), defaults)?;
    let unique_key = match spec.unique_key.as_str() {
        "" => None,
        key => Some(name(key, "unique_key")?),
    };
    let (concurrency_key, concurrency_limit) = concurrency_key(&spec)?;
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
        payload_bytes,
        priority: spec.priority,
        run_at,
        delay,
        max_attempts,
        timeout,
        retry_policy,
        unique_key,
        concurrency_key,
        concurrency_limit,
        tags,
        parent_id,
        traceparent,
        depends_on,
        schedule_name: None,
    })
}

/// A spec's concurrency key and its limit (1 when a key comes without one).
fn concurrency_key(spec: &pb::JobSpec) -> QueueResult<(Option<String>, i32)> {
    let limit = spec.concurrency_limit;
    if !(0..=MAX_KEY_LIMIT).contains(&limit) {
        return Err(QueueError::invalid(
            "concurrency_limit",
            format!("{limit} is outside 0..={MAX_KEY_LIMIT}"),
        ));
    }
    match spec.concurrency_key.as_str() {
        "" if limit > 0 => Err(QueueError::invalid(
            "concurrency_limit",
            "is set without a concurrency_key",
        )),
        "" => Ok((None, 0)),
        key => Ok((Some(name(key, "concurrency_key")?), limit.max(1))),
    }
}

fn retry_policy(policy: Option<&pb::RetryPolicy>, defaults: &Defaults) -> QueueResult<RetryPolicy> {
    let mut effective = defaults.retry_policy;
    if let Some(policy) = policy {
        if let Some(base) = &policy.base_backoff {
            effective.base_backoff =
                positive_duration_of(base, "retry_policy.base_backoff", MAX_WAIT)?;
        }
        if let Some(max) = &policy.max_backoff {
            effective.max_backoff =
                positive_duration_of(max, "retry_policy.max_backoff", MAX_WAIT)?;
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

/// The view a request asks for; `default` when unset.
pub fn job_view(raw: i32, field: &str, default: pb::JobView) -> QueueResult<pb::JobView> {
    match pb::JobView::try_from(raw) {
        Ok(pb::JobView::Unspecified) => Ok(default),
        Ok(view) => Ok(view),
        Err(_) => Err(QueueError::invalid(
            field,
            format!("{raw} is not a known job view"),
        )),
    }
}

/// Most payload filters one listing takes.
pub const MAX_PAYLOAD_FILTERS: usize = 8;
/// Most segments of a payload filter's field path.
pub const MAX_PAYLOAD_PATH_SEGMENTS: usize = 8;
/// Longest value of a payload filter, in bytes.
pub const MAX_PAYLOAD_FILTER_VALUE_BYTES: usize = 256;

/// The payload filters of a listing, checked; errors name
/// `{field}[i].field`, `.match` or `.value`.
pub fn payload_filters(raw: &[pb::PayloadFilter], field: &str) -> QueueResult<Vec<PayloadFilter>> {
    if raw.len() > MAX_PAYLOAD_FILTERS {
        return Err(QueueError::invalid(
            field,
            format!("has {} filters, more than {MAX_PAYLOAD_FILTERS}", raw.len()),
        ));
    }
    raw.iter()
        .enumerate()
        .map(|(index, filter)| payload_filter(filter, &format!("{field}[{index}]")))
        .collect()
}

fn payload_filter(raw: &pb::PayloadFilter, field: &str) -> QueueResult<PayloadFilter> {
    let path_field = format!("{field}.field");
    if raw.field.is_empty() {
        return Err(QueueError::invalid(path_field, "is required"));
    }
    let path: Vec<String> = raw.field.split('.').map(str::to_owned).collect();
    if path.len() > MAX_PAYLOAD_PATH_SEGMENTS {
        return Err(QueueError::invalid(
            path_field,
            format!("has more than {MAX_PAYLOAD_PATH_SEGMENTS} segments"),
        ));
    }
    // Plain keys only: the path is written into engine-specific JSON paths.
    let plain = |segment: &String| {
        !segment.is_empty()
            && segment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    if !path.iter().all(plain) {
        return Err(QueueError::invalid(
            path_field,
            "must be dot-separated keys of letters, digits, '_' and '-' (e.g. meta.title)",
        ));
    }
    let matching = match pb::PayloadMatch::try_from(raw.r#match) {
        Ok(pb::PayloadMatch::Equals) => PayloadMatch::Equals,
        Ok(pb::PayloadMatch::Contains) => PayloadMatch::Contains,
        Ok(pb::PayloadMatch::Unspecified) | Err(_) => {
            return Err(QueueError::invalid(
                format!("{field}.match"),
                "must be PAYLOAD_MATCH_EQUALS or PAYLOAD_MATCH_CONTAINS",
            ));
        }
    };
    if raw.value.len() > MAX_PAYLOAD_FILTER_VALUE_BYTES {
        return Err(QueueError::invalid(
            format!("{field}.value"),
            format!("is longer than {MAX_PAYLOAD_FILTER_VALUE_BYTES} bytes"),
        ));
    }
    Ok(PayloadFilter {
        path,
        matching,
        value: raw.value.clone(),
    })
}

/// The order of a listing.
pub fn job_order(raw: i32, field: &str) -> QueueResult<JobOrder> {
    match pb::JobOrder::try_from(raw) {
        Ok(pb::JobOrder::Unspecified) => Ok(JobOrder::Newest),
        Ok(pb::JobOrder::FinishedDesc) => Ok(JobOrder::FinishedDesc),
        Err(_) => Err(QueueError::invalid(
            field,
            format!("{raw} is not a known job order"),
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

fn proto_attempt(entry: &HistoryEntry) -> pb::Attempt {
    pb::Attempt {
        seq: entry.seq,
        number: entry.number,
        worker_id: entry.worker_id.clone(),
        started_at: Some(timestamp(entry.started_at)),
        finished_at: opt_timestamp(entry.finished_at),
        outcome: proto_outcome(entry.outcome).into(),
        error: entry.error.clone().unwrap_or_default(),
        cancel_requested: entry.cancel_requested,
    }
}

/// A domain job as protobuf, in `view` (attempts are there when the job's
/// history was read; payload and result only in the FULL view).
pub fn proto_job(job: Job, view: pb::JobView) -> pb::Job {
    let full = view == pb::JobView::Full;
    pb::Job {
        id: job.id.to_string(),
        r#type: job.job_type,
        queue: job.queue,
        payload: if full {
            stored_value(job.payload.as_deref())
        } else {
            None
        },
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
        summary: job.summary,
        parent_id: job.parent_id.map(|id| id.to_string()).unwrap_or_default(),
        traceparent: job.traceparent.unwrap_or_default(),
        state: proto_state(job.state).into(),
        attempt: job.attempt,
        progress_percent: job.progress_percent,
        progress_message: job.progress_message,
        result: if full {
            stored_value(job.result.as_deref())
        } else {
            None
        },
        last_error: job.last_error.unwrap_or_default(),
        attempts: job
            .history
            .iter()
            .filter(|entry| entry.is_attempt())
            .map(proto_attempt)
            .collect(),
        created_at: Some(timestamp(job.created_at)),
        started_at: opt_timestamp(job.started_at),
        finished_at: opt_timestamp(job.finished_at),
        updated_at: Some(timestamp(job.updated_at)),
        cancel_requested: job.cancel_requested,
        worker_id: job.worker_id.unwrap_or_default(),
        lease_expires_at: opt_timestamp(job.lease_expires_at),
        depends_on: job.depends_on.iter().map(ToString::to_string).collect(),
        schedule_name: job.schedule_name.unwrap_or_default(),
        concurrency_key: job.concurrency_key.unwrap_or_default(),
        concurrency_limit: job.concurrency_limit,
        concurrency_key_running: 0,
    }
}

/// A domain job spec (a schedule's template) as protobuf.
pub fn proto_spec(spec: JobSpec) -> pb::JobSpec {
    pb::JobSpec {
        r#type: spec.job_type,
        queue: spec.queue,
        payload: stored_value(Some(&spec.payload)),
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
        concurrency_key: spec.concurrency_key.unwrap_or_default(),
        concurrency_limit: spec.concurrency_limit,
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

/// A log line as protobuf.
pub fn proto_log_line(line: LogLine) -> pb::LogLine {
    pb::LogLine {
        position: line.position,
        attempt: line.attempt,
        stream: proto_stream(line.stream).into(),
        time: Some(timestamp(line.time)),
        message: line.message,
        fields: match line.fields {
            Some(serde_json::Value::Object(fields)) => Some(struct_of(fields)),
            _ => None,
        },
    }
}

/// A job event as protobuf, its job in `view`.
pub fn proto_event(event: JobEvent, view: pb::JobView) -> pb::JobEvent {
    let (kind, previous, error) = match event.kind {
        JobEventKind::Created => (pb::JobEventType::Created, None, String::new()),
        JobEventKind::StateChanged { from } => {
            (pb::JobEventType::StateChanged, Some(from), String::new())
        }
        JobEventKind::Progress => (pb::JobEventType::Progress, None, String::new()),
        JobEventKind::AttemptFailed { from, error } => {
            let mut error = error;
            if error.len() > 4096 {
                let mut end = 4096;
                while !error.is_char_boundary(end) {
                    end -= 1;
                }
                error.truncate(end);
            }
            (pb::JobEventType::AttemptFailed, Some(from), error)
        }
        JobEventKind::Deleted => (pb::JobEventType::Deleted, None, String::new()),
    };
    let mut job = proto_job(event.job, view);
    job.attempts.clear();
    job.depends_on.clear();
    pb::JobEvent {
        r#type: kind.into(),
        previous_state: previous
            .map_or(pb::JobState::Unspecified, proto_state)
            .into(),
        time: Some(timestamp(event.at)),
        error,
        job: Some(job),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(json: serde_json::Value) -> prost_types::Value {
        value_of(json)
    }

    #[test]
    fn timestamps_round_trip_and_years_past_9999_are_refused() {
        for ms in [0, 1, 999, 1_700_000_000_123, -1, -1_500, MAX_TIME_MS] {
            assert_eq!(millis_of(&timestamp(ms), "t").expect("valid"), ms);
        }
        let year_10000 = prost_types::Timestamp {
            seconds: 253_402_300_800,
            nanos: 0,
        };
        assert!(millis_of(&year_10000, "run_at").is_err());
    }

    #[test]
    fn payload_json_is_canonical_and_bounded() {
        let limits = Limits::default();
        let (text, _) = json_value(
            Some(&value(
                serde_json::json!({"b": 1, "a": [true, null, 2.5, "x"]}),
            )),
            "payload",
            &limits,
        )
        .expect("valid")
        .expect("set");
        assert_eq!(text, r#"{"a":[true,null,2.5,"x"],"b":1}"#);
        let mut deep = serde_json::json!(1);
        for _ in 0..=MAX_JSON_DEPTH {
            deep = serde_json::json!([deep]);
        }
        let error = json_value(Some(&value(deep)), "payload", &limits).expect_err("too deep");
        assert!(
            matches!(error, QueueError::InvalidArgument { ref field, .. } if field == "payload")
        );
        let nan = prost_types::Value {
            kind: Some(Kind::NumberValue(f64::NAN)),
        };
        assert!(json_value(Some(&nan), "payload", &limits).is_err());
    }

    #[test]
    fn names_refuse_blank_and_deceptive_characters() {
        assert!(name("download", "type").is_ok());
        assert!(name("   ", "type").is_err());
        assert!(name("evil\u{202E}txt.exe", "type").is_err());
        assert!(name("zero\u{200B}width", "type").is_err());
        assert!(name("tab\there", "type").is_err());
    }

    #[test]
    fn spec_errors_name_their_field() {
        let limits = Limits {
            max_payload_bytes: 8,
            ..Limits::default()
        };
        let defaults = Defaults::default();
        let check = |spec: pb::JobSpec, field: &str| {
            let error = job_spec(spec, &defaults, &limits).expect_err("invalid spec");
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
                payload: Some(value(serde_json::json!([1, 2, 3, 4, 5, 6]))),
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
        check(
            pb::JobSpec {
                timeout: Some(prost_types::Duration {
                    seconds: 1 << 62,
                    nanos: 0,
                }),
                ..ok()
            },
            "timeout",
        );
        check(
            pb::JobSpec {
                delay: Some(prost_types::Duration {
                    seconds: 100_000_000_000,
                    nanos: 0,
                }),
                ..ok()
            },
            "delay",
        );
        let spec = job_spec(ok(), &defaults, &limits).expect("valid spec");
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
