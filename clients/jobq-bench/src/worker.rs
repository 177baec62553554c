//! The bench's worker process: the Rust SDK's worker with one job type,
//! `bench`, whose payload says what to do (`seq`, the enqueue time `sent_us`,
//! and for the mixed workload `fail_once`, `log_lines`, `sleep_ms`).
//!
//! It talks to the bench over its standard streams: it prints
//! `acked COUNT LAST_ACK_NS` whenever more outcomes were acknowledged by the
//! server, and when its stdin closes it stops gracefully and prints one
//! `report JSON` line with every job it handled and the pickup latencies.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jobq_client::{
    Client, ClientConfig, JobContext, JobError, JobResult, Shutdown, Worker, WorkerConfig,
    handler_fn,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The job type of the bench.
pub const JOB_TYPE: &str = "bench";
/// The queue the bench's jobs go to.
pub const BENCH_QUEUE: &str = "bench";

/// What one worker process did.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    /// (seq, attempt, succeeded) of every attempt run.
    pub handled: Vec<(u64, i32, bool)>,
    /// Enqueue-to-handler-start times, microseconds.
    pub pickup_us: Vec<u64>,
}

/// Nanoseconds since the Unix epoch.
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
        })
}

#[derive(Deserialize)]
struct BenchPayload {
    seq: u64,
    #[serde(default)]
    sent_us: Option<u64>,
    #[serde(default)]
    fail_once: bool,
    #[serde(default)]
    log_lines: u32,
    #[serde(default)]
    sleep_ms: u64,
}

async fn handle(ctx: JobContext, report: Arc<Mutex<WorkerReport>>) -> JobResult {
    let started = unix_ns();
    let payload: BenchPayload = ctx.payload()?;
    // Microseconds: JSON numbers are doubles, exact only up to 2^53.
    if let Some(sent) = payload.sent_us {
        let pickup = (started / 1000).saturating_sub(sent);
        report
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pickup_us
            .push(pickup);
    }
    for line in 0..payload.log_lines {
        ctx.log()
            .stdout(format!("bench job {} line {line}", payload.seq));
    }
    if payload.sleep_ms > 0 {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(payload.sleep_ms)) => {}
            () = ctx.cancelled() => return Err(ctx.stopped_error()),
        }
    }
    let fail = payload.fail_once && ctx.attempt() == 1;
    report
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .handled
        .push((payload.seq, ctx.attempt(), !fail));
    if fail {
        return Err(
            JobError::retryable("bench: the first attempt fails").retry_after(Duration::ZERO)
        );
    }
    Ok(serde_json::Value::Null)
}

/// Runs the worker process until its stdin closes.
pub async fn run(endpoint: &str, concurrency: usize, token: Option<&str>) -> anyhow::Result<()> {
    let mut config = ClientConfig::builder(endpoint);
    if let Some(token) = token {
        config = config.token(token);
    }
    let client = Client::connect(config.build()?)?;
    let worker_config = WorkerConfig::builder()
        .queues([BENCH_QUEUE])
        .concurrency(concurrency)
        .poll_wait(Duration::from_secs(5))
        .build()?;
    let report = Arc::new(Mutex::new(WorkerReport::default()));
    let acked = Arc::new(AtomicU64::new(0));
    let last_ack = Arc::new(AtomicU64::new(0));
    let handler_report = report.clone();
    let (counter, stamp) = (acked.clone(), last_ack.clone());
    let worker = Worker::new(client, worker_config)
        .handler(
            JOB_TYPE,
            handler_fn(move |ctx| handle(ctx, handler_report.clone())),
        )
        .on_reported(move |_, recorded| {
            if recorded {
                stamp.store(unix_ns(), Ordering::Relaxed);
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
    let shutdown = Shutdown::new();
    let stopper = shutdown.clone();
    tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut sink = [0u8; 64];
        while matches!(stdin.read(&mut sink).await, Ok(n) if n > 0) {}
        stopper.request_graceful();
    });
    let progress_acked = acked.clone();
    let final_ack = last_ack.clone();
    let progress = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        let mut told = u64::MAX;
        loop {
            let count = progress_acked.load(Ordering::Relaxed);
            if count != told {
                told = count;
                let line = format!("acked {count} {}\n", last_ack.load(Ordering::Relaxed));
                if stdout.write_all(line.as_bytes()).await.is_err() || stdout.flush().await.is_err()
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    worker.run(shutdown).await?;
    progress.abort();
    let report = std::mem::take(&mut *report.lock().unwrap_or_else(PoisonError::into_inner));
    let mut stdout = tokio::io::stdout();
    stdout
        .write_all(
            format!(
                "acked {} {}\nreport {}\n",
                acked.load(Ordering::Relaxed),
                final_ack.load(Ordering::Relaxed),
                serde_json::to_string(&report)?
            )
            .as_bytes(),
        )
        .await?;
    stdout.flush().await?;
    Ok(())
}
