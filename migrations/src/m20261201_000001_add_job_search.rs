//! Search by what a job is about: a one-line payload summary stored with
//! each job (list views show it without reading payloads), and indexes that
//! serve payload and tag searches on each engine.
//!
//! SQLite: an FTS5 `trigram` table over the payload and tags text, kept in
//! step by triggers (external content, so the text is not stored twice);
//! searches use it to narrow the rows, then check them exactly.
//! PostgreSQL: a pg_trgm GIN index on the payload text for the same
//! narrowing, and a jsonb GIN index on the tags for "has all these tags".

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Jobs {
    Table,
    Summary,
}

const SQLITE: &[&str] = &[
    "CREATE VIRTUAL TABLE job_search USING fts5(payload, tags, content = 'jobs', \
     content_rowid = 'rowid', tokenize = 'trigram')",
    // A job's payload and tags are written once, at enqueue; the update
    // trigger is there so nothing can leave the index stale.
    "CREATE TRIGGER jobs_search_insert AFTER INSERT ON jobs BEGIN \
     INSERT INTO job_search (rowid, payload, tags) VALUES (new.rowid, new.payload, new.tags); END",
    "CREATE TRIGGER jobs_search_delete AFTER DELETE ON jobs BEGIN \
     INSERT INTO job_search (job_search, rowid, payload, tags) \
     VALUES ('delete', old.rowid, old.payload, old.tags); END",
    "CREATE TRIGGER jobs_search_update AFTER UPDATE OF payload, tags ON jobs BEGIN \
     INSERT INTO job_search (job_search, rowid, payload, tags) \
     VALUES ('delete', old.rowid, old.payload, old.tags); \
     INSERT INTO job_search (rowid, payload, tags) VALUES (new.rowid, new.payload, new.tags); END",
    // Index the jobs stored so far.
    "INSERT INTO job_search (job_search) VALUES ('rebuild')",
];

const POSTGRES: &[&str] = &[
    // A trusted extension (PostgreSQL 13+): the database owner may create it.
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE INDEX jobs_payload_trgm_idx ON jobs USING GIN (payload gin_trgm_ops)",
    "CREATE INDEX jobs_tags_idx ON jobs USING GIN ((tags::jsonb) jsonb_path_ops)",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Jobs::Table)
                    // NULL for the jobs stored before: their summary is empty.
                    .add_column(ColumnDef::new(Jobs::Summary).text().null())
                    .to_owned(),
            )
            .await?;
        let statements = match manager.get_database_backend() {
            sea_orm::DbBackend::Postgres => POSTGRES,
            _ => SQLITE,
        };
        let db = manager.get_connection();
        // The dead-letter list, most recently died first: only dead jobs
        // are in it, so enqueues and other transitions never touch it.
        // (state leads so SQLite sees an equality lookup that needs no sort,
        // and prefers it to the (state, id) index.)
        db.execute_unprepared(
            "CREATE INDEX jobs_dead_finished_idx ON jobs (state, finished_at DESC, id DESC) \
             WHERE state = 'dead'",
        )
        .await?;
        for sql in statements {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "the job search migration cannot be undone".into(),
        ))
    }
}
