//! sea-orm entities of the tables the migrations create. They never leave `store/`.

/// The `jobs` table.
pub mod jobs {
    use sea_orm::entity::prelude::*;

    /// One row of `jobs`; times are milliseconds since the Unix epoch.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "jobs")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub job_type: String,
        pub queue: String,
        pub payload: String,
        pub priority: i32,
        pub run_at: i64,
        pub max_attempts: i32,
        pub timeout_ms: i64,
        pub backoff_base_ms: i64,
        pub backoff_max_ms: i64,
        pub unique_key: Option<String>,
        pub tags: String,
        pub parent_id: Option<String>,
        pub traceparent: Option<String>,
        pub state: String,
        pub attempt: i32,
        pub progress_percent: i32,
        pub progress_message: String,
        pub result: Option<String>,
        pub last_error: Option<String>,
        pub cancel_requested: bool,
        pub lease_token: Option<String>,
        pub worker_id: Option<String>,
        pub lease_expires_at: Option<i64>,
        pub attempt_deadline: Option<i64>,
        pub created_at: i64,
        pub started_at: Option<i64>,
        pub finished_at: Option<i64>,
        pub updated_at: i64,
        pub schedule_name: Option<String>,
    }

    /// No relations are navigated through sea-orm.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `job_attempts` table.
pub mod job_attempts {
    use sea_orm::entity::prelude::*;

    /// One attempt of one job.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "job_attempts")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub job_id: String,
        pub number: i32,
        pub worker_id: String,
        pub lease_token: String,
        pub started_at: i64,
        pub finished_at: Option<i64>,
        pub outcome: Option<String>,
        pub error: Option<String>,
    }

    /// No relations are navigated through sea-orm.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `job_dependencies` table: job_id waits for depends_on_id.
pub mod job_dependencies {
    use sea_orm::entity::prelude::*;

    /// One edge of the dependency graph.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "job_dependencies")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub job_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub depends_on_id: String,
    }

    /// No relations are navigated through sea-orm.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `queues` table: controls of queues that have any.
pub mod queues {
    use sea_orm::entity::prelude::*;

    /// Controls of one queue.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "queues")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        pub paused: bool,
        pub concurrency_limit: i32,
        pub rate_limit_per_second: f64,
        pub updated_at: i64,
    }

    /// No relations are navigated through sea-orm.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `workers` table: the worker registry.
pub mod workers {
    use sea_orm::entity::prelude::*;

    /// One worker as last heard from.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "workers")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub worker_id: String,
        pub hostname: String,
        pub version: String,
        pub queues: String,
        pub types: String,
        pub first_seen_at: i64,
        pub last_seen_at: i64,
    }

    /// No relations are navigated through sea-orm.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `schedules` table: cron schedules.
pub mod schedules {
    use sea_orm::entity::prelude::*;

    /// One schedule; the job template is JSON.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "schedules")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        pub cron: String,
        pub time_zone: String,
        pub job_template: String,
        pub paused: bool,
        pub next_run_at: i64,
        pub last_run_at: Option<i64>,
        pub last_job_id: Option<String>,
        pub created_at: i64,
        pub updated_at: i64,
    }

    /// No relations are navigated through sea-orm.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
