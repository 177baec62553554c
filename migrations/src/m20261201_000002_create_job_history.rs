//! Per-minute job history: one row per minute, queue, job type and server
//! replica (each replica writes its own rows; reads sum them), with the
//! minute's counts and its wait and run time histograms as `bucket:count`
//! text (sparse log-scale buckets) plus each histogram's longest duration.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum JobHistory {
    Table,
    Minute,
    Queue,
    JobType,
    Replica,
    Enqueued,
    Started,
    Succeeded,
    Failed,
    Dead,
    Cancelled,
    WaitBuckets,
    WaitMaxMs,
    RunBuckets,
    RunMaxMs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let count = |column: JobHistory| {
            ColumnDef::new(column)
                .big_integer()
                .not_null()
                .default(0)
                .to_owned()
        };
        manager
            .create_table(
                Table::create()
                    .table(JobHistory::Table)
                    .col(ColumnDef::new(JobHistory::Minute).big_integer().not_null())
                    .col(ColumnDef::new(JobHistory::Queue).text().not_null())
                    .col(ColumnDef::new(JobHistory::JobType).text().not_null())
                    .col(
                        ColumnDef::new(JobHistory::Replica)
                            .string_len(36)
                            .not_null(),
                    )
                    .col(count(JobHistory::Enqueued))
                    .col(count(JobHistory::Started))
                    .col(count(JobHistory::Succeeded))
                    .col(count(JobHistory::Failed))
                    .col(count(JobHistory::Dead))
                    .col(count(JobHistory::Cancelled))
                    .col(
                        ColumnDef::new(JobHistory::WaitBuckets)
                            .text()
                            .not_null()
                            .default(""),
                    )
                    .col(count(JobHistory::WaitMaxMs))
                    .col(
                        ColumnDef::new(JobHistory::RunBuckets)
                            .text()
                            .not_null()
                            .default(""),
                    )
                    .col(count(JobHistory::RunMaxMs))
                    // Reads and pruning go by minute range: the key's prefix serves both.
                    .primary_key(
                        Index::create()
                            .col(JobHistory::Minute)
                            .col(JobHistory::Queue)
                            .col(JobHistory::JobType)
                            .col(JobHistory::Replica),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(JobHistory::Table).to_owned())
            .await
    }
}
