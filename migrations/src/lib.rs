//! The jobq schema as sea-orm migrations, one file per change. The server runs
//! [`Migrator`] at start; the same migrations serve SQLite and PostgreSQL.

pub use sea_orm_migration::prelude::*;

mod m20261128_000001_create_jobs;
mod m20261128_000002_create_dependencies_queues_workers_schedules;
mod m20261128_000003_create_job_log_lines;
mod m20261130_000001_add_history_and_write_path;
mod m20261130_000002_add_queue_limits_and_concurrency_keys;
mod m20261201_000001_add_job_search;
mod m20261201_000002_create_job_history;
mod m20261201_000003_defer_job_search_index;
mod m20261201_000004_narrow_list_indexes;

/// Every migration of the jobq schema, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261128_000001_create_jobs::Migration),
            Box::new(m20261128_000002_create_dependencies_queues_workers_schedules::Migration),
            Box::new(m20261128_000003_create_job_log_lines::Migration),
            Box::new(m20261130_000001_add_history_and_write_path::Migration),
            Box::new(m20261130_000002_add_queue_limits_and_concurrency_keys::Migration),
            Box::new(m20261201_000001_add_job_search::Migration),
            Box::new(m20261201_000002_create_job_history::Migration),
            Box::new(m20261201_000003_defer_job_search_index::Migration),
            Box::new(m20261201_000004_narrow_list_indexes::Migration),
        ]
    }
}
