//! sea-orm entities of the tables the migrations create, for the queries that
//! are not on the hot path (the hot path is raw SQL in `sql.rs`). They never
//! leave `store/`.

/// The `job_attempts` table.
pub mod job_attempts {
    use sea_orm::entity::prelude::*;

    /// One ended history entry of one job: an attempt, or a client's action.
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
        pub seq: i32,
        pub kind: String,
        pub cancel_requested: bool,
        pub then_state: Option<String>,
        pub then_run_at: Option<i64>,
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
        pub rate_burst: f64,
        /// The rate limit's bucket, spent by leases under the row's lock.
        pub rate_tokens: Option<f64>,
        pub rate_refilled_at: Option<i64>,
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
        pub lease_ms: Option<i64>,
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
        pub missed_ticks: String,
    }

    /// No relations are navigated through sea-orm.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
