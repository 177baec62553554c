//! The job history table: closed minutes, one row per minute, queue, type
//! and replica. Written with plain SQL that both engines take (an upsert,
//! so writing a minute again replaces it), read by minute range.

use async_trait::async_trait;
use sea_orm::ConnectionTrait;

use super::SqlStore;
use super::rows::storage;
use super::sql::Sql;
use crate::domain::{
    HistoryRow, HistoryStats, HistoryStore, LatencyHistogram, Millis, QueueError, QueueResult,
};

/// Rows per INSERT: 15 values each stays far below both engines' limits.
const WRITE_CHUNK: usize = 256;

const COLUMNS: &str = "minute, queue, job_type, replica, enqueued, started, succeeded, failed, \
     dead, cancelled, wait_buckets, wait_max_ms, run_buckets, run_max_ms";

fn row_of(result: &sea_orm::QueryResult) -> QueueResult<(String, HistoryRow)> {
    let int = |column: &str| result.try_get::<i64>("", column).map_err(storage);
    let text = |column: &str| result.try_get::<String>("", column).map_err(storage);
    let histogram = |buckets: &str, max: &str| {
        LatencyHistogram::decode(&text(buckets)?, int(max)?)
            .map_err(|error| QueueError::Storage(format!("job_history.{buckets}: {error}")))
    };
    Ok((
        text("replica")?,
        HistoryRow {
            minute: int("minute")?,
            queue: text("queue")?,
            job_type: text("job_type")?,
            stats: HistoryStats {
                enqueued: int("enqueued")?,
                started: int("started")?,
                succeeded: int("succeeded")?,
                failed: int("failed")?,
                dead: int("dead")?,
                cancelled: int("cancelled")?,
                wait: histogram("wait_buckets", "wait_max_ms")?,
                run: histogram("run_buckets", "run_max_ms")?,
            },
        },
    ))
}

#[async_trait]
impl HistoryStore for SqlStore {
    async fn write_history(&self, replica: &str, rows: &[HistoryRow]) -> QueueResult<()> {
        for chunk in rows.chunks(WRITE_CHUNK) {
            let mut sql = Sql::new(self.backend())
                .push(&format!("INSERT INTO job_history ({COLUMNS}) VALUES "));
            for (index, row) in chunk.iter().enumerate() {
                let stats = &row.stats;
                sql = sql
                    .push(if index == 0 { "(" } else { ", (" })
                    .bind(row.minute)
                    .push(", ")
                    .bind(row.queue.clone())
                    .push(", ")
                    .bind(row.job_type.clone())
                    .push(", ")
                    .bind(replica.to_owned());
                for count in [
                    stats.enqueued,
                    stats.started,
                    stats.succeeded,
                    stats.failed,
                    stats.dead,
                    stats.cancelled,
                ] {
                    sql = sql.push(", ").bind(count);
                }
                sql = sql
                    .push(", ")
                    .bind(stats.wait.encode())
                    .push(", ")
                    .bind(stats.wait.max())
                    .push(", ")
                    .bind(stats.run.encode())
                    .push(", ")
                    .bind(stats.run.max())
                    .push(")");
            }
            let sql = sql.push(
                " ON CONFLICT (minute, queue, job_type, replica) DO UPDATE SET \
                 enqueued = excluded.enqueued, started = excluded.started, \
                 succeeded = excluded.succeeded, failed = excluded.failed, \
                 dead = excluded.dead, cancelled = excluded.cancelled, \
                 wait_buckets = excluded.wait_buckets, wait_max_ms = excluded.wait_max_ms, \
                 run_buckets = excluded.run_buckets, run_max_ms = excluded.run_max_ms",
            );
            self.connection()
                .execute_raw(sql.build())
                .await
                .map_err(storage)?;
        }
        Ok(())
    }

    async fn read_history(
        &self,
        from: Millis,
        to: Millis,
        queues: &[String],
        types: &[String],
    ) -> QueueResult<Vec<(String, HistoryRow)>> {
        let mut sql = Sql::new(self.backend())
            .push(&format!(
                "SELECT {COLUMNS} FROM job_history WHERE minute >= "
            ))
            .bind(from)
            .push(" AND minute < ")
            .bind(to);
        if !queues.is_empty() {
            sql = sql.push(" AND queue").in_list(queues);
        }
        if !types.is_empty() {
            sql = sql.push(" AND job_type").in_list(types);
        }
        let rows = self
            .connection()
            .query_all_raw(sql.push(" ORDER BY minute").build())
            .await
            .map_err(storage)?;
        rows.iter().map(row_of).collect()
    }

    async fn prune_history(&self, before: Millis) -> QueueResult<u64> {
        let statement = Sql::new(self.backend())
            .push("DELETE FROM job_history WHERE minute < ")
            .bind(before)
            .build();
        let outcome = self
            .connection()
            .execute_raw(statement)
            .await
            .map_err(storage)?;
        Ok(outcome.rows_affected())
    }
}
