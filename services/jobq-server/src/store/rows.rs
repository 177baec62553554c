//! Conversions between table rows and domain types.

use std::time::Duration;

use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseTransaction, DbErr, EntityTrait, QueryFilter};

use super::entity::{job_attempts, jobs, queues, schedules, workers};
use crate::domain::{
    Attempt, AttemptEnd, AttemptOutcome, Job, JobId, JobSpec, JobState, LeaseToken, QueueControls,
    QueueError, QueueResult, RetryPolicy, ScheduleRecord, WorkerRecord,
};

/// Database errors keep their detail for the server log; clients get a
/// generic message. A lost connection is UNAVAILABLE (retry), anything else INTERNAL.
pub fn storage(error: DbErr) -> QueueError {
    match &error {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => QueueError::Unavailable(error.to_string()),
        DbErr::Exec(sea_orm::RuntimeErr::SqlxError(sqlx_error))
        | DbErr::Query(sea_orm::RuntimeErr::SqlxError(sqlx_error))
            if is_connection_error(sqlx_error) =>
        {
            QueueError::Unavailable(error.to_string())
        }
        _ => QueueError::Storage(error.to_string()),
    }
}

fn is_connection_error(error: &sea_orm::sqlx::Error) -> bool {
    use sea_orm::sqlx::Error;
    match error {
        Error::Io(_)
        | Error::PoolTimedOut
        | Error::PoolClosed
        | Error::WorkerCrashed
        | Error::Protocol(_) => true,
        // 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now, 08xxx connection exceptions.
        Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("57P") || code.starts_with("08")),
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

pub fn job_from_row(row: jobs::Model) -> QueueResult<Job> {
    let state = row
        .state
        .parse::<JobState>()
        .map_err(|e| corrupt("state", &row.id, e))?;
    let tags =
        serde_json::from_str::<Vec<String>>(&row.tags).map_err(|e| corrupt("tags", &row.id, e))?;
    Ok(Job {
        id: JobId::from_stored(row.id),
        job_type: row.job_type,
        queue: row.queue,
        payload: row.payload,
        priority: row.priority,
        run_at: row.run_at,
        max_attempts: row.max_attempts,
        timeout: duration(row.timeout_ms),
        retry_policy: RetryPolicy {
            base_backoff: duration(row.backoff_base_ms),
            max_backoff: duration(row.backoff_max_ms),
        },
        unique_key: row.unique_key,
        tags,
        parent_id: row.parent_id.map(JobId::from_stored),
        traceparent: row.traceparent,
        depends_on: Vec::new(),
        schedule_name: row.schedule_name,
        state,
        attempt: row.attempt,
        progress_percent: row.progress_percent,
        progress_message: row.progress_message,
        result: row.result,
        last_error: row.last_error,
        cancel_requested: row.cancel_requested,
        lease_token: row.lease_token.map(LeaseToken::from_string),
        worker_id: row.worker_id,
        lease_expires_at: row.lease_expires_at,
        attempt_deadline: row.attempt_deadline,
        created_at: row.created_at,
        started_at: row.started_at,
        finished_at: row.finished_at,
        updated_at: row.updated_at,
        attempts: Vec::new(),
    })
}

pub fn row_from_job(job: &Job) -> jobs::ActiveModel {
    jobs::ActiveModel {
        id: Set(job.id.to_string()),
        job_type: Set(job.job_type.clone()),
        queue: Set(job.queue.clone()),
        payload: Set(job.payload.clone()),
        priority: Set(job.priority),
        run_at: Set(job.run_at),
        max_attempts: Set(job.max_attempts),
        timeout_ms: Set(millis(job.timeout)),
        backoff_base_ms: Set(millis(job.retry_policy.base_backoff)),
        backoff_max_ms: Set(millis(job.retry_policy.max_backoff)),
        unique_key: Set(job.unique_key.clone()),
        tags: Set(serde_json::Value::from(job.tags.clone()).to_string()),
        parent_id: Set(job.parent_id.as_ref().map(ToString::to_string)),
        traceparent: Set(job.traceparent.clone()),
        state: Set(job.state.as_str().to_owned()),
        attempt: Set(job.attempt),
        progress_percent: Set(job.progress_percent),
        progress_message: Set(job.progress_message.clone()),
        result: Set(job.result.clone()),
        last_error: Set(job.last_error.clone()),
        cancel_requested: Set(job.cancel_requested),
        lease_token: Set(job
            .lease_token
            .as_ref()
            .map(|token| token.as_str().to_owned())),
        worker_id: Set(job.worker_id.clone()),
        lease_expires_at: Set(job.lease_expires_at),
        attempt_deadline: Set(job.attempt_deadline),
        created_at: Set(job.created_at),
        started_at: Set(job.started_at),
        finished_at: Set(job.finished_at),
        updated_at: Set(job.updated_at),
        schedule_name: Set(job.schedule_name.clone()),
    }
}

pub fn attempt_from_row(row: job_attempts::Model) -> Attempt {
    Attempt {
        number: row.number,
        worker_id: row.worker_id,
        started_at: row.started_at,
        finished_at: row.finished_at,
        outcome: row.outcome.as_deref().and_then(AttemptOutcome::parse),
        error: row.error,
    }
}

pub const TERMINAL: [&str; 3] = ["succeeded", "cancelled", "dead"];
pub const WAITING: [&str; 2] = ["scheduled", "retrying"];

pub async fn save_job(tx: &DatabaseTransaction, job: &Job) -> QueueResult<()> {
    jobs::Entity::update(row_from_job(job))
        .exec(tx)
        .await
        .map_err(storage)?;
    Ok(())
}

pub async fn insert_attempt(
    tx: &DatabaseTransaction,
    job_id: &JobId,
    token: &LeaseToken,
    attempt: &Attempt,
) -> QueueResult<()> {
    let row = job_attempts::ActiveModel {
        job_id: Set(job_id.to_string()),
        number: Set(attempt.number),
        worker_id: Set(attempt.worker_id.clone()),
        lease_token: Set(token.as_str().to_owned()),
        started_at: Set(attempt.started_at),
        ..Default::default()
    };
    job_attempts::Entity::insert(row)
        .exec(tx)
        .await
        .map_err(storage)?;
    Ok(())
}

pub async fn close_attempt(
    tx: &DatabaseTransaction,
    job_id: &JobId,
    end: &AttemptEnd,
) -> QueueResult<()> {
    job_attempts::Entity::update_many()
        .col_expr(
            job_attempts::Column::FinishedAt,
            Expr::value(end.finished_at),
        )
        .col_expr(
            job_attempts::Column::Outcome,
            Expr::value(end.outcome.as_str()),
        )
        .col_expr(job_attempts::Column::Error, Expr::value(end.error.clone()))
        .filter(job_attempts::Column::JobId.eq(job_id.as_str()))
        .filter(job_attempts::Column::LeaseToken.eq(end.lease_token.as_str()))
        .exec(tx)
        .await
        .map_err(storage)?;
    Ok(())
}

/// A JSON list of strings, as the text columns keep them.
pub fn json_list(items: &[String]) -> String {
    serde_json::Value::from(items.to_vec()).to_string()
}

fn parse_list(raw: &str, what: &str, key: &str) -> QueueResult<Vec<String>> {
    serde_json::from_str(raw).map_err(|e| corrupt(what, key, e))
}

/// A queue-controls row as domain controls.
pub fn controls_from_row(row: queues::Model) -> QueueControls {
    QueueControls {
        name: row.name,
        paused: row.paused,
        concurrency_limit: row.concurrency_limit,
        rate_limit_per_second: row.rate_limit_per_second,
    }
}

/// Domain controls as a row.
pub fn row_from_controls(controls: &QueueControls, now: i64) -> queues::ActiveModel {
    queues::ActiveModel {
        name: Set(controls.name.clone()),
        paused: Set(controls.paused),
        concurrency_limit: Set(controls.concurrency_limit),
        rate_limit_per_second: Set(controls.rate_limit_per_second),
        updated_at: Set(now),
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
    }
}

/// A schedule row as a domain record.
pub fn schedule_from_row(row: schedules::Model) -> QueueResult<ScheduleRecord> {
    let template: JobSpec = serde_json::from_str(&row.job_template)
        .map_err(|e| corrupt("schedule template", &row.name, e))?;
    Ok(ScheduleRecord {
        name: row.name,
        cron: row.cron,
        time_zone: row.time_zone,
        template,
        paused: row.paused,
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
    })
}
