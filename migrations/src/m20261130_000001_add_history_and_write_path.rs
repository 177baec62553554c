//! The history and the batched write path: each job counts its history
//! entries (attempts and clients' actions, which the log is told from), keeps
//! its running attempt and lease length on its own row (an attempt row is
//! written once, when it ends), its payload size (to size lease answers), an
//! idempotency key, and whether other jobs depend on it. Log lines get the
//! worker's sequence number, so a retried push is not stored twice.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Jobs {
    Table,
    PayloadBytes,
    LeaseMs,
    HistorySeq,
    RequestKey,
    AttemptStartedAt,
    HasDependents,
}

#[derive(DeriveIden)]
enum JobAttempts {
    Table,
    Seq,
    Kind,
    CancelRequested,
    ThenState,
    ThenRunAt,
}

#[derive(DeriveIden)]
enum Workers {
    Table,
    LeaseMs,
}

#[derive(DeriveIden)]
enum JobLogLines {
    Table,
    Cseq,
}

/// The same SQL on SQLite and PostgreSQL, run in order after the columns exist.
const STATEMENTS: &[&str] = &[
    // EnqueueJob(s) with a request_id: at most one job per key.
    "CREATE UNIQUE INDEX jobs_request_key_idx ON jobs (request_key) WHERE request_key IS NOT NULL",
    // Retention: finished jobs, oldest first.
    "CREATE INDEX jobs_finished_idx ON jobs (finished_at) \
     WHERE state IN ('succeeded', 'cancelled', 'dead')",
    // A job's history in order; every read of the history is by job, so
    // this one index serves them all and the two older ones go (each was
    // one more index insert per finished attempt).
    "CREATE INDEX job_attempts_seq_idx ON job_attempts (job_id, seq)",
    "DROP INDEX job_attempts_job_idx",
    "DROP INDEX job_attempts_lease_idx",
    // Number the attempts stored so far, in the order they were written.
    "UPDATE job_attempts SET seq = (SELECT COUNT(*) FROM job_attempts AS earlier \
     WHERE earlier.job_id = job_attempts.job_id AND earlier.id <= job_attempts.id)",
    // A running job now keeps its attempt on its own row until it ends.
    "UPDATE jobs SET attempt_started_at = (SELECT MAX(started_at) FROM job_attempts \
     WHERE job_attempts.job_id = jobs.id AND job_attempts.finished_at IS NULL) \
     WHERE state = 'running'",
    "UPDATE jobs SET history_seq = COALESCE((SELECT MAX(seq) FROM job_attempts \
     WHERE job_attempts.job_id = jobs.id), 0)",
    "DELETE FROM job_attempts WHERE finished_at IS NULL",
    "UPDATE jobs SET has_dependents = TRUE WHERE id IN (SELECT depends_on_id FROM job_dependencies)",
    "UPDATE jobs SET payload_bytes = octet_length(payload)",
    // Log positions become (entry << 32) | line; old lines keep their order.
    "UPDATE job_log_lines SET position = attempt * 4294967296 + position",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per ALTER TABLE: SQLite takes no more.
        let job_columns = [
            ColumnDef::new(Jobs::PayloadBytes)
                .big_integer()
                .not_null()
                .default(0)
                .to_owned(),
            ColumnDef::new(Jobs::LeaseMs)
                .big_integer()
                .null()
                .to_owned(),
            ColumnDef::new(Jobs::HistorySeq)
                .integer()
                .not_null()
                .default(0)
                .to_owned(),
            ColumnDef::new(Jobs::RequestKey).string().null().to_owned(),
            ColumnDef::new(Jobs::AttemptStartedAt)
                .big_integer()
                .null()
                .to_owned(),
            ColumnDef::new(Jobs::HasDependents)
                .boolean()
                .not_null()
                .default(false)
                .to_owned(),
        ];
        for mut column in job_columns {
            manager
                .alter_table(
                    Table::alter()
                        .table(Jobs::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        let attempt_columns = [
            ColumnDef::new(JobAttempts::Seq)
                .integer()
                .not_null()
                .default(0)
                .to_owned(),
            ColumnDef::new(JobAttempts::Kind)
                .string_len(16)
                .not_null()
                .default("attempt")
                .to_owned(),
            ColumnDef::new(JobAttempts::CancelRequested)
                .boolean()
                .not_null()
                .default(false)
                .to_owned(),
            ColumnDef::new(JobAttempts::ThenState)
                .string_len(16)
                .null()
                .to_owned(),
            ColumnDef::new(JobAttempts::ThenRunAt)
                .big_integer()
                .null()
                .to_owned(),
        ];
        for mut column in attempt_columns {
            manager
                .alter_table(
                    Table::alter()
                        .table(JobAttempts::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Workers::Table)
                    .add_column(ColumnDef::new(Workers::LeaseMs).big_integer().null())
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(JobLogLines::Table)
                    .add_column(ColumnDef::new(JobLogLines::Cseq).big_integer().null())
                    .to_owned(),
            )
            .await?;
        let db = manager.get_connection();
        for sql in STATEMENTS {
            db.execute_unprepared(sql).await?;
        }
        // The reaper looks for running jobs whose lease or deadline passed:
        // one index on the earlier of the two instead of one each (every
        // start and end of an attempt wrote both).
        let earliest = match manager.get_database_backend() {
            sea_orm::DbBackend::Postgres => "LEAST",
            _ => "MIN",
        };
        db.execute_unprepared(&format!(
            "CREATE INDEX jobs_running_due_idx ON jobs \
             ({earliest}(lease_expires_at, attempt_deadline)) WHERE state = 'running'"
        ))
        .await?;
        db.execute_unprepared("DROP INDEX jobs_running_idx").await?;
        db.execute_unprepared("DROP INDEX jobs_deadline_idx")
            .await?;
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "the history and write-path migration cannot be undone".into(),
        ))
    }
}
