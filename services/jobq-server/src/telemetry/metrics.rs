//! The server's Prometheus metrics. Job counters and histograms are kept as
//! the events happen (the queue tells [`ServerMetrics`] of every commit);
//! gauges are read at scrape time from memory: queue depth from the
//! server's [`JobTally`], so no scrape scans a table.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Weak};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use sea_orm::DatabaseConnection;

use crate::domain::{
    Applied, AttemptOutcome, Job, JobObserver, JobQueue, JobState, JobTally, Millis,
};
use crate::logs::LogStore;

/// A job's queue and type.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    queue: String,
    r#type: String,
}

impl JobLabels {
    fn of(job: &Job) -> Self {
        Self {
            queue: job.queue.clone(),
            r#type: job.job_type.clone(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueStateLabels {
    queue: String,
    state: String,
}

/// An RPC's method and status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// `/package.Service/Method`.
    pub method: String,
    /// The gRPC status code's name (`OK`, `NOT_FOUND`…).
    pub code: String,
}

/// An RPC method.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    /// `/package.Service/Method`.
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabel {
    state: &'static str,
}

type F64Gauge = Gauge<f64, AtomicU64>;

/// Seconds from milliseconds, never negative.
fn seconds(ms: Millis) -> f64 {
    ms.max(0) as f64 / 1000.0
}

/// How long a worker counts as connected after it last asked for jobs or
/// renewed a lease.
pub const CONNECTED_WINDOW: Duration = Duration::from_secs(60);

/// Every metric of the server, and the registry that exposes them.
#[derive(Debug)]
pub struct ServerMetrics {
    registry: Arc<Registry>,
    enqueued: Family<JobLabels, Counter>,
    started: Family<JobLabels, Counter>,
    succeeded: Family<JobLabels, Counter>,
    failed: Family<JobLabels, Counter>,
    retried: Family<JobLabels, Counter>,
    dead: Family<JobLabels, Counter>,
    cancelled: Family<JobLabels, Counter>,
    lease_expiries: Family<JobLabels, Counter>,
    wait: HistogramFamily<JobLabels>,
    run: HistogramFamily<JobLabels>,
    rpc_calls: Family<RpcLabels, Counter>,
    rpc_duration: HistogramFamily<RpcLabels>,
    streams_open: Family<MethodLabel, Gauge>,
    statement: Histogram,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn job_histogram() -> Histogram {
    Histogram::new(JOB_SECONDS.iter().copied())
}

fn call_histogram() -> Histogram {
    Histogram::new(CALL_SECONDS.iter().copied())
}

/// From 1 ms to about 9 hours: waits and runs of media jobs are long.
static JOB_SECONDS: [f64; 20] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 1800.0, 3600.0, 32400.0,
];

/// From 0.1 ms to 30 s.
static CALL_SECONDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 30.0,
];

impl ServerMetrics {
    /// The metrics of a server, reading scrape-time gauges from `queue`,
    /// `logs` and `database`.
    pub fn new(
        queue: &Arc<JobQueue>,
        logs: &Arc<LogStore>,
        tally: Arc<JobTally>,
        database: DatabaseConnection,
        sqlite_file: Option<PathBuf>,
    ) -> Arc<Self> {
        let mut registry = Registry::with_prefix("jobq");
        let job_seconds = || Family::new_with_constructor(job_histogram as fn() -> Histogram);
        let metrics = ServerMetrics {
            registry: Arc::new(Registry::default()),
            enqueued: Family::default(),
            started: Family::default(),
            succeeded: Family::default(),
            failed: Family::default(),
            retried: Family::default(),
            dead: Family::default(),
            cancelled: Family::default(),
            lease_expiries: Family::default(),
            wait: job_seconds(),
            run: job_seconds(),
            rpc_calls: Family::default(),
            rpc_duration: Family::new_with_constructor(call_histogram),
            streams_open: Family::default(),
            statement: call_histogram(),
        };
        let jobs = [
            (
                "jobs_enqueued",
                "Jobs stored by enqueue calls and schedules",
                &metrics.enqueued,
            ),
            (
                "jobs_started",
                "Attempts started (jobs leased)",
                &metrics.started,
            ),
            ("jobs_succeeded", "Jobs that succeeded", &metrics.succeeded),
            (
                "jobs_failed",
                "Attempts that failed: reported failures, timeouts and expired leases",
                &metrics.failed,
            ),
            (
                "jobs_retried",
                "Failed attempts followed by a retry",
                &metrics.retried,
            ),
            ("jobs_dead", "Jobs dead-lettered", &metrics.dead),
            ("jobs_cancelled", "Jobs cancelled", &metrics.cancelled),
            (
                "lease_expiries",
                "Attempts whose lease ran out without a heartbeat",
                &metrics.lease_expiries,
            ),
        ];
        for (name, help, family) in jobs {
            registry.register(name, help, family.clone());
        }
        registry.register_with_unit(
            "job_wait",
            "Time from when a job could run (enqueued, due, or retry due) to its attempt's start",
            Unit::Seconds,
            metrics.wait.clone(),
        );
        registry.register_with_unit(
            "job_run",
            "Time from an attempt's start to its end",
            Unit::Seconds,
            metrics.run.clone(),
        );
        registry.register(
            "rpc_calls",
            "gRPC calls finished, by method and status code",
            metrics.rpc_calls.clone(),
        );
        registry.register_with_unit(
            "rpc_duration",
            "gRPC call durations (a stream's whole life), by method and status code",
            Unit::Seconds,
            metrics.rpc_duration.clone(),
        );
        registry.register(
            "streams_open",
            "Streaming calls open now, by method",
            metrics.streams_open.clone(),
        );
        registry.register_with_unit(
            "db_statement",
            "Durations of the statements of write transactions",
            Unit::Seconds,
            metrics.statement.clone(),
        );
        registry.register_collector(Box::new(ScrapeTime {
            queue: Arc::downgrade(queue),
            logs: Arc::downgrade(logs),
            database,
            sqlite_file,
            tally,
        }));
        let mut metrics = metrics;
        metrics.registry = Arc::new(registry);
        Arc::new(metrics)
    }

    /// The registry to expose.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Records one finished call.
    pub fn rpc_finished(&self, method: &str, code: &str, elapsed: Duration) {
        let labels = RpcLabels {
            method: method.to_owned(),
            code: code.to_owned(),
        };
        self.rpc_calls.get_or_create(&labels).inc();
        self.rpc_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// The gauge of open streams of `method`.
    pub fn streams_open(&self, method: &str) -> Gauge {
        self.streams_open
            .get_or_create(&MethodLabel {
                method: method.to_owned(),
            })
            .clone()
    }

    /// The histogram of write statements' durations, for the store to fill.
    pub fn statement_histogram(&self) -> Histogram {
        self.statement.clone()
    }

    fn attempt_ended(&self, change: &Applied, outcome: AttemptOutcome, now: Millis) {
        let Applied { before, job, .. } = change;
        let labels = JobLabels::of(job);
        if let Some(started_at) = before.attempt_started_at {
            self.run
                .get_or_create(&labels)
                .observe(seconds(now - started_at));
        }
        match outcome {
            AttemptOutcome::Failed | AttemptOutcome::TimedOut | AttemptOutcome::LeaseExpired => {
                self.failed.get_or_create(&labels).inc();
                if outcome == AttemptOutcome::LeaseExpired {
                    self.lease_expiries.get_or_create(&labels).inc();
                }
                if matches!(job.state, JobState::Retrying | JobState::Queued) {
                    self.retried.get_or_create(&labels).inc();
                }
            }
            AttemptOutcome::Succeeded | AttemptOutcome::Cancelled | AttemptOutcome::Released => {}
        }
    }
}

impl JobObserver for ServerMetrics {
    fn created(&self, jobs: &[&Job], _now: Millis) {
        for job in jobs {
            self.enqueued.get_or_create(&JobLabels::of(job)).inc();
        }
    }

    fn changed(&self, applied: &[Applied], now: Millis) {
        for change in applied {
            let Applied { before, job, entry } = change;
            let labels = JobLabels::of(job);
            if job.state == JobState::Running && before.state != JobState::Running {
                self.started.get_or_create(&labels).inc();
                self.wait
                    .get_or_create(&labels)
                    .observe(seconds(now - before.run_at.max(before.created_at)));
            }
            if let Some(outcome) = entry
                .as_ref()
                .filter(|entry| entry.is_attempt())
                .and_then(|entry| entry.outcome)
            {
                self.attempt_ended(change, outcome, now);
            }
            if before.state != job.state {
                match job.state {
                    JobState::Succeeded => self.succeeded.get_or_create(&labels).inc(),
                    JobState::Dead => self.dead.get_or_create(&labels).inc(),
                    JobState::Cancelled => self.cancelled.get_or_create(&labels).inc(),
                    _ => 0,
                };
            }
        }
    }

    fn deleted(&self, _jobs: &[&Job], _now: Millis) {}
}

/// Gauges read when Prometheus scrapes: from memory, and two cheap reads
/// (the pool's counters, the WAL file's size).
#[derive(Debug)]
struct ScrapeTime {
    queue: Weak<JobQueue>,
    logs: Weak<LogStore>,
    database: DatabaseConnection,
    sqlite_file: Option<PathBuf>,
    tally: Arc<JobTally>,
}

fn encode_family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric: &M,
) -> Result<(), std::fmt::Error> {
    // Registered metrics get their full stop from the registry; these are encoded by hand.
    let help = format!("{help}.");
    let metric_encoder = encoder.encode_descriptor(name, &help, unit, metric.metric_type())?;
    metric.encode(metric_encoder)
}

impl Collector for ScrapeTime {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let jobs = Family::<QueueStateLabels, Gauge>::default();
        let leases = Family::<QueueLabel, Gauge>::default();
        let depth = self.tally.snapshot(&[], 0);
        for stats in &depth.queues {
            for (state, count) in &stats.counts {
                jobs.get_or_create(&QueueStateLabels {
                    queue: stats.queue.clone(),
                    state: state.as_str().to_owned(),
                })
                .set(*count);
                if *state == JobState::Running {
                    leases
                        .get_or_create(&QueueLabel {
                            queue: stats.queue.clone(),
                        })
                        .set(*count);
                }
            }
        }
        encode_family(
            &mut encoder,
            "jobs",
            "Jobs per queue and state (kept from committed changes, recounted in the background)",
            None,
            &jobs,
        )?;
        let search_backlog: Gauge = Gauge::default();
        search_backlog.set(i64::try_from(self.tally.search_backlog()).unwrap_or(i64::MAX));
        encode_family(
            &mut encoder,
            "search_backlog",
            "Jobs stored and not yet in the payload search index (searches find them all the same), as last recounted",
            None,
            &search_backlog,
        )?;
        encode_family(
            &mut encoder,
            "leases_active",
            "Jobs running under a lease now, per queue",
            None,
            &leases,
        )?;
        if let Some(queue) = self.queue.upgrade() {
            let now = queue.now();
            let oldest = Family::<QueueLabel, F64Gauge>::default();
            for stats in &depth.queues {
                if let Some(run_at) = stats.oldest_ready_run_at {
                    oldest
                        .get_or_create(&QueueLabel {
                            queue: stats.queue.clone(),
                        })
                        .set(seconds(now - run_at));
                }
            }
            encode_family(
                &mut encoder,
                "queue_oldest_ready_age",
                "How long the oldest ready job of each queue has been waiting",
                Some(&Unit::Seconds),
                &oldest,
            )?;
            let workers: Gauge = Gauge::default();
            workers.set(queue.workers_heard_within(CONNECTED_WINDOW) as i64);
            encode_family(
                &mut encoder,
                "workers_connected",
                "Workers that asked this server for jobs or renewed a lease within the last minute",
                None,
                &workers,
            )?;
        }
        if let Some(logs) = self.logs.upgrade() {
            let totals = logs.totals();
            for (name, help, value) in [
                ("log_lines_written", "Job log lines stored", totals.lines),
                (
                    "log_bytes_written",
                    "Bytes of job log lines stored",
                    totals.bytes,
                ),
                (
                    "log_lines_dropped",
                    "Job log lines dropped because the job's log was full",
                    totals.dropped_lines,
                ),
            ] {
                let counter: Counter = Counter::default();
                counter.inc_by(value);
                encode_family(&mut encoder, name, help, None, &counter)?;
            }
        }
        let spans = jobq_telemetry::export_counts();
        for (name, help, value) in [
            (
                "trace_spans_exported",
                "Spans the OTLP collector accepted",
                spans.exported,
            ),
            (
                "trace_spans_dropped",
                "Spans lost: export queue full, or the collector refused or did not answer",
                spans.dropped,
            ),
        ] {
            let counter: Counter = Counter::default();
            counter.inc_by(value);
            encode_family(&mut encoder, name, help, None, &counter)?;
        }
        let connections = Family::<ConnectionLabel, Gauge>::default();
        let (size, idle, max) = pool_use(&self.database);
        connections
            .get_or_create(&ConnectionLabel { state: "idle" })
            .set(idle as i64);
        connections
            .get_or_create(&ConnectionLabel { state: "in_use" })
            .set(size.saturating_sub(idle) as i64);
        encode_family(
            &mut encoder,
            "db_connections",
            "Connections of the database pool, idle or in use",
            None,
            &connections,
        )?;
        let max_connections: Gauge = Gauge::default();
        max_connections.set(max as i64);
        encode_family(
            &mut encoder,
            "db_connections_max",
            "Most connections the pool opens",
            None,
            &max_connections,
        )?;
        if let Some(file) = &self.sqlite_file {
            let mut wal = file.clone().into_os_string();
            wal.push("-wal");
            let bytes = std::fs::metadata(&wal).map_or(0, |meta| meta.len());
            let wal_size: Gauge = Gauge::default();
            wal_size.set(bytes as i64);
            encode_family(
                &mut encoder,
                "sqlite_wal",
                "Size of the SQLite write-ahead log",
                Some(&Unit::Bytes),
                &wal_size,
            )?;
        }
        Ok(())
    }
}

/// Connections open, idle, and the most the pool opens.
fn pool_use(database: &DatabaseConnection) -> (usize, usize, u32) {
    match database.get_database_backend() {
        sea_orm::DbBackend::Postgres => {
            let pool = database.get_postgres_connection_pool();
            (
                pool.size() as usize,
                pool.num_idle(),
                pool.options().get_max_connections(),
            )
        }
        _ => {
            let pool = database.get_sqlite_connection_pool();
            (
                pool.size() as usize,
                pool.num_idle(),
                pool.options().get_max_connections(),
            )
        }
    }
}
