//! Indexes for listing and counting leave out the jobs they never look up.
//!
//! The two state-keyed ones leave out the states every job passes through
//! quickly.
//! Each state change moved a job in `jobs_state_id_idx` (state, id) and in
//! `jobs_queue_state_idx` (queue, state): a delete and an insert in both at
//! the lease and again at the report, ten index writes per job on top of
//! the ones the lease and the reaper need. Now:
//! - `jobs_state_id_idx` (listing by state, newest first) leaves out
//!   running jobs. Running jobs are as many as the workers' slots at most;
//!   they are listed from the running jobs' own index
//!   (`jobs_running_due_idx`) and sorted.
//! - `jobs_queue_state_idx` (counts by queue and state) leaves out queued and
//!   running jobs. Queued jobs are counted from the lease index (`queue`
//!   leads it), running ones from `jobs_running_due_idx`.
//!
//! A job now costs four writes in them instead of ten: in the first at
//! enqueue, out at its lease, in again when it settles; in the second only
//! when it settles. Queries
//! that want these indexes repeat the index's condition word for word
//! (`store::SETTLED`, `store::NOT_RUNNING`): SQLite uses a partial index only
//! for a query that contains one of the index's terms as written.
//!
//! `jobs_parent_idx` (listing a job's children) leaves out the jobs without a
//! parent, most of them: SQLite indexes NULLs, so each enqueue wrote an entry
//! no query reads. `parent_id = ?` implies `parent_id IS NOT NULL` on both
//! engines.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &[&str] = &[
    "DROP INDEX jobs_state_id_idx",
    "CREATE INDEX jobs_state_id_idx ON jobs (state, id) WHERE state <> 'running'",
    "DROP INDEX jobs_queue_state_idx",
    "CREATE INDEX jobs_queue_state_idx ON jobs (queue, state) \
     WHERE state NOT IN ('queued', 'running')",
    "DROP INDEX jobs_parent_idx",
    "CREATE INDEX jobs_parent_idx ON jobs (parent_id) WHERE parent_id IS NOT NULL",
];

const DOWN: &[&str] = &[
    "DROP INDEX jobs_state_id_idx",
    "CREATE INDEX jobs_state_id_idx ON jobs (state, id)",
    "DROP INDEX jobs_queue_state_idx",
    "CREATE INDEX jobs_queue_state_idx ON jobs (queue, state)",
    "DROP INDEX jobs_parent_idx",
    "CREATE INDEX jobs_parent_idx ON jobs (parent_id)",
];

async fn run(manager: &SchemaManager<'_>, statements: &[&str]) -> Result<(), DbErr> {
    let db = manager.get_connection();
    for sql in statements {
        db.execute_unprepared(sql).await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// One transaction: no moment without either index.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run(manager, UP).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run(manager, DOWN).await
    }
}
