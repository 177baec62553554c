//! The payload and tag search index is filled after the commits that store
//! the jobs, in chunks: on SQLite the FTS5 table `job_search`, by the
//! writer's thread; on PostgreSQL the `job_search` table and its trigram
//! index, by a task beside the committers.
//!
//! Indexing ~200 trigrams per payload inside each group commit was a third
//! of the cost of an enqueue at 200-byte payloads (two thirds at 2 KB), and
//! on PostgreSQL every state change of a job re-indexed its payload (a new
//! row version of `jobs` gets an entry in every index). An insert trigger
//! now only notes each new job in `job_search_pending`; the jobs noted are
//! indexed once no write has come for [`IDLE`], and, under writes that never
//! pause, right after each group that takes the backlog over
//! [`BACKLOG_BOUND`], as many as it enqueued. So a
//! burst of enqueues is acknowledged at the speed of the table and its
//! indexes, and its search indexing is done once the burst is over;
//! sustained load pays for the index as before, in bigger chunks.
//!
//! Searches let the noted jobs through their prefilter (see
//! `search::NOT_YET_INDEXED`) and check them exactly, so a job is found as
//! soon as it is stored; the bound keeps that exact check to a few tens of
//! milliseconds.

use std::time::Duration;

use sea_orm::{DbBackend, Statement};

use super::exec::{LocalTx, Tx};
use super::writer::Op;
use crate::domain::QueueResult;

/// Jobs indexed per transaction: a chunk of 200-byte payloads takes a few
/// milliseconds, the longest a write waits behind it.
pub const CHUNK: usize = 256;

/// Jobs that may wait for the index while writes keep coming; beyond it,
/// what a group enqueued is indexed right after it (so a drain, which
/// enqueues nothing, never waits on the index).
pub const BACKLOG_BOUND: usize = 20_000;

/// How long the writer waits for another write before it indexes the
/// backlog.
pub const IDLE: Duration = Duration::from_millis(50);

/// The pause between two chunks indexed while idle: other connections
/// (the job history's writes) get the write lock in between.
pub const IDLE_PAUSE: Duration = Duration::from_millis(5);

/// The last rowid of the next chunk of noted jobs (LIMIT as a literal: a
/// bound LIMIT makes SQLite prepare the statement again on every run).
static CHUNK_END: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT max(job_rowid) AS chunk_end FROM \
         (SELECT job_rowid FROM job_search_pending ORDER BY job_rowid LIMIT {CHUNK})"
    )
});
/// CROSS JOIN keeps the noted jobs the outer loop: with a plain JOIN
/// SQLite read `jobs` from its first row up to the chunk's end and looked
/// each up in the list, every chunk (a 1,000,000-job backlog took minutes).
const INDEX_CHUNK: &str = "INSERT INTO job_search (rowid, payload, tags) \
     SELECT jobs.rowid, jobs.payload, jobs.tags FROM job_search_pending \
     CROSS JOIN jobs ON jobs.rowid = job_search_pending.job_rowid \
     WHERE job_search_pending.job_rowid <= ?";
const STRIKE_CHUNK: &str = "DELETE FROM job_search_pending WHERE job_rowid <= ?";

/// What the writer knows of the backlog.
#[derive(Debug)]
pub struct SearchBacklog {
    /// Jobs waiting for the index, as far as the writer knows: what it
    /// enqueued less what it indexed (a group that failed counts too;
    /// jobs stored by other means are not counted).
    waiting: usize,
    /// Whether the backlog may hold jobs: at start (a previous run may have
    /// stopped before indexing them) and after any write that may store jobs.
    maybe_pending: bool,
}

impl Default for SearchBacklog {
    fn default() -> Self {
        Self {
            waiting: 0,
            maybe_pending: true,
        }
    }
}

impl SearchBacklog {
    /// Notes a group of writes (committed or not).
    pub fn wrote(&mut self, ops: &[&Op]) {
        for op in ops {
            match op {
                Op::Insert { jobs, .. } => self.note(jobs.len(), true),
                // May store jobs (a schedule's, a retry's copy...).
                Op::Other(_) => self.note(0, true),
                // Only change jobs that are stored already.
                Op::Update { .. } | Op::Lease { .. } => {}
            }
        }
    }

    fn note(&mut self, enqueued: usize, may_store: bool) {
        self.waiting += enqueued;
        self.maybe_pending |= may_store;
    }

    /// Whether more jobs wait than the bound allows.
    pub fn over_bound(&self) -> bool {
        self.waiting > BACKLOG_BOUND
    }

    /// Whether an idle writer should look for a backlog.
    pub fn maybe_pending(&self) -> bool {
        self.maybe_pending
    }

    /// Notes how a chunk went, and logs it; false if it failed.
    pub fn chunk_done(&mut self, outcome: QueueResult<usize>) -> bool {
        match outcome {
            Ok(indexed) => {
                tracing::trace!(indexed, "search index chunk committed");
                self.indexed(indexed);
                true
            }
            Err(error) => {
                tracing::warn!(%error, "indexing jobs for search failed; trying again later");
                self.failed();
                false
            }
        }
    }

    /// Notes a chunk that failed: tried again once more jobs are enqueued,
    /// or when the writer is next idle after a write.
    pub fn failed(&mut self) {
        self.waiting = self.waiting.min(BACKLOG_BOUND);
    }

    /// Notes a chunk indexed: `count` jobs (fewer than a chunk: the
    /// backlog is empty).
    pub fn indexed(&mut self, count: usize) {
        self.waiting = self.waiting.saturating_sub(count);
        if count < CHUNK {
            self.waiting = 0;
            self.maybe_pending = false;
        }
    }
}

/// Indexes the next chunk of the SQLite backlog in a transaction of its own
/// on the writer's connection; how many jobs it indexed.
pub async fn index_sqlite_chunk(tx: &LocalTx) -> QueueResult<usize> {
    tx.in_transaction(sqlite_chunk(tx)).await
}

async fn sqlite_chunk(tx: &LocalTx) -> QueueResult<usize> {
    let rows = tx
        .rows(Statement::from_string(
            DbBackend::Sqlite,
            CHUNK_END.as_str(),
        ))
        .await?;
    let chunk_end: Option<i64> = match rows.first() {
        Some(row) => row.get("chunk_end")?,
        None => None,
    };
    let Some(chunk_end) = chunk_end else {
        return Ok(0);
    };
    let bound =
        |sql: &str| Statement::from_sql_and_values(DbBackend::Sqlite, sql, [chunk_end.into()]);
    tx.execute(bound(INDEX_CHUNK)).await?;
    let indexed = tx.execute(bound(STRIKE_CHUNK)).await?;
    Ok(indexed as usize)
}

/// Takes a chunk of the PostgreSQL backlog and indexes it, in one
/// statement; replicas indexing at once take different chunks (SKIP
/// LOCKED). A noted job deleted since is struck without being indexed.
static POSTGRES_CHUNK: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH chunk AS (DELETE FROM job_search_pending WHERE job_id IN \
           (SELECT job_id FROM job_search_pending ORDER BY job_id LIMIT {CHUNK} \
            FOR UPDATE SKIP LOCKED) RETURNING job_id), \
         indexed AS (INSERT INTO job_search (job_id, payload) \
           SELECT jobs.id, jobs.payload FROM chunk JOIN jobs ON jobs.id = chunk.job_id \
           ON CONFLICT (job_id) DO NOTHING RETURNING job_id) \
         SELECT (SELECT count(*) FROM chunk) AS taken, (SELECT count(*) FROM indexed) AS indexed"
    )
});

/// Indexes the next chunk of the PostgreSQL backlog; how many noted jobs
/// it took (indexed, or struck when deleted since).
pub async fn index_postgres_chunk(db: &sea_orm::DatabaseConnection) -> QueueResult<usize> {
    use sea_orm::ConnectionTrait;
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            POSTGRES_CHUNK.as_str(),
        ))
        .await
        .map_err(super::rows::storage)?;
    let taken: i64 = match row {
        Some(row) => row.try_get("", "taken").map_err(super::rows::storage)?,
        None => 0,
    };
    Ok(usize::try_from(taken).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store of `jobs` jobs with the search tables and the insert trigger
    /// as the migrations make them (only the columns the index reads).
    fn store_with(jobs: usize) -> LocalTx {
        let connection = rusqlite::Connection::open_in_memory().expect("an in-memory database");
        connection
            .execute_batch(&format!(
                "CREATE TABLE jobs (id TEXT PRIMARY KEY, payload TEXT NOT NULL, tags TEXT NOT NULL);
                 CREATE VIRTUAL TABLE job_search USING fts5(payload, tags, content = 'jobs',
                     content_rowid = 'rowid', tokenize = 'trigram');
                 CREATE TABLE job_search_pending (job_rowid INTEGER PRIMARY KEY);
                 CREATE TRIGGER jobs_search_insert AFTER INSERT ON jobs BEGIN
                     INSERT INTO job_search_pending (job_rowid) VALUES (new.rowid); END;
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {jobs})
                 INSERT INTO jobs SELECT 'job-' || i, '{{\"url\":\"clip-' || i || '\"}}', '[]' FROM n;"
            ))
            .expect("the schema and the jobs");
        LocalTx::new(connection)
    }

    async fn count(tx: &LocalTx, sql: &str) -> i64 {
        let rows = tx
            .rows(Statement::from_string(DbBackend::Sqlite, sql))
            .await
            .expect("a count");
        rows[0].get("n").expect("a number")
    }

    #[tokio::test]
    async fn a_backlog_is_indexed_a_chunk_at_a_time_until_none_is_left() {
        let tx = store_with(CHUNK + 44);
        let mut backlog = SearchBacklog::default();
        assert!(backlog.maybe_pending(), "a new writer looks for a backlog");
        for (expected, more) in [(CHUNK, true), (44, false), (0, false)] {
            let indexed = index_sqlite_chunk(&tx).await.expect("a chunk");
            backlog.indexed(indexed);
            assert_eq!(indexed, expected);
            assert_eq!(backlog.maybe_pending(), more, "after a chunk of {indexed}");
        }
        let pending = "SELECT count(*) AS n FROM job_search_pending";
        assert_eq!(count(&tx, pending).await, 0);
        let indexed = "SELECT count(*) AS n FROM job_search WHERE payload LIKE '%clip-%'";
        assert_eq!(count(&tx, indexed).await, (CHUNK + 44) as i64);
        let one = "SELECT count(*) AS n FROM job_search WHERE payload LIKE '%clip-299%'";
        assert_eq!(count(&tx, one).await, 1);
    }

    #[test]
    fn chunks_are_due_only_beyond_the_bound_and_only_inserts_count() {
        let mut backlog = SearchBacklog {
            maybe_pending: false,
            ..SearchBacklog::default()
        };
        backlog.note(0, false);
        assert!(!backlog.maybe_pending(), "a job change stores no job");
        backlog.note(BACKLOG_BOUND, true);
        assert!(backlog.maybe_pending());
        assert!(
            !backlog.over_bound(),
            "up to the bound, jobs wait for an idle moment"
        );
        backlog.note(1, true);
        assert!(backlog.over_bound());
        backlog.failed();
        assert!(
            !backlog.over_bound(),
            "a failed chunk waits for more enqueues"
        );
    }
}
