//! Limits that hold across replicas: a rate-limited queue keeps its token
//! bucket in its row (read and spent under the row's lock), and a rate burst;
//! a job may carry a concurrency key with a limit; a schedule says what it
//! does about ticks missed while no server ran.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Jobs {
    Table,
    ConcurrencyKey,
    ConcurrencyLimit,
}

#[derive(DeriveIden)]
enum Queues {
    Table,
    RateBurst,
    RateTokens,
    RateRefilledAt,
}

#[derive(DeriveIden)]
enum Schedules {
    Table,
    MissedTicks,
}

async fn add_column(
    manager: &SchemaManager<'_>,
    table: impl IntoIden,
    mut column: ColumnDef,
) -> Result<(), DbErr> {
    // One column per ALTER TABLE: SQLite takes no more.
    manager
        .alter_table(
            Table::alter()
                .table(table)
                .add_column(&mut column)
                .to_owned(),
        )
        .await
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        add_column(
            manager,
            Jobs::Table,
            ColumnDef::new(Jobs::ConcurrencyKey)
                .string()
                .null()
                .to_owned(),
        )
        .await?;
        add_column(
            manager,
            Jobs::Table,
            ColumnDef::new(Jobs::ConcurrencyLimit)
                .integer()
                .not_null()
                .default(0)
                .to_owned(),
        )
        .await?;
        add_column(
            manager,
            Queues::Table,
            ColumnDef::new(Queues::RateBurst)
                .double()
                .not_null()
                .default(0.0)
                .to_owned(),
        )
        .await?;
        add_column(
            manager,
            Queues::Table,
            ColumnDef::new(Queues::RateTokens)
                .double()
                .null()
                .to_owned(),
        )
        .await?;
        add_column(
            manager,
            Queues::Table,
            ColumnDef::new(Queues::RateRefilledAt)
                .big_integer()
                .null()
                .to_owned(),
        )
        .await?;
        add_column(
            manager,
            Schedules::Table,
            ColumnDef::new(Schedules::MissedTicks)
                .string_len(16)
                .not_null()
                .default("run_once")
                .to_owned(),
        )
        .await?;
        // Leasing counts the running jobs of each key it meets; only jobs
        // with a key are in this index, so others pay nothing for it.
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX jobs_running_key_idx ON jobs (concurrency_key) \
                 WHERE state = 'running' AND concurrency_key IS NOT NULL",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "the queue limits migration cannot be undone".into(),
        ))
    }
}
