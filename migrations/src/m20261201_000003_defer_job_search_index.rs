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
//! PostgreSQL: the payload's trigram index moves off `jobs` into a table of
//! its own, `job_search` (job id, payload), filled the same way from
//! `job_search_pending` (a statement trigger notes the rows each INSERT
//! stores). Besides taking the trigrams off the enqueue, this takes them off
//! every state change: an UPDATE of a job is not a HOT update (it moves
//! indexed columns), so every index of `jobs`, the trigram GIN included,
//! got an entry for each new row version.

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

const POSTGRES: &[&str] = &[
    "CREATE TABLE job_search_pending (job_id varchar(36) PRIMARY KEY)",
    "CREATE TABLE job_search (job_id varchar(36) PRIMARY KEY \
     REFERENCES jobs (id) ON DELETE CASCADE, payload text NOT NULL)",
    "CREATE FUNCTION jobq_note_for_search() RETURNS trigger LANGUAGE plpgsql AS $$ \
     BEGIN INSERT INTO job_search_pending (job_id) SELECT id FROM stored \
     ON CONFLICT DO NOTHING; RETURN NULL; END $$",
    // One call per INSERT statement, however many rows it stores.
    "CREATE TRIGGER jobs_search_insert AFTER INSERT ON jobs REFERENCING NEW TABLE AS stored \
     FOR EACH STATEMENT EXECUTE FUNCTION jobq_note_for_search()",
    // Payloads are written once, at enqueue; this keeps the index right
    // should anything change one.
    "CREATE FUNCTION jobq_renote_for_search() RETURNS trigger LANGUAGE plpgsql AS $$ \
     BEGIN DELETE FROM job_search WHERE job_id = NEW.id; \
     INSERT INTO job_search_pending (job_id) VALUES (NEW.id) ON CONFLICT DO NOTHING; \
     RETURN NULL; END $$",
    "CREATE TRIGGER jobs_search_update AFTER UPDATE OF payload ON jobs FOR EACH ROW \
     WHEN (OLD.payload IS DISTINCT FROM NEW.payload) EXECUTE FUNCTION jobq_renote_for_search()",
    "INSERT INTO job_search (job_id, payload) SELECT id, payload FROM jobs",
    "CREATE INDEX job_search_payload_trgm_idx ON job_search USING GIN (payload gin_trgm_ops)",
    "DROP INDEX jobs_payload_trgm_idx",
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
        let statements = match manager.get_database_backend() {
            sea_orm::DbBackend::Postgres => POSTGRES,
            _ => SQLITE,
        };
        let db = manager.get_connection();
        for sql in statements {
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
