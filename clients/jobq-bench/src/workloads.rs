//! The workloads, each run against a fresh server, with its checks and figures.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::ValueEnum;
use hdrhistogram::Histogram;
use jobq_client::{Client, ClientConfig, NewJob, pb};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::server::{RunServer, ServerSetup};
use crate::worker::{BENCH_QUEUE, JOB_TYPE, WorkerReport, WorkerRun, unix_ns};
use crate::{BenchArgs, RUN_LIMIT};

/// What a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// One EnqueueJob per job, `--concurrency` calls in flight.
    Enqueue,
    /// EnqueueJobs of `--batch` jobs.
    EnqueueBatch,
    /// Queued jobs handled by worker processes until all are acknowledged.
    Drain,
    /// Enqueue-to-handler-start time at `--rate` jobs/s.
    Latency,
    /// Enqueue a large backlog, drain it; first and last windows compared,
    /// server memory watched.
    BurnDown,
    /// Failures and retries, log lines and long jobs with heartbeats.
    Mixed,
    /// The transport's floor: `--jobs` unary calls that touch no storage
    /// (the server's gRPC health check), `--concurrency` in flight — what
    /// every call costs before jobq does any work of its own.
    RpcFloor,
    /// What a Prometheus scrape of the server costs on a full table
    /// (`--metrics`, with `--prefill-finished` jobs): 50 scrapes, and the
    /// stats query the metrics' background recount runs.
    Scrape,
    /// `--duration` of mixed load at `--rate` (successes, retries, jobs that
    /// die, cancels, log lines) while worker processes are SIGKILLed and the
    /// server is SIGKILLed and restarted once; then every acknowledged
    /// enqueue is audited against its final state and attempts.
    Soak,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Enqueue => "enqueue",
            Workload::EnqueueBatch => "enqueue-batch",
            Workload::Drain => "drain",
            Workload::Latency => "latency",
            Workload::BurnDown => "burn-down",
            Workload::Mixed => "mixed",
            Workload::RpcFloor => "rpc-floor",
            Workload::Scrape => "scrape",
            Workload::Soak => "soak",
        }
    }
}

/// How to start this program again as a worker process.
pub struct Invocation {
    /// The executable.
    pub program: PathBuf,
    /// Arguments before the bench's own (`bench` under `jobq`).
    pub prefix: Vec<String>,
    /// Arguments every worker process gets.
    pub worker_args: Vec<String>,
}

/// The figures of one run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunResult {
    /// Which workload.
    pub workload: String,
    /// The storage engine and durability.
    pub backend: String,
    /// Jobs in the timed part.
    pub jobs: u64,
    /// Seconds of the timed part.
    pub seconds: f64,
    /// Jobs per second.
    pub jobs_per_s: f64,
    /// Latency percentiles, ms (per call for enqueues, pickup for latency).
    pub p50_ms: Option<f64>,
    /// 90th percentile, ms.
    pub p90_ms: Option<f64>,
    /// 99th percentile, ms.
    pub p99_ms: Option<f64>,
    /// Largest, ms.
    pub max_ms: Option<f64>,
    /// Server CPU seconds (user + system) per 1,000 jobs.
    pub server_cpu_s_per_1000: Option<f64>,
    /// Server peak resident memory, MiB.
    pub server_peak_rss_mib: Option<f64>,
    /// Jobs that never ran (or never succeeded).
    pub lost: u64,
    /// Jobs that succeeded more than once (the soak: or ran twice at once).
    pub duplicated: u64,
    /// Broken invariants the run found besides lost and duplicated jobs
    /// (the soak's audit).
    #[serde(skip_serializing_if = "is_zero")]
    pub violations: u64,
    /// Figures particular to the workload.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// A histogram of microseconds, any size (it grows), 3 significant digits.
pub(crate) fn histogram() -> anyhow::Result<Histogram<u64>> {
    let mut histogram = Histogram::new(3).context("creating a latency histogram")?;
    histogram.auto(true);
    Ok(histogram)
}

fn percentiles(result: &mut RunResult, histogram: &Histogram<u64>) {
    if histogram.is_empty() {
        return;
    }
    let ms = |us: u64| us as f64 / 1000.0;
    result.p50_ms = Some(ms(histogram.value_at_quantile(0.50)));
    result.p90_ms = Some(ms(histogram.value_at_quantile(0.90)));
    result.p99_ms = Some(ms(histogram.value_at_quantile(0.99)));
    result.max_ms = Some(ms(histogram.max()));
}

pub(crate) fn payload(seq: u64, filler: &str, more: serde_json::Value) -> serde_json::Value {
    let mut payload = serde_json::json!({ "seq": seq });
    if let (Some(object), serde_json::Value::Object(more)) = (payload.as_object_mut(), more) {
        object.extend(more);
        if !filler.is_empty() {
            object.insert("filler".into(), filler.into());
        }
    }
    payload
}

/// What every job of a run looks like besides its payload fields.
#[derive(Debug, Clone)]
pub(crate) struct JobShape {
    /// Filler text in each payload.
    filler: String,
    /// Jobs spread over this many concurrency keys (0: none).
    keys: u64,
    /// Limit of each key.
    key_limit: i32,
}

impl JobShape {
    fn of(args: &BenchArgs) -> Self {
        Self {
            filler: "x".repeat(args.payload_bytes),
            keys: args.concurrency_keys,
            key_limit: args.key_limit,
        }
    }
}

pub(crate) fn job(seq: u64, shape: &JobShape, more: serde_json::Value) -> pb::JobSpec {
    let job = NewJob::new(JOB_TYPE, payload(seq, &shape.filler, more))
        .queue(BENCH_QUEUE)
        .max_attempts(5);
    match shape.keys {
        0 => job,
        keys => job.concurrency_key(format!("bench:{}", seq % keys), shape.key_limit),
    }
    .into_spec()
}

pub(crate) async fn connect(endpoint: &str, token: Option<&str>) -> anyhow::Result<Client> {
    let mut config = ClientConfig::builder(endpoint).request_timeout(Duration::from_secs(120));
    if let Some(token) = token {
        config = config.token(token);
    }
    Ok(Client::connect(config.build()?)?)
}

/// Counts of the bench queue by state.
pub(crate) async fn state_counts(client: &Client) -> anyhow::Result<HashMap<pb::JobState, i64>> {
    let stats = client.queue_stats(vec!["bench".into()]).await?;
    Ok(stats
        .totals
        .iter()
        .map(|count| (count.state(), count.count))
        .collect())
}

/// Lost and duplicated jobs of an enqueue run: the queue should hold
/// exactly `n` queued jobs.
async fn count_enqueued(client: &Client, n: u64, result: &mut RunResult) -> anyhow::Result<()> {
    let queued = state_counts(client)
        .await?
        .get(&pb::JobState::Queued)
        .copied()
        .unwrap_or(0) as u64;
    result.lost = n.saturating_sub(queued);
    result.duplicated = queued.saturating_sub(n);
    Ok(())
}

/// The server's CPU and memory over the timed part of a run (every
/// replica's CPU summed, the largest replica's memory).
struct Meter {
    probes: Vec<crate::Probe>,
    cpu_at_start: Option<f64>,
}

impl Meter {
    fn start(server: &RunServer) -> Self {
        let probes = server.probes.clone();
        Self {
            cpu_at_start: total_cpu_seconds(&probes),
            probes,
        }
    }

    fn finish(&self, result: &mut RunResult) {
        if let (Some(start), Some(end)) = (self.cpu_at_start, total_cpu_seconds(&self.probes))
            && result.jobs > 0
        {
            result.server_cpu_s_per_1000 = Some((end - start) / result.jobs as f64 * 1000.0);
        }
        result.server_peak_rss_mib = self
            .probes
            .iter()
            .filter_map(|probe| probe.peak_rss_mib())
            .reduce(f64::max);
    }
}

fn total_cpu_seconds(probes: &[crate::Probe]) -> Option<f64> {
    if probes.is_empty() {
        return None;
    }
    probes.iter().map(|probe| probe.cpu_seconds()).sum()
}

/// One client per replica, for callers that spread their calls over them.
async fn connect_all(server: &RunServer, token: Option<&str>) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::new();
    for endpoint in &server.endpoints {
        clients.push(connect(endpoint, token).await?);
    }
    Ok(clients)
}

/// Enqueues `n` jobs in batches (not timed), `in_flight` calls at once.
async fn fill(
    clients: &[Client],
    n: u64,
    batch: usize,
    in_flight: usize,
    filler: &JobShape,
    more: impl Fn(u64) -> serde_json::Value + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let more = Arc::new(more);
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..in_flight.max(1) {
        let (client, next, filler, more) = (
            clients[task % clients.len()].clone(),
            next.clone(),
            filler.clone(),
            more.clone(),
        );
        tasks.spawn(async move {
            loop {
                let first = next.fetch_add(batch as u64, Ordering::Relaxed);
                if first >= n {
                    return anyhow::Ok(());
                }
                let specs = (first..(first + batch as u64).min(n))
                    .map(|seq| job(seq, &filler, more(seq)))
                    .collect();
                client.enqueue_many(specs).await?;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// One worker process of the bench.
pub(crate) struct WorkerProcess {
    pub(crate) child: Child,
    acked: Arc<AtomicU64>,
    last_ack_ns: Arc<AtomicU64>,
    report: Arc<Mutex<Option<WorkerReport>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl WorkerProcess {
    fn spawn(
        invocation: &Invocation,
        endpoint: &str,
        concurrency: usize,
        token: Option<&str>,
    ) -> anyhow::Result<Self> {
        Self::spawn_with(invocation, endpoint, concurrency, token, &[], None)
    }

    /// A worker process with `extra` arguments; its `ran` lines go to `runs`.
    pub(crate) fn spawn_with(
        invocation: &Invocation,
        endpoint: &str,
        concurrency: usize,
        token: Option<&str>,
        extra: &[String],
        runs: Option<Arc<Mutex<Vec<WorkerRun>>>>,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(&invocation.program);
        command
            .args(&invocation.prefix)
            .arg("--internal-worker")
            .arg(endpoint)
            .arg("--concurrency")
            .arg(concurrency.to_string())
            .args(&invocation.worker_args)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(token) = token {
            command.env("JOBQ_TOKEN", token);
        }
        let mut child = command.spawn().context("starting a bench worker process")?;
        let stdout = child.stdout.take().context("no stdout from a worker")?;
        let acked = Arc::new(AtomicU64::new(0));
        let last_ack_ns = Arc::new(AtomicU64::new(0));
        let report = Arc::new(Mutex::new(None));
        let (count, stamp, slot) = (acked.clone(), last_ack_ns.clone(), report.clone());
        let reader = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.strip_prefix("acked ") {
                    let mut parts = rest.split_whitespace();
                    if let (Some(Ok(n)), Some(Ok(at))) =
                        (parts.next().map(str::parse), parts.next().map(str::parse))
                    {
                        count.store(n, Ordering::Relaxed);
                        stamp.store(at, Ordering::Relaxed);
                    }
                } else if let Some(json) = line.strip_prefix("ran ") {
                    if let (Some(runs), Ok(run)) = (&runs, serde_json::from_str::<WorkerRun>(json))
                    {
                        runs.lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(run);
                    }
                } else if let Some(json) = line.strip_prefix("report ")
                    && let Ok(parsed) = serde_json::from_str::<WorkerReport>(json)
                {
                    *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(parsed);
                }
            }
        });
        Ok(Self {
            child,
            acked,
            last_ack_ns,
            report,
            reader,
        })
    }

    /// Stops the worker gracefully and returns what it did.
    pub(crate) async fn stop(mut self) -> anyhow::Result<WorkerReport> {
        drop(self.child.stdin.take());
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .context("a worker process did not stop within 60 s")??;
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.reader).await;
        ensure!(status.success(), "a worker process failed: {status}");
        self.report
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .context("a worker process gave no report")
    }
}

pub(crate) struct Workers(Vec<WorkerProcess>);

impl Workers {
    /// Worker processes, spread over `endpoints` in turn.
    fn spawn(
        args: &BenchArgs,
        invocation: &Invocation,
        endpoints: &[String],
    ) -> anyhow::Result<Self> {
        (0..args.workers.max(1))
            .map(|index| {
                WorkerProcess::spawn(
                    invocation,
                    &endpoints[index % endpoints.len()],
                    args.concurrency,
                    args.token.as_deref(),
                )
            })
            .collect::<anyhow::Result<_>>()
            .map(Workers)
    }

    fn acked(&self) -> u64 {
        self.0
            .iter()
            .map(|worker| worker.acked.load(Ordering::Relaxed))
            .sum()
    }

    fn last_ack_ns(&self) -> u64 {
        self.0
            .iter()
            .map(|worker| worker.last_ack_ns.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0)
    }

    /// Waits until `n` outcomes were acknowledged, watching `sample` meanwhile.
    async fn wait_acked(&self, n: u64, mut sample: impl FnMut(u64)) -> anyhow::Result<()> {
        let deadline = Instant::now() + RUN_LIMIT;
        loop {
            let acked = self.acked();
            sample(acked);
            if acked >= n {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("only {acked} of {n} jobs were acknowledged within {RUN_LIMIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn stop(self) -> anyhow::Result<WorkerReport> {
        let mut all = WorkerReport::default();
        for worker in self.0 {
            let report = worker.stop().await?;
            all.handled.extend(report.handled);
            all.pickup_us.extend(report.pickup_us);
        }
        Ok(all)
    }
}

/// Checks that each of `0..n` succeeded exactly once; records lost and duplicated.
fn check_exactly_once(result: &mut RunResult, n: u64, report: &WorkerReport) {
    let mut successes = vec![0u32; n as usize];
    for (seq, _, succeeded) in &report.handled {
        if *succeeded && let Some(count) = successes.get_mut(*seq as usize) {
            *count += 1;
        }
    }
    result.lost = successes.iter().filter(|count| **count == 0).count() as u64;
    result.duplicated = successes.iter().filter(|count| **count > 1).count() as u64;
}

fn nanos_to_seconds(start_ns: u64, end_ns: u64) -> f64 {
    end_ns.saturating_sub(start_ns) as f64 / 1e9
}

/// Runs `call(seq)` for seq in 0..n, `concurrency` at a time; the latency
/// of each call.
async fn calls_in_flight<F, Fut>(
    n: u64,
    concurrency: usize,
    call: F,
) -> anyhow::Result<Histogram<u64>>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (next, call) = (next.clone(), call.clone());
        tasks.spawn(async move {
            let mut latencies = histogram()?;
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= n {
                    return anyhow::Ok(latencies);
                }
                let sent = Instant::now();
                call(seq).await?;
                let _ = latencies.record(sent.elapsed().as_micros().max(1) as u64);
            }
        });
    }
    let mut latencies = histogram()?;
    while let Some(done) = tasks.join_next().await {
        let _ = latencies.add(done??);
    }
    Ok(latencies)
}

/// `n` calls, `concurrency` in flight, timed and metered: jobs/s, the
/// calls' latency percentiles, the server's CPU and memory.
async fn timed_calls<F, Fut>(
    server: &RunServer,
    n: u64,
    concurrency: usize,
    call: F,
) -> anyhow::Result<RunResult>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let mut result = RunResult {
        jobs: n,
        ..RunResult::default()
    };
    let meter = Meter::start(server);
    let started = Instant::now();
    let latencies = calls_in_flight(n, concurrency, call).await?;
    result.seconds = started.elapsed().as_secs_f64();
    meter.finish(&mut result);
    percentiles(&mut result, &latencies);
    Ok(result)
}

async fn run_enqueue(
    args: &BenchArgs,
    server: &RunServer,
    filler: &JobShape,
) -> anyhow::Result<RunResult> {
    let client = connect(&server.endpoint, args.token.as_deref()).await?;
    let n = args.jobs;
    // Calls go to the replicas in turn.
    let (callers, filler) = (
        Arc::new(connect_all(server, args.token.as_deref()).await?),
        Arc::new(filler.clone()),
    );
    let mut result = timed_calls(server, n, args.concurrency, move |seq| {
        let (client, filler) = (
            callers[seq as usize % callers.len()].clone(),
            filler.clone(),
        );
        async move {
            client
                .enqueue(job(seq, &filler, serde_json::json!({})))
                .await?;
            Ok(())
        }
    })
    .await?;
    count_enqueued(&client, n, &mut result).await?;
    Ok(result)
}

async fn run_rpc_floor(args: &BenchArgs, server: &RunServer) -> anyhow::Result<RunResult> {
    let channel = tonic::transport::Endpoint::from_shared(server.endpoint.clone())
        .context("the server's address")?
        .connect()
        .await
        .context("connecting to the server")?;
    let health = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut result = timed_calls(server, args.jobs, args.concurrency, move |_| {
        let mut health = health.clone();
        async move {
            health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await?;
            Ok(())
        }
    })
    .await?;
    result
        .extra
        .insert("calls".into(), "grpc.health.v1.Health/Check".into());
    Ok(result)
}

async fn run_scrape(args: &BenchArgs, server: &RunServer) -> anyhow::Result<RunResult> {
    const SCRAPES: u32 = 50;
    let metrics = server
        .metrics
        .context("the scrape workload needs --metrics (and a spawned server)")?;
    let client = connect(&server.endpoint, args.token.as_deref()).await?;
    // The same count the metrics' background recount runs.
    let mut recount = histogram()?;
    for _ in 0..5 {
        let started = Instant::now();
        client.queue_stats(Vec::new()).await?;
        recount.record(started.elapsed().as_micros() as u64)?;
    }
    let mut scrapes = histogram()?;
    let mut bytes = 0;
    let started = Instant::now();
    for _ in 0..SCRAPES {
        let call = Instant::now();
        let (head, body) = jobq_telemetry::metrics::get(metrics).await?;
        anyhow::ensure!(
            head.starts_with("HTTP/1.1 200"),
            "the scrape answered {head}"
        );
        scrapes.record(call.elapsed().as_micros() as u64)?;
        bytes = body.len();
    }
    let mut result = RunResult {
        jobs: args.prefill_finished,
        seconds: started.elapsed().as_secs_f64(),
        ..RunResult::default()
    };
    percentiles(&mut result, &scrapes);
    result.extra.insert("scrapes".into(), SCRAPES.into());
    result.extra.insert("exposition_bytes".into(), bytes.into());
    result.extra.insert(
        "recount_query_p50_ms".into(),
        (recount.value_at_quantile(0.5) as f64 / 1000.0).into(),
    );
    Ok(result)
}

async fn run_enqueue_batch(
    args: &BenchArgs,
    server: &RunServer,
    filler: &JobShape,
) -> anyhow::Result<RunResult> {
    let client = connect(&server.endpoint, args.token.as_deref()).await?;
    let n = args.jobs;
    let mut result = RunResult {
        jobs: n,
        ..RunResult::default()
    };
    // Calls in flight go to the replicas in turn.
    let clients = connect_all(server, args.token.as_deref()).await?;
    let meter = Meter::start(server);
    let started = Instant::now();
    fill(
        &clients,
        n,
        args.batch,
        args.batch_concurrency,
        filler,
        |_| serde_json::json!({}),
    )
    .await?;
    result.seconds = started.elapsed().as_secs_f64();
    meter.finish(&mut result);
    count_enqueued(&client, n, &mut result).await?;
    result.extra.insert("batch".into(), args.batch.into());
    Ok(result)
}

async fn run_drain(
    args: &BenchArgs,
    server: &RunServer,
    invocation: &Invocation,
    filler: &JobShape,
) -> anyhow::Result<RunResult> {
    let client = connect(&server.endpoint, args.token.as_deref()).await?;
    let n = args.jobs;
    fill(
        std::slice::from_ref(&client),
        n,
        1000.min(args.batch.max(1)),
        4,
        filler,
        |_| serde_json::json!({}),
    )
    .await?;
    let mut result = RunResult {
        jobs: n,
        ..RunResult::default()
    };
    let meter = Meter::start(server);
    let started_ns = unix_ns();
    let workers = Workers::spawn(args, invocation, &server.endpoints)?;
    workers.wait_acked(n, |_| {}).await?;
    result.seconds = nanos_to_seconds(started_ns, workers.last_ack_ns());
    meter.finish(&mut result);
    let report = workers.stop().await?;
    check_exactly_once(&mut result, n, &report);
    let counts = state_counts(&client).await?;
    let succeeded = counts.get(&pb::JobState::Succeeded).copied().unwrap_or(0) as u64;
    result.lost = result.lost.max(n.saturating_sub(succeeded));
    result
        .extra
        .insert("worker_processes".into(), args.workers.into());
    Ok(result)
}

async fn run_latency(
    args: &BenchArgs,
    server: &RunServer,
    invocation: &Invocation,
    filler: &JobShape,
) -> anyhow::Result<RunResult> {
    let client = connect(&server.endpoint, args.token.as_deref()).await?;
    let workers = Workers::spawn(args, invocation, &server.endpoints)?;
    // Warm up: the workers connected and polling, the server's caches warm.
    let warm_up = 20;
    for seq in 0..warm_up {
        client
            .enqueue(job(1_000_000_000 + seq, filler, serde_json::json!({})))
            .await?;
    }
    workers.wait_acked(warm_up, |_| {}).await?;
    let n = args.latency_jobs;
    let mut result = RunResult {
        jobs: n,
        ..RunResult::default()
    };
    let meter = Meter::start(server);
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sends = tokio::task::JoinSet::new();
    for seq in 0..n {
        ticker.tick().await;
        let (client, filler) = (client.clone(), filler.clone());
        sends.spawn(async move {
            let spec = job(
                seq,
                &filler,
                serde_json::json!({ "sent_us": unix_ns() / 1000 }),
            );
            client.enqueue(spec).await.map(drop)
        });
    }
    while let Some(done) = sends.join_next().await {
        done??;
    }
    workers.wait_acked(warm_up + n, |_| {}).await?;
    result.seconds = started.elapsed().as_secs_f64();
    meter.finish(&mut result);
    let mut report = workers.stop().await?;
    report.handled.retain(|(seq, _, _)| *seq < 1_000_000_000);
    check_exactly_once(&mut result, n, &report);
    let mut pickups = histogram()?;
    for pickup in &report.pickup_us {
        let _ = pickups.record((*pickup).max(1));
    }
    // The warm-up jobs carry no send time: every sample is a measured job.
    percentiles(&mut result, &pickups);
    result.extra.insert("rate".into(), args.rate.into());
    Ok(result)
}

async fn run_mixed(
    args: &BenchArgs,
    server: &RunServer,
    invocation: &Invocation,
    filler: &JobShape,
) -> anyhow::Result<RunResult> {
    let client = connect(&server.endpoint, args.token.as_deref()).await?;
    let n = args.jobs;
    // One in ten fails once, one in five writes 5 log lines, one in a
    // hundred runs 1.5 s (heartbeats renew its lease meanwhile).
    let shape = |seq: u64| {
        serde_json::json!({
            "fail_once": seq % 10 == 3,
            "log_lines": if seq % 5 == 1 { 5 } else { 0 },
            "sleep_ms": if seq % 100 == 7 { 1500 } else { 0 },
        })
    };
    fill(
        std::slice::from_ref(&client),
        n,
        1000.min(args.batch.max(1)),
        2,
        filler,
        shape,
    )
    .await?;
    let mut result = RunResult {
        jobs: n,
        ..RunResult::default()
    };
    let meter = Meter::start(server);
    let started_ns = unix_ns();
    let workers = Workers::spawn(args, invocation, &server.endpoints)?;
    // Every job is acknowledged once, plus the first attempts that fail.
    let failing = (0..n).filter(|seq| seq % 10 == 3).count() as u64;
    workers.wait_acked(n + failing, |_| {}).await?;
    result.seconds = nanos_to_seconds(started_ns, workers.last_ack_ns());
    meter.finish(&mut result);
    let report = workers.stop().await?;
    check_exactly_once(&mut result, n, &report);
    let retried = report
        .handled
        .iter()
        .filter(|(_, attempt, _)| *attempt == 2)
        .count() as u64;
    ensure!(
        retried == failing,
        "{retried} jobs ran a second attempt; {failing} were made to fail once"
    );
    // The log lines arrived: look at one job that wrote some.
    let listed = client
        .list_jobs(pb::ListJobsRequest {
            queues: vec!["bench".into()],
            states: vec![pb::JobState::Succeeded as i32],
            page_size: 500,
            ..pb::ListJobsRequest::default()
        })
        .await?;
    let mut checked = false;
    for job in &listed.jobs {
        let full = client.get_job(&job.id).await?;
        let seq = full
            .payload
            .as_ref()
            .map(jobq_client::json_value)
            .and_then(|payload| payload.get("seq").and_then(serde_json::Value::as_u64));
        if seq.is_some_and(|seq| seq % 5 == 1) {
            let log = client
                .get_job_logs(pb::GetJobLogsRequest {
                    job_id: job.id.clone(),
                    streams: vec![pb::LogStream::Stdout as i32],
                    ..pb::GetJobLogsRequest::default()
                })
                .await?;
            ensure!(
                log.lines.len() == 5,
                "job {} wrote 5 lines; its log has {}",
                job.id,
                log.lines.len()
            );
            checked = true;
            break;
        }
    }
    ensure!(checked || n < 5, "no job with log lines was found to check");
    result.extra.insert("retried".into(), retried.into());
    Ok(result)
}

async fn run_burn_down(
    args: &BenchArgs,
    server: &RunServer,
    invocation: &Invocation,
    filler: &JobShape,
) -> anyhow::Result<RunResult> {
    let client = connect(&server.endpoint, args.token.as_deref()).await?;
    let n = args.jobs;
    let window = args.window.min(n / 2).max(1);
    let enqueue_started = Instant::now();
    fill(
        std::slice::from_ref(&client),
        n,
        args.batch.max(1),
        2,
        filler,
        |_| serde_json::json!({}),
    )
    .await?;
    let enqueue_seconds = enqueue_started.elapsed().as_secs_f64();
    let rss_before = server.probe.and_then(|probe| probe.rss_mib());
    let anon_before = server.probe.and_then(|probe| probe.anon_rss_mib());
    let mut result = RunResult {
        jobs: n,
        ..RunResult::default()
    };
    let meter = Meter::start(server);
    let started = Instant::now();
    let workers = Workers::spawn(args, invocation, &server.endpoints)?;
    let (mut first_window_at, mut last_window_from) = (None, None);
    let (mut rss_peak_during, mut anon_peak_during): (f64, f64) = (0.0, 0.0);
    let mut last_sample = Instant::now();
    let probe = server.probe;
    workers
        .wait_acked(n, |acked| {
            if first_window_at.is_none() && acked >= window {
                first_window_at = Some(started.elapsed());
            }
            if last_window_from.is_none() && acked >= n - window {
                last_window_from = Some(started.elapsed());
            }
            if last_sample.elapsed() >= Duration::from_millis(200) {
                last_sample = Instant::now();
                if let Some(rss) = probe.and_then(|probe| probe.rss_mib()) {
                    rss_peak_during = rss_peak_during.max(rss);
                }
                if let Some(anon) = probe.and_then(|probe| probe.anon_rss_mib()) {
                    anon_peak_during = anon_peak_during.max(anon);
                }
            }
        })
        .await?;
    let done_at = started.elapsed();
    result.seconds = done_at.as_secs_f64();
    meter.finish(&mut result);
    let report = workers.stop().await?;
    check_exactly_once(&mut result, n, &report);
    let rate = |jobs: u64, seconds: f64| {
        if seconds > 0.0 {
            jobs as f64 / seconds
        } else {
            0.0
        }
    };
    if let (Some(first), Some(from)) = (first_window_at, last_window_from) {
        let first_rate = rate(window, first.as_secs_f64());
        let last_rate = rate(window, (done_at - from).as_secs_f64());
        result
            .extra
            .insert("first_window_jobs_per_s".into(), first_rate.round().into());
        result
            .extra
            .insert("last_window_jobs_per_s".into(), last_rate.round().into());
        result.extra.insert("window".into(), window.into());
    }
    result.extra.insert(
        "enqueue_jobs_per_s".into(),
        rate(n, enqueue_seconds).round().into(),
    );
    for (name, before, peak) in [
        ("rss", rss_before, rss_peak_during),
        ("anon_rss", anon_before, anon_peak_during),
    ] {
        if let Some(before) = before {
            result
                .extra
                .insert(format!("{name}_before_drain_mib"), before.round().into());
            result.extra.insert(
                format!("{name}_growth_during_drain_mib"),
                (peak - before).max(0.0).round().into(),
            );
        }
    }
    Ok(result)
}

pub(crate) fn backend_name(args: &BenchArgs) -> String {
    if args.server.is_some() {
        return "external".into();
    }
    match &args.database_url {
        Some(_) if args.replicas > 1 => format!("postgresql, {} replicas", args.replicas),
        Some(_) => "postgresql".into(),
        None => format!(
            "sqlite synchronous={}",
            match args.sqlite_synchronous {
                crate::Synchronous::Full => "full",
                crate::Synchronous::Normal => "normal",
            }
        ),
    }
}

async fn run_one(
    args: &BenchArgs,
    setup: &ServerSetup,
    invocation: &Invocation,
    workload: Workload,
) -> anyhow::Result<RunResult> {
    let mut server = RunServer::start(setup).await?;
    let filler = JobShape::of(args);
    if args.queue_concurrency_limit > 0 {
        // Set before the clock starts: the run pays for the gate, not for this.
        connect(&server.endpoint, args.token.as_deref())
            .await?
            .update_queue(pb::UpdateQueueRequest {
                name: BENCH_QUEUE.into(),
                concurrency_limit: Some(args.queue_concurrency_limit),
                ..pb::UpdateQueueRequest::default()
            })
            .await?;
    }
    let run = async {
        match workload {
            Workload::Enqueue => run_enqueue(args, &server, &filler).await,
            Workload::EnqueueBatch => run_enqueue_batch(args, &server, &filler).await,
            Workload::Drain => run_drain(args, &server, invocation, &filler).await,
            Workload::Latency => run_latency(args, &server, invocation, &filler).await,
            Workload::Mixed => run_mixed(args, &server, invocation, &filler).await,
            Workload::BurnDown => run_burn_down(args, &server, invocation, &filler).await,
            Workload::RpcFloor => run_rpc_floor(args, &server).await,
            Workload::Scrape => run_scrape(args, &server).await,
            Workload::Soak => crate::soak::run_soak(args, &mut server, invocation).await,
        }
    };
    // The soak runs for its duration first, then settles within the limit.
    let limit = match workload {
        Workload::Soak => RUN_LIMIT + args.duration,
        _ => RUN_LIMIT,
    };
    let outcome = tokio::time::timeout(limit, run).await;
    let replicas = server.endpoints.len();
    server.stop().await?;
    let mut result = outcome
        .with_context(|| format!("{} did not finish within {limit:?}", workload.name()))??;
    if replicas > 1 {
        result.extra.insert("replicas".into(), replicas.into());
    }
    if args.queue_concurrency_limit > 0 {
        result.extra.insert(
            "queue_concurrency_limit".into(),
            args.queue_concurrency_limit.into(),
        );
    }
    if args.concurrency_keys > 0 {
        result
            .extra
            .insert("concurrency_keys".into(), args.concurrency_keys.into());
        result
            .extra
            .insert("key_limit".into(), args.key_limit.into());
    }
    result.workload = workload.name().into();
    result.backend = backend_name(args);
    result.jobs_per_s = if result.seconds > 0.0 {
        result.jobs as f64 / result.seconds
    } else {
        0.0
    };
    Ok(result)
}

fn cell(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".into(), |value| format!("{value:.decimals$}"))
}

fn print_row(result: &RunResult) {
    println!(
        "{:<14} {:>8} {:>9.0} {:>8} {:>8} {:>8} {:>10} {:>9} {:>5} {:>5}  {}",
        result.workload,
        result.jobs,
        result.jobs_per_s,
        cell(result.p50_ms, 2),
        cell(result.p99_ms, 2),
        cell(result.max_ms, 1),
        cell(result.server_cpu_s_per_1000, 3),
        cell(result.server_peak_rss_mib, 1),
        result.lost,
        result.duplicated,
        serde_json::Value::Object(result.extra.clone()),
    );
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[values.len() / 2])
}

/// Runs every workload `rounds` times; true when no job was lost or duplicated.
pub async fn run_all(
    args: &BenchArgs,
    setup: &ServerSetup,
    invocation: &Invocation,
) -> anyhow::Result<bool> {
    if !args.json {
        println!(
            "# jobq bench: {} ({} worker process(es), concurrency {})",
            backend_name(args),
            args.workers,
            args.concurrency
        );
        println!(
            "{:<14} {:>8} {:>9} {:>8} {:>8} {:>8} {:>10} {:>9} {:>5} {:>5}  extra",
            "workload",
            "jobs",
            "jobs/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "cpu s/1k",
            "rss MiB",
            "lost",
            "dup"
        );
    }
    let mut clean = true;
    let mut all: Vec<RunResult> = Vec::new();
    for workload in &args.workloads {
        for _ in 0..args.rounds.max(1) {
            let result = run_one(args, setup, invocation, *workload).await?;
            clean &= result.lost == 0 && result.duplicated == 0 && result.violations == 0;
            if args.json {
                println!("{}", serde_json::to_string(&result)?);
            } else {
                print_row(&result);
            }
            all.push(result);
        }
    }
    if args.rounds > 1 {
        if !args.json {
            println!("# medians of {} rounds [min..max]", args.rounds);
        }
        for workload in &args.workloads {
            let runs: Vec<&RunResult> = all
                .iter()
                .filter(|run| run.workload == workload.name())
                .collect();
            let figure = |pick: &dyn Fn(&RunResult) -> Option<f64>| {
                let mut values: Vec<f64> = runs.iter().filter_map(|run| pick(run)).collect();
                let range = (
                    values.iter().copied().fold(f64::INFINITY, f64::min),
                    values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                );
                median(&mut values).map(|median| (median, range))
            };
            let summary = serde_json::json!({
                "summary": workload.name(),
                "backend": backend_name(args),
                "rounds": runs.len(),
                "jobs_per_s": figure(&|run| Some(run.jobs_per_s)),
                "p50_ms": figure(&|run| run.p50_ms),
                "p99_ms": figure(&|run| run.p99_ms),
                "server_cpu_s_per_1000": figure(&|run| run.server_cpu_s_per_1000),
                "server_peak_rss_mib": figure(&|run| run.server_peak_rss_mib),
            });
            println!(
                "{}",
                if args.json {
                    summary.to_string()
                } else {
                    format!("  {summary}")
                }
            );
        }
    }
    Ok(clean)
}
