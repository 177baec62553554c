//! The job store over sea-orm: SQLite (embedded default) or PostgreSQL,
//! chosen by the database URL. Writes go through the [`writer::Writer`]
//! (group commit on SQLite); reads go straight to the connection pool.
//! The store also offers what else depends on the engine: the job log's
//! record on PostgreSQL and the notifications between replicas.

mod bind;
mod dialect;
mod entity;
mod exec;
mod history;
mod jobs;
pub mod log_table;
pub mod peers;
mod rows;
mod search;
mod search_backlog;
mod sql;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jobq_migration::{Migrator, MigratorTrait};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, QueryTrait,
};

use crate::domain::{
    Applied, AttemptOutcome, DependencyRule, Detail, InsertedAndLeased, Job, JobChange, JobFilter,
    JobId, JobOrder, JobSelector, JobState, JobStore, LeaseChange, LeaseQuery, LeaseToken, Leased,
    Millis, NewJob, PageCursor, PayloadFilter, PayloadMatch, QueueControls, QueueEdit, QueueError,
    QueueResult, QueueStats, ScheduleRecord, StatsSnapshot, WorkerRecord,
};
use dialect::Dialect;
pub use dialect::{DatabaseKind, redacted, without_loopback_tls};
use entity::{job_attempts, queues, schedules, workers};
use exec::Row;
use rows::{
    TERMINAL, entry_from_row, job_from_row, parse_state, row_from_controls, row_from_schedule,
    row_from_worker, schedule_from_row, schedule_model, storage, worker_from_row,
};
use sql::{CORE_COLUMNS, Sql};
use writer::{Answer, Op, Writer};

#[cfg(test)]
mod migration_tests;

/// How often a PostgreSQL replica retries its start-up migration.
const MIGRATION_TRIES: u64 = 8;
/// Longest pause between two attempts to reach the database at start.
const MAX_CONNECT_PAUSE: Duration = Duration::from_secs(5);

/// Jobs, queues, workers and schedules in a relational database.
pub struct SqlStore {
    db: DatabaseConnection,
    dialect: Arc<Dialect>,
    writer: Writer,
}

impl SqlStore {
    /// Connects to `url` and brings the schema up to date. A database that
    /// cannot be reached is tried again with growing pauses for up to
    /// `connect_timeout`, saying where and why each time.
    pub async fn open(
        url: &str,
        durability: crate::config::SqliteDurability,
        connect_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(250);
        let (db, dialect) = loop {
            match Dialect::connect(url, durability).await {
                Ok(connected) => break connected,
                Err(error) if started.elapsed() + pause < connect_timeout => {
                    tracing::warn!(
                        database = %redacted(url),
                        %error,
                        retry_in = ?pause,
                        "cannot reach the database; retrying"
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_CONNECT_PAUSE);
                }
                Err(error) => {
                    anyhow::bail!(
                        "cannot reach the database at {} after {:?}: {error}",
                        redacted(url),
                        started.elapsed()
                    )
                }
            }
        };
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
                    tokio::time::sleep(Duration::from_millis(300 * tries)).await;
                }
                Err(error) => {
                    anyhow::bail!("migrating the database at {}: {error}", redacted(url))
                }
            }
        }
        let dialect = Arc::new(dialect);
        let writer = Writer::start(dialect.committers(&db), dialect.clone())
            .map_err(|error| anyhow::anyhow!("{error}"))?;
        Ok(Self {
            db,
            dialect,
            writer,
        })
    }

    /// Which engine this store runs on.
    pub fn kind(&self) -> DatabaseKind {
        self.dialect.kind()
    }

    /// The SQLite database file, on SQLite.
    pub fn sqlite_file(&self) -> Option<std::path::PathBuf> {
        self.dialect.sqlite_file().map(std::path::Path::to_path_buf)
    }

    /// Times every statement of write transactions into `histogram` from now on.
    pub fn time_statements(&self, histogram: prometheus_client::metrics::histogram::Histogram) {
        let _ = self.dialect.statement_timer.set(histogram);
    }

    /// The connection pool (for the PostgreSQL log record and notifier).
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Closes the connection pool.
    pub async fn close(self) -> Result<(), DbErr> {
        self.writer.close().await;
        self.db.close().await
    }

    fn backend(&self) -> sea_orm::DbBackend {
        self.db.get_database_backend()
    }

    async fn query_jobs(&self, statement: sea_orm::Statement) -> QueueResult<Vec<Job>> {
        self.db
            .query_all_raw(statement)
            .await
            .map_err(storage)?
            .into_iter()
            .map(|row| job_from_row(Row::Orm(row)))
            .collect()
    }

    async fn query_ids(&self, statement: sea_orm::Statement) -> QueueResult<Vec<JobId>> {
        let rows = self.db.query_all_raw(statement).await.map_err(storage)?;
        rows.iter()
            .map(|row| {
                row.try_get::<String>("", "id")
                    .map(JobId::from_stored)
                    .map_err(storage)
            })
            .collect()
    }

    /// The dependency ids of each of `jobs`, filled in.
    async fn fill_dependencies(&self, jobs: &mut [Job]) -> QueueResult<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = jobs.iter().map(|job| job.id.as_str()).collect();
        let statement = Sql::new(self.backend())
            .push("SELECT job_id, depends_on_id FROM job_dependencies WHERE job_id")
            .in_list(&ids)
            .build();
        let rows = self.db.query_all_raw(statement).await.map_err(storage)?;
        let mut edges: HashMap<String, Vec<JobId>> = HashMap::new();
        for row in rows {
            let job_id: String = row.try_get("", "job_id").map_err(storage)?;
            let dependency: String = row.try_get("", "depends_on_id").map_err(storage)?;
            edges
                .entry(job_id)
                .or_default()
                .push(JobId::from_stored(dependency));
        }
        for job in jobs {
            job.depends_on = edges.remove(job.id.as_str()).unwrap_or_default();
        }
        Ok(())
    }
}

/// Columns a read selects for `detail`.
fn columns(detail: Detail) -> String {
    match detail {
        Detail::Basic => CORE_COLUMNS.to_owned(),
        Detail::Full | Detail::History => format!("{CORE_COLUMNS}, payload, result"),
    }
}

/// The SQL of a ListJobs page: `filter`'s conditions, after `after`, in
/// the filter's order (also run under EXPLAIN by the tests); with `window`,
/// only among that many newest jobs, without the search prefilters.
pub fn list_statement(
    backend: sea_orm::DbBackend,
    filter: &JobFilter,
    after: Option<&PageCursor>,
    limit: u64,
    detail: Detail,
    window: Option<u64>,
) -> sea_orm::Statement {
    let running_only = filter.states == [JobState::Running];
    // SQLite, without statistics, would rather walk every job newest first
    // and look each one up; the running jobs are few, read from their index.
    let index = match backend {
        sea_orm::DbBackend::Sqlite if running_only => " INDEXED BY jobs_running_due_idx",
        _ => "",
    };
    let mut statement = Sql::new(backend).push(&format!(
        "SELECT {} FROM jobs{index} WHERE true",
        columns(detail)
    ));
    match filter.states.as_slice() {
        [] => {}
        // One state written as a literal (a fixed word, never client text),
        // so a partial index on it can serve the query (the dead letter).
        [state] => statement = statement.push(&format!(" AND state = '{}'", state.as_str())),
        states => {
            let states: Vec<&str> = states.iter().map(|state| state.as_str()).collect();
            statement = statement.push(" AND state").in_list(&states);
        }
    }
    if !filter.states.is_empty() && !filter.states.contains(&JobState::Running) {
        statement = statement.push(&format!(" AND {NOT_RUNNING}"));
    }
    if !filter.types.is_empty() {
        statement = statement.push(" AND job_type").in_list(&filter.types);
    }
    if !filter.queues.is_empty() {
        statement = statement.push(" AND queue").in_list(&filter.queues);
    }
    if let Some(after) = filter.created_after {
        statement = statement.push(" AND created_at >= ").bind(after);
    }
    if let Some(before) = filter.created_before {
        statement = statement.push(" AND created_at < ").bind(before);
    }
    if let Some(parent_id) = &filter.parent_id {
        statement = statement
            .push(" AND parent_id = ")
            .bind(parent_id.to_string());
    }
    if let Some(text) = &filter.search {
        statement = match JobId::parse(text, "search") {
            // A whole id is looked up by key, not by scanning.
            Ok(id) => statement.push(" AND id = ").bind(id.to_string()),
            Err(_) => {
                let pattern = format!(
                    "%{}%",
                    text.replace('\\', "\\\\")
                        .replace('%', "\\%")
                        .replace('_', "\\_")
                );
                statement
                    .push(" AND (id LIKE ")
                    .bind(pattern.clone())
                    .push(" ESCAPE '\\' OR job_type LIKE ")
                    .bind(pattern.clone())
                    .push(" ESCAPE '\\' OR unique_key LIKE ")
                    .bind(pattern)
                    .push(" ESCAPE '\\')")
            }
        };
    }
    statement = match window {
        Some(window) => search::push_window(statement, window, after),
        None => statement,
    };
    let prefilter = window.is_none();
    statement = search::push_tags(statement, backend, &filter.tags, prefilter);
    statement = search::push_payload(statement, backend, &filter.payload, prefilter);
    let all_finished =
        !filter.states.is_empty() && filter.states.iter().all(|state| state.is_terminal());
    search::push_order(statement, filter.order, all_finished, after, limit).build()
}

/// The condition of `jobs_state_id_idx` (listing by state), written as in
/// the index: SQLite uses a partial index only for a query that repeats one
/// of its terms word for word. Running jobs are not in it (they pass through
/// quickly and are few); `jobs_running_due_idx` holds them.
pub(crate) const NOT_RUNNING: &str = "state <> 'running'";

/// The condition of `jobs_queue_state_idx` (counts by queue and state): the
/// jobs that are neither waiting for a worker nor running.
pub(crate) const SETTLED: &str = "state NOT IN ('queued', 'running')";

/// The job counts by queue and state (of `queues`, or all), in three parts,
/// each read from its own index: the settled jobs from theirs, queued ones
/// from the lease index (`queue` leads it), running ones from theirs.
fn stats_statements(backend: sea_orm::DbBackend, queues: &[String]) -> [sea_orm::Statement; 3] {
    // SQLite without statistics would read every job of each queue for the
    // running ones (by `jobs_queue_id_idx`); it is told which index.
    let running_index = match backend {
        sea_orm::DbBackend::Sqlite => " INDEXED BY jobs_running_due_idx",
        _ => "",
    };
    [
        ("state", "", SETTLED, ", state"),
        ("'queued'", "", "state = 'queued'", ""),
        ("'running'", running_index, "state = 'running'", ""),
    ]
    .map(|(state, index, condition, group_state)| {
        let mut statement = Sql::new(backend).push(&format!(
            "SELECT queue, {state} AS state, COUNT(*) AS count FROM jobs{index} WHERE {condition}"
        ));
        if !queues.is_empty() {
            statement = statement.push(" AND queue").in_list(queues);
        }
        statement
            .push(&format!(" GROUP BY queue{group_state}"))
            .build()
    })
}

/// The SQL that a hot query runs as, for EXPLAIN in tests and docs.
pub fn hot_queries(kind: DatabaseKind) -> Vec<(&'static str, String)> {
    let backend = match kind {
        DatabaseKind::Sqlite => sea_orm::DbBackend::Sqlite,
        DatabaseKind::Postgres => sea_orm::DbBackend::Postgres,
    };
    let list = |filter: JobFilter| {
        list_statement(backend, &filter, None, 51, Detail::Basic, None).to_string()
    };
    let [settled, queued, running] = stats_statements(backend, &[]);
    vec![
        ("lease", jobs::lease_statement(backend).to_string()),
        ("promote", due_statement(backend, 0, 1000).to_string()),
        ("reap", expired_statement(backend, 0, 1000).to_string()),
        (
            "retention",
            finished_statement(backend, &["succeeded"], 0, 1000).to_string(),
        ),
        (
            "payload search",
            list(JobFilter {
                payload: vec![PayloadFilter {
                    path: vec!["channel".into()],
                    matching: PayloadMatch::Equals,
                    value: "Kurzgesagt".into(),
                }],
                ..JobFilter::default()
            }),
        ),
        (
            "dead letter",
            list(JobFilter {
                states: vec![JobState::Dead],
                order: JobOrder::FinishedDesc,
                ..JobFilter::default()
            }),
        ),
        (
            "tag search",
            list(JobFilter {
                tags: vec!["music".into()],
                order: JobOrder::FinishedDesc,
                ..JobFilter::default()
            }),
        ),
        (
            "list queued",
            list(JobFilter {
                states: vec![JobState::Queued],
                ..JobFilter::default()
            }),
        ),
        (
            "list running",
            list(JobFilter {
                states: vec![JobState::Running],
                ..JobFilter::default()
            }),
        ),
        (
            "list children",
            list(JobFilter {
                parent_id: Some(JobId::from_stored(
                    "0190a0b0-0000-7000-8000-000000000000".to_owned(),
                )),
                ..JobFilter::default()
            }),
        ),
        ("count settled", settled.to_string()),
        ("count queued", queued.to_string()),
        ("count running", running.to_string()),
        (
            "queue running count",
            jobs::queue_controls_statement(backend, "default", false, true).to_string(),
        ),
    ]
}

/// Finished jobs in `states` that finished before `before`, oldest first,
/// by the retention index (`jobs_finished_idx`).
fn finished_statement(
    backend: sea_orm::DbBackend,
    states: &[&str],
    before: Millis,
    limit: u64,
) -> sea_orm::Statement {
    // SQLite, without statistics, would rather seek the states in the
    // state index and sort every finished job: 1.4 to 2.8 s a pass on a
    // table of 10 million, once a minute. It is told which index.
    let index = match backend {
        sea_orm::DbBackend::Postgres => "",
        _ => " INDEXED BY jobs_finished_idx",
    };
    Sql::new(backend)
        .push(&format!(
            "SELECT id FROM jobs{index} WHERE state IN ('succeeded', 'cancelled', 'dead') AND state"
        ))
        .in_list(states)
        .push(" AND finished_at < ")
        .bind(before)
        .push(&format!(" ORDER BY finished_at LIMIT {limit}"))
        .build()
}

fn due_statement(backend: sea_orm::DbBackend, now: Millis, limit: u64) -> sea_orm::Statement {
    Sql::new(backend)
        .push("SELECT id FROM jobs WHERE state IN ('scheduled', 'retrying') AND run_at <= ")
        .bind(now)
        .push(&format!(" ORDER BY run_at LIMIT {limit}"))
        .build()
}

/// Running jobs whose lease ran out or whose attempt deadline passed, by the
/// index on the earlier of the two (`jobs_running_due_idx`).
fn expired_statement(backend: sea_orm::DbBackend, now: Millis, limit: u64) -> sea_orm::Statement {
    // SQLite, without statistics, would rather seek state = 'running' in
    // the state index and read every running job; it is told which index.
    let (earliest, index) = match backend {
        sea_orm::DbBackend::Postgres => ("LEAST", ""),
        _ => ("MIN", " INDEXED BY jobs_running_due_idx"),
    };
    Sql::new(backend)
        .push(&format!(
            "SELECT id FROM jobs{index} WHERE state = 'running' AND \
             {earliest}(lease_expires_at, attempt_deadline) <= "
        ))
        .bind(now)
        .push(&format!(" LIMIT {limit}"))
        .build()
}

fn unexpected(answer: &Answer) -> QueueError {
    let kind = match answer {
        Answer::Insert(_) => "insert",
        Answer::Update(_) => "update",
        Answer::Lease(_) => "lease",
        Answer::Other(_) => "other",
    };
    QueueError::Storage(format!("a write got an {kind} answer"))
}

#[async_trait]
impl JobStore for SqlStore {
    async fn insert_jobs(
        &self,
        jobs: Vec<NewJob>,
        rule: DependencyRule,
    ) -> QueueResult<Vec<(Job, bool)>> {
        match self.writer.submit(Op::Insert { jobs, rule }).await? {
            Answer::Insert(result) => result,
            other => Err(unexpected(&other)),
        }
    }

    async fn insert_and_lease(
        &self,
        jobs: Vec<NewJob>,
        rule: DependencyRule,
        leases: Vec<(LeaseQuery, LeaseChange)>,
    ) -> QueueResult<InsertedAndLeased> {
        let mut ops = vec![Op::Insert { jobs, rule }];
        ops.extend(
            leases
                .into_iter()
                .map(|(query, start)| Op::Lease { query, start }),
        );
        let mut answers = self.writer.submit_all(ops).await?.into_iter();
        let inserted = match answers.next() {
            Some(Answer::Insert(result)) => result,
            Some(other) => return Err(unexpected(&other)),
            None => return Err(QueueError::Storage("a write got no answer".into())),
        };
        let leased = answers
            .map(|answer| match answer {
                Answer::Lease(leased) => Ok(leased.jobs),
                other => Err(unexpected(&other)),
            })
            .collect::<QueueResult<_>>()?;
        Ok(InsertedAndLeased { inserted, leased })
    }

    async fn running_with_key(&self, key: &str) -> QueueResult<i64> {
        let statement = Sql::new(self.backend())
            .push(
                "SELECT COUNT(*) AS running FROM jobs \
                 WHERE state = 'running' AND concurrency_key = ",
            )
            .bind(key.to_owned())
            .build();
        let row = self.db.query_one_raw(statement).await.map_err(storage)?;
        match row {
            Some(row) => row.try_get::<i64>("", "running").map_err(storage),
            None => Ok(0),
        }
    }

    async fn get_job(&self, id: &JobId, detail: Detail) -> QueueResult<Option<Job>> {
        let statement = Sql::new(self.backend())
            .push(&format!("SELECT {} FROM jobs WHERE id = ", columns(detail)))
            .bind(id.to_string())
            .build();
        let Some(mut job) = self.query_jobs(statement).await?.pop() else {
            return Ok(None);
        };
        if detail == Detail::Basic {
            return Ok(Some(job));
        }
        self.fill_dependencies(std::slice::from_mut(&mut job))
            .await?;
        if detail == Detail::History {
            job.history = job_attempts::Entity::find()
                .filter(job_attempts::Column::JobId.eq(id.as_str()))
                .order_by_asc(job_attempts::Column::Seq)
                .order_by_asc(job_attempts::Column::Id)
                .all(&self.db)
                .await
                .map_err(storage)?
                .into_iter()
                .map(entry_from_row)
                .collect();
            job.history.extend(job.running_attempt());
        }
        Ok(Some(job))
    }

    async fn job_states(&self, wanted: &[JobId]) -> QueueResult<Vec<(JobId, JobState)>> {
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = wanted.iter().map(JobId::as_str).collect();
        let statement = Sql::new(self.backend())
            .push("SELECT id, state FROM jobs WHERE id")
            .in_list(&ids)
            .build();
        let rows = self.db.query_all_raw(statement).await.map_err(storage)?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("", "id").map_err(storage)?;
                let state: String = row.try_get("", "state").map_err(storage)?;
                let state = parse_state(&state, &id)?;
                Ok((JobId::from_stored(id), state))
            })
            .collect()
    }

    async fn list_jobs(
        &self,
        filter: &JobFilter,
        after: Option<&PageCursor>,
        limit: u64,
        detail: Detail,
    ) -> QueueResult<Vec<Job>> {
        let backend = self.backend();
        if let Some(window) = search::newest_window(backend, filter) {
            let statement = list_statement(backend, filter, after, limit, detail, Some(window));
            let mut listed = self.query_jobs(statement).await?;
            // A full page among the newest jobs is the page: every match
            // outside the window is older than all of them.
            if listed.len() as u64 == limit {
                self.fill_dependencies(&mut listed).await?;
                return Ok(listed);
            }
        }
        let statement = list_statement(backend, filter, after, limit, detail, None);
        let mut listed = self.query_jobs(statement).await?;
        self.fill_dependencies(&mut listed).await?;
        Ok(listed)
    }

    async fn select_jobs(&self, selector: &JobSelector) -> QueueResult<Vec<JobId>> {
        let mut statement = Sql::new(self.backend()).push("SELECT id FROM jobs WHERE ");
        if selector.ids.is_empty() {
            let states: Vec<&str> = selector.states.iter().map(|state| state.as_str()).collect();
            statement = statement.push("state").in_list(&states);
            if !selector.states.contains(&JobState::Running) {
                statement = statement.push(&format!(" AND {NOT_RUNNING}"));
            }
            if !selector.queues.is_empty() {
                statement = statement.push(" AND queue").in_list(&selector.queues);
            }
            if !selector.types.is_empty() {
                statement = statement.push(" AND job_type").in_list(&selector.types);
            }
        } else {
            let ids: Vec<&str> = selector.ids.iter().map(JobId::as_str).collect();
            statement = statement.push("id").in_list(&ids);
        }
        let statement = statement
            .push(" ORDER BY id LIMIT ")
            .bind(selector.limit as i64)
            .build();
        self.query_ids(statement).await
    }

    async fn update_jobs(
        &self,
        changes: Vec<(JobId, JobChange)>,
    ) -> QueueResult<Vec<QueueResult<Applied>>> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        match self.writer.submit(Op::Update { changes }).await? {
            Answer::Update(results) => Ok(results),
            other => Err(unexpected(&other)),
        }
    }

    async fn lease_jobs(&self, query: LeaseQuery, start: LeaseChange) -> QueueResult<Leased> {
        match self.writer.submit(Op::Lease { query, start }).await? {
            Answer::Lease(leased) => Ok(leased),
            other => Err(unexpected(&other)),
        }
    }

    async fn delete_jobs(
        &self,
        ids: Vec<JobId>,
        check: for<'j> fn(&'j Job) -> QueueResult<()>,
    ) -> QueueResult<Vec<QueueResult<Job>>> {
        let ids = Arc::new(ids);
        self.writer
            .run(move |tx| {
                let ids = ids.clone();
                Box::pin(async move { jobs::delete(tx, &ids, check).await })
            })
            .await
    }

    async fn expired_jobs(&self, now: Millis, limit: u64) -> QueueResult<Vec<JobId>> {
        self.query_ids(expired_statement(self.backend(), now, limit))
            .await
    }

    async fn due_jobs(&self, now: Millis, limit: u64) -> QueueResult<Vec<JobId>> {
        self.query_ids(due_statement(self.backend(), now, limit))
            .await
    }

    async fn next_due_at(&self) -> QueueResult<Option<Millis>> {
        let statement = Sql::new(self.backend())
            .push("SELECT MIN(run_at) AS next_run_at FROM jobs WHERE state IN ('scheduled', 'retrying')")
            .build();
        let row = self.db.query_one_raw(statement).await.map_err(storage)?;
        Ok(row.and_then(|row| row.try_get::<Option<i64>>("", "next_run_at").ok().flatten()))
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

    async fn dependency_states(
        &self,
        ids: &[JobId],
    ) -> QueueResult<HashMap<JobId, Vec<(JobId, JobState)>>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let keys: Vec<&str> = ids.iter().map(JobId::as_str).collect();
        let statement = Sql::new(self.backend())
            .push(
                "SELECT d.job_id AS job_id, d.depends_on_id AS depends_on_id, j.state AS state \
                   FROM job_dependencies d JOIN jobs j ON j.id = d.depends_on_id WHERE d.job_id",
            )
            .in_list(&keys)
            .build();
        let rows = self.db.query_all_raw(statement).await.map_err(storage)?;
        let mut states: HashMap<JobId, Vec<(JobId, JobState)>> = HashMap::new();
        for row in rows {
            let job_id: String = row.try_get("", "job_id").map_err(storage)?;
            let dependency: String = row.try_get("", "depends_on_id").map_err(storage)?;
            let state: String = row.try_get("", "state").map_err(storage)?;
            let state = parse_state(&state, &dependency)?;
            states
                .entry(JobId::from_stored(job_id))
                .or_default()
                .push((JobId::from_stored(dependency), state));
        }
        Ok(states)
    }

    async fn blocked_dependents(&self, ids: &[JobId]) -> QueueResult<Vec<JobId>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<&str> = ids.iter().map(JobId::as_str).collect();
        let statement = Sql::new(self.backend())
            .push(
                "SELECT DISTINCT j.id AS id FROM job_dependencies d JOIN jobs j ON j.id = d.job_id \
                   WHERE j.state = 'blocked' AND d.depends_on_id",
            )
            .in_list(&keys)
            .build();
        self.query_ids(statement).await
    }

    async fn stats(&self, queues: &[String], now: Millis) -> QueueResult<StatsSnapshot> {
        let mut rows = Vec::new();
        for counts in stats_statements(self.backend(), queues) {
            rows.extend(self.db.query_all_raw(counts).await.map_err(storage)?);
        }
        let mut stats: BTreeMap<String, QueueStats> = BTreeMap::new();
        for row in rows {
            let queue: String = row.try_get("", "queue").map_err(storage)?;
            let state: String = row.try_get("", "state").map_err(storage)?;
            let count: i64 = row.try_get("", "count").map_err(storage)?;
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
        for (queue, run_at) in self.oldest_ready(queues).await? {
            if let Some(entry) = stats.get_mut(&queue) {
                entry.oldest_ready_run_at = Some(run_at);
            }
        }
        let mut queues: Vec<QueueStats> = stats.into_values().collect();
        for queue in &mut queues {
            queue.counts.sort_by_key(|(state, _)| *state);
        }
        Ok(StatsSnapshot { queues, as_of: now })
    }

    async fn search_backlog(&self) -> QueueResult<u64> {
        let statement = Sql::new(self.backend())
            .push("SELECT COUNT(*) AS waiting FROM job_search_pending")
            .build();
        let row = self.db.query_one_raw(statement).await.map_err(storage)?;
        let waiting: i64 = match row {
            Some(row) => row.try_get("", "waiting").map_err(storage)?,
            None => 0,
        };
        Ok(waiting.max(0) as u64)
    }

    async fn oldest_ready(&self, queues: &[String]) -> QueueResult<BTreeMap<String, Millis>> {
        let mut statement = Sql::new(self.backend())
            .push("SELECT queue, MIN(run_at) AS oldest FROM jobs WHERE state = 'queued'");
        if !queues.is_empty() {
            statement = statement.push(" AND queue").in_list(queues);
        }
        let statement = statement.push(" GROUP BY queue").build();
        let mut oldest = BTreeMap::new();
        for row in self.db.query_all_raw(statement).await.map_err(storage)? {
            let queue: String = row.try_get("", "queue").map_err(storage)?;
            let run_at: Option<i64> = row.try_get("", "oldest").map_err(storage)?;
            if let Some(run_at) = run_at {
                oldest.insert(queue, run_at);
            }
        }
        Ok(oldest)
    }

    async fn finished_before(
        &self,
        states: &[JobState],
        before: Millis,
        limit: u64,
    ) -> QueueResult<Vec<JobId>> {
        let names: Vec<&str> = states.iter().map(|state| state.as_str()).collect();
        debug_assert!(names.iter().all(|name| TERMINAL.contains(name)));
        let statement = finished_statement(self.backend(), &names, before, limit);
        self.query_ids(statement).await
    }

    async fn queue_controls(&self) -> QueueResult<Vec<QueueControls>> {
        // Plain SQL: read once a second by every replica, and sea-orm's
        // select of the entity took 130 ms a time on PostgreSQL.
        let statement = Sql::new(self.backend())
            .push(
                "SELECT name, paused, concurrency_limit, rate_limit_per_second, rate_burst \
                 FROM queues ORDER BY name",
            )
            .build();
        let rows = self.db.query_all_raw(statement).await.map_err(storage)?;
        rows.iter()
            .map(|row| {
                Ok(QueueControls {
                    name: row.try_get("", "name").map_err(storage)?,
                    paused: row.try_get("", "paused").map_err(storage)?,
                    concurrency_limit: row.try_get("", "concurrency_limit").map_err(storage)?,
                    rate_limit_per_second: row
                        .try_get("", "rate_limit_per_second")
                        .map_err(storage)?,
                    rate_burst: row.try_get("", "rate_burst").map_err(storage)?,
                })
            })
            .collect()
    }

    async fn queue_names(&self) -> QueueResult<Vec<String>> {
        let statement = Sql::new(self.backend())
            .push("SELECT DISTINCT queue FROM jobs")
            .build();
        let rows = self.db.query_all_raw(statement).await.map_err(storage)?;
        rows.iter()
            .map(|row| row.try_get::<String>("", "queue").map_err(storage))
            .collect()
    }

    async fn update_queue_controls(
        &self,
        name: &str,
        now: Millis,
        edit: QueueEdit,
    ) -> QueueResult<QueueControls> {
        let name = name.to_owned();
        self.writer
            .run(move |tx| {
                let (name, edit) = (name.clone(), edit.clone());
                Box::pin(async move {
                    let open = QueueControls::open(name.clone());
                    let insert = queues::Entity::insert(row_from_controls(&open, now))
                        .on_conflict(
                            OnConflict::column(queues::Column::Name)
                                .do_nothing()
                                .to_owned(),
                        )
                        .build(tx.backend());
                    tx.execute(insert).await?;
                    let mut controls = jobs::read_queue_controls(tx, &name, true, false)
                        .await?
                        .map_or(open, |(controls, _, _)| controls);
                    edit(&mut controls);
                    let update = Sql::new(tx.backend())
                        .push("UPDATE queues SET paused = ")
                        .bind(controls.paused)
                        .push(", concurrency_limit = ")
                        .bind(controls.concurrency_limit)
                        .push(", rate_limit_per_second = ")
                        .bind(controls.rate_limit_per_second)
                        .push(", rate_burst = ")
                        .bind(controls.rate_burst)
                        .push(", updated_at = ")
                        .bind(now)
                        .push(" WHERE name = ")
                        .bind(name.clone())
                        .build();
                    tx.execute(update).await?;
                    Ok(controls)
                })
            })
            .await
    }

    async fn touch_workers(&self, workers: Vec<WorkerRecord>) -> QueueResult<()> {
        let rows: Vec<_> = workers.iter().map(row_from_worker).collect();
        let rows = Arc::new(rows);
        self.writer
            .run(move |tx| {
                let rows = rows.clone();
                Box::pin(async move {
                    let statement = workers::Entity::insert_many(rows.iter().cloned())
                        .on_conflict(
                            // first_seen_at stays as first written.
                            OnConflict::column(workers::Column::WorkerId)
                                .update_columns([
                                    workers::Column::Hostname,
                                    workers::Column::Version,
                                    workers::Column::Queues,
                                    workers::Column::Types,
                                    workers::Column::LeaseMs,
                                    workers::Column::LastSeenAt,
                                ])
                                .to_owned(),
                        )
                        .build(tx.backend());
                    tx.execute(statement).await?;
                    Ok(())
                })
            })
            .await
    }

    async fn workers_seen(&self, worker_ids: Vec<String>, now: Millis) -> QueueResult<()> {
        let worker_ids = Arc::new(worker_ids);
        self.writer
            .run(move |tx| {
                let worker_ids = worker_ids.clone();
                Box::pin(async move {
                    let statement = workers::Entity::update_many()
                        .col_expr(
                            workers::Column::LastSeenAt,
                            sea_orm::sea_query::Expr::value(now),
                        )
                        .filter(
                            workers::Column::WorkerId.is_in(worker_ids.iter().map(String::as_str)),
                        )
                        .build(tx.backend());
                    tx.execute(statement).await?;
                    Ok(())
                })
            })
            .await
    }

    async fn workers(&self, since: Millis) -> QueueResult<Vec<(WorkerRecord, Vec<JobId>)>> {
        let rows = workers::Entity::find()
            .filter(workers::Column::LastSeenAt.gte(since))
            .order_by_desc(workers::Column::LastSeenAt)
            .limit(1000)
            .all(&self.db)
            .await
            .map_err(storage)?;
        let statement = Sql::new(self.backend())
            .push("SELECT id, worker_id FROM jobs WHERE state = 'running'")
            .build();
        let mut held: HashMap<String, Vec<JobId>> = HashMap::new();
        for row in self.db.query_all_raw(statement).await.map_err(storage)? {
            let id: String = row.try_get("", "id").map_err(storage)?;
            let worker: Option<String> = row.try_get("", "worker_id").map_err(storage)?;
            if let Some(worker) = worker {
                held.entry(worker).or_default().push(JobId::from_stored(id));
            }
        }
        rows.into_iter()
            .map(|row| {
                let worker = worker_from_row(row)?;
                let mut jobs = held.remove(&worker.worker_id).unwrap_or_default();
                jobs.truncate(1000);
                Ok((worker, jobs))
            })
            .collect()
    }

    async fn put_schedule(&self, schedule: &ScheduleRecord) -> QueueResult<()> {
        let row = row_from_schedule(schedule)?;
        self.writer
            .run(move |tx| {
                let row = row.clone();
                Box::pin(async move {
                    let statement = schedules::Entity::insert(row)
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
                        .build(tx.backend());
                    tx.execute(statement).await?;
                    Ok(())
                })
            })
            .await
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
        let name = name.to_owned();
        self.writer
            .run(move |tx| {
                let name = name.clone();
                Box::pin(async move {
                    let statement = schedules::Entity::delete_many()
                        .filter(schedules::Column::Name.eq(name))
                        .build(tx.backend());
                    Ok(tx.execute(statement).await? > 0)
                })
            })
            .await
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
        fire: Box<
            dyn for<'s> Fn(&'s ScheduleRecord) -> QueueResult<(Option<Job>, Millis)> + Send + Sync,
        >,
    ) -> QueueResult<Option<Job>> {
        let name = name.to_owned();
        let fire = Arc::new(fire);
        self.writer
            .run(move |tx| {
                let name = name.clone();
                let fire = fire.clone();
                Box::pin(async move {
                    // Another replica holding the row is firing this tick: skip it.
                    let statement = Sql::new(tx.backend())
                        .push("SELECT name FROM schedules WHERE name = ")
                        .bind(name.clone())
                        .for_update_skip_locked()
                        .build();
                    if tx.row(statement).await?.is_none() {
                        return Ok(None);
                    }
                    let statement =
                        schedules::Entity::find_by_id(name.as_str()).build(tx.backend());
                    let Some(row) = tx.row(statement).await? else {
                        return Ok(None);
                    };
                    let mut schedule = schedule_from_row(schedule_model(&row)?)?;
                    if schedule.paused || schedule.next_run_at > now {
                        return Ok(None);
                    }
                    let (job, next_run_at) = fire(&schedule)?;
                    let mut created = None;
                    if let Some(job) = job {
                        let batch = [NewJob {
                            job,
                            field: "schedule.job".to_owned(),
                        }];
                        let inserted = jobs::insert_batches(tx, &[&batch], |_, _, _| Ok(()))
                            .await?
                            .pop()
                            .unwrap_or_else(|| Ok(Vec::new()))?;
                        created = inserted
                            .into_iter()
                            .find(|(_, existed)| !existed)
                            .map(|(job, _)| job);
                    }
                    if let Some(job) = &created {
                        schedule.last_run_at = Some(now);
                        schedule.last_job_id = Some(job.id.clone());
                    }
                    schedule.next_run_at = next_run_at;
                    schedule.updated_at = now;
                    let statement = schedules::Entity::update_many()
                        .set(row_from_schedule(&schedule)?)
                        .filter(schedules::Column::Name.eq(schedule.name.as_str()))
                        .build(tx.backend());
                    tx.execute(statement).await?;
                    Ok(created)
                })
            })
            .await
    }

    async fn ping(&self) -> QueueResult<()> {
        self.db.ping().await.map_err(storage)
    }
}
