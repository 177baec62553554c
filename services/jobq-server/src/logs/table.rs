//! The `job_log_lines` table: the record of job logs on PostgreSQL, so any
//! replica can replay and follow any job's log.

use sea_orm::ActiveValue::Set;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Statement, TransactionTrait,
};

use super::{LogLine, LogStream, NewLine};
use crate::domain::{JobId, QueueError, QueueResult};

/// The table's rows.
pub mod lines {
    use sea_orm::entity::prelude::*;

    /// One stored line.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "job_log_lines")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub job_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub position: i64,
        pub attempt: i32,
        pub stream: String,
        pub time: i64,
        pub message: String,
        pub fields: Option<String>,
    }

    /// No relations are navigated through sea-orm.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

fn db_error(error: sea_orm::DbErr) -> QueueError {
    QueueError::Storage(format!("job log table: {error}"))
}

fn stream_name(stream: LogStream) -> &'static str {
    match stream {
        LogStream::Stdout => "stdout",
        LogStream::Stderr => "stderr",
        LogStream::Progress => "progress",
        LogStream::System => "system",
    }
}

fn stream_of(name: &str) -> LogStream {
    match name {
        "stdout" => LogStream::Stdout,
        "stderr" => LogStream::Stderr,
        "progress" => LogStream::Progress,
        _ => LogStream::System,
    }
}

/// Stores lines after the job's last one; positions are given out under a
/// per-job lock, so writers on different replicas never collide or leave gaps.
pub async fn insert(
    db: &DatabaseConnection,
    job_id: &JobId,
    attempt: i32,
    new_lines: Vec<NewLine>,
) -> QueueResult<Vec<LogLine>> {
    if new_lines.is_empty() {
        return Ok(Vec::new());
    }
    let tx = db.begin().await.map_err(db_error)?;
    if tx.get_database_backend() == DbBackend::Postgres {
        tx.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_advisory_xact_lock($1)",
            [crate::store::advisory_key("jobq-log:", job_id.as_str()).into()],
        ))
        .await
        .map_err(db_error)?;
    }
    let last: Option<Option<i64>> = lines::Entity::find()
        .select_only()
        .column_as(lines::Column::Position.max(), "last")
        .filter(lines::Column::JobId.eq(job_id.as_str()))
        .into_tuple()
        .one(&tx)
        .await
        .map_err(db_error)?;
    let mut position = last.flatten().unwrap_or(0) as u64;
    let stored: Vec<LogLine> = new_lines
        .into_iter()
        .map(|line| {
            position += 1;
            line.stored(position, attempt)
        })
        .collect();
    let rows = stored.iter().map(|line| lines::ActiveModel {
        job_id: Set(job_id.to_string()),
        position: Set(line.position as i64),
        attempt: Set(line.attempt),
        stream: Set(stream_name(line.stream).to_owned()),
        time: Set(line.time),
        message: Set(line.message.clone()),
        fields: Set(line.fields.as_ref().map(ToString::to_string)),
    });
    lines::Entity::insert_many(rows)
        .exec(&tx)
        .await
        .map_err(db_error)?;
    tx.commit().await.map_err(db_error)?;
    Ok(stored)
}

/// Up to `limit` lines after `after`, of `streams` (all if empty), and whether that is the end.
pub async fn read(
    db: &DatabaseConnection,
    job_id: &JobId,
    after: u64,
    limit: usize,
    streams: &[LogStream],
) -> QueueResult<(Vec<LogLine>, bool)> {
    let mut select = lines::Entity::find()
        .filter(lines::Column::JobId.eq(job_id.as_str()))
        .filter(lines::Column::Position.gt(after as i64));
    if !streams.is_empty() {
        select = select
            .filter(lines::Column::Stream.is_in(streams.iter().map(|stream| stream_name(*stream))));
    }
    let mut rows = select
        .order_by_asc(lines::Column::Position)
        .limit(limit as u64 + 1)
        .all(db)
        .await
        .map_err(db_error)?;
    let end = rows.len() <= limit;
    rows.truncate(limit);
    let lines = rows
        .into_iter()
        .map(|row| LogLine {
            position: row.position as u64,
            time: row.time,
            attempt: row.attempt,
            stream: stream_of(&row.stream),
            message: row.message,
            fields: row.fields.and_then(|raw| serde_json::from_str(&raw).ok()),
        })
        .collect();
    Ok((lines, end))
}

/// Deletes a job's lines.
pub async fn delete(db: &DatabaseConnection, job_id: &JobId) -> QueueResult<()> {
    lines::Entity::delete_many()
        .filter(lines::Column::JobId.eq(job_id.as_str()))
        .exec(db)
        .await
        .map_err(db_error)?;
    Ok(())
}
