//! Per-job logs: PushJobLogs into `logs/jobs/{id}/` (stdout.log, stderr.log,
//! events.jsonl), replay and follow with StreamJobLogs, paging with
//! GetJobLogs, the size limits, stale leases and deleted jobs.
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
    StreamJobLogsRequest, StreamJobLogsResponse,
};
use jobq_tests::{
    JobqClient, LeasedJobExt, TestServer, bounded, duration, eventually, expect_status, spec,
    timestamp_from_millis,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
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
        progress_percent: -1,
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

/// Reads lines until one at `position` or later has arrived; a lag or the end
/// of the stream before that is a failure.
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
        ensure!(
            !message.lagged,
            "the follower was told it lagged (resume after {}) while reading up to {position}",
            message.resume_after_position
        );
        lines.extend(message.lines);
    }
    Ok(lines)
}

/// Reads lines until the server ends the stream; a lag is a failure.
pub(crate) async fn read_to_end(
    stream: &mut Streaming<StreamJobLogsResponse>,
) -> Result<Vec<LogLine>> {
    let mut lines = Vec::new();
    while let Some(message) = next_log_message(stream).await? {
        ensure!(
            !message.lagged,
            "the follower was told it lagged (resume after {})",
            message.resume_after_position
        );
        lines.extend(message.lines);
    }
    Ok(lines)
}

/// The positions of `lines`.
pub(crate) fn positions(lines: &[LogLine]) -> Vec<u64> {
    lines.iter().map(|line| line.position).collect()
}

/// Checks that `lines` are exactly the positions `first..=last`, in order.
pub(crate) fn check_exact_range(lines: &[LogLine], first: u64, last: u64) -> Result<()> {
    let got = positions(lines);
    if got == (first..=last).collect::<Vec<_>>() {
        return Ok(());
    }
    let mut seen = BTreeMap::new();
    for position in &got {
        *seen.entry(*position).or_insert(0_u32) += 1;
    }
    let duplicates: Vec<_> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(p, _)| *p)
        .collect();
    let missing: Vec<_> = (first..=last).filter(|p| !seen.contains_key(p)).collect();
    let out_of_range: Vec<_> = got
        .iter()
        .filter(|p| !(first..=last).contains(*p))
        .collect();
    bail!(
        "expected positions {first}..={last} once each, in order; got {} lines: \
         duplicates {:?}, missing {:?} (first 20), out of range {:?} (first 20)",
        got.len(),
        &duplicates[..duplicates.len().min(20)],
        &missing[..missing.len().min(20)],
        &out_of_range[..out_of_range.len().min(20)],
    )
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_lines_land_in_the_files_and_replay_in_order_per_stream() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let job = jobq.enqueue(spec("logs-files")).await?;
    let leased = jobq.lease_one("worker-files").await?;
    assert_eq!(leased.id(), job.id);

    // 2024-01-02T03:04:05.678Z: a time the worker set, kept as given.
    let worker_time_ms = 1_704_164_645_678;
    let batches = vec![
        vec![
            entry(LogStream::Stdout, "out 1"),
            entry(LogStream::Stderr, "err 1"),
            LogEntry {
                time: Some(timestamp_from_millis(worker_time_ms)),
                ..entry(LogStream::Stdout, "out 2")
            },
            LogEntry {
                progress_percent: 50,
                ..entry(LogStream::Progress, "halfway")
            },
            LogEntry {
                fields: r#"{"rows":3}"#.to_owned(),
                ..entry(LogStream::Stdout, "out 3")
            },
        ],
        vec![
            entry(LogStream::Stderr, "err 2"),
            entry(LogStream::Stdout, "out 4"),
            entry(LogStream::Stderr, "err 3"),
        ],
    ];
    let pushed = push(&jobq, &leased, batches).await?;
    // Positions 1 and 2 are the server's "enqueued" and "leased" lines.
    assert_eq!(
        pushed,
        PushJobLogsResponse {
            accepted_lines: 8,
            truncated_lines: 0,
            dropped_lines: 0,
            last_position: 10,
        }
    );

    // stdout.log and stderr.log: readable, one line each, attempt marked.
    let stdout = file_lines(&server, &job.id, "stdout.log")?;
    let stderr = file_lines(&server, &job.id, "stderr.log")?;
    let expected_stdout = ["out 1", "out 2", "out 3", "out 4"];
    let expected_stderr = ["err 1", "err 2", "err 3"];
    assert_eq!(
        stdout.len(),
        expected_stdout.len(),
        "stdout.log: {stdout:#?}"
    );
    assert_eq!(
        stderr.len(),
        expected_stderr.len(),
        "stderr.log: {stderr:#?}"
    );
    for (line, message) in stdout.iter().zip(expected_stdout) {
        check_readable_line(line, 1, message)?;
    }
    for (line, message) in stderr.iter().zip(expected_stderr) {
        check_readable_line(line, 1, message)?;
    }
    assert!(
        stdout[1].starts_with("2024-01-02T03:04:05.678Z "),
        "the worker's own time is kept: {:?}",
        stdout[1]
    );

    // events.jsonl: every line of every stream, positions 1.. without gaps.
    let events = events_jsonl(&server, &job.id)?;
    let summary: Vec<(u64, i64, &str, &str)> = events
        .iter()
        .map(|event| {
            (
                event["pos"].as_u64().unwrap_or(0),
                event["attempt"].as_i64().unwrap_or(-1),
                event["stream"].as_str().unwrap_or("?"),
                event["message"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    assert_eq!(summary.len(), 10, "events.jsonl: {events:#?}");
    assert_eq!(
        &summary[2..],
        &[
            (3, 1, "stdout", "out 1"),
            (4, 1, "stderr", "err 1"),
            (5, 1, "stdout", "out 2"),
            (6, 1, "progress", "halfway"),
            (7, 1, "stdout", "out 3"),
            (8, 1, "stderr", "err 2"),
            (9, 1, "stdout", "out 4"),
            (10, 1, "stderr", "err 3"),
        ]
    );
    assert_eq!(summary[0].0, 1);
    assert_eq!(summary[0].2, "system", "the enqueue is narrated first");
    assert!(summary[0].3.contains("enqueued"), "{:?}", summary[0].3);
    assert_eq!((summary[1].0, summary[1].1, summary[1].2), (2, 1, "system"));
    assert!(
        summary[1].3.contains("leased by worker worker-files"),
        "{:?}",
        summary[1].3
    );
    assert!(
        events.iter().all(|event| event["time"].is_i64()),
        "{events:#?}"
    );
    assert_eq!(events[4]["time"].as_i64(), Some(worker_time_ms));
    assert_eq!(events[5]["fields"], serde_json::json!({ "percent": 50 }));
    assert_eq!(events[6]["fields"], serde_json::json!({ "rows": 3 }));

    // StreamJobLogs without follow: the stored lines, in order, then the end
    // (even though the job still runs).
    let mut everything = open_log_stream(&jobq, log_request(&job.id, false, 0, &[])).await?;
    let replayed = read_to_end(&mut everything).await?;
    check_exact_range(&replayed, 1, 10)?;
    let replayed_summary: Vec<(u64, i32, &str)> = replayed
        .iter()
        .map(|line| (line.position, line.attempt, line.message.as_str()))
        .collect();
    let stored_summary: Vec<(u64, i32, &str)> = summary
        .iter()
        .map(|(position, attempt, _, message)| (*position, *attempt as i32, *message))
        .collect();
    assert_eq!(replayed_summary, stored_summary);
    assert_eq!(
        replayed[4].time.as_ref().map(jobq_tests::millis),
        Some(worker_time_ms)
    );
    assert_eq!(replayed[5].stream(), LogStream::Progress);
    let progress_fields: serde_json::Value = serde_json::from_str(&replayed[5].fields)?;
    assert_eq!(progress_fields, serde_json::json!({ "percent": 50 }));

    // Filtered per stream.
    for (streams, expected) in [
        (
            vec![LogStream::Stdout],
            vec![(3, "out 1"), (5, "out 2"), (7, "out 3"), (9, "out 4")],
        ),
        (
            vec![LogStream::Stderr],
            vec![(4, "err 1"), (8, "err 2"), (10, "err 3")],
        ),
        (
            vec![LogStream::Stderr, LogStream::Progress],
            vec![(4, "err 1"), (6, "halfway"), (8, "err 2"), (10, "err 3")],
        ),
    ] {
        let mut filtered = open_log_stream(&jobq, log_request(&job.id, false, 0, &streams)).await?;
        let lines = read_to_end(&mut filtered).await?;
        let got: Vec<(u64, &str)> = lines
            .iter()
            .map(|line| (line.position, line.message.as_str()))
            .collect();
        assert_eq!(got, expected, "streams {streams:?}");
    }

    jobq.complete(&leased).await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_attached_before_the_job_starts_sees_every_line_and_ends_when_it_succeeds()
-> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let job = jobq.enqueue(spec("logs-follow")).await?;

    let mut everything = open_log_stream(&jobq, log_request(&job.id, true, 0, &[])).await?;
    let mut stdout_only =
        open_log_stream(&jobq, log_request(&job.id, true, 0, &[LogStream::Stdout])).await?;

    // Each step waits for its lines to reach the follower before the next
    // one, so the lines are seen live, not only replayed at the end.
    let mut seen = read_until(&mut everything, 1).await?;
    assert_eq!(seen[0].stream(), LogStream::System);
    assert!(
        seen[0].message.contains("enqueued"),
        "{:?}",
        seen[0].message
    );

    let leased = jobq.lease_one("worker-follow").await?;
    seen.extend(read_until(&mut everything, 2).await?);
    assert!(
        seen[1].message.contains("leased by worker worker-follow"),
        "{:?}",
        seen[1].message
    );

    let mut pushed_stdout = Vec::new();
    for batch in 0..3 {
        let mut entries = Vec::new();
        for index in 0..5 {
            let out = format!("out {batch}.{index}");
            entries.push(entry(LogStream::Stdout, out.clone()));
            entries.push(entry(LogStream::Stderr, format!("err {batch}.{index}")));
            pushed_stdout.push(out);
        }
        let pushed = push(&jobq, &leased, vec![entries]).await?;
        seen.extend(read_until(&mut everything, pushed.last_position).await?);
    }
    assert_eq!(
        jobq.get(&job.id).await?.state(),
        jobq_tests::pb::JobState::Running
    );

    jobq.complete(&leased).await?;
    // No more reading than this: the stream must end by itself.
    seen.extend(read_to_end(&mut everything).await?);
    let stored = all_lines(&jobq, &job.id).await?;
    let last = stored.last().context("the log is empty")?.position;
    check_exact_range(&seen, 1, last)?;
    assert_eq!(seen, stored, "the follower saw exactly what is stored");
    let final_line = seen.last().context("no lines")?;
    assert_eq!(final_line.stream(), LogStream::System);
    assert!(
        final_line.message.contains("succeeded"),
        "the last line narrates the success: {:?}",
        final_line.message
    );
    assert_eq!(messages_of(&seen, LogStream::Stderr).len(), 15);

    let only_stdout = read_to_end(&mut stdout_only).await?;
    assert!(
        only_stdout
            .iter()
            .all(|line| line.stream() == LogStream::Stdout)
    );
    let got: Vec<&str> = only_stdout
        .iter()
        .map(|line| line.message.as_str())
        .collect();
    assert_eq!(got, pushed_stdout);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_attached_midway_get_exactly_the_lines_after_their_position() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let job = jobq.enqueue(spec("logs-midway")).await?;
    let leased = jobq.lease_one("worker-midway").await?;
    let first = push(&jobq, &leased, vec![stdout_lines("line", 0, 100)]).await?;
    assert_eq!(first.last_position, 102);

    // Without follow: lines 51..=102, then the end.
    let mut replay = open_log_stream(&jobq, log_request(&job.id, false, 50, &[])).await?;
    check_exact_range(&read_to_end(&mut replay).await?, 51, 102)?;

    // With follow, attached after everything pushed so far has been stored.
    let mut follower = open_log_stream(&jobq, log_request(&job.id, true, 50, &[])).await?;
    let mut followed = read_until(&mut follower, 102).await?;

    // More followers attached while lines keep coming: each is opened and the
    // next batch pushed at once, so the server's replay of the stored lines
    // races the new ones. Each asks for the lines after a point a little
    // behind the end, so it needs both the replay and the live lines.
    let mut racers = Vec::new();
    let mut end = first.last_position;
    for batch in 0..10 {
        let after = end - 7;
        let stream = open_log_stream(&jobq, log_request(&job.id, true, after, &[])).await?;
        racers.push((after, stream));
        end = push(
            &jobq,
            &leased,
            vec![stdout_lines(&format!("batch {batch}"), 0, 20)],
        )
        .await?
        .last_position;
    }
    assert_eq!(end, 302);
    jobq.complete(&leased).await?;

    let stored = all_lines(&jobq, &job.id).await?;
    let last = stored.last().context("the log is empty")?.position;
    followed.extend(read_to_end(&mut follower).await?);
    check_exact_range(&followed, 51, last)?;
    assert_eq!(followed.as_slice(), &stored[50..]);
    for (after, mut stream) in racers {
        let lines = read_to_end(&mut stream).await?;
        check_exact_range(&lines, after + 1, last)
            .with_context(|| format!("follower attached after position {after}"))?;
        assert_eq!(lines.as_slice(), &stored[after as usize..]);
    }
    server.shutdown().await
}

/// Reads a follower to its end, starting over from `resume_after_position`
/// with a new call whenever it is told it lagged, and reports the highest
/// position seen as it goes. Returns every line received and how often it lagged.
async fn follow_with_resume(
    jobq: JobqClient,
    job_id: String,
    mut stream: Streaming<StreamJobLogsResponse>,
    mut lines: Vec<LogLine>,
    progress: watch::Sender<u64>,
) -> Result<(Vec<LogLine>, u32)> {
    let mut lags = 0;
    loop {
        // No per-message bound: a lagging reader may wait while the server
        // replays; the test bounds the whole follower instead.
        let message = stream.message().await.context("StreamJobLogs failed")?;
        let Some(message) = message else {
            return Ok((lines, lags));
        };
        if message.lagged {
            lags += 1;
            let last = lines.last().map_or(0, |line| line.position);
            ensure!(
                message.resume_after_position == last,
                "told to resume after {} but the last line received is {last}",
                message.resume_after_position
            );
            ensure!(lags < 1000, "the follower lagged 1000 times");
            stream = open_log_stream(
                &jobq,
                log_request(&job_id, true, message.resume_after_position, &[]),
            )
            .await?;
            continue;
        }
        lines.extend(message.lines);
        if let Some(last) = lines.last() {
            progress.send_replace(last.position);
        }
    }
}

/// A connection with small HTTP/2 receive windows, so a stream that is not
/// read fills the transport's buffers after a few dozen KiB and the server's
/// own bounded buffers decide what happens, not a 2 MiB default window.
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
async fn a_follower_that_never_reads_holds_back_neither_the_worker_nor_the_other_followers()
-> Result<()> {
    const READERS: usize = 4;
    const BATCHES: usize = 20;
    const LINES_PER_BATCH: usize = 500;
    const MESSAGE_BYTES: usize = 200;

    let server = TestServer::start().await?;
    let jobq = server.client();
    let job = jobq.enqueue(spec("logs-fanout")).await?;
    let leased = jobq.lease_one("worker-fanout").await?;

    // The follower that does not read, on a connection of its own. It reads
    // the replay of the two system lines only: that proves the server has
    // attached it before anything is pushed. Then it reads nothing more
    // until the push and the other followers are done.
    let idle_client = small_window_client(&server).await?;
    let mut idle = open_log_stream(&idle_client, log_request(&job.id, true, 0, &[])).await?;
    let idle_attached = read_until(&mut idle, 2).await?;

    // Four followers that read, each on its own connection as separate
    // processes would be.
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let client = server.connect().await?;
        let mut stream = open_log_stream(&client, log_request(&job.id, true, 0, &[])).await?;
        let attached = read_until(&mut stream, 2).await?;
        let (progress, seen) = watch::channel(0);
        let task = tokio::spawn(follow_with_resume(
            client,
            job.id.clone(),
            stream,
            attached,
            progress,
        ));
        readers.push((task, seen));
    }

    let lines_pushed = BATCHES * LINES_PER_BATCH;
    let batches: Vec<Vec<LogEntry>> = (0..BATCHES)
        .map(|batch| {
            (0..LINES_PER_BATCH)
                .map(|index| {
                    let mut message = format!("batch {batch:02} line {index:03} ");
                    message.extend(std::iter::repeat_n('.', MESSAGE_BYTES - message.len()));
                    entry(LogStream::Stdout, message)
                })
                .collect()
        })
        .collect();
    let started = Instant::now();
    let pushed = bounded(
        BIG_PUSH,
        "the push of 10,000 lines with an idle follower",
        push(&jobq, &leased, batches),
    )
    .await??;
    let push_time = started.elapsed();
    assert_eq!(pushed.accepted_lines, lines_pushed as u64);
    let last_pushed = 2 + lines_pushed as u64;
    assert_eq!(pushed.last_position, last_pushed);

    // The readers get there while the job still runs and the idle follower
    // still has not read.
    for (index, (_, seen)) in readers.iter_mut().enumerate() {
        bounded(
            BIG_PUSH,
            &format!("reader {index} to see position {last_pushed}"),
            seen.wait_for(|position| *position >= last_pushed),
        )
        .await?
        .with_context(|| format!("reader {index} ended early"))?;
    }

    // Now the idle follower: what fit in the buffers, then "lagged" with the
    // position to resume from, then the end of its stream.
    let mut idle_lines = idle_attached;
    let resume_after = loop {
        let message = next_log_message(&mut idle)
            .await?
            .context("the idle follower's stream ended without saying it lagged")?;
        if message.lagged {
            ensure!(
                message.lines.is_empty(),
                "a lagged message carries no lines"
            );
            break message.resume_after_position;
        }
        idle_lines.extend(message.lines);
    };
    let idle_last = idle_lines.last().map_or(0, |line| line.position);
    check_exact_range(&idle_lines, 1, idle_last)?;
    assert_eq!(
        resume_after, idle_last,
        "resume_after_position is the last line delivered"
    );
    assert!(
        idle_last < last_pushed,
        "the idle follower received everything ({idle_last}) and never lagged"
    );
    assert!(
        next_log_message(&mut idle).await?.is_none(),
        "the lagged stream ends"
    );
    // Resuming from there gets the rest.
    let mut resumed =
        open_log_stream(&jobq, log_request(&job.id, false, resume_after, &[])).await?;
    check_exact_range(
        &read_to_end(&mut resumed).await?,
        resume_after + 1,
        last_pushed,
    )?;

    jobq.complete(&leased).await?;
    let stored = all_lines(&jobq, &job.id).await?;
    let last = stored.last().context("the log is empty")?.position;
    assert_eq!(last, last_pushed + 1, "one more line: the success");
    let mut lags = Vec::new();
    for (index, (task, _)) in readers.into_iter().enumerate() {
        let (lines, lagged) = bounded(BIG_PUSH, &format!("reader {index} to end"), task)
            .await?
            .context("reader task panicked")??;
        check_exact_range(&lines, 1, last).with_context(|| format!("reader {index}"))?;
        lags.push(lagged);
    }
    eprintln!(
        "pushed {lines_pushed} lines in {push_time:?}; the idle follower got {idle_last} \
         before it lagged; reader lags (resumed): {lags:?}"
    );
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_lines_and_logs_are_cut_and_marked() -> Result<()> {
    const LINE_LIMIT: usize = 100;
    const LOG_LIMIT: u64 = 2000;
    const FILLER_BYTES: usize = 100;
    const FILLERS: usize = 30;

    let server = TestServer::start_with(|config| {
        config.max_log_line_bytes = LINE_LIMIT;
        config.max_job_log_bytes = LOG_LIMIT;
    })
    .await?;
    let jobq = server.client();
    let job = jobq.enqueue(spec("logs-limits")).await?;
    let leased = jobq.lease_one("worker-limits").await?;

    let long_ascii = "x".repeat(300);
    // 3-byte characters: 100 bytes is not a character boundary (99 is).
    let long_utf8 = "€".repeat(50);
    let filler = |index: usize| {
        let mut message = format!("filler {index:02} ");
        message.extend(std::iter::repeat_n('.', FILLER_BYTES - message.len()));
        message
    };
    let fillers: Vec<LogEntry> = (0..FILLERS)
        .map(|index| entry(LogStream::Stdout, filler(index)))
        .collect();
    let pushed = push(
        &jobq,
        &leased,
        vec![
            vec![
                entry(LogStream::Stdout, "short line"),
                entry(LogStream::Stdout, long_ascii.clone()),
                entry(LogStream::Stderr, long_utf8.clone()),
            ],
            fillers,
        ],
    )
    .await?;
    let pushed_lines = 3 + FILLERS as u64;
    assert_eq!(pushed.truncated_lines, 2, "{pushed:?}");
    assert_eq!(
        pushed.accepted_lines + pushed.dropped_lines,
        pushed_lines,
        "{pushed:?}"
    );
    assert!(
        pushed.dropped_lines > 0,
        "the log limit was never reached: {pushed:?}"
    );
    let kept_fillers = pushed.accepted_lines as usize - 3;

    let cut_ascii = format!("{} [line cut: 200 more bytes dropped]", "x".repeat(100));
    let cut_utf8 = format!("{} [line cut: 51 more bytes dropped]", "€".repeat(33));
    let stored = all_lines(&jobq, &job.id).await?;
    check_exact_range(&stored, 1, stored.len() as u64)?;
    let messages: Vec<&str> = stored.iter().map(|line| line.message.as_str()).collect();
    let at = |message: &str| messages.iter().position(|m| *m == message);
    let short = at("short line").context("the short line is missing")?;
    assert_eq!(
        at(&cut_ascii),
        Some(short + 1),
        "cut and marked: {messages:#?}"
    );
    assert_eq!(
        at(&cut_utf8),
        Some(short + 2),
        "cut on a char boundary: {messages:#?}"
    );
    // The fillers that fit, in order, then the limit line, once.
    let first_filler = short + 3;
    for index in 0..kept_fillers {
        assert_eq!(messages[first_filler + index], filler(index));
    }
    let limit_index = first_filler + kept_fillers;
    let limit_line = &stored[limit_index];
    assert_eq!(limit_line.stream(), LogStream::System);
    assert!(
        limit_line
            .message
            .starts_with(&format!("log limit of {LOG_LIMIT} bytes reached")),
        "{:?}",
        limit_line.message
    );
    assert_eq!(
        messages
            .iter()
            .filter(|message| message.starts_with("log limit of"))
            .count(),
        1
    );
    assert_eq!(
        stored.len(),
        limit_index + 1,
        "nothing after the limit line: {messages:#?}"
    );
    // Within the limit, and the next filler would not have fitted. The size
    // counted is the whole stored log, the server's "enqueued" and "leased"
    // lines included (the limit line itself is not counted).
    let kept_bytes: usize = messages[..limit_index].iter().map(|m| m.len()).sum();
    assert!(kept_bytes as u64 <= LOG_LIMIT, "{kept_bytes} bytes kept");
    assert!(
        (kept_bytes + FILLER_BYTES) as u64 > LOG_LIMIT,
        "{kept_bytes} bytes kept, yet a {FILLER_BYTES}-byte line was dropped"
    );

    // The readable files carry the cut lines with their markers too.
    let stdout = file_lines(&server, &job.id, "stdout.log")?;
    check_readable_line(&stdout[1], 1, &cut_ascii)?;
    let stderr = file_lines(&server, &job.id, "stderr.log")?;
    check_readable_line(&stderr[0], 1, &cut_utf8)?;
    // The kept lines, then the limit line: the cut is marked where the output is read.
    assert_eq!(stdout.len(), 2 + kept_fillers + 1);
    assert!(
        stdout
            .last()
            .is_some_and(|line| line.contains("log limit of")),
        "stdout.log does not end with the limit line: {:?}",
        stdout.last()
    );

    // A later push is dropped whole and counted, without a second limit line.
    let later = push(
        &jobq,
        &leased,
        vec![vec![entry(LogStream::Stdout, filler(99))]],
    )
    .await?;
    assert_eq!(
        (later.accepted_lines, later.dropped_lines),
        (0, 1),
        "{later:?}"
    );

    // When the job ends, the log says how much was dropped in all.
    jobq.complete(&leased).await?;
    let dropped = pushed.dropped_lines + 1;
    let summary = format!(
        "{dropped} lines ({} bytes) of output were dropped",
        dropped * FILLER_BYTES as u64
    );
    let after = all_lines(&jobq, &job.id).await?;
    let last = after.last().context("the log is empty")?;
    assert_eq!(last.stream(), LogStream::System);
    assert!(
        last.message.starts_with(&summary),
        "expected the last line to start with {summary:?}, got {:?}",
        last.message
    );
    check_exact_range(&after, 1, after.len() as u64)?;
    // The summary is marked in the readable files too, under the last attempt.
    assert_eq!(last.attempt, 1, "the summary belongs to attempt 1");
    let stdout = file_lines(&server, &job.id, "stdout.log")?;
    assert!(
        stdout
            .last()
            .is_some_and(|line| line.contains("were dropped")),
        "stdout.log does not end with the summary: {:?}",
        stdout.last()
    );
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_response_names_the_last_stored_position_when_the_last_batch_was_dropped() -> Result<()>
{
    let server = TestServer::start_with(|config| {
        config.max_log_line_bytes = 100;
        config.max_job_log_bytes = 1000;
    })
    .await?;
    let jobq = server.client();
    let job = jobq.enqueue(spec("logs-last-position")).await?;
    let leased = jobq.lease_one("worker-last-position").await?;
    let line = || entry(LogStream::Stdout, "y".repeat(100));
    // The first batch reaches the limit (the limit line is stored with it);
    // the second is dropped whole.
    let pushed = push(
        &jobq,
        &leased,
        vec![
            (0..20).map(|_| line()).collect(),
            (0..5).map(|_| line()).collect(),
        ],
    )
    .await?;
    assert!(pushed.dropped_lines >= 5, "{pushed:?}");
    let stored = all_lines(&jobq, &job.id).await?;
    let last_stored = stored.last().context("the log is empty")?.position;
    assert_eq!(
        pushed.last_position, last_stored,
        "PushJobLogsResponse.last_position is \"position of the last line stored\": {pushed:?}"
    );
    jobq.complete(&leased).await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_with_a_stale_lease_is_refused_and_writes_nothing() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let job = jobq.enqueue(spec("logs-stale")).await?;
    let first = jobq.lease_one("worker-stale").await?;
    push(
        &jobq,
        &first,
        vec![vec![entry(LogStream::Stdout, "attempt 1 output")]],
    )
    .await?;
    jobq.try_fail(FailJobRequest {
        lease: Some(first.lease()),
        error: "flaky".to_owned(),
        retryable: true,
        retry_after: Some(duration(Duration::ZERO)),
    })
    .await?;
    let second = jobq
        .lease_one_eventually("worker-stale", Duration::from_secs(10))
        .await?;
    assert_eq!(second.job().attempt, 2);

    let before = all_lines(&jobq, &job.id).await?;
    let stdout_before = file_lines(&server, &job.id, "stdout.log")?;
    let events_before = file_lines(&server, &job.id, "events.jsonl")?;
    expect_status(
        try_push(
            &jobq,
            &first.lease(),
            vec![vec![entry(LogStream::Stdout, "from the stale lease")]],
        )
        .await,
        Code::FailedPrecondition,
        "",
    )?;
    assert_eq!(all_lines(&jobq, &job.id).await?, before);
    assert_eq!(file_lines(&server, &job.id, "stdout.log")?, stdout_before);
    assert_eq!(file_lines(&server, &job.id, "events.jsonl")?, events_before);

    // The current lease may push, and its lines carry the new attempt.
    push(
        &jobq,
        &second,
        vec![vec![entry(LogStream::Stdout, "attempt 2 output")]],
    )
    .await?;
    let stdout = file_lines(&server, &job.id, "stdout.log")?;
    assert_eq!(stdout.len(), 2);
    check_readable_line(&stdout[0], 1, "attempt 1 output")?;
    check_readable_line(&stdout[1], 2, "attempt 2 output")?;

    // A lease lost in the middle of a push: what was accepted stays, the rest
    // is refused.
    let (batches, receiver) = mpsc::channel::<PushJobLogsRequest>(4);
    let worker = jobq.worker();
    let call = tokio::spawn(async move {
        let mut worker = worker;
        worker.push_job_logs(ReceiverStream::new(receiver)).await
    });
    batches
        .send(PushJobLogsRequest {
            lease: Some(second.lease()),
            entries: vec![entry(
                LogStream::Stdout,
                "accepted before the lease was lost",
            )],
        })
        .await?;
    eventually(
        Duration::from_secs(10),
        "the first batch to be stored",
        || async {
            let lines = all_lines(&jobq, &job.id).await?;
            Ok(lines
                .iter()
                .any(|line| line.message == "accepted before the lease was lost")
                .then_some(()))
        },
    )
    .await?;
    jobq.complete(&second).await?;
    // The call may already have ended when the refusal arrives; either way
    // the call's answer is what counts.
    let _ = batches
        .send(PushJobLogsRequest {
            lease: Some(second.lease()),
            entries: vec![entry(LogStream::Stdout, "after the lease was lost")],
        })
        .await;
    drop(batches);
    let answer = bounded(Duration::from_secs(15), "the interrupted push", call)
        .await?
        .context("push task panicked")?;
    expect_status(answer, Code::FailedPrecondition, "")?;
    let after = all_lines(&jobq, &job.id).await?;
    let messages: Vec<&str> = after.iter().map(|line| line.message.as_str()).collect();
    assert!(messages.contains(&"accepted before the lease was lost"));
    assert!(
        !messages.contains(&"after the lease was lost"),
        "{messages:#?}"
    );
    assert!(
        !file_lines(&server, &job.id, "stdout.log")?
            .iter()
            .any(|line| line.ends_with("after the lease was lost"))
    );
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_pushes_are_refused_naming_the_field_and_write_nothing() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let job = jobq.enqueue(spec("logs-invalid")).await?;
    let leased = jobq.lease_one("worker-invalid").await?;
    let before = all_lines(&jobq, &job.id).await?;
    let lease = leased.lease();
    let cases: Vec<(Vec<LogEntry>, &str)> = vec![
        (Vec::new(), "entries"),
        (
            vec![entry(LogStream::Unspecified, "no stream")],
            "entries[0].stream",
        ),
        (
            vec![
                entry(LogStream::Stdout, "fine"),
                LogEntry {
                    fields: "[1, 2]".to_owned(),
                    ..entry(LogStream::Stdout, "fields not an object")
                },
            ],
            "entries[1].fields",
        ),
        (
            vec![LogEntry {
                progress_percent: 101,
                ..entry(LogStream::Progress, "too far")
            }],
            "entries[0].progress_percent",
        ),
    ];
    for (entries, field) in cases {
        expect_status(
            try_push(&jobq, &lease, vec![entries]).await,
            Code::InvalidArgument,
            field,
        )?;
    }
    assert_eq!(
        all_lines(&jobq, &job.id).await?,
        before,
        "nothing was stored"
    );
    jobq.complete(&leased).await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_of_deleted_jobs_are_gone() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();

    let finished = jobq.enqueue(spec("logs-delete")).await?;
    let leased = jobq.lease_one("worker-delete").await?;
    push(&jobq, &leased, vec![stdout_lines("to be deleted", 0, 10)]).await?;
    jobq.complete(&leased).await?;
    let finished_dir = job_dir(&server, &finished.id);
    for name in ["stdout.log", "stderr.log", "events.jsonl"] {
        assert!(
            finished_dir.join(name).exists(),
            "{name} exists before the delete"
        );
    }

    // A queued job with a follower, purged through DeleteJobs.
    let queued = jobq.enqueue(spec("logs-purge")).await?;
    let queued_dir = job_dir(&server, &queued.id);
    let mut follower = open_log_stream(&jobq, log_request(&queued.id, true, 0, &[])).await?;
    read_until(&mut follower, 1).await?;
    assert!(queued_dir.join("events.jsonl").exists());

    jobq.try_delete(&finished.id).await?;
    assert!(
        !finished_dir.exists(),
        "{} is still there",
        finished_dir.display()
    );
    expect_status(
        try_get_logs(
            &jobq,
            GetJobLogsRequest {
                job_id: finished.id.clone(),
                ..GetJobLogsRequest::default()
            },
        )
        .await,
        Code::NotFound,
        "",
    )?;
    expect_status(
        jobq.queue()
            .stream_job_logs(log_request(&finished.id, false, 0, &[]))
            .await
            .map(|_| ()),
        Code::NotFound,
        "",
    )?;

    let deleted = jobq
        .queue()
        .delete_jobs(DeleteJobsRequest {
            selector: Some(JobSelector {
                ids: vec![queued.id.clone()],
                ..JobSelector::default()
            }),
        })
        .await?
        .into_inner();
    assert_eq!(deleted.job_ids, vec![queued.id.clone()]);
    assert!(
        !queued_dir.exists(),
        "{} is still there",
        queued_dir.display()
    );
    // The follower of the purged job is let go.
    read_to_end(&mut follower).await?;
    expect_status(
        try_get_logs(
            &jobq,
            GetJobLogsRequest {
                job_id: queued.id.clone(),
                ..GetJobLogsRequest::default()
            },
        )
        .await,
        Code::NotFound,
        "",
    )?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_job_logs_pages_through_a_log() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let job = jobq.enqueue(spec("logs-pages")).await?;
    let leased = jobq.lease_one("worker-pages").await?;
    let mut batches: Vec<Vec<LogEntry>> = (0..3)
        .map(|batch| stdout_lines(&format!("out {batch}"), 0, 400))
        .collect();
    batches.push(
        (0..10)
            .map(|index| entry(LogStream::Stderr, format!("err {index}")))
            .collect(),
    );
    let pushed = push(&jobq, &leased, batches).await?;
    let total = pushed.last_position;
    assert_eq!(total, 2 + 1210);

    let request = |after_position, page_size, streams: &[LogStream]| GetJobLogsRequest {
        job_id: job.id.clone(),
        after_position,
        page_size,
        streams: streams.iter().map(|stream| i32::from(*stream)).collect(),
    };

    // 500 a page: 500, 500, 212.
    let mut pages = Vec::new();
    let mut after = 0;
    loop {
        let page = try_get_logs(&jobq, request(after, 500, &[])).await?;
        check_exact_range(&page.lines, after + 1, page.next_after_position)?;
        after = page.next_after_position;
        pages.push((page.lines.len(), page.end_of_log));
        if page.end_of_log {
            break;
        }
        ensure!(
            pages.len() < 10,
            "no end_of_log after {} pages",
            pages.len()
        );
    }
    assert_eq!(pages, vec![(500, false), (500, false), (212, true)]);
    assert_eq!(after, total);

    // Past the end: nothing, end_of_log, and the position stays.
    let beyond = try_get_logs(&jobq, request(total, 500, &[])).await?;
    assert!(beyond.lines.is_empty());
    assert!(beyond.end_of_log);
    assert_eq!(beyond.next_after_position, total);

    // page_size 0 means 500.
    let default_page = try_get_logs(&jobq, request(0, 0, &[])).await?;
    assert_eq!(default_page.lines.len(), 500);
    assert!(!default_page.end_of_log);

    // One stream, 3 a page: 3, 3, 3, 1 stderr lines.
    let mut stderr_pages = Vec::new();
    let mut after = 0;
    loop {
        let page = try_get_logs(&jobq, request(after, 3, &[LogStream::Stderr])).await?;
        assert!(
            page.lines
                .iter()
                .all(|line| line.stream() == LogStream::Stderr)
        );
        after = page.next_after_position;
        stderr_pages.push(
            page.lines
                .iter()
                .map(|line| line.message.clone())
                .collect::<Vec<_>>(),
        );
        if page.end_of_log {
            break;
        }
        ensure!(
            stderr_pages.len() < 10,
            "no end_of_log after {} pages",
            stderr_pages.len()
        );
    }
    let sizes: Vec<usize> = stderr_pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![3, 3, 3, 1]);
    let all_stderr: Vec<String> = stderr_pages.concat();
    let expected: Vec<String> = (0..10).map(|index| format!("err {index}")).collect();
    assert_eq!(all_stderr, expected);
    assert_eq!(after, total, "the last stderr line is the last line");

    expect_status(
        try_get_logs(&jobq, request(0, 5001, &[])).await,
        Code::InvalidArgument,
        "page_size",
    )?;
    expect_status(
        try_get_logs(
            &jobq,
            GetJobLogsRequest {
                job_id: uuid::Uuid::now_v7().to_string(),
                ..GetJobLogsRequest::default()
            },
        )
        .await,
        Code::NotFound,
        "",
    )?;
    jobq.complete(&leased).await?;
    server.shutdown().await
}

/// Open file descriptors of a process, from `/proc/{pid}/fd`.
#[cfg(target_os = "linux")]
fn open_fds(pid: u32) -> Result<usize> {
    let dir = format!("/proc/{pid}/fd");
    Ok(std::fs::read_dir(&dir)
        .with_context(|| format!("listing {dir}"))?
        .count())
}

/// Every waiting job has a log (the "enqueued" line); a queue of thousands
/// of them must not cost the server a file handle or three each, or it runs
/// out of them and even its database stops working. Counted on a server
/// process of its own, so other tests' servers do not blur the count.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_jobs_do_not_hold_log_files_open() -> Result<()> {
    const JOBS: usize = 1000;
    /// Generous room for the pool, sockets and a bounded cache of open logs.
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
    // One job first, so the database pool and the logs directory are warm.
    jobq.enqueue(spec("fds")).await?;
    let before = open_fds(server.pid())?;

    jobq.enqueue_batch((0..JOBS).map(|_| spec("fds")).collect())
        .await?;
    let after = open_fds(server.pid())?;
    let first = jobq
        .list(jobq_tests::pb::ListJobsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await?
        .jobs
        .pop()
        .context("no job listed")?;
    assert!(
        job_dir_in(data_dir.path(), &first.id)
            .join("events.jsonl")
            .exists(),
        "each waiting job has its log"
    );
    assert!(
        after <= before + MORE_FDS_ALLOWED,
        "the server went from {before} to {after} open file descriptors for {JOBS} waiting jobs"
    );
    server.sigterm().await?;
    server.wait_exit(Duration::from_secs(15)).await?;
    Ok(())
}
