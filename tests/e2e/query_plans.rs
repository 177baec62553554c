//! The hot queries are served by indexes, on both engines (issue 5): EXPLAIN
//! of the lease, promotion, reaper and retention queries, and of the job
//! search by payload field and by tag (issue 14), exactly as the store
//! builds them.

use anyhow::{Context, Result, ensure};
use jobq_server::{DatabaseKind, hot_queries};
use jobq_tests::{Backend, TestServer};
use sea_orm::{ConnectionTrait, Database, DbBackend, Statement, TransactionTrait};

/// The indexes that may serve each hot query. The reaper reads only running
/// jobs due: the partial index on the earlier of lease end and deadline.
/// Retention reads finished jobs oldest first: the partial index on
/// finished_at, never the state index (all finished jobs, then a sort).
/// Payload and tag searches narrow the rows by the trigram index (SQLite:
/// the FTS5 table `job_search`; PostgreSQL: pg_trgm on `job_search`) or the
/// jsonb index on the tags (PostgreSQL). Listing and counting by state use
/// partial indexes that leave out the states a job passes through quickly.
const EXPECTED_INDEX: [(&str, &[&str]); 14] = [
    ("lease", &["jobs_lease_idx"]),
    ("promote", &["jobs_waiting_idx"]),
    ("reap", &["jobs_running_due_idx"]),
    ("retention", &["jobs_finished_idx"]),
    (
        "payload search",
        &[
            "SCAN job_search VIRTUAL TABLE",
            "job_search_payload_trgm_idx",
        ],
    ),
    // The dead letter, most recently died first, from its partial index
    // (no sort of every dead job).
    ("dead letter", &["jobs_dead_finished_idx"]),
    (
        "tag search",
        &["SCAN job_search VIRTUAL TABLE", "jobs_tags_idx"],
    ),
    // Listing by state, newest first, without a sort of every such job;
    // running jobs (not in that index) from their own.
    ("list queued", &["jobs_state_id_idx"]),
    ("list running", &["jobs_running_due_idx"]),
    // A job's children, from the index of the jobs that have a parent.
    ("list children", &["jobs_parent_idx"]),
    // The job counts by queue and state: each part from its own index.
    ("count settled", &["jobs_queue_state_idx"]),
    ("count queued", &["jobs_lease_idx"]),
    ("count running", &["jobs_running_due_idx"]),
    // A queue's concurrency limit counts its running jobs among the
    // running ones, never among all its jobs.
    ("queue running count", &["jobs_running_due_idx"]),
];

fn uses_expected_index(name: &str, plan: &[String]) -> bool {
    let indexes = EXPECTED_INDEX
        .iter()
        .find(|(query, _)| *query == name)
        .map_or(&[][..], |(_, indexes)| indexes);
    plan.iter()
        .any(|step| indexes.iter().any(|index| step.contains(index)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_hot_queries_use_their_indexes() -> Result<()> {
    // A migrated SQLite database: the one a test server creates.
    let server = TestServer::start_on_backend(Backend::Sqlite, |_| {}).await?;
    let path = server.data_dir().join("jobq.db");
    let db = Database::connect(format!("sqlite://{}?mode=ro", path.display())).await?;
    for (name, sql) in hot_queries(DatabaseKind::Sqlite) {
        let rows = db
            .query_all_raw(Statement::from_string(
                DbBackend::Sqlite,
                format!("EXPLAIN QUERY PLAN {sql}"),
            ))
            .await?;
        let plan: Vec<String> = rows
            .iter()
            .filter_map(|row| row.try_get::<String>("", "detail").ok())
            .collect();
        println!("SQLite {name}: {sql}\n  {}", plan.join("\n  "));
        ensure!(
            uses_expected_index(name, &plan),
            "{name} uses none of its indexes: {plan:?}"
        );
    }
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_hot_queries_use_their_indexes() -> Result<()> {
    let server = TestServer::start_on_backend(Backend::Postgres, |_| {}).await?;
    let url = server
        .database()
        .url()
        .context("a PostgreSQL database has a URL")?;
    let db = Database::connect(url).await?;
    for (name, sql) in hot_queries(DatabaseKind::Postgres) {
        let tx = db.begin().await?;
        // An empty table makes a sequential scan cheapest; the question is
        // whether the index can serve the query at all.
        tx.execute_unprepared("SET LOCAL enable_seqscan = off")
            .await?;
        let rows = tx
            .query_all_raw(Statement::from_string(
                DbBackend::Postgres,
                format!("EXPLAIN {sql}"),
            ))
            .await?;
        let plan: Vec<String> = rows
            .iter()
            .filter_map(|row| row.try_get::<String>("", "QUERY PLAN").ok())
            .collect();
        tx.rollback().await?;
        println!("PostgreSQL {name}: {sql}\n  {}", plan.join("\n  "));
        ensure!(
            uses_expected_index(name, &plan),
            "{name} uses none of its indexes: {plan:?}"
        );
    }
    server.shutdown().await
}

/// A PostgreSQL on this machine is reached without TLS (it protected
/// nothing and halved enqueue throughput), though the test server offers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_on_loopback_is_reached_without_tls() -> Result<()> {
    let server = TestServer::start_on_backend(Backend::Postgres, |_| {}).await?;
    let url = server
        .database()
        .url()
        .context("a PostgreSQL database has a URL")?;
    // The server's own connections, opened by its first writes.
    server
        .client()
        .enqueue(jobq_tests::spec("tls.check"))
        .await?;
    let database = url
        .rsplit('/')
        .next()
        .context("the test database's name")?
        .to_owned();
    // One connection: the query below leaves out its own.
    let mut options = sea_orm::ConnectOptions::new(url);
    options.max_connections(1);
    let db = Database::connect(options).await?;
    let offered = db
        .query_one_raw(Statement::from_string(DbBackend::Postgres, "SHOW ssl"))
        .await?
        .and_then(|row| row.try_get::<String>("", "ssl").ok());
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT s.ssl FROM pg_stat_ssl AS s JOIN pg_stat_activity AS a USING (pid) \
             WHERE a.datname = $1 AND a.pid <> pg_backend_pid()",
            [database.clone().into()],
        ))
        .await?;
    let tls: Vec<bool> = rows
        .iter()
        .filter_map(|row| row.try_get::<bool>("", "ssl").ok())
        .collect();
    println!("PostgreSQL offers TLS: {offered:?}; the server's connections to {database}: {tls:?}");
    ensure!(!tls.is_empty(), "no connection of the server was seen");
    ensure!(
        tls.iter().all(|on| !on),
        "the server reached a loopback PostgreSQL over TLS: {tls:?}"
    );
    server.shutdown().await
}
