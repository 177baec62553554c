//! A small bench of job logs: push throughput (lines/s through one
//! PushJobLogs call) and the bytes on disk per line (stdout.log plus
//! events.jsonl) against the bytes of the messages themselves.
//!
//! Starts an in-process server with a temp data dir (SQLite), leases one job
//! and pushes `--lines` stdout lines of `--message-bytes` bytes in batches of
//! `--batch`. Run: `cargo run -p jobq-tests --bin jobq-bench-logs [-- --lines N]`
//! (add `--release` for optimized numbers).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use jobq_tests::pb::{LeaseJobsRequest, LogEntry, LogStream, PushJobLogsRequest};
use jobq_tests::{LeasedJobExt, TestServer, duration, spec};

/// What to push.
struct Options {
    lines: usize,
    batch: usize,
    message_bytes: usize,
}

impl Options {
    fn parse() -> Result<Self> {
        let mut options = Self {
            lines: 200_000,
            batch: 500,
            message_bytes: 80,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .with_context(|| format!("{flag} needs a value"))?;
            let value: usize = value
                .parse()
                .with_context(|| format!("{flag} {value:?} is not a number"))?;
            match flag.as_str() {
                "--lines" => options.lines = value,
                "--batch" => options.batch = value,
                "--message-bytes" => options.message_bytes = value,
                other => bail!("unknown flag {other}; use --lines, --batch, --message-bytes"),
            }
        }
        ensure!(
            (1..=1000).contains(&options.batch),
            "--batch must be 1..=1000"
        );
        ensure!(
            options.message_bytes >= 16,
            "--message-bytes must be at least 16"
        );
        Ok(options)
    }
}

/// The message of line `index`: a counter padded with '.' to `bytes` bytes.
fn message(index: usize, bytes: usize) -> String {
    let mut message = format!("line {index:010} ");
    message.extend(std::iter::repeat_n(
        '.',
        bytes.saturating_sub(message.len()),
    ));
    message
}

#[tokio::main]
async fn main() -> Result<()> {
    let options = Options::parse()?;
    let server = TestServer::start().await?;
    let jobq = server.client();
    let job = jobq.enqueue(spec("bench-logs")).await?;
    // The longest lease the server grants, so no heartbeat is needed.
    let leased = jobq
        .lease(LeaseJobsRequest {
            lease_duration: Some(duration(Duration::from_secs(600))),
            ..jobq_tests::lease_request("bench-worker", 1)
        })
        .await?
        .pop()
        .context("no job leased")?;
    ensure!(leased.id() == job.id, "leased another job than the bench's");

    let lease = leased.lease();
    let Options {
        lines,
        batch,
        message_bytes,
    } = options;
    // Built as they are sent, so the timing includes the client's own work
    // as a real worker's would.
    let requests = tokio_stream::iter((0..lines).step_by(batch).map(move |first| {
        let entries = (first..(first + batch).min(lines))
            .map(|index| LogEntry {
                stream: LogStream::Stdout.into(),
                message: message(index, message_bytes),
                ..LogEntry::default()
            })
            .collect();
        PushJobLogsRequest {
            lease: Some(lease.clone()),
            entries,
            first_sequence: first as u64 + 1,
        }
    }));
    let started = Instant::now();
    let pushed = jobq
        .worker()
        .push_job_logs(requests)
        .await
        .context("PushJobLogs")?
        .into_inner();
    let elapsed = started.elapsed();
    ensure!(
        pushed.accepted_lines == lines as u64,
        "accepted {} of {lines} lines",
        pushed.accepted_lines
    );

    let dir = server
        .data_dir()
        .join("logs")
        .join("jobs")
        .join(leased.id());
    let size = |name: &str| -> Result<u64> {
        Ok(std::fs::metadata(dir.join(name))
            .with_context(|| format!("{name} in {}", dir.display()))?
            .len())
    };
    let stdout = size("stdout.log")?;
    let stderr = size("stderr.log")?;
    let events = size("events.jsonl")?;
    let total = stdout + stderr + events;
    let message_total = (lines * message_bytes) as u64;
    let per_line = |bytes: u64| bytes as f64 / lines as f64;

    println!(
        "pushed {lines} lines of {message_bytes} bytes in batches of {batch} in {:.3} s: {:.0} lines/s ({:.1} MB/s of messages)",
        elapsed.as_secs_f64(),
        lines as f64 / elapsed.as_secs_f64(),
        message_total as f64 / elapsed.as_secs_f64() / 1e6,
    );
    println!(
        "on disk: stdout.log {:.1} B/line, events.jsonl {:.1} B/line, total {:.1} B/line \
         for a {message_bytes}-byte message: overhead {:.1} B/line beyond the message ({:.2}x)",
        per_line(stdout),
        per_line(events),
        per_line(total),
        per_line(total - message_total),
        total as f64 / message_total as f64,
    );
    jobq.complete(&leased).await?;
    server.shutdown().await
}
