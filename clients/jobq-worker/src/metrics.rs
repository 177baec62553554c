//! The worker's own Prometheus metrics (`--metrics-listen`): what its
//! handlers did, by job type and outcome, how long they took and how many
//! run now; how the tools they started exited; and what became of its spans.
//!
//! Handlers are measured from the outside: [`WorkerMetrics::measure`] wraps a
//! [`Handler`], so the SDK knows nothing of it, and a worker without
//! `--metrics-listen` registers its handlers unwrapped and pays nothing.

use std::fmt::Write as _;
use std::future::Future;
use std::os::unix::process::ExitStatusExt;
use std::panic::AssertUnwindSafe;
use std::process::ExitStatus;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use jobq_client::{Handler, JobContext, JobResult, StopCause, async_trait};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Prefix of every metric name.
pub const PREFIX: &str = "jobq_worker";

/// Handler durations, 5 ms to an hour (slower ones land in `+Inf`): `noop`
/// jobs take milliseconds, downloads of a channel minutes to hours.
const HANDLER_SECONDS: [f64; 19] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 150.0, 300.0, 600.0,
    1200.0, 1800.0, 3600.0,
];

/// How one attempt's handler ended, as the worker saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It returned a result.
    Succeeded,
    /// It returned a retryable error (not after a stop).
    FailedRetryable,
    /// It returned a fatal error: the job is dead-lettered.
    FailedFatal,
    /// It gave up after the job was cancelled.
    Cancelled,
    /// It gave up after the attempt's timeout.
    TimedOut,
    /// It gave up after the lease was lost.
    LeaseLost,
    /// It gave up because the worker is shutting down (the job is released).
    Shutdown,
    /// It panicked.
    Panicked,
    /// It did not return: aborted after the cancel grace, or on a forced stop.
    Aborted,
}

impl Outcome {
    /// The `outcome` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::FailedRetryable => "failed_retryable",
            Outcome::FailedFatal => "failed_fatal",
            Outcome::Cancelled => "cancelled",
            Outcome::TimedOut => "timed_out",
            Outcome::LeaseLost => "lease_lost",
            Outcome::Shutdown => "shutdown",
            Outcome::Panicked => "panicked",
            Outcome::Aborted => "aborted",
        }
    }

    /// What a returned `result` means, given why the job was asked to stop
    /// (if it was). A success stays a success whatever the stop: the SDK
    /// reports it as one.
    pub fn of(result: &JobResult, stop: Option<StopCause>) -> Self {
        match (result, stop) {
            (Ok(_), _) => Outcome::Succeeded,
            (Err(_), Some(StopCause::Cancelled)) => Outcome::Cancelled,
            (Err(_), Some(StopCause::TimedOut)) => Outcome::TimedOut,
            (Err(_), Some(StopCause::LeaseLost)) => Outcome::LeaseLost,
            (Err(_), Some(StopCause::Shutdown)) => Outcome::Shutdown,
            (Err(error), None) if error.is_retryable() => Outcome::FailedRetryable,
            (Err(_), None) => Outcome::FailedFatal,
        }
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

/// A job type.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: String,
}

/// A job type and how its handler ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    r#type: String,
    outcome: Outcome,
}

/// A tool and how it ended: `code` for an exit, `signal` for a kill (the
/// other one empty).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExitLabels {
    program: String,
    code: String,
    signal: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn handler_histogram() -> Histogram {
    Histogram::new(HANDLER_SECONDS)
}

/// Every metric of the worker, and the registry that exposes them.
#[derive(Debug)]
pub struct WorkerMetrics {
    registry: Arc<Registry>,
    jobs: Family<OutcomeLabels, Counter>,
    running: Family<TypeLabel, Gauge>,
    duration: HistogramFamily<TypeLabel>,
    tool_exits: Family<ExitLabels, Counter>,
}

impl WorkerMetrics {
    /// The metrics, registered under the prefix `jobq_worker`.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix(PREFIX);
        let jobs = Family::<OutcomeLabels, Counter>::default();
        let running = Family::<TypeLabel, Gauge>::default();
        let duration: HistogramFamily<TypeLabel> =
            Family::new_with_constructor(handler_histogram as fn() -> Histogram);
        let tool_exits = Family::<ExitLabels, Counter>::default();
        registry.register(
            "jobs",
            "Attempts this worker's handlers ended, by job type and outcome \
             (succeeded, failed_retryable, failed_fatal, cancelled, timed_out, lease_lost, \
             shutdown, panicked, aborted)",
            jobs.clone(),
        );
        registry.register(
            "jobs_running",
            "Handlers running now, by job type",
            running.clone(),
        );
        registry.register_with_unit(
            "handler_duration",
            "Time from a handler's start to its end, by job type",
            Unit::Seconds,
            duration.clone(),
        );
        registry.register(
            "subprocess_exits",
            "Tools (yt-dlp, ffprobe) that ended, by program and exit code or signal",
            tool_exits.clone(),
        );
        registry.register_collector(Box::new(SpanExports));
        Arc::new(Self {
            registry: Arc::new(registry),
            jobs,
            running,
            duration,
            tool_exits,
        })
    }

    /// The registry to expose.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// `handler`, measured as a handler of `job_type`. The type's running
    /// gauge and duration histogram are exposed (at zero) from now on.
    pub fn measure<H: Handler>(self: &Arc<Self>, job_type: &str, handler: H) -> Measured<H> {
        let label = TypeLabel {
            r#type: job_type.to_owned(),
        };
        Measured {
            inner: handler,
            attempts: Attempts {
                metrics: self.clone(),
                job_type: job_type.to_owned(),
                running: self.running.get_or_create_owned(&label),
                duration: self.duration.get_or_create_owned(&label),
            },
        }
    }

    /// Counts a tool's exit; `program` is its file name (`yt-dlp`).
    pub fn tool_exited(&self, program: &str, status: ExitStatus) {
        let labels = ExitLabels {
            program: program.to_owned(),
            code: status
                .code()
                .map(|code| code.to_string())
                .unwrap_or_default(),
            signal: status
                .signal()
                .map(|signal| signal.to_string())
                .unwrap_or_default(),
        };
        self.tool_exits.get_or_create(&labels).inc();
    }
}

/// A [`Handler`] whose attempts are measured; see [`WorkerMetrics::measure`].
#[derive(Debug)]
pub struct Measured<H> {
    inner: H,
    attempts: Attempts,
}

#[async_trait]
impl<H: Handler> Handler for Measured<H> {
    async fn run(&self, ctx: JobContext) -> JobResult {
        let stopped = ctx.clone();
        self.attempts
            .observe(self.inner.run(ctx), move || stopped.stop_cause())
            .await
    }
}

/// The metrics of one job type's attempts.
#[derive(Debug)]
struct Attempts {
    metrics: Arc<WorkerMetrics>,
    job_type: String,
    running: Gauge,
    duration: Histogram,
}

impl Attempts {
    /// Runs one attempt, measured: running while it runs, its duration, and
    /// its outcome (`stop_cause` asked once it returned). A panic is counted
    /// and goes on unwinding (the SDK fails the attempt); an attempt dropped
    /// before it returned counts as aborted.
    async fn observe<F>(
        &self,
        attempt: F,
        stop_cause: impl FnOnce() -> Option<StopCause>,
    ) -> JobResult
    where
        F: Future<Output = JobResult>,
    {
        let mut measuring = Measuring::start(self);
        let mut attempt = std::pin::pin!(attempt);
        let ended = std::future::poll_fn(|cx| {
            match std::panic::catch_unwind(AssertUnwindSafe(|| attempt.as_mut().poll(cx))) {
                Ok(Poll::Pending) => Poll::Pending,
                Ok(Poll::Ready(result)) => Poll::Ready(Ok(result)),
                Err(panic) => Poll::Ready(Err(panic)),
            }
        })
        .await;
        match ended {
            Ok(result) => {
                measuring.outcome = Outcome::of(&result, stop_cause());
                result
            }
            Err(panic) => {
                measuring.outcome = Outcome::Panicked;
                drop(measuring);
                std::panic::resume_unwind(panic)
            }
        }
    }
}

/// One attempt being measured; it is counted when dropped, so an attempt
/// whose future is dropped unfinished is counted too (as aborted).
struct Measuring<'a> {
    attempts: &'a Attempts,
    started: Instant,
    outcome: Outcome,
}

impl<'a> Measuring<'a> {
    fn start(attempts: &'a Attempts) -> Self {
        attempts.running.inc();
        Self {
            attempts,
            started: Instant::now(),
            outcome: Outcome::Aborted,
        }
    }
}

impl Drop for Measuring<'_> {
    fn drop(&mut self) {
        let attempts = self.attempts;
        attempts.running.dec();
        attempts
            .duration
            .observe(self.started.elapsed().as_secs_f64());
        let labels = OutcomeLabels {
            r#type: attempts.job_type.clone(),
            outcome: self.outcome,
        };
        attempts.metrics.jobs.get_or_create(&labels).inc();
    }
}

/// `spans_exported` and `spans_dropped`, read from the exporter at scrape time.
#[derive(Debug)]
struct SpanExports;

impl Collector for SpanExports {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let counts = jobq_telemetry::export_counts();
        for (name, help, value) in [
            (
                "spans_exported",
                "Spans the OTLP collector accepted.",
                counts.exported,
            ),
            (
                "spans_dropped",
                "Spans lost: the export queue was full, or the collector refused or did not answer.",
                counts.dropped,
            ),
        ] {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use jobq_client::JobError;
    use serde_json::Value;

    use super::*;

    /// A handler that is never run: the tests drive [`Attempts::observe`]
    /// directly (a `JobContext` cannot be made outside the SDK).
    struct Unused;

    #[async_trait]
    impl Handler for Unused {
        async fn run(&self, _ctx: JobContext) -> JobResult {
            Ok(Value::Null)
        }
    }

    fn exposition(metrics: &WorkerMetrics) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry())
            .expect("the registry encodes");
        text
    }

    /// The value of the sample line that starts with `series ` (0 when absent).
    fn sample(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0.0, |value| value.parse().expect("a number"))
    }

    fn jobs(text: &str, job_type: &str, outcome: &str) -> f64 {
        sample(
            text,
            &format!("jobq_worker_jobs_total{{type=\"{job_type}\",outcome=\"{outcome}\"}}"),
        )
    }

    #[tokio::test]
    async fn attempts_are_counted_by_type_and_outcome() {
        let metrics = WorkerMetrics::new();
        let noop = metrics.measure("noop", Unused);
        let cleanup = metrics.measure("cleanup", Unused);
        let not_stopped = || None;

        for _ in 0..2 {
            let result = noop
                .attempts
                .observe(async { Ok(Value::Null) }, not_stopped)
                .await;
            assert!(result.is_ok());
        }
        let retryable = noop
            .attempts
            .observe(async { Err(JobError::retryable("busy")) }, not_stopped)
            .await;
        assert_eq!(retryable, Err(JobError::retryable("busy")));
        let _ = noop
            .attempts
            .observe(async { Err(JobError::fatal("bad payload")) }, not_stopped)
            .await;
        let _ = cleanup
            .attempts
            .observe(async { Err(JobError::retryable("cancelled")) }, || {
                Some(StopCause::Cancelled)
            })
            .await;
        // A success after a stop is still a success (the SDK reports it so).
        let _ = cleanup
            .attempts
            .observe(async { Ok(Value::Null) }, || Some(StopCause::TimedOut))
            .await;

        let text = exposition(&metrics);
        assert_eq!(jobs(&text, "noop", "succeeded"), 2.0, "{text}");
        assert_eq!(jobs(&text, "noop", "failed_retryable"), 1.0, "{text}");
        assert_eq!(jobs(&text, "noop", "failed_fatal"), 1.0, "{text}");
        assert_eq!(jobs(&text, "cleanup", "cancelled"), 1.0, "{text}");
        assert_eq!(jobs(&text, "cleanup", "succeeded"), 1.0, "{text}");
        assert_eq!(jobs(&text, "cleanup", "failed_retryable"), 0.0, "{text}");
        for (job_type, attempts) in [("noop", 4.0), ("cleanup", 2.0)] {
            assert_eq!(
                sample(
                    &text,
                    &format!("jobq_worker_jobs_running{{type=\"{job_type}\"}}")
                ),
                0.0,
                "{text}"
            );
            assert_eq!(
                sample(
                    &text,
                    &format!("jobq_worker_handler_duration_seconds_count{{type=\"{job_type}\"}}")
                ),
                attempts,
                "{text}"
            );
        }
        assert!(text.contains("# TYPE jobq_worker_jobs counter\n"), "{text}");
        assert!(
            text.contains("# TYPE jobq_worker_handler_duration_seconds histogram\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "jobq_worker_handler_duration_seconds_bucket{le=\"3600.0\",type=\"noop\"} 4\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[tokio::test]
    async fn a_running_attempt_is_counted_until_it_is_aborted() -> anyhow::Result<()> {
        let metrics = WorkerMetrics::new();
        let measured = Arc::new(metrics.measure("noop", Unused));
        let (started, has_started) = tokio::sync::oneshot::channel();
        let running = measured.clone();
        let task = tokio::spawn(async move {
            running
                .attempts
                .observe(
                    async move {
                        let _ = started.send(());
                        std::future::pending::<JobResult>().await
                    },
                    || None,
                )
                .await
        });
        has_started.await?;
        let running = r#"jobq_worker_jobs_running{type="noop"}"#;
        assert_eq!(sample(&exposition(&metrics), running), 1.0);

        task.abort();
        assert!(task.await.is_err_and(|error| error.is_cancelled()));
        let text = exposition(&metrics);
        assert_eq!(sample(&text, running), 0.0, "{text}");
        assert_eq!(jobs(&text, "noop", "aborted"), 1.0, "{text}");
        assert_eq!(
            sample(
                &text,
                r#"jobq_worker_handler_duration_seconds_count{type="noop"}"#
            ),
            1.0,
            "{text}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_panic_is_counted_and_still_reaches_the_runtime() {
        let metrics = WorkerMetrics::new();
        let measured = Arc::new(metrics.measure("noop", Unused));
        let task = tokio::spawn(async move {
            measured
                .attempts
                .observe(
                    async { panic!("the handler broke (expected by this test)") },
                    || None,
                )
                .await
        });
        let joined = task.await;
        assert!(joined.is_err_and(|error| error.is_panic()));
        let text = exposition(&metrics);
        assert_eq!(jobs(&text, "noop", "panicked"), 1.0, "{text}");
        assert_eq!(
            sample(&text, r#"jobq_worker_jobs_running{type="noop"}"#),
            0.0
        );
    }

    #[test]
    fn tool_exits_are_counted_by_program_and_code_or_signal() {
        use std::os::unix::process::ExitStatusExt;

        let metrics = WorkerMetrics::new();
        metrics.tool_exited("yt-dlp", ExitStatus::from_raw(0));
        metrics.tool_exited("yt-dlp", ExitStatus::from_raw(1 << 8));
        metrics.tool_exited("yt-dlp", ExitStatus::from_raw(1 << 8));
        metrics.tool_exited("ffprobe", ExitStatus::from_raw(9));

        let text = exposition(&metrics);
        let exits = |program: &str, code: &str, signal: &str| {
            sample(
                &text,
                &format!(
                    "jobq_worker_subprocess_exits_total{{program=\"{program}\",code=\"{code}\",signal=\"{signal}\"}}"
                ),
            )
        };
        assert_eq!(exits("yt-dlp", "0", ""), 1.0, "{text}");
        assert_eq!(exits("yt-dlp", "1", ""), 2.0, "{text}");
        assert_eq!(exits("ffprobe", "", "9"), 1.0, "{text}");
    }

    #[test]
    fn span_exports_are_read_at_scrape_time() {
        let metrics = WorkerMetrics::new();
        let text = exposition(&metrics);
        // Nothing is exported in unit tests: the counters are there, at zero.
        assert!(
            text.contains("# TYPE jobq_worker_spans_exported counter\n"),
            "{text}"
        );
        assert_eq!(
            sample(&text, "jobq_worker_spans_exported_total"),
            0.0,
            "{text}"
        );
        assert!(
            text.contains("\njobq_worker_spans_dropped_total 0\n"),
            "{text}"
        );
    }
}
