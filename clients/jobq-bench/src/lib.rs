//! The jobq load generator (`jobq-bench`, also `jobq bench`).
//!
//! Workloads run against a real server (a `jobq-server` process it starts
//! for every run on fresh storage, the server inside this process, or one
//! already running) with the workers in separate processes (this same
//! binary, `--internal-worker`). Every run checks that each job ran exactly
//! once, and reports jobs/s, latency percentiles (HDR histograms), the
//! server's CPU seconds per 1,000 jobs and its peak memory, as a table and
//! as JSON lines. `--quick` runs every workload small, as a check.

mod server;
mod soak;
mod worker;
mod workloads;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};

pub use server::{Probe, ServerSetup, sibling_binary};
pub use workloads::{RunResult, Workload};

/// How SQLite syncs commits on the server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Synchronous {
    /// Every commit on disk before the answer (the server's default).
    Full,
    /// Commits on disk at checkpoints.
    Normal,
}

/// What `jobq-bench` (and `jobq bench`) can be told.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "jobq-bench",
    about = "Measure jobq: enqueue, drain, pickup latency, burn-down and mixed workloads, with workers in separate processes; soak it under mixed load with worker kills and a server restart"
)]
pub struct BenchArgs {
    /// Workloads to run, in order.
    #[arg(value_enum, default_values_t = [Workload::Enqueue, Workload::EnqueueBatch, Workload::Drain, Workload::Latency])]
    pub workloads: Vec<Workload>,

    /// Jobs per run (enqueue, enqueue-batch, drain, mixed, burn-down).
    #[arg(long, short = 'n', default_value_t = 20_000)]
    pub jobs: u64,

    /// Calls in flight (enqueue), and handler slots per worker process.
    #[arg(long, short = 'c', default_value_t = 32)]
    pub concurrency: usize,

    /// Jobs per EnqueueJobs call (enqueue-batch, and to fill the queue for drain).
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,

    /// Jobs each worker process leases ahead of its free slots at most
    /// (default: the SDK's, its concurrency; 0: only for free slots).
    #[arg(long)]
    pub lease_ahead: Option<usize>,

    /// EnqueueJobs calls in flight (enqueue-batch).
    #[arg(long, default_value_t = 1)]
    pub batch_concurrency: usize,

    /// Jobs enqueued per second (latency, soak).
    #[arg(long, default_value_t = 200)]
    pub rate: u64,

    /// How long the soak produces load (then it settles and audits).
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Jobs of the latency workload.
    #[arg(long, default_value_t = 2000)]
    pub latency_jobs: u64,

    /// Bytes of filler in each payload (besides its sequence number).
    #[arg(long, default_value_t = 0)]
    pub payload_bytes: usize,

    /// Give the bench queue this concurrency limit first (0: none), to
    /// measure what the gate costs when it does not bind.
    #[arg(long, default_value_t = 0)]
    pub queue_concurrency_limit: i32,

    /// Spread the jobs over this many concurrency keys (0: none).
    #[arg(long, default_value_t = 0)]
    pub concurrency_keys: u64,

    /// Limit of each concurrency key.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(i32).range(1..=10_000))]
    pub key_limit: i32,

    /// Worker processes (drain, latency, mixed, burn-down; the soak runs at least 2).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,

    /// Runs of each workload; the summary gives medians and ranges.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,

    /// Use a server already running at this address instead of starting one.
    #[arg(long, conflicts_with = "in_process")]
    pub server: Option<String>,

    /// The external server's process id, to measure its CPU and memory.
    #[arg(long, requires = "server")]
    pub server_pid: Option<u32>,

    /// Run the server inside this process instead of as its own process.
    #[arg(long)]
    pub in_process: bool,

    /// The `jobq-server` binary to start (default: the one next to this binary).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,

    /// PostgreSQL server for the runs (a fresh database each run); default: SQLite.
    #[arg(long)]
    pub database_url: Option<String>,

    /// Server processes on the one PostgreSQL database (needs
    /// `--database-url`): enqueuing clients and worker processes are spread
    /// over them in turn, and the server CPU figure is their sum.
    #[arg(long, default_value_t = 1, requires = "database_url")]
    pub replicas: usize,

    /// SQLite durability of the server under test.
    #[arg(long, value_enum, default_value_t = Synchronous::Full)]
    pub sqlite_synchronous: Synchronous,

    /// Bearer token for the server.
    #[arg(long, env = "JOBQ_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Finished jobs written straight into the database before each run's
    /// server starts (SQL, not the API), to measure on a table with history.
    #[arg(long, default_value_t = 0)]
    pub prefill_finished: u64,

    /// Jobs counted per window of the burn-down (first and last window compared).
    #[arg(long, default_value_t = 100_000)]
    pub window: u64,

    /// Spawned servers keep Prometheus metrics (`--metrics-listen`): what
    /// keeping them costs; the `scrape` workload needs it.
    #[arg(long)]
    pub metrics: bool,

    /// Spawned servers export their spans over OTLP to a collector the
    /// bench runs: what tracing costs.
    #[arg(long)]
    pub otlp: bool,

    /// Print JSON lines only (one per run, then one summary per workload).
    #[arg(long)]
    pub json: bool,

    /// Small runs of every workload, to check that the bench and the server
    /// work (for CI): no figure means anything.
    #[arg(long)]
    pub quick: bool,

    /// Run as a worker process of the bench (used by the bench itself).
    #[arg(long, hide = true)]
    pub internal_worker: Option<String>,

    /// The lease a bench worker process asks for (used by the bench itself).
    #[arg(long, hide = true, value_parser = humantime::parse_duration)]
    pub internal_lease: Option<Duration>,

    /// A bench worker process prints a line per handler run (used by the bench itself).
    #[arg(long, hide = true)]
    pub internal_trace_runs: bool,
}

impl BenchArgs {
    fn setup(&self, otlp_endpoint: Option<&str>) -> ServerSetup {
        if let Some(endpoint) = &self.server {
            return ServerSetup::External {
                endpoint: endpoint.clone(),
                pid: self.server_pid,
            };
        }
        let synchronous = match self.sqlite_synchronous {
            Synchronous::Full => jobq_server::config::SqliteDurability::Full,
            Synchronous::Normal => jobq_server::config::SqliteDurability::Normal,
        };
        if self.in_process {
            return ServerSetup::InProcess {
                database_url: self.database_url.clone(),
                synchronous,
                prefill_finished: self.prefill_finished,
                replicas: self.replicas.max(1),
            };
        }
        let mut flags = vec!["--sqlite-synchronous".to_owned()];
        flags.push(
            match self.sqlite_synchronous {
                Synchronous::Full => "full",
                Synchronous::Normal => "normal",
            }
            .to_owned(),
        );
        if self.metrics {
            flags.extend(["--metrics-listen".to_owned(), "127.0.0.1:0".to_owned()]);
        }
        if let Some(endpoint) = otlp_endpoint {
            flags.extend(["--otlp-endpoint".to_owned(), endpoint.to_owned()]);
        }
        ServerSetup::Spawn {
            binary: self
                .server_bin
                .clone()
                .unwrap_or_else(|| sibling_binary("jobq-server")),
            database_url: self.database_url.clone(),
            flags,
            prefill_finished: self.prefill_finished,
            replicas: self.replicas.max(1),
        }
    }

    /// The same settings, scaled down for `--quick`.
    fn quickened(mut self) -> Self {
        if self.quick {
            self.jobs = self.jobs.min(400);
            self.latency_jobs = self.latency_jobs.min(100);
            self.rate = self.rate.min(100);
            self.batch = self.batch.min(100);
            self.window = self.window.min(100);
            self.rounds = 1;
            if self.workloads.len() == 4 {
                self.workloads = vec![
                    Workload::Enqueue,
                    Workload::EnqueueBatch,
                    Workload::Drain,
                    Workload::Latency,
                    Workload::Mixed,
                    Workload::BurnDown,
                    Workload::RpcFloor,
                ];
            }
        }
        self
    }
}

/// Runs the bench with `args`; `prefix` is what comes before the bench's own
/// arguments on its command line (`["bench"]` under `jobq`), so worker
/// processes can be started as the same program.
pub fn run_cli(prefix: &[&str], args: BenchArgs) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("JOBQ_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("jobq bench: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(endpoint) = &args.internal_worker {
        let options = worker::WorkerOptions {
            concurrency: args.concurrency,
            token: args.token.clone(),
            lease: args.internal_lease,
            lease_ahead: args.lease_ahead,
            trace_runs: args.internal_trace_runs,
        };
        return match runtime.block_on(worker::run(endpoint, options)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("jobq bench worker: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    let args = args.quickened();
    let invocation = workloads::Invocation {
        program: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("jobq-bench")),
        prefix: prefix.iter().map(|part| (*part).to_owned()).collect(),
        worker_args: args
            .lease_ahead
            .map(|jobs| vec!["--lease-ahead".to_owned(), jobs.to_string()])
            .unwrap_or_default(),
    };
    let ran = runtime.block_on(async {
        let collector = match args.otlp {
            true => Some(jobq_telemetry::collector::TestCollector::start().await?),
            false => None,
        };
        let endpoint = collector.as_ref().map(|collector| collector.endpoint());
        let clean =
            workloads::run_all(&args, &args.setup(endpoint.as_deref()), &invocation).await?;
        if let Some(collector) = collector {
            println!("# the OTLP collector received {} spans", collector.count());
        }
        anyhow::Ok(clean)
    });
    match ran {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!(
                "jobq bench: some jobs were lost or ran twice, or an audit invariant failed (see above)"
            );
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("jobq bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Longest any single run may take before the bench gives up on it.
pub const RUN_LIMIT: Duration = Duration::from_secs(30 * 60);
