//! The narrowed list and count indexes (migration
//! `m20261201_000004_narrow_list_indexes`) over a database that already
//! holds jobs: undone and done again, the store reads the same counts and
//! lists under both shapes of the indexes.

use jobq_migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};

use crate::domain::{Detail, JobFilter, JobState, PageRequest};
use crate::testkit::{Fixture, spec};

/// The narrowed indexes and the condition each has once narrowed.
const NARROWED: [(&str, &str); 3] = [
    ("jobs_state_id_idx", "WHERE state <> 'running'"),
    (
        "jobs_queue_state_idx",
        "WHERE state NOT IN ('queued', 'running')",
    ),
    ("jobs_parent_idx", "WHERE parent_id IS NOT NULL"),
];

async fn index_sql(db: &DatabaseConnection, name: &str) -> String {
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?",
            [name.into()],
        ))
        .await
        .expect("read the schema")
        .unwrap_or_else(|| panic!("index {name} exists"));
    row.try_get("", "sql").expect("its SQL")
}

async fn narrowed(db: &DatabaseConnection) -> Vec<bool> {
    let mut narrowed = Vec::new();
    for (name, condition) in NARROWED {
        narrowed.push(index_sql(db, name).await.contains(condition));
    }
    narrowed
}

/// What the store reads: the counts by queue and state, and the ids listed
/// for each state.
async fn reads(fx: &Fixture) -> (Vec<(String, Vec<(JobState, i64)>)>, Vec<Vec<String>>) {
    let stats = fx.queue.stats(&[]).await.expect("stats");
    let counts = stats
        .queues
        .into_iter()
        .map(|queue| (queue.queue, queue.counts))
        .collect();
    let mut lists = Vec::new();
    for state in [JobState::Queued, JobState::Running, JobState::Succeeded] {
        let filter = JobFilter {
            states: vec![state],
            ..JobFilter::default()
        };
        let page = PageRequest {
            limit: 50,
            after: None,
        };
        let page = fx
            .queue
            .list(&filter, page, Detail::Basic)
            .await
            .expect("list");
        lists.push(
            page.jobs
                .into_iter()
                .map(|job| job.id.to_string())
                .collect(),
        );
    }
    (counts, lists)
}

#[tokio::test]
async fn narrowed_indexes_undo_and_redo_over_stored_jobs() {
    let fx = Fixture::new().await;
    let specs = (0..4).map(|n| (spec(1), format!("jobs[{n}]"))).collect();
    fx.queue.enqueue(specs, None).await.expect("enqueue");
    let leased = fx.lease(2).await;
    assert_eq!(leased.len(), 2);
    fx.complete(&leased[0]).await;

    let expected = reads(&fx).await;
    assert_eq!(
        expected.0,
        vec![(
            "default".to_owned(),
            vec![
                (JobState::Queued, 2),
                (JobState::Running, 1),
                (JobState::Succeeded, 1)
            ]
        )],
        "counts by queue and state"
    );
    assert_eq!(
        expected.1.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![2, 1, 1],
        "jobs listed per state"
    );

    let url = format!(
        "sqlite://{}?mode=rw",
        fx.data_dir().join("jobq.db").display()
    );
    let db = Database::connect(url).await.expect("connect");
    assert_eq!(narrowed(&db).await, vec![true; 3], "migrated: narrowed");

    Migrator::down(&db, Some(1))
        .await
        .expect("undo the migration");
    assert_eq!(narrowed(&db).await, vec![false; 3], "undone: whole again");
    assert_eq!(reads(&fx).await, expected, "the same reads, whole indexes");

    Migrator::up(&db, None).await.expect("redo the migration");
    assert_eq!(narrowed(&db).await, vec![true; 3], "redone: narrowed");
    assert_eq!(reads(&fx).await, expected, "the same reads, narrowed");
    db.close().await.expect("close");
}
