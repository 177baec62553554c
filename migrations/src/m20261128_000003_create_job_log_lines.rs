//! Job log lines in the database, for PostgreSQL deployments where several
//! replicas must serve every job's log (SQLite keeps them in files only).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum JobLogLines {
    Table,
    JobId,
    Position,
    Attempt,
    Stream,
    Time,
    Message,
    Fields,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(JobLogLines::Table)
                    .col(ColumnDef::new(JobLogLines::JobId).string_len(36).not_null())
                    .col(
                        ColumnDef::new(JobLogLines::Position)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(JobLogLines::Attempt).integer().not_null())
                    .col(
                        ColumnDef::new(JobLogLines::Stream)
                            .string_len(16)
                            .not_null(),
                    )
                    .col(ColumnDef::new(JobLogLines::Time).big_integer().not_null())
                    .col(ColumnDef::new(JobLogLines::Message).text().not_null())
                    .col(ColumnDef::new(JobLogLines::Fields).text().null())
                    // Replay reads a job's lines in position order: the key serves it.
                    .primary_key(
                        Index::create()
                            .col(JobLogLines::JobId)
                            .col(JobLogLines::Position),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(JobLogLines::Table).to_owned())
            .await
    }
}
