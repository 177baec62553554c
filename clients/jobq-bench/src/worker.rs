//! The bench's worker process: the Rust SDK's worker with one job type,
//! `bench`, whose payload says what to do (`seq`, the enqueue time `sent_us`,
//! for the mixed and soak workloads `fail_once`, `fail_times`, `always_fail`,
//! `log_lines`, `sleep_ms`).
//!
//! It talks to the bench over its standard streams: it prints
//! `acked COUNT LAST_ACK_NS` whenever more outcomes were acknowledged by the
//! server, and when its stdin closes it stops gracefully and prints one
//! `report JSON` line with every job it handled and the pickup latencies.
//! With `trace_runs` (the soak) it also prints one `ran JSON` line per
//! handler run as soon as the server answered its outcome, so the runs of a
//! worker the bench kills with SIGKILL are known up to its death.

use std::collections::HashMap;
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

/// One handler run, as the worker saw it (`ran` lines, with `trace_runs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerRun {
    /// The job.
    pub job_id: String,
    /// The attempt number the server gave the lease.
    pub attempt: i32,
    /// When the handler started and returned, ns since the Unix epoch.
    pub start_ns: u64,
    /// See `start_ns`.
    pub end_ns: u64,
    /// The handler returned success.
    pub ok: bool,
    /// The server recorded the outcome (false: it refused it, the lease
    /// was no longer this worker's).
    pub recorded: bool,
}

/// How a bench worker process runs.
#[derive(Debug, Clone, Default)]
pub struct WorkerOptions {
    /// Handler slots.
    pub concurrency: usize,
    /// Bearer token.
    pub token: Option<String>,
    /// Lease asked for (default: the SDK's).
    pub lease: Option<Duration>,
    /// Most jobs leased ahead of the free slots (default: the SDK's).
    pub lease_ahead: Option<usize>,
    /// Print a `ran` line per handler run.
    pub trace_runs: bool,
}

/// Runs that ended and wait for the server's answer, by job id; then lines to print.
#[derive(Default)]
struct RunTrace {
    ended: Mutex<HashMap<String, WorkerRun>>,
    lines: Mutex<Vec<String>>,
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
    fail_times: i32,
    #[serde(default)]
    always_fail: bool,
    #[serde(default)]
    log_lines: u32,
    #[serde(default)]
    sleep_ms: u64,
}

async fn handle(
    ctx: JobContext,
    report: Arc<Mutex<WorkerReport>>,
    trace: Option<Arc<RunTrace>>,
) -> JobResult {
    let started = unix_ns();
    let outcome = run_job(&ctx, &report, started).await;
    if let Some(trace) = trace {
        let run = WorkerRun {
            job_id: ctx.id().to_owned(),
            attempt: ctx.attempt(),
            start_ns: started,
            end_ns: unix_ns(),
            ok: outcome.is_ok(),
            recorded: false,
        };
        trace
            .ended
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(run.job_id.clone(), run);
    }
    outcome
}

async fn run_job(ctx: &JobContext, report: &Mutex<WorkerReport>, started: u64) -> JobResult {
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
    let fail = (payload.fail_once && ctx.attempt() == 1)
        || ctx.attempt() <= payload.fail_times
        || payload.always_fail;
    report
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .handled
        .push((payload.seq, ctx.attempt(), !fail));
    if fail {
        return Err(
            JobError::retryable(format!("bench: attempt {} fails", ctx.attempt()))
                .retry_after(Duration::ZERO),
        );
    }
    Ok(serde_json::Value::Null)
}

/// Runs the worker process until its stdin closes.
pub async fn run(endpoint: &str, options: WorkerOptions) -> anyhow::Result<()> {
    let mut config = ClientConfig::builder(endpoint);
    if let Some(token) = &options.token {
        config = config.token(token);
    }
    let client = Client::connect(config.build()?)?;
    let mut worker_config = WorkerConfig::builder()
        .queues([BENCH_QUEUE])
        .concurrency(options.concurrency)
        .poll_wait(Duration::from_secs(5));
    if let Some(lease) = options.lease {
        worker_config = worker_config.lease_duration(lease);
    }
    if let Some(jobs) = options.lease_ahead {
        worker_config = worker_config.lease_ahead(jobs);
    }
    let worker_config = worker_config.build()?;
    let trace = options.trace_runs.then(|| Arc::new(RunTrace::default()));
    let (handler_trace, reported_trace, printed_trace) =
        (trace.clone(), trace.clone(), trace.clone());
    let report = Arc::new(Mutex::new(WorkerReport::default()));
    let acked = Arc::new(AtomicU64::new(0));
    let last_ack = Arc::new(AtomicU64::new(0));
    let handler_report = report.clone();
    let (counter, stamp) = (acked.clone(), last_ack.clone());
    let worker = Worker::new(client, worker_config)
        .handler(
            JOB_TYPE,
            handler_fn(move |ctx| handle(ctx, handler_report.clone(), handler_trace.clone())),
        )
        .on_reported(move |job_id, recorded| {
            if let Some(trace) = &reported_trace {
                let run = trace
                    .ended
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(job_id);
                if let Some(mut run) = run
                    && let Ok(json) = serde_json::to_string(&{
                        run.recorded = recorded;
                        run
                    })
                {
                    trace
                        .lines
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(format!("ran {json}\n"));
                }
            }
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
            if let Some(trace) = &printed_trace {
                let lines = std::mem::take(
                    &mut *trace.lines.lock().unwrap_or_else(PoisonError::into_inner),
                );
                let any = !lines.is_empty();
                for line in lines {
                    if stdout.write_all(line.as_bytes()).await.is_err() {
                        return;
                    }
                }
                if any && stdout.flush().await.is_err() {
                    return;
                }
            }
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
    let _ = progress.await;
    let report = std::mem::take(&mut *report.lock().unwrap_or_else(PoisonError::into_inner));
    let mut stdout = tokio::io::stdout();
    if let Some(trace) = &trace {
        let lines =
            std::mem::take(&mut *trace.lines.lock().unwrap_or_else(PoisonError::into_inner));
        for line in lines {
            stdout.write_all(line.as_bytes()).await?;
        }
    }
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
