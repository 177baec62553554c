//! Payload and tag search over many jobs (issue 14). It checks that each
//! search finds the right jobs and prints the time ListJobs takes (over
//! loopback, so nearly all of it is the server's); it asserts no time.
//! CI runs it on 20,000 jobs; the figures at a million (filling takes
//! minutes) come from
//!
//!   JOBQ_PERF_JOBS=1000000 cargo test -p jobq-tests --test e2e search_perf -- --nocapture
//!   (with JOBQ_TEST_BACKEND=postgres for PostgreSQL)
//!
//! JOBQ_PERF_JOBS sets the count (default 20,000). Rows are written with
//! one INSERT … SELECT, as the server would write them (summary included);
//! the search indexes are kept by the engine as for any insert.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use jobq_tests::pb::{JobOrder, JobState, ListJobsRequest, PayloadFilter, PayloadMatch};
use jobq_tests::{Backend, JobqClient, TestServer};
use sea_orm::{ConnectionTrait, Database};

/// The payload of job `i` (keys in the order the server stores them).
const PAYLOAD_SQLITE: &str = "'{\"channel\":\"Channel ' || (i % 1000) || '\",\"title\":\"Video ' || i \
    || '\",\"url\":\"https://www.youtube.com/watch?v=' || CASE WHEN i % 100000 = 7 THEN 'LongLong4K' ELSE 'v' END || i || '\"}'";

fn seed_sqlite(total: u64, now: i64) -> String {
    let start = now - total as i64 * 10;
    format!(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {last}),
r AS (SELECT i, {start} + i * 10 AS t, {PAYLOAD_SQLITE} AS payload,
  '[\"ch' || (i % 1000) || '\"' || CASE WHEN i % 50 = 0 THEN ',\"4k\"' ELSE '' END
    || CASE WHEN i % 10000 = 0 THEN ',\"archive\"' ELSE '' END || ']' AS tags,
  CASE WHEN i % 20 = 16 THEN 'dead' ELSE 'succeeded' END AS state FROM n)
INSERT INTO jobs (id, job_type, queue, payload, payload_bytes, priority, run_at, max_attempts,
  timeout_ms, backoff_base_ms, backoff_max_ms, tags, summary, state, attempt, history_seq,
  progress_percent, progress_message, cancel_requested, created_at, started_at, finished_at,
  updated_at, has_dependents)
SELECT substr(printf('%012x', t), 1, 8) || '-' || substr(printf('%012x', t), 9, 4) || '-7'
    || printf('%03x', i % 4096) || '-8' || printf('%03x', (i / 4096) % 4096) || '-' || printf('%012x', i),
  CASE i % 5 WHEN 0 THEN 'channel_download' WHEN 1 THEN 'playlist_download'
    WHEN 2 THEN 'metadata_extraction' WHEN 3 THEN 'cleanup' ELSE 'noop' END,
  'default', payload, length(CAST(payload AS BLOB)), 0, t, 3, 3600000, 1000, 3600000, tags,
  'Video ' || i || ' · Channel ' || (i % 1000), state, 1, 1, 100, '', 0, t, t + 5,
  t + 9 + (i % 7) * 1000, t + 9, 0
FROM r",
        last = total - 1
    )
}

fn seed_postgres(total: u64, now: i64) -> String {
    let start = now - total as i64 * 10;
    format!(
        "INSERT INTO jobs (id, job_type, queue, payload, payload_bytes, priority, run_at, max_attempts,
  timeout_ms, backoff_base_ms, backoff_max_ms, tags, summary, state, attempt, history_seq,
  progress_percent, progress_message, cancel_requested, created_at, started_at, finished_at,
  updated_at, has_dependents)
SELECT substr(lpad(to_hex(t), 12, '0'), 1, 8) || '-' || substr(lpad(to_hex(t), 12, '0'), 9, 4) || '-7'
    || lpad(to_hex(i % 4096), 3, '0') || '-8' || lpad(to_hex((i / 4096) % 4096), 3, '0') || '-'
    || lpad(to_hex(i), 12, '0'),
  CASE i % 5 WHEN 0 THEN 'channel_download' WHEN 1 THEN 'playlist_download'
    WHEN 2 THEN 'metadata_extraction' WHEN 3 THEN 'cleanup' ELSE 'noop' END,
  'default', payload, octet_length(payload), 0, t, 3, 3600000, 1000, 3600000, tags,
  'Video ' || i || ' · Channel ' || (i % 1000), state, 1, 1, 100, '', false, t, t + 5,
  t + 9 + (i % 7) * 1000, t + 9, false
FROM (SELECT i, {start} + i * 10 AS t,
  '{{\"channel\":\"Channel ' || (i % 1000) || '\",\"title\":\"Video ' || i
    || '\",\"url\":\"https://www.youtube.com/watch?v=' || CASE WHEN i % 100000 = 7 THEN 'LongLong4K' ELSE 'v' END || i || '\"}}' AS payload,
  '[\"ch' || (i % 1000) || '\"' || CASE WHEN i % 50 = 0 THEN ',\"4k\"' ELSE '' END
    || CASE WHEN i % 10000 = 0 THEN ',\"archive\"' ELSE '' END || ']' AS tags,
  CASE WHEN i % 20 = 16 THEN 'dead' ELSE 'succeeded' END AS state
  FROM generate_series(0::bigint, {last}) AS i) AS r",
        last = total - 1
    )
}

fn filter(field: &str, matching: PayloadMatch, value: &str) -> PayloadFilter {
    PayloadFilter {
        field: field.into(),
        r#match: matching.into(),
        value: value.into(),
    }
}

/// The median time of five ListJobs calls (after one warm-up), and the
/// last answer.
async fn timed(
    jobq: &JobqClient,
    request: &ListJobsRequest,
) -> Result<(Duration, Vec<jobq_tests::pb::Job>)> {
    jobq.list(request.clone()).await?;
    let mut times = Vec::new();
    let mut jobs = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        jobs = jobq.list(request.clone()).await?.jobs;
        times.push(started.elapsed());
    }
    times.sort_unstable();
    Ok((times[2], jobs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_perf_at_a_million_jobs() -> Result<()> {
    let total: u64 = std::env::var("JOBQ_PERF_JOBS")
        .ok()
        .and_then(|raw| raw.parse().ok())
        .unwrap_or(20_000);
    let server = TestServer::start().await?;
    let backend = server.database().backend();
    let url = match backend {
        Backend::Sqlite => format!(
            "sqlite://{}?mode=rw",
            server.data_dir().join("jobq.db").display()
        ),
        Backend::Postgres => server
            .database()
            .url()
            .context("a PostgreSQL database has a URL")?
            .to_owned(),
    };
    let db = Database::connect(url).await?;
    let now = jobq_tests::unix_millis_now();
    let started = Instant::now();
    match backend {
        Backend::Sqlite => {
            db.execute_unprepared(&seed_sqlite(total, now)).await?;
            db.execute_unprepared("ANALYZE").await?;
        }
        Backend::Postgres => {
            db.execute_unprepared(&seed_postgres(total, now)).await?;
            db.execute_unprepared("VACUUM ANALYZE jobs").await?;
        }
    }
    println!(
        "{backend:?}: stored {total} jobs in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    drop(db);

    let jobq = server.client();
    let channel = ListJobsRequest {
        payload_filters: vec![filter("channel", PayloadMatch::Equals, "Channel 417")],
        ..Default::default()
    };
    let url = ListJobsRequest {
        payload_filters: vec![filter("url", PayloadMatch::Contains, "longlong4k")],
        ..Default::default()
    };
    let tag = |tags: &[&str]| ListJobsRequest {
        tags: tags.iter().map(|tag| (*tag).to_owned()).collect(),
        ..Default::default()
    };
    let dead = ListJobsRequest {
        states: vec![JobState::Dead.into()],
        order: JobOrder::FinishedDesc.into(),
        ..Default::default()
    };
    let common = ListJobsRequest {
        payload_filters: vec![filter("url", PayloadMatch::Contains, "youtube")],
        ..Default::default()
    };
    let cases: Vec<(&str, ListJobsRequest)> = vec![
        ("channel = Channel 417 (1 in 1,000)", channel),
        ("url contains longlong4k (1 in 100,000)", url),
        ("tag ch417 (1 in 1,000)", tag(&["ch417"])),
        ("tags 4k + ch450 (1 in 1,000)", tag(&["4k", "ch450"])),
        ("tag archive (1 in 10,000)", tag(&["archive"])),
        ("dead, most recently finished first", dead),
        ("url contains youtube (every job)", common),
    ];
    for (name, request) in cases {
        let (time, jobs) = timed(&jobq, &request).await?;
        println!(
            "{backend:?} {total} jobs: {name}: {} jobs on the first page, {:.1} ms",
            jobs.len(),
            time.as_secs_f64() * 1000.0
        );
        // The right jobs: each listed one matches, newest first.
        for job in &jobs {
            let ok = match name {
                n if n.starts_with("channel") => job.summary.ends_with("· Channel 417"),
                n if n.starts_with("url contains longlong4k") => {
                    job.id
                        .ends_with(&format!("{:012x}", parse_index(&job.summary)?))
                        && parse_index(&job.summary)? % 100_000 == 7
                }
                n if n.starts_with("tag ch417") => job.tags == ["ch417"],
                n if n.starts_with("tags 4k") => {
                    job.tags.contains(&"4k".to_owned()) && job.tags.contains(&"ch450".to_owned())
                }
                n if n.starts_with("tag archive") => job.tags.contains(&"archive".to_owned()),
                n if n.starts_with("dead") => job.state == i32::from(JobState::Dead),
                _ => true,
            };
            ensure!(ok, "{name}: {job:?} does not match");
        }
        let expected = match name {
            n if n.starts_with("url contains longlong4k") => {
                ((total + 99_992) / 100_000).min(50) as usize
            }
            n if n.starts_with("tag archive") => total.div_ceil(10_000).min(50) as usize,
            _ => (total as usize / 1000).min(50),
        };
        ensure!(
            jobs.len() >= expected.min(1),
            "{name}: found {} jobs, expected {expected}",
            jobs.len()
        );
        if !name.starts_with("dead") && !name.starts_with("url contains youtube") {
            ensure!(
                jobs.len() == expected,
                "{name}: found {} jobs, expected {expected}",
                jobs.len()
            );
        }
    }
    server.shutdown().await
}

/// `i` of a seeded job, from its summary `Video i · Channel k`.
fn parse_index(summary: &str) -> Result<u64> {
    summary
        .strip_prefix("Video ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|i| i.parse().ok())
        .with_context(|| format!("not a seeded summary: {summary:?}"))
}
