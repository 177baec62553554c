//! Search by what a job is about (issue 14): tags, payload fields (equals,
//! contains, nested, numbers), their validation, paging with them, the
//! dead-letter order (most recently finished first) and the payload summary.

use anyhow::{Context, Result, ensure};
use std::time::Duration;

use jobq_tests::pb::{
    DeleteJobRequest, JobOrder, JobSpec, JobState, LeaseJobsRequest, ListJobsRequest,
    PayloadFilter, PayloadMatch,
};
use jobq_tests::scrape::{parse, scrape, value};
use jobq_tests::{
    Backend, LeasedJobExt, TestServer, eventually, expect_status, json, lease_request, spec,
};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait};
use tonic::Code;
use tonic_types::StatusExt;

fn equals(field: &str, value: &str) -> PayloadFilter {
    PayloadFilter {
        field: field.into(),
        r#match: PayloadMatch::Equals.into(),
        value: value.into(),
    }
}

fn contains(field: &str, value: &str) -> PayloadFilter {
    PayloadFilter {
        field: field.into(),
        r#match: PayloadMatch::Contains.into(),
        value: value.into(),
    }
}

/// Enqueues a job of `job_type` with `payload` and `tags`; its id.
async fn job(
    jobq: &jobq_tests::JobqClient,
    job_type: &str,
    payload: serde_json::Value,
    tags: &[&str],
) -> Result<String> {
    let job = jobq
        .enqueue(JobSpec {
            payload: Some(json(payload)),
            tags: tags.iter().map(|tag| (*tag).to_owned()).collect(),
            ..spec(job_type)
        })
        .await?;
    Ok(job.id)
}

/// The ids a listing finds, in its order (all pages).
async fn found(jobq: &jobq_tests::JobqClient, request: ListJobsRequest) -> Result<Vec<String>> {
    Ok(jobq
        .list_all(request)
        .await?
        .into_iter()
        .map(|job| job.id)
        .collect())
}

fn by_payload(filters: Vec<PayloadFilter>) -> ListJobsRequest {
    ListJobsRequest {
        payload_filters: filters,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_and_tag_filters_find_exactly_the_matching_jobs() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let kurz = job(
        &jobq,
        "channel_download",
        serde_json::json!({"url": "https://youtube.com/watch?v=LongLong4K", "channel": "Kurzgesagt"}),
        &["music", "4k"],
    )
    .await?;
    let kurz_other = job(
        &jobq,
        "channel_download",
        serde_json::json!({"url": "https://youtube.com/watch?v=short", "channel": "Kurzgesagt"}),
        &["music"],
    )
    .await?;
    // The value in another field, or as part of a longer value: no match.
    let decoy = job(
        &jobq,
        "channel_download",
        serde_json::json!({"url": "https://example.com/Kurzgesagt", "channel": "Kurzgesagt Fans",
                           "note": "longlong4k"}),
        &["musical"],
    )
    .await?;
    let nested = job(
        &jobq,
        "metadata_extraction",
        serde_json::json!({"meta": {"title": "Why Black Holes", "views": 42, "hd": true},
                           "n-1": "dash key"}),
        &["4k"],
    )
    .await?;
    let stringy = job(
        &jobq,
        "other",
        serde_json::json!({"meta": {"views": "42"}}),
        &[],
    )
    .await?;

    // EQUALS: the whole value of that field only.
    assert_eq!(
        found(&jobq, by_payload(vec![equals("channel", "Kurzgesagt")])).await?,
        vec![kurz_other.clone(), kurz.clone()]
    );
    assert_eq!(
        found(&jobq, by_payload(vec![equals("channel", "kurzgesagt")])).await?,
        Vec::<String>::new(),
        "EQUALS is exact, case included"
    );
    // CONTAINS: a substring of that string field, any case.
    assert_eq!(
        found(&jobq, by_payload(vec![contains("url", "longlong4k")])).await?,
        vec![kurz.clone()],
        "not the job with the text in another field"
    );
    assert_eq!(
        found(&jobq, by_payload(vec![contains("channel", "gesagt")])).await?,
        vec![decoy.clone(), kurz_other.clone(), kurz.clone()]
    );
    // Nested fields, numbers and booleans as JSON text, keys with '-'.
    assert_eq!(
        found(
            &jobq,
            by_payload(vec![equals("meta.title", "Why Black Holes")])
        )
        .await?,
        vec![nested.clone()]
    );
    assert_eq!(
        found(&jobq, by_payload(vec![equals("meta.views", "42")])).await?,
        vec![stringy.clone(), nested.clone()],
        "a number matches as its JSON text, like a string"
    );
    assert_eq!(
        found(&jobq, by_payload(vec![equals("meta.hd", "true")])).await?,
        vec![nested.clone()]
    );
    assert_eq!(
        found(&jobq, by_payload(vec![equals("n-1", "dash key")])).await?,
        vec![nested.clone()]
    );
    assert_eq!(
        found(&jobq, by_payload(vec![contains("meta.views", "4")])).await?,
        vec![stringy.clone()],
        "CONTAINS looks at strings only"
    );
    assert_eq!(
        found(&jobq, by_payload(vec![equals("meta", "42")])).await?,
        Vec::<String>::new(),
        "an object is no scalar"
    );
    // Several filters: all must match.
    assert_eq!(
        found(
            &jobq,
            by_payload(vec![
                equals("channel", "Kurzgesagt"),
                contains("url", "SHORT")
            ])
        )
        .await?,
        vec![kurz_other.clone()]
    );

    // Tags: every one given, exactly (not "musical" for "music").
    let tagged = |tags: &[&str]| ListJobsRequest {
        tags: tags.iter().map(|tag| (*tag).to_owned()).collect(),
        ..Default::default()
    };
    assert_eq!(
        found(&jobq, tagged(&["music"])).await?,
        vec![kurz_other.clone(), kurz.clone()]
    );
    assert_eq!(
        found(&jobq, tagged(&["music", "4k"])).await?,
        vec![kurz.clone()]
    );
    assert_eq!(
        found(&jobq, tagged(&["4k"])).await?,
        vec![nested.clone(), kurz.clone()]
    );
    // With the other filters.
    assert_eq!(
        found(
            &jobq,
            ListJobsRequest {
                types: vec!["metadata_extraction".into()],
                ..tagged(&["4k"])
            }
        )
        .await?,
        vec![nested]
    );
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_search_filters_are_refused_naming_the_field() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let cases: Vec<(ListJobsRequest, &str)> = vec![
        (
            by_payload(vec![equals("ok", "x"), equals("", "x")]),
            "payload_filters[1].field",
        ),
        (
            by_payload(vec![equals("a..b", "x")]),
            "payload_filters[0].field",
        ),
        (
            by_payload(vec![equals("a b", "x")]),
            "payload_filters[0].field",
        ),
        (
            by_payload(vec![equals("$.a", "x")]),
            "payload_filters[0].field",
        ),
        (
            by_payload(vec![PayloadFilter {
                field: "a".into(),
                r#match: PayloadMatch::Unspecified.into(),
                value: "x".into(),
            }]),
            "payload_filters[0].match",
        ),
        (
            by_payload(vec![equals("a", &"x".repeat(257))]),
            "payload_filters[0].value",
        ),
        (
            by_payload((0..9).map(|_| equals("a", "x")).collect()),
            "payload_filters",
        ),
        (
            ListJobsRequest {
                tags: vec!["ok".into(), " ".into()],
                ..Default::default()
            },
            "tags[1]",
        ),
        (
            ListJobsRequest {
                order: 7,
                ..Default::default()
            },
            "order",
        ),
    ];
    for (request, field) in cases {
        let status = expect_status(jobq.try_list(request).await, Code::InvalidArgument, field)?;
        let named = status
            .get_details_bad_request()
            .is_some_and(|details| details.field_violations.iter().any(|v| v.field == field));
        ensure!(named, "no field violation names {field}: {status:?}");
    }
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_pages_and_the_finished_order_page_without_gaps() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let mut wanted = Vec::new();
    for n in 0..7 {
        wanted.push(
            job(
                &jobq,
                "fetch",
                serde_json::json!({"channel": "Veritasium", "n": n}),
                &["paged"],
            )
            .await?,
        );
        // In another queue, so the worker below leases only the wanted ones.
        jobq.enqueue(JobSpec {
            queue: "elsewhere".into(),
            payload: Some(json(serde_json::json!({"channel": "Other", "n": n}))),
            ..spec("fetch")
        })
        .await?;
    }
    wanted.reverse();
    let request = ListJobsRequest {
        page_size: 3,
        payload_filters: vec![equals("channel", "Veritasium")],
        tags: vec!["paged".into()],
        ..Default::default()
    };
    assert_eq!(found(&jobq, request.clone()).await?, wanted);
    // A token is bound to the filter, the new fields included.
    let first = jobq.list(request.clone()).await?;
    for other in [
        ListJobsRequest {
            payload_filters: vec![equals("channel", "Other")],
            ..request.clone()
        },
        ListJobsRequest {
            tags: vec![],
            ..request.clone()
        },
        ListJobsRequest {
            order: JobOrder::FinishedDesc.into(),
            ..request.clone()
        },
    ] {
        expect_status(
            jobq.try_list(ListJobsRequest {
                page_token: first.next_page_token.clone(),
                ..other
            })
            .await,
            Code::InvalidArgument,
            "PAGE_TOKEN_MISMATCH",
        )?;
    }

    // Finish four of them, in an order unlike their creation: the dead ones
    // (and the others finished) come most recently finished first, then the
    // unfinished ones newest first.
    let mut finished = Vec::new();
    for _ in 0..4 {
        let leased = jobq
            .lease(LeaseJobsRequest {
                queues: vec!["default".into()],
                ..lease_request("search-worker", 1)
            })
            .await?
            .pop()
            .context("a job to lease")?;
        jobq.fail(&leased, "gone", false).await?;
        finished.push(leased.id().to_owned());
    }
    let dead = found(
        &jobq,
        ListJobsRequest {
            states: vec![JobState::Dead.into()],
            order: JobOrder::FinishedDesc.into(),
            page_size: 3,
            ..Default::default()
        },
    )
    .await?;
    let mut latest_first = finished.clone();
    latest_first.reverse();
    // Jobs finished in the same millisecond keep id order (newest first).
    let listed = jobq
        .list_all(ListJobsRequest {
            states: vec![JobState::Dead.into()],
            order: JobOrder::FinishedDesc.into(),
            ..Default::default()
        })
        .await?;
    let keys: Vec<(i64, String)> = listed
        .iter()
        .map(|job| {
            (
                job.finished_at.as_ref().map_or(0, jobq_tests::millis),
                job.id.clone(),
            )
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(keys, sorted, "finished_at desc, then id desc");
    assert_eq!(dead.len(), 4);
    let mut dead_set = dead.clone();
    dead_set.sort();
    let mut finished_set = finished.clone();
    finished_set.sort();
    assert_eq!(dead_set, finished_set);
    assert_eq!(dead, ids_of(&listed), "pages of 3 give the same order");

    // Across finished and unfinished jobs, in pages.
    let all = found(
        &jobq,
        ListJobsRequest {
            order: JobOrder::FinishedDesc.into(),
            page_size: 3,
            tags: vec!["paged".into()],
            ..Default::default()
        },
    )
    .await?;
    let unfinished: Vec<String> = wanted
        .iter()
        .filter(|id| !finished.contains(id))
        .cloned()
        .collect();
    assert_eq!(&all[..4], &dead[..]);
    assert_eq!(&all[4..], &unfinished[..]);
    server.shutdown().await
}

fn ids_of(jobs: &[jobq_tests::pb::Job]) -> Vec<String> {
    jobs.iter().map(|job| job.id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_view_carries_a_one_line_payload_summary() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let download = job(
        &jobq,
        "channel_download",
        serde_json::json!({"url": "https://www.youtube.com/@kurzgesagt", "channel": "Kurzgesagt",
                           "format": "best"}),
        &[],
    )
    .await?;
    let generic = job(
        &jobq,
        "send_email",
        serde_json::json!({"to": "a@example.com", "attempt": 2, "body": {"long": "x"},
                           "subject": "Hello\nworld"}),
        &[],
    )
    .await?;
    let long = job(
        &jobq,
        "playlist_download",
        serde_json::json!({"url": format!("https://example.com/{}", "a".repeat(500))}),
        &[],
    )
    .await?;
    let basic = jobq.list_all(ListJobsRequest::default()).await?;
    let summary = |id: &str| {
        basic
            .iter()
            .find(|job| job.id == id)
            .map(|job| job.summary.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        summary(&download),
        "Kurzgesagt · https://www.youtube.com/@kurzgesagt"
    );
    assert_eq!(
        summary(&generic),
        "attempt=2 subject=Hello world to=a@example.com"
    );
    let cut = summary(&long);
    ensure!(
        cut.chars().count() <= 120 && cut.ends_with('…'),
        "a long summary is cut: {cut:?}"
    );
    // GetJob (FULL) says the same.
    assert_eq!(jobq.get(&download).await?.summary, summary(&download));
    server.shutdown().await
}

/// `sql` with `?` placeholders, for `backend` (PostgreSQL numbers them).
fn statement(backend: DbBackend, sql: &str, values: Vec<sea_orm::Value>) -> Statement {
    let sql = match backend {
        DbBackend::Postgres => sql
            .split('?')
            .enumerate()
            .map(|(index, part)| match index {
                0 => part.to_owned(),
                _ => format!("${index}{part}"),
            })
            .collect(),
        _ => sql.to_owned(),
    };
    Statement::from_sql_and_values(backend, sql, values)
}

/// How many jobs wait for the payload search index, and how many the index
/// itself finds for a LIKE `term` on the payload (no fallback to the table).
async fn search_index_state(db: &DatabaseConnection, term: &str) -> Result<(i64, i64)> {
    let row = db
        .query_one_raw(statement(
            db.get_database_backend(),
            "SELECT (SELECT count(*) FROM job_search_pending) AS pending, \
             (SELECT count(*) FROM job_search WHERE payload LIKE ?) AS indexed",
            vec![format!("%{term}%").into()],
        ))
        .await?
        .context("one row of counts")?;
    Ok((row.try_get("", "pending")?, row.try_get("", "indexed")?))
}

/// Stores a finished (cancelled) copy of job `model` with `id` and
/// `payload` straight into the database, past the server's writer: the
/// insert trigger notes it for indexing, and nothing tells the writer.
async fn store_behind_the_writers_back(
    db: &DatabaseConnection,
    model: &str,
    id: &str,
    payload: &str,
) -> Result<()> {
    let backend = db.get_database_backend();
    let tx = db.begin().await?;
    tx.execute_raw(statement(
        backend,
        "CREATE TEMP TABLE copied AS SELECT * FROM jobs WHERE id = ?",
        vec![model.into()],
    ))
    .await?;
    tx.execute_raw(statement(
        backend,
        "UPDATE copied SET id = ?, payload = ?, tags = '[]', state = 'cancelled', \
         finished_at = updated_at, unique_key = NULL, request_key = NULL",
        vec![id.into(), payload.into()],
    ))
    .await?;
    for sql in ["INSERT INTO jobs SELECT * FROM copied", "DROP TABLE copied"] {
        tx.execute_raw(statement(backend, sql, vec![])).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// What `jobq_search_backlog` says, once the metrics' recount (every
/// second here) has counted `expected` jobs waiting for the search index.
async fn backlog_metric_reaches(server: &TestServer, expected: f64) -> Result<()> {
    let metrics = server.metrics_addr().context("no metrics address")?;
    eventually(
        Duration::from_secs(60),
        "jobq_search_backlog to count the jobs waiting",
        move || async move {
            let text = scrape(metrics).await?;
            let got = value(&parse(&text)?, "jobq_search_backlog", &[]);
            Ok((got == expected).then_some(()))
        },
    )
    .await
}

/// Payloads and tags are indexed for search after the commit, in chunks
/// (issue 10): a job is found while it waits for the index and after it is
/// in it, the server empties the backlog by itself, and deleting jobs on
/// either side of the index leaves the index whole (on SQLite, FTS5's own
/// integrity check). The metrics count the jobs waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_jobs_before_and_after_they_are_indexed_and_deletes_keep_the_index_whole()
-> Result<()> {
    let server = TestServer::start_with(|config| {
        config.metrics_listen = Some(([127, 0, 0, 1], 0).into());
        config.metrics_recount = Duration::from_secs(1);
    })
    .await?;
    let jobq = server.client();
    let db = match server.database().backend() {
        Backend::Sqlite => {
            sea_orm::Database::connect(format!(
                "sqlite://{}?mode=rw",
                server.data_dir().join("jobq.db").display()
            ))
            .await?
        }
        Backend::Postgres => {
            let url = server.database().url().context("a PostgreSQL URL")?;
            sea_orm::Database::connect(url).await?
        }
    };

    // More than one chunk in one batch.
    let specs = (0..300)
        .map(|n| JobSpec {
            payload: Some(json(
                serde_json::json!({ "url": format!("https://media.test/v/clip-{n:04}") }),
            )),
            tags: if n % 100 == 0 {
                vec!["hundred".into()]
            } else {
                vec![]
            },
            ..spec("fetch")
        })
        .collect();
    let jobs = jobq.enqueue_batch(specs).await?;
    let clip = |n: usize| {
        found(
            &jobq,
            by_payload(vec![contains("url", &format!("clip-{n:04}"))]),
        )
    };
    // Found at once, indexed or not.
    ensure!(
        clip(42).await? == vec![jobs[42].id.clone()],
        "clip 42 at once"
    );
    let hundreds = found(
        &jobq,
        ListJobsRequest {
            tags: vec!["hundred".into()],
            ..Default::default()
        },
    )
    .await?;
    ensure!(
        hundreds.len() == 3,
        "three jobs tagged hundred: {hundreds:?}"
    );

    let backlog_indexed = |term: &'static str| {
        let db = &db;
        eventually(
            Duration::from_secs(60),
            "the backlog to be indexed",
            move || async move {
                let (pending, indexed) = search_index_state(db, term).await?;
                Ok((pending == 0).then_some(indexed))
            },
        )
    };
    let indexed = backlog_indexed("media.test/v/clip-").await?;
    ensure!(
        indexed == 300,
        "the index holds all 300 jobs, not {indexed}"
    );
    ensure!(
        clip(299).await? == vec![jobs[299].id.clone()],
        "clip 299 from the index"
    );

    // A job the writer was not told of waits in the backlog (no write went
    // through the writer, so it is not indexed) and is found all the same.
    let unindexed = "0190a000-0000-7000-8000-0000000000a1";
    let payload = r#"{"url":"https://media.test/v/late-one"}"#;
    store_behind_the_writers_back(&db, &jobs[0].id, unindexed, payload).await?;
    ensure!(
        search_index_state(&db, "late-one").await? == (1, 0),
        "the copy waits for the index"
    );
    backlog_metric_reaches(&server, 1.0).await?;
    let late = found(&jobq, by_payload(vec![contains("url", "late-one")])).await?;
    ensure!(
        late == vec![unindexed.to_owned()],
        "the waiting job is found: {late:?}"
    );
    ensure!(
        search_index_state(&db, "late-one").await? == (1, 0),
        "it was found while it still waited for the index"
    );

    // Deleted while waiting: never indexed. Deleted after being indexed:
    // taken out of the index.
    let delete = |id: String| {
        let mut queue = jobq.queue();
        async move { queue.delete_job(DeleteJobRequest { job_id: id }).await }
    };
    delete(unindexed.to_owned()).await?;
    for n in [7, 100] {
        jobq.cancel(&jobs[n].id, "test").await?;
        delete(jobs[n].id.clone()).await?;
    }
    ensure!(clip(7).await?.is_empty(), "deleted clip 7 is not found");
    let late = found(&jobq, by_payload(vec![contains("url", "late-one")])).await?;
    ensure!(
        late.is_empty(),
        "the deleted late one is not found: {late:?}"
    );
    let indexed = backlog_indexed("media.test/v/").await?;
    ensure!(
        indexed == 298,
        "the index holds the 298 jobs left, not {indexed}"
    );
    backlog_metric_reaches(&server, 0.0).await?;
    if db.get_database_backend() == DbBackend::Sqlite {
        // Checks the index against the jobs table (rank 1: the content too).
        db.execute_unprepared(
            "INSERT INTO job_search (job_search, rank) VALUES ('integrity-check', 1)",
        )
        .await
        .context("the FTS5 index matches the jobs table")?;
    }
    drop(db);
    server.shutdown().await
}
