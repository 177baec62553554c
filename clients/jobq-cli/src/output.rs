//! How the CLI shows things: JSON for scripts (snake_case field names, states
//! in lower case, times in RFC 3339, payload and result as JSON), and aligned
//! tables or key/value blocks for people.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jobq_client::{json_value, pb};
use serde_json::{Value, json};

/// `JOB_STATE_QUEUED` → `queued`.
pub fn state_name(state: i32) -> String {
    pb::JobState::try_from(state)
        .map(|state| short_enum(state.as_str_name(), "JOB_STATE_"))
        .unwrap_or_else(|_| format!("unknown({state})"))
}

/// `LOG_STREAM_STDOUT` → `stdout`.
pub fn stream_name(stream: i32) -> String {
    pb::LogStream::try_from(stream)
        .map(|stream| short_enum(stream.as_str_name(), "LOG_STREAM_"))
        .unwrap_or_else(|_| format!("unknown({stream})"))
}

/// `JOB_EVENT_TYPE_STATE_CHANGED` → `state_changed`.
pub fn event_name(event: i32) -> String {
    pb::JobEventType::try_from(event)
        .map(|event| short_enum(event.as_str_name(), "JOB_EVENT_TYPE_"))
        .unwrap_or_else(|_| format!("unknown({event})"))
}

/// `WORKER_STATUS_ACTIVE` → `active`.
pub fn worker_status_name(status: i32) -> String {
    pb::WorkerStatus::try_from(status)
        .map(|status| short_enum(status.as_str_name(), "WORKER_STATUS_"))
        .unwrap_or_else(|_| format!("unknown({status})"))
}

/// `ATTEMPT_OUTCOME_TIMED_OUT` → `timed_out`.
fn outcome_name(outcome: i32) -> String {
    pb::AttemptOutcome::try_from(outcome)
        .map(|outcome| short_enum(outcome.as_str_name(), "ATTEMPT_OUTCOME_"))
        .unwrap_or_else(|_| format!("unknown({outcome})"))
}

fn short_enum(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

/// Parses `queued`, `QUEUED` or `JOB_STATE_QUEUED`.
pub fn parse_state(text: &str) -> Result<pb::JobState, String> {
    let upper = text.trim().to_ascii_uppercase();
    let name = if upper.starts_with("JOB_STATE_") {
        upper
    } else {
        format!("JOB_STATE_{upper}")
    };
    pb::JobState::from_str_name(&name)
        .filter(|state| *state != pb::JobState::Unspecified)
        .ok_or_else(|| {
            format!("unknown state {text:?} (scheduled, blocked, queued, running, retrying, succeeded, cancelled, dead)")
        })
}

/// Parses `stdout`, `stderr`, `progress` or `system`.
pub fn parse_stream(text: &str) -> Result<pb::LogStream, String> {
    let upper = text.trim().to_ascii_uppercase();
    let name = if upper.starts_with("LOG_STREAM_") {
        upper
    } else {
        format!("LOG_STREAM_{upper}")
    };
    pb::LogStream::from_str_name(&name)
        .filter(|stream| *stream != pb::LogStream::Unspecified)
        .ok_or_else(|| format!("unknown log stream {text:?} (stdout, stderr, progress, system)"))
}

/// A protobuf timestamp as RFC 3339 in UTC with milliseconds:
/// `2026-11-28T18:00:01.234Z`. Protobuf allows only the years 1 to 9999, but
/// whatever a server sends is written out (`+10000-01-01T00:00:00.000Z`)
/// rather than refused or mistaken for another time.
pub fn format_time(timestamp: &prost_types::Timestamp) -> String {
    let mut millis = timestamp.normalized();
    millis.nanos -= millis.nanos % 1_000_000;
    // prost writes `...:05Z` for whole seconds and `...:05.123Z` otherwise.
    let text = millis.to_string();
    match text.strip_suffix('Z') {
        Some(head) if !head.contains('.') => format!("{head}.000Z"),
        _ => text,
    }
}

/// RFC 3339 with milliseconds (see [`format_time`]), or null.
pub fn time_json(timestamp: Option<&prost_types::Timestamp>) -> Value {
    timestamp.map_or(Value::Null, |timestamp| json!(format_time(timestamp)))
}

/// RFC 3339 with milliseconds (see [`format_time`]), or `-`.
pub fn time_text(timestamp: Option<&prost_types::Timestamp>) -> String {
    timestamp.map_or_else(|| "-".to_owned(), format_time)
}

/// `2026-11-28T18:00:01.234Z` → `18:00:01.234`.
pub fn clock_text(timestamp: Option<&prost_types::Timestamp>) -> String {
    let full = time_text(timestamp);
    full.split_once('T').map_or(full.clone(), |(_, clock)| {
        clock.trim_end_matches('Z').to_owned()
    })
}

/// How long ago, roughly: `5s ago`, `3m ago`, `2h ago`, `4d ago`; a time in
/// the future (clock skew, or a time that is yet to come) reads `in 5s`.
pub fn ago(timestamp: Option<&prost_types::Timestamp>) -> String {
    let Some(timestamp) = timestamp else {
        return "-".to_owned();
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| i128::from(since.as_secs()));
    // i128: no server value can overflow the difference.
    let age = now - i128::from(timestamp.seconds);
    let amount = match age.unsigned_abs() {
        seconds @ 0..60 => format!("{seconds}s"),
        seconds @ 60..3600 => format!("{}m", seconds / 60),
        seconds @ 3600..86_400 => format!("{}h", seconds / 3600),
        seconds => format!("{}d", seconds / 86_400),
    };
    if age < 0 {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

/// A protobuf duration as `1h 30m`, or null.
pub fn duration_json(duration: Option<&prost_types::Duration>) -> Value {
    duration.map_or(Value::Null, |duration| json!(duration_text(duration)))
}

/// A protobuf duration as `1h 30m`; a negative one (which no field allows,
/// but a server could send) as `-1h 30m`.
pub fn duration_text(duration: &prost_types::Duration) -> String {
    let duration = duration.normalized();
    let negative = duration.seconds < 0 || duration.nanos < 0;
    // Normalized nanos are below one second, so this cannot overflow.
    let magnitude = Duration::new(
        duration.seconds.unsigned_abs(),
        duration.nanos.unsigned_abs(),
    );
    let text = humantime::format_duration(magnitude).to_string();
    if negative { format!("-{text}") } else { text }
}

/// A payload or result as JSON; unset (e.g. in the BASIC view) is null.
pub fn value_json(value: Option<&prost_types::Value>) -> Value {
    value.map_or(Value::Null, json_value)
}

/// A payload or result as one line of JSON text; empty when unset.
fn value_text(value: Option<&prost_types::Value>) -> String {
    value.map_or_else(String::new, |value| json_value(value).to_string())
}

/// What became of an attempt: `running` while it runs, `succeeded`,
/// `failed`..., and whether a cancel was asked meanwhile.
fn attempt_outcome(attempt: &pb::Attempt) -> String {
    let outcome = match pb::AttemptOutcome::try_from(attempt.outcome) {
        Ok(pb::AttemptOutcome::Unspecified) => "running".to_owned(),
        _ => outcome_name(attempt.outcome),
    };
    if attempt.cancel_requested {
        format!("{outcome} (cancel requested)")
    } else {
        outcome
    }
}

/// A job for scripts. Payload and result are JSON values (null when the
/// answer's view left them out); attempts are listed by `seq`.
pub fn job_json(job: &pb::Job) -> Value {
    let attempts: Vec<Value> = job
        .attempts
        .iter()
        .map(|attempt| {
            json!({
                "seq": attempt.seq,
                "number": attempt.number,
                "worker_id": attempt.worker_id,
                "started_at": time_json(attempt.started_at.as_ref()),
                "finished_at": time_json(attempt.finished_at.as_ref()),
                "outcome": outcome_name(attempt.outcome),
                "cancel_requested": attempt.cancel_requested,
                "error": attempt.error,
            })
        })
        .collect();
    let retry_policy = job.retry_policy.as_ref().map_or(Value::Null, |policy| {
        json!({
            "base_backoff": duration_json(policy.base_backoff.as_ref()),
            "max_backoff": duration_json(policy.max_backoff.as_ref()),
        })
    });
    json!({
        "id": job.id,
        "type": job.r#type,
        "queue": job.queue,
        "state": state_name(job.state),
        "payload": value_json(job.payload.as_ref()),
        "priority": job.priority,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "progress_percent": job.progress_percent,
        "progress_message": job.progress_message,
        "result": value_json(job.result.as_ref()),
        "last_error": job.last_error,
        "unique_key": job.unique_key,
        "concurrency_key": job.concurrency_key,
        "concurrency_limit": job.concurrency_limit,
        "concurrency_key_running": job.concurrency_key_running,
        "tags": job.tags,
        "parent_id": job.parent_id,
        "depends_on": job.depends_on,
        "schedule_name": job.schedule_name,
        "traceparent": job.traceparent,
        "worker_id": job.worker_id,
        "cancel_requested": job.cancel_requested,
        "timeout": duration_json(job.timeout.as_ref()),
        "retry_policy": retry_policy,
        "run_at": time_json(job.run_at.as_ref()),
        "created_at": time_json(job.created_at.as_ref()),
        "started_at": time_json(job.started_at.as_ref()),
        "finished_at": time_json(job.finished_at.as_ref()),
        "updated_at": time_json(job.updated_at.as_ref()),
        "lease_expires_at": time_json(job.lease_expires_at.as_ref()),
        "attempts": attempts,
    })
}

/// A job for people: one `key: value` line each, attempts last.
pub fn job_text(job: &pb::Job) -> String {
    let mut lines = vec![
        ("id", job.id.clone()),
        ("type", job.r#type.clone()),
        ("queue", job.queue.clone()),
        (
            "state",
            state_name(job.state)
                + if job.cancel_requested {
                    " (cancel requested)"
                } else {
                    ""
                },
        ),
        (
            "attempt",
            format!("{} of {}", job.attempt, job.max_attempts),
        ),
        ("priority", job.priority.to_string()),
        (
            "progress",
            format!("{}% {}", job.progress_percent, job.progress_message)
                .trim()
                .to_owned(),
        ),
        ("payload", value_text(job.payload.as_ref())),
    ];
    let optional = [
        ("result", value_text(job.result.as_ref())),
        ("last error", job.last_error.clone()),
        ("unique key", job.unique_key.clone()),
        (
            "concurrency key",
            if job.concurrency_key.is_empty() {
                String::new()
            } else {
                format!(
                    "{} ({} of {} running)",
                    job.concurrency_key, job.concurrency_key_running, job.concurrency_limit
                )
            },
        ),
        ("tags", job.tags.join(", ")),
        ("parent", job.parent_id.clone()),
        ("depends on", job.depends_on.join(", ")),
        ("schedule", job.schedule_name.clone()),
        ("worker", job.worker_id.clone()),
        (
            "trace",
            jobq_telemetry::propagation::trace_id_of(&job.traceparent)
                .unwrap_or_default()
                .to_owned(),
        ),
    ];
    lines.extend(optional.into_iter().filter(|(_, value)| !value.is_empty()));
    lines.push(("created", time_text(job.created_at.as_ref())));
    lines.push(("run at", time_text(job.run_at.as_ref())));
    if job.started_at.is_some() {
        lines.push(("started", time_text(job.started_at.as_ref())));
    }
    if job.finished_at.is_some() {
        lines.push(("finished", time_text(job.finished_at.as_ref())));
    }
    if let Some(timeout) = &job.timeout {
        lines.push(("timeout", duration_text(timeout)));
    }
    let width = lines.iter().map(|(key, _)| key.len()).max().unwrap_or(0);
    let mut text: String = lines
        .iter()
        .map(|(key, value)| format!("{key:>width$}: {value}\n"))
        .collect();
    if !job.attempts.is_empty() {
        // seq identifies an attempt in the job's history (and its log lines);
        // number counts the attempts of the current run.
        text.push_str("attempts:\n");
        let rows: Vec<Vec<String>> = job
            .attempts
            .iter()
            .map(|attempt| {
                vec![
                    attempt.seq.to_string(),
                    attempt.number.to_string(),
                    attempt.worker_id.clone(),
                    time_text(attempt.started_at.as_ref()),
                    time_text(attempt.finished_at.as_ref()),
                    attempt_outcome(attempt),
                    attempt.error.clone(),
                ]
            })
            .collect();
        text.push_str(&table(
            &[
                "SEQ", "ATTEMPT", "WORKER", "STARTED", "FINISHED", "OUTCOME", "ERROR",
            ],
            &rows,
        ));
    }
    text
}

/// A table row for a job in lists.
pub fn job_row(job: &pb::Job) -> Vec<String> {
    let progress = if job.progress_percent > 0 {
        format!("{}%", job.progress_percent)
    } else {
        "-".to_owned()
    };
    vec![
        job.id.clone(),
        job.r#type.clone(),
        job.queue.clone(),
        state_name(job.state),
        format!("{}/{}", job.attempt, job.max_attempts),
        progress,
        ago(job.created_at.as_ref()),
        job.last_error.clone(),
    ]
}

/// Headers matching [`job_row`].
pub const JOB_HEADERS: [&str; 8] = [
    "ID",
    "TYPE",
    "QUEUE",
    "STATE",
    "ATTEMPT",
    "PROGRESS",
    "CREATED",
    "LAST ERROR",
];

/// Longest cell shown in a table; longer ones are cut with `…`.
const MAX_CELL_CHARS: usize = 60;

/// An aligned table with a header row.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let cell = |text: &str| -> String {
        let one_line: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if one_line.chars().count() > MAX_CELL_CHARS {
            let cut: String = one_line.chars().take(MAX_CELL_CHARS - 1).collect();
            format!("{cut}…")
        } else {
            one_line
        }
    };
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|text| cell(text)).collect())
        .collect();
    let mut widths: Vec<usize> = headers
        .iter()
        .map(|header| header.chars().count())
        .collect();
    for row in &rows {
        for (index, text) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(index) {
                *width = (*width).max(text.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut out = String::new();
        for (index, text) in cells.iter().enumerate() {
            let width = widths.get(index).copied().unwrap_or(0);
            if index + 1 == cells.len() {
                out.push_str(text);
            } else {
                out.push_str(text);
                out.push_str(&" ".repeat(width.saturating_sub(text.chars().count()) + 2));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut text = line(headers.to_vec());
    for row in &rows {
        text.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse_in_any_spelling() {
        assert_eq!(parse_state("queued"), Ok(pb::JobState::Queued));
        assert_eq!(parse_state("DEAD"), Ok(pb::JobState::Dead));
        assert_eq!(parse_state("JOB_STATE_RUNNING"), Ok(pb::JobState::Running));
        assert!(parse_state("unspecified").is_err());
        assert!(parse_state("nope").is_err());
        assert_eq!(state_name(pb::JobState::Succeeded as i32), "succeeded");
        assert_eq!(parse_stream("stderr"), Ok(pb::LogStream::Stderr));
    }

    #[test]
    fn tables_align_and_cut() {
        let rows = vec![
            vec!["a".to_owned(), "x".repeat(80)],
            vec!["bbb".to_owned(), "y".to_owned()],
        ];
        let text = table(&["K", "V"], &rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "K    V");
        assert!(lines[1].starts_with("a    xxx") && lines[1].ends_with('…'));
        assert_eq!(lines[2], "bbb  y");
    }

    #[test]
    fn job_json_embeds_payload_and_result() {
        let job = pb::Job {
            id: "j1".into(),
            payload: Some(jobq_client::proto_value(json!({"a": 1}))),
            result: Some(jobq_client::proto_value(json!("text"))),
            state: pb::JobState::Running as i32,
            ..pb::Job::default()
        };
        let value = job_json(&job);
        assert_eq!(value["payload"], json!({"a": 1}));
        assert_eq!(value["result"], json!("text"));
        assert_eq!(value["state"], json!("running"));
        assert_eq!(value["created_at"], Value::Null);
        // The BASIC view has no payload or result: null, not a crash.
        let basic = job_json(&pb::Job::default());
        assert_eq!(
            (&basic["payload"], &basic["result"]),
            (&Value::Null, &Value::Null)
        );
    }

    #[test]
    fn attempts_show_their_seq_and_cancel_requests() {
        let job = pb::Job {
            attempts: vec![
                pb::Attempt {
                    seq: 1,
                    number: 1,
                    outcome: pb::AttemptOutcome::Released as i32,
                    ..pb::Attempt::default()
                },
                pb::Attempt {
                    seq: 2,
                    number: 1,
                    outcome: pb::AttemptOutcome::Succeeded as i32,
                    cancel_requested: true,
                    ..pb::Attempt::default()
                },
                pb::Attempt {
                    seq: 3,
                    number: 1,
                    ..pb::Attempt::default()
                },
            ],
            ..pb::Job::default()
        };
        let value = job_json(&job);
        assert_eq!(value["attempts"][1]["seq"], json!(2));
        assert_eq!(value["attempts"][1]["number"], json!(1));
        assert_eq!(value["attempts"][1]["cancel_requested"], json!(true));
        let text = job_text(&job);
        let rows: Vec<&str> = text
            .lines()
            .skip_while(|line| !line.starts_with("SEQ"))
            .collect();
        assert!(rows[0].starts_with("SEQ  ATTEMPT"), "{text}");
        assert!(rows[1].starts_with("1    1") && rows[1].contains("released"));
        assert!(rows[2].contains("succeeded (cancel requested)"), "{text}");
        assert!(rows[3].starts_with("3    1") && rows[3].contains("running"));
    }

    fn timestamp(seconds: i64, nanos: i32) -> prost_types::Timestamp {
        prost_types::Timestamp { seconds, nanos }
    }

    #[test]
    fn times_are_rfc3339_with_milliseconds() {
        let time = timestamp(1_764_352_801, 234_567_891);
        assert_eq!(format_time(&time), "2025-11-28T18:00:01.234Z");
        assert_eq!(clock_text(Some(&time)), "18:00:01.234");
        assert_eq!(format_time(&timestamp(0, 0)), "1970-01-01T00:00:00.000Z");
        // Before 1970 is a time like any other.
        assert_eq!(format_time(&timestamp(-1, 0)), "1969-12-31T23:59:59.000Z");
        assert_eq!(
            format_time(&timestamp(-62_135_596_800, 0)),
            "0001-01-01T00:00:00.000Z"
        );
        assert_eq!(
            format_time(&timestamp(253_402_300_799, 999_999_999)),
            "9999-12-31T23:59:59.999Z"
        );
        assert_eq!(time_text(None), "-");
        assert_eq!(time_json(None), Value::Null);
    }

    #[test]
    fn times_outside_the_protobuf_range_are_shown_not_fatal() {
        assert_eq!(
            format_time(&timestamp(253_402_300_800, 0)),
            "+10000-01-01T00:00:00.000Z"
        );
        assert!(format_time(&timestamp(-62_135_596_801, 0)).starts_with("0000-12-31T23:59:59"));
        for (seconds, nanos) in [
            (i64::MAX, i32::MAX),
            (i64::MIN, i32::MIN),
            (i64::MAX, -1),
            (i64::MIN, 999_999_999),
            (0, i32::MIN),
        ] {
            let time = timestamp(seconds, nanos);
            assert!(!format_time(&time).is_empty());
            assert!(!clock_text(Some(&time)).is_empty());
            assert!(ago(Some(&time)).contains('d'));
        }
    }

    #[test]
    fn ago_reads_both_ways() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| i64::try_from(since.as_secs()).unwrap_or(0));
        assert_eq!(ago(Some(&timestamp(now - 125, 0))), "2m ago");
        assert_eq!(ago(Some(&timestamp(now + 7200, 0))), "in 2h");
        assert_eq!(ago(None), "-");
    }

    #[test]
    fn durations_never_panic() {
        let duration = |seconds, nanos| prost_types::Duration { seconds, nanos };
        assert_eq!(duration_text(&duration(5400, 0)), "1h 30m");
        assert_eq!(duration_text(&duration(-90, 0)), "-1m 30s");
        assert_eq!(duration_text(&duration(0, 1_500_000_000)), "1s 500ms");
        for (seconds, nanos) in [
            (i64::MIN, i32::MIN),
            (i64::MAX, i32::MAX),
            (i64::MIN, 0),
            (-1, i32::MAX),
        ] {
            assert!(!duration_text(&duration(seconds, nanos)).is_empty());
        }
    }

    #[test]
    fn a_job_full_of_nonsense_still_prints() {
        let weird = timestamp(i64::MAX, i32::MIN);
        let job = pb::Job {
            state: 99,
            progress_percent: -7,
            attempt: i32::MIN,
            max_attempts: i32::MAX,
            created_at: Some(weird),
            run_at: Some(timestamp(i64::MIN, 0)),
            started_at: Some(weird),
            finished_at: Some(weird),
            updated_at: Some(weird),
            lease_expires_at: Some(weird),
            timeout: Some(prost_types::Duration {
                seconds: i64::MIN,
                nanos: -1,
            }),
            retry_policy: Some(pb::RetryPolicy::default()),
            payload: Some(prost_types::Value { kind: None }),
            result: Some(jobq_client::proto_value(json!(f64::NAN))),
            attempts: vec![pb::Attempt {
                outcome: -3,
                started_at: Some(weird),
                ..pb::Attempt::default()
            }],
            ..pb::Job::default()
        };
        let value = job_json(&job);
        assert_eq!(value["state"], json!("unknown(99)"));
        assert_eq!(value["attempts"][0]["outcome"], json!("unknown(-3)"));
        assert!(job_text(&job).contains("unknown(99)"));
        assert_eq!(job_row(&job)[3], "unknown(99)");
        assert_eq!(event_name(42), "unknown(42)");
        assert_eq!(stream_name(-1), "unknown(-1)");
        assert_eq!(worker_status_name(7), "unknown(7)");
    }
}
