//! The SQLite search index is filled after the commit, not inside it.
//!
//! Indexing a payload's trigrams in the transaction that enqueues it cost a
//! third of single enqueues and of batches at 200-byte payloads, and two
//! thirds at 2 KB. The insert trigger now only notes the job's rowid in
//! `job_search_pending`; the writer indexes the noted jobs in chunks after
//! the commits that wrote them (see the server's `store::search_backlog`).
//! Searches read the noted jobs besides what the index returns, so a job is
//! found from the moment it is stored.
//!
//! The delete and update triggers take a job out of the index only when it
//! is in it (an FTS5 'delete' of a row that was never indexed corrupts the
//! index); a job still noted is simply struck from the list. The list is
//! keyed by rowid, not a high-water mark, because SQLite gives a new row the
//! rowid of a deleted newest one.
//!
//! PostgreSQL is unchanged.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const SQLITE: &[&str] = &[
    "CREATE TABLE job_search_pending (job_rowid INTEGER PRIMARY KEY)",
    "DROP TRIGGER jobs_search_insert",
    "DROP TRIGGER jobs_search_delete",
    "DROP TRIGGER jobs_search_update",
    "CREATE TRIGGER jobs_search_insert AFTER INSERT ON jobs BEGIN \
     INSERT INTO job_search_pending (job_rowid) VALUES (new.rowid); END",
    "CREATE TRIGGER jobs_search_delete AFTER DELETE ON jobs BEGIN \
     INSERT INTO job_search (job_search, rowid, payload, tags) \
     SELECT 'delete', old.rowid, old.payload, old.tags \
     WHERE NOT EXISTS (SELECT 1 FROM job_search_pending WHERE job_rowid = old.rowid); \
     DELETE FROM job_search_pending WHERE job_rowid = old.rowid; END",
    // Payload and tags are written once, at enqueue; this keeps the index
    // right should anything change them.
    "CREATE TRIGGER jobs_search_update AFTER UPDATE OF payload, tags ON jobs BEGIN \
     INSERT INTO job_search (job_search, rowid, payload, tags) \
     SELECT 'delete', old.rowid, old.payload, old.tags \
     WHERE NOT EXISTS (SELECT 1 FROM job_search_pending WHERE job_rowid = old.rowid); \
     INSERT OR IGNORE INTO job_search_pending (job_rowid) VALUES (new.rowid); END",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// One transaction, so one connection: a pooled connection whose schema
    /// cache predates the DROP TRIGGER would refuse the CREATE TRIGGER of the
    /// same name ("already exists"), and a trigger half replaced would index
    /// jobs twice.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != sea_orm::DbBackend::Sqlite {
            return Ok(());
        }
        let db = manager.get_connection();
        for sql in SQLITE {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "the deferred search index migration cannot be undone".into(),
        ))
    }
}
