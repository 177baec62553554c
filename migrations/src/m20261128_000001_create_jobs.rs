//! Jobs and their attempt history, with the indexes the lease, reaper,
//! promotion, list and stats queries use.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Jobs {
    Table,
    Id,
    JobType,
    Queue,
    Payload,
    Priority,
    RunAt,
    MaxAttempts,
    TimeoutMs,
    BackoffBaseMs,
    BackoffMaxMs,
    UniqueKey,
    Tags,
    ParentId,
    Traceparent,
    State,
    Attempt,
    ProgressPercent,
    ProgressMessage,
    Result,
    LastError,
    CancelRequested,
    LeaseToken,
    WorkerId,
    LeaseExpiresAt,
    AttemptDeadline,
    CreatedAt,
    StartedAt,
    FinishedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum JobAttempts {
    Table,
    Id,
    JobId,
    Number,
    WorkerId,
    LeaseToken,
    StartedAt,
    FinishedAt,
    Outcome,
    Error,
}

/// Partial indexes: the same SQL on SQLite and PostgreSQL.
const PARTIAL_INDEXES: &[&str] = &[
    // LeaseJobs: ready jobs of some queues in priority, run_at, id order.
    "CREATE INDEX jobs_lease_idx ON jobs (queue, priority DESC, run_at, id) WHERE state = 'queued'",
    // The reaper: running jobs whose lease or attempt deadline has passed.
    "CREATE INDEX jobs_running_idx ON jobs (lease_expires_at) WHERE state = 'running'",
    "CREATE INDEX jobs_deadline_idx ON jobs (attempt_deadline) WHERE state = 'running'",
    // The promoter: scheduled and retrying jobs whose run_at has come.
    // (state first: SQLite then seeks each waiting state's due range instead
    // of scanning every waiting job.)
    "CREATE INDEX jobs_waiting_idx ON jobs (state, run_at) WHERE state IN ('scheduled', 'retrying')",
    // unique_key: at most one non-terminal job per key.
    "CREATE UNIQUE INDEX jobs_unique_key_idx ON jobs (unique_key) \
     WHERE unique_key IS NOT NULL AND state NOT IN ('succeeded', 'cancelled', 'dead')",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Jobs::Table)
                    .col(
                        ColumnDef::new(Jobs::Id)
                            .string_len(36)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Jobs::JobType).string().not_null())
                    .col(ColumnDef::new(Jobs::Queue).string().not_null())
                    .col(ColumnDef::new(Jobs::Payload).text().not_null())
                    .col(ColumnDef::new(Jobs::Priority).integer().not_null())
                    .col(ColumnDef::new(Jobs::RunAt).big_integer().not_null())
                    .col(ColumnDef::new(Jobs::MaxAttempts).integer().not_null())
                    .col(ColumnDef::new(Jobs::TimeoutMs).big_integer().not_null())
                    .col(ColumnDef::new(Jobs::BackoffBaseMs).big_integer().not_null())
                    .col(ColumnDef::new(Jobs::BackoffMaxMs).big_integer().not_null())
                    .col(ColumnDef::new(Jobs::UniqueKey).string().null())
                    .col(ColumnDef::new(Jobs::Tags).text().not_null())
                    .col(ColumnDef::new(Jobs::ParentId).string_len(36).null())
                    .col(ColumnDef::new(Jobs::Traceparent).string().null())
                    .col(ColumnDef::new(Jobs::State).string_len(16).not_null())
                    .col(ColumnDef::new(Jobs::Attempt).integer().not_null())
                    .col(ColumnDef::new(Jobs::ProgressPercent).integer().not_null())
                    .col(ColumnDef::new(Jobs::ProgressMessage).text().not_null())
                    .col(ColumnDef::new(Jobs::Result).text().null())
                    .col(ColumnDef::new(Jobs::LastError).text().null())
                    .col(ColumnDef::new(Jobs::CancelRequested).boolean().not_null())
                    .col(ColumnDef::new(Jobs::LeaseToken).string_len(36).null())
                    .col(ColumnDef::new(Jobs::WorkerId).string().null())
                    .col(ColumnDef::new(Jobs::LeaseExpiresAt).big_integer().null())
                    .col(ColumnDef::new(Jobs::AttemptDeadline).big_integer().null())
                    .col(ColumnDef::new(Jobs::CreatedAt).big_integer().not_null())
                    .col(ColumnDef::new(Jobs::StartedAt).big_integer().null())
                    .col(ColumnDef::new(Jobs::FinishedAt).big_integer().null())
                    .col(ColumnDef::new(Jobs::UpdatedAt).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(JobAttempts::Table)
                    .col(
                        ColumnDef::new(JobAttempts::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(JobAttempts::JobId).string_len(36).not_null())
                    .col(ColumnDef::new(JobAttempts::Number).integer().not_null())
                    .col(ColumnDef::new(JobAttempts::WorkerId).string().not_null())
                    .col(
                        ColumnDef::new(JobAttempts::LeaseToken)
                            .string_len(36)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(JobAttempts::StartedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(JobAttempts::FinishedAt).big_integer().null())
                    .col(ColumnDef::new(JobAttempts::Outcome).string_len(16).null())
                    .col(ColumnDef::new(JobAttempts::Error).text().null())
                    .foreign_key(
                        ForeignKey::create()
                            .from(JobAttempts::Table, JobAttempts::JobId)
                            .to(Jobs::Table, Jobs::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;

        let plain_indexes = [
            // ListJobs: newest first, optionally by state, queue or type.
            ("jobs_state_id_idx", vec![Jobs::State, Jobs::Id]),
            ("jobs_queue_id_idx", vec![Jobs::Queue, Jobs::Id]),
            ("jobs_type_id_idx", vec![Jobs::JobType, Jobs::Id]),
            // GetQueueStats: counts grouped by queue and state.
            ("jobs_queue_state_idx", vec![Jobs::Queue, Jobs::State]),
            ("jobs_parent_idx", vec![Jobs::ParentId]),
        ];
        for (name, columns) in plain_indexes {
            let mut index = Index::create().name(name).table(Jobs::Table).to_owned();
            for column in columns {
                index.col(column);
            }
            manager.create_index(index).await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("job_attempts_job_idx")
                    .table(JobAttempts::Table)
                    .col(JobAttempts::JobId)
                    // Not unique: a released attempt is not counted, so the
                    // next lease runs under the same number.
                    .col(JobAttempts::Number)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("job_attempts_lease_idx")
                    .table(JobAttempts::Table)
                    .col(JobAttempts::LeaseToken)
                    .to_owned(),
            )
            .await?;

        let db = manager.get_connection();
        for sql in PARTIAL_INDEXES {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(JobAttempts::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Jobs::Table).to_owned())
            .await
    }
}
