//! The job history table: closed minutes, one row per minute, queue, type
//! and replica. Written with plain SQL that both engines take (an upsert,
//! so writing a minute again replaces it); read summed into the asked
//! buckets (counts added, histogram texts concatenated: their pairs add up
//! when parsed).

use async_trait::async_trait;
use sea_orm::ConnectionTrait;

use super::SqlStore;
use super::rows::storage;
use super::sql::Sql;
use crate::domain::{
    HistoryQuery, HistoryRow, HistoryStats, HistoryStore, LatencyHistogram, Millis, QueueError,
    QueueResult,
};

/// Rows per INSERT: 15 values each stays far below both engines' limits.
const WRITE_CHUNK: usize = 256;

const COLUMNS: &str = "minute, queue, job_type, replica, enqueued, started, succeeded, failed, \
     dead, cancelled, wait_buckets, wait_max_ms, run_buckets, run_max_ms";

fn row_of(result: &sea_orm::QueryResult) -> QueueResult<HistoryRow> {
    let int = |column: &str| result.try_get::<i64>("", column).map_err(storage);
    let text = |column: &str| result.try_get::<String>("", column).map_err(storage);
    let histogram = |buckets: &str, max: &str| {
        LatencyHistogram::decode(&text(buckets)?, int(max)?)
            .map_err(|error| QueueError::Storage(format!("job_history.{buckets}: {error}")))
    };
    Ok(HistoryRow {
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
    })
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
        query: &HistoryQuery,
        from: Millis,
        to: Millis,
        skip: (&str, &[Millis]),
    ) -> QueueResult<Vec<HistoryRow>> {
        let backend = self.backend();
        // The step and the skipped minutes are our own validated numbers:
        // written as literals, they need no parameter type on PostgreSQL.
        let bucket = format!("minute - (minute % {})", query.step.max(1));
        let queue = if query.by_queue { "queue" } else { "''" };
        let job_type = if query.by_type { "job_type" } else { "''" };
        let concat = |column: &str| match backend {
            sea_orm::DbBackend::Postgres => format!("string_agg({column}, ',')"),
            _ => format!("group_concat({column}, ',')"),
        };
        let sum = |column: &str| format!("CAST(SUM({column}) AS BIGINT) AS {column}");
        let mut sql = Sql::new(backend)
            .push(&format!(
                "SELECT {bucket} AS minute, {queue} AS queue, {job_type} AS job_type, {}, {}, {}, {}, {}, {}, \
                 {} AS wait_buckets, MAX(wait_max_ms) AS wait_max_ms, \
                 {} AS run_buckets, MAX(run_max_ms) AS run_max_ms \
                 FROM job_history WHERE minute >= ",
                sum("enqueued"),
                sum("started"),
                sum("succeeded"),
                sum("failed"),
                sum("dead"),
                sum("cancelled"),
                concat("wait_buckets"),
                concat("run_buckets"),
            ))
            .bind(from)
            .push(" AND minute < ")
            .bind(to);
        if !query.queues.is_empty() {
            sql = sql.push(" AND queue").in_list(&query.queues);
        }
        if !query.types.is_empty() {
            sql = sql.push(" AND job_type").in_list(&query.types);
        }
        let (replica, minutes) = skip;
        if !minutes.is_empty() {
            let list: Vec<String> = minutes.iter().map(Millis::to_string).collect();
            sql = sql
                .push(" AND NOT (replica = ")
                .bind(replica.to_owned())
                .push(&format!(" AND minute IN ({}))", list.join(", ")));
        }
        let mut group = vec![bucket.clone()];
        if query.by_queue {
            group.push("queue".into());
        }
        if query.by_type {
            group.push("job_type".into());
        }
        let sql = sql.push(&format!(" GROUP BY {}", group.join(", ")));
        let rows = self
            .connection()
            .query_all_raw(sql.build())
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
