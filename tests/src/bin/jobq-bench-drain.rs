//! Drain throughput: how fast the same workers empty a queue of no-op jobs on
//! SQLite and on PostgreSQL, measured side by side in one run.
//!
//! For each round and each engine: an in-process server on a fresh database,
//! `--jobs` no-op jobs enqueued in batches of 1,000, then `--workers` workers
//! (tasks, each on its own connection) lease up to `--lease-batch` jobs with a
//! long poll and report them with one CompleteJobs call, until the queue is
//! empty. Prints jobs/s per engine and round, then the medians.
//!
//! Run: `cargo run -p jobq-tests --bin jobq-bench-drain [-- --jobs 20000 --rounds 3]`
//! (PostgreSQL from JOBQ_TEST_POSTGRES_URL, default this machine's).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use jobq_tests::pb::{
    CompleteJobRequest, CompleteJobsRequest, EnqueueJobsRequest, LeaseJobsRequest,
};
use jobq_tests::{Backend, LeasedJobExt, TestServer, duration, spec};
use tokio::task::JoinSet;

struct Options {
    jobs: usize,
    workers: usize,
    lease_batch: i32,
    rounds: usize,
}

fn parse() -> Result<Options> {
    let mut options = Options {
        jobs: 20_000,
        workers: 8,
        lease_batch: 50,
        rounds: 3,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value: usize = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?
            .parse()?;
        match flag.as_str() {
            "--jobs" => options.jobs = value,
            "--workers" => options.workers = value,
            "--lease-batch" => options.lease_batch = i32::try_from(value)?,
            "--rounds" => options.rounds = value,
            other => bail!("unknown flag {other}; use --jobs, --workers, --lease-batch, --rounds"),
        }
    }
    Ok(options)
}

/// Enqueues the jobs, then times the workers draining them; returns jobs/s.
async fn drain(backend: Backend, options: &Options) -> Result<f64> {
    let server = TestServer::start_on_backend(backend, |_| {}).await?;
    let client = server.client();
    for start in (0..options.jobs).step_by(1000) {
        let jobs = (start..(start + 1000).min(options.jobs))
            .map(|_| spec("noop"))
            .collect();
        client
            .queue()
            .enqueue_jobs(EnqueueJobsRequest { jobs })
            .await?;
    }
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for worker in 0..options.workers {
        let client = server.connect().await?;
        let lease_batch = options.lease_batch;
        workers.spawn(async move {
            let mut done = 0usize;
            loop {
                let leased = client
                    .lease(LeaseJobsRequest {
                        worker_id: format!("bench-{worker}"),
                        max_jobs: lease_batch,
                        wait: Some(duration(Duration::from_millis(200))),
                        lease_duration: Some(duration(Duration::from_secs(120))),
                        ..Default::default()
                    })
                    .await?;
                if leased.is_empty() {
                    return anyhow::Ok(done);
                }
                let jobs = leased
                    .iter()
                    .map(|job| CompleteJobRequest {
                        lease: Some(job.lease()),
                        result: String::new(),
                    })
                    .collect();
                client
                    .worker()
                    .complete_jobs(CompleteJobsRequest { jobs })
                    .await?;
                done += leased.len();
            }
        });
    }
    let mut done = 0;
    while let Some(worker) = workers.join_next().await {
        done += worker??;
    }
    // The last empty long poll of each worker is not drain time.
    let elapsed = started.elapsed().saturating_sub(Duration::from_millis(200));
    if done != options.jobs {
        bail!("{done} of {} jobs completed", options.jobs);
    }
    server.shutdown().await?;
    Ok(options.jobs as f64 / elapsed.as_secs_f64())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() -> Result<()> {
    let options = parse()?;
    println!(
        "drain of {} no-op jobs, {} workers, lease batch {}, {} rounds (debug build unless run with --release)",
        options.jobs, options.workers, options.lease_batch, options.rounds
    );
    let (mut sqlite, mut postgres) = (Vec::new(), Vec::new());
    for round in 1..=options.rounds {
        // Alternate the order so neither engine always runs on a warmer machine.
        let order = if round % 2 == 1 {
            [Backend::Sqlite, Backend::Postgres]
        } else {
            [Backend::Postgres, Backend::Sqlite]
        };
        for backend in order {
            let rate = drain(backend, &options).await?;
            println!("round {round} {backend:?}: {rate:.0} jobs/s");
            match backend {
                Backend::Sqlite => sqlite.push(rate),
                Backend::Postgres => postgres.push(rate),
            }
        }
    }
    let (sqlite, postgres) = (median(sqlite), median(postgres));
    println!(
        "median SQLite {sqlite:.0} jobs/s, PostgreSQL {postgres:.0} jobs/s, PostgreSQL/SQLite {:.2}",
        postgres / sqlite
    );
    Ok(())
}
