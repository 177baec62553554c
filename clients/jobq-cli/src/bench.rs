//! `jobq bench latency`: how long from an enqueue until a worker starts the
//! job, over many no-op jobs.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use jobq_client::{
    Client, ClientConfig, JobContext, JobResult, NewJob, Shutdown, Worker, WorkerConfig, handler_fn,
};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::{CmdResult, Ctx, Failure, exit, print_json};

/// Job type the benchmark enqueues and runs.
const BENCH_TYPE: &str = "bench_noop";

/// `jobq bench ...`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Enqueue-to-start latency over no-op jobs (p50/p90/p99/max).
    Latency(LatencyArgs),
}

/// `jobq bench latency`.
#[derive(Debug, Args)]
pub struct LatencyArgs {
    /// Number of jobs.
    #[arg(long, default_value_t = 1000)]
    pub jobs: usize,
    /// Enqueues per second (one at a time, open loop); 0 = as fast as the server answers.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Worker concurrency.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Use the server of --server instead of starting one in this process
    /// (the jobs go to a queue of their own).
    #[arg(long)]
    pub external: bool,
}

/// `jobq bench ...`.
pub async fn bench(ctx: &Ctx, command: BenchCommand) -> CmdResult {
    match command {
        BenchCommand::Latency(args) => latency(ctx, args).await,
    }
}

fn unix_nanos() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    )
    .unwrap_or(u64::MAX)
}

async fn latency(ctx: &Ctx, args: LatencyArgs) -> CmdResult {
    if args.jobs == 0 || args.concurrency == 0 || !args.rate.is_finite() || args.rate < 0.0 {
        return Err(Failure::usage(
            "--jobs and --concurrency must be at least 1, --rate at least 0",
        ));
    }
    let failed = |what: &str, error: &dyn std::fmt::Display| {
        Failure::new(exit::ERROR, format!("{what}: {error}"))
    };
    // An in-process server in a temp dir, unless told to use an external one.
    let mut local = None;
    let client = if args.external {
        ctx.client()?
    } else {
        let dir = std::env::temp_dir().join(format!(
            "jobq-bench-{}-{}",
            std::process::id(),
            unix_nanos()
        ));
        let config = jobq_server::Config::for_tests(&dir);
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let server = jobq_server::App::start(config, listener)
            .await
            .map_err(|error| failed("starting the server", &format!("{error:#}")))?;
        let client_config =
            ClientConfig::builder(format!("http://{}", server.local_addr())).build()?;
        local = Some((server, dir));
        Client::connect(client_config)?
    };
    let queue = format!("bench-{}", unix_nanos() % 1_000_000_000);

    let (latencies_tx, mut latencies_rx) = mpsc::unbounded_channel::<Duration>();
    let latencies_tx = Arc::new(latencies_tx);
    let worker_config = WorkerConfig::builder()
        .queues([queue.clone()])
        .concurrency(args.concurrency)
        .grace_period(Duration::from_secs(5))
        .build()?;
    let worker = Worker::new(client.clone(), worker_config).handler(
        BENCH_TYPE,
        handler_fn(move |ctx: JobContext| {
            let started = unix_nanos();
            let latencies = latencies_tx.clone();
            async move {
                let sent: u64 = ctx.payload_field("sent_unix_ns")?;
                let _ = latencies.send(Duration::from_nanos(started.saturating_sub(sent)));
                JobResult::Ok(serde_json::Value::Null)
            }
        }),
    );
    let shutdown = Shutdown::new();
    let worker_task = tokio::spawn(worker.run(shutdown.clone()));
    eprintln!(
        "benchmark: {} no-op jobs at {} /s, worker concurrency {}",
        args.jobs, args.rate, args.concurrency
    );

    let began = Instant::now();
    let mut enqueue_times = Vec::with_capacity(args.jobs);
    let gap = if args.rate > 0.0 {
        Duration::from_secs_f64(1.0 / args.rate)
    } else {
        Duration::ZERO
    };
    for index in 0..args.jobs {
        if !gap.is_zero() {
            tokio::time::sleep_until(began + gap.mul_f64(index as f64)).await;
        }
        let sent = Instant::now();
        let job =
            NewJob::new(BENCH_TYPE, json!({ "sent_unix_ns": unix_nanos() })).queue(queue.clone());
        client.enqueue(job).await?;
        enqueue_times.push(sent.elapsed());
    }
    let mut latencies = Vec::with_capacity(args.jobs);
    let collect = async {
        while latencies.len() < args.jobs {
            match latencies_rx.recv().await {
                Some(latency) => latencies.push(latency),
                None => break,
            }
        }
    };
    let timed_out = tokio::time::timeout(Duration::from_secs(120), collect)
        .await
        .is_err();
    let elapsed = began.elapsed();
    shutdown.request_graceful();
    let _ = worker_task.await;
    if let Some((server, dir)) = local {
        let _ = server.shutdown().await;
        let _ = std::fs::remove_dir_all(dir);
    }
    if timed_out || latencies.len() < args.jobs {
        return Err(Failure::new(
            exit::ERROR,
            format!(
                "only {} of {} jobs started within 120 s",
                latencies.len(),
                args.jobs
            ),
        ));
    }

    let start = summary(&mut latencies);
    let enqueue = summary(&mut enqueue_times);
    if ctx.json {
        print_json(&json!({
            "jobs": args.jobs,
            "rate_per_second": args.rate,
            "concurrency": args.concurrency,
            "elapsed_ms": ms(elapsed),
            "enqueue_to_start_ms": start,
            "enqueue_rpc_ms": enqueue,
        }));
    } else {
        let line = |name: &str, stats: &serde_json::Value| {
            println!(
                "{name:<18} p50 {:>8.2} ms   p90 {:>8.2} ms   p99 {:>8.2} ms   max {:>8.2} ms",
                stats["p50"].as_f64().unwrap_or_default(),
                stats["p90"].as_f64().unwrap_or_default(),
                stats["p99"].as_f64().unwrap_or_default(),
                stats["max"].as_f64().unwrap_or_default(),
            );
        };
        println!("{} jobs in {:.1} s", args.jobs, elapsed.as_secs_f64());
        line("enqueue -> start", &start);
        line("enqueue RPC", &enqueue);
    }
    Ok(exit::OK)
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Percentiles (nearest rank) in milliseconds.
fn summary(samples: &mut [Duration]) -> serde_json::Value {
    samples.sort();
    let rank = |p: f64| -> f64 {
        if samples.is_empty() {
            return 0.0;
        }
        let index = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
        ms(samples[index])
    };
    json!({ "p50": rank(0.50), "p90": rank(0.90), "p99": rank(0.99), "max": rank(1.0), "count": samples.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let stats = summary(&mut samples);
        assert_eq!(stats["p50"], json!(50.0));
        assert_eq!(stats["p99"], json!(99.0));
        assert_eq!(stats["max"], json!(100.0));
    }
}
