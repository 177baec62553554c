//! Job dependencies, queue controls, the worker registry and cron schedules.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum JobDependencies {
    Table,
    JobId,
    DependsOnId,
}

#[derive(DeriveIden)]
enum Queues {
    Table,
    Name,
    Paused,
    ConcurrencyLimit,
    RateLimitPerSecond,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Workers {
    Table,
    WorkerId,
    Hostname,
    Version,
    Queues,
    Types,
    FirstSeenAt,
    LastSeenAt,
}

#[derive(DeriveIden)]
enum Schedules {
    Table,
    Name,
    Cron,
    TimeZone,
    JobTemplate,
    Paused,
    NextRunAt,
    LastRunAt,
    LastJobId,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Jobs {
    Table,
    Id,
    ScheduleName,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(JobDependencies::Table)
                    .col(
                        ColumnDef::new(JobDependencies::JobId)
                            .string_len(36)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(JobDependencies::DependsOnId)
                            .string_len(36)
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(JobDependencies::JobId)
                            .col(JobDependencies::DependsOnId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(JobDependencies::Table, JobDependencies::JobId)
                            .to(Jobs::Table, Jobs::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // Finding the dependents of a job that just finished.
        manager
            .create_index(
                Index::create()
                    .name("job_dependencies_depends_on_idx")
                    .table(JobDependencies::Table)
                    .col(JobDependencies::DependsOnId)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Jobs::Table)
                    .add_column(ColumnDef::new(Jobs::ScheduleName).string().null())
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Queues::Table)
                    .col(
                        ColumnDef::new(Queues::Name)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Queues::Paused).boolean().not_null())
                    .col(
                        ColumnDef::new(Queues::ConcurrencyLimit)
                            .integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Queues::RateLimitPerSecond)
                            .double()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Queues::UpdatedAt).big_integer().not_null())
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Workers::Table)
                    .col(
                        ColumnDef::new(Workers::WorkerId)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Workers::Hostname).string().not_null())
                    .col(ColumnDef::new(Workers::Version).string().not_null())
                    .col(ColumnDef::new(Workers::Queues).text().not_null())
                    .col(ColumnDef::new(Workers::Types).text().not_null())
                    .col(
                        ColumnDef::new(Workers::FirstSeenAt)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Workers::LastSeenAt).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("workers_last_seen_idx")
                    .table(Workers::Table)
                    .col(Workers::LastSeenAt)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Schedules::Table)
                    .col(
                        ColumnDef::new(Schedules::Name)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Schedules::Cron).string().not_null())
                    .col(ColumnDef::new(Schedules::TimeZone).string().not_null())
                    .col(ColumnDef::new(Schedules::JobTemplate).text().not_null())
                    .col(ColumnDef::new(Schedules::Paused).boolean().not_null())
                    .col(
                        ColumnDef::new(Schedules::NextRunAt)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Schedules::LastRunAt).big_integer().null())
                    .col(ColumnDef::new(Schedules::LastJobId).string_len(36).null())
                    .col(
                        ColumnDef::new(Schedules::CreatedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Schedules::UpdatedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("schedules_next_run_idx")
                    .table(Schedules::Table)
                    .col(Schedules::NextRunAt)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Schedules::Table.into_iden(),
            Workers::Table.into_iden(),
            Queues::Table.into_iden(),
            JobDependencies::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Jobs::Table)
                    .drop_column(Jobs::ScheduleName)
                    .to_owned(),
            )
            .await
    }
}
