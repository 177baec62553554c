//! Conversions between table rows and domain types.

use std::time::Duration;

use sea_orm::DbErr;

use super::exec::{Column, Row};
use serde::Serialize;

use super::entity::{job_attempts, queues, schedules, workers};
use crate::domain::{
    AttemptOutcome, EntryKind, HistoryEntry, Job, JobId, JobSpec, JobState, LeaseToken,
    MissedTicks, QueueControls, QueueError, QueueResult, RetryPolicy, ScheduleRecord, WorkerRecord,
};
use sea_orm::ActiveValue::Set;

/// Database errors keep their detail for the server log; clients get a
/// generic message. A lost connection is UNAVAILABLE (retry), a collision of
/// writers a conflict, anything else INTERNAL.
pub fn storage(error: DbErr) -> QueueError {
    match &error {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => QueueError::Unavailable(error.to_string()),
        DbErr::Exec(sea_orm::RuntimeErr::SqlxError(sqlx_error))
        | DbErr::Query(sea_orm::RuntimeErr::SqlxError(sqlx_error)) => {
            if let Some(space) = storage_space(sqlx_error, &error) {
                space
            } else if is_connection_error(sqlx_error) {
                QueueError::Unavailable(error.to_string())
            } else if is_conflict(sqlx_error) {
                QueueError::Conflict(error.to_string())
            } else {
                QueueError::Storage(error.to_string())
            }
        }
        _ => QueueError::Storage(error.to_string()),
    }
}

/// A full disk or a read-only database, by the engine's own code: SQLite
/// 13 (SQLITE_FULL) and 8 (SQLITE_READONLY), PostgreSQL 53100 (disk_full)
/// and 25006 (read_only_sql_transaction).
fn storage_space(error: &sea_orm::sqlx::Error, outer: &DbErr) -> Option<QueueError> {
    let code = error.as_database_error()?.code()?;
    match code.as_ref() {
        "13" | "53100" => Some(QueueError::StorageFull(outer.to_string())),
        "8" | "25006" => Some(QueueError::StorageReadOnly(outer.to_string())),
        _ => None,
    }
}

fn is_connection_error(error: &sea_orm::sqlx::Error) -> bool {
    use sea_orm::sqlx::Error;
    match error {
        Error::Io(_)
        | Error::PoolTimedOut
        | Error::PoolClosed
        | Error::WorkerCrashed
        | Error::Protocol(_)
        | Error::Tls(_) => true,
        // 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now, 08xxx connection exceptions.
        Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("57P") || code.starts_with("08")),
        _ => false,
    }
}

/// Unique violations, deadlocks and serialization failures: another writer
/// got there first; nothing was written.
fn is_conflict(error: &sea_orm::sqlx::Error) -> bool {
    match error {
        sea_orm::sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            matches!(code.as_ref(), "23505" | "40P01" | "40001" | "2067" | "1555")
        }),
        _ => false,
    }
}

pub fn millis(duration: Duration) -> i64 {
    duration.as_millis().min(i64::MAX as u128) as i64
}

pub fn duration(ms: i64) -> Duration {
    Duration::from_millis(ms.max(0) as u64)
}

pub fn corrupt(what: &str, id: &str, detail: impl std::fmt::Display) -> QueueError {
    QueueError::Storage(format!("job {id}: stored {what} is unreadable: {detail}"))
}

fn column<T: Column>(row: &mut Row, name: &str) -> QueueResult<T> {
    row.take(name)
}

/// A state stored as text.
pub fn parse_state(raw: &str, id: &str) -> QueueResult<JobState> {
    raw.parse::<JobState>().map_err(|e| corrupt("state", id, e))
}

/// A job from a row of `CORE_COLUMNS`, plus `payload` and `result` when
/// selected. Columns are read in the order they are selected, which finds
/// each one at once.
pub fn job_from_row(mut row: Row) -> QueueResult<Job> {
    let row = &mut row;
    let id: String = column(row, "id")?;
    Ok(Job {
        job_type: column(row, "job_type")?,
        queue: column(row, "queue")?,
        payload_bytes: column(row, "payload_bytes")?,
        priority: column(row, "priority")?,
        run_at: column(row, "run_at")?,
        max_attempts: column(row, "max_attempts")?,
        timeout: duration(column(row, "timeout_ms")?),
        retry_policy: RetryPolicy {
            base_backoff: duration(column(row, "backoff_base_ms")?),
            max_backoff: duration(column(row, "backoff_max_ms")?),
        },
        unique_key: column(row, "unique_key")?,
        request_key: column(row, "request_key")?,
        tags: serde_json::from_str::<Vec<String>>(&column::<String>(row, "tags")?)
            .map_err(|e| corrupt("tags", &id, e))?,
        // NULL for jobs stored before summaries existed.
        summary: column::<Option<String>>(row, "summary")?.unwrap_or_default(),
        parent_id: column::<Option<String>>(row, "parent_id")?.map(JobId::from_stored),
        traceparent: column(row, "traceparent")?,
        state: parse_state(&column::<String>(row, "state")?, &id)?,
        attempt: column(row, "attempt")?,
        history_seq: column(row, "history_seq")?,
        progress_percent: column(row, "progress_percent")?,
        progress_message: column(row, "progress_message")?,
        last_error: column(row, "last_error")?,
        cancel_requested: column(row, "cancel_requested")?,
        lease_token: column::<Option<String>>(row, "lease_token")?.map(LeaseToken::from_string),
        worker_id: column(row, "worker_id")?,
        lease_expires_at: column(row, "lease_expires_at")?,
        lease_duration: column::<Option<i64>>(row, "lease_ms")?.map(duration),
        attempt_deadline: column(row, "attempt_deadline")?,
        attempt_started_at: column(row, "attempt_started_at")?,
        created_at: column(row, "created_at")?,
        started_at: column(row, "started_at")?,
        finished_at: column(row, "finished_at")?,
        updated_at: column(row, "updated_at")?,
        schedule_name: column(row, "schedule_name")?,
        has_dependents: column(row, "has_dependents")?,
        concurrency_key: column(row, "concurrency_key")?,
        concurrency_limit: column(row, "concurrency_limit")?,
        payload: row.take::<Option<String>>("payload").ok().flatten(),
        result: row.take::<Option<String>>("result").ok().flatten(),
        depends_on: Vec::new(),
        history: Vec::new(),
        id: JobId::from_stored(id),
    })
}

/// What a state change writes of a job (see `sql::CHANGED_COLUMNS`).
#[derive(Serialize)]
pub struct ChangedRow<'a> {
    id: &'a str,
    state: &'static str,
    attempt: i32,
    history_seq: i32,
    run_at: i64,
    progress_percent: i32,
    progress_message: &'a str,
    last_error: Option<&'a str>,
    cancel_requested: bool,
    lease_token: Option<&'a str>,
    worker_id: Option<&'a str>,
    lease_expires_at: Option<i64>,
    lease_ms: Option<i64>,
    attempt_deadline: Option<i64>,
    attempt_started_at: Option<i64>,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    updated_at: i64,
    result: Option<&'a str>,
}

impl<'a> ChangedRow<'a> {
    /// The changeable part of `job`.
    pub fn of(job: &'a Job) -> Self {
        Self {
            id: job.id.as_str(),
            state: job.state.as_str(),
            attempt: job.attempt,
            history_seq: job.history_seq,
            run_at: job.run_at,
            progress_percent: job.progress_percent,
            progress_message: &job.progress_message,
            last_error: job.last_error.as_deref(),
            cancel_requested: job.cancel_requested,
            lease_token: job.lease_token.as_ref().map(LeaseToken::as_str),
            worker_id: job.worker_id.as_deref(),
            lease_expires_at: job.lease_expires_at,
            lease_ms: job.lease_duration.map(millis),
            attempt_deadline: job.attempt_deadline,
            attempt_started_at: job.attempt_started_at,
            started_at: job.started_at,
            finished_at: job.finished_at,
            updated_at: job.updated_at,
            result: job.result.as_deref(),
        }
    }
}

/// A new job's row (see `sql::INSERTED_COLUMNS`).
#[derive(Serialize)]
pub struct InsertedRow<'a> {
    id: &'a str,
    job_type: &'a str,
    queue: &'a str,
    payload: &'a str,
    payload_bytes: i64,
    priority: i32,
    run_at: i64,
    max_attempts: i32,
    timeout_ms: i64,
    backoff_base_ms: i64,
    backoff_max_ms: i64,
    unique_key: Option<&'a str>,
    concurrency_key: Option<&'a str>,
    concurrency_limit: i32,
    request_key: Option<&'a str>,
    tags: String,
    summary: &'a str,
    parent_id: Option<&'a str>,
    traceparent: Option<&'a str>,
    state: &'static str,
    attempt: i32,
    history_seq: i32,
    progress_percent: i32,
    progress_message: &'a str,
    last_error: Option<&'a str>,
    cancel_requested: bool,
    created_at: i64,
    finished_at: Option<i64>,
    updated_at: i64,
    schedule_name: Option<&'a str>,
}

impl<'a> InsertedRow<'a> {
    /// The row of a new job.
    pub fn of(job: &'a Job) -> Self {
        Self {
            id: job.id.as_str(),
            job_type: &job.job_type,
            queue: &job.queue,
            payload: job.payload.as_deref().unwrap_or("{}"),
            payload_bytes: job.payload_bytes,
            priority: job.priority,
            run_at: job.run_at,
            max_attempts: job.max_attempts,
            timeout_ms: millis(job.timeout),
            backoff_base_ms: millis(job.retry_policy.base_backoff),
            backoff_max_ms: millis(job.retry_policy.max_backoff),
            unique_key: job.unique_key.as_deref(),
            concurrency_key: job.concurrency_key.as_deref(),
            concurrency_limit: job.concurrency_limit,
            request_key: job.request_key.as_deref(),
            tags: json_list(&job.tags),
            summary: &job.summary,
            parent_id: job.parent_id.as_ref().map(JobId::as_str),
            traceparent: job.traceparent.as_deref(),
            state: job.state.as_str(),
            attempt: job.attempt,
            history_seq: job.history_seq,
            progress_percent: job.progress_percent,
            progress_message: &job.progress_message,
            last_error: job.last_error.as_deref(),
            cancel_requested: job.cancel_requested,
            created_at: job.created_at,
            finished_at: job.finished_at,
            updated_at: job.updated_at,
            schedule_name: job.schedule_name.as_deref(),
        }
    }
}

/// An ended history entry's row (see `sql::HISTORY_COLUMNS`).
#[derive(Serialize)]
pub struct HistoryRow<'a> {
    job_id: &'a str,
    seq: i32,
    kind: &'static str,
    number: i32,
    worker_id: &'a str,
    lease_token: &'a str,
    started_at: i64,
    finished_at: Option<i64>,
    outcome: Option<&'static str>,
    error: Option<&'a str>,
    cancel_requested: bool,
    then_state: Option<&'static str>,
    then_run_at: Option<i64>,
}

impl<'a> HistoryRow<'a> {
    /// The row of `entry` of job `job_id`.
    pub fn of(job_id: &'a JobId, entry: &'a HistoryEntry) -> Self {
        Self {
            job_id: job_id.as_str(),
            seq: entry.seq,
            kind: entry.kind.as_str(),
            number: entry.number,
            worker_id: &entry.worker_id,
            lease_token: entry.lease_token.as_ref().map_or("", LeaseToken::as_str),
            started_at: entry.started_at,
            finished_at: entry.finished_at,
            outcome: entry.outcome.map(AttemptOutcome::as_str),
            error: entry.error.as_deref(),
            cancel_requested: entry.cancel_requested,
            then_state: entry.then_state.map(JobState::as_str),
            then_run_at: entry.then_run_at,
        }
    }
}

/// A stored history entry.
pub fn entry_from_row(row: job_attempts::Model) -> HistoryEntry {
    HistoryEntry {
        seq: row.seq,
        kind: EntryKind::parse(&row.kind).unwrap_or(EntryKind::Attempt),
        number: row.number,
        worker_id: row.worker_id,
        lease_token: (!row.lease_token.is_empty())
            .then(|| LeaseToken::from_string(row.lease_token)),
        started_at: row.started_at,
        finished_at: row.finished_at,
        outcome: row.outcome.as_deref().and_then(AttemptOutcome::parse),
        error: row.error,
        cancel_requested: row.cancel_requested,
        then_state: row.then_state.and_then(|raw| raw.parse().ok()),
        then_run_at: row.then_run_at,
    }
}

/// Rows as one JSON array, the parameter of `Sql::records`.
pub fn json_rows<T: Serialize>(rows: &[T]) -> QueueResult<String> {
    serde_json::to_string(rows)
        .map_err(|error| QueueError::Storage(format!("encoding rows: {error}")))
}

pub const TERMINAL: [&str; 3] = ["succeeded", "cancelled", "dead"];

/// A JSON list of strings, as the text columns keep them.
pub fn json_list(items: &[String]) -> String {
    serde_json::Value::from(items.to_vec()).to_string()
}

fn parse_list(raw: &str, what: &str, key: &str) -> QueueResult<Vec<String>> {
    serde_json::from_str(raw).map_err(|e| corrupt(what, key, e))
}

/// Domain controls as a row.
pub fn row_from_controls(controls: &QueueControls, now: i64) -> queues::ActiveModel {
    queues::ActiveModel {
        name: Set(controls.name.clone()),
        paused: Set(controls.paused),
        concurrency_limit: Set(controls.concurrency_limit),
        rate_limit_per_second: Set(controls.rate_limit_per_second),
        rate_burst: Set(controls.rate_burst),
        updated_at: Set(now),
        ..Default::default()
    }
}

/// A worker row as a domain record.
pub fn worker_from_row(row: workers::Model) -> QueueResult<WorkerRecord> {
    Ok(WorkerRecord {
        queues: parse_list(&row.queues, "worker queues", &row.worker_id)?,
        types: parse_list(&row.types, "worker types", &row.worker_id)?,
        worker_id: row.worker_id,
        hostname: row.hostname,
        version: row.version,
        lease_duration: row.lease_ms.map(duration),
        first_seen_at: row.first_seen_at,
        last_seen_at: row.last_seen_at,
    })
}

/// A domain worker record as a row.
pub fn row_from_worker(worker: &WorkerRecord) -> workers::ActiveModel {
    workers::ActiveModel {
        worker_id: Set(worker.worker_id.clone()),
        hostname: Set(worker.hostname.clone()),
        version: Set(worker.version.clone()),
        queues: Set(json_list(&worker.queues)),
        types: Set(json_list(&worker.types)),
        first_seen_at: Set(worker.first_seen_at),
        last_seen_at: Set(worker.last_seen_at),
        lease_ms: Set(worker.lease_duration.map(millis)),
    }
}

/// A schedule row as a domain record.
/// A schedule's row as read inside a write.
pub fn schedule_model(row: &Row) -> QueueResult<schedules::Model> {
    Ok(schedules::Model {
        name: row.get("name")?,
        cron: row.get("cron")?,
        time_zone: row.get("time_zone")?,
        job_template: row.get("job_template")?,
        paused: row.get("paused")?,
        next_run_at: row.get("next_run_at")?,
        last_run_at: row.get("last_run_at")?,
        last_job_id: row.get("last_job_id")?,
        created_at: row.get("created_at")?,
        missed_ticks: row.get("missed_ticks")?,
        updated_at: row.get("updated_at")?,
    })
}

pub fn schedule_from_row(row: schedules::Model) -> QueueResult<ScheduleRecord> {
    let template: JobSpec = serde_json::from_str(&row.job_template)
        .map_err(|e| corrupt("schedule template", &row.name, e))?;
    let missed_ticks = MissedTicks::parse(&row.missed_ticks)
        .ok_or_else(|| corrupt("missed_ticks", &row.name, &row.missed_ticks))?;
    Ok(ScheduleRecord {
        name: row.name,
        cron: row.cron,
        time_zone: row.time_zone,
        template,
        paused: row.paused,
        missed_ticks,
        next_run_at: row.next_run_at,
        last_run_at: row.last_run_at,
        last_job_id: row.last_job_id.map(JobId::from_stored),
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

/// A domain schedule as a row.
pub fn row_from_schedule(schedule: &ScheduleRecord) -> QueueResult<schedules::ActiveModel> {
    let template = serde_json::to_string(&schedule.template).map_err(|e| {
        QueueError::Storage(format!(
            "schedule {}: template not serialisable: {e}",
            schedule.name
        ))
    })?;
    Ok(schedules::ActiveModel {
        name: Set(schedule.name.clone()),
        cron: Set(schedule.cron.clone()),
        time_zone: Set(schedule.time_zone.clone()),
        job_template: Set(template),
        paused: Set(schedule.paused),
        next_run_at: Set(schedule.next_run_at),
        last_run_at: Set(schedule.last_run_at),
        last_job_id: Set(schedule.last_job_id.as_ref().map(ToString::to_string)),
        created_at: Set(schedule.created_at),
        updated_at: Set(schedule.updated_at),
        missed_ticks: Set(schedule.missed_ticks.as_str().to_owned()),
    })
}
