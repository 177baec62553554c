//! The record of pushed log lines on PostgreSQL: the `job_log_lines` table,
//! so any replica replays and follows any job's log. A push checks its lease
//! and holds the job's row (FOR SHARE) in the same transaction as its
//! insert, so an attempt's end, which updates that row, commits after every
//! line its worker pushed: a reader that sees the end sees all the lines.

use async_trait::async_trait;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, TransactionTrait};
use serde::Serialize;

use super::SqlStore;
use super::dialect::advisory_key;
use super::rows::{json_rows, storage};
use super::sql::{Sql, Type};
use crate::domain::{JobId, LeaseToken, QueueError, QueueResult};
use crate::logs::{
    FIRST_PUSHED_LINE, LeaseCheck, LogFiles, LogLine, LogRecord, LogStream, NewLine, position,
};

/// Pushed lines in the `job_log_lines` table, with this replica's readable
/// copy of the lines pushed through it in its data dir.
pub struct TableRecord {
    db: DatabaseConnection,
    files: LogFiles,
}

impl TableRecord {
    /// The record in `db`'s table, copied to `files`.
    pub fn new(db: DatabaseConnection, files: LogFiles) -> Self {
        Self { db, files }
    }
}

const LINE_COLUMNS: &[(&str, Type)] = &[
    ("job_id", Type::Text),
    ("position", Type::BigInt),
    ("attempt", Type::Int),
    ("stream", Type::Text),
    ("time", Type::BigInt),
    ("message", Type::Text),
    ("fields", Type::Text),
    ("cseq", Type::BigInt),
];

#[derive(Serialize)]
struct LineRow<'a> {
    job_id: &'a str,
    position: i64,
    attempt: i32,
    stream: &'static str,
    time: i64,
    message: &'a str,
    fields: Option<String>,
    cseq: Option<i64>,
}

fn line_from_row(row: &sea_orm::QueryResult) -> QueueResult<LogLine> {
    let get = |name: &str| QueueError::Storage(format!("reading job_log_lines.{name}"));
    let fields: Option<String> = row.try_get("", "fields").map_err(|_| get("fields"))?;
    Ok(LogLine {
        position: row
            .try_get::<i64>("", "position")
            .map_err(|_| get("position"))? as u64,
        attempt: row.try_get("", "attempt").map_err(|_| get("attempt"))?,
        stream: LogStream::parse(
            &row.try_get::<String>("", "stream")
                .map_err(|_| get("stream"))?,
        ),
        time: row.try_get("", "time").map_err(|_| get("time"))?,
        message: row.try_get("", "message").map_err(|_| get("message"))?,
        fields: fields.and_then(|raw| serde_json::from_str(&raw).ok()),
        cseq: row
            .try_get::<Option<i64>>("", "cseq")
            .map_err(|_| get("cseq"))?
            .map(|cseq| cseq as u64),
    })
}

#[async_trait]
impl LogRecord for TableRecord {
    async fn append(
        &self,
        job: &JobId,
        lease: &LeaseToken,
        lines: Vec<NewLine>,
    ) -> QueueResult<(i32, Vec<LogLine>)> {
        let backend = self.db.get_database_backend();
        let tx = self.db.begin().await.map_err(storage)?;
        let check = Sql::new(backend)
            .push("SELECT history_seq FROM jobs WHERE state = 'running' AND id = ")
            .bind(job.to_string())
            .push(" AND lease_token = ")
            .bind(lease.as_str().to_owned())
            .for_share()
            .build();
        let entry: i32 = match tx.query_one_raw(check).await.map_err(storage)? {
            Some(row) => row.try_get("", "history_seq").map_err(storage)?,
            None => {
                return Err(QueueError::StaleLease {
                    job_id: job.to_string(),
                });
            }
        };
        if lines.is_empty() {
            return Ok((entry, Vec::new()));
        }
        if backend == DbBackend::Postgres {
            // Pushes of one job through several replicas number their lines one after the other.
            tx.execute_raw(
                Sql::new(backend)
                    .push("SELECT pg_advisory_xact_lock(")
                    .bind(advisory_key("jobq-log:", job.as_str()))
                    .push(")")
                    .build(),
            )
            .await
            .map_err(storage)?;
        }
        let last = Sql::new(backend)
            .push("SELECT position, cseq FROM job_log_lines WHERE job_id = ")
            .bind(job.to_string())
            .push(" AND position > ")
            .bind(position(entry, 0) as i64)
            .push(" AND position < ")
            .bind(position(entry.saturating_add(1), 0) as i64)
            .push(" ORDER BY position DESC LIMIT 1")
            .build();
        let (mut next_line, mut last_cseq) = match tx.query_one_raw(last).await.map_err(storage)? {
            Some(row) => {
                let at: i64 = row.try_get("", "position").map_err(storage)?;
                let cseq: Option<i64> = row.try_get("", "cseq").map_err(storage)?;
                (
                    (at as u64 as u32).saturating_add(1),
                    cseq.map(|cseq| cseq as u64),
                )
            }
            None => (FIRST_PUSHED_LINE, None),
        };
        let mut stored = Vec::with_capacity(lines.len());
        for line in lines {
            if let (Some(cseq), Some(last)) = (line.cseq, last_cseq)
                && cseq <= last
            {
                continue;
            }
            if line.cseq.is_some() {
                last_cseq = line.cseq;
            }
            stored.push(LogLine {
                position: position(entry, next_line),
                time: line.time,
                attempt: entry,
                stream: line.stream,
                message: line.message,
                fields: line.fields,
                cseq: line.cseq,
            });
            next_line = next_line.saturating_add(1);
        }
        if !stored.is_empty() {
            let rows: Vec<LineRow<'_>> = stored
                .iter()
                .map(|line| LineRow {
                    job_id: job.as_str(),
                    position: line.position as i64,
                    attempt: line.attempt,
                    stream: line.stream.as_str(),
                    time: line.time,
                    message: &line.message,
                    fields: line.fields.as_ref().map(ToString::to_string),
                    cseq: line.cseq.map(|cseq| cseq as i64),
                })
                .collect();
            let insert = Sql::new(backend)
                .push("INSERT INTO job_log_lines (job_id, position, attempt, stream, time, message, fields, cseq) \
                       SELECT j.job_id, j.position, j.attempt, j.stream, j.time, j.message, j.fields, j.cseq FROM ")
                .records(json_rows(&rows)?, "j", LINE_COLUMNS)
                .build();
            tx.execute_raw(insert).await.map_err(storage)?;
        }
        tx.commit().await.map_err(storage)?;
        // The readable copy is this replica's: a failure to write it does not
        // undo what the table holds.
        if let Err(error) = self.files.mirror(job, stored.clone()).await {
            tracing::warn!(%error, %job, "could not write the readable copy of a job's log");
        }
        Ok((entry, stored))
    }

    async fn read(&self, job: &JobId, after: u64, limit: usize) -> QueueResult<Vec<LogLine>> {
        let statement = Sql::new(self.db.get_database_backend())
            .push("SELECT position, attempt, stream, time, message, fields, cseq FROM job_log_lines WHERE job_id = ")
            .bind(job.to_string())
            .push(" AND position > ")
            .bind(after.min(i64::MAX as u64) as i64)
            .push(" ORDER BY position LIMIT ")
            .bind(limit as i64)
            .build();
        let rows = self.db.query_all_raw(statement).await.map_err(storage)?;
        rows.iter().map(line_from_row).collect()
    }

    async fn stored_bytes(&self, job: &JobId) -> QueueResult<u64> {
        let statement = Sql::new(self.db.get_database_backend())
            .push("SELECT COALESCE(SUM(LENGTH(message)), 0) AS bytes FROM job_log_lines WHERE job_id = ")
            .bind(job.to_string())
            .build();
        let row = self.db.query_one_raw(statement).await.map_err(storage)?;
        Ok(row
            .and_then(|row| row.try_get::<i64>("", "bytes").ok())
            .unwrap_or(0)
            .max(0) as u64)
    }

    async fn delete(&self, jobs: &[JobId]) {
        let ids: Vec<&str> = jobs.iter().map(JobId::as_str).collect();
        let statement = Sql::new(self.db.get_database_backend())
            .push("DELETE FROM job_log_lines WHERE job_id")
            .in_list(&ids)
            .build();
        if let Err(error) = self.db.execute_raw(statement).await {
            tracing::warn!(%error, jobs = jobs.len(), "could not delete the log lines of deleted jobs");
        }
        self.files.delete(jobs).await;
    }
}

#[async_trait]
impl LeaseCheck for SqlStore {
    async fn current_entry(&self, job: &JobId, lease: &LeaseToken) -> QueueResult<i32> {
        let statement = Sql::new(self.connection().get_database_backend())
            .push("SELECT history_seq FROM jobs WHERE state = 'running' AND id = ")
            .bind(job.to_string())
            .push(" AND lease_token = ")
            .bind(lease.as_str().to_owned())
            .build();
        match self
            .connection()
            .query_one_raw(statement)
            .await
            .map_err(storage)?
        {
            Some(row) => row.try_get("", "history_seq").map_err(storage),
            None => Err(QueueError::StaleLease {
                job_id: job.to_string(),
            }),
        }
    }
}

impl SqlStore {
    /// Where this engine keeps pushed log lines: files in `data_dir` on
    /// SQLite, the shared table on PostgreSQL.
    pub fn log_record(
        self: &std::sync::Arc<Self>,
        data_dir: &std::path::Path,
    ) -> std::io::Result<std::sync::Arc<dyn LogRecord>> {
        Ok(match self.kind() {
            super::DatabaseKind::Sqlite => {
                std::sync::Arc::new(crate::logs::FileRecord::start(data_dir, self.clone())?)
            }
            super::DatabaseKind::Postgres => std::sync::Arc::new(TableRecord::new(
                self.connection().clone(),
                LogFiles::start(data_dir)?,
            )),
        })
    }
}
