//! How the CLI shows things: JSON for scripts (snake_case field names, states
//! in lower case, times in RFC 3339, payload and result as JSON), and aligned
//! tables or key/value blocks for people.

use std::time::{Duration, SystemTime};

use jobq_client::pb;
use jobq_client::system_time;
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

/// RFC 3339 with milliseconds, or null.
pub fn time_json(timestamp: Option<&prost_types::Timestamp>) -> Value {
    timestamp.and_then(system_time).map_or(Value::Null, |time| {
        json!(humantime::format_rfc3339_millis(time).to_string())
    })
}

/// RFC 3339 with milliseconds, or `-`.
pub fn time_text(timestamp: Option<&prost_types::Timestamp>) -> String {
    timestamp.and_then(system_time).map_or_else(
        || "-".to_owned(),
        |time| humantime::format_rfc3339_millis(time).to_string(),
    )
}

/// `2026-11-28T18:00:01.234Z` → `18:00:01.234`.
pub fn clock_text(timestamp: Option<&prost_types::Timestamp>) -> String {
    let full = time_text(timestamp);
    full.split_once('T').map_or(full.clone(), |(_, clock)| {
        clock.trim_end_matches('Z').to_owned()
    })
}

/// How long ago, roughly: `5s ago`, `3m ago`, `2h ago`, `4d ago`.
pub fn ago(timestamp: Option<&prost_types::Timestamp>) -> String {
    let Some(time) = timestamp.and_then(system_time) else {
        return "-".to_owned();
    };
    let age = SystemTime::now()
        .duration_since(time)
        .unwrap_or_default()
        .as_secs();
    match age {
        0..60 => format!("{age}s ago"),
        60..3600 => format!("{}m ago", age / 60),
        3600..86_400 => format!("{}h ago", age / 3600),
        _ => format!("{}d ago", age / 86_400),
    }
}

/// A protobuf duration as `1h 30m`, or null.
pub fn duration_json(duration: Option<&prost_types::Duration>) -> Value {
    duration.map_or(Value::Null, |duration| json!(duration_text(duration)))
}

fn duration_text(duration: &prost_types::Duration) -> String {
    let std = Duration::new(
        u64::try_from(duration.seconds).unwrap_or(0),
        u32::try_from(duration.nanos).unwrap_or(0),
    );
    humantime::format_duration(std).to_string()
}

/// JSON text as JSON (an invalid or empty document stays a string / null).
fn embedded_json(text: &str) -> Value {
    if text.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(text).unwrap_or_else(|_| json!(text))
}

/// A job for scripts.
pub fn job_json(job: &pb::Job) -> Value {
    let attempts: Vec<Value> = job
        .attempts
        .iter()
        .map(|attempt| {
            json!({
                "number": attempt.number,
                "worker_id": attempt.worker_id,
                "started_at": time_json(attempt.started_at.as_ref()),
                "finished_at": time_json(attempt.finished_at.as_ref()),
                "outcome": outcome_name(attempt.outcome),
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
        "payload": embedded_json(&job.payload),
        "priority": job.priority,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "progress_percent": job.progress_percent,
        "progress_message": job.progress_message,
        "result": embedded_json(&job.result),
        "last_error": job.last_error,
        "unique_key": job.unique_key,
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
        ("payload", job.payload.clone()),
    ];
    let optional = [
        ("result", job.result.clone()),
        ("last error", job.last_error.clone()),
        ("unique key", job.unique_key.clone()),
        ("tags", job.tags.join(", ")),
        ("parent", job.parent_id.clone()),
        ("depends on", job.depends_on.join(", ")),
        ("schedule", job.schedule_name.clone()),
        ("worker", job.worker_id.clone()),
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
        text.push_str("attempts:\n");
        let rows: Vec<Vec<String>> = job
            .attempts
            .iter()
            .map(|attempt| {
                vec![
                    attempt.number.to_string(),
                    attempt.worker_id.clone(),
                    time_text(attempt.started_at.as_ref()),
                    time_text(attempt.finished_at.as_ref()),
                    outcome_name(attempt.outcome),
                    attempt.error.clone(),
                ]
            })
            .collect();
        text.push_str(&table(
            &["#", "WORKER", "STARTED", "FINISHED", "OUTCOME", "ERROR"],
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
            payload: r#"{"a":1}"#.into(),
            result: "not json".into(),
            state: pb::JobState::Running as i32,
            ..pb::Job::default()
        };
        let value = job_json(&job);
        assert_eq!(value["payload"], json!({"a": 1}));
        assert_eq!(value["result"], json!("not json"));
        assert_eq!(value["state"], json!("running"));
        assert_eq!(value["created_at"], Value::Null);
    }
}
