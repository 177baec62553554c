//! Per-job logs: a job's log is its history told by the server (enqueued,
//! each attempt's start and end) with the lines its workers pushed in their
//! attempts. Pushed lines land in `logs/jobs/{id}/` (stdout.log, stderr.log,
//! progress.log, events.jsonl) on SQLite; replay and follow with
//! StreamJobLogs (a follower never lags or misses a line), paging with
//! GetJobLogs, the size limits, numbered pushes, stale leases and deleted jobs.
//!
//! The small helpers at the top (building entries, pushing batches, reading a
//! log stream with a bound on every message) are shared with `grpc_web`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use jobq_tests::pb::{
    DeleteJobsRequest, FailJobRequest, GetJobLogsRequest, GetJobLogsResponse, JobLease,
    JobSelector, LeasedJob, LogEntry, LogLine, LogStream, PushJobLogsRequest, PushJobLogsResponse,
    StreamJobLogsRequest, StreamJobLogsResponse, WatchJobsRequest,
};
use jobq_tests::{
    JobqClient, LeasedJobExt, TestServer, bounded, duration, eventually, expect_status, spec,
    timestamp_from_millis,
};
use tonic::transport::Endpoint;
use tonic::{Code, Status, Streaming};

/// Longest wait for the next message of a log stream that is expected to
/// come (the server sends it at once; the bound only turns a hang into a failure).
const NEXT_MESSAGE: Duration = Duration::from_secs(15);

/// Longest wait for a whole push of many lines, or for followers to catch up
/// with it, on a loaded two-core machine running a debug build.
const BIG_PUSH: Duration = Duration::from_secs(120);

// ---- helpers shared with the other log and grpc-web tests ----------------------

/// A line of `stream` with `message`, time left to the server.
pub(crate) fn entry(stream: LogStream, message: impl Into<String>) -> LogEntry {
    LogEntry {
        stream: stream.into(),
        message: message.into(),
        ..LogEntry::default()
    }
}

/// `count` stdout lines `"{prefix} {i}"`, i from `first`.
pub(crate) fn stdout_lines(prefix: &str, first: usize, count: usize) -> Vec<LogEntry> {
    (first..first + count)
        .map(|index| entry(LogStream::Stdout, format!("{prefix} {index}")))
        .collect()
}

/// One PushJobLogs call carrying `batches`, one message each, under `lease`.
pub(crate) async fn try_push(
    jobq: &JobqClient,
    lease: &JobLease,
    batches: Vec<Vec<LogEntry>>,
) -> Result<PushJobLogsResponse, Status> {
    let messages: Vec<PushJobLogsRequest> = batches
        .into_iter()
        .map(|entries| PushJobLogsRequest {
            lease: Some(lease.clone()),
            entries,
            first_sequence: 0,
        })
        .collect();
    Ok(jobq
        .worker()
        .push_job_logs(tokio_stream::iter(messages))
        .await?
        .into_inner())
}

/// [`try_push`] that must succeed.
pub(crate) async fn push(
    jobq: &JobqClient,
    leased: &LeasedJob,
    batches: Vec<Vec<LogEntry>>,
) -> Result<PushJobLogsResponse> {
    try_push(jobq, &leased.lease(), batches)
        .await
        .with_context(|| format!("PushJobLogs for job {}", leased.id()))
}

/// A StreamJobLogs request.
pub(crate) fn log_request(
    job_id: &str,
    follow: bool,
    after_position: u64,
    streams: &[LogStream],
) -> StreamJobLogsRequest {
    StreamJobLogsRequest {
        job_id: job_id.to_owned(),
        follow,
        after_position,
        streams: streams.iter().map(|stream| i32::from(*stream)).collect(),
    }
}

/// Opens StreamJobLogs on `jobq`'s connection.
pub(crate) async fn open_log_stream(
    jobq: &JobqClient,
    request: StreamJobLogsRequest,
) -> Result<Streaming<StreamJobLogsResponse>> {
    let job_id = request.job_id.clone();
    Ok(jobq
        .queue()
        .stream_job_logs(request)
        .await
        .with_context(|| format!("StreamJobLogs of job {job_id}"))?
        .into_inner())
}

/// The next message of a log stream (`None` when the server ended it), bounded.
pub(crate) async fn next_log_message(
    stream: &mut Streaming<StreamJobLogsResponse>,
) -> Result<Option<StreamJobLogsResponse>> {
    bounded(
        NEXT_MESSAGE,
        "the next StreamJobLogs message",
        stream.message(),
    )
    .await?
    .context("StreamJobLogs answered an error")
}

/// Reads lines until one at `position` or later has arrived; the end of the
/// stream before that is a failure.
pub(crate) async fn read_until(
    stream: &mut Streaming<StreamJobLogsResponse>,
    position: u64,
) -> Result<Vec<LogLine>> {
    let mut lines: Vec<LogLine> = Vec::new();
    while lines.last().is_none_or(|line| line.position < position) {
        let Some(message) = next_log_message(stream).await? else {
            bail!(
                "the log stream ended before position {position}; it got to {:?}",
                lines.last().map(|line| line.position)
            );
        };
        lines.extend(message.lines);
    }
    Ok(lines)
}

/// Reads lines until the server ends the stream.
pub(crate) async fn read_to_end(
    stream: &mut Streaming<StreamJobLogsResponse>,
) -> Result<Vec<LogLine>> {
    let mut lines = Vec::new();
    while let Some(message) = next_log_message(stream).await? {
        lines.extend(message.lines);
    }
    Ok(lines)
}

/// The positions of `lines`.
pub(crate) fn positions(lines: &[LogLine]) -> Vec<u64> {
    lines.iter().map(|line| line.position).collect()
}

/// The position of line `line` of history entry `entry` (see LogLine in log.proto).
pub(crate) fn position(entry: u64, line: u64) -> u64 {
    (entry << 32) | line
}

/// The line number of a line that closes its entry.
pub(crate) const CLOSING_LINE: u64 = u32::MAX as u64;

/// Checks that the lines the worker pushed in attempt `entry` are exactly
/// lines `2..=count + 1` of that entry, in order, each once.
pub(crate) fn check_exact_range(lines: &[LogLine], entry: u64, count: u64) -> Result<()> {
    let got: Vec<u64> = positions(lines)
        .into_iter()
        .filter(|p| *p >> 32 == entry && (2..CLOSING_LINE).contains(&(*p & 0xFFFF_FFFF)))
        .collect();
    let expected: Vec<u64> = (2..=count + 1).map(|line| position(entry, line)).collect();
    if got == expected {
        return Ok(());
    }
    let mut seen = BTreeMap::new();
    for position in &got {
        *seen.entry(*position).or_insert(0_u32) += 1;
    }
    let duplicates: Vec<_> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(p, _)| p & 0xFFFF_FFFF)
        .collect();
    let missing: Vec<_> = expected
        .iter()
        .filter(|p| !seen.contains_key(p))
        .map(|p| p & 0xFFFF_FFFF)
        .collect();
    bail!(
        "expected lines 2..={} of attempt {entry} once each, in order; got {} lines: \
         duplicates {:?}, missing {:?} (first 20)",
        count + 1,
        got.len(),
        &duplicates[..duplicates.len().min(20)],
        &missing[..missing.len().min(20)],
    )
}

/// Checks that positions strictly increase.
pub(crate) fn check_increasing(lines: &[LogLine]) -> Result<()> {
    for pair in lines.windows(2) {
        ensure!(
            pair[0].position < pair[1].position,
            "position {} came after {}",
            pair[1].position,
            pair[0].position
        );
    }
    Ok(())
}

/// GetJobLogs, raw.
pub(crate) async fn try_get_logs(
    jobq: &JobqClient,
    request: GetJobLogsRequest,
) -> Result<GetJobLogsResponse, Status> {
    Ok(jobq.queue().get_job_logs(request).await?.into_inner())
}

/// Every stored line of a job, paging through GetJobLogs.
pub(crate) async fn all_lines(jobq: &JobqClient, job_id: &str) -> Result<Vec<LogLine>> {
    let mut lines = Vec::new();
    let mut after_position = 0;
    for _ in 0..10_000 {
        let page = try_get_logs(
            jobq,
            GetJobLogsRequest {
                job_id: job_id.to_owned(),
                after_position,
                page_size: 5000,
                streams: Vec::new(),
            },
        )
        .await
        .with_context(|| format!("GetJobLogs of job {job_id}"))?;
        lines.extend(page.lines);
        after_position = page.next_after_position;
        if page.end_of_log {
            return Ok(lines);
        }
    }
    bail!("GetJobLogs of job {job_id} never reached end_of_log")
}

/// The log directory of a job on the server's disk.
pub(crate) fn job_dir(server: &TestServer, job_id: &str) -> PathBuf {
    job_dir_in(server.data_dir(), job_id)
}

/// The log directory of a job under a data dir.
fn job_dir_in(data_dir: &std::path::Path, job_id: &str) -> PathBuf {
    data_dir.join("logs").join("jobs").join(job_id)
}

/// The lines of a file in a job's log directory.
fn file_lines(server: &TestServer, job_id: &str, name: &str) -> Result<Vec<String>> {
    let path = job_dir(server, job_id).join(name);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        text.is_empty() || text.ends_with('\n'),
        "{} does not end with a newline",
        path.display()
    );
    Ok(text.lines().map(str::to_owned).collect())
}

/// events.jsonl of a job, one JSON object per line.
fn events_jsonl(server: &TestServer, job_id: &str) -> Result<Vec<serde_json::Value>> {
    file_lines(server, job_id, "events.jsonl")?
        .iter()
        .enumerate()
        .map(|(index, line)| {
            serde_json::from_str(line)
                .with_context(|| format!("events.jsonl line {} is not JSON: {line}", index + 1))
        })
        .collect()
}

/// Checks a stdout.log/stderr.log line: `<RFC 3339 time, ms, Z> #<attempt> <message>`.
fn check_readable_line(line: &str, attempt: i32, message: &str) -> Result<()> {
    let (time, rest) = line
        .split_once(' ')
        .with_context(|| format!("no time in {line:?}"))?;
    ensure!(
        time.len() == "2024-01-02T03:04:05.678Z".len()
            && time.as_bytes()[10] == b'T'
            && time.ends_with('Z'),
        "{time:?} is not an RFC 3339 UTC time with milliseconds (line {line:?})"
    );
    ensure!(
        rest == format!("#{attempt} {message}"),
        "expected \"#{attempt} {message}\" after the time, got {rest:?}"
    );
    Ok(())
}

/// The message of a stored line whose stream is `stream`.
fn messages_of(lines: &[LogLine], stream: LogStream) -> Vec<&str> {
    lines
        .iter()
        .filter(|line| line.stream() == stream)
        .map(|line| line.message.as_str())
        .collect()
}

// ---- the tests ---------------------------------------------------------------

/// A client whose HTTP/2 flow-control windows are the protocol's minimum, so
/// a stream it does not read stops the server's sends after 64 KiB.
pub(crate) async fn small_window_client(server: &TestServer) -> Result<JobqClient> {
    let channel = Endpoint::from_shared(format!("http://{}", server.addr()))?
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535))
        .connect()
        .await
        .context("connecting with small windows")?;
    Ok(JobqClient::from_channel(channel))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_writes_nothing_has_no_log_files_and_its_log_tells_its_history() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let job = jobq.enqueue(spec("quiet")).await?;
    let leased = jobq.lease_one("worker-quiet").await?;
    jobq.complete(&leased).await?;
    ensure!(
        !job_dir(&server, &job.id).exists(),
        "a job that pushed nothing got a log directory"
    );
    let lines = all_lines(&jobq, &job.id).await?;
    ensure!(
        positions(&lines) == vec![position(0, 1), position(1, 1), position(1, CLOSING_LINE)],
        "expected enqueued, leased, succeeded; got {:?}",
        lines
            .iter()
            .map(|l| (l.position, &l.message))
            .collect::<Vec<_>>()
    );
    ensure!(lines.iter().all(|line| line.stream() == LogStream::System));
    ensure!(lines[0].message.starts_with("enqueued in queue default"));
    ensure!(
        lines[1].message.starts_with("attempt 1 of"),
        "{}",
        lines[1].message
    );
    ensure!(lines[1].message.ends_with("leased by worker worker-quiet"));
    ensure!(
        lines[2]
            .message
            .starts_with("attempt 1 succeeded on worker worker-quiet")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_lines_land_in_the_files_and_replay_in_order_per_stream() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let job = jobq.enqueue(spec("logs-files")).await?;
    let leased = jobq.lease_one("worker-files").await?;
    let progress = LogEntry {
        progress_percent: Some(42),
        ..entry(LogStream::Progress, "downloading")
    };
    let with_fields = LogEntry {
        fields: Some(prost_types::Struct {
            fields: [(
                "url".to_owned(),
                jobq_tests::json(serde_json::json!("https://example.test/a")),
            )]
            .into_iter()
            .collect(),
        }),
        ..entry(LogStream::System, "runtime line")
    };
    let answer = push(
        &jobq,
        &leased,
        vec![
            vec![
                entry(LogStream::Stdout, "out 1"),
                entry(LogStream::Stderr, "err 1"),
                entry(LogStream::Stdout, "two\nphysical lines"),
            ],
            vec![progress, with_fields, entry(LogStream::Stdout, "out 3")],
        ],
    )
    .await?;
    ensure!(answer.accepted_lines == 6, "{answer:?}");
    ensure!(answer.last_position == position(1, 7), "{answer:?}");
    jobq.complete(&leased).await?;

    // The readable files: one physical line per pushed line.
    let stdout = file_lines(&server, &job.id, "stdout.log")?;
    ensure!(stdout.len() == 3, "stdout.log: {stdout:#?}");
    check_readable_line(&stdout[0], 1, "out 1")?;
    check_readable_line(&stdout[1], 1, "two\\nphysical lines")?;
    check_readable_line(&stdout[2], 1, "out 3")?;
    let stderr = file_lines(&server, &job.id, "stderr.log")?;
    ensure!(stderr.len() == 1, "stderr.log: {stderr:#?}");
    check_readable_line(&stderr[0], 1, "err 1")?;
    let progress = file_lines(&server, &job.id, "progress.log")?;
    ensure!(progress.len() == 1, "progress.log: {progress:#?}");
    check_readable_line(&progress[0], 1, "42% downloading")?;
    let events = events_jsonl(&server, &job.id)?;
    ensure!(
        events.len() == 6,
        "events.jsonl holds every pushed line: {events:#?}"
    );
    ensure!(events[2]["message"] == "two\nphysical lines");
    ensure!(events[4]["fields"]["url"] == "https://example.test/a");

    // The replay: the server's lines around the pushed ones, in order.
    let mut stream = open_log_stream(&jobq, log_request(&job.id, false, 0, &[])).await?;
    let replayed = read_to_end(&mut stream).await?;
    check_increasing(&replayed)?;
    let told: Vec<&str> = replayed.iter().map(|line| line.message.as_str()).collect();
    ensure!(replayed.len() == 9, "{told:#?}");
    ensure!(
        told[2..8]
            == [
                "out 1",
                "err 1",
                "two\nphysical lines",
                "downloading",
                "runtime line",
                "out 3"
            ]
    );
    ensure!(
        replayed[5]
            .fields
            .as_ref()
            .and_then(|f| f.fields.get("percent"))
            .is_some()
    );
    let mut stdout_only =
        open_log_stream(&jobq, log_request(&job.id, false, 0, &[LogStream::Stdout])).await?;
    let stdout_lines = read_to_end(&mut stdout_only).await?;
    ensure!(
        messages_of(&stdout_lines, LogStream::Stdout) == ["out 1", "two\nphysical lines", "out 3"]
            && stdout_lines.len() == 3
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_attached_before_the_job_starts_sees_every_line_and_ends_when_it_succeeds()
-> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let job = jobq.enqueue(spec("logs-follow")).await?;
    let follower = server.connect().await?;
    let mut stream = open_log_stream(&follower, log_request(&job.id, true, 0, &[])).await?;
    let enqueued = read_until(&mut stream, position(0, 1)).await?;
    ensure!(enqueued.len() == 1);

    let leased = jobq.lease_one("worker-follow").await?;
    for batch in 0..3 {
        push(&jobq, &leased, vec![stdout_lines("batch", batch * 10, 10)]).await?;
    }
    let seen = read_until(&mut stream, position(1, 31)).await?;
    jobq.complete(&leased).await?;
    let rest = bounded(
        BIG_PUSH,
        "the follower's stream to end",
        read_to_end(&mut stream),
    )
    .await??;
    let all: Vec<LogLine> = enqueued.into_iter().chain(seen).chain(rest).collect();
    check_increasing(&all)?;
    check_exact_range(&all, 1, 30)?;
    ensure!(
        all.last()
            .is_some_and(|line| line.position == position(1, CLOSING_LINE)),
        "the stream ended after the closing line of the attempt"
    );
    ensure!(positions(&all) == positions(&all_lines(&jobq, &job.id).await?));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_attached_midway_get_exactly_the_lines_after_their_position() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let job = jobq.enqueue(spec("logs-midway")).await?;
    let leased = jobq.lease_one("worker-midway").await?;
    push(&jobq, &leased, vec![stdout_lines("early", 0, 50)]).await?;
    let mut stream =
        open_log_stream(&jobq, log_request(&job.id, true, position(1, 26), &[])).await?;
    push(&jobq, &leased, vec![stdout_lines("late", 0, 50)]).await?;
    let seen = read_until(&mut stream, position(1, 101)).await?;
    ensure!(
        positions(&seen) == (27..=101).map(|line| position(1, line)).collect::<Vec<_>>(),
        "got {:?}",
        positions(&seen)
    );
    Ok(())
}

/// A burst of large pushes, followed by readers at every pace: one reading
/// as fast as it can, one slow, one that reads nothing until the burst is
/// over. Each sees every line, in order, exactly once (a follower reads the
/// stored log at its own pace: nothing is dropped for it), and the one that
/// does not read holds back neither the worker nor the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_large_pushes_reaches_every_follower_without_a_gap() -> Result<()> {
    const BATCHES: usize = 20;
    const LINES_PER_BATCH: usize = 1000;
    const MESSAGE_BYTES: usize = 1000;
    const TOTAL: u64 = (BATCHES * LINES_PER_BATCH) as u64;

    let server = TestServer::start().await?;
    let jobq = server.client();
    let job = jobq.enqueue(spec("logs-burst")).await?;
    let leased = jobq.lease_one("worker-burst").await?;

    let idle_client = small_window_client(&server).await?;
    let mut idle = open_log_stream(&idle_client, log_request(&job.id, true, 0, &[])).await?;
    read_until(&mut idle, position(1, 1)).await?;

    let mut readers = Vec::new();
    for pause in [Duration::ZERO, Duration::from_millis(30)] {
        let client = server.connect().await?;
        let mut stream = open_log_stream(&client, log_request(&job.id, true, 0, &[])).await?;
        readers.push(tokio::spawn(async move {
            let mut lines = Vec::new();
            while let Some(message) =
                bounded(BIG_PUSH, "the next message", stream.message()).await??
            {
                lines.extend(message.lines);
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            anyhow::Ok(lines)
        }));
    }

    let filler = "x".repeat(MESSAGE_BYTES);
    let batches: Vec<Vec<LogEntry>> = (0..BATCHES)
        .map(|batch| {
            (0..LINES_PER_BATCH)
                .map(|i| {
                    entry(
                        LogStream::Stdout,
                        format!("{} {filler}", batch * LINES_PER_BATCH + i),
                    )
                })
                .collect()
        })
        .collect();
    let started = Instant::now();
    let answer = bounded(
        BIG_PUSH,
        "the burst of pushes",
        push(&jobq, &leased, batches),
    )
    .await??;
    ensure!(answer.accepted_lines == TOTAL, "{answer:?}");
    eprintln!(
        "pushed {TOTAL} lines of {MESSAGE_BYTES} bytes in {:?} while a follower read nothing",
        started.elapsed()
    );
    jobq.complete(&leased).await?;

    for reader in readers {
        let lines = reader.await??;
        check_increasing(&lines)?;
        check_exact_range(&lines, 1, TOTAL)?;
    }
    let idle_rest = bounded(
        BIG_PUSH,
        "the idle follower to catch up",
        read_to_end(&mut idle),
    )
    .await??;
    check_increasing(&idle_rest)?;
    check_exact_range(&idle_rest, 1, TOTAL)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_shutdown_ends_followers_and_watchers_with_unavailable() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let job = jobq.enqueue(spec("logs-shutdown")).await?;
    let leased = jobq.lease_one("worker-shutdown").await?;
    push(&jobq, &leased, vec![stdout_lines("line", 0, 3)]).await?;
    let mut follower = open_log_stream(&jobq, log_request(&job.id, true, 0, &[])).await?;
    read_until(&mut follower, position(1, 4)).await?;
    let mut watcher = jobq
        .queue()
        .watch_jobs(WatchJobsRequest::default())
        .await?
        .into_inner();
    server.shutdown().await?;
    let ended = bounded(NEXT_MESSAGE, "the follower's end", follower.message()).await?;
    match ended {
        Err(status) if status.code() == Code::Unavailable => {}
        other => bail!(
            "a follower of a running job must end with UNAVAILABLE at shutdown, got {other:?}"
        ),
    }
    let watch_end = bounded(NEXT_MESSAGE, "the watcher's end", async {
        loop {
            match watcher.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await?;
    match watch_end {
        Err(status) if status.code() == Code::Unavailable => Ok(()),
        other => bail!("a watcher must end with UNAVAILABLE at shutdown, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_lines_and_logs_are_cut_and_marked() -> Result<()> {
    let server = TestServer::start_with(|config| {
        config.max_log_line_bytes = 64;
        config.max_job_log_bytes = 1000;
    })
    .await?;
    let jobq = server.client();
    let job = jobq.enqueue(spec("logs-limits")).await?;
    let leased = jobq.lease_one("worker-limits").await?;
    let long = "é".repeat(100);
    let first = push(
        &jobq,
        &leased,
        vec![vec![entry(LogStream::Stdout, long.clone())]],
    )
    .await?;
    ensure!(
        first.truncated_lines == 1 && first.accepted_lines == 1,
        "{first:?}"
    );
    let lines = all_lines(&jobq, &job.id).await?;
    let cut = lines
        .iter()
        .find(|line| line.stream() == LogStream::Stdout)
        .context("the cut line")?;
    ensure!(cut.message.contains("[line cut:"), "{}", cut.message);
    ensure!(
        cut.message.starts_with(&long[..64]),
        "cut on a char boundary: {}",
        cut.message
    );

    let flood = push(
        &jobq,
        &leased,
        vec![stdout_lines("flood line that is long enough", 0, 100)],
    )
    .await?;
    ensure!(flood.dropped_lines > 0, "{flood:?}");
    ensure!(
        flood.accepted_lines + flood.dropped_lines == 100,
        "{flood:?}"
    );
    let more = push(&jobq, &leased, vec![stdout_lines("more", 0, 5)]).await?;
    ensure!(
        more.dropped_lines == 5 && more.accepted_lines == 0,
        "{more:?}"
    );
    let lines = all_lines(&jobq, &job.id).await?;
    let notices: Vec<_> = lines
        .iter()
        .filter(|line| line.message.starts_with("log limit of 1000 bytes reached"))
        .collect();
    ensure!(notices.len() == 1, "one limit notice: {lines:#?}");
    for file in ["stdout.log", "stderr.log"] {
        ensure!(
            file_lines(&server, &job.id, file)?
                .iter()
                .any(|line| line.contains("log limit of 1000 bytes reached")),
            "{file} marks where the output was cut"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_numbered_push_sent_again_is_not_stored_twice() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let job = jobq.enqueue(spec("logs-numbered")).await?;
    let leased = jobq.lease_one("worker-numbered").await?;
    let numbered = |first_sequence: u64, lines: Vec<LogEntry>| PushJobLogsRequest {
        lease: Some(leased.lease()),
        entries: lines,
        first_sequence,
    };
    let send = |messages: Vec<PushJobLogsRequest>| {
        let jobq = jobq.clone();
        async move {
            anyhow::Ok(
                jobq.worker()
                    .push_job_logs(tokio_stream::iter(messages))
                    .await?
                    .into_inner(),
            )
        }
    };
    let first = send(vec![numbered(1, stdout_lines("n", 1, 3))]).await?;
    ensure!(
        first.accepted_lines == 3 && first.duplicate_lines == 0,
        "{first:?}"
    );
    // The answer was lost; the worker sends the same batch again, and one more line.
    let again = send(vec![
        numbered(1, stdout_lines("n", 1, 3)),
        numbered(3, stdout_lines("n", 3, 2)),
    ])
    .await?;
    ensure!(
        again.accepted_lines == 1 && again.duplicate_lines == 4,
        "{again:?}"
    );
    let lines = all_lines(&jobq, &job.id).await?;
    ensure!(
        messages_of(&lines, LogStream::Stdout) == ["n 1", "n 2", "n 3", "n 4"],
        "{lines:#?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_with_a_stale_lease_is_refused_naming_the_job_and_writes_nothing() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let job = jobq.enqueue(spec("logs-stale")).await?;
    let leased = jobq.lease_one("worker-stale").await?;
    jobq.complete(&leased).await?;
    let refused = try_push(&jobq, &leased.lease(), vec![stdout_lines("late", 0, 2)]).await;
    let status = expect_status(refused, Code::FailedPrecondition, "stale")?;
    let details = tonic_types::StatusExt::get_error_details(&status);
    let info = details.error_info().context("an ErrorInfo detail")?;
    ensure!(info.reason == "LEASE_STALE", "{info:?}");
    ensure!(info.metadata.get("job_id") == Some(&job.id), "{info:?}");
    ensure!(!job_dir(&server, &job.id).exists(), "nothing was written");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_pushes_are_refused_naming_the_field_and_write_nothing() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let job = jobq.enqueue(spec("logs-invalid")).await?;
    let leased = jobq.lease_one("worker-invalid").await?;
    let cases: Vec<(Vec<LogEntry>, &str)> = vec![
        (
            vec![entry(LogStream::Unspecified, "x")],
            "entries[0].stream",
        ),
        (
            vec![
                entry(LogStream::Stdout, "ok"),
                LogEntry {
                    progress_percent: Some(101),
                    ..entry(LogStream::Progress, "too far")
                },
            ],
            "entries[1].progress_percent",
        ),
        (Vec::new(), "entries"),
        (
            vec![LogEntry {
                time: Some(timestamp_from_millis(253_402_300_800_000)),
                ..entry(LogStream::Stdout, "year 10000")
            }],
            "entries[0].time",
        ),
    ];
    for (entries, field) in cases {
        let refused = try_push(&jobq, &leased.lease(), vec![entries]).await;
        expect_status(refused, Code::InvalidArgument, field)?;
    }
    ensure!(!job_dir(&server, &job.id).exists(), "nothing was written");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_of_deleted_jobs_are_gone() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let job = jobq.enqueue(spec("logs-delete")).await?;
    let leased = jobq.lease_one("worker-delete").await?;
    push(&jobq, &leased, vec![stdout_lines("bye", 0, 3)]).await?;
    jobq.complete(&leased).await?;
    ensure!(job_dir(&server, &job.id).exists());
    jobq.queue()
        .delete_jobs(DeleteJobsRequest {
            selector: Some(JobSelector {
                job_ids: vec![job.id.clone()],
                ..JobSelector::default()
            }),
        })
        .await?;
    eventually(
        Duration::from_secs(10),
        "the log directory to go",
        || async { Ok((!job_dir(&server, &job.id).exists()).then_some(())) },
    )
    .await?;
    let gone = try_get_logs(
        &jobq,
        GetJobLogsRequest {
            job_id: job.id.clone(),
            ..GetJobLogsRequest::default()
        },
    )
    .await;
    expect_status(gone, Code::NotFound, &job.id)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_job_logs_pages_through_a_log() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let job = jobq.enqueue(spec("logs-pages")).await?;
    let leased = jobq.lease_one("worker-pages").await?;
    push(
        &jobq,
        &leased,
        vec![
            stdout_lines("page", 0, 1000),
            stdout_lines("page", 1000, 1000),
            stdout_lines("page", 2000, 500),
        ],
    )
    .await?;
    let failed = jobq
        .try_fail(FailJobRequest {
            lease: Some(leased.lease()),
            error: "again".into(),
            retryable: true,
            retry_after: Some(duration(Duration::ZERO)),
        })
        .await?;
    ensure!(
        failed.state() == jobq_tests::pb::JobState::Queued,
        "{failed:?}"
    );
    let mut pages = Vec::new();
    let mut after_position = 0;
    loop {
        let page = try_get_logs(
            &jobq,
            GetJobLogsRequest {
                job_id: job.id.clone(),
                after_position,
                page_size: 1000,
                streams: Vec::new(),
            },
        )
        .await?;
        ensure!(page.lines.len() <= 1000);
        after_position = page.next_after_position;
        let end = page.end_of_log;
        pages.push(page.lines);
        if end {
            break;
        }
        ensure!(pages.len() < 10, "too many pages");
    }
    let lines: Vec<LogLine> = pages.concat();
    check_increasing(&lines)?;
    check_exact_range(&lines, 1, 2500)?;
    ensure!(
        lines.len() == 1 + 1 + 2500 + 1,
        "enqueued, leased, 2500 lines, failed: {}",
        lines.len()
    );
    ensure!(
        lines
            .last()
            .is_some_and(|line| line.message.starts_with("attempt 1 failed: again"))
    );
    Ok(())
}

fn open_fds(pid: u32) -> Result<usize> {
    let dir = format!("/proc/{pid}/fd");
    Ok(std::fs::read_dir(&dir)
        .with_context(|| format!("listing {dir}"))?
        .count())
}

/// A queue of thousands of waiting jobs must cost the server no file (no
/// directory, no handle): their logs are told from their records.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_jobs_hold_no_log_files() -> Result<()> {
    const JOBS: usize = 1000;
    /// Generous room for the pool and sockets.
    const MORE_FDS_ALLOWED: usize = 100;

    let data_dir = tempfile::Builder::new().prefix("jobq-e2e-fds-").tempdir()?;
    let database =
        jobq_tests::TestDatabase::provision(jobq_tests::Backend::from_env()?, data_dir.path())
            .await?;
    let mut server =
        jobq_tests::ServerCommand::fast(crate::server_binary(), data_dir.path(), &database)
            .spawn()
            .await?;
    let jobq = server.client().await?;
    jobq.enqueue(spec("fds")).await?;
    let before = open_fds(server.pid())?;
    jobq.enqueue_batch((0..JOBS).map(|_| spec("fds")).collect())
        .await?;
    let after = open_fds(server.pid())?;
    let logs = data_dir.path().join("logs").join("jobs");
    let dirs = std::fs::read_dir(&logs).map_or(0, Iterator::count);
    ensure!(
        dirs == 0,
        "{dirs} job log directories for jobs that wrote nothing"
    );
    ensure!(
        after <= before + MORE_FDS_ALLOWED,
        "the server went from {before} to {after} open file descriptors for {JOBS} waiting jobs"
    );
    server.sigterm().await?;
    server.wait_exit(Duration::from_secs(15)).await?;
    Ok(())
}
