//! The job store over sea-orm: SQLite (embedded default) or PostgreSQL,
//! chosen by the database URL. Every method is one transaction.

mod dialect;
mod entity;
mod rows;

use std::collections::BTreeMap;

use async_trait::async_trait;
use jobq_migration::{Migrator, MigratorTrait};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, DatabaseConnection, DatabaseTransaction, DbErr,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};

use crate::domain::{
    Applied, AttemptOutcome, DependencyRule, Job, JobChange, JobFilter, JobId, JobSelector,
    JobState, JobStore, LeaseChange, LeaseQuota, LeaseToken, Millis, QueueControls, QueueError,
    QueueResult, QueueStats, ScheduleRecord, StatsSnapshot, WorkerRecord,
};
use dialect::Dialect;
pub use dialect::{DatabaseKind, advisory_key};
use entity::{job_attempts, job_dependencies, jobs, queues, schedules, workers};
use rows::{
    TERMINAL, WAITING, attempt_from_row, close_attempt, controls_from_row, corrupt, insert_attempt,
    job_from_row, row_from_controls, row_from_job, row_from_schedule, row_from_worker, save_job,
    schedule_from_row, storage, worker_from_row,
};

/// How often a PostgreSQL replica retries its start-up migration.
const MIGRATION_TRIES: u64 = 8;

/// Jobs, queues, workers and schedules in a relational database.
pub struct SqlStore {
    db: DatabaseConnection,
    dialect: Dialect,
}

impl SqlStore {
    /// Connects to `url` and brings the schema up to date.
    pub async fn open(
        url: &str,
        durability: crate::config::SqliteDurability,
    ) -> Result<Self, DbErr> {
        let (db, dialect) = Dialect::connect(url, durability).await?;
        // Replicas starting together race to migrate; the loser's transaction
        // fails and rolls back, and by its next try the winner has finished.
        let mut tries = 0;
        loop {
            match Migrator::up(&db, None).await {
                Ok(()) => break,
                Err(error)
                    if dialect.kind() == DatabaseKind::Postgres && tries < MIGRATION_TRIES =>
                {
                    tries += 1;
                    tracing::warn!(%error, tries, "migration failed; another replica may be migrating, retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(300 * tries)).await;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(Self { db, dialect })
    }

    /// Which engine this store runs on.
    pub fn kind(&self) -> DatabaseKind {
        self.dialect.kind()
    }

    /// The connection pool (for the PostgreSQL notifier).
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Where job logs are recorded: the shared table on PostgreSQL, none
    /// (the log files) on SQLite.
    pub fn log_table(&self) -> Option<DatabaseConnection> {
        (self.kind() == DatabaseKind::Postgres).then(|| self.db.clone())
    }

    /// Closes the connection pool.
    pub async fn close(self) -> Result<(), DbErr> {
        self.db.close().await
    }

    async fn begin_write(
        &self,
    ) -> QueueResult<(Option<tokio::sync::MutexGuard<'_, ()>>, DatabaseTransaction)> {
        let guard = self.dialect.writer().await;
        let tx = self.db.begin().await.map_err(storage)?;
        Ok((guard, tx))
    }

    async fn load_for_update(&self, tx: &DatabaseTransaction, id: &JobId) -> QueueResult<Job> {
        let select = self
            .dialect
            .lock_for_update(jobs::Entity::find_by_id(id.as_str()), false);
        let model = select.one(tx).await.map_err(storage)?;
        model
            .map(job_from_row)
            .transpose()?
            .ok_or_else(|| QueueError::JobNotFound(id.to_string()))
    }

    async fn unique_key_holder(
        &self,
        tx: &DatabaseTransaction,
        key: &str,
    ) -> QueueResult<Option<Job>> {
        jobs::Entity::find()
            .filter(jobs::Column::UniqueKey.eq(key))
            .filter(jobs::Column::State.is_not_in(TERMINAL))
            .one(tx)
            .await
            .map_err(storage)?
            .map(job_from_row)
            .transpose()
    }

    async fn insert_job(&self, tx: &DatabaseTransaction, job: &Job) -> QueueResult<()> {
        jobs::Entity::insert(row_from_job(job))
            .exec(tx)
            .await
            .map_err(storage)?;
        if !job.depends_on.is_empty() {
            let edges = job
                .depends_on
                .iter()
                .map(|dependency| job_dependencies::ActiveModel {
                    job_id: Set(job.id.to_string()),
                    depends_on_id: Set(dependency.to_string()),
                });
            job_dependencies::Entity::insert_many(edges)
                .exec(tx)
                .await
                .map_err(storage)?;
        }
        Ok(())
    }

    /// Candidates for a lease: queued jobs in lease order, rows held by
    /// other transactions skipped.
    async fn lease_candidates(
        &self,
        tx: &DatabaseTransaction,
        queues: &[String],
        types: &[String],
        limit: u64,
    ) -> QueueResult<Vec<jobs::Model>> {
        let select = self
            .dialect
            .lock_for_update(lease_select(queues, types, limit), true);
        select.all(tx).await.map_err(storage)
    }

    async fn running_in_queue(&self, tx: &DatabaseTransaction, queue: &str) -> QueueResult<i64> {
        let count: Option<i64> = jobs::Entity::find()
            .select_only()
            .column_as(count_rows(), "running")
            .filter(jobs::Column::Queue.eq(queue))
            .filter(jobs::Column::State.eq(JobState::Running.as_str()))
            .into_tuple()
            .one(tx)
            .await
            .map_err(storage)?;
        Ok(count.unwrap_or(0))
    }
}

/// The hot lease query: served by the partial index `jobs_lease_idx`.
fn lease_select(queues: &[String], types: &[String], limit: u64) -> sea_orm::Select<jobs::Entity> {
    let mut select = jobs::Entity::find()
        .filter(jobs::Column::State.eq(JobState::Queued.as_str()))
        .filter(jobs::Column::Queue.is_in(queues.iter().map(String::as_str)));
    if !types.is_empty() {
        select = select.filter(jobs::Column::JobType.is_in(types.iter().map(String::as_str)));
    }
    select
        .order_by_desc(jobs::Column::Priority)
        .order_by_asc(jobs::Column::RunAt)
        .order_by_asc(jobs::Column::Id)
        .limit(limit)
}

/// The reaper's scan: running jobs past their lease or attempt deadline.
fn expired_select(
    now: Millis,
    limit: u64,
) -> sea_orm::Selector<sea_orm::SelectGetableTuple<String>> {
    jobs::Entity::find()
        .select_only()
        .column(jobs::Column::Id)
        .filter(jobs::Column::State.eq(JobState::Running.as_str()))
        .filter(
            Condition::any()
                .add(jobs::Column::LeaseExpiresAt.lte(now))
                .add(jobs::Column::AttemptDeadline.lte(now)),
        )
        .limit(limit)
        .into_tuple()
}

/// The hot queries as the given engine runs them, for EXPLAIN in tests and docs.
pub fn hot_queries(kind: DatabaseKind) -> Vec<(&'static str, String)> {
    use sea_orm::QueryTrait;
    let backend = match kind {
        DatabaseKind::Sqlite => sea_orm::DbBackend::Sqlite,
        DatabaseKind::Postgres => sea_orm::DbBackend::Postgres,
    };
    let queues = ["default".to_owned()];
    let mut lease = lease_select(&queues, &[], 10);
    if kind == DatabaseKind::Postgres {
        lease = lease.lock_with_behavior(
            sea_orm::sea_query::LockType::Update,
            sea_orm::sea_query::LockBehavior::SkipLocked,
        );
    }
    let due = jobs::Entity::find()
        .select_only()
        .column(jobs::Column::Id)
        .filter(jobs::Column::State.is_in(WAITING))
        .filter(jobs::Column::RunAt.lte(0))
        .order_by_asc(jobs::Column::RunAt)
        .limit(1000);
    vec![
        ("lease", lease.build(backend).to_string()),
        ("promote", due.build(backend).to_string()),
        (
            "reap",
            expired_select(0, 500).into_statement(backend).to_string(),
        ),
    ]
}

/// `COUNT(*)`: unlike `COUNT(id)` it can be answered from an index alone.
fn count_rows() -> sea_orm::sea_query::SimpleExpr {
    sea_orm::sea_query::Expr::cust("COUNT(*)")
}

fn ids(raw: Vec<String>) -> Vec<JobId> {
    raw.into_iter().map(JobId::from_stored).collect()
}

fn parse_state(raw: &str, id: &str) -> QueueResult<JobState> {
    raw.parse::<JobState>().map_err(|e| corrupt("state", id, e))
}

#[async_trait]
impl JobStore for SqlStore {
    async fn insert_jobs(
        &self,
        new_jobs: Vec<Job>,
        rule: DependencyRule,
        now: Millis,
    ) -> QueueResult<Vec<(Job, bool)>> {
        let (_writer, tx) = self.begin_write().await?;
        let mut stored: Vec<(Job, bool)> = Vec::with_capacity(new_jobs.len());
        for mut job in new_jobs {
            if let Some(key) = job.unique_key.clone() {
                if let Some(holder) = self.unique_key_holder(&tx, &key).await? {
                    stored.push((holder, true));
                    continue;
                }
                // A job earlier in this same batch may hold the key.
                let earlier = stored
                    .iter()
                    .find(|(other, _)| other.unique_key.as_deref() == Some(key.as_str()));
                if let Some((earlier, _)) = earlier {
                    let earlier = earlier.clone();
                    stored.push((earlier, true));
                    continue;
                }
            }
            if !job.depends_on.is_empty() {
                let select = jobs::Entity::find()
                    .select_only()
                    .column(jobs::Column::Id)
                    .column(jobs::Column::State)
                    .filter(jobs::Column::Id.is_in(job.depends_on.iter().map(JobId::as_str)));
                let rows: Vec<(String, String)> = self
                    .dialect
                    .lock_for_share(select)
                    .into_tuple()
                    .all(&tx)
                    .await
                    .map_err(storage)?;
                let states = rows
                    .into_iter()
                    .map(|(id, state)| {
                        Ok((JobId::from_stored(id.clone()), parse_state(&state, &id)?))
                    })
                    .collect::<QueueResult<Vec<_>>>()?;
                rule(&mut job, &states, now);
            }
            self.insert_job(&tx, &job).await?;
            stored.push((job, false));
        }
        tx.commit().await.map_err(storage)?;
        Ok(stored)
    }

    async fn get_job(&self, id: &JobId, with_attempts: bool) -> QueueResult<Option<Job>> {
        let Some(row) = jobs::Entity::find_by_id(id.as_str())
            .one(&self.db)
            .await
            .map_err(storage)?
        else {
            return Ok(None);
        };
        let mut job = job_from_row(row)?;
        let depends_on: Vec<String> = job_dependencies::Entity::find()
            .select_only()
            .column(job_dependencies::Column::DependsOnId)
            .filter(job_dependencies::Column::JobId.eq(id.as_str()))
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(storage)?;
        job.depends_on = ids(depends_on);
        if with_attempts {
            job.attempts = job_attempts::Entity::find()
                .filter(job_attempts::Column::JobId.eq(id.as_str()))
                .order_by_asc(job_attempts::Column::Id)
                .all(&self.db)
                .await
                .map_err(storage)?
                .into_iter()
                .map(attempt_from_row)
                .collect();
        }
        Ok(Some(job))
    }

    async fn job_states(&self, wanted: &[JobId]) -> QueueResult<Vec<(JobId, JobState)>> {
        let rows: Vec<(String, String)> = jobs::Entity::find()
            .select_only()
            .column(jobs::Column::Id)
            .column(jobs::Column::State)
            .filter(jobs::Column::Id.is_in(wanted.iter().map(JobId::as_str)))
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(storage)?;
        rows.into_iter()
            .map(|(id, state)| Ok((JobId::from_stored(id.clone()), parse_state(&state, &id)?)))
            .collect()
    }

    async fn list_jobs(
        &self,
        filter: &JobFilter,
        before_id: Option<&JobId>,
        limit: u64,
    ) -> QueueResult<Vec<Job>> {
        let mut condition = Condition::all();
        if !filter.states.is_empty() {
            condition = condition
                .add(jobs::Column::State.is_in(filter.states.iter().map(|state| state.as_str())));
        }
        if !filter.types.is_empty() {
            condition =
                condition.add(jobs::Column::JobType.is_in(filter.types.iter().map(String::as_str)));
        }
        if !filter.queues.is_empty() {
            condition =
                condition.add(jobs::Column::Queue.is_in(filter.queues.iter().map(String::as_str)));
        }
        if let Some(after) = filter.created_after {
            condition = condition.add(jobs::Column::CreatedAt.gte(after));
        }
        if let Some(before) = filter.created_before {
            condition = condition.add(jobs::Column::CreatedAt.lt(before));
        }
        if let Some(parent_id) = &filter.parent_id {
            condition = condition.add(jobs::Column::ParentId.eq(parent_id.as_str()));
        }
        if let Some(text) = &filter.search {
            condition = condition.add(match JobId::parse(text, "search") {
                // A whole id is looked up by key, not by scanning.
                Ok(id) => Condition::all().add(jobs::Column::Id.eq(id.as_str())),
                Err(_) => Condition::any()
                    .add(jobs::Column::Id.contains(text))
                    .add(jobs::Column::JobType.contains(text))
                    .add(jobs::Column::UniqueKey.contains(text)),
            });
        }
        if let Some(before_id) = before_id {
            condition = condition.add(jobs::Column::Id.lt(before_id.as_str()));
        }
        let mut listed = jobs::Entity::find()
            .filter(condition)
            .order_by_desc(jobs::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await
            .map_err(storage)?
            .into_iter()
            .map(job_from_row)
            .collect::<QueueResult<Vec<_>>>()?;
        // Dependencies of the whole page in one query.
        let edges: Vec<(String, String)> = job_dependencies::Entity::find()
            .select_only()
            .column(job_dependencies::Column::JobId)
            .column(job_dependencies::Column::DependsOnId)
            .filter(job_dependencies::Column::JobId.is_in(listed.iter().map(|job| job.id.as_str())))
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(storage)?;
        for (job_id, dependency) in edges {
            if let Some(job) = listed.iter_mut().find(|job| job.id.as_str() == job_id) {
                job.depends_on.push(JobId::from_stored(dependency));
            }
        }
        Ok(listed)
    }

    async fn select_jobs(&self, selector: &JobSelector) -> QueueResult<Vec<JobId>> {
        let mut select = jobs::Entity::find().select_only().column(jobs::Column::Id);
        if selector.ids.is_empty() {
            select = select.filter(
                jobs::Column::State.is_in(selector.states.iter().map(|state| state.as_str())),
            );
            if !selector.queues.is_empty() {
                select = select
                    .filter(jobs::Column::Queue.is_in(selector.queues.iter().map(String::as_str)));
            }
            if !selector.types.is_empty() {
                select = select
                    .filter(jobs::Column::JobType.is_in(selector.types.iter().map(String::as_str)));
            }
        } else {
            select = select.filter(jobs::Column::Id.is_in(selector.ids.iter().map(JobId::as_str)));
        }
        let found: Vec<String> = select
            .order_by_asc(jobs::Column::Id)
            .limit(selector.limit)
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(storage)?;
        Ok(ids(found))
    }

    async fn update_job(&self, id: &JobId, change: JobChange<'_>) -> QueueResult<Applied> {
        let mut outcomes = self.update_jobs(vec![(id.clone(), change)]).await?;
        outcomes.pop().unwrap_or_else(|| {
            Err(QueueError::Storage(
                "a batch of one answered nothing".into(),
            ))
        })
    }

    async fn update_jobs(
        &self,
        changes: Vec<(JobId, JobChange<'_>)>,
    ) -> QueueResult<Vec<QueueResult<Applied>>> {
        let (_writer, tx) = self.begin_write().await?;
        let mut outcomes = Vec::with_capacity(changes.len());
        for (id, change) in changes {
            let mut job = match self.load_for_update(&tx, &id).await {
                Ok(job) => job,
                Err(QueueError::JobNotFound(missing)) => {
                    outcomes.push(Err(QueueError::JobNotFound(missing)));
                    continue;
                }
                Err(other) => return Err(other),
            };
            let before = job.clone();
            // The change refuses before anything of its job is written.
            let ended = match change(&mut job) {
                Ok(ended) => ended,
                Err(refused) => {
                    outcomes.push(Err(refused));
                    continue;
                }
            };
            if job != before {
                save_job(&tx, &job).await?;
            }
            if let Some(end) = &ended {
                close_attempt(&tx, &id, end).await?;
            }
            outcomes.push(Ok(Applied { before, job, ended }));
        }
        tx.commit().await.map_err(storage)?;
        Ok(outcomes)
    }

    async fn lease_jobs(
        &self,
        quota: &LeaseQuota,
        types: &[String],
        limit: u64,
        lease: LeaseChange<'_>,
    ) -> QueueResult<Vec<(Job, LeaseToken)>> {
        let (_writer, tx) = self.begin_write().await?;
        let mut rows = Vec::new();
        if !quota.unlimited.is_empty() {
            rows = self
                .lease_candidates(&tx, &quota.unlimited, types, limit)
                .await?;
        }
        for (queue, concurrency_limit) in &quota.limited {
            self.dialect.lock_queue(&tx, queue).await.map_err(storage)?;
            let free = (concurrency_limit - self.running_in_queue(&tx, queue).await?).max(0) as u64;
            if free > 0 {
                let queue = std::slice::from_ref(queue);
                rows.extend(
                    self.lease_candidates(&tx, queue, types, free.min(limit))
                        .await?,
                );
            }
        }
        // Several queries: restore the one lease order across them.
        rows.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then(a.run_at.cmp(&b.run_at))
                .then(a.id.cmp(&b.id))
        });
        rows.truncate(limit as usize);
        let mut leased = Vec::with_capacity(rows.len());
        for row in rows {
            let mut job = job_from_row(row)?;
            let (token, attempt) = lease(&mut job);
            save_job(&tx, &job).await?;
            insert_attempt(&tx, &job.id, &token, &attempt).await?;
            leased.push((job, token));
        }
        tx.commit().await.map_err(storage)?;
        Ok(leased)
    }

    async fn delete_job(
        &self,
        id: &JobId,
        check: for<'j> fn(&'j Job) -> QueueResult<()>,
    ) -> QueueResult<Job> {
        let (_writer, tx) = self.begin_write().await?;
        let job = self.load_for_update(&tx, id).await?;
        check(&job)?;
        job_attempts::Entity::delete_many()
            .filter(job_attempts::Column::JobId.eq(id.as_str()))
            .exec(&tx)
            .await
            .map_err(storage)?;
        job_dependencies::Entity::delete_many()
            .filter(job_dependencies::Column::JobId.eq(id.as_str()))
            .exec(&tx)
            .await
            .map_err(storage)?;
        jobs::Entity::delete_by_id(id.as_str())
            .exec(&tx)
            .await
            .map_err(storage)?;
        tx.commit().await.map_err(storage)?;
        Ok(job)
    }

    async fn expired_jobs(&self, now: Millis, limit: u64) -> QueueResult<Vec<JobId>> {
        let found = expired_select(now, limit)
            .all(&self.db)
            .await
            .map_err(storage)?;
        Ok(ids(found))
    }

    async fn due_jobs(&self, now: Millis, limit: u64) -> QueueResult<Vec<JobId>> {
        let found: Vec<String> = jobs::Entity::find()
            .select_only()
            .column(jobs::Column::Id)
            .filter(jobs::Column::State.is_in(WAITING))
            .filter(jobs::Column::RunAt.lte(now))
            .order_by_asc(jobs::Column::RunAt)
            .limit(limit)
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(storage)?;
        Ok(ids(found))
    }

    async fn next_due_at(&self) -> QueueResult<Option<Millis>> {
        let next: Option<Option<i64>> = jobs::Entity::find()
            .select_only()
            .column_as(jobs::Column::RunAt.min(), "next_run_at")
            .filter(jobs::Column::State.is_in(WAITING))
            .into_tuple()
            .one(&self.db)
            .await
            .map_err(storage)?;
        Ok(next.flatten())
    }

    async fn attempt_outcome(
        &self,
        id: &JobId,
        token: &LeaseToken,
    ) -> QueueResult<Option<AttemptOutcome>> {
        let row = job_attempts::Entity::find()
            .filter(job_attempts::Column::JobId.eq(id.as_str()))
            .filter(job_attempts::Column::LeaseToken.eq(token.as_str()))
            .one(&self.db)
            .await
            .map_err(storage)?;
        Ok(row.and_then(|row| row.outcome.as_deref().and_then(AttemptOutcome::parse)))
    }

    async fn dependency_states(&self, id: &JobId) -> QueueResult<Vec<(JobId, JobState)>> {
        let dependencies: Vec<String> = job_dependencies::Entity::find()
            .select_only()
            .column(job_dependencies::Column::DependsOnId)
            .filter(job_dependencies::Column::JobId.eq(id.as_str()))
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(storage)?;
        self.job_states(&ids(dependencies)).await
    }

    async fn blocked_dependents(&self, id: &JobId) -> QueueResult<Vec<JobId>> {
        let dependents: Vec<String> = job_dependencies::Entity::find()
            .select_only()
            .column(job_dependencies::Column::JobId)
            .filter(job_dependencies::Column::DependsOnId.eq(id.as_str()))
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(storage)?;
        // Most jobs have no dependents: spare the second query.
        if dependents.is_empty() {
            return Ok(Vec::new());
        }
        let states = self.job_states(&ids(dependents)).await?;
        Ok(states
            .into_iter()
            .filter(|(_, state)| *state == JobState::Blocked)
            .map(|(id, _)| id)
            .collect())
    }

    async fn stats(&self, queues: &[String], now: Millis) -> QueueResult<StatsSnapshot> {
        let mut by_queue = jobs::Entity::find()
            .select_only()
            .column(jobs::Column::Queue)
            .column(jobs::Column::State)
            .column_as(count_rows(), "count")
            .group_by(jobs::Column::Queue)
            .group_by(jobs::Column::State);
        let mut oldest = jobs::Entity::find()
            .select_only()
            .column(jobs::Column::Queue)
            .column_as(jobs::Column::RunAt.min(), "oldest")
            .filter(jobs::Column::State.eq(JobState::Queued.as_str()))
            .group_by(jobs::Column::Queue);
        if !queues.is_empty() {
            by_queue =
                by_queue.filter(jobs::Column::Queue.is_in(queues.iter().map(String::as_str)));
            oldest = oldest.filter(jobs::Column::Queue.is_in(queues.iter().map(String::as_str)));
        }
        let counts: Vec<(String, String, i64)> =
            by_queue.into_tuple().all(&self.db).await.map_err(storage)?;
        let oldest: Vec<(String, Option<i64>)> =
            oldest.into_tuple().all(&self.db).await.map_err(storage)?;

        let mut stats: BTreeMap<String, QueueStats> = BTreeMap::new();
        for (queue, state, count) in counts {
            let state = parse_state(&state, &queue)?;
            stats
                .entry(queue.clone())
                .or_insert_with(|| QueueStats {
                    queue,
                    counts: Vec::new(),
                    oldest_ready_run_at: None,
                })
                .counts
                .push((state, count));
        }
        for (queue, run_at) in oldest {
            if let Some(entry) = stats.get_mut(&queue) {
                entry.oldest_ready_run_at = run_at;
            }
        }
        let mut queues: Vec<QueueStats> = stats.into_values().collect();
        for queue in &mut queues {
            queue.counts.sort_by_key(|(state, _)| *state);
        }
        Ok(StatsSnapshot { queues, as_of: now })
    }

    async fn finished_before(
        &self,
        states: &[JobState],
        before: Millis,
        limit: u64,
    ) -> QueueResult<Vec<JobId>> {
        let found: Vec<String> = jobs::Entity::find()
            .select_only()
            .column(jobs::Column::Id)
            .filter(jobs::Column::State.is_in(states.iter().map(|state| state.as_str())))
            .filter(jobs::Column::FinishedAt.lt(before))
            .order_by_asc(jobs::Column::FinishedAt)
            .limit(limit)
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(storage)?;
        Ok(ids(found))
    }

    async fn queue_controls(&self) -> QueueResult<Vec<QueueControls>> {
        let rows = queues::Entity::find()
            .all(&self.db)
            .await
            .map_err(storage)?;
        Ok(rows.into_iter().map(controls_from_row).collect())
    }

    async fn queue_names(&self) -> QueueResult<Vec<String>> {
        jobs::Entity::find()
            .select_only()
            .column(jobs::Column::Queue)
            .distinct()
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(storage)
    }

    async fn put_queue_controls(&self, controls: &QueueControls, now: Millis) -> QueueResult<()> {
        let (_writer, tx) = self.begin_write().await?;
        queues::Entity::insert(row_from_controls(controls, now))
            .on_conflict(
                OnConflict::column(queues::Column::Name)
                    .update_columns([
                        queues::Column::Paused,
                        queues::Column::ConcurrencyLimit,
                        queues::Column::RateLimitPerSecond,
                        queues::Column::UpdatedAt,
                    ])
                    .to_owned(),
            )
            .exec(&tx)
            .await
            .map_err(storage)?;
        tx.commit().await.map_err(storage)
    }

    async fn touch_worker(&self, worker: &WorkerRecord) -> QueueResult<()> {
        let (_writer, tx) = self.begin_write().await?;
        workers::Entity::insert(row_from_worker(worker))
            .on_conflict(
                // first_seen_at stays as first written.
                OnConflict::column(workers::Column::WorkerId)
                    .update_columns([
                        workers::Column::Hostname,
                        workers::Column::Version,
                        workers::Column::Queues,
                        workers::Column::Types,
                        workers::Column::LastSeenAt,
                    ])
                    .to_owned(),
            )
            .exec(&tx)
            .await
            .map_err(storage)?;
        tx.commit().await.map_err(storage)
    }

    async fn worker_seen(&self, worker_id: &str, now: Millis) -> QueueResult<()> {
        let (_writer, tx) = self.begin_write().await?;
        workers::Entity::update_many()
            .col_expr(
                workers::Column::LastSeenAt,
                sea_orm::sea_query::Expr::value(now),
            )
            .filter(workers::Column::WorkerId.eq(worker_id))
            .exec(&tx)
            .await
            .map_err(storage)?;
        tx.commit().await.map_err(storage)
    }

    async fn workers(&self, since: Millis) -> QueueResult<Vec<(WorkerRecord, Vec<JobId>)>> {
        let rows = workers::Entity::find()
            .filter(workers::Column::LastSeenAt.gte(since))
            .order_by_desc(workers::Column::LastSeenAt)
            .limit(1000)
            .all(&self.db)
            .await
            .map_err(storage)?;
        let running: Vec<(String, Option<String>)> = jobs::Entity::find()
            .select_only()
            .column(jobs::Column::Id)
            .column(jobs::Column::WorkerId)
            .filter(jobs::Column::State.eq(JobState::Running.as_str()))
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(storage)?;
        rows.into_iter()
            .map(|row| {
                let worker = worker_from_row(row)?;
                let held = running
                    .iter()
                    .filter(|(_, holder)| holder.as_deref() == Some(worker.worker_id.as_str()))
                    .map(|(id, _)| JobId::from_stored(id.clone()))
                    .collect();
                Ok((worker, held))
            })
            .collect()
    }

    async fn put_schedule(&self, schedule: &ScheduleRecord) -> QueueResult<()> {
        let row = row_from_schedule(schedule)?;
        let (_writer, tx) = self.begin_write().await?;
        schedules::Entity::insert(row)
            .on_conflict(
                OnConflict::column(schedules::Column::Name)
                    .update_columns([
                        schedules::Column::Cron,
                        schedules::Column::TimeZone,
                        schedules::Column::JobTemplate,
                        schedules::Column::Paused,
                        schedules::Column::NextRunAt,
                        schedules::Column::LastRunAt,
                        schedules::Column::LastJobId,
                        schedules::Column::UpdatedAt,
                    ])
                    .to_owned(),
            )
            .exec(&tx)
            .await
            .map_err(storage)?;
        tx.commit().await.map_err(storage)
    }

    async fn schedules(&self) -> QueueResult<Vec<ScheduleRecord>> {
        let rows = schedules::Entity::find()
            .order_by_asc(schedules::Column::Name)
            .all(&self.db)
            .await
            .map_err(storage)?;
        rows.into_iter().map(schedule_from_row).collect()
    }

    async fn schedule(&self, name: &str) -> QueueResult<Option<ScheduleRecord>> {
        let row = schedules::Entity::find_by_id(name)
            .one(&self.db)
            .await
            .map_err(storage)?;
        row.map(schedule_from_row).transpose()
    }

    async fn delete_schedule(&self, name: &str) -> QueueResult<bool> {
        let (_writer, tx) = self.begin_write().await?;
        let deleted = schedules::Entity::delete_by_id(name)
            .exec(&tx)
            .await
            .map_err(storage)?;
        tx.commit().await.map_err(storage)?;
        Ok(deleted.rows_affected > 0)
    }

    async fn due_schedules(&self, now: Millis) -> QueueResult<Vec<String>> {
        schedules::Entity::find()
            .select_only()
            .column(schedules::Column::Name)
            .filter(schedules::Column::Paused.eq(false))
            .filter(schedules::Column::NextRunAt.lte(now))
            .order_by_asc(schedules::Column::NextRunAt)
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(storage)
    }

    async fn fire_schedule(
        &self,
        name: &str,
        now: Millis,
        fire: &(dyn for<'s> Fn(&'s ScheduleRecord) -> QueueResult<(Job, Millis)> + Send + Sync),
    ) -> QueueResult<Option<Job>> {
        let (_writer, tx) = self.begin_write().await?;
        // Another replica holding the row is firing this tick: skip it.
        let select = self
            .dialect
            .lock_for_update(schedules::Entity::find_by_id(name), true);
        let Some(row) = select.one(&tx).await.map_err(storage)? else {
            return Ok(None);
        };
        let mut schedule = schedule_from_row(row)?;
        if schedule.paused || schedule.next_run_at > now {
            return Ok(None);
        }
        let (job, next_run_at) = fire(&schedule)?;
        let key_held = match &job.unique_key {
            Some(key) => self.unique_key_holder(&tx, key).await?.is_some(),
            None => false,
        };
        if !key_held {
            self.insert_job(&tx, &job).await?;
            schedule.last_run_at = Some(now);
            schedule.last_job_id = Some(job.id.clone());
        }
        schedule.next_run_at = next_run_at;
        schedule.updated_at = now;
        schedules::Entity::update(row_from_schedule(&schedule)?)
            .exec(&tx)
            .await
            .map_err(storage)?;
        tx.commit().await.map_err(storage)?;
        Ok((!key_held).then_some(job))
    }
}
