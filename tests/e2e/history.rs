//! Job history (issue 14): the server keeps per-minute counts and wait/run
//! percentiles by queue and type; they come back from GetJobHistory, survive
//! a restart, go after the history retention, and WatchJobHistory pushes
//! each minute the server closes.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use jobq_tests::pb::{GetJobHistoryRequest, GetJobHistoryResponse, HistoryPoint, JobSpec};
use jobq_tests::{
    Backend, JobqClient, LeasedJobExt, ServerCommand, TestDatabase, TestServer, bounded, duration,
    eventually, expect_status, lease_request, spec, timestamp_from_millis, unix_millis_now,
};
use tonic::Code;

use crate::server_binary;

/// Generous bound for a server to start or stop on a busy machine.
const LONG: Duration = Duration::from_secs(60);
/// How long a run is held before its report, so the run time has a floor.
const HELD: Duration = Duration::from_millis(300);

/// Counts of one series, summed over the answer's points.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Totals {
    enqueued: i64,
    started: i64,
    succeeded: i64,
    failed: i64,
    dead: i64,
    cancelled: i64,
    wait_count: i64,
    run_count: i64,
}

/// Totals per (queue, type) of an answer.
fn totals(response: &GetJobHistoryResponse) -> BTreeMap<(String, String), Totals> {
    let mut all: BTreeMap<(String, String), Totals> = BTreeMap::new();
    for point in &response.points {
        let total = all
            .entry((point.queue.clone(), point.r#type.clone()))
            .or_default();
        total.enqueued += point.enqueued;
        total.started += point.started;
        total.succeeded += point.succeeded;
        total.failed += point.failed;
        total.dead += point.dead;
        total.cancelled += point.cancelled;
        total.wait_count += point.wait.as_ref().map_or(0, |wait| wait.count);
        total.run_count += point.run.as_ref().map_or(0, |run| run.count);
    }
    all
}

fn millis(duration: &Option<prost_types::Duration>) -> i64 {
    duration
        .as_ref()
        .map_or(0, |d| d.seconds * 1000 + i64::from(d.nanos) / 1_000_000)
}

/// The last hour, one series per queue and type.
fn last_hour() -> GetJobHistoryRequest {
    GetJobHistoryRequest {
        start_time: Some(timestamp_from_millis(unix_millis_now() - 3_600_000)),
        by_queue: true,
        by_type: true,
        ..GetJobHistoryRequest::default()
    }
}

async fn history(
    jobq: &JobqClient,
    request: GetJobHistoryRequest,
) -> Result<GetJobHistoryResponse> {
    Ok(jobq
        .queue()
        .get_job_history(request)
        .await
        .context("GetJobHistory")?
        .into_inner())
}

/// Runs: 2 `download` jobs in `media` that succeed after [`HELD`], one
/// `probe` in `media` that fails once and then dies (2 attempts), and one
/// `sweep` in `cleanup` that is cancelled while queued.
async fn run_jobs(jobq: &JobqClient) -> Result<()> {
    let media = |job_type: &str, max_attempts: i32| JobSpec {
        queue: "media".into(),
        max_attempts,
        ..spec(job_type)
    };
    for _ in 0..2 {
        jobq.enqueue(media("download", 3)).await?;
    }
    jobq.enqueue(media("probe", 2)).await?;
    let sweep = jobq
        .enqueue(JobSpec {
            queue: "cleanup".into(),
            ..spec("sweep")
        })
        .await?;
    jobq.cancel(&sweep.id, "not today").await?;

    let request = || {
        let mut request = lease_request("history-worker", 10);
        request.queues = vec!["media".into()];
        request
    };
    let leased = jobq.lease(request()).await?;
    ensure!(leased.len() == 3, "leased {} of 3 media jobs", leased.len());
    tokio::time::sleep(HELD).await;
    for job in &leased {
        if job.job().r#type == "download" {
            jobq.complete(job).await?;
        } else {
            jobq.fail(job, "probe failed", true).await?;
        }
    }
    // The probe's retry comes after the server's test backoff.
    let again = eventually(LONG, "the probe's second attempt", || async {
        Ok(jobq.lease(request()).await?.pop())
    })
    .await?;
    jobq.fail(&again, "probe failed again", true).await?;
    Ok(())
}

fn expected() -> BTreeMap<(String, String), Totals> {
    let key = |queue: &str, job_type: &str| (queue.to_owned(), job_type.to_owned());
    BTreeMap::from([
        (
            key("cleanup", "sweep"),
            Totals {
                enqueued: 1,
                cancelled: 1,
                ..Totals::default()
            },
        ),
        (
            key("media", "download"),
            Totals {
                enqueued: 2,
                started: 2,
                succeeded: 2,
                wait_count: 2,
                run_count: 2,
                ..Totals::default()
            },
        ),
        (
            key("media", "probe"),
            Totals {
                enqueued: 1,
                started: 2,
                failed: 1,
                dead: 1,
                wait_count: 2,
                run_count: 2,
                ..Totals::default()
            },
        ),
    ])
}

#[tokio::test]
async fn history_counts_outcomes_and_latencies_by_queue_and_type() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    run_jobs(&jobq).await?;

    // The current minute is answered from memory: no wait for it to close.
    let answer = history(&jobq, last_hour()).await?;
    assert_eq!(totals(&answer), expected());
    assert_eq!(
        millis(&answer.retention),
        7 * 24 * 3_600_000,
        "the default retention"
    );
    let downloads: Vec<&HistoryPoint> = answer
        .points
        .iter()
        .filter(|point| point.r#type == "download")
        .collect();
    let longest_run = downloads
        .iter()
        .map(|point| point.run.as_ref().map_or(0, |run| millis(&run.max)))
        .max()
        .unwrap_or(0);
    // Within the log buckets' few percent of the held time, at least.
    ensure!(
        longest_run as f64 >= HELD.as_millis() as f64 * 0.9,
        "run max {longest_run} ms, held {HELD:?}"
    );
    for point in &downloads {
        let run = point.run.as_ref().context("run summary")?;
        let (p50, p90, p99, max) = (
            millis(&run.p50),
            millis(&run.p90),
            millis(&run.p99),
            millis(&run.max),
        );
        ensure!(p50 <= p90 && p90 <= p99 && p99 <= max, "{run:?}");
        ensure!(point.step.as_ref().is_some_and(|step| step.seconds == 60));
    }

    // By queue only: the types of a queue add up.
    let by_queue = history(
        &jobq,
        GetJobHistoryRequest {
            by_type: false,
            ..last_hour()
        },
    )
    .await?;
    let media = totals(&by_queue)
        .remove(&("media".to_owned(), String::new()))
        .context("a media series")?;
    assert_eq!((media.enqueued, media.succeeded, media.dead), (3, 2, 1));

    // Filters, and one bucket for the whole hour.
    let filtered = history(
        &jobq,
        GetJobHistoryRequest {
            types: vec!["probe".into()],
            step: Some(duration(Duration::from_secs(3_600))),
            by_queue: false,
            by_type: false,
            ..last_hour()
        },
    )
    .await?;
    ensure!(filtered.points.len() <= 2, "at most two hour buckets");
    let probe = totals(&filtered)
        .remove(&(String::new(), String::new()))
        .context("one series")?;
    assert_eq!((probe.started, probe.failed, probe.dead), (2, 1, 1));
    server.shutdown().await
}

#[tokio::test]
async fn history_requests_are_validated() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let now = unix_millis_now();
    let cases = [
        (
            GetJobHistoryRequest {
                step: Some(duration(Duration::from_secs(90))),
                ..GetJobHistoryRequest::default()
            },
            "step",
        ),
        (
            GetJobHistoryRequest {
                start_time: Some(timestamp_from_millis(now)),
                end_time: Some(timestamp_from_millis(now - 60_000)),
                ..GetJobHistoryRequest::default()
            },
            "start_time",
        ),
        (
            // A day and a minute of one-minute buckets: one too many.
            GetJobHistoryRequest {
                start_time: Some(timestamp_from_millis(now - 1_441 * 60_000)),
                end_time: Some(timestamp_from_millis(now)),
                ..GetJobHistoryRequest::default()
            },
            "start_time",
        ),
        (
            GetJobHistoryRequest {
                queues: vec![String::new()],
                ..GetJobHistoryRequest::default()
            },
            "queues[0]",
        ),
    ];
    for (request, field) in cases {
        let answer = jobq.queue().get_job_history(request.clone()).await;
        expect_status(answer, Code::InvalidArgument, field)
            .with_context(|| format!("GetJobHistory {request:?}"))?;
        let watch = jobq.queue().watch_job_history(request).await;
        expect_status(watch.map(|_| ()), Code::InvalidArgument, field)?;
    }
    // A whole day of minutes is fine.
    let day = GetJobHistoryRequest {
        start_time: Some(timestamp_from_millis(now - 1_440 * 60_000)),
        end_time: Some(timestamp_from_millis(now)),
        ..GetJobHistoryRequest::default()
    };
    history(&jobq, day).await?;
    server.shutdown().await
}

async fn stop(mut server: jobq_tests::ServerProcess) -> Result<()> {
    // One answered call first: the server is up and serving.
    history(&server.client().await?, last_hour()).await?;
    server.sigterm().await?;
    let status = server.wait_exit(LONG).await?;
    ensure!(status.success(), "the server exited with {status}");
    Ok(())
}

#[tokio::test]
async fn history_survives_a_restart_and_goes_after_its_retention() -> Result<()> {
    let data_dir = tempfile::Builder::new().prefix("jobq-e2e-").tempdir()?;
    let database = TestDatabase::provision(Backend::from_env()?, data_dir.path()).await?;
    let start = |extra: &[&str]| {
        extra.iter().fold(
            ServerCommand::fast(server_binary(), data_dir.path(), &database),
            |command, arg| command.arg(*arg),
        )
    };

    let server = start(&[]).spawn().await?;
    run_jobs(&server.client().await?).await?;
    // SIGTERM writes the minute still open.
    stop(server).await?;

    let server = start(&[]).spawn().await?;
    let jobq = server.client().await?;
    assert_eq!(
        totals(&history(&jobq, last_hour()).await?),
        expected(),
        "the history from before the restart"
    );
    stop(server).await?;

    // A server told to keep a second of history prunes the rest (at start,
    // or at the next minute's close if its start shared the minute).
    let server = start(&["--history-retention", "1s"]).spawn().await?;
    eventually(
        Duration::from_secs(150),
        "the retention pass to prune",
        || async {
            Ok(server
                .stderr_all()
                .contains("history retention pruned")
                .then_some(()))
        },
    )
    .await?;
    stop(server).await?;

    let server = start(&[]).spawn().await?;
    let jobq = server.client().await?;
    let answer = history(&jobq, last_hour()).await?;
    ensure!(
        answer.points.is_empty(),
        "pruned history came back: {:?}",
        answer.points
    );
    stop(server).await
}

#[tokio::test]
async fn watch_job_history_pushes_each_closed_minute() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let mut stream = jobq
        .queue()
        .watch_job_history(GetJobHistoryRequest::default())
        .await
        .context("WatchJobHistory")?
        .into_inner();
    let first = bounded(LONG, "the whole window", stream.message())
        .await??
        .context("the stream ended")?;
    ensure!(first.points.is_empty(), "a fresh server has no history");

    jobq.enqueue(spec("pushed")).await?;
    // The minute of the enqueue closes within a minute; the server pushes
    // it then (a minute closing just before the enqueue may come first).
    let pushed = bounded(Duration::from_secs(150), "the pushed minute", async {
        loop {
            let message = stream.message().await?.context("the stream ended")?;
            if message.points.iter().any(|point| point.enqueued == 1) {
                return anyhow::Ok(message);
            }
        }
    })
    .await??;
    ensure!(pushed.points.len() == 1, "only the new minute: {pushed:?}");
    server.shutdown().await
}

#[tokio::test]
async fn replicas_write_their_own_rows_and_reads_sum_them() -> Result<()> {
    let mut cluster = jobq_tests::Cluster::start(2).await?;
    let (first, second) = (cluster.client(0), cluster.client(1));
    for _ in 0..2 {
        first.enqueue(spec("on-first")).await?;
    }
    for _ in 0..3 {
        second.enqueue(spec("on-second")).await?;
    }
    let mut request = lease_request("history-replica-worker", 1);
    request.types = vec!["on-second".into()];
    let leased = second.lease(request).await?;
    ensure!(leased.len() == 1, "leased {} jobs", leased.len());
    second.complete(&leased[0]).await?;
    // A graceful stop writes the second replica's open minute.
    cluster.stop(1).await?;

    let answer = history(&first, last_hour()).await?;
    let by_type: BTreeMap<String, (i64, i64)> = totals(&answer)
        .into_iter()
        .map(|((_, job_type), total)| (job_type, (total.enqueued, total.succeeded)))
        .collect();
    assert_eq!(
        by_type,
        BTreeMap::from([("on-first".into(), (2, 0)), ("on-second".into(), (3, 1))]),
        "the first replica's memory plus the second's rows"
    );
    cluster.shutdown().await
}
